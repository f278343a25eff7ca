"""The store station: drains the buffers of readings, anomalies, alarm events, diagnoses,
conversation turns and operators' feedback (authorised by the alarm station) into the store, in batched
transactions, and enforces retention.

SQLite work runs in a worker thread so the event loop (and the stations sharing it)
never waits on the disk; readings are written in batches of whatever has queued
up, which is how it keeps up with thousands of readings a second. While a database
server is away (``ConnectionError``) each lane keeps its batches, up to ``hold_max``
items, and writes them when the server is back. (A batch whose COMMIT reached the server
but whose answer was lost with the connection is written again: the one case that can
store a batch twice.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.logs import Throttled
from factory_copilot.plumbing.postgres import WrongRole
from factory_copilot.records import AlarmEvent, Anomaly, Diagnosis, Feedback, Reading, Turn
from factory_copilot.store.store import Store
from factory_copilot.plumbing.tasks import run_until

log = logging.getLogger(__name__)

SWEEP_NICE = 10  # a retention sweep is housekeeping: on a busy machine the alarm path's threads go first (issue 21)


def _lower_priority() -> None:
    """This worker thread's scheduling priority, lowered by ``SWEEP_NICE`` (Linux: nice is per thread; elsewhere
    it would be the whole process's, so nothing)."""
    if sys.platform.startswith("linux"):
        try:
            os.nice(SWEEP_NICE)
        except OSError:  # not allowed here: the sweep runs at the service's priority
            pass


class StoreStation:
    """Consumes any of the given buffers; ``run()`` until cancelled, ``drain()`` to flush what is queued."""

    # the records it takes off the line's bus and gives onto it (plumbing/bus.py)
    takes = (Reading, Anomaly, AlarmEvent, Diagnosis, Turn, Feedback)
    gives = ()

    def __init__(
        self,
        store: Store,
        readings: Buffer[Reading] | None = None,
        anomalies: Buffer[Anomaly] | None = None,
        events: Buffer[AlarmEvent] | None = None,
        diagnoses: Buffer[Diagnosis] | None = None,
        turns: Buffer[Turn] | None = None,
        feedback: Buffer[Feedback] | None = None,
        batch_max: int = 20_000,
        retention_every_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        hold_max: int = 200_000,
        retry_s: float = 0.5,
        retry_max_s: float = 10.0,
    ):
        self.store = store
        self.clock = clock  # retention counts in data time when a recording is replayed
        self.batch_max = batch_max
        self.retention_every_s = retention_every_s
        self._sweeper: ThreadPoolExecutor | None = None
        self._lanes: list[tuple[str, Buffer[Any], Callable[[Sequence[Any]], Any]]] = [
            (name, buf, write)
            for name, buf, write in [
                ("readings", readings, store.add_readings),
                ("anomalies", anomalies, store.add_anomalies),
                ("events", events, store.add_alarm_events),
                ("diagnoses", diagnoses, store.add_diagnoses),
                ("turns", turns, store.add_turns),
                ("feedback", feedback, self._add_feedback),
            ]
            if buf is not None
        ]
        self.written: dict[str, int] = {name: 0 for name, _, _ in self._lanes}
        self.failed: dict[str, int] = {name: 0 for name, _, _ in self._lanes}
        self.batches = 0
        self.hold_max, self.retry_s, self.retry_max_s = hold_max, retry_s, retry_max_s
        self._held: dict[str, list[list[Any]]] = {name: [] for name, _, _ in self._lanes}
        # one writer per lane at a time: drain() runs beside the lanes (a replay's summary) and must not write the
        # batch a lane is writing a second time
        self._writing: dict[str, asyncio.Lock] = {name: asyncio.Lock() for name, _, _ in self._lanes}
        self.write_retries = 0  # writes that found the database away (their batches kept)
        self.unavailable: str | None = None  # why the database cannot be written now
        self.unavailable_since: float | None = None
        self._log = Throttled(log, 30.0)
        self._progress = asyncio.Condition()

    def _add_feedback(self, items: list[Feedback]) -> int:
        # one row at a time: each written one leaves the batch, so a retry after a lost server writes none twice
        n = len(items)
        while items:
            self.store.add_feedback(items[0])
            del items[0]
        return n

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Write what arrives until ``stop`` is set (or the task is cancelled); ``drain()`` writes the rest."""
        tasks = [asyncio.create_task(self._lane(*lane), name=f"store-{lane[0]}") for lane in self._lanes]
        tasks.append(asyncio.create_task(self._retention(), name="store-retention"))
        try:
            await run_until(stop, tasks)
        finally:
            if self._sweeper is not None:
                self._sweeper.shutdown(wait=False)
                self._sweeper = None

    async def _lane(self, name: str, buf: Buffer[Any], write: Callable[[Sequence[Any]], Any]) -> None:
        held = self._held[name]
        while True:
            if not held:
                batch = [await buf.get()]
                batch.extend(self._take(buf, self.batch_max - 1))
                held.append(batch)
            delay = self.retry_s
            while held:
                if await self._write(name, write, held):
                    continue
                # the database is away: keep what arrives meanwhile too (the buffer drops its oldest beyond that)
                room = self.hold_max - sum(map(len, held))
                more = self._take(buf, min(room, self.batch_max)) if room > 0 else []
                if more:
                    held.append(more)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    @staticmethod
    def _take(buf: Buffer[Any], limit: int) -> list[Any]:
        items = []
        while len(items) < limit:
            try:
                items.append(buf.get_nowait())
            except asyncio.QueueEmpty:
                break
        return items

    async def _write(self, name: str, write: Callable[[Sequence[Any]], Any], held: list[list[Any]]) -> bool:
        """Write the lane's oldest held batch: True when done with it (written, or dropped as bad; it leaves
        ``held``), False when the database is away and it stays to be tried again."""
        async with self._writing[name]:
            if not held:
                return True  # the lane's other writer wrote it meanwhile
            return await self._write_oldest(name, write, held)

    async def _write_oldest(self, name: str, write: Callable[[Sequence[Any]], Any], held: list[list[Any]]) -> bool:
        size = len(held[0])
        job = asyncio.ensure_future(asyncio.to_thread(write, held[0]))
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # stopped mid-write: the thread finishes its transaction; settled here, so drain() does not write it twice
            await asyncio.wait([job])
            self._settle(name, held, size, job.exception())
            raise
        except Exception:
            pass  # settled below from the job
        done = self._settle(name, held, size, job.exception())
        async with self._progress:
            self._progress.notify_all()
        return done

    def _settle(self, name: str, held: list[list[Any]], size: int, exc: BaseException | None) -> bool:
        batch = held[0]
        # a role the database does not let act for this line (started while the server was away): held as well,
        # it writes once the tables' owner binds it
        if isinstance(exc, (ConnectionError, WrongRole)):
            self.written[name] += size - len(batch)  # what a one-by-one writer wrote before the server went
            self.write_retries += 1
            if self.unavailable is None:
                self.unavailable_since = time.time()
            self.unavailable = str(exc)
            self._log.warning("unavailable", "store: database unavailable (%s); %d items held, writing them when it "
                              "is back", exc, self.held_items())
            return False
        held.pop(0)
        if exc is not None:
            # a bad batch (disk full, a malformed record) is logged and dropped; the station keeps serving
            self.failed[name] += len(batch)
            log.error("store: could not write %d %s", len(batch), name, exc_info=exc)
            return True
        if self.unavailable is not None:
            log.info("store: database back after %.0f s; writing the %d items held", time.time() - (
                self.unavailable_since or time.time()), self.held_items())
            self.unavailable = self.unavailable_since = None
        self.written[name] += size
        self.batches += 1
        return True

    def held_items(self) -> int:
        return sum(len(b) for held in self._held.values() for b in held)

    async def wait_retries(self, count: int) -> None:
        """Wait until ``count`` writes have found the database away (wrap in a timeout)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.write_retries >= count)

    async def wait_written(self, name: str, count: int) -> None:
        """Wait until ``count`` items of lane ``name`` have been written (wrap in a timeout)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.written[name] >= count)

    async def drain(self) -> None:
        """Write everything held and queued now (used at shutdown and by tests); with the database away, once each."""
        for name, buf, write in self._lanes:
            held = self._held[name]
            while buf.qsize():
                held.append(self._take(buf, self.batch_max))
            while held and await self._write(name, write, held):
                pass
            if held:
                log.error("store: %d %s not written: the database is unavailable (%s)",
                          sum(map(len, held)), name, self.unavailable)

    async def _retention(self) -> None:
        while True:
            await asyncio.sleep(self.retention_every_s)
            try:
                await self.sweep()
            except ConnectionError as exc:  # the server away: the held batches already say so, no traceback
                log.warning("store: retention skipped, the database is unavailable (%s); will retry in %.0f s", exc,
                            self.retention_every_s)
            except Exception:
                log.exception("store: retention failed; will retry in %.0f s", self.retention_every_s)

    async def sweep(self, now: float | None = None) -> dict[str, int]:
        """One retention sweep (``Store.enforce_retention`` at ``now``, else the clock's time) in the station's own
        worker thread, at a lower priority than the service's (``SWEEP_NICE``); rows deleted per table."""
        if self._sweeper is None:
            self._sweeper = ThreadPoolExecutor(1, thread_name_prefix="store-sweep", initializer=_lower_priority)
        now = self.clock() if now is None else now
        return await asyncio.get_running_loop().run_in_executor(self._sweeper, self.store.enforce_retention, now)

    def stats(self) -> dict[str, Any]:
        return {"written": dict(self.written), "failed": dict(self.failed), "batches": self.batches,
                "held": {name: sum(map(len, held)) for name, held in self._held.items()},
                "write_retries": self.write_retries, "unavailable": self.unavailable,
                "unavailable_since": self.unavailable_since}
