"""DetectStation: turns the live Reading stream into Anomaly records, one assembled row per sampling interval.

Rows hold the latest good value of each signal in the interval and the line's mode; each
row goes through the single-signal checks, the multivariate detector and, when the detector
flags it, the fault classifier. Every evaluation that finds a condition abnormal emits an
Anomaly (repeated while it persists: the alarm engine owns on/off delays and de-duplication).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict

import numpy as np

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.config import LineConfig
from factory_copilot.detect.checks import SignalChecks
from factory_copilot.detect.classify import UNKNOWN, FaultClassifier
from factory_copilot.detect.multivariate import LineDetector
from factory_copilot.records import Anomaly, Mode, Quality, Reading

log = logging.getLogger(__name__)


class DetectStation:
    """Consumes ``Buffer[Reading]``, offers ``Anomaly`` records to ``Buffer[Anomaly]``."""

    def __init__(
        self,
        line: LineConfig,
        readings: Buffer[Reading] | None = None,
        anomalies: Buffer[Anomaly] | None = None,
        detector: LineDetector | None = None,
        classifier: FaultClassifier | None = None,
        checks: SignalChecks | None = None,
        top_contributors: int = 5,
        classify_every: int = 30,
    ):
        self.line = line
        self.readings = readings
        self.anomalies = anomalies
        self.interval = line.sampling_interval_s
        self.mode_key = f"{line.mode_signal.asset}.{line.mode_signal.signal}" if line.mode_signal else None
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
        self.mode = Mode.RUNNING
        self.bucket: int | None = None
        self._values: dict[str, float] = {}
        self._qualities: dict[str, Quality] = {}
        self._episode_rows = 0
        self._fault: tuple[str, float] = (UNKNOWN, 0.0)
        self.rows = 0
        self.emitted = 0
        self.ignored: dict[str, int] = defaultdict(int)

    def _index(self, signals: list[str]) -> list[str]:
        missing = [s for s in signals if s not in self.keys]
        if missing:
            raise ValueError(f"model signals not in the line file: {', '.join(missing[:5])}")
        return list(signals)

    # ---- one reading at a time -------------------------------------------------------------
    def add(self, reading: Reading) -> list[Anomaly]:
        """Take one reading; returns the anomalies of any rows it completed."""
        key = reading.key
        if key != self.mode_key and key not in self._keyset:
            if self.ignored[key] == 0:
                log.warning("detect: reading for %s, which the line file does not define; ignored", key)
            self.ignored[key] += 1
            return []
        if not math.isfinite(reading.ts):
            log.warning("detect: reading for %s without a usable timestamp; ignored", key)
            return []
        bucket = int(math.floor(reading.ts / self.interval))
        out: list[Anomaly] = []
        if self.bucket is None:
            self.bucket = bucket
        elif bucket > self.bucket:
            out = self.close_until(bucket)
        elif bucket < self.bucket:
            return []  # late sample of an interval already evaluated: the row has gone out
        if key == self.mode_key:
            if reading.is_process_value:
                try:
                    self.mode = Mode.from_code(reading.value)
                except (ValueError, IndexError):
                    log.warning("detect: %s=%r is not a mode code (0..3); mode kept %s", key, reading.value, self.mode.value)
            return out
        if reading.is_process_value:
            self._values[key] = float(reading.value)
            self._qualities.pop(key, None)
        elif key not in self._values:
            self._qualities[key] = reading.quality
        return out

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

    # ---- one row -----------------------------------------------------------------------------
    def evaluate(self, ts: float, values: dict[str, float], qualities: dict[str, Quality]) -> list[Anomaly]:
        """Run the checks, the detector and (if flagged) the classifier on one assembled row."""
        self.rows += 1
        out = self.checks.update(ts, values, qualities, self.mode)
        if self.det_stream is not None:
            x = np.array([values.get(k, np.nan) for k in self._det_index])
            score, flagged = self.det_stream.update(x, self.mode)
            if self.cls_stream is not None:
                xc = x if self._cls_index == self._det_index else np.array([values.get(k, np.nan) for k in self._cls_index])
                self.cls_stream.update(xc, self.mode)
            if flagged:
                out.append(self._multivariate(ts, score))
            else:
                self._episode_rows = 0
        for a in out:
            self.emitted += 1
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
        return Anomaly(
            ts=ts, asset=asset, kind="multivariate", score=score, threshold=1.0, contributions=top,
            fault_type=fault, fault_probability=prob, mode=self.mode,
            message=f"signals departing together from {self.mode.value} normal: {lead}",
        )

    # ---- service loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume readings until ``stop`` is set; a silent source still gets its rows closed (gaps)."""
        if self.readings is None:
            raise RuntimeError("DetectStation.run needs a readings buffer")
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                reading = await asyncio.wait_for(self.readings.get(), timeout=max(self.interval, 0.05) * 2)
            except asyncio.TimeoutError:
                self._close_by_clock()
                continue
            try:
                self.add(reading)
            except Exception:  # one bad record must not stop the station
                log.exception("detect: could not process reading %r", reading)

    def _close_by_clock(self) -> None:
        """Nothing arrived for two intervals: close rows up to now if the source stamps wall-clock time."""
        if self.bucket is None:
            return
        now_bucket = int(math.floor(time.time() / self.interval)) - 1
        if 0 < now_bucket - self.bucket < 86400 / self.interval:
            self.close_until(now_bucket)
