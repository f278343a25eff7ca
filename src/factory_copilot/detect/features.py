"""Causal row features shared by the detector and the classifier: standardising, mode runs and EWMA smoothing.

Everything here uses a row and the rows before it only, batch or one row at a time,
so offline evaluation sees exactly what the live station sees.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import lfilter


def numeric_signals(X: pd.DataFrame, exclude: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The numeric columns of a sensor table, in order, minus bookkeeping columns (mode, fault label)."""
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame with one column per signal, got {type(X).__name__}")
    cols = [c for c in X.columns if c not in exclude and pd.api.types.is_numeric_dtype(X[c])]
    if not cols:
        raise ValueError(f"no numeric signal columns in the table (columns: {list(X.columns)[:10]})")
    return cols


def as_matrix(X: pd.DataFrame, signals: list[str]) -> np.ndarray:
    """The table's signal columns as floats; names a missing column clearly."""
    missing = [s for s in signals if s not in X.columns]
    if missing:
        raise ValueError(f"table lacks signal column(s) the model was trained on: {', '.join(missing[:5])}")
    return X[signals].to_numpy(dtype=float, copy=True)


def hold_last(Z: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Replace missing values by the signal's last known value (the live row does the same), else ``fill``."""
    if not np.isnan(Z).any():
        return Z
    df = pd.DataFrame(Z).ffill()
    return df.fillna(fill).to_numpy()


def runs(labels: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each stretch of equal consecutive labels."""
    n = len(labels)
    if n == 0:
        return []
    change = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [n]])
    return list(zip(starts.tolist(), ends.tolist()))


def ewma(Z: np.ndarray, lam: float) -> np.ndarray:
    """Exponentially weighted moving average from a zero (in-control) start: w_t = lam z_t + (1 - lam) w_{t-1}."""
    if lam >= 1.0:
        return Z.copy()
    W = lfilter([lam], [1.0, -(1.0 - lam)], Z, axis=0)
    # a decaying average of exact zeros ends in subnormal floats, which make later matrix products crawl
    W[np.abs(W) < 1e-100] = 0.0
    return W


def ewma_runs(Z: np.ndarray, lam: float, bounds: list[tuple[int, int]]) -> np.ndarray:
    """EWMA restarted from zero at the start of every run (mode change, new recording)."""
    out = np.empty_like(Z)
    for a, b in bounds:
        out[a:b] = ewma(Z[a:b], lam)
    return out
