"""Publishes the simulated line's readings as JSON over MQTT, one topic per signal.

Topic: the signal's ``source.mqtt.topic`` in the line file (else
``factory/<site>/<line>/<asset>/<signal>``); payload
``{"ts": <epoch s>, "value": <float|null>, "quality": "good|uncertain|bad", "unit": "..."}``.

QoS 1 by default: a broker restart or a slow subscriber must not silently lose
samples the detectors count on (stuck-sensor and rate checks look at every
one); a duplicate after a retry carries the same ``ts`` so it is harmless.
paho's publish only queues, so the simulator loop never waits on the network.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections.abc import Iterable

import paho.mqtt.client as paho

from factory_copilot.plumbing.mqtt import MqttSession
from factory_copilot.config import LineConfig, MqttConnection
from factory_copilot.records import Reading

log = logging.getLogger(__name__)


def payload_of(reading: Reading) -> bytes:
    value = reading.value
    if value is not None and not math.isfinite(value):
        value = None  # JSON has no NaN; a missing value is null
    return json.dumps(
        {"ts": round(reading.ts, 6), "value": value, "quality": reading.quality.value, "unit": reading.unit}
    ).encode()


class ReadingPublisher:
    """``publish(readings)`` sends each reading to its signal's topic; never blocks the caller."""

    def __init__(
        self,
        line: LineConfig,
        connection: MqttConnection | None = None,
        *,
        qos: int = 1,
        max_queued: int = 200_000,
    ):
        self.line = line
        self._conn = connection or line.mqtt or MqttConnection()
        self.qos = qos
        self.max_queued = max_queued
        self.topics: dict[str, str] = {}
        self.units: dict[str, str] = {}
        for asset in line.assets:
            for signal in asset.signals:
                key = f"{asset.id}.{signal.name}"
                self.topics[key] = (
                    signal.source.mqtt.topic
                    if signal.source.mqtt
                    else f"factory/{line.site}/{line.line}/{asset.id}/{signal.name}"
                )
                self.units[key] = signal.unit
        self.session: MqttSession | None = None
        self.connected = threading.Event()
        self.published = 0
        self.failed = 0

    @property
    def conn(self) -> MqttConnection:
        """The connection as the session speaks it now (MQTT 3.1.1 after a fallback)."""
        return self.session.conn if self.session is not None else self._conn

    async def start(self, wait_s: float | None = None) -> "ReadingPublisher":
        """Connect in the background; with ``wait_s``, wait that long for the first connection."""

        def limits(client: paho.Client) -> None:
            # bounded: while the broker is down, older QoS 1 messages wait here, beyond that publish fails and is counted
            client.max_queued_messages_set(self.max_queued)
            client.max_inflight_messages_set(1000)

        self.session = MqttSession(self.conn, role="simulator", configure=limits,
                                   on_up=self.connected.set, on_down=lambda why: self.connected.clear()).start()
        if wait_s:
            if not await asyncio.to_thread(self.connected.wait, wait_s):
                log.warning("MQTT broker %s:%d did not answer within %g s; publishing once it does", self.conn.host, self.conn.port, wait_s)
        return self

    @property
    def client(self) -> paho.Client | None:
        return self.session.client if self.session else None

    def publish(self, readings: Iterable[Reading]) -> int:
        session = self.session
        if session is None or session.client is None:
            return 0
        n = 0
        for r in readings:
            topic = self.topics.get(r.key) or f"factory/{self.line.site}/{self.line.line}/{r.asset}/{r.signal}"
            if not r.unit and r.key in self.units:
                r = Reading(r.ts, r.asset, r.signal, r.value, r.quality, r.source, self.units[r.key])
            info = session.publish(topic, payload_of(r), qos=self.qos)
            if info.rc == paho.MQTT_ERR_SUCCESS or info.rc == paho.MQTT_ERR_NO_CONN:
                n += 1  # NO_CONN: queued by paho for QoS>0, sent after the reconnect
            else:
                self.failed += 1
        self.published += n
        return n

    async def stop(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await asyncio.to_thread(session.stop)
        self.connected.clear()

    def stats(self) -> dict:
        return {"published": self.published, "failed": self.failed, "connected": self.connected.is_set()}
