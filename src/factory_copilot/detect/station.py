"""DetectStation: turns the live Reading stream into Anomaly records, one assembled row per sampling interval.

Rows hold the latest good value of each signal in the interval and the line's mode; each
row goes through the single-signal checks, the multivariate detector and, when the detector
flags it, the fault classifier. Every evaluation that finds a condition abnormal emits an
Anomaly (repeated while it persists: the alarm engine owns on/off delays and de-duplication).

Time. A reading goes into the row of its own timestamp, but the rows follow the pipeline's
clock (wall time live, data time in a replay): a reading stamped ahead of the clock is put in
the current row, never lets the station run ahead and evaluate empty rows; a reading for a row
already gone out (a source whose clock lags) is put into the current row when it is at most
``samples.max_late_s`` late, else dropped; each case is counted. When nothing arrives, the clock
closes the rows, so silence shows.

Lost data is a state. The collect station says when a source connects and disconnects
(``SourceState``); a source that is down, or whose signals all went silent for
``stale_after_intervals``, is one ``source`` anomaly naming its stale signals (instead of one
quality alarm per signal); a single silent signal is its own ``quality`` anomaly. Both carry the
stale keys, so the alarm engine keeps the alarms on those signals as they are until data flows.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from factory_copilot.config import LineConfig
from factory_copilot.detect.checks import SignalChecks
from factory_copilot.detect.classify import FaultClassifier
from factory_copilot.detect.multivariate import LineDetector
from factory_copilot.names import UNKNOWN
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.logs import Throttled, printable
from factory_copilot.records import Anomaly, Mode, Quality, Reading, SourceState

log = logging.getLogger(__name__)

SOURCES_ASSET = "sources"  # the alarms of lost sources belong to no asset of the line: they sit under this one


@dataclass
class _Source:
    """What the station knows of one source: connected or not, since when, and the signals it serves."""

    name: str
    signals: tuple[str, ...]
    connected: bool = False
    since: float = 0.0
    detail: str = ""
    down_since: float | None = None  # when the source was first seen down (disconnected or all silent)


class DetectStation:
    """Consumes ``Buffer[Reading | SourceState]``, offers ``Anomaly`` records to ``Buffer[Anomaly]``."""

    # the records it takes off the line's bus and gives onto it (plumbing/bus.py)
    takes = (Reading, SourceState)
    gives = (Anomaly,)

    def __init__(
        self,
        line: LineConfig,
        readings: Buffer[Reading | SourceState] | None = None,
        anomalies: Buffer[Anomaly] | None = None,
        detector: LineDetector | None = None,
        classifier: FaultClassifier | None = None,
        checks: SignalChecks | None = None,
        top_contributors: int = 5,
        classify_every: int = 30,
        clock: Callable[[], float] = time.time,
        late_tolerance_s: float | None = None,
    ):
        self.line = line
        self.readings = readings
        self.anomalies = anomalies
        self.interval = line.sampling_interval_s
        self.clock = clock
        self.late_rows = max(1, math.ceil((line.samples.max_late_s if late_tolerance_s is None
                                           else late_tolerance_s) / self.interval))
        self.stale_after = line.samples.stale_after_intervals
        self.mode_key = line.mode_key
        self.keys = line.signal_keys()
        self._keyset = set(self.keys)
        self.checks = checks or SignalChecks(line)
        self.detector = detector
        self.classifier = classifier
        self.top_contributors = top_contributors
        self.classify_every = classify_every
        self.det_stream = detector.stream() if detector is not None else None
        self.cls_stream = classifier.stream() if classifier is not None else None
        self._det_index = self._index(detector.signals_) if detector is not None else None
        self._cls_index = self._index(classifier.signals_) if classifier is not None else None
        self._cls_residual = bool(getattr(classifier, "on_residuals", False))
        if self._cls_residual and (detector is None or list(classifier.signals_) != list(detector.signals_)):
            raise ValueError("the fault classifier learnt from the detector's residuals: give it that detector")
        self.mode = Mode(line.production_mode)
        self.bucket: int | None = None
        self._values: dict[str, float] = {}
        self._qualities: dict[str, Quality] = {}
        self._episode_rows = 0
        self._fault: tuple[str, float] = (UNKNOWN, 0.0)
        self.sources: dict[str, _Source] = {}
        self.last_seen: dict[str, float] = {}  # signal key -> row time of its latest sample, any quality
        self.started_at = clock()
        self.rows = 0
        self.kinds: dict[str, int] = defaultdict(int)  # anomalies emitted by kind (limit, stuck, unseen, multivariate...)
        self.last_row_ts: float | None = None
        self.counts: dict[str, int] = defaultdict(int)  # ahead_of_clock, late_adjusted, late_dropped, bad_timestamp
        self.ignored: dict[str, int] = defaultdict(int)
        self._throttle = Throttled(log, 30.0)

    def _index(self, signals: list[str]) -> list[str]:
        missing = [s for s in signals if s not in self.keys]
        if missing:
            raise ValueError(f"model signals not in the line file: {', '.join(missing[:5])}")
        return list(signals)

    # ---- one record at a time ----------------------------------------------------------------
    def add(self, item: Reading | SourceState) -> list[Anomaly]:
        """Take one reading (or source state); returns the anomalies of any rows it completed."""
        if isinstance(item, SourceState):
            self.source_state(item)
            return []
        reading = item
        key = reading.key
        if key != self.mode_key and key not in self._keyset:
            if self.ignored[key] == 0:
                log.warning("detect: reading for %s, which the line file does not define; ignored", printable(key))
            self.ignored[key] += 1
            return []
        if not math.isfinite(reading.ts):
            self.counts["bad_timestamp"] += 1
            self._throttle.warning("bad_timestamp", "detect: reading for %s without a usable timestamp; ignored", key)
            return []
        now = self.clock()
        bucket = int(math.floor(reading.ts / self.interval))
        now_bucket = int(math.floor(now / self.interval))
        if bucket > now_bucket:
            # stamped ahead of the clock (within the gate's skew): it belongs to now, and must not run the rows ahead
            self.counts["ahead_of_clock"] += 1
            bucket = now_bucket
        out: list[Anomaly] = []
        if self.bucket is None:
            self.bucket = bucket
        elif bucket > self.bucket:
            out = self.close_until(bucket)
        elif bucket < self.bucket:
            if self.bucket - bucket > self.late_rows:
                self.counts["late_dropped"] += 1
                self._throttle.warning(
                    "late", "detect: reading for %s is %.1f s late (row already evaluated); dropped - check the "
                    "source's clock and the network", key, (self.bucket - bucket) * self.interval)
                return out
            self.counts["late_adjusted"] += 1  # a lagging source clock: its value counts for the current row
        seen = min(reading.ts, now)
        if seen > self.last_seen.get(key, -math.inf):
            self.last_seen[key] = seen
        if key == self.mode_key:
            mode = self.line.mode_of(reading.value, self.mode) if reading.is_process_value else self.mode
            if mode is None:
                self._throttle.warning("mode", "detect: %s=%r names none of the line's modes (%s); mode kept %s", key,
                                       reading.value, ", ".join(self.line.mode_names()), self.mode)
            else:
                self.mode = Mode(mode)
            if key not in self._keyset:  # a coded mode signal is no process value; a load signal is
                return out
        if reading.is_process_value:
            self._values[key] = float(reading.value)
            self._qualities.pop(key, None)
        elif key not in self._values:
            self._qualities[key] = reading.quality
        return out

    def source_state(self, state: SourceState) -> None:
        """A source came up or went down (the collect station's word for it)."""
        src = self.sources.get(state.source)
        if src is None:
            src = self.sources[state.source] = _Source(state.source, tuple(state.signals), since=state.ts)
        if state.signals:
            src.signals = tuple(state.signals)
        if src.connected != state.connected:
            src.since = state.ts
        src.connected, src.detail = state.connected, state.detail

    def close_until(self, bucket: int, max_gap_rows: int = 3600) -> list[Anomaly]:
        """Evaluate the open row and every empty interval before ``bucket`` (so gaps show up as gaps)."""
        out: list[Anomaly] = []
        if self.bucket is None:
            return out
        first = max(self.bucket, bucket - max_gap_rows)
        for b in range(first, bucket):
            out.extend(self.evaluate(b * self.interval, self._values, self._qualities))
            self._values, self._qualities = {}, {}
        self.bucket = bucket
        return out

    # ---- lost data ------------------------------------------------------------------------------
    def stale_signals(self, ts: float) -> set[str]:
        """Signals without any sample for more than ``stale_after_intervals`` at row time ``ts``."""
        if self.stale_after is None:
            return set()  # report by exception: silence says nothing
        limit = self.stale_after * self.interval
        return {k for src in self.sources.values() for k in src.signals
                if ts - self.last_seen.get(k, self.started_at) > limit}

    def _source_down(self, ts: float) -> bool:
        if not self.sources:
            return False
        silent = self.stale_signals(ts)
        return any(not src.connected or (src.signals and all(k in silent for k in src.signals))
                   for src in self.sources.values())

    def _lost(self, ts: float, out: list[Anomaly]) -> list[Anomaly]:
        """One ``source`` anomaly per source that is down; per-signal anomalies under it left out."""
        if not self.sources:
            return out
        silent = self.stale_signals(ts)
        down: set[str] = set()
        lost: list[Anomaly] = []
        cut_off = {k for src in self.sources.values() if not src.connected for k in src.signals}
        for src in self.sources.values():
            stale = [k for k in src.signals if k in silent]
            if not src.connected or (src.signals and len(stale) == len(src.signals)):
                src.down_since = src.down_since or (src.since if not src.connected else ts)
                down.update(src.signals)
                if src.connected and cut_off.issuperset(src.signals):
                    continue  # silent because a lost source above it (a broker, an edge node) serves its signals
                lost.append(self._source_anomaly(ts, src, stale or list(src.signals)))
            else:
                src.down_since = None
        kept = []
        for a in out:
            key = f"{a.asset}.{a.signal}" if a.signal else None
            if key is not None and key in down:
                continue  # the source's alarm speaks for its signals
            if key is not None and key in silent and a.kind == "quality":
                a.stale = (key,)
            kept.append(a)
        return kept + lost

    def _source_anomaly(self, ts: float, src: _Source, stale: list[str]) -> Anomaly:
        since = time.strftime("%H:%M:%S", time.localtime(src.down_since or ts))
        if src.connected:
            why = f"{src.detail or src.name}, but no sample from any of its signals"
        else:
            why = src.detail or f"{src.name} disconnected"
        return Anomaly(
            ts=ts, asset=SOURCES_ASSET, kind="source", score=float(len(stale)), threshold=1.0, signal=src.name,
            mode=self.mode, stale=tuple(src.signals),
            message=f"{why} since {since}, {len(stale)} of {len(src.signals)} signals stale",
        )

    # ---- one row -----------------------------------------------------------------------------
    def evaluate(self, ts: float, values: dict[str, float], qualities: dict[str, Quality]) -> list[Anomaly]:
        """Run the checks, the detector and (if flagged) the classifier on one assembled row."""
        self.rows += 1
        self.last_row_ts = ts
        out = self.checks.update(ts, values, qualities, self.mode)
        # a lost source leaves only held values: no evidence, so the detector neither judges nor learns from them
        if self.det_stream is not None and not self._source_down(ts):
            x = np.array([values.get(k, np.nan) for k in self._det_index])
            score, flagged = self.det_stream.update(x, self.mode)
            if self.cls_stream is not None:
                if self._cls_residual:  # signatures of departures at the operating point, as it was trained
                    xc = self.det_stream.residual
                else:
                    xc = x if self._cls_index == self._det_index else np.array([values.get(k, np.nan) for k in self._cls_index])
                self.cls_stream.update(xc, self.mode)
            if flagged:
                out.append(self._multivariate(ts, score))
            else:
                self._episode_rows = 0
        out = self._lost(ts, out)
        for a in out:
            self.kinds[a.kind] += 1
            if self.anomalies is not None:
                self.anomalies.offer(a)
        return out

    def _multivariate(self, ts: float, score: float) -> Anomaly:
        shares = self.det_stream.contributions()
        top = dict(list(shares.items())[: self.top_contributors])
        by_asset: dict[str, float] = defaultdict(float)
        for key, share in top.items():
            by_asset[key.partition(".")[0]] += share
        asset = max(by_asset, key=by_asset.get) if by_asset else self.line.assets[0].id
        if self.cls_stream is not None and self._episode_rows % self.classify_every == 0:
            # the forest is the costly part: name the fault at the episode's start, then every few rows
            self._fault = self.cls_stream.classify()
        self._episode_rows += 1
        fault, prob = self._fault if self.cls_stream is not None else (UNKNOWN, 0.0)
        lead = ", ".join(f"{k} {v:.0%}" for k, v in list(top.items())[:3])
        # what the contributors and the asset's own signals read (held values): the alarm text quotes the value
        own = asset + "."
        held = self.det_stream.last
        values = {k: float(v) for k, v in zip(self._det_index, held)
                  if (k in top or k.startswith(own)) and math.isfinite(v)}
        return Anomaly(
            ts=ts, asset=asset, kind="multivariate", score=score, threshold=1.0, contributions=top, values=values,
            fault_type=fault, fault_probability=prob, mode=self.mode,
            message=f"signals departing together from {self.mode.value} normal: {lead}",
        )

    # ---- service loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume readings until ``stop`` is set; a silent source still gets its rows closed (gaps)."""
        if self.readings is None:
            raise RuntimeError("DetectStation.run needs a readings buffer")
        stop = stop or asyncio.Event()
        wait = max(self.interval, 0.05)
        readings = self.readings
        while not stop.is_set():
            if readings.qsize():  # take what is there without a timer per reading (thousands a second)
                batch = [readings.get_nowait() for _ in range(readings.qsize())]
            else:
                try:
                    batch = [await asyncio.wait_for(readings.get(), timeout=wait * 2)]
                except asyncio.TimeoutError:
                    self._close_by_clock()
                    continue
            for item in batch:
                try:
                    self.add(item)
                except Exception:  # one bad record must not stop the station
                    self.counts["errors"] += 1
                    self._throttle.error("error", "detect: could not process %r", item)
            # a steady trickle from one live source must not keep a dead source's rows from closing
            if self.bucket is not None and self.clock() - (self.bucket + 1) * self.interval > 2 * wait:
                self._close_by_clock()
            await asyncio.sleep(0)  # let the others run between batches

    def _close_by_clock(self) -> None:
        """Close every row the clock has passed (nothing arrived for them, or too little to close them)."""
        now_bucket = int(math.floor(self.clock() / self.interval)) - 1
        if self.bucket is None:
            if not self.sources:
                return
            self.bucket = now_bucket  # a source that never delivered is a lost source from the start
        if 0 < now_bucket - self.bucket < 86400 / self.interval:
            self.close_until(now_bucket)

    def stats(self) -> dict:
        """Rows, lag and what is known of each source: for /health and the operator."""
        now = self.clock()
        silent = self.stale_signals(now) if self.sources else set()
        sources = {}
        for src in self.sources.values():
            seen = [self.last_seen[k] for k in src.signals if k in self.last_seen]
            newest = max(seen) if seen else None
            sources[src.name] = {
                "connected": src.connected,
                "detail": src.detail,
                "signals": len(src.signals),
                "stale_signals": sum(k in silent for k in src.signals),
                "newest_sample_age_s": None if newest is None else round(now - newest, 1),
                "down": src.down_since is not None or not src.connected,
                "down_since": src.down_since,
            }
        never = [k for k in self.keys + ([self.mode_key] if self.mode_key else []) if k not in self.last_seen]
        return {
            "rows": self.rows,
            "anomalies": sum(self.kinds.values()),
            "anomalies_by_kind": dict(self.kinds),
            "lag_s": None if self.last_row_ts is None else round(now - self.last_row_ts - self.interval, 2),
            "mode": self.mode.value,
            "sources": sources,
            "never_delivered": never,
            **{k: v for k, v in self.counts.items() if v},
        }
