"""The single-signal checks a plant engineer expects beside the multivariate model.

limit   engineering alarm limits from the line file (Signal.limits)
rate    change faster than physically credible (Signal.max_rate, per second)
stuck   no change beyond noise for N samples while the line produces
range   outside what the sensor can physically read (Signal.physical): an instrument fault
quality Bad/Uncertain quality, or no sample for more than k sampling intervals (samples.stale_after_intervals)
unseen  a signal the multivariate detector leaves out (off its usual value in too few healthy rows: a standby
        pump never run) away from every value its healthy history held, for ``unseen_s`` of data time

Each check keeps O(1) state per signal (numpy vectors, one slot per signal) and is fed one
assembled row at a time. Which modes are production is the line file's to say. Limit and rate
checks wait out a settling grace period after a change into or out of a non-production mode
(a start-up warms up; a change of duty between two production regimes needs none) and, outside
production, apply only to signals whose normal band does not move in that mode; the stuck check
runs only in production (a stopped motor is flat by design). The unseen check learns its values from the
production rows of the history (``learn_seen``) and, like stuck, runs only in production and not while settling:
a start-up or a maintenance mode runs standby equipment by design. A signal the line file gives limits to is
watched by its limit check instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from factory_copilot.config import LineConfig
from factory_copilot.records import Anomaly, Mode, Quality

if TYPE_CHECKING:
    import pandas as pd


NAN = float("nan")
# the unseen check: at most this many separate bands of held values per signal (the closest ones merge beyond)
SEEN_BANDS = 8
# a value within this share of the signal's normal band (the wider of the line file's and the history's range)
# of a value it held was seen
SEEN_TOLERANCE = 0.01
# rows outside every held value before the unseen check speaks (data time: this many sampling intervals after the first)
UNSEEN_ROWS = 3


def _bounds(specs, attr: str) -> tuple[np.ndarray, np.ndarray]:
    """Low and high bound of each signal (None: a signal without one, unbounded)."""
    lo = np.array([getattr(s, attr)[0] if s is not None and getattr(s, attr) else -np.inf for s in specs])
    hi = np.array([getattr(s, attr)[1] if s is not None and getattr(s, attr) else np.inf for s in specs])
    return lo, hi


class SignalChecks:
    """Runs the six single-signal checks on rows of a line's signals."""

    def __init__(
        self,
        line: LineConfig,
        stuck_samples: int = 30,
        stuck_tolerance: float | dict[str, float] | None = None,
        gap_intervals: int | None = None,
        settle_s: float = 180.0,
        unseen_s: float | None = None,
    ):
        self.line = line
        self.keys = line.signal_keys()
        self.index = {k: i for i, k in enumerate(self.keys)}
        specs = [line.signal(k) for k in self.keys]
        self.specs = dict(zip(self.keys, specs))
        self.interval = line.sampling_interval_s
        self.stuck_samples = stuck_samples
        # no good sample for this many intervals is a quality condition; None (the line's samples say so): never
        self.gap_intervals = line.samples.stale_after_intervals if gap_intervals is None else gap_intervals
        self.settle_s = settle_s
        # outside every value the history held for this long (data time) is an unseen state; default UNSEEN_ROWS rows
        self.unseen_s = (UNSEEN_ROWS - 1) * self.interval if unseen_s is None else unseen_s
        # a signal the line file opts out of a check (``checks: {limit: false}``) gets no bound for it
        self.limit_lo, self.limit_hi = _bounds([s if s.checks.limit else None for s in specs], "limits")
        self.phys_lo, self.phys_hi = _bounds([s if s.checks.range else None for s in specs], "physical")
        self.max_rate = np.array([s.max_rate if s.max_rate and s.checks.rate else np.inf for s in specs])
        self.quality_on = np.array([s.checks.quality for s in specs], dtype=bool)
        # outside production, limit and rate apply only where the mode keeps the production band
        self.mode_applies = {
            m: np.array([line.is_production(m) or tuple(s.normal_for(m)) == tuple(s.normal) for s in specs])
            for m in line.mode_names()
        }
        self._all = np.ones(len(specs), dtype=bool)
        # without learnt noise, 'flat' means within a millionth of the running band
        self.stuck_tolerance: dict[str, float] = {
            k: 1e-6 * max(abs(s.normal[1] - s.normal[0]), 1e-3) for k, s in self.specs.items()
        }
        if isinstance(stuck_tolerance, dict):
            self.stuck_tolerance.update(stuck_tolerance)
        elif stuck_tolerance is not None:
            self.stuck_tolerance = dict.fromkeys(self.keys, float(stuck_tolerance))
        # setpoints hold still by design, and so does a signal the line file opts out (checks: {stuck: false});
        # learn_noise adds signals found flat in normal running
        self.stuck_exempt: set[str] = {k for k, s in self.specs.items() if "setpoint" in k or not s.checks.stuck}
        # the unseen check: signal -> the (low, high, rows) bands of values its history held, and their tolerance;
        # empty until learn_seen or watch_unseen, and never for a signal whose limits the limit check watches
        self.seen: dict[str, tuple[tuple[float, float, int], ...]] = {}
        self.seen_tolerance: dict[str, float] = {}
        self._unseen_allowed = np.array([s.checks.unseen and not (s.limits and s.checks.limit) for s in specs],
                                        dtype=bool)
        n = len(self.keys)
        self.last_value = np.full(n, NAN)
        self.last_ts = np.full(n, NAN)
        self.last_good_ts = np.full(n, NAN)
        self.flat_count = np.zeros(n, dtype=int)
        self.out_since = np.full(n, NAN)  # data time each signal first sat outside its held values, this time
        self.mode: Mode | None = None
        self.mode_since: float | None = None
        self._vectors()

    def _vectors(self) -> None:
        self._tol = np.array([self.stuck_tolerance[k] for k in self.keys])
        self._stuck_ok = np.array([k not in self.stuck_exempt for k in self.keys])
        # the held bands widened by their tolerance, one row per signal, NaN-padded (NaN compares False: not inside)
        k = max((len(b) for b in self.seen.values()), default=0)
        self._seen_lo = np.full((len(self.keys), k), NAN)
        self._seen_hi = np.full((len(self.keys), k), NAN)
        self._seen_text = [""] * len(self.keys)
        for key, bands in self.seen.items():
            i = self.index.get(key)
            if i is None or not self._unseen_allowed[i]:
                continue
            tol = self.seen_tolerance.get(key, 0.0)
            for j, (lo, hi, _) in enumerate(bands):
                self._seen_lo[i, j], self._seen_hi[i, j] = lo - tol, hi + tol
            self._seen_text[i] = ", ".join(f"{lo:g}" + (f" to {hi:g}" if hi > lo else "") + f" ({n:,} rows)"
                                           for lo, hi, n in bands)
        self._unseen_on = np.isfinite(self._seen_lo).any(axis=1) if k else np.zeros(len(self.keys), dtype=bool)
        # how far past what the history held, in widths of the signal's normal band (the alarm's level)
        self._seen_room = np.array([max(abs(s.normal[1] - s.normal[0]), self.seen_tolerance.get(key, 0.0), 1e-9)
                                    for key, s in self.specs.items()])

    def exempt_from_stuck(self, keys) -> "SignalChecks":
        """No stuck check for these signals (found flat in normal running, or marked so by a retune)."""
        self.stuck_exempt |= set(keys)
        self._vectors()
        return self

    def learn_noise(self, X: pd.DataFrame, mode_column: str = "mode") -> "SignalChecks":
        """Set each signal's 'flat' tolerance to a small share of its sample-to-sample noise while producing.

        A signal that does not move in normal running (constant, or flat for more than a fifth of its steps)
        is listed in ``flat_in_normal_`` and gets no stuck check: flat is its normal."""
        if mode_column in X.columns:
            X = X[X[mode_column].astype(str).isin(self.line.production_modes())]
        self.flat_in_normal_: list[str] = []
        for k in self.keys:
            if k in X.columns and len(X) > 10:
                step = np.abs(np.diff(X[k].to_numpy(dtype=float)))
                step = step[np.isfinite(step)]
                if len(step) and np.mean(step == 0) > 0.2:
                    self.flat_in_normal_.append(k)
                    continue
                step = step[step > 0]
                if len(step):
                    self.stuck_tolerance[k] = 0.01 * float(np.median(step))
        return self.exempt_from_stuck(self.flat_in_normal_)

    def learn_seen(self, X: pd.DataFrame, keys, mode_column: str = "mode") -> "SignalChecks":
        """Learn the values each of ``keys`` held in the production rows of healthy history ``X``, for the unseen check.

        ``keys``: the signals the multivariate detector leaves out (``LineDetector.unjudged_``). Each gets the bands
        of values it sat at (its usual value, and any it left it for), at most SEEN_BANDS, each widened by a tolerance
        for sensor noise: SEEN_TOLERANCE of the wider of the line file's normal band and the history's range, never
        zero."""
        if mode_column in X.columns:
            X = X[X[mode_column].astype(str).isin(self.line.production_modes())]
        seen, tolerance = {}, {}
        for k in keys:
            i = self.index.get(k)
            if i is None or k not in X.columns or not self._unseen_allowed[i]:
                continue
            x = X[k].to_numpy(dtype=float)
            x = x[np.isfinite(x)]
            if not len(x):
                continue
            values, counts = np.unique(x, return_counts=True)
            normal = self.specs[k].normal
            span = max(abs(normal[1] - normal[0]), float(values[-1] - values[0]))
            tol = max(SEEN_TOLERANCE * span, 1e-6 * max(1.0, float(np.abs(values).max())))
            seen[k] = _bands(values, counts, tol)
            tolerance[k] = tol
        return self.watch_unseen(seen, tolerance)

    def watch_unseen(self, seen: dict, tolerance: dict[str, float]) -> "SignalChecks":
        """Watch these signals for values outside the bands their history held (as learnt by ``learn_seen``)."""
        self.seen = {k: tuple((float(lo), float(hi), int(n)) for lo, hi, n in b) for k, b in seen.items()}
        self.seen_tolerance = {k: float(v) for k, v in tolerance.items()}
        self._vectors()
        return self

    def _anomaly(self, ts, i, kind, value, score, threshold, message) -> Anomaly:
        key = self.keys[i]
        asset, _, signal = key.partition(".")
        value = None if value is None or value != value else float(value)
        return Anomaly(ts=ts, asset=asset, kind=kind, score=float(score), threshold=float(threshold), signal=signal,
                       value=value, mode=self.mode or self.line.production_mode, message=f"{key}: {message}")

    def update(self, ts: float, values: dict[str, float | None], qualities: dict[str, Quality], mode: Mode) -> list[Anomaly]:
        """Check one row: ``values`` holds this interval's good values (missing = no good sample)."""
        x = np.full(len(self.keys), NAN)
        for k, v in values.items():
            i = self.index.get(k)
            if i is not None and v is not None:
                x[i] = v
        return self.update_vector(ts, x, qualities, mode)

    def update_vector(self, ts: float, x: np.ndarray, qualities: dict[str, Quality], mode: Mode) -> list[Anomaly]:
        """The same for a row already laid out in ``keys`` order (NaN = no good sample)."""
        if mode != self.mode:
            # a start-up or a stop needs time to settle; a change of duty between production modes does not
            if self.mode is not None and not (self.line.is_production(mode) and self.line.is_production(self.mode)):
                self.mode_since = ts
            elif self.mode is None:
                self.mode_since = None
            self.mode = Mode(mode)
        settling = self.mode_since is not None and ts - self.mode_since < self.settle_s
        out: list[Anomaly] = []
        good = np.isfinite(x)
        for k, q in qualities.items():
            i = self.index.get(k)
            if i is not None and self.quality_on[i] and q in (Quality.BAD, Quality.UNCERTAIN) and not good[i]:
                out.append(self._anomaly(ts, i, "quality", None, 1.0, 0.0, f"quality {q.value}"))
        gap = (ts - self.last_good_ts) / self.interval
        silent = self.quality_on & ~good & (gap > self.gap_intervals) if self.gap_intervals is not None else np.zeros(len(good), bool)
        for i in np.flatnonzero(silent):
            if self.keys[i] not in qualities:
                out.append(self._anomaly(ts, i, "quality", None, gap[i], self.gap_intervals,
                                         f"no good sample for {gap[i]:.0f} intervals"))
        with np.errstate(invalid="ignore"):
            out_phys = good & ((x < self.phys_lo) | (x > self.phys_hi))
            for i in np.flatnonzero(out_phys):
                lim = self.phys_hi[i] if x[i] > self.phys_hi[i] else self.phys_lo[i]
                out.append(self._anomaly(ts, i, "range", x[i], x[i], lim,
                                         f"{x[i]:g} outside the sensor's range [{self.phys_lo[i]:g}, {self.phys_hi[i]:g}]"))
            applies = self.mode_applies.get(mode, self._all) & good & (not settling)
            beyond = applies & ~out_phys & ((x < self.limit_lo) | (x > self.limit_hi))
            for i in np.flatnonzero(beyond):
                lim = self.limit_hi[i] if x[i] > self.limit_hi[i] else self.limit_lo[i]
                out.append(self._anomaly(ts, i, "limit", x[i], x[i], lim,
                                         f"{x[i]:g} beyond engineering limits [{self.limit_lo[i]:g}, {self.limit_hi[i]:g}]"))
            dt = ts - self.last_ts
            step = np.abs(x - self.last_value)
            has_prev = good & np.isfinite(step) & (dt > 0)
            rate = np.where(has_prev, step / np.where(dt > 0, dt, 1.0), 0.0)
            for i in np.flatnonzero(applies & has_prev & (rate > self.max_rate)):
                out.append(self._anomaly(ts, i, "rate", x[i], rate[i], self.max_rate[i],
                                         f"changing {rate[i]:g}/s, faster than credible {self.max_rate[i]:g}/s"))
            flat = has_prev & (step <= self._tol)
        self.flat_count = np.where(flat, self.flat_count + 1, np.where(has_prev, 0, self.flat_count))
        if self.line.is_production(mode) and not settling:
            for i in np.flatnonzero(good & self._stuck_ok & (self.flat_count >= self.stuck_samples)):
                out.append(self._anomaly(ts, i, "stuck", x[i], self.flat_count[i], self.stuck_samples,
                                         f"flat at {x[i]:g} for {self.flat_count[i]} samples in {mode}"))
        if self._unseen_on.any():
            held = np.where(good, x, self.last_value)
            out.extend(self._unseen(ts, held, self.line.is_production(mode) and not settling))
        self.last_value = np.where(good, x, self.last_value)
        self.last_ts = np.where(good, ts, self.last_ts)
        self.last_good_ts = np.where(good, ts, self.last_good_ts)
        return out

    def _unseen(self, ts: float, held: np.ndarray, applies: bool) -> list[Anomaly]:
        """The unseen check on the row's held values (a status reported by exception keeps its value between samples)."""
        with np.errstate(invalid="ignore"):
            inside = ((held[:, None] >= self._seen_lo) & (held[:, None] <= self._seen_hi)).any(axis=1)
        outside = self._unseen_on & np.isfinite(held) & ~inside & applies
        self.out_since = np.where(outside, np.where(np.isnan(self.out_since), ts, self.out_since), NAN)
        out = []
        for i in np.flatnonzero(outside & (ts - self.out_since >= self.unseen_s)):
            beyond = np.nanmin(np.maximum(self._seen_lo[i] - held[i], held[i] - self._seen_hi[i]))
            out.append(self._anomaly(ts, i, "unseen", held[i], 1.0 + beyond / self._seen_room[i], 1.0,
                                     f"at {held[i]:g}, the history only ever held {self._seen_text[i]}"))
        return out


def _bands(values: np.ndarray, counts: np.ndarray, tol: float) -> tuple[tuple[float, float, int], ...]:
    """The sorted distinct ``values`` (with their row ``counts``) as bands (``merge_seen``)."""
    return merge_seen([(v, v, n) for v, n in zip(values.tolist(), counts.tolist())], tol)


def merge_seen(bands, tol: float) -> tuple[tuple[float, float, int], ...]:
    """(low, high, rows) bands of held values, sorted and joined where closer than ``tol``; beyond SEEN_BANDS bands
    the two nearest merge (a pump that ran at many flows holds a range, not points)."""
    out: list[list] = []
    for lo, hi, n in sorted((float(lo), float(hi), int(n)) for lo, hi, n in bands):
        if out and lo - out[-1][1] <= tol:
            out[-1] = [out[-1][0], max(hi, out[-1][1]), out[-1][2] + n]
        else:
            out.append([lo, hi, n])
    while len(out) > SEEN_BANDS:
        j = int(np.argmin([b[0] - a[1] for a, b in zip(out, out[1:])]))
        out[j : j + 2] = [[out[j][0], max(out[j][1], out[j + 1][1]), out[j][2] + out[j + 1][2]]]
    return tuple((lo, hi, n) for lo, hi, n in out)
