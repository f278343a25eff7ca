"""LineDetector: learns how a line's signals move together in each operating mode and scores departures from it.

Per mode, signals are standardised and smoothed causally with several EWMA weights
(raw rows catch sudden faults, slow averages catch small drifts); each smoothed vector
is scored by its Mahalanobis distance under a shrunk covariance (Ledoit-Wolf) of the
smoothed normal data, so correlated signals are judged together. The statistics are
normalised and combined by their maximum, and the alarm threshold is calibrated on
held-out normal data (time-ordered folds) to a target false-alarm rate with a
persistence requirement; scores are returned relative to that threshold (1.0 = limit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from threadpoolctl import threadpool_limits

from factory_copilot.detect.features import as_matrix, ewma_runs, hold_last, numeric_signals, runs
from factory_copilot.records import Mode

ALL_MODES = "all"


def mode_labels(values) -> np.ndarray:
    """Normalise a mode column (codes 0..3, Mode members or names) to mode names."""
    out = []
    for v in values:
        if isinstance(v, Mode):
            out.append(v.value)
            continue
        try:
            out.append(Mode.from_code(v).value)
        except (ValueError, IndexError, KeyError):
            out.append(str(v).lower())
    return np.asarray(out, dtype=object)


def flag_persistent(exceed: np.ndarray, persistence: int, bounds: list[tuple[int, int]]) -> np.ndarray:
    """True where the row is the persistence-th (or later) consecutive exceedance within its run."""
    if persistence <= 1:
        return exceed.copy()
    idx = np.arange(len(exceed))
    run_start = np.zeros(len(exceed), dtype=int)
    for a, b in bounds:
        run_start[a:b] = a
    # count of consecutive exceedances ending at each row, restarting at every run
    last_quiet = np.maximum(np.maximum.accumulate(np.where(exceed, -1, idx)), run_start - 1)
    return exceed & (idx - last_quiet >= persistence)


@dataclass
class ModeModel:
    """The learnt normal of one operating mode."""

    mean: np.ndarray
    scale: np.ndarray
    precisions: np.ndarray  # (n_stats, n_signals, n_signals)
    norms: np.ndarray  # per-statistic normaliser (99th percentile on held-out normal)
    threshold: float  # on the combined statistic
    n_rows: int
    context: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # indices of operating-point inputs
    context_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    coef: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (n_context, n_signals)

    def standardise(self, A: np.ndarray) -> np.ndarray:
        Z = (A - self.expected(A)) / self.scale
        Z[np.isnan(Z)] = 0.0  # a signal never seen yet counts as at its normal mean
        return Z

    def expected(self, A: np.ndarray) -> np.ndarray:
        """Each signal's normal value at the row's operating point (setpoints), else its mean."""
        if not len(self.context):
            return self.mean
        C = np.nan_to_num(A[..., self.context] - self.context_mean)
        return self.mean + C @ self.coef


def shrunk_covariance(W: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance about zero (the in-control mean), in O(n p²) with no sample blocks."""
    n, p = W.shape
    W = np.where(np.abs(W) < 1e-100, 0.0, W)  # subnormal floats make the product crawl
    S = W.T @ W / n
    mu = np.trace(S) / p
    delta = (np.sum(S**2) - 2 * mu * np.trace(S) + p * mu**2) / p  # ||S - mu I||² / p
    sq = np.einsum("ij,ij->i", W, W)
    beta = min((np.sum(sq**2) / n - np.sum(S**2)) / (n * p), delta)
    shrink = beta / delta if delta > 0 else 1.0
    return (1 - shrink) * S + shrink * mu * np.eye(p)


def _distances(W: np.ndarray, P: np.ndarray) -> np.ndarray:
    return np.einsum("ij,jk,ik->i", W, P, W)


class LineDetector(BaseEstimator):
    """Multivariate, mode-aware, causal anomaly detector with scikit-learn conventions.

    ``fit(X)`` takes a DataFrame of normal operation, rows in time order, one numeric column
    per signal (a ``mode`` column, if present, selects the per-mode normal). ``predict`` gives
    1 for anomalous rows, ``score_samples`` the score relative to the calibrated threshold,
    ``contributions`` each signal's share of the score. Every row's result depends only on that
    row and the rows before it.
    """

    def __init__(
        self,
        smoothing: tuple[float, ...] = (1.0, 0.3, 0.05),
        false_alarm_rate: float = 0.01,
        persistence: int = 1,
        n_splits: int = 5,
        margin: float = 1.0,
        transient_margin: float = 3.0,
        mode_column: str = "mode",
        settle_rows: int = 180,
        min_rows: int = 100,
        exclude: tuple[str, ...] = ("fault",),
        context: tuple[str, ...] | str = "auto",
    ):
        self.context = context
        self.smoothing = smoothing
        self.false_alarm_rate = false_alarm_rate
        self.persistence = persistence
        self.n_splits = n_splits
        self.margin = margin
        self.transient_margin = transient_margin
        self.mode_column = mode_column
        self.settle_rows = settle_rows
        self.min_rows = min_rows
        self.exclude = exclude

    # ---- shaping the table -------------------------------------------------------------
    def _modes_of(self, X: pd.DataFrame) -> np.ndarray:
        if self.mode_column and self.mode_column in X.columns:
            return mode_labels(X[self.mode_column].to_numpy())
        return np.full(len(X), ALL_MODES, dtype=object)

    def _settling(self, bounds: list[tuple[int, int]]) -> np.ndarray:
        """Rows inside the grace period after a mode change (the table's first run has none)."""
        mask = np.zeros(bounds[-1][1] if bounds else 0, dtype=bool)
        for a, b in bounds:
            if a > 0:
                mask[a : min(b, a + self.settle_rows)] = True
        return mask

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y=None) -> "LineDetector":
        # small matrices: BLAS threads only fight each other (and the other stations) for the edge box's cores
        with threadpool_limits(limits=1, user_api="blas"):
            return self._fit(X)

    def _fit(self, X: pd.DataFrame) -> "LineDetector":
        exclude = tuple(self.exclude) + ((self.mode_column,) if self.mode_column else ())
        self.signals_ = numeric_signals(X, exclude)
        self.feature_names_in_ = np.asarray(self.signals_, dtype=object)
        self.n_features_in_ = len(self.signals_)
        self.lams_ = np.asarray(self.smoothing, dtype=float)
        # operating-point inputs (setpoints): signals are judged against what normal is at that point
        names = [s for s in self.signals_ if "setpoint" in s] if self.context == "auto" else list(self.context)
        unknown = [c for c in names if c not in self.signals_]
        if unknown:
            raise ValueError(f"context column(s) not among the signals: {', '.join(unknown)}")
        self.context_ = np.array([self.signals_.index(c) for c in names], dtype=int)
        A = hold_last(as_matrix(X, self.signals_), np.nan)
        modes = self._modes_of(X)
        bounds = runs(modes)
        settling = self._settling(bounds)
        overall = np.nanstd(A, axis=0)
        # a signal flat within one mode (a stopped motor) still needs a usable scale
        self.scale_floor_ = np.maximum(0.01 * np.nan_to_num(overall), 1e-9)
        self.models_: dict[str, ModeModel] = {}
        self.skipped_modes_: dict[str, int] = {}
        run_id = np.zeros(len(modes), dtype=int)
        for i, (a, b) in enumerate(bounds):
            run_id[a:b] = i
        for mode in dict.fromkeys(modes):
            # settling rows are left out entirely: the model and its EWMA start once the mode has settled
            idx = np.flatnonzero((modes == mode) & ~settling)
            if len(idx) < self.min_rows:
                self.skipped_modes_[mode] = len(idx)
                continue
            # start-up, changeover and idle are short, few and drifting: a calibrated limit from a handful
            # of stretches is uncertain, so it is widened rather than alarming on the next stretch
            margin = self.margin * (1.0 if mode in (Mode.RUNNING.value, ALL_MODES) else self.transient_margin)
            self.models_[mode] = self._fit_mode(A[idx], runs(run_id[idx]), np.ones(len(idx), dtype=bool), margin)
        if not self.models_:
            raise ValueError(
                f"too little normal data to learn any mode: need {self.min_rows} rows per mode, "
                f"got {self.skipped_modes_}"
            )
        return self

    def _normal(self, A: np.ndarray, rows: np.ndarray) -> ModeModel:
        """Mean, operating-point regression and residual scale of each signal on the given rows."""
        mean = np.nan_to_num(np.nanmean(A[rows], axis=0))
        ctx = self.context_
        m = ModeModel(mean, np.ones(A.shape[1]), np.zeros((0, 0, 0)), np.zeros(0), 1.0, len(rows))
        if len(ctx):
            C = np.nan_to_num(A[rows][:, ctx] - mean[ctx])
            R = np.nan_to_num(A[rows] - mean)
            # ridge on the setpoints; a setpoint that never moved in this mode explains nothing
            spread = C.std(axis=0)
            keep = spread > 1e-9
            coef = np.zeros((len(ctx), A.shape[1]))
            if keep.any():
                Ck = C[:, keep]
                coef[keep] = np.linalg.solve(Ck.T @ Ck + 1e-3 * len(rows) * np.diag(spread[keep] ** 2), Ck.T @ R)
            m.context, m.context_mean, m.coef = ctx, mean[ctx], coef
        resid = A[rows] - m.expected(A[rows])
        m.scale = np.maximum(np.nan_to_num(np.nanstd(resid, axis=0)), self.scale_floor_)
        return m

    def _smoothed(self, Z: np.ndarray, bounds: list[tuple[int, int]]) -> list[np.ndarray]:
        return [ewma_runs(Z, lam, bounds) for lam in self.lams_]

    def _precisions(self, Ws: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
        return np.stack([np.linalg.pinv(shrunk_covariance(W[rows])) for W in Ws])

    def _fit_mode(self, A: np.ndarray, bounds: list[tuple[int, int]], usable: np.ndarray, margin: float) -> ModeModel:
        rows = np.flatnonzero(usable)
        k = max(2, self.n_splits)
        if len(bounds) >= 2:
            # whole stretches per fold: the threshold must cover how one stretch differs from the others
            parts = np.array_split(np.asarray(bounds, dtype=int), min(k, len(bounds)))
            folds = [np.concatenate([np.arange(a, b) for a, b in part]) for part in parts]
            folds = [np.intersect1d(f, rows) for f in folds]
        else:
            folds = np.array_split(rows, k)
        held_out = np.zeros((len(A), len(self.lams_)))
        for fold in folds:
            train = np.setdiff1d(rows, fold)
            Z = self._normal(A, train).standardise(A)
            Ws = self._smoothed(Z, bounds)
            P = self._precisions(Ws, train)
            for j, W in enumerate(Ws):
                held_out[fold, j] = _distances(W[fold], P[j])
        norms = np.maximum(np.quantile(held_out[rows], 0.99, axis=0), 1e-12)
        combined = (held_out / norms).max(axis=1)
        threshold = self._calibrate(combined, usable, bounds) * margin
        model = self._normal(A, rows)
        model.precisions = self._precisions(self._smoothed(model.standardise(A), bounds), rows)
        model.norms, model.threshold = norms, float(threshold)
        return model

    def _calibrate(self, combined: np.ndarray, usable: np.ndarray, bounds: list[tuple[int, int]]) -> float:
        """Smallest threshold whose persistent exceedances on held-out normal rows stay within the target rate."""
        values = np.sort(np.unique(combined[usable]))
        n = usable.sum()

        def rate(thr: float) -> float:
            flagged = flag_persistent((combined > thr) & usable, self.persistence, bounds)
            return flagged.sum() / n

        lo, hi = 0, len(values) - 1
        if rate(values[hi]) > self.false_alarm_rate:
            return float(values[hi])
        while lo < hi:
            mid = (lo + hi) // 2
            if rate(values[mid]) <= self.false_alarm_rate:
                hi = mid
            else:
                lo = mid + 1
        return float(values[lo])

    # ---- scoring -------------------------------------------------------------------------
    def model_for(self, mode: str) -> ModeModel | None:
        """The mode's model; a detector trained without modes judges every mode by its one normal."""
        return self.models_.get(mode) or self.models_.get(ALL_MODES)

    def _check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise RuntimeError("LineDetector is not fitted yet: call fit(X) with normal operation first")

    def _evaluate(self, X: pd.DataFrame) -> dict:
        """Score every row: combined score (relative to threshold), winning statistic, smoothed vectors."""
        self._check_fitted()
        with threadpool_limits(limits=1, user_api="blas"):
            return self._evaluate_rows(X)

    def _evaluate_rows(self, X: pd.DataFrame) -> dict:
        A = hold_last(as_matrix(X, self.signals_), np.nan)
        modes = self._modes_of(X)
        bounds = runs(modes)
        n = len(A)
        score = np.zeros(n)
        winner = np.zeros(n, dtype=int)
        Wsel = np.zeros_like(A)
        modelled = np.zeros(n, dtype=bool)
        for a, b in bounds:
            model = self.model_for(modes[a])
            if a > 0:
                a = min(b, a + self.settle_rows)  # scoring starts once the new mode has settled
            if model is None or a == b:
                continue
            Z = model.standardise(A[a:b])
            Ws = self._smoothed(Z, [(0, b - a)])
            D = np.stack([_distances(W, model.precisions[j]) for j, W in enumerate(Ws)], axis=1) / model.norms
            win = D.argmax(axis=1)
            score[a:b] = D[np.arange(b - a), win] / model.threshold
            winner[a:b] = win
            Wsel[a:b] = np.stack(Ws)[win, np.arange(b - a)]
            modelled[a:b] = True
        exceed = (score > 1.0) & modelled
        flags = flag_persistent(exceed, self.persistence, bounds) if n else exceed
        return {"score": score, "flags": flags, "winner": winner, "W": Wsel, "modes": modes, "bounds": bounds}

    def score_samples(self, X: pd.DataFrame) -> np.ndarray:
        """Anomaly score per row relative to the calibrated threshold: above 1.0 is beyond normal."""
        return self._evaluate(X)["score"]

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        return self.score_samples(X) - 1.0

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """1 where the row is anomalous (past the threshold for ``persistence`` rows, not settling), else 0."""
        return self._evaluate(X)["flags"].astype(int)

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Each signal's share (0..1, rows sum to 1) of the row's score, from the statistic that dominated it.

        Reconstruction-based: signal i's part is how far the distance falls if i alone is moved back to normal,
        which points at the broken signal rather than smearing over its correlated neighbours.
        """
        ev = self._evaluate(X)
        C = np.zeros((len(X), len(self.signals_)))
        for a, b in ev["bounds"]:
            model = self.model_for(ev["modes"][a])
            if a > 0:
                a = min(b, a + self.settle_rows)
            if model is None or a == b:
                continue
            W = ev["W"][a:b]
            P = model.precisions[ev["winner"][a:b]]
            # reconstruction-based contribution (Alcala & Qin): how much of the distance goes if signal i is repaired
            C[a:b] = np.einsum("ijk,ik->ij", P, W) ** 2 / np.diagonal(P, axis1=1, axis2=2)
        total = C.sum(axis=1, keepdims=True)
        C = np.divide(C, total, out=np.zeros_like(C), where=total > 0)
        return pd.DataFrame(C, index=X.index, columns=self.signals_)

    def stream(self) -> "DetectorStream":
        """A one-row-at-a-time runner holding the causal state, for the live station."""
        self._check_fitted()
        return DetectorStream(self)


class DetectorStream:
    """Live state of a LineDetector: O(1) work per row, same results as the batch methods."""

    def __init__(self, detector: LineDetector):
        self.detector = detector
        self.lams = detector.lams_[:, None]
        self.last = np.full(len(detector.signals_), np.nan)
        self.mode: str | None = None
        self.model: ModeModel | None = None
        self.W = np.zeros((len(detector.lams_), len(detector.signals_)))
        self.settle_left = 0
        self.count = 0
        self.score = 0.0
        self.winner = 0

    def update(self, x: np.ndarray, mode: "Mode | str | float | None" = None) -> tuple[float, bool]:
        """Feed one row (signals in ``detector.signals_`` order, NaN = no new value); returns (score, anomalous)."""
        x = np.where(np.isnan(x), self.last, x)
        self.last = x
        label = ALL_MODES if mode is None else mode_labels([mode])[0]
        if label != self.mode:
            if self.mode is not None:
                self.settle_left = self.detector.settle_rows
            self.mode = label
            self.model = self.detector.model_for(label)
            self.W[:] = 0.0
            self.count = 0
        model = self.model
        if self.settle_left > 0 or model is None:
            self.settle_left = max(0, self.settle_left - 1)
            self.score = 0.0
            return 0.0, False
        z = (x - model.expected(x)) / model.scale
        z[np.isnan(z)] = 0.0
        self.W = self.lams * z + (1.0 - self.lams) * self.W
        D = np.einsum("ij,ijk,ik->i", self.W, model.precisions, self.W) / model.norms
        self.winner = int(D.argmax())
        self.score = float(D[self.winner] / model.threshold)
        exceed = self.score > 1.0
        self.count = self.count + 1 if exceed else 0
        return self.score, self.count >= max(1, self.detector.persistence) and exceed

    def contributions(self) -> dict[str, float]:
        """Signal key -> share of the current row's score, largest first (only shares above 0)."""
        if self.model is None or self.score == 0.0:
            return {}
        w = self.W[self.winner]
        P = self.model.precisions[self.winner]
        c = (P @ w) ** 2 / np.diagonal(P)
        total = c.sum()
        if total <= 0:
            return {}
        order = np.argsort(-c)
        return {self.detector.signals_[i]: float(c[i] / total) for i in order if c[i] > 0}
