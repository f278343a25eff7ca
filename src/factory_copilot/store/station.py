"""The store station: drains the buffers of readings, anomalies, alarm events, diagnoses,
conversation turns and feedback into the store, in batched transactions, and enforces retention.

SQLite work runs in a worker thread so the event loop (and the stations sharing it)
never waits on the disk; readings are written in batches of whatever has queued
up, which is how it keeps up with thousands of readings a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.records import AlarmEvent, Anomaly, Diagnosis, Feedback, Reading, Turn
from factory_copilot.store.store import Store
from factory_copilot.plumbing.tasks import run_until

log = logging.getLogger(__name__)


class StoreStation:
    """Consumes any of the given buffers; ``run()`` until cancelled, ``drain()`` to flush what is queued."""

    # the records it takes off the line's bus and gives onto it (plumbing/bus.py)
    takes = (Reading, Anomaly, AlarmEvent, Diagnosis, Turn)
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
    ):
        self.store = store
        self.clock = clock  # retention counts in data time when a recording is replayed
        self.batch_max = batch_max
        self.retention_every_s = retention_every_s
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
        self._progress = asyncio.Condition()

    def _add_feedback(self, items: Sequence[Feedback]) -> int:
        for fb in items:
            self.store.add_feedback(fb)
        return len(items)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Write what arrives until ``stop`` is set (or the task is cancelled); ``drain()`` writes the rest."""
        tasks = [asyncio.create_task(self._lane(*lane), name=f"store-{lane[0]}") for lane in self._lanes]
        tasks.append(asyncio.create_task(self._retention(), name="store-retention"))
        await run_until(stop, tasks)

    async def _lane(self, name: str, buf: Buffer[Any], write: Callable[[Sequence[Any]], Any]) -> None:
        while True:
            batch = [await buf.get()]
            batch.extend(self._take(buf, self.batch_max - 1))
            await self._write(name, write, batch)

    @staticmethod
    def _take(buf: Buffer[Any], limit: int) -> list[Any]:
        items = []
        while len(items) < limit:
            try:
                items.append(buf.get_nowait())
            except asyncio.QueueEmpty:
                break
        return items

    async def _write(self, name: str, write: Callable[[Sequence[Any]], Any], batch: list[Any]) -> None:
        try:
            await asyncio.to_thread(write, batch)
            self.written[name] += len(batch)
            self.batches += 1
            async with self._progress:
                self._progress.notify_all()
        except Exception:
            # a bad batch (disk full, a malformed record) is logged and dropped; the station keeps serving
            self.failed[name] += len(batch)
            log.exception("store: could not write %d %s", len(batch), name)

    async def wait_written(self, name: str, count: int) -> None:
        """Wait until ``count`` items of lane ``name`` have been written (wrap in a timeout)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.written[name] >= count)

    async def drain(self) -> None:
        """Write everything queued now (used at shutdown and by tests)."""
        for name, buf, write in self._lanes:
            while buf.qsize():
                await self._write(name, write, self._take(buf, self.batch_max))

    async def _retention(self) -> None:
        while True:
            await asyncio.sleep(self.retention_every_s)
            try:
                await asyncio.to_thread(self.store.enforce_retention, self.clock())
            except Exception:
                log.exception("store: retention failed; will retry in %.0f s", self.retention_every_s)

    def stats(self) -> dict[str, Any]:
        return {"written": dict(self.written), "failed": dict(self.failed), "batches": self.batches}
