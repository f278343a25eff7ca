"""The bounded queue that joins two stations.

A slow consumer must never block a producer's client loop (paho's network
thread, asyncua's subscription callback), so ``offer`` never waits: when the
buffer is full the oldest item is dropped to make room for the newest, the drop
is counted and a warning is logged (at most once per ``log_every_s``), never
silently.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Generic, TypeVar

from factory_copilot.plumbing.logs import Throttled

T = TypeVar("T")
log = logging.getLogger(__name__)


class Buffer(Generic[T]):
    def __init__(self, maxsize: int = 10_000, name: str = "buffer", log_every_s: float = 5.0):
        if maxsize <= 0:
            raise ValueError("a buffer between stations must be bounded (maxsize > 0)")
        self.name = name
        self.maxsize = maxsize
        self.queue: asyncio.Queue[T] = asyncio.Queue(maxsize)
        self.offered = 0
        self.dropped = 0
        self._log = Throttled(log, log_every_s)

    def offer(self, item: T) -> bool:
        """Put without waiting; on overflow drop the oldest item. Returns False if something was dropped."""
        self.offered += 1
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            try:
                self.queue.get_nowait()
                self.queue.task_done()
            except asyncio.QueueEmpty:  # pragma: no cover - consumer emptied it between the two calls
                pass
            self.queue.put_nowait(item)
            self.dropped += 1
            self._log_overflow()
            return False

    def offer_threadsafe(self, loop: asyncio.AbstractEventLoop, item: T) -> None:
        """Hand an item over from a foreign thread (paho's network loop) without blocking it."""
        loop.call_soon_threadsafe(self.offer, item)

    async def get(self) -> T:
        return await self.queue.get()

    def get_nowait(self) -> T:
        return self.queue.get_nowait()

    def qsize(self) -> int:
        return self.queue.qsize()

    def stats(self) -> dict[str, int]:
        return {"offered": self.offered, "dropped": self.dropped, "queued": self.queue.qsize(), "maxsize": self.maxsize}

    def _log_overflow(self) -> None:
        self._log.warning("overflow", "%s full (%d items): dropped its oldest item, %d in total; the consumer is too slow",
                          self.name, self.maxsize, self.dropped)

