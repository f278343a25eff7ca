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
STREAM_SUFFIXES = (".jsonl", ".ndjson")
# what a recording's file is named like: --labels given one of these means a file, not a column
RECORDING_SUFFIXES = (".csv", ".parquet", ".pq", ".txt", ".json", ".tsv", *STREAM_SUFFIXES)


class ReplayClock:
    """The recording's time (callable): it moves only with the data, never with the wall clock.

    The time steps from one reading to the next, at most ``step_s`` at a time (a gap in the recording
    still passes second by second, so a silent source shows up where it fell silent). Each step
    waits for its wall time at ``speed`` (``math.inf``: as fast as the machine goes), then until the
    pipeline has digested every reading released so far (``backlog``, set by whoever wires the
    pipeline: what the stations have been given and not yet taken), then runs the step's timers
    (``on_step``: the alarm engine's tick) at the time the data was digested, and only then moves on.
    So every station reads the same time for the same data, and a replay at 1x, 50x or flat out
    gives the same alarms at the same data times, however the machine schedules the loop; the wall
    clock only decides how long the replay takes.
    """

    def __init__(self, speed: float = 1.0, backlog: Callable[[], int] | None = None, step_s: float = 1.0):
        if not speed > 0:
            raise ValueError("replay speed must be > 0")
        if not step_s > 0:
            raise ValueError("replay step must be > 0 s")
        self.speed = speed
        self.backlog = backlog
        self.step_s = step_s
        self.on_step: list[Callable[[], object]] = []  # timers of the pipeline, run once per step of data time
        self.held_s = 0.0  # wall seconds the replay waited for the pipeline
        self.steps = 0
        self.now: float | None = None  # the data time; None before the replay starts
        self._data0 = 0.0
        self._wall0 = 0.0

    def start(self, data_t0: float) -> None:
        self._data0, self._wall0, self.now = data_t0, time.monotonic(), data_t0

    def __call__(self) -> float:
        return time.time() if self.now is None else self.now  # before the replay starts: nothing has happened yet

    def wall_delay(self, data_ts: float) -> float:
        """Wall seconds until ``data_ts`` comes round at ``speed``."""
        if self.now is None or math.isinf(self.speed):
            return 0.0
        return (data_ts - self._data0) / self.speed - (time.monotonic() - self._wall0)

    async def advance(self, data_ts: float, stop: asyncio.Event) -> bool:
        """Step the time to ``data_ts`` (the next reading to release); False if ``stop`` came first."""
        assert self.now is not None, "start the clock first"
        while self.now < data_ts:
            target = min(data_ts, self.now + self.step_s)
            wait = self.wall_delay(target)
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            if stop.is_set() or not await self.settle(stop):
                return False
            self.now = target
        return not stop.is_set()

    async def settle(self, stop: asyncio.Event) -> bool:
        """Hold the time until the pipeline has taken everything released so far, then run ``on_step`` at it."""
        if self.backlog is not None and self.backlog() > 0:
            held_at = time.monotonic()
            while self.backlog() > 0 and not stop.is_set():
                await asyncio.sleep(0.002)  # the stations drain their buffers in batches: a short poll is enough
            held = time.monotonic() - held_at
            self._wall0 += held  # a busy machine delays the replay; it does not make the data late
            self.held_s += held
        if stop.is_set():
            return False
        for timer in self.on_step:
            timer()
        self.steps += 1
        return True


def load_recording(path: str | Path, line: LineConfig, events: list[tuple[float, float, str]] | None = None,
                   labels: str | None = None) -> list[Reading]:
    """Every reading of a recording, oldest first (mode signal included), or ValueError naming the file and why.

    The file is read as train and evaluate read it (``plumbing.history.read_table``): columns that are no
    signal of the line are ignored, named in one log line. ``events`` receives each labelled fault of a wide
    table as (start, end, label), healthy rows by evaluate's rule; the label column is ``labels`` (as
    evaluate's ``--labels``), by default ``fault`` or else ``label``. A reading stream has no labels: ``labels``
    with one is refused, as is ``labels`` naming a file, rather than replayed with no fault scored.
    """
    from factory_copilot.plumbing.history import epoch_seconds, fault_events, read_table, row_times

    p = Path(path)
    suffix = p.suffix.lower()
    if labels is not None and suffix in STREAM_SUFFIXES:
        raise ValueError(f"{p}: a reading stream (JSON lines) carries no labels, so --labels {labels!r} cannot be read "
                         "from it; replay a CSV or Parquet table with a label column to score its faults, or drop "
                         "--labels (docs/history.md)")
    frame = read_table(p, "recording")
    stream = table = frame
    units = {f"{a.id}.{s.name}": s.unit for a in line.assets for s in a.signals}
    out: list[Reading] = []
    if suffix in STREAM_SUFFIXES:
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
        if labels is not None and labels not in table.columns:
            if Path(labels).suffix.lower() in RECORDING_SUFFIXES:
                raise ValueError(f"{p}: no label column {labels!r}: --labels names a column of the recording, not a "
                                 f"file; add the labels to {p.name} as a column and give its name (docs/history.md)")
            raise ValueError(f"{p}: no label column {labels!r} (columns: {', '.join(map(str, table.columns[:12]))})")
        label = labels or next((c for c in ("fault", "label") if c in table.columns), None)
        keys = [c for c in table.columns if c not in NOT_SIGNALS and c != label]
        ignored = [str(k) for k in keys if k not in units]
        if ignored:  # as train: a recording may carry more than the line's signals
            log.info("%s: ignored %d column(s) that are no signal of the line file: %s", p, len(ignored),
                     ", ".join(ignored[:10]) + (", ..." if len(ignored) > 10 else ""))
        keys = [k for k in keys if k in units]
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
        if label is not None and events is not None:
            # on the rows' times, as the station stamps its rows and so the alarms raised on them (and as evaluate)
            events.extend(fault_events(table[label], row_times(stamps, line.sampling_interval_s), line.sampling_interval_s))
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

    def __init__(self, line: LineConfig, buffer: Buffer[Reading | SourceState], path: str | Path, clock: ReplayClock,
                 labels: str | None = None):
        self.line = line
        self.buffer = buffer
        self.path = Path(path)
        self.clock = clock
        self.events: list[tuple[float, float, str]] = []  # (start, end, fault) of each labelled fault in the recording
        self.readings = load_recording(self.path, line, self.events, labels)
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
        while i < len(self.readings) and await self.clock.advance(self.readings[i].ts, stop):
            ts = self.readings[i].ts
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
        if i >= len(self.readings):
            await self.clock.settle(stop)  # the last readings digested and their timers run, as for every step
        self.finished.set()
        if i >= len(self.readings):
            log.info("replay of %s finished at data time %s", self.path,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)))
        await stop.wait()
