"""Causal row features shared by the detector and the classifier: standardising, mode runs and EWMA smoothing.

Everything here uses a row and the rows before it only, batch or one row at a time,
so offline evaluation sees exactly what the live station sees. Numpy only: the service loads
a trained detector without pandas, scipy or scikit-learn (their import alone would double its memory);
the functions given a DataFrame are called by training and evaluation, whose callers have pandas loaded.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def numeric_signals(X: pd.DataFrame, exclude: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The numeric columns of a sensor table, in order, minus bookkeeping columns (mode, fault label)."""
    if not hasattr(X, "columns") or not hasattr(X, "dtypes"):
        raise TypeError(f"expected a pandas DataFrame with one column per signal, got {type(X).__name__}")
    from pandas.api.types import is_numeric_dtype  # X is a DataFrame: pandas is loaded already

    cols = [c for c in X.columns if c not in exclude and is_numeric_dtype(X[c])]
    if not cols:
        raise ValueError(f"no numeric signal columns in the table (columns: {list(X.columns)[:10]})")
    return cols


def as_matrix(X: pd.DataFrame, signals: list[str]) -> np.ndarray:
    """The table's signal columns as floats; names a missing column clearly."""
    missing = [s for s in signals if s not in X.columns]
    if missing:
        raise ValueError(f"table lacks signal column(s) the model was trained on: {', '.join(missing[:5])}")
    return X[signals].to_numpy(dtype=float, copy=True)


def table_like(X: pd.DataFrame, values: np.ndarray, columns: list[str]) -> pd.DataFrame:
    """``values`` as a DataFrame on the rows of ``X`` (a DataFrame, so pandas is loaded already)."""
    import pandas as pd

    return pd.DataFrame(values, index=X.index, columns=columns)


def hold_last(Z: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Replace missing values by the signal's last known value (the live row does the same), else ``fill``."""
    missing = np.isnan(Z)
    if not missing.any():
        return Z
    # row index of each column's last known value at or before every row (0 where none yet: filled below)
    last = np.maximum.accumulate(np.where(missing, 0, np.arange(len(Z))[:, None]), axis=0)
    out = np.take_along_axis(Z, last, axis=0)
    out[np.isnan(out)] = fill
    return out


def runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each stretch of equal consecutive labels."""
    n = len(labels)
    if n == 0:
        return []
    change = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [n]])
    return list(zip(starts.tolist(), ends.tolist()))


def first_order(x: np.ndarray, lam: float, start: np.ndarray | float = 0.0) -> np.ndarray:
    """w_t = lam x_t + (1 - lam) w_{t-1} along the rows of ``x``, from w_{-1} = ``start`` (a first-order IIR filter).

    The recursion in closed form, a block of rows at a time: w_t = a^(t+1) (w_{-1} + lam sum_{i<=t} x_i a^-(i+1)),
    a = 1 - lam; blocks are short enough that a^-(i+1) stays far from overflow. Agrees with the row-by-row
    recursion to rounding (about 1e-16 relative per row; 1/lam rows of memory add up to 1/lam times that).
    """
    x = np.asarray(x, dtype=float)
    out = np.empty_like(x)
    w = np.broadcast_to(np.asarray(start, dtype=float), x.shape[1:]).copy()
    if lam >= 1.0 or not len(x):
        out[:] = x
        return out
    a = 1.0 - lam
    block = len(x) if a >= 1.0 else max(1, min(len(x), int(200.0 / -math.log10(a)) if a > 0 else 1))
    decay = a ** np.arange(1, block + 1, dtype=float)
    gain = (lam / decay).reshape((-1,) + (1,) * (x.ndim - 1))
    decay = decay.reshape(gain.shape)
    for s in range(0, len(x), block):
        k = min(block, len(x) - s)
        out[s : s + k] = decay[:k] * (w + np.cumsum(x[s : s + k] * gain[:k], axis=0))
        w = out[s + k - 1]
    return out


def ewma(Z: np.ndarray, lam: float) -> np.ndarray:
    """Exponentially weighted moving average from a zero (in-control) start: w_t = lam z_t + (1 - lam) w_{t-1}."""
    if lam >= 1.0:
        return Z.copy()
    W = first_order(Z, lam)
    # a decaying average of exact zeros ends in subnormal floats, which make later matrix products crawl
    W[np.abs(W) < 1e-100] = 0.0
    return W


def ewma_runs(Z: np.ndarray, lam: float, bounds: list[tuple[int, int]]) -> np.ndarray:
    """EWMA restarted from zero at the start of every run (mode change, new recording)."""
    out = np.empty_like(Z)
    for a, b in bounds:
        out[a:b] = ewma(Z[a:b], lam)
    return out
