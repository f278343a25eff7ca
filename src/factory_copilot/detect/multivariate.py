"""LineDetector: learns how a line's signals move together at each operating point and scores departures from it.

Per mode, each signal's normal value is regressed on the operating point (the load and setpoint
signals, with their recent history so that slow responses such as a temperature following the
load are expected, not flagged); the residuals are standardised and smoothed causally with
several EWMA weights (raw rows catch sudden faults, slow averages catch small drifts); each
smoothed vector is scored by its Mahalanobis distance under a shrunk covariance (Ledoit-Wolf) of
the smoothed normal data, so correlated signals are judged together. The statistics are
normalised and combined by their maximum, and the alarm threshold is calibrated on held-out
normal data (time-ordered folds) to a target false-alarm rate with a persistence requirement.

That calibration is then checked out of sample: the last part of every normal stretch is held
out of the fit, the false-alarm rate measured on it, and the threshold widened until it meets
the target (``calibration_`` says what was measured and whether the history was long enough to
tell). An optional adaptive baseline follows slow drift of a healthy machine; it is frozen while
the detector flags and for a while after, so a growing fault is not learnt away. Scores are
returned relative to the threshold (1.0 = limit).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import threadpool_limits

from factory_copilot.detect.estimator import Estimator
from factory_copilot.detect.features import as_matrix, ewma, first_order, hold_last, numeric_signals, runs, table_like

if TYPE_CHECKING:
    import pandas as pd

ALL_MODES = "all"
# consecutive blocks of the normal history whose means tell how well it pins each signal's level
LEVEL_BLOCKS = 10


def mode_labels(values) -> np.ndarray:
    """A mode column as mode names (strings); integral numbers print without a decimal point."""
    out = []
    for v in values:
        if isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
            out.append(str(int(v)))
        else:
            out.append(str(v))
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


def _streak(exceed: np.ndarray, carried: int) -> np.ndarray:
    """Consecutive exceedances ending at each row, continuing a streak of ``carried`` rows before the first."""
    idx = np.arange(len(exceed))
    last_quiet = np.maximum.accumulate(np.where(exceed, -1, idx))
    count = np.where(last_quiet < 0, idx + 1 + carried, idx - last_quiet)
    return np.where(exceed, count, 0)


@dataclass
class _Restart:
    """Where the slowest average is restarted from the next faster one's state, and the count carried across blocks:
    it alone over its limit and falling for ``rows`` rows holds the memory of an excursion the faster averages no
    longer see (a fault that has ended), which would otherwise flag normal running for as long again."""

    slow: int  # index of the slowest average among the detector's weights
    faster: int  # the next faster one
    others: np.ndarray  # indices of every average but the slowest
    rows: int
    falling: int = 0
    previous: float = np.inf

    def reset(self) -> None:
        self.falling, self.previous = 0, np.inf

    def step(self, s: np.ndarray) -> bool:
        """One row's scores per average (1.0 = limit); True when the slowest is to restart after this row."""
        slow = s[self.slow]
        alone = slow > 1.0 and bool(s[self.others].max() <= 1.0)
        self.falling = self.falling + 1 if alone and slow < self.previous else 0
        self.previous = slow
        if self.falling >= self.rows:
            self.reset()
            return True
        return False

    def apply(self, S: np.ndarray, Ws: list[np.ndarray], X: np.ndarray, lam: float, rescore) -> None:
        """Restart a block in place: ``S`` its rows' scores per average, ``Ws`` the averages of its input ``X``;
        ``rescore(W)`` scores rows of the slowest average. Only the rows a restart reaches are recomputed
        (its effect on the average decays as (1 - lam)^k: gone to rounding after ``reach`` rows)."""
        reach = int(np.ceil(np.log(1e-13) / np.log1p(-lam))) if lam < 1.0 else 1
        n = len(S)
        t = 0
        while t < n:
            # rows where the slowest alone is over its limit; the run of them falling, continued from before
            alone = (S[t:, self.slow] > 1.0) & (S[t:, self.others].max(axis=1) <= 1.0)
            before = np.concatenate([[self.previous], S[t:-1, self.slow]]) if n - t > 1 else np.array([self.previous])
            counts = _streak(alone & (S[t:, self.slow] < before), self.falling)
            hit = np.flatnonzero(counts >= self.rows)
            if not len(hit):
                self.falling, self.previous = int(counts[-1]), float(S[-1, self.slow])
                return
            i = t + int(hit[0])
            self.reset()
            end = min(n, i + 1 + reach)
            if end > i + 1:
                W = Ws[self.slow]
                W[i + 1 : end] = first_order(X[i + 1 : end], lam, start=Ws[self.faster][i])
                S[i + 1 : end, self.slow] = rescore(W[i + 1 : end])
            t = i + 1


@dataclass
class ModeModel:
    """The learnt normal of one operating mode."""

    mean: np.ndarray
    scale: np.ndarray
    precisions: np.ndarray  # (n_stats, n_signals, n_signals)
    norms: np.ndarray  # per-statistic normaliser (99th percentile on held-out normal)
    threshold: float  # on the combined statistic
    n_rows: int
    context_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))  # of the operating-point features
    coef: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (n_features, n_signals)
    widened: float = 1.0  # factor the out-of-sample check put on the calibrated threshold

    def expected(self, A: np.ndarray, F: np.ndarray) -> np.ndarray:
        """Each signal's normal value at the row's operating point (features F), else its mean."""
        if not self.coef.size:
            return self.mean
        return self.mean + np.nan_to_num(F - self.context_mean) @ self.coef

    def standardise(self, A: np.ndarray, F: np.ndarray) -> np.ndarray:
        Z = (A - self.expected(A, F)) / self.scale
        Z[np.isnan(Z)] = 0.0  # a signal never seen yet counts as at its normal mean
        return Z


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


def _poisson_sf(k: int, mu: float) -> float:
    """P(N > k) for N Poisson with mean ``mu``: how surprising k+1 or more false-alarm episodes are."""
    # calibration only (fit): the service that runs a trained detector never loads scipy
    from scipy.stats import poisson

    return float(poisson.sf(k, mu))


def _distances(W: np.ndarray, P: np.ndarray) -> np.ndarray:
    return np.einsum("ij,jk,ik->i", W, P, W)


def _ewma_from_first(x: np.ndarray, lam: float) -> np.ndarray:
    """EWMA of each column started at its first finite value (NaN before it), as a lagged reading of it."""
    out = np.full_like(x, np.nan)
    for j in range(x.shape[1]):
        finite = np.flatnonzero(np.isfinite(x[:, j]))
        if not len(finite):
            continue
        f = finite[0]
        out[f:, j] = first_order(x[f:, j], lam, start=x[f, j])
    return out


def rows_off_usual(A: np.ndarray) -> np.ndarray:
    """Per column, the rows (of finite readings) away from its most common value: how often the signal moved."""
    out = np.zeros(A.shape[1], dtype=int)
    for j in range(A.shape[1]):
        x = A[:, j][np.isfinite(A[:, j])]
        if len(x):
            out[j] = len(x) - np.unique(x, return_counts=True)[1].max()
    return out


def _pairwise(Z: np.ndarray) -> np.ndarray:
    """Squares and products of standardised operating-point signals (a curved response, and one signal's
    effect depending on another's, as a motor's current on both flow and pressure)."""
    i, j = np.triu_indices(Z.shape[1])
    return Z[:, i] * Z[:, j]


@dataclass
class _Segment:
    """Rows [start, end) of one mode within one run; scoring begins at ``scored`` (after the settling grace)."""

    start: int
    end: int
    scored: int
    mode: str
    run: int


class LineDetector(Estimator):
    """Multivariate, mode-aware, causal anomaly detector with scikit-learn conventions.

    ``fit(X)`` takes a DataFrame of normal operation, rows in time order, one numeric column
    per signal (a ``mode`` column, if present, selects the per-mode normal; a ``run`` column
    separates recordings). ``flag`` gives 1 for anomalous rows, ``anomaly_score`` the score
    relative to the calibrated threshold, ``contributions`` each signal's share of the score.
    Every row's result depends only on that row and the rows before it.

    ``context``: the operating-point columns (load, setpoints) other signals are judged against;
    "auto" takes columns named like a setpoint. ``context_degree`` 2 adds their squares and products
    (a curved response) and ``context_lags`` lagged readings of them, EWMA time constants in rows (a
    lagged response), where the history supports them (``context_degree_``, ``context_lags_``).
    ``steady_modes``: modes calibrated with ``margin`` (the others, short and drifting, with
    ``transient_margin``; None: every mode is steady). ``holdout``: the share of every normal stretch
    held out to check the false-alarm rate out of sample (``calibration_``). ``baseline_rows``: time
    constant of the adaptive baseline in rows (None: fixed normal); it learns from chunks of
    ``baseline_every`` rows once they are ``baseline_hold`` rows old, if nothing was flagged since and
    their mean score stayed under ``baseline_freeze``. ``interleave``: calibration folds of blocks dealt
    in turn even for one stretch (default: contiguous folds). ``min_effective_rows``: a signal whose
    history, once the operating point is taken out, holds fewer effective independent rows than this
    (it moves slowly for so short a history, as a rig's temperature warming up over 400 s) has a level
    the history cannot pin down; it is judged by its departure from its own recent level, an EWMA of
    ``level_rows`` rows (``drifting_``: those signals' effective rows; 0: every signal on its level).
    ``min_smoothed_samples``: each smoothing weight is raised until the rows that fit the model hold at least this
    many independent averages of it (an EWMA of weight lam over n rows averages about n*lam/(2-lam) of them), so
    a history of a few hundred rows is not judged on an average slower than it can calibrate (``lams_``: the
    weights used; 0: ``smoothing`` as given). ``restart_after``: the slowest average, alone over its limit and
    falling for this share of its time constant (1/lam rows), restarts from the next faster average's state: it
    then holds the memory of an excursion that has passed, not a drift (0: never; a drift the faster averages
    share survives the restart, since they hold it too).
    """

    def __init__(
        self,
        smoothing: tuple[float, ...] = (1.0, 0.3, 0.05),
        false_alarm_rate: float = 0.01,
        persistence: int = 1,
        n_splits: int = 5,
        margin: float = 1.0,
        transient_margin: float = 3.0,
        steady_modes: tuple[str, ...] | None = None,
        mode_column: str = "mode",
        run_column: str | None = "run",
        settle_rows: int = 180,
        min_rows: int = 100,
        exclude: tuple[str, ...] = ("fault",),
        context: tuple[str, ...] | str = "auto",
        context_degree: int = 1,
        context_lags: tuple[float, ...] = (),
        context_ridge: float = 1e-6,
        holdout: float = 0.2,
        baseline_rows: float | None = None,
        baseline_every: int = 60,
        baseline_hold: int = 600,
        baseline_freeze: float = 0.5,
        interleave: bool = False,
        min_effective_rows: float = 0.0,
        level_rows: float = 240.0,
        min_smoothed_samples: float = 0.0,
        restart_after: float = 0.0,
    ):
        self.smoothing = smoothing
        self.false_alarm_rate = false_alarm_rate
        self.persistence = persistence
        self.n_splits = n_splits
        self.margin = margin
        self.transient_margin = transient_margin
        self.steady_modes = steady_modes
        self.mode_column = mode_column
        self.run_column = run_column
        self.settle_rows = settle_rows
        self.min_rows = min_rows
        self.exclude = exclude
        self.context = context
        self.context_degree = context_degree
        self.context_lags = context_lags
        self.context_ridge = context_ridge
        self.holdout = holdout
        self.baseline_rows = baseline_rows
        self.baseline_every = baseline_every
        self.baseline_hold = baseline_hold
        self.baseline_freeze = baseline_freeze
        self.interleave = interleave
        self.min_effective_rows = min_effective_rows
        self.level_rows = level_rows
        self.min_smoothed_samples = min_smoothed_samples
        self.restart_after = restart_after

    # ---- shaping the table -------------------------------------------------------------
    def _modes_of(self, X: pd.DataFrame) -> np.ndarray:
        if self.mode_column and self.mode_column in X.columns:
            return mode_labels(X[self.mode_column].to_numpy())
        return np.full(len(X), ALL_MODES, dtype=object)

    def _runs_of(self, X: pd.DataFrame) -> np.ndarray:
        if self.run_column and self.run_column in X.columns:
            r = X[self.run_column].to_numpy()
            return np.concatenate([[0], np.cumsum(r[1:] != r[:-1])]) if len(r) else np.zeros(0, dtype=int)
        return np.zeros(len(X), dtype=int)

    def _segments(self, modes: np.ndarray, run_ids: np.ndarray) -> list[_Segment]:
        """Stretches of one mode within one run; a mode change inside a run earns the settling grace."""
        keys = np.array([f"{r}|{m}" for r, m in zip(run_ids, modes)], dtype=object)
        out = []
        for a, b in runs(keys):
            changed = a > 0 and run_ids[a - 1] == run_ids[a]
            out.append(_Segment(a, b, min(b, a + self.settle_rows) if changed else a, str(modes[a]), int(run_ids[a])))
        return out

    def _table(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[_Segment]]:
        A = hold_last(as_matrix(X, self.signals_), np.nan)
        # a detector with one normal for every mode ignores the mode column (as its stream does)
        modes = self._modes_of(X) if self.per_mode else np.full(len(X), ALL_MODES, dtype=object)
        run_ids = self._runs_of(X)
        segs = self._segments(modes, run_ids)
        F = self._context_features(A, run_ids)
        return self._from_level(A, run_ids, self.drifting_index_), F, modes, segs

    def _from_level(self, A: np.ndarray, run_ids: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """``columns`` as their departure from their own recent level (the EWMA up to the row before), per run."""
        if not len(columns):
            return A
        A = A.copy()
        lam = 1.0 / max(float(self.level_rows), 1.0)
        for a, b in runs(run_ids):
            x = A[a:b, columns]
            level = _ewma_from_first(x, lam)
            before = np.vstack([x[:1], level[:-1]])  # the row's own value is not its level yet: a step shows whole
            A[a:b, columns] = x - np.where(np.isnan(before), x, before)
        return A

    def _effective_rows(self, A: np.ndarray, F: np.ndarray, modes: np.ndarray, segs: list[_Segment],
                        usable: np.ndarray) -> np.ndarray:
        """Per signal, how many independent rows its normal history holds once its mode's operating point is taken
        out, summed over the stretches: in each, the variance of its rows over that of its mean, the latter from
        the means of ``LEVEL_BLOCKS`` consecutive blocks (batch means), so a slow wander and a trend count against
        it. Stretches are counted apart: a level that differs between recordings is the history's to show."""
        n_eff = np.zeros(A.shape[1])
        for mode in dict.fromkeys(modes):
            rows = np.flatnonzero(usable & (modes == mode))
            if len(rows) < self.min_rows:
                continue
            R = np.nan_to_num(A - self._normal(A, F, rows).expected(A, F))
            for seg in (s for s in segs if s.mode == mode and s.end - s.scored >= 2 * LEVEL_BLOCKS):
                r = R[seg.scored : seg.end]
                means = np.stack([b.mean(axis=0) for b in np.array_split(r, LEVEL_BLOCKS)])
                spread = means.var(axis=0, ddof=1)
                n_eff += np.minimum(len(r), np.divide(LEVEL_BLOCKS * r.var(axis=0), spread,
                                                      out=np.full(A.shape[1], float(len(r))), where=spread > 0))
        return n_eff

    # ---- the operating point -----------------------------------------------------------
    def _context_features(self, A: np.ndarray, run_ids: np.ndarray) -> np.ndarray:
        """Operating-point features per row: each context signal, its square, its lagged readings (causal)."""
        if not len(self.context_):
            return np.zeros((len(A), 0))
        C = A[:, self.context_]
        parts = [C]
        if self.context_degree_ >= 2:
            parts.append(_pairwise((C - self.context_centre_) / self.context_spread_))
        if self.context_lags_:
            lagged = [np.empty_like(C) for _ in self.context_lags_]
            for a, b in runs(run_ids):
                for k, tau in enumerate(self.context_lags_):
                    lagged[k][a:b] = _ewma_from_first(C[a:b], 1.0 / max(float(tau), 1.0))
            parts.extend(lagged)
        return np.hstack(parts)

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y=None, holdout=None, groups=None) -> "LineDetector":
        """Learn the normal of each mode from ``X``.

        ``holdout``: rows (boolean, one per row) to hold out for the out-of-sample check; default the
        last ``self.holdout`` share of every stretch. ``groups``: a label per row (operating regimes) to
        report the held-out false-alarm rate by, in ``calibration_["groups"]``.
        """
        # small matrices: BLAS threads only fight each other (and the other stations) for the edge box's cores
        with threadpool_limits(limits=1, user_api="blas"):
            return self._fit(X, holdout, groups)

    def _fit(self, X: pd.DataFrame, holdout, groups) -> "LineDetector":
        exclude = tuple(self.exclude) + tuple(c for c in (self.mode_column, self.run_column) if c)
        self.signals_ = numeric_signals(X, exclude)
        self.feature_names_in_ = np.asarray(self.signals_, dtype=object)
        self.n_features_in_ = len(self.signals_)
        names = [s for s in self.signals_ if "setpoint" in s] if self.context == "auto" else list(self.context)
        unknown = [c for c in names if c not in self.signals_]
        if unknown:
            raise ValueError(f"context column(s) not among the signals: {', '.join(unknown)}")
        self.context_ = np.array([self.signals_.index(c) for c in names], dtype=int)
        A = hold_last(as_matrix(X, self.signals_), np.nan)
        C = A[:, self.context_]
        self.context_centre_ = np.nan_to_num(np.nanmean(C, axis=0)) if len(self.context_) else np.zeros(0)
        self.context_spread_ = np.maximum(np.nan_to_num(np.nanstd(C, axis=0)), 1e-9) if len(self.context_) else np.zeros(0)
        modes = self._modes_of(X)
        run_ids = self._runs_of(X)
        segs = self._segments(modes, run_ids)
        usable = np.zeros(len(A), dtype=bool)
        for s in segs:
            usable[s.scored : s.end] = True  # settling rows are left out entirely
        # lagged readings only where the operating point moves while the mode holds (a load): a setpoint that
        # changes only with the mode gives them nothing to learn but noise; curves only where the operating
        # point took enough values to show one (a square through two setpoints extrapolates wildly to a third)
        within = np.zeros(len(A), dtype=bool)
        within[1:] = usable[1:] & usable[:-1] & (run_ids[1:] == run_ids[:-1]) & (modes[1:] == modes[:-1])
        moving = (np.abs(np.diff(C, axis=0)) > 0)[within[1:]] if len(self.context_) and len(A) > 1 else np.zeros((0, 0))
        load = bool(moving.size and moving.mean(axis=0).max() > 0.5)
        values = min((len(np.unique(c[np.isfinite(c)])) for c in C[usable].T), default=0)
        self.context_lags_ = tuple(self.context_lags) if load else ()
        self.context_degree_ = self.context_degree if load or values >= 5 else 1
        F = self._context_features(A, run_ids)
        # a signal off its usual value in fewer rows than a mode needs (a standby pump never run, or run a few
        # hours of a year) has no normal spread to learn: judged by it, any change is a 1e3 to 1e9-sigma event
        # that sets the threshold in calibration and holds the slow averages up for days; it is left out
        self.unjudged_ = tuple(s for s, k in zip(self.signals_, rows_off_usual(A[usable])) if k < self.min_rows)
        self._set_scale_floor(A)
        self.drifting_ = {}
        if self.min_effective_rows and usable.any():
            n_eff = self._effective_rows(A, F, modes, segs, usable)
            slow = [j for j in range(len(self.signals_)) if n_eff[j] < self.min_effective_rows and j not in self.context_]
            self.drifting_ = {self.signals_[j]: float(n_eff[j]) for j in slow}
            A = self._from_level(A, run_ids, self.drifting_index_)
            self._set_scale_floor(A)

        held = self._holdout_rows(segs, len(A)) if holdout is None else np.asarray(holdout, dtype=bool).copy()
        if len(held) != len(A):
            raise ValueError(f"holdout has {len(held)} entries for {len(A)} rows")
        held &= usable
        # a mode too short to spare its held-out rows is fitted on all of them, and says so
        for mode in dict.fromkeys(modes):
            in_mode = modes == mode
            if (usable & in_mode & ~held).sum() < self.min_rows:
                held[in_mode] = False
        self.lams_ = self._supported_smoothing(int((usable & ~held).sum()))
        report: dict = {"target": self.false_alarm_rate, "persistence": self.persistence, "modes": {}, "groups": {},
                        "drifting": dict(self.drifting_), "level_rows": float(self.level_rows),
                        "asked_smoothing": [float(v) for v in self.smoothing], "smoothing": [float(v) for v in self.lams_],
                        "fit_rows": int((usable & ~held).sum())}
        factors: dict[str, float] = {}
        if held.any():
            self.models_, _ = self._fit_modes(A, F, modes, segs, usable & ~held)
            ev = self._evaluate_arrays(A, F, segs)
            factors = self._check_held_out(ev, modes, held, segs, report, groups)
        self.models_, self.skipped_modes_ = self._fit_modes(A, F, modes, segs, usable)
        if not self.models_:
            raise ValueError(
                f"too little normal data to learn any mode: need {self.min_rows} rows per mode, "
                f"got {self.skipped_modes_}"
            )
        for mode, model in self.models_.items():
            model.widened = factors.get(mode, 1.0)
            model.threshold *= model.widened
            entry = report["modes"].setdefault(mode, {"held_out": 0})
            entry["rows"] = model.n_rows
        for mode, n in self.skipped_modes_.items():
            report["modes"].setdefault(mode, {"held_out": 0})["rows"] = n
            report["modes"][mode]["skipped"] = True
        report["unjudged"] = list(self.unjudged_)
        self.calibration_ = report
        return self

    def _supported_smoothing(self, n: int) -> np.ndarray:
        """The smoothing weights, each raised to the slowest the ``n`` fitting rows hold ``min_smoothed_samples``
        independent averages of: slower, its normal spread and threshold rest on a handful of values, and
        a short history's slow wander after it (a rig cooling) is flagged for hours
        (bench/public_benchmarks.py: SKAB's false-alarm rate 20.5 % -> 15.5 %)."""
        lams = np.asarray(self.smoothing, dtype=float)
        k = float(self.min_smoothed_samples)
        if k <= 0 or n <= 0:
            return lams
        floor = min(1.0, 2.0 * k / (n + k))  # n * lam / (2 - lam) = k
        return np.array(list(dict.fromkeys(np.maximum(lams, floor).tolist())))

    def _set_scale_floor(self, A: np.ndarray) -> None:
        # a signal flat within one mode (a stopped motor) still needs a usable scale
        self.scale_floor_ = np.maximum(0.01 * np.nan_to_num(np.nanstd(A, axis=0)), 1e-9)

    def _holdout_rows(self, segs: list[_Segment], n: int) -> np.ndarray:
        """The last ``holdout`` share of every stretch's scored rows."""
        held = np.zeros(n, dtype=bool)
        if self.holdout and self.holdout > 0:
            for s in segs:
                k = int(np.floor((s.end - s.scored) * self.holdout))
                if k > 0:
                    held[s.end - k : s.end] = True
        return held

    def _fit_modes(self, A, F, modes, segs, rows) -> tuple[dict[str, ModeModel], dict[str, int]]:
        models: dict[str, ModeModel] = {}
        skipped: dict[str, int] = {}
        seg_id = np.zeros(len(A), dtype=int)
        for i, s in enumerate(segs):
            seg_id[s.start : s.end] = i
        for mode in dict.fromkeys(modes):
            idx = np.flatnonzero((modes == mode) & rows)
            if len(idx) < self.min_rows:
                skipped[str(mode)] = len(idx)
                continue
            # start-up, changeover and idle are short, few and drifting: a calibrated limit from a handful
            # of stretches is uncertain, so it is widened rather than alarming on the next stretch
            steady = self.steady_modes is None or mode in self.steady_modes or mode == ALL_MODES
            margin = self.margin * (1.0 if steady else self.transient_margin)
            models[str(mode)] = self._fit_mode(A[idx], F[idx], runs(seg_id[idx]), margin)
        return models, skipped

    def _normal(self, A: np.ndarray, F: np.ndarray, rows: np.ndarray) -> ModeModel:
        """Mean, operating-point regression and residual scale of each signal on the given rows."""
        mean = np.nan_to_num(np.nanmean(A[rows], axis=0))
        m = ModeModel(mean, np.ones(A.shape[1]), np.zeros((0, 0, 0)), np.zeros(0), 1.0, len(rows))
        if F.shape[1]:
            f_mean = np.nan_to_num(np.nanmean(F[rows], axis=0))
            Cf = np.nan_to_num(F[rows] - f_mean)
            R = np.nan_to_num(A[rows] - mean)
            # ridge on the operating point; a feature that never moved in this mode explains nothing
            spread = Cf.std(axis=0)
            keep = spread > 1e-9
            coef = np.zeros((F.shape[1], A.shape[1]))
            if keep.any():
                Ck = Cf[:, keep]
                coef[keep] = np.linalg.solve(Ck.T @ Ck + self.context_ridge * len(rows) * np.diag(spread[keep] ** 2), Ck.T @ R)
            # the load and setpoints themselves are judged against their own spread, not explained away
            coef[:, self.context_] = 0.0
            m.context_mean, m.coef = f_mean, coef
        resid = A[rows] - m.expected(A[rows], F[rows])
        m.scale = np.maximum(np.nan_to_num(np.nanstd(resid, axis=0)), self.scale_floor_)
        m.scale[~self.judged_] = np.inf  # its standardised residual is 0: no part of any distance
        return m

    def _smoothed(self, Z: np.ndarray, bounds: list[tuple[int, int]]) -> list[np.ndarray]:
        out = []
        for lam in self.lams_:
            W = np.empty_like(Z)
            for a, b in bounds:
                W[a:b] = ewma(Z[a:b], lam)
            out.append(W)
        return out

    def _precisions(self, Ws: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
        return np.stack([np.linalg.pinv(shrunk_covariance(W[rows])) for W in Ws])

    def _held_out(self, A: np.ndarray, F: np.ndarray, bounds: list[tuple[int, int]],
                  folds: list[np.ndarray]) -> np.ndarray:
        """Each row's distance per smoothing scale, from a model fitted without the row's fold."""
        rows = np.arange(len(A))
        held_out = np.zeros((len(A), len(self.lams_)))
        for fold in folds:
            train = np.setdiff1d(rows, fold)
            Z = self._normal(A, F, train).standardise(A, F)
            Ws = self._smoothed(Z, bounds)
            P = self._precisions(Ws, train)
            for j, W in enumerate(Ws):
                held_out[fold, j] = _distances(W[fold], P[j])
        return held_out

    def _fit_mode(self, A: np.ndarray, F: np.ndarray, bounds: list[tuple[int, int]], margin: float) -> ModeModel:
        rows = np.arange(len(A))
        k = max(2, self.n_splits)
        longest = max(b - a for a, b in bounds)
        if len(bounds) >= 2 and longest <= 2 * len(A) / 3:
            # whole stretches per fold: the threshold must cover how one stretch differs from the others
            parts = np.array_split(np.asarray(bounds, dtype=int), min(k, len(bounds)))
            folds = [np.concatenate([np.arange(a, b) for a, b in part]) for part in parts]
        elif len(bounds) >= 2 or self.interleave:
            # a stretch holding most of the history (a long recording across regimes) would take whole
            # regimes out of a fold: cut stretches into blocks and deal them to the folds in turn
            size = max(self.settle_rows, int(np.ceil(len(A) / (2 * k))))
            blocks = [np.arange(c, min(c + size, b)) for a, b in bounds for c in range(a, b, size)]
            folds = [np.concatenate(blocks[j::k]) for j in range(min(k, len(blocks)))]
        else:
            folds = np.array_split(rows, k)
        held_out = self._held_out(A, F, bounds, folds)
        norms = np.maximum(np.quantile(held_out, 0.99, axis=0), 1e-12)
        combined = (held_out / norms).max(axis=1)
        threshold = self._calibrate(combined, np.ones(len(A), dtype=bool), bounds) * margin
        model = self._normal(A, F, rows)
        model.precisions = self._precisions(self._smoothed(model.standardise(A, F), bounds), rows)
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

    # ---- the out-of-sample check -------------------------------------------------------------
    def _rate_entry(self, flags: np.ndarray) -> dict:
        """What held-out rows with these false flags say about the rate: measured, and what the rows can show."""
        n = len(flags)
        flagged = int(flags.sum())
        episodes = int(np.sum(flags[1:] & ~flags[:-1]) + (flags[0] if n else 0))
        # episodes to expect at the target rate: its flagged rows come in episodes as long as those seen
        expected = n * self.false_alarm_rate / max(1.0, flagged / max(episodes, 1))
        return {
            "held_out": int(n),
            "flagged": flagged,
            "episodes": episodes,
            "rate": flagged / n if n else None,
            # zero flags in n rows bound the rate below 3/n (95 %); fewer rows cannot show the target
            "shown_below": (3.0 / n) if n else None,
            "estimable": bool(n and 3.0 / n <= self.false_alarm_rate),
            # the target is missed when more false-alarm episodes came than it allows, at 95 % confidence
            # (episodes, not rows: the rows of one excursion are not independent evidence)
            "missed": bool(flagged / max(n, 1) > self.false_alarm_rate and _poisson_sf(episodes - 1, expected) < 0.05),
        }

    def _check_held_out(self, ev: dict, modes, held, segs, report: dict, groups) -> dict[str, float]:
        """Measure the held-out rate per mode; where it misses the target, the factor on the threshold that meets it."""
        bounds = [(s.start, s.end) for s in segs]
        flags = ev["flags"]
        factors: dict[str, float] = {}
        for mode in self.models_:
            rows = held & (modes == mode)
            n = int(rows.sum())
            if not n:
                continue
            entry = self._rate_entry(flags[rows])
            factor = 1.0
            if entry["missed"]:
                # widen: the smallest factor on the threshold whose persistent flags meet the target
                s = ev["score"]
                cands = np.sort(np.unique(s[rows & (s > 1.0)]))
                lo, hi = 0, len(cands) - 1

                def rate(f: float) -> float:
                    return flag_persistent((s > f) & rows, self.persistence, bounds)[rows].sum() / n

                while lo < hi:
                    mid = (lo + hi) // 2
                    if rate(cands[mid]) <= self.false_alarm_rate:
                        hi = mid
                    else:
                        lo = mid + 1
                factor = float(cands[lo])
                entry["rate_after"] = float(rate(factor))
            entry["factor"] = factor
            factors[mode] = factor
            report["modes"][mode] = entry
        if groups is not None:
            g = np.asarray(groups, dtype=object)
            for label in dict.fromkeys(g):
                report["groups"][str(label)] = self._rate_entry(flags[held & (g == label)])
        return factors

    # ---- scoring -------------------------------------------------------------------------
    @property
    def judged_(self) -> np.ndarray:
        """Per signal, whether the distance judges it (False for the ``unjudged_``)."""
        return np.array([s not in self.unjudged_ for s in self.signals_], dtype=bool)

    @property
    def drifting_index_(self) -> np.ndarray:
        """Column indices of the signals judged against their recent level."""
        return np.array([self.signals_.index(k) for k in self.drifting_], dtype=int)

    def model_for(self, mode: str) -> ModeModel | None:
        """The mode's model; a detector trained without modes judges every mode by its one normal."""
        return self.models_.get(str(mode)) or self.models_.get(ALL_MODES)

    @property
    def per_mode(self) -> bool:
        """False for a detector with one normal for every mode (trained without a mode column)."""
        return ALL_MODES not in self.models_

    def _check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise RuntimeError("LineDetector is not fitted yet: call fit(X) with normal operation first")

    def _evaluate(self, X: pd.DataFrame) -> dict:
        """Score every row: combined score (relative to threshold), winning statistic, smoothed vectors."""
        self._check_fitted()
        with threadpool_limits(limits=1, user_api="blas"):
            A, F, _, segs = self._table(X)
            return self._evaluate_arrays(A, F, segs)

    def _evaluate_arrays(self, A: np.ndarray, F: np.ndarray, segs: list[_Segment]) -> dict:
        n = len(A)
        score = np.zeros(n)
        flags = np.zeros(n, dtype=bool)
        winner = np.zeros(n, dtype=int)
        Wsel = np.zeros_like(A)
        state = _BaselineState(len(self.signals_), self.baseline_hold)
        for seg in segs:
            if seg.run != state.run:
                state = _BaselineState(len(self.signals_), self.baseline_hold, seg.run)
            model = self.model_for(seg.mode)
            a, b = seg.scored, seg.end
            if model is None or a == b:
                continue
            Z = model.standardise(A[a:b], F[a:b])
            if self.baseline_rows:
                out = self._score_adaptive(model, Z, state, seg.mode)
            else:
                Ws = [ewma(Z, lam) for lam in self.lams_]
                S = np.stack([_distances(W, model.precisions[j]) for j, W in enumerate(Ws)], axis=1) / model.norms / model.threshold
                restart = self._restart()
                if restart is not None:
                    restart.apply(S, Ws, Z, self.lams_[restart.slow], self._rescore(model, restart.slow))
                win = S.argmax(axis=1)
                s = S[np.arange(b - a), win]
                f = _streak(s > 1.0, 0) >= max(1, self.persistence)
                out = (s, f, win, np.stack(Ws)[win, np.arange(b - a)])
            score[a:b], flags[a:b], winner[a:b], Wsel[a:b] = out
        return {"score": score, "flags": flags, "winner": winner, "W": Wsel, "segments": segs}

    def _score_adaptive(self, model: ModeModel, Z: np.ndarray, state: "_BaselineState", mode: str):
        """Score a segment chunk by chunk, moving the baseline after each quiet chunk (as DetectorStream does)."""
        m = max(1, int(self.baseline_every))
        alpha = min(1.0, m / float(self.baseline_rows))
        n, p = Z.shape
        score = np.zeros(n)
        flags = np.zeros(n, dtype=bool)
        win = np.zeros(n, dtype=int)
        Wsel = np.zeros_like(Z)
        base = state.baseline.setdefault(mode, np.zeros(p))
        pending: deque = deque()
        W_last = np.zeros((len(self.lams_), p))
        streak = 0
        restart = self._restart()
        for c in range(0, n, m):
            Zc = Z[c : c + m]
            k = len(Zc)
            Ws = []
            for j, lam in enumerate(self.lams_):
                if lam >= 1.0:
                    W = Zc - base
                else:
                    W = first_order(Zc - base, lam, start=W_last[j])
                Ws.append(W)
            S = np.stack([_distances(W, model.precisions[j]) for j, W in enumerate(Ws)], axis=1) / model.norms / model.threshold
            if restart is not None:
                restart.apply(S, Ws, Zc - base, self.lams_[restart.slow], self._rescore(model, restart.slow))
            for j, W in enumerate(Ws):
                W_last[j] = W[-1]
            w = S.argmax(axis=1)
            s = S[np.arange(k), w]
            counts = _streak(s > 1.0, streak)
            streak = int(counts[-1])
            f = counts >= max(1, self.persistence)
            score[c : c + k], flags[c : c + k], win[c : c + k] = s, f, w
            Wsel[c : c + k] = np.stack(Ws)[w, np.arange(k)]
            last_flag = np.flatnonzero(f)
            state.quiet = (k - 1 - last_flag[-1]) if len(last_flag) else state.quiet + k
            if k == m:
                self._learn_chunk(pending, Zc.mean(axis=0), float(s.mean()), state, base, alpha, m)
        return score, flags, win, Wsel

    def _restart(self) -> _Restart | None:
        """A fresh restart rule for the slowest average (None: off, or a single average)."""
        share = getattr(self, "restart_after", 0.0)  # absent from model files saved before it existed
        if not share or len(self.lams_) < 2:
            return None
        order = np.argsort(self.lams_, kind="stable")
        slow, faster = int(order[0]), int(order[1])
        return _Restart(slow, faster, np.sort(order[1:]), max(1, int(np.ceil(share / self.lams_[slow]))))

    @staticmethod
    def _rescore(model: ModeModel, j: int):
        return lambda W: _distances(W, model.precisions[j]) / model.norms[j] / model.threshold

    def _learn_chunk(self, pending: deque, z_mean, score_mean: float, state: "_BaselineState", base, alpha, m) -> None:
        """Queue a finished chunk; move the baseline toward the chunk ``baseline_hold`` rows older, if nothing
        was flagged since it began and its mean score stayed well below the threshold. Learning only from
        rows that old, a fault growing faster than that is flagged before any of it enters the baseline."""
        pending.append((z_mean, score_mean))
        delay = max(0, int(self.baseline_hold) // m)
        if len(pending) > delay:
            z_old, score_old = pending.popleft()
            if state.quiet >= (delay + 1) * m and score_old <= self.baseline_freeze:
                base += alpha * (z_old - base)

    # the plant's words: a row's anomaly score (1.0 = the limit) and whether it is flagged
    def anomaly_score(self, X: pd.DataFrame) -> np.ndarray:
        """Anomaly score per row relative to the calibrated threshold: above 1.0 is beyond normal."""
        return self._evaluate(X)["score"]

    def flag(self, X: pd.DataFrame) -> np.ndarray:
        """1 where the row is anomalous (past the threshold for ``persistence`` rows, not settling), else 0."""
        return self._evaluate(X)["flags"].astype(int)

    # scikit-learn's outlier-detector meanings (IsolationForest, LocalOutlierFactor): higher is more normal,
    # negative decision is an outlier, predict is -1 for outliers and +1 for inliers
    def score_samples(self, X: pd.DataFrame) -> np.ndarray:
        """The negated anomaly score, as scikit-learn's outlier detectors: the lower, the more abnormal."""
        return -self.anomaly_score(X)

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """1 - anomaly score: negative beyond the limit, as scikit-learn's (persistence not applied; see ``flag``)."""
        return 1.0 - self.anomaly_score(X)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """-1 for a flagged (outlying) row, +1 for a normal one, as scikit-learn's outlier detectors."""
        return 1 - 2 * self.flag(X)

    def residuals(self, X: pd.DataFrame) -> pd.DataFrame:
        """Each signal's departure from its normal value at the row's mode and operating point (value - expected).

        What a fault does to a signal, with what the load and setpoints do taken out: the fault classifier
        learns signatures from these, so a fault looks the same at every duty point.
        """
        self._check_fitted()
        A, F, _, segs = self._table(X)
        R = np.full_like(A, np.nan)
        for seg in segs:
            model = self.model_for(seg.mode)
            if model is not None:
                R[seg.start : seg.end] = A[seg.start : seg.end] - model.expected(A[seg.start : seg.end], F[seg.start : seg.end])
        R[:, self.context_] = 0.0  # the operating point itself is no part of a fault's signature
        return table_like(X, R, self.signals_)

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Each signal's share (0..1, rows sum to 1) of the row's score, from the statistic that dominated it.

        Reconstruction-based: signal i's part is how far the distance falls if i alone is moved back to normal,
        which points at the broken signal rather than smearing over its correlated neighbours.
        """
        ev = self._evaluate(X)
        C = np.zeros((len(X), len(self.signals_)))
        for seg in ev["segments"]:
            model = self.model_for(seg.mode)
            a, b = seg.scored, seg.end
            if model is None or a == b:
                continue
            W = ev["W"][a:b]
            P = model.precisions[ev["winner"][a:b]]
            # reconstruction-based contribution (Alcala & Qin): how much of the distance goes if signal i is repaired
            C[a:b] = np.einsum("ijk,ik->ij", P, W) ** 2 / np.diagonal(P, axis1=1, axis2=2)
        total = C.sum(axis=1, keepdims=True)
        C = np.divide(C, total, out=np.zeros_like(C), where=total > 0)
        return table_like(X, C, self.signals_)

    def stream(self) -> "DetectorStream":
        """A one-row-at-a-time runner holding the causal state, for the live station."""
        self._check_fitted()
        return DetectorStream(self)


class _BaselineState:
    """The adaptive baseline of one run: per mode, and how many rows since the detector last flagged."""

    def __init__(self, p: int, hold: int, run: int = 0):
        self.baseline: dict[str, np.ndarray] = {}
        self.quiet = 10**9  # rows since the last flag (none yet)
        self.run = run


class DetectorStream:
    """Live state of a LineDetector: O(1) work per row, same results as the batch methods."""

    def __init__(self, detector: LineDetector):
        self.detector = detector
        self.lams = detector.lams_[:, None]
        p = len(detector.signals_)
        self.last = np.full(p, np.nan)
        self.mode: str | None = None
        self.model: ModeModel | None = None
        self.W = np.zeros((len(detector.lams_), p))
        self.settle_left = 0
        self.count = 0
        self.score = 0.0
        self.winner = 0
        self.residual = np.full(p, np.nan)  # the row's departure from normal at its operating point
        ctx = detector.context_
        self.lag_lams = np.array([1.0 / max(float(t), 1.0) for t in detector.context_lags_])[:, None]
        self.lagged = np.full((len(detector.context_lags_), len(ctx)), np.nan)
        self.baseline = _BaselineState(p, detector.baseline_hold)
        self.chunk_sum = np.zeros(p)
        self.chunk_score = 0.0
        self.chunk_rows = 0
        self.pending: deque = deque()
        self.drifting = detector.drifting_index_
        self.level = np.full(len(self.drifting), np.nan)  # their recent level, up to the row before
        self.level_lam = 1.0 / max(float(detector.level_rows), 1.0)
        self.restart = detector._restart()
        self.restart_due = False  # the slowest average restarts before the next row (this row is scored as it was)

    def _from_level(self, x: np.ndarray) -> np.ndarray:
        """As LineDetector._from_level, one row: the drifting signals' departure from their recent level."""
        if not len(self.drifting):
            return x
        v = x[self.drifting]
        before = np.where(np.isnan(self.level), v, self.level)
        self.level = before + self.level_lam * (v - before)
        x = x.copy()
        x[self.drifting] = v - before
        return x

    def _features(self, x: np.ndarray) -> np.ndarray:
        d = self.detector
        if not len(d.context_):
            return np.zeros(0)
        c = x[d.context_]
        parts = [c]
        if d.context_degree_ >= 2:
            parts.append(_pairwise(((c - d.context_centre_) / d.context_spread_)[None, :])[0])
        if len(self.lag_lams):
            start = np.isnan(self.lagged) & np.isfinite(c)
            self.lagged = np.where(start, c, self.lagged + self.lag_lams * (c - self.lagged))
            parts.extend(self.lagged)
        return np.concatenate(parts)

    def update(self, x: np.ndarray, mode: "str | float | None" = None) -> tuple[float, bool]:
        """Feed one row (signals in ``detector.signals_`` order, NaN = no new value); returns (score, anomalous)."""
        d = self.detector
        x = np.where(np.isnan(x), self.last, x)
        self.last = x
        f = self._features(x)
        x = self._from_level(x)
        label = ALL_MODES if mode is None or not d.per_mode else str(mode_labels([mode])[0])
        if label != self.mode:
            if self.mode is not None:
                self.settle_left = d.settle_rows
            self.mode = label
            self.model = d.model_for(label)
            self.W[:] = 0.0
            self.count = 0
            self.restart_due = False
            if self.restart is not None:
                self.restart.reset()
            self.chunk_sum[:] = 0.0
            self.chunk_score = 0.0
            self.chunk_rows = 0
            self.pending.clear()
        model = self.model
        self.residual = x - model.expected(x, f) if model is not None else np.full(len(x), np.nan)
        z = self.residual / model.scale if model is not None else None
        self.residual[d.context_] = 0.0  # as LineDetector.residuals: the operating point is no part of a signature
        if self.settle_left > 0 or model is None:
            self.settle_left = max(0, self.settle_left - 1)
            self.score = 0.0
            return 0.0, False
        z[np.isnan(z)] = 0.0
        base = self.baseline.baseline.setdefault(label, np.zeros(len(z))) if d.baseline_rows else 0.0
        if self.restart_due:
            self.W[self.restart.slow] = self.W[self.restart.faster]
            self.restart_due = False
        self.W = self.lams * (z - base) + (1.0 - self.lams) * self.W
        S = np.einsum("ij,ijk,ik->i", self.W, model.precisions, self.W) / model.norms / model.threshold
        if self.restart is not None:
            self.restart_due = self.restart.step(S)
        self.winner = int(S.argmax())
        self.score = float(S[self.winner])
        exceed = self.score > 1.0
        self.count = self.count + 1 if exceed else 0
        flagged = self.count >= max(1, d.persistence) and exceed
        if d.baseline_rows:
            self._follow(z, flagged, base)
        return self.score, flagged

    def _follow(self, z: np.ndarray, flagged: bool, base: np.ndarray) -> None:
        """The adaptive baseline: after each quiet chunk of rows, a step toward the chunk's mean residual."""
        d = self.detector
        state = self.baseline
        state.quiet = 0 if flagged else state.quiet + 1
        self.chunk_sum += z
        self.chunk_score += self.score
        self.chunk_rows += 1
        m = max(1, int(d.baseline_every))
        if self.chunk_rows == m:
            d._learn_chunk(self.pending, self.chunk_sum / m, self.chunk_score / m, state, base,
                           min(1.0, m / float(d.baseline_rows)), m)
            self.chunk_sum[:] = 0.0
            self.chunk_score = 0.0
            self.chunk_rows = 0

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
