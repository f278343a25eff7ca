"""Variants of the line detector's calibration, measured side by side on the public benchmarks (issue 20).

Each is a LineDetector with one step of its fit or scoring changed, nothing tuned on a benchmark's test rows:
  - ``calibration="split"``: split conformal instead of time-ordered folds. The first 70 % of every stretch fit
    the model (``cal_share`` 0.3), the last 30 % (later running, never seen) calibrate the threshold at the
    finite-sample rank ceil((n+1)(1-alpha)) of their persistent scores (the maximum when n rows cannot show
    alpha: always, at the product's alpha 1e-4 and SKAB's 400 rows); "split-refit" then refits the model on
    every row and keeps that threshold (normalisers from the rows that fit the first model).
  - ``scale="mad"`` / ``"iqr"``: each signal's residual scale from its median absolute deviation (x1.4826) or
    interquartile range (/1.349) instead of its standard deviation; a signal sitting on one value most of the
    time (a quantised reading: robust scale 0) falls back to its standard deviation, then the usual floor.
  - ``score_filter=("median", k)`` / ``("ewma", k)``: the combined score smoothed causally over k rows before
    the threshold (rolling median, or EWMA with time constant k), calibrated on equally smoothed held-out scores.

Measured by `bench/public_benchmarks.py --skab DIR --variants` (issue 20); none is the product's default: the
findings are in the README's benchmark table.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from factory_copilot.detect.features import first_order
from factory_copilot.detect.multivariate import LineDetector, _distances, _streak

CAL_SHARE = 0.3  # split conformal: the later share of every stretch that calibrates


def _filter(x: np.ndarray, bounds, how: tuple[str, int] | None) -> np.ndarray:
    if not how:
        return x
    kind, k = how
    out = np.empty_like(x)
    for a, b in bounds:
        if kind == "median":
            out[a:b] = pd.Series(x[a:b]).rolling(int(k), min_periods=1).median().to_numpy()
        else:
            out[a:b] = first_order(x[a:b], 1.0 / max(float(k), 1.0), start=x[a]) if b > a else x[a:b]
    return out


def _persistent(x: np.ndarray, bounds, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Min over the last p rows (a row is flagged when all p are past the limit), and where p rows exist."""
    out = np.full(len(x), -np.inf)
    valid = np.zeros(len(x), dtype=bool)
    for a, b in bounds:
        if b - a >= p:
            out[a + p - 1 : b] = pd.Series(x[a:b]).rolling(p).min().to_numpy()[p - 1 :]
            valid[a + p - 1 : b] = True
    return out, valid


class VariantDetector(LineDetector):
    """The line detector with one step of its fit or scoring changed, as the module docstring lists."""

    def __init__(self, calibration: str = "folds", scale: str = "std", score_filter=None, cal_share: float = CAL_SHARE,
                 norms_from: str = "fit", **params):
        super().__init__(**params)
        self.calibration = calibration
        self.scale = scale
        self.score_filter = score_filter
        self.cal_share = cal_share
        self.norms_from = norms_from

    # ---- robust scale -------------------------------------------------------------------------
    def _normal(self, A, F, rows):
        m = super()._normal(A, F, rows)
        if self.scale == "std":
            return m
        resid = A[rows] - m.expected(A[rows], F[rows])
        std = np.nan_to_num(np.nanstd(resid, axis=0))
        if self.scale == "mad":
            med = np.nanmedian(resid, axis=0)
            robust = 1.4826 * np.nanmedian(np.abs(resid - med), axis=0)
        else:
            q75, q25 = np.nanpercentile(resid, [75, 25], axis=0)
            robust = (q75 - q25) / 1.349
        robust = np.nan_to_num(robust)
        robust = np.where(robust > 1e-6 * np.maximum(std, 1e-300), robust, std)
        m.scale = np.maximum(robust, self.scale_floor_)
        return m

    # ---- calibration --------------------------------------------------------------------------
    def _fit_mode(self, A, F, bounds, margin):
        if self.calibration == "folds" and not self.score_filter:
            return super()._fit_mode(A, F, bounds, margin)
        if self.calibration == "folds":
            return self._fit_folds_filtered(A, F, bounds, margin)
        cal = np.zeros(len(A), dtype=bool)
        for a, b in bounds:
            k = int(math.floor((b - a) * self.cal_share))
            if k > 0:
                cal[b - k : b] = True
        fit_rows = np.flatnonzero(~cal)
        if len(fit_rows) < self.min_rows or not cal.any():
            return super()._fit_mode(A, F, bounds, margin)
        model = self._normal(A, F, fit_rows)
        Ws = self._smoothed(model.standardise(A, F), bounds)
        P = self._precisions(Ws, fit_rows)
        D = np.stack([_distances(W, P[j]) for j, W in enumerate(Ws)], axis=1)
        # normalisers from the fit rows: the score is fixed before the calibration rows are looked at
        norms = np.maximum(np.quantile(D[cal if self.norms_from == "cal" else fit_rows], 0.99, axis=0), 1e-12)
        combined = _filter((D / norms).max(axis=1), bounds, self.score_filter)
        cal_bounds = [(int(b - math.floor((b - a) * self.cal_share)), b) for a, b in bounds]
        pers, valid = _persistent(combined, cal_bounds, max(1, self.persistence))
        s = np.sort(pers[valid & cal])
        n = len(s)
        rank = math.ceil((n + 1) * (1 - self.false_alarm_rate))
        threshold = float(s[rank - 1] if rank <= n else s[-1]) * margin
        if self.calibration == "split-refit":
            model = self._normal(A, F, np.arange(len(A)))
            model.precisions = self._precisions(self._smoothed(model.standardise(A, F), bounds), np.arange(len(A)))
        else:
            model.precisions = P
        model.norms, model.threshold = norms, threshold
        return model

    def _fit_folds_filtered(self, A, F, bounds, margin):
        """Today's time-ordered folds, the held-out combined score smoothed before the threshold."""
        rows = np.arange(len(A))
        folds = np.array_split(rows, max(2, self.n_splits))  # SKAB and TEP fits are one stretch per mode
        held_out = self._held_out(A, F, bounds, folds)
        norms = np.maximum(np.quantile(held_out, 0.99, axis=0), 1e-12)
        combined = _filter((held_out / norms).max(axis=1), bounds, self.score_filter)
        threshold = self._calibrate(combined, np.ones(len(A), dtype=bool), bounds) * margin
        model = self._normal(A, F, rows)
        model.precisions = self._precisions(self._smoothed(model.standardise(A, F), bounds), rows)
        model.norms, model.threshold = norms, float(threshold)
        return model

    # ---- scoring -------------------------------------------------------------------------------
    def _evaluate_arrays(self, A, F, segs):
        ev = super()._evaluate_arrays(A, F, segs)
        if self.score_filter:
            bounds = [(s.scored, s.end) for s in segs if s.end > s.scored]
            ev["score"] = _filter(ev["score"], bounds, self.score_filter)
            flags = np.zeros(len(A), dtype=bool)
            for a, b in bounds:
                flags[a:b] = _streak(ev["score"][a:b] > 1.0, 0) >= max(1, self.persistence)
            ev["flags"] = flags
        return ev


# measured side by side by `bench/public_benchmarks.py --variants` (each on top of the product's settings)
VARIANTS = {
    "split 70/30": {"calibration": "split"},
    "split 70/30, refit": {"calibration": "split-refit"},
    "split 50/50, refit": {"calibration": "split-refit", "cal_share": 0.5},
    "robust scale (MAD)": {"scale": "mad"},
    "robust scale (IQR)": {"scale": "iqr"},
    "score median 5 s": {"score_filter": ("median", 5.0)},
    "score EWMA 5 s": {"score_filter": ("ewma", 5.0)},
}


def flags_of(variant: dict, params_of):
    """A benchmark method: the variant with the product's settings at the case's sampling interval."""
    def flags(train: pd.DataFrame, test: pd.DataFrame, sampling_s: float) -> np.ndarray:
        v = dict(variant)
        if v.get("score_filter"):
            kind, seconds = v["score_filter"]
            v["score_filter"] = (kind, max(1, int(round(seconds / sampling_s))))
        return VariantDetector(**{**params_of(sampling_s), **v}).fit(train).flag(test)

    return flags
