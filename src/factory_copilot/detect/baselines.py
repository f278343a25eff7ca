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
