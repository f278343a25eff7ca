"""The MQTT collector: subscribes to the line's topics and offers typed Readings into a Buffer.

Topics map to signals either explicitly (each signal's ``source.mqtt`` in the line
file: topic + JSON field) or through patterns such as ``factory/+/+/{asset}/{signal}``,
subscribed as one wildcard. One topic may carry several signals (the usual gateway
layout: one JSON object per sample, a field per signal; a field may be a dotted path
into nested objects), so one message can become several Readings.

Every sample passes the gate (``gate.py``): a bad payload, a bad value or a skewed
timestamp is counted per reason and logged with its topic (rate-limited); it never
stops the collector. paho runs on its own thread inside the shared ``MqttSession``
(guarded callbacks, reconnect, one log line per outage); readings cross to asyncio
in batches every ``handover_s`` (10 ms; paho never waits). Connection changes go
downstream as ``SourceState`` records, in order with the readings.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt.client as paho

from factory_copilot.collect.gate import BadSample, SampleGate, parse_json, parse_quality, parse_timestamp
from factory_copilot.collect.subscriber import BrokerCollector
from factory_copilot.config import LineConfig, MqttConnection, MqttSource
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.mqtt import MqttSession
from factory_copilot.records import Quality, Reading, SourceState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSignal:
    asset: str
    signal: str
    unit: str
    source: MqttSource

    @property
    def key(self) -> str:
        return f"{self.asset}.{self.signal}"


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


def field_of(body: dict, path: str) -> Any:
    """``body[path]``, where a dotted path walks nested objects (a key with a dot in it is tried whole first)."""
    if path in body:
        return body[path]
    here: Any = body
    for part in path.split("."):
        if not isinstance(here, dict) or part not in here:
            raise KeyError(path)
        here = here[part]
    return here


def readings_of(body: Any, signals: list[TopicSignal], gate: SampleGate, now: float,
                on_reject: Callable[[str, str, str], None]) -> list[Reading]:
    """The readings one JSON message carries for ``signals``; a field that is missing or bad is rejected alone."""
    if not isinstance(body, dict):
        raise BadSample("not_an_object", f"JSON {type(body).__name__}, expected an object")
    out: list[Reading] = []
    for where in signals:
        src = where.source
        try:
            quality = Quality.GOOD
            if src.quality_field and src.quality_field in body:
                quality = parse_quality(body[src.quality_field])
            try:
                value = field_of(body, src.field)
            except KeyError:
                if quality is not Quality.BAD:
                    raise BadSample("missing_field", f"no field {src.field!r}") from None
                value = None
            ts = now
            if src.timestamp_field and body.get(src.timestamp_field) is not None:
                ts = parse_timestamp(body[src.timestamp_field])
            out.append(gate.reading(ts, where.asset, where.signal, value, quality, where.unit, now))
        except BadSample as exc:
            on_reject(exc.reason, where.key, exc.detail)
    return out


class MqttCollector(BrokerCollector):
    """Turns the line's MQTT messages into Readings offered into ``buffer``.

    ``signals``: the signal keys this collector serves (default: every signal with an MQTT source).
    ``patterns``: extra wildcard topic patterns with ``{asset}`` and ``{signal}`` levels; a topic
    they match is read as that signal of the line file (its unit and field mapping), or rejected
    as ``unknown_topic`` if the line has no such signal.
    """

    source = "mqtt"

    def __init__(
        self,
        line: LineConfig,
        buffer: Buffer[Reading | SourceState],
        connection: MqttConnection | None = None,
        *,
        signals: list[str] | None = None,
        patterns: list[str] | None = None,
        qos: int = 1,
        log_every_s: float = 10.0,
        handover_s: float = 0.01,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(line, buffer, connection or line.mqtt or MqttConnection(), log_every_s=log_every_s,
                         handover_s=handover_s, clock=clock, log=log)
        self.qos = qos
        wanted = set(signals) if signals is not None else None
        self.topics: dict[str, list[TopicSignal]] = {}
        self.by_key: dict[str, TopicSignal] = {}
        for asset in line.assets:
            for signal in asset.signals:
                ts = TopicSignal(asset.id, signal.name, signal.unit, signal.source.mqtt or MqttSource(topic=""))
                self.by_key[ts.key] = ts
                if signal.source.mqtt and (wanted is None or ts.key in wanted):
                    self.topics.setdefault(signal.source.mqtt.topic, []).append(ts)
        self.served = [s.key for group in self.topics.values() for s in group]
        self.patterns = [TopicPattern.parse(p) for p in patterns or []]
        self.subscriptions = self._subscriptions()

    def _subscriptions(self) -> list[str]:
        """The wildcards, plus every explicit topic no wildcard already covers."""
        subs = [p.subscription for p in self.patterns]
        for topic in self.topics:
            if not any(paho.topic_matches_sub(s, topic) for s in subs):
                subs.append(topic)
        return subs

    @property
    def client(self) -> paho.Client | None:
        return self.session.client if self.session else None

    # -- public --------------------------------------------------------------------

    async def start(self) -> None:
        """Start the session; returns at once (the broker may come later: the session keeps trying)."""
        self._start_handover()
        self._state(False, f"MQTT broker {self.conn.host}:{self.conn.port}: connecting")
        self.session = MqttSession(
            self.conn, role="collector", subscriptions=[(t, self.qos) for t in self.subscriptions],
            on_message=self._on_message, on_subscribed=self._on_subscribed, on_down=self._on_down,
        ).start()

    async def stop(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await asyncio.to_thread(session.stop)
        await self._stop_handover()

    # -- paho thread (guarded by the session) -----------------------------------------

    def _on_subscribed(self) -> None:
        """Connected and subscribed (the SUBACK is in): from now on no sample is missed."""
        if self._subscribed:
            return  # a subscription added later: nothing changes for the source
        self._subscribed = True
        if self.session is not None and self.session.connects > 1:
            log.info("MQTT collector re-subscribed to %d topics", len(self.subscriptions))
        self._state(True, f"MQTT broker {self.conn.host}:{self.conn.port} connected")
        self._set_connected(True)

    def _on_down(self, why: str) -> None:
        self._subscribed = False
        self._set_connected(False)
        self._state(False, f"MQTT broker {self.conn.host}:{self.conn.port} {why}")

    def _state(self, up: bool, detail: str) -> None:
        self._park(SourceState(self.source, self.clock(), up, detail, tuple(self.served)))

    def _where(self, topic: str) -> list[TopicSignal] | None:
        where = self.topics.get(topic)
        if where is not None:
            return where
        for p in self.patterns:
            m = p.regex.match(topic)
            if m:
                one = self.by_key.get(f"{m['asset']}.{m['signal']}")
                return [one] if one else None
        return None

    def _on_message(self, message: paho.MQTTMessage) -> None:
        topic = message.topic
        now = self.clock()
        try:
            where = self._where(topic)
            if where is None:
                raise BadSample("unknown_topic", "no signal of the line file maps to this topic")
            body = parse_json(message.payload, self.conn.max_payload_bytes)
            readings = readings_of(body, where, self.gate, now,
                                   lambda reason, key, detail: self.gate.reject(reason, f"{topic} ({key})", detail))
        except BadSample as exc:
            self.gate.reject(exc.reason, topic, exc.detail)
            return
        if readings:
            self._accepted(readings, now)
