"""The publish station's sender: which message goes to the broker next, and what the broker has acknowledged.

Outgoing traffic leaves in this order of priority, at most ``window`` messages in flight, QoS 1:

1. alarm states and events (SQLite outbox lane 0),
2. replies to commands and error answers (memory),
3. diagnoses (outbox lane 1),
4. streamed diagnosis text and copilot answers (memory, bounded, expire when late).

Half the window stays free for alarms and replies, so a flood of diagnosis text never
makes an alarm wait for a slot. Alerts leave the outbox only when their PUBACK arrives.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable

import paho.mqtt.client as paho

from factory_copilot.publish.outbox import ALARM_LANE, DIAGNOSIS_LANE, Message, Outbox

log = logging.getLogger(__name__)

# (message) -> the paho message info; raises ValueError for a message the client refuses
Hand = Callable[[Message], paho.MQTTMessageInfo]


class Sender:
    """Keeps the queues and the in-flight window; ``hand`` passes one message to the MQTT session."""

    def __init__(self, outbox: Outbox, hand: Hand, *, window: int = 32, stream_expiry_s: int = 120,
                 stream_max: int = 2000, counts: collections.Counter | None = None):
        self.outbox = outbox
        self.hand = hand
        self.window = window
        self.stream_expiry_s = stream_expiry_s
        self.counts = counts if counts is not None else collections.Counter()
        self.online = asyncio.Event()  # set while the broker has acknowledged this connection's birth
        self.idle = asyncio.Event()  # nothing pending anywhere
        self._wake = asyncio.Event()
        self._inflight: dict[int, Message] = {}
        self._acked_ids: list[int] = []  # acknowledged, to be deleted from the outbox in one transaction
        self._queued: dict[int, collections.deque[Message]] = {ALARM_LANE: collections.deque(),
                                                               DIAGNOSIS_LANE: collections.deque()}
        self._loaded = {ALARM_LANE: 0, DIAGNOSIS_LANE: 0}  # highest outbox id read into _queued, per lane
        # every command is answered: replies wait in memory, bounded only against a runaway (counted, logged)
        self._replies: collections.deque[Message] = collections.deque(maxlen=20_000)
        self._stream: collections.deque[Message] = collections.deque(maxlen=stream_max)
        self._update_idle()

    # ---- what goes out -----------------------------------------------------------------------------------------

    def store(self, message: Message) -> None:
        """An alert: on disk first, out when its turn comes, gone when acknowledged."""
        self.outbox.add(message)
        self.counts["stored"] += 1
        self._kick()

    def reply(self, message: Message) -> None:
        """A reply an operator waits for: in memory, ahead of diagnoses."""
        if len(self._replies) == self._replies.maxlen:
            self.counts["replies_dropped"] += 1
            log.warning("%d replies wait for the broker: dropped the oldest (%d so far)", len(self._replies),
                        self.counts["replies_dropped"])
        self._replies.append(message)
        self._kick()

    def ephemeral(self, message: Message) -> None:
        """Streamed text: worthless when late, dropped (counted) when too much piles up."""
        message.expiry_s = self.stream_expiry_s
        if len(self._stream) == self._stream.maxlen:
            self.counts["stream_dropped"] += 1
        self._stream.append(message)
        self._kick()

    # ---- what the broker says -------------------------------------------------------------------------------------

    def acked(self, mid: int, failure: str | None) -> None:
        message = self._inflight.pop(mid, None)
        if message is None:
            return
        if failure:
            # the broker refused it (not authorised, quota...): resending cannot help, so it leaves the outbox, loudly
            log.error("broker refused the message on %s: %s", message.topic, failure)
            self.counts["refused"] += 1
        else:
            self.counts["acked"] += 1
        if message.id:
            self._acked_ids.append(message.id)
        self._kick()

    def went_online(self) -> None:
        self.online.set()
        self._kick()

    def went_offline(self) -> None:
        self.online.clear()

    def new_client(self) -> None:
        """The session made a new paho client (protocol fallback): it never saw what the old one held."""
        for message in self._inflight.values():
            queue = self._replies if message.lane < 0 else self._queued[message.lane]
            queue.appendleft(message)
        self._inflight.clear()

    # ---- the loop --------------------------------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def stream_queued(self) -> int:
        return len(self._stream)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.forget_acked()
                self._fill()
            except Exception:  # the sender must outlive any one bad message
                log.exception("publish sender failed; retrying on the next message")
            self._update_idle()

    def forget_acked(self) -> None:
        """Delete acknowledged alerts from the outbox, many in one transaction."""
        if self._acked_ids:
            ids, self._acked_ids = self._acked_ids, []
            self.outbox.done(ids)

    def _kick(self) -> None:
        self.idle.clear()
        self._wake.set()

    def _update_idle(self) -> None:
        if not self._inflight and not self.outbox.pending() and not self._replies and not self._stream:
            self.idle.set()
        else:
            self.idle.clear()

    def _next(self, urgent_only: bool) -> Message | None:
        """The most urgent message not yet handed to the client (only alarms and replies when ``urgent_only``)."""
        for source in (ALARM_LANE, "replies") if urgent_only else (ALARM_LANE, "replies", DIAGNOSIS_LANE, "stream"):
            if source == "replies":
                if self._replies:
                    return self._replies.popleft()
            elif source == "stream":
                while self._stream:
                    message = self._stream.popleft()
                    if time.time() - message.created_at <= (message.expiry_s or 0):
                        return message
                    self.counts["stream_expired"] += 1
            else:
                queue = self._queued[source]
                if not queue:
                    rows = self.outbox.after(source, self._loaded[source], 256)
                    if rows:
                        self._loaded[source] = rows[-1].id
                        queue.extend(rows)
                if queue:
                    return queue.popleft()
        return None

    def _fill(self) -> None:
        while self.online.is_set() and len(self._inflight) < self.window:
            # half the window stays free for alarms, so a diagnosis flood never makes an alarm wait for a slot
            message = self._next(urgent_only=len(self._inflight) >= self.window // 2)
            if message is None:
                return
            try:
                info = self.hand(message)
            except ValueError as exc:  # a message the client refuses (too large, bad topic) must not block the ones behind it
                log.error("cannot publish to %s: %s; message dropped", message.topic, exc)
                self.counts["refused"] += 1
                if message.id:
                    self.outbox.done([message.id])
                continue
            # NO_CONN: paho keeps the message and sends it after the reconnect; the PUBACK still finds it here
            self._inflight[info.mid] = message
            self.counts["handed"] += 1
