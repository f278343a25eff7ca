"""Replay a recording for commissioning: its readings in data time, N times faster than it happened.

A recording is a wide table (CSV or Parquet: a column per ``asset.signal``, optional ``ts``
column in epoch seconds or ISO 8601; without one, rows are one sampling interval apart) or a
stream of readings (JSON lines: ``ts, asset, signal, value[, quality]``); docs/history.md has
the formats. The replay drives the pipeline's clock (``ReplayClock``): the detector's rows, the
alarm engine's delays and shelving, the store's retention all run on the recording's time, so
the delays and the alarm counts of a replay are the ones the line would have seen.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Callable
from pathlib import Path

from factory_copilot.collect.gate import BadSample, SampleGate
from factory_copilot.config import LineConfig
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.records import Quality, Reading, SourceState

log = logging.getLogger(__name__)

TS_COLUMNS = ("ts", "time", "timestamp")
NOT_SIGNALS = {"mode", "fault", "run", "label", *TS_COLUMNS}


class ReplayClock:
    """The recording's time, running ``speed`` times faster than the wall clock from ``start`` on (callable).

    Two things keep a busy machine from outrunning its own data: the time never runs past the next
    reading still to be released (a replay stalled by the machine is not a silent source; a gap in the
    recording still is one), and ``backlog`` (set by whoever wires the pipeline: what the stations have
    been given and not yet digested) holds it until the pipeline has taken every row released so far
    (so released data is never late, and rows close on data, not on a clock that ran ahead).
    """

    def __init__(self, speed: float = 1.0, backlog: Callable[[], int] | None = None):
        if speed <= 0:
            raise ValueError("replay speed must be > 0")
        self.speed = speed
        self.backlog = backlog
        self.held_s = 0.0  # wall seconds the replay waited for the pipeline
        self._data0: float | None = None
        self._wall0 = 0.0
        self._held_at: float | None = None
        self._frontier = math.inf  # the next reading still to be released

    def start(self, data_t0: float) -> None:
        self._data0, self._wall0, self._frontier = data_t0, time.monotonic(), data_t0

    def next_due(self, data_ts: float) -> None:
        """The next reading to release is at ``data_ts``: time may not run past it until it is released."""
        self._frontier = data_ts

    def __call__(self) -> float:
        if self._data0 is None:
            return time.time()  # before the replay starts: nothing has happened yet
        return min(self._scheduled(), self._frontier)

    def _scheduled(self) -> float:
        """Where the recording's time would be at ``speed``, holds for the pipeline left out."""
        wall = self._held_at if self._held_at is not None else time.monotonic()
        return self._data0 + (wall - self._wall0) * self.speed  # type: ignore[operator]

    async def catch_up(self, stop: asyncio.Event, limit: int) -> None:
        """Hold the recording's time until the pipeline's backlog is down to ``limit`` items (or ``stop``)."""
        if self.backlog is None or self._data0 is None or self.backlog() <= limit:
            return
        self._held_at = time.monotonic()
        try:
            while self.backlog() > limit and not stop.is_set():
                await asyncio.sleep(0.005)  # the stations drain their buffers in batches: a short poll is enough
        finally:
            held = time.monotonic() - self._held_at
            self._wall0 += held
            self.held_s += held
            self._held_at = None

    def wall_delay(self, data_ts: float) -> float:
        """Wall seconds until ``data_ts`` comes round."""
        return 0.0 if self._data0 is None else (data_ts - self._scheduled()) / self.speed


def load_recording(path: str | Path, line: LineConfig, events: list[tuple[float, str]] | None = None) -> list[Reading]:
    """Every reading of a recording, oldest first (mode signal included), or ValueError naming the file and why.

    ``events`` receives the start of each labelled fault of a wide table (its ``fault`` or ``label`` column).
    """
    import pandas as pd  # a commissioning command; the service does not need pandas otherwise

    from factory_copilot.plumbing.history import epoch_seconds

    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such recording")
    suffix = p.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            stream = pd.read_json(p, lines=True)
        elif suffix in (".parquet", ".pq"):
            table = pd.read_parquet(p)
        else:
            table = pd.read_csv(p)
    except Exception as exc:
        raise ValueError(f"{p}: cannot read ({type(exc).__name__}: {exc})") from None
    units = {f"{a.id}.{s.name}": s.unit for a in line.assets for s in a.signals}
    out: list[Reading] = []
    if suffix in (".jsonl", ".ndjson"):
        missing = {"ts", "asset", "signal", "value"} - set(stream.columns)
        if missing:
            raise ValueError(f"{p}: a reading needs {', '.join(sorted(missing))}")
        stamps = epoch_seconds(stream["ts"], where=f"{p}: field 'ts'").tolist()
        for ts, r in zip(stamps, stream.itertuples(index=False)):
            q = Quality(str(getattr(r, "quality", "good") or "good").lower())
            value = None if r.value is None or (isinstance(r.value, float) and math.isnan(r.value)) else r.value
            out.append(Reading(ts,
                               str(r.asset), str(r.signal), value, q, "replay", units.get(f"{r.asset}.{r.signal}", "")))
    else:
        keys = [c for c in table.columns if c not in NOT_SIGNALS]
        unknown = [k for k in keys if k not in units]
        if unknown:
            raise ValueError(f"{p}: columns that are no signal of the line file: {', '.join(unknown[:5])}")
        ts_col = next((c for c in TS_COLUMNS if c in table.columns), None)
        if ts_col is None:
            start = time.time() - len(table) * line.sampling_interval_s
            stamps = [start + i * line.sampling_interval_s for i in range(len(table))]
        else:
            stamps = epoch_seconds(table[ts_col], where=f"{p}: column {ts_col!r}").tolist()
        # a coded mode signal may come as a 'mode' column (names or codes); modes by ranges come from the load itself
        mode_key = line.mode_key if line.modes and line.modes.codes is not None else None
        if "mode" in table.columns and mode_key is not None and mode_key not in keys:
            keys.append("mode")
        label = next((c for c in ("fault", "label") if c in table.columns), None)
        if label is not None and events is not None:
            previous = "normal"
            for ts, value in zip(stamps, table[label].astype(str)):
                if value not in ("normal", "0", "nan", "") and value != previous:
                    events.append((ts, value))
                previous = value if value not in ("0", "nan", "") else "normal"
        for ts, row in zip(stamps, table[keys].itertuples(index=False)):
            for key, value in zip(keys, row):
                if key == "mode" and isinstance(value, str):
                    try:  # recordings name the mode; the line's mode signal carries its code
                        value = float(line.modes.code_of(value))
                    except KeyError:
                        raise ValueError(f"{p}: mode {value!r} is none of the line's modes "
                                         f"({', '.join(line.mode_names())})") from None
                asset, _, signal = (mode_key if key == "mode" else key).partition(".")
                good = value is not None and not (isinstance(value, float) and math.isnan(value))
                out.append(Reading(ts, asset, signal, value if good else None, Quality.GOOD if good else Quality.BAD,
                                   "replay", units.get(f"{asset}.{signal}", "")))
    out.sort(key=lambda r: r.ts)
    return out


class ReplayCollector:
    """Offers a recording's readings into ``buffer`` as its time comes round on the replay clock; ``finished`` at the end."""

    source = "replay"

    def __init__(self, line: LineConfig, buffer: Buffer[Reading | SourceState], path: str | Path, clock: ReplayClock):
        self.line = line
        self.buffer = buffer
        self.path = Path(path)
        self.clock = clock
        self.events: list[tuple[float, str]] = []  # (start, fault) of each labelled fault in the recording
        self.readings = load_recording(self.path, line, self.events)
        self.gate = SampleGate(line.samples.max_future_s, float("inf"), clock, 10.0, self.source, log)
        self.connected = asyncio.Event()
        self.finished = asyncio.Event()
        self.readings_in = 0
        self.served = tuple(sorted({r.key for r in self.readings}))

    @property
    def span(self) -> tuple[float, float]:
        return (self.readings[0].ts, self.readings[-1].ts) if self.readings else (0.0, 0.0)

    def stats(self) -> dict:
        first, last = self.span
        return {"source": self.source, "recording": str(self.path), "connected": self.connected.is_set(),
                "readings_in": self.readings_in, "of": len(self.readings), "speed": self.clock.speed,
                "data_time": self.clock(), "held_for_pipeline_s": round(self.clock.held_s, 3), "from": first, "to": last, "finished": self.finished.is_set(),
                **self.gate.stats()}

    async def run(self, stop: asyncio.Event) -> None:
        if not self.readings:
            log.warning("%s: an empty recording; nothing to replay", self.path)
            self.finished.set()
            return
        first, last = self.span
        self.clock.start(first)
        log.info("replaying %s: %d readings of %d signals, %.0f s of data at %g x (%.0f s)", self.path,
                 len(self.readings), len(self.served), last - first, self.clock.speed, (last - first) / self.clock.speed)
        self.buffer.offer(SourceState(self.source, first, True, f"recording {self.path.name}", self.served))
        self.connected.set()
        i = 0
        while i < len(self.readings) and not stop.is_set():
            ts = self.readings[i].ts
            self.clock.next_due(ts)
            wait = self.clock.wall_delay(ts)
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                    break
                except asyncio.TimeoutError:
                    pass
            await self.clock.catch_up(stop, limit=0)
            while i < len(self.readings) and self.readings[i].ts <= ts:
                r = self.readings[i]
                i += 1
                try:
                    r = self.gate.reading(r.ts, r.asset, r.signal, r.value, r.quality, r.unit)
                except BadSample as exc:
                    self.gate.reject(exc.reason, f"{self.path.name} ({r.key})", exc.detail)
                    continue
                self.buffer.offer(r)
                self.readings_in += 1
        self.finished.set()
        if i >= len(self.readings):
            log.info("replay of %s finished at data time %s", self.path,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)))
        await stop.wait()
