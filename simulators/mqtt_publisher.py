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

from factory_copilot.plumbing import mqtt
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
        self.conn = connection or line.mqtt or MqttConnection()
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
        self.client: paho.Client | None = None
        self.connected = threading.Event()
        self.published = 0
        self.failed = 0
        self._down_logged = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, wait_s: float | None = None) -> "ReadingPublisher":
        """Connect in the background; with ``wait_s``, wait that long for the first connection."""
        self._loop = asyncio.get_running_loop()
        client = mqtt.make_client(self.conn, role="simulator")
        # bounded: while the broker is down, older QoS 1 messages wait here, beyond that publish fails and is counted
        client.max_queued_messages_set(self.max_queued)
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self.client = client
        mqtt.connect(client, self.conn)
        client.loop_start()
        if wait_s:
            if not await asyncio.to_thread(self.connected.wait, wait_s):
                log.warning("MQTT broker %s:%d did not answer within %g s; publishing once it does", self.conn.host, self.conn.port, wait_s)
        return self

    async def _restart(self) -> None:
        await self.stop()
        await self.start()

    def publish(self, readings: Iterable[Reading]) -> int:
        client = self.client
        if client is None:
            return 0
        n = 0
        for r in readings:
            topic = self.topics.get(r.key) or f"factory/{self.line.site}/{self.line.line}/{r.asset}/{r.signal}"
            if not r.unit and r.key in self.units:
                r = Reading(r.ts, r.asset, r.signal, r.value, r.quality, r.source, self.units[r.key])
            info = client.publish(topic, payload_of(r), qos=self.qos)
            if info.rc == paho.MQTT_ERR_SUCCESS or info.rc == paho.MQTT_ERR_NO_CONN:
                n += 1  # NO_CONN: queued by paho for QoS>0, sent after the reconnect
            else:
                self.failed += 1
        self.published += n
        return n

    async def stop(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        self.connected.clear()

    def stats(self) -> dict:
        return {"published": self.published, "failed": self.failed, "connected": self.connected.is_set()}

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001 - paho's signature
        if mqtt.is_failure(reason_code):
            older = mqtt.downgraded(self.conn, reason_code)
            if older is not None and self._loop is not None:
                self.conn = older
                self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._restart()))
                return
            log.warning("MQTT broker refused the simulator: %s", mqtt.reason_text(reason_code))
            return
        if self._down_logged:
            log.info("MQTT publisher reconnected to %s:%d", self.conn.host, self.conn.port)
        self._down_logged = False
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.connected.clear()
        if not self._down_logged and self.client is not None:
            self._down_logged = True
            log.warning("MQTT publisher lost %s:%d (%s); reconnecting", self.conn.host, self.conn.port, mqtt.reason_text(reason_code))
