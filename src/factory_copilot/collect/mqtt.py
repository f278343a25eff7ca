"""The MQTT collector: subscribes to the line's topics and offers typed Readings into a Buffer.

Topics map to signals either explicitly (each signal's ``source.mqtt.topic`` in
the line file) or through patterns such as ``factory/+/+/{asset}/{signal}``,
subscribed as one wildcard. Each JSON payload is read with the signal's field
mapping (MqttSource.field / timestamp_field / quality_field). A bad payload is
counted per reason and logged with its topic (rate-limited); it never stops
the collector. paho runs its network loop on its own thread, so readings cross
to asyncio in batches every ``handover_s`` (10 ms; paho never waits); on every (re)connect we subscribe
again, since a clean session forgets subscriptions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import paho.mqtt.client as paho

from factory_copilot.plumbing import mqtt
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.opcua import quality_of
from factory_copilot.config import LineConfig, MqttConnection, MqttSource
from factory_copilot.records import Quality, Reading

log = logging.getLogger(__name__)

REJECT_REASONS = (
    "oversized",
    "not_json",
    "not_an_object",
    "missing_field",
    "not_a_number",
    "not_finite",
    "bad_timestamp",
    "bad_quality",
    "unknown_topic",
)
_QUALITY_WORDS = {"good": Quality.GOOD, "uncertain": Quality.UNCERTAIN, "bad": Quality.BAD}


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TopicSignal:
    asset: str
    signal: str
    unit: str
    source: MqttSource


@dataclass(frozen=True, slots=True)
class TopicPattern:
    """``factory/+/+/{asset}/{signal}``: subscribed with ``+`` wildcards, matched with a regex."""

    pattern: str
    subscription: str
    regex: re.Pattern

    @classmethod
    def parse(cls, pattern: str) -> "TopicPattern":
        if "{asset}" not in pattern or "{signal}" not in pattern:
            raise ValueError(f"topic pattern {pattern!r} needs both {{asset}} and {{signal}}")
        levels = pattern.split("/")
        sub, rx = [], []
        for level in levels:
            if level in ("{asset}", "{signal}"):
                sub.append("+")
                rx.append(f"(?P<{level[1:-1]}>[^/]+)")
            elif level == "+":
                sub.append("+")
                rx.append("[^/]+")
            elif level == "#" or "{" in level or "+" in level:
                raise ValueError(f"topic pattern {pattern!r}: level {level!r} must be a name, '+', {{asset}} or {{signal}}")
            else:
                sub.append(level)
                rx.append(re.escape(level))
        return cls(pattern, "/".join(sub), re.compile("^" + "/".join(rx) + "$"))


def parse_quality(raw: object) -> Quality:
    """Quality from a payload: a word (good/uncertain/bad) or a numeric OPC UA StatusCode."""
    if isinstance(raw, str):
        q = _QUALITY_WORDS.get(raw.strip().lower())
        if q is None:
            raise Rejected("bad_quality", f"quality {raw!r} is not good, uncertain or bad")
        return q
    if isinstance(raw, int) and not isinstance(raw, bool):
        return quality_of(raw)
    raise Rejected("bad_quality", f"quality {raw!r} is not a word or a status code")


def parse_timestamp(raw: object) -> float:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        ts = float(raw)
        if not math.isfinite(ts) or ts <= 0:
            raise Rejected("bad_timestamp", f"timestamp {raw!r} is not a positive epoch time")
        return ts / 1000.0 if ts > 1e11 else ts  # epoch milliseconds are common on gateways
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise Rejected("bad_timestamp", f"timestamp {raw!r} is not ISO 8601") from None
        if dt.tzinfo is None:
            raise Rejected("bad_timestamp", f"timestamp {raw!r} has no time zone")
        return dt.timestamp()
    raise Rejected("bad_timestamp", f"timestamp {raw!r} is not a number or ISO 8601 text")


def parse_payload(payload: bytes, where: TopicSignal, max_bytes: int, now: float, source: str = "mqtt") -> Reading:
    """One Reading from one JSON payload, or Rejected naming the reason."""
    if len(payload) > max_bytes:
        raise Rejected("oversized", f"{len(payload)} bytes > max_payload_bytes {max_bytes}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise Rejected("not_json", f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(body, dict):
        raise Rejected("not_an_object", f"JSON {type(body).__name__}, expected an object")
    src = where.source
    quality = Quality.GOOD
    if src.quality_field and src.quality_field in body:
        quality = parse_quality(body[src.quality_field])
    if src.field not in body:
        if quality is Quality.BAD:
            value = None
        else:
            raise Rejected("missing_field", f"no field {src.field!r}")
    else:
        value = body[src.field]
        if value is None and quality is Quality.BAD:
            pass
        elif isinstance(value, bool):
            value = float(value)
        elif isinstance(value, (int, float)):
            value = float(value)
            if not math.isfinite(value):
                raise Rejected("not_finite", f"field {src.field!r} is {value}")
        else:
            raise Rejected("not_a_number", f"field {src.field!r} is {type(value).__name__} {str(value)[:40]!r}")
    if quality is Quality.BAD:
        value = None
    ts = now
    if src.timestamp_field and body.get(src.timestamp_field) is not None:
        ts = parse_timestamp(body[src.timestamp_field])
    return Reading(ts, where.asset, where.signal, value, quality, source, where.unit)


class MqttCollector:
    """Turns the line's MQTT messages into Readings offered into ``buffer``.

    ``patterns``: extra wildcard topic patterns with ``{asset}`` and ``{signal}``
    levels; a topic they match is read as that signal of the line file (its unit
    and field mapping), or rejected as ``unknown_topic`` if the line has no such signal.
    """

    source = "mqtt"

    def __init__(
        self,
        line: LineConfig,
        buffer: Buffer[Reading],
        connection: MqttConnection | None = None,
        *,
        patterns: list[str] | None = None,
        qos: int = 1,
        log_every_s: float = 10.0,
        handover_s: float = 0.01,
    ):
        self.line = line
        self.buffer = buffer
        self.conn = connection or line.mqtt or MqttConnection()
        self.qos = qos
        self.log_every_s = log_every_s
        self.handover_s = handover_s
        self.topics: dict[str, TopicSignal] = {}
        self.by_key: dict[str, TopicSignal] = {}
        for asset in line.assets:
            for signal in asset.signals:
                ts = TopicSignal(asset.id, signal.name, signal.unit, signal.source.mqtt or MqttSource(topic=""))
                self.by_key[f"{asset.id}.{signal.name}"] = ts
                if signal.source.mqtt:
                    self.topics[signal.source.mqtt.topic] = ts
        self.patterns = [TopicPattern.parse(p) for p in patterns or []]
        self.subscriptions = self._subscriptions()
        self.client: paho.Client | None = None
        self.connected = asyncio.Event()
        self.readings_in = 0
        self.by_quality = {q.value: 0 for q in Quality}
        self.rejects = {reason: 0 for reason in REJECT_REASONS}
        self.connects = 0
        self.outages = 0
        self.last_reading_ts: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._pending: list[Reading] = []
        self._pending_lock = threading.Lock()
        self._drainer: asyncio.Task | None = None
        self._last_log: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self._down_since: float | None = None

    def _subscriptions(self) -> list[str]:
        """The wildcards, plus every explicit topic no wildcard already covers."""
        subs = [p.subscription for p in self.patterns]
        for topic in self.topics:
            if not any(paho.topic_matches_sub(s, topic) for s in subs):
                subs.append(topic)
        return subs

    # -- public --------------------------------------------------------------------

    def stats(self) -> dict:
        with self._lock:
            return {
                "source": self.source,
                "broker": f"{self.conn.host}:{self.conn.port}",
                "connected": self.connected.is_set(),
                "subscriptions": len(self.subscriptions),
                "readings_in": self.readings_in,
                "by_quality": dict(self.by_quality),
                "rejects": {k: v for k, v in self.rejects.items() if v},
                "rejected": sum(self.rejects.values()),
                "reconnects": max(0, self.connects - 1),
                "outages": self.outages,
                "last_reading_ts": self.last_reading_ts,
                "buffer": self.buffer.stats(),
            }

    async def start(self) -> None:
        """Start paho's network thread; returns at once (the broker may come later: paho keeps trying)."""
        self._loop = asyncio.get_running_loop()
        client = mqtt.make_client(self.conn, role="collector")
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        self.client = client
        mqtt.connect(client, self.conn)
        client.loop_start()
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain_every(), name="mqtt-collector-handover")

    async def _restart(self) -> None:
        await self.stop()
        await self.start()

    async def stop(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            client.on_disconnect = None
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        if self._drainer is not None:
            self._drainer.cancel()
            try:
                await self._drainer
            except asyncio.CancelledError:
                pass
            self._drainer = None
        self._drain_pending()  # what arrived before the stop still goes downstream
        self.connected.clear()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Collect until ``stop`` is set."""
        stop = stop or asyncio.Event()
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # -- paho thread -------------------------------------------------------------------

    def _set_connected(self, up: bool) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.connected.set if up else self.connected.clear)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001 - paho's signature
        if mqtt.is_failure(reason_code):
            older = mqtt.downgraded(self.conn, reason_code)
            if older is not None and self._loop is not None:
                self.conn = older
                self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._restart()))
                return
            self._note_down(f"broker refused the connection ({mqtt.reason_text(reason_code)})")
            return
        # subscriptions go in on_connect: after a broker restart a clean session has none
        client.subscribe([(topic, self.qos) for topic in self.subscriptions])
        with self._lock:
            self.connects += 1
            reconnect = self.connects > 1
        if self._down_since is not None:
            log.info(
                "MQTT reconnected to %s:%d after %.1f s; re-subscribed to %d topics",
                self.conn.host,
                self.conn.port,
                time.monotonic() - self._down_since,
                len(self.subscriptions),
            )
            self._down_since = None
        elif not reconnect:
            log.info("MQTT connected to %s:%d; subscribed to %d topics", self.conn.host, self.conn.port, len(self.subscriptions))
        self._set_connected(True)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # noqa: ANN001
        refused = [
            topic for topic, rc in zip(self.subscriptions, reason_codes) if mqtt.is_failure(rc)
        ]
        if refused:  # an ACL that hides topics looks exactly like a silent sensor otherwise
            log.error(
                "MQTT %s:%d refused the subscription to %d topic(s): %s",
                self.conn.host,
                self.conn.port,
                len(refused),
                ", ".join(refused[:5]) + (" ..." if len(refused) > 5 else ""),
            )

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self._note_down(f"disconnected ({mqtt.reason_text(reason_code)})")

    def _on_connect_fail(self, client, userdata) -> None:  # noqa: ANN001
        self._note_down("cannot reach the broker")

    def _note_down(self, why: str) -> None:
        self._set_connected(False)
        if self._down_since is None:
            self._down_since = time.monotonic()
            with self._lock:
                self.outages += 1
            log.warning("MQTT %s:%d %s; reconnecting with back-off", self.conn.host, self.conn.port, why)

    def _where(self, topic: str) -> TopicSignal | None:
        where = self.topics.get(topic)
        if where is not None:
            return where
        for p in self.patterns:
            m = p.regex.match(topic)
            if m:
                return self.by_key.get(f"{m['asset']}.{m['signal']}")
        return None

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:  # noqa: ANN001
        topic = message.topic
        try:
            where = self._where(topic)
            if where is None:
                raise Rejected("unknown_topic", "no signal of the line file maps to this topic")
            reading = parse_payload(message.payload, where, self.conn.max_payload_bytes, time.time(), self.source)
        except Rejected as exc:
            self._reject(exc.reason, topic, exc.detail)
            return
        with self._lock:
            self.readings_in += 1
            self.by_quality[reading.quality.value] += 1
            self.last_reading_ts = reading.ts
        self._hand_over(reading)

    def _hand_over(self, reading: Reading) -> None:
        """Park the reading for the event loop, which collects the parked ones every ``handover_s``.

        No cross-thread wake-up per message (call_soon_threadsafe costs a self-pipe write and a loop
        wake-up each; at thousands of messages a second that was most of our CPU); paho never waits.
        """
        with self._pending_lock:
            self._pending.append(reading)

    def _drain_pending(self) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
        offer = self.buffer.offer
        for reading in batch:
            offer(reading)

    async def _drain_every(self) -> None:
        while True:
            await asyncio.sleep(self.handover_s)
            self._drain_pending()

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        with self._lock:
            self.rejects[reason] += 1
        # at most one line per reason per log_every_s, with how many were not logged in between
        now = time.monotonic()
        if now - self._last_log.get(reason, -math.inf) >= self.log_every_s:
            skipped = self._unlogged.pop(reason, 0)
            log.warning(
                "MQTT payload rejected (%s) on %s: %s%s",
                reason,
                topic,
                detail,
                f" (+{skipped} more {reason} since the last report)" if skipped else "",
            )
            self._last_log[reason] = now
        else:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
