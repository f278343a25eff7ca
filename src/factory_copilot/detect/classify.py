"""FaultClassifier: names the likely fault type behind an anomaly from causal signature features, or says 'unknown'.

A row's signature is its signals standardised against normal operation, smoothed at a
fast and a slow EWMA weight, plus an EWMA of the spread around the fast average
(oscillation, sticking valves). With ``lags`` the signature also reads the signals' course: the
change of the fast average over each lag (rows), and how long ago each signal departed normal
(the order in which signals departed), all from the row and the rows before it. An extremely randomised forest maps signatures to fault
types; the answer is 'unknown' when the top probability is low or the signature lies far
from every training signature of the named fault (novelty). scikit-learn grows the forest; the
fitted classifier keeps its trees as numpy arrays (``forest.Forest``), so serving needs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from factory_copilot.detect.estimator import Estimator
from factory_copilot.detect.features import as_matrix, ewma_runs, hold_last, numeric_signals, runs
from factory_copilot.detect.forest import Forest
from factory_copilot.detect.multivariate import ALL_MODES, mode_labels
from factory_copilot.names import UNKNOWN

if TYPE_CHECKING:
    import pandas as pd

# rows over which the windowed signature reads the course (best of 3 tried on TEP's blocked folds)
WINDOW_LAGS = (3, 10, 30)


class FaultClassifier(Estimator):
    """Causal fault-type classifier with scikit-learn conventions (fit/predict/predict_proba/classes_).

    ``fit(X, y, groups=None)``: X a DataFrame of labelled history in time order, y the fault
    label per row (rows labelled ``normal_label`` set the normal reference and are a class too);
    the causal smoothing restarts wherever ``groups`` (or, if not given, the label) changes.
    ``on_residuals``: X holds each signal's departure from normal at the operating point
    (``LineDetector.residuals``), not its raw value; whoever feeds it rows must do the same.
    """

    def __init__(
        self,
        n_estimators: int = 150,
        smoothing: tuple[float, float] = (0.3, 0.05),
        spread_smoothing: float = 0.1,
        min_probability: float = 0.2,
        novelty_quantile: float = 0.995,
        novelty_margin: float = 2.0,
        normal_label: str = "normal",
        mode_column: str = "mode",
        exclude: tuple[str, ...] = ("fault",),
        max_rows_per_class: int | None = 5000,
        random_state: int = 0,
        n_jobs: int = 1,
        on_residuals: bool = False,
        spread_floor: bool = True,
        lags: tuple[int, ...] = (),
        departure_z: float = 3.0,
    ):
        self.n_estimators = n_estimators
        self.smoothing = smoothing
        self.spread_smoothing = spread_smoothing
        self.min_probability = min_probability
        self.novelty_quantile = novelty_quantile
        self.novelty_margin = novelty_margin
        self.normal_label = normal_label
        self.mode_column = mode_column
        self.exclude = exclude
        self.max_rows_per_class = max_rows_per_class
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.on_residuals = on_residuals
        self.spread_floor = spread_floor
        self.lags = lags
        self.departure_z = departure_z

    def _modes_of(self, X: pd.DataFrame) -> np.ndarray:
        if self.mode_column and self.mode_column in X.columns:
            return mode_labels(X[self.mode_column].to_numpy())
        return np.full(len(X), ALL_MODES, dtype=object)

    def _standardise(self, A: np.ndarray, modes: np.ndarray) -> np.ndarray:
        Z = np.empty_like(A)
        for mode in np.unique(modes):
            rows = modes == mode
            mean, scale = self.reference_.get(mode, self.reference_[ALL_MODES])
            Z[rows] = (A[rows] - mean) / scale
        Z[np.isnan(Z)] = 0.0
        return Z

    def _signature(self, Z: np.ndarray, bounds: list[tuple[int, int]]) -> np.ndarray:
        fast, slow = (ewma_runs(Z, lam, bounds) for lam in self.smoothing)
        spread = np.sqrt(ewma_runs((Z - fast) ** 2, self.spread_smoothing, bounds))
        if not getattr(self, "lags", ()):  # a model saved before lags existed reads the snapshot only
            return np.hstack([fast, slow, spread])
        return np.hstack([fast, slow, spread, *self._course(fast, bounds)])

    def _course(self, fast: np.ndarray, bounds: list[tuple[int, int]]) -> list[np.ndarray]:
        """Change of the fast average over each lag, and rows since each signal departed (capped at the longest lag).

        A signal departs when its fast average passes ``departure_z`` and is back within half of that:
        the count restarts with each excursion, so one old excursion does not mark a signal for good.
        """
        cap = max(self.lags)
        out = [np.empty_like(fast) for _ in self.lags]
        since = np.zeros_like(fast)
        for a, b in bounds:
            run = fast[a:b]
            for o, lag in zip(out, self.lags):
                # before the run's start the average was zero (its restart), as the live ring buffer holds
                before = np.vstack([np.zeros((min(lag, b - a), run.shape[1])), run[: max(0, b - a - lag)]])
                o[a:b] = run - before
            # departed when the fast average passes departure_z, back when it falls within half of it
            n = b - a
            rows = np.arange(n)[:, None]
            last_back = np.maximum.accumulate(np.where(np.abs(run) < self.departure_z / 2, rows, -1), axis=0)
            next_gone = np.minimum.accumulate(np.where(np.abs(run) > self.departure_z, rows, n)[::-1], axis=0)[::-1]
            next_gone = np.vstack([next_gone, np.full((1, run.shape[1]), n)])
            start = np.take_along_axis(next_gone, last_back + 1, axis=0)
            since[a:b] = np.where(start <= rows, np.minimum(rows - start + 1, cap), 0) / cap
        return [*out, since]

    def features(self, X: pd.DataFrame, groups=None) -> np.ndarray:
        """The causal signature of every row (smoothing restarts at mode changes and group changes)."""
        A = hold_last(as_matrix(X, self.signals_), np.nan)
        modes = self._modes_of(X)
        keys = modes if groups is None else np.array([f"{m}|{g}" for m, g in zip(modes, np.asarray(groups))], dtype=object)
        return self._signature(self._standardise(A, modes), runs(keys))

    def fit(self, X: pd.DataFrame, y, groups=None) -> "FaultClassifier":
        y = np.asarray([str(v) for v in y], dtype=object)
        if len(y) != len(X):
            raise ValueError(f"y has {len(y)} labels for {len(X)} rows")
        exclude = tuple(self.exclude) + ((self.mode_column,) if self.mode_column else ())
        self.signals_ = numeric_signals(X, exclude)
        self.n_features_in_ = len(self.signals_)
        A = hold_last(as_matrix(X, self.signals_), np.nan)
        modes = self._modes_of(X)
        normal = y == self.normal_label
        if not normal.any():
            normal = np.ones(len(y), dtype=bool)
        self.reference_: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for mode in [ALL_MODES, *np.unique(modes)]:
            rows = normal if mode == ALL_MODES else normal & (modes == mode)
            if rows.sum() >= 10:
                mean = np.nanmean(A[rows], axis=0)
                scale = np.nanstd(A[rows], axis=0)
                floor = np.maximum(0.01 * np.nan_to_num(np.nanstd(A, axis=0)), 1e-9)
                self.reference_[mode] = (np.nan_to_num(mean), np.maximum(np.nan_to_num(scale), floor))
        keys = y if groups is None else np.asarray(groups)
        keys = np.array([f"{m}|{k}" for m, k in zip(modes, keys)], dtype=object)
        F = self._signature(self._standardise(A, modes), runs(keys))
        if self.max_rows_per_class:
            # signatures come from the full history; only then are long classes thinned, evenly in time
            take = np.zeros(len(y), dtype=bool)
            for label in np.unique(y):
                idx = np.flatnonzero(y == label)
                take[idx[np.linspace(0, len(idx) - 1, min(len(idx), self.max_rows_per_class)).astype(int)]] = True
            F, y = F[take], y[take]
        # training only: what the service loads is the forest's trees as arrays, without scikit-learn
        from sklearn.ensemble import ExtraTreesClassifier

        self.forest_ = Forest.from_sklearn(ExtraTreesClassifier(
            n_estimators=self.n_estimators, random_state=self.random_state, n_jobs=self.n_jobs, min_samples_leaf=2
        ).fit(F, y))
        self.classes_ = self.forest_.classes_
        # novelty: how far a signature may lie from its class's training signatures
        self.centres_ = np.zeros((len(self.classes_), F.shape[1]))
        self.spreads_ = np.ones_like(self.centres_)
        self.novelty_limits_ = np.zeros(len(self.classes_))
        for i, label in enumerate(self.classes_):
            Fi = F[y == label]
            self.centres_[i] = Fi.mean(axis=0)
            self.spreads_[i] = np.maximum(Fi.std(axis=0), 1e-6)
        # a fault seen in a few episodes looks tighter than it is: no class is judged tighter than normal running
        ref = list(self.classes_).index(self.normal_label) if self.normal_label in self.classes_ else None
        if ref is not None and self.spread_floor:
            self.spreads_ = np.maximum(self.spreads_, self.spreads_[ref])
        for i, label in enumerate(self.classes_):
            Fi = F[y == label]
            d = self._novelty(Fi, np.full(len(Fi), i))
            self.novelty_limits_[i] = np.quantile(d, self.novelty_quantile) * self.novelty_margin
        return self

    def _novelty(self, F: np.ndarray, idx: np.ndarray) -> np.ndarray:
        # judged on the snapshot (averages and spread) only: a known fault met at a new point of its course is no novelty
        k = self.centres_.shape[1] if not getattr(self, "lags", ()) else 3 * len(self.signals_)
        F = F[:, :k]
        return np.sqrt(np.mean(((F - self.centres_[idx, :k]) / self.spreads_[idx, :k]) ** 2, axis=1))

    def _check_fitted(self) -> None:
        if not hasattr(self, "forest_"):
            raise RuntimeError("FaultClassifier is not fitted yet: call fit(X, y) with labelled history first")

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        return self.forest_.predict_proba(self.features(X))

    def label(self, F: np.ndarray, anomalous: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Fault labels (or 'unknown') and top probabilities for signature rows.

        ``anomalous``: the detector already flagged these rows, so 'normal' is no answer; the
        probabilities are renormalised over the fault classes.
        """
        proba = self.forest_.predict_proba(F)
        if anomalous and self.normal_label in self.classes_:
            proba = proba.copy()
            proba[:, list(self.classes_).index(self.normal_label)] = 0.0
            total = proba.sum(axis=1, keepdims=True)
            proba = np.divide(proba, total, out=np.zeros_like(proba), where=total > 0)
        top = proba.argmax(axis=1)
        p = proba[np.arange(len(F)), top]
        novel = self._novelty(F, top) > self.novelty_limits_[top]
        labels = self.classes_[top].astype(object)
        labels[(p < self.min_probability) | novel] = UNKNOWN
        return labels, p

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """The likely fault per row, or 'unknown' when no known signature fits."""
        self._check_fitted()
        return self.label(self.features(X))[0]

    def score(self, X: pd.DataFrame, y) -> float:
        """Share of rows whose predicted fault is the given label (scikit-learn's classifier score)."""
        return float(np.mean(self.predict(X) == np.asarray([str(v) for v in y], dtype=object)))

    def stream(self) -> "ClassifierStream":
        self._check_fitted()
        return ClassifierStream(self)


class ClassifierStream:
    """Live signature state: O(1) update per row; the forest is asked only when an anomaly needs a name."""

    def __init__(self, classifier: FaultClassifier):
        self.classifier = classifier
        n = len(classifier.signals_)
        self.fast = np.zeros(n)
        self.slow = np.zeros(n)
        self.var = np.zeros(n)
        self.last = np.full(n, np.nan)
        self.mode: str | None = None
        self.lam_fast, self.lam_slow = classifier.smoothing
        self.lags = tuple(getattr(classifier, "lags", ()))  # models saved before lags existed read no course
        self.cap = max(self.lags) if self.lags else 0
        self.size = self.cap + 1
        self.past = np.zeros((self.size, n))  # ring buffer of the fast averages, this row's too: row t at t % size
        self.t = 0
        self.since = np.zeros(n)

    def update(self, x: np.ndarray, mode=None) -> None:
        c = self.classifier
        x = np.where(np.isnan(x), self.last, x)
        self.last = x
        # a classifier trained without modes keeps one signature across them (regimes of one continuous normal)
        label = ALL_MODES if mode is None or set(c.reference_) == {ALL_MODES} else str(mode_labels([mode])[0])
        if label != self.mode:
            self.mode = label
            self.fast[:] = self.slow[:] = self.var[:] = 0.0
            self.past[:] = self.since[:] = 0.0
            self.t = 0
        mean, scale = c.reference_.get(label, c.reference_[ALL_MODES])
        z = (x - mean) / scale
        z[np.isnan(z)] = 0.0
        self.fast = self.lam_fast * z + (1 - self.lam_fast) * self.fast
        self.slow = self.lam_slow * z + (1 - self.lam_slow) * self.slow
        s = c.spread_smoothing
        self.var = s * (z - self.fast) ** 2 + (1 - s) * self.var
        if self.cap:
            gone = np.abs(self.fast) > c.departure_z
            back = np.abs(self.fast) < c.departure_z / 2
            self.since = np.where(~back & ((self.since > 0) | gone), np.minimum(self.since + 1, self.cap), 0)
            self.past[self.t % self.size] = self.fast
            self.t += 1

    def signature(self) -> np.ndarray:
        parts = [self.fast, self.slow, np.sqrt(self.var)]
        if self.cap:
            # the fast average lag rows ago; zero before the run had that many rows (its restart)
            t = self.t - 1
            parts += [self.fast - (self.past[(t - lag) % self.size] if t - lag >= 0 else 0.0) for lag in self.lags]
            parts.append(self.since / self.cap)
        return np.concatenate(parts)[None, :]

    def classify(self, anomalous: bool = True) -> tuple[str, float]:
        """The likely fault of the current row (called when the detector flagged it)."""
        labels, p = self.classifier.label(self.signature(), anomalous=anomalous)
        return str(labels[0]), float(p[0])
