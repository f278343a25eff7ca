"""The textbook PCA monitor (Hotelling T² and SPE/Q at 99% limits), the yardstick the line detector must beat."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.decomposition import PCA


class PcaMonitor:
    """PCA on standardised data; T² limit from the F distribution, SPE limit by Jackson & Mudholkar."""

    def __init__(self, n_components: int = 9, confidence: float = 0.99):
        self.n_components = n_components
        self.confidence = confidence

    def fit(self, X: pd.DataFrame | np.ndarray, y=None) -> "PcaMonitor":
        X = np.asarray(X, dtype=float)
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0, ddof=1)
        self.scale_[self.scale_ == 0] = 1.0
        Z = (X - self.mean_) / self.scale_
        self.pca_ = PCA(self.n_components).fit(Z)
        n, k = len(Z), self.n_components
        a = self.confidence
        self.t2_limit_ = k * (n - 1) * (n + 1) / (n * (n - k)) * stats.f.ppf(a, k, n - k)
        eig = np.linalg.eigvalsh(np.cov(Z, rowvar=False))[::-1][k:]
        t1, t2, t3 = (np.sum(eig**i) for i in (1, 2, 3))
        h0 = 1 - 2 * t1 * t3 / (3 * t2**2)
        c = stats.norm.ppf(a)
        self.spe_limit_ = t1 * (c * np.sqrt(2 * t2 * h0**2) / t1 + 1 + t2 * h0 * (h0 - 1) / t1**2) ** (1 / h0)
        return self

    def statistics(self, X) -> tuple[np.ndarray, np.ndarray]:
        Z = (np.asarray(X, dtype=float) - self.mean_) / self.scale_
        scores = self.pca_.transform(Z)
        t2 = np.sum(scores**2 / self.pca_.explained_variance_, axis=1)
        spe = np.sum((Z - self.pca_.inverse_transform(scores)) ** 2, axis=1)
        return t2, spe

    def predict_t2(self, X) -> np.ndarray:
        return (self.statistics(X)[0] > self.t2_limit_).astype(int)

    def predict_spe(self, X) -> np.ndarray:
        return (self.statistics(X)[1] > self.spe_limit_).astype(int)


# ---- the simple methods beside the line detector, on a plant's own recording -----------------------------------
PCA_VARIANCE = 0.85  # components kept: the fewest explaining this share of the normal variance
PCA_CONFIDENCE = 0.999  # T² and Q limits


def _filled(table: pd.DataFrame, means: pd.Series) -> np.ndarray:
    """Signals with a gap carried forward (as the live station holds the last value), else the normal mean."""
    return table.ffill().fillna(means).to_numpy(dtype=float)


def baseline_flags(normal: pd.DataFrame, recording: pd.DataFrame) -> dict[str, np.ndarray]:
    """Rows flagged by PCA T²+Q (85 % variance, 99.9 % limits) and by scikit-learn's IsolationForest as it ships,
    both fitted on ``normal`` (healthy rows, one column per signal) and applied to ``recording``'s same columns."""
    from sklearn.ensemble import IsolationForest

    cols = [c for c in normal.columns if normal[c].nunique(dropna=True) > 1]  # a constant column has no variance
    means = normal[cols].mean()
    X, Y = _filled(normal[cols], means), _filled(recording[cols], means)
    Z = (X - X.mean(axis=0)) / X.std(axis=0, ddof=1)
    share = np.cumsum(np.linalg.eigvalsh(np.cov(Z, rowvar=False))[::-1])
    k = int(min(np.searchsorted(share / share[-1], PCA_VARIANCE) + 1, len(cols) - 1, len(X) - 2))
    monitor = PcaMonitor(n_components=max(k, 1), confidence=PCA_CONFIDENCE).fit(X)
    forest = IsolationForest(random_state=0).fit(X)
    return {"PCA T2+Q": (monitor.predict_t2(Y) | monitor.predict_spe(Y)).astype(bool),
            "IsolationForest": forest.predict(Y) == -1}


def flag_figures(flags: np.ndarray, truth: np.ndarray, ts: np.ndarray, interval_s: float, on_delay: int) -> dict:
    """Point-wise F1, FAR, MAR; alarms (``on_delay`` consecutive flagged rows) starting on normal rows per normal
    hour; labelled events with an alarm starting inside them (as ``evaluate_recording`` counts the detector's)."""
    flags, truth = np.asarray(flags, dtype=bool), np.asarray(truth, dtype=bool)
    tp, fp = int((flags & truth).sum()), int((flags & ~truth).sum())
    fn, tn = int((~flags & truth).sum()), int((~flags & ~truth).sum())
    count = np.zeros(len(flags), dtype=int)
    run = 0
    for i, f in enumerate(flags):
        run = run + 1 if f else 0
        count[i] = run
    starts = np.flatnonzero(count == on_delay)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], truth.astype(int), [0]])))
    events = list(zip(edges[::2], edges[1::2]))
    normal_h = (~truth).sum() * interval_s / 3600
    false = int(sum(1 for s in starts if not truth[s]))
    return {"f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0, "false_alarm_rate": fp / (fp + tn) if fp + tn else 0.0,
            "missed_alarm_rate": fn / (fn + tp) if fn + tp else 0.0, "false_alarms": false,
            "false_alarms_per_hour": false / normal_h if normal_h else 0.0,
            "events_detected": sum(1 for a, b in events if any(a <= s < b for s in starts)), "events": len(events)}
