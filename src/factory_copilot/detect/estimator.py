"""The scikit-learn estimator contract (parameters in ``__init__``, get_params/set_params), without scikit-learn.

As river does: the detectors follow scikit-learn's conventions, so ``sklearn.base.clone``, grid searches and
pipelines take them, while the service that only loads and runs a trained detector never imports scikit-learn
(with scipy, which it pulls in, more memory than the rest of the service).
"""

from __future__ import annotations

import inspect


class Estimator:
    """Parameters are the ``__init__`` arguments, stored unchanged under their own names; learnt state ends in ``_``."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

    def get_params(self, deep: bool = True) -> dict:
        """The estimator's parameters by name (``deep``: with those of estimators it holds, as ``name__param``)."""
        out = {}
        for name in self._param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params) -> "Estimator":
        valid = self._param_names()
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in valid:
                raise ValueError(f"{type(self).__name__} has no parameter {name!r} (parameters: {', '.join(valid)})")
            if sub:
                getattr(self, name).set_params(**{sub: value})
            else:
                setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        # as scikit-learn prints an estimator: only the parameters changed from their defaults
        sig = inspect.signature(type(self).__init__)
        changed = []
        for name in self._param_names():
            default = sig.parameters[name].default
            value = getattr(self, name)
            try:
                same = bool(value == default) if not hasattr(value, "shape") else False
            except Exception:  # an array-valued comparison is not one answer
                same = False
            if not same:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"
