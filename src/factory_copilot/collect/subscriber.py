"""What the broker collectors (MQTT, Sparkplug B) share: the frame of start, run and stop, and the handover.

paho calls back on its own thread; a collector parks what it read there (Readings, SourceStates, in order)
and a task on the event loop hands the parked batch to the station's buffer every ``handover_s`` (no
cross-thread wake-up per message: that cost most of the collector's CPU). What arrived before a stop still
goes downstream. The counts every broker collector reports (readings by quality, rejects, the session's
outages) are kept here too, so ``stats()`` means the same thing for both.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable

from factory_copilot.collect.gate import SampleGate
from factory_copilot.config import LineConfig, MqttConnection
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.mqtt import MqttSession
from factory_copilot.records import Quality, Reading, SourceState


class BrokerCollector:
    """The part of a broker collector that is not its protocol. Subclasses set ``source``, ``served`` and
    ``subscriptions``, and implement ``start`` (calling ``_start_handover``) and ``stop`` (ending with
    ``_stop_handover``)."""

    source: str
    served: list[str]
    subscriptions: list[str]

    def __init__(self, line: LineConfig, buffer: Buffer[Reading | SourceState], connection: MqttConnection, *,
                 log_every_s: float, handover_s: float, clock: Callable[[], float], log: logging.Logger):
        self.line = line
        self.buffer = buffer
        self._conn = connection
        self.handover_s = handover_s
        self.clock = clock
        self.gate = SampleGate(line.samples.max_future_s, line.samples.max_age_s, clock, log_every_s, self.source, log)
        self.session: MqttSession | None = None
        self.connected = asyncio.Event()
        self.readings_in = 0
        self.by_quality = {q.value: 0 for q in Quality}
        self.last_reading_ts: float | None = None
        self.last_arrival: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.RLock()  # the counts (and a subclass' own state): paho's thread and the event loop
        self._pending: list[Reading | SourceState] = []
        self._pending_lock = threading.Lock()
        self._drainer: asyncio.Task | None = None
        self._subscribed = False  # paho's thread: subscriptions acknowledged on the current connection

    @property
    def conn(self) -> MqttConnection:
        """The connection as the session speaks it now (MQTT 3.1.1 after a fallback)."""
        return self.session.conn if self.session is not None else self._conn

    @property
    def rejects(self) -> dict[str, int]:
        return dict(self.gate.rejects)

    def stats(self) -> dict:
        session = self.session.stats() if self.session else {}
        with self._lock:
            return {
                "source": self.source,
                "broker": f"{self.conn.host}:{self.conn.port}",
                "connected": self.connected.is_set(),
                "subscriptions": len(self.subscriptions),
                "signals": len(self.served),
                "readings_in": self.readings_in,
                "by_quality": dict(self.by_quality),
                "rejects": {k: v for k, v in self.gate.rejects.items() if v},
                "rejected": sum(self.gate.rejects.values()),
                "reconnects": session.get("reconnects", 0),
                "outages": session.get("outages", 0),
                "callback_errors": session.get("callback_errors", 0),
                "conflict": session.get("conflict"),
                "last_reading_ts": self.last_reading_ts,
                "last_arrival": self.last_arrival,
                "buffer": self.buffer.stats(),
            }

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Collect until ``stop`` is set."""
        stop = stop or asyncio.Event()
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # -- paho's thread ----------------------------------------------------------------------------------------

    def _set_connected(self, up: bool) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.connected.set if up else self.connected.clear)

    def _park(self, item: Reading | SourceState) -> None:
        with self._pending_lock:
            self._pending.append(item)

    def _accepted(self, readings: list[Reading], now: float) -> None:
        """Count samples that passed the gate and park them for the handover."""
        self.gate.accept(len(readings))
        with self._lock:
            self.readings_in += len(readings)
            for r in readings:
                self.by_quality[r.quality.value] += 1
            self.last_reading_ts = readings[-1].ts
            self.last_arrival = now
        with self._pending_lock:
            self._pending.extend(readings)

    # -- the event loop ---------------------------------------------------------------------------------------

    def _start_handover(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain_every(), name=f"{self.source}-collector-handover")

    async def _stop_handover(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            try:
                await self._drainer
            except asyncio.CancelledError:
                pass
            self._drainer = None
        self._drain_pending()  # what arrived before the stop still goes downstream
        self.connected.clear()

    def _drain_pending(self) -> None:
        """Hand over what paho's thread parked, in the order it came."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
        offer = self.buffer.offer
        for item in batch:
            offer(item)

    def _on_handover(self) -> None:
        """Called on the event loop before each handover: a subclass' clock work (nothing by default)."""

    async def _drain_every(self) -> None:
        while True:
            await asyncio.sleep(self.handover_s)
            self._on_handover()
            self._drain_pending()
