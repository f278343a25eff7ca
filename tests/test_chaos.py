"""Chaos: the service under the simulated line while its OPC UA server and its broker die and come back.

The line is read from both kinds of source (the air compressor over MQTT, the rest over
OPC UA). The OPC UA server and the broker are each killed and restarted twice, garbage and
skewed samples are injected on both, and a fault is injected at the end. What must hold:
the fault alarm arrives; a persistent QoS 1 subscriber receives every alarm event exactly
once, in order; ``GET /health`` answers 503 while a source is down and 200 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest

from factory_copilot.detect.station import SOURCES_ASSET
from factory_copilot.plumbing.broker import free_port
from factory_copilot.records import Reading
from tests.support.mqtt import Listener, persistent_broker
from tests.support.plant import Plant, condition
from tests.test_never_blind import YEAR_2100, Gateway

pytestmark = pytest.mark.slow

OUTAGE_S = 6.0
DETECT_S = 4.0  # from a kill to /health saying so: the OPC UA keep-alive notices within a few seconds


def get_health(port: int) -> tuple[int, dict] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


class HealthLog:
    """Polls /health every 0.2 s from another thread's point of view (HTTP), keeping (time, status, reasons)."""

    def __init__(self, port: int):
        self.port = port
        self.seen: list[tuple[float, int, list[str]]] = []
        self.task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            answer = await asyncio.to_thread(get_health, self.port)
            if answer is not None:
                self.seen.append((time.time(), answer[0], answer[1].get("reasons", [])))
            await asyncio.sleep(0.2)

    async def until(self, status: int, after: float, timeout_s: float = 60.0) -> float:
        """The time of the first answer ``status`` seen after ``after``."""
        deadline = time.time() + timeout_s
        while True:
            hits = [t for t, code, _ in self.seen if t > after and code == status]
            if hits:
                return hits[0]
            assert time.time() < deadline, f"/health never said {status} after {after}: {self.seen[-3:]}"
            await asyncio.sleep(0.1)

    def between(self, start: float, end: float) -> list[tuple[float, int, list[str]]]:
        return [s for s in self.seen if start <= s[0] <= end]


async def test_the_service_keeps_watching_through_killed_servers_and_brokers(broker, tmp_path, sim_models):
    persistent_broker(broker, tmp_path)
    plant = await Plant(broker, tmp_path, sim_models, mqtt_assets=("air_compressor",), health_port=free_port()).start()
    T = plant.topics
    scada = await Listener(broker, [T.events()], client_id="chaos-scada", persistent=True).ready()
    subscribed_at = time.time()
    health = HealthLog(plant.health_port)
    try:
        service, engine = plant.service, plant.service.engine
        assert set(service.collector.kinds) == {"opcua", "mqtt"}
        healthy_from = await health.until(200, 0, 60)
        air = plant.line.signal("air_compressor.header_pressure").source.mqtt.topic
        windows: list[tuple[str, float, float]] = []  # (what, killed at, back at)

        async def garbage() -> None:
            gateway = await asyncio.to_thread(Gateway, broker)
            for payload in (b'{"value": ' + b"9" * 5000 + b"}", b"[" * 60_000, b"\xff\xfe", json.dumps({"value": "NaN"}),
                            json.dumps({"value": 6.5, "ts": YEAR_2100})):
                await asyncio.to_thread(gateway.send, air, payload)
            gateway.close()
            await plant.server.write([Reading(YEAR_2100, "product_pump", "flow", 60.0)])

        async def outage(what: str) -> None:
            nonlocal healthy_from
            await garbage()
            killed = time.time()
            if what == "opcua":
                await plant.kill_opcua()
            else:
                await asyncio.to_thread(broker.stop)
            await asyncio.sleep(OUTAGE_S)
            back = time.time()
            if what == "opcua":
                await plant.restart_opcua()
            else:
                await asyncio.to_thread(broker.start)
            windows.append((what, killed, back))
            healthy_from = await health.until(200, back, 60)

        for what in ("opcua", "broker", "opcua", "broker"):
            await outage(what)

        # each outage: 503 naming the lost source, from when it was noticed until it was back; 200 in between
        for what, killed, back in windows:
            during = health.between(killed + DETECT_S, back)
            assert during and all(code == 503 for _, code, _ in during), (what, during)
            source = "opcua" if what == "opcua" else "mqtt"
            assert all(any(r.startswith(f"source {source}") for r in reasons) for _, _, reasons in during), during
        for (_, _, back), (_, next_kill, _) in zip(windows, windows[1:]):
            recovered = await health.until(200, back, 0)
            calm = health.between(recovered, next_kill)
            assert all(code == 200 for _, code, _ in calm), calm
        rejects = service.stats()["collect"]["sources"]
        assert rejects["mqtt"]["rejects"]["clock_skew"] >= 2 and rejects["opcua"]["rejects"]["clock_skew"] >= 2
        assert rejects["mqtt"]["rejects"]["not_finite"] >= 2 and rejects["mqtt"]["rejects"]["too_deep"] >= 2
        lost = [a for a in engine.alarms() if a.asset == SOURCES_ASSET]
        assert {a.condition for a in lost} == {"opcua:source", "mqtt:source"}

        # the fault at the end is alarmed
        injected = time.time()
        plant.inject("pump_cavitation")
        await condition(lambda: any(a.asset == "product_pump" and a.raised_at > injected for a in engine.active()), 90)
        await service.publisher.wait_idle(60)

        # every event once, in order, for the persistent subscriber
        published = [(e.alarm_id, e.event, round(e.ts, 6)) for e in engine.audit() if e.ts >= subscribed_at]
        received: list[tuple] = []
        while len(received) < len(published):
            m = await scada.next(timeout=30)
            received.append((m.body["alarm_id"], m.body["event"], round(m.body["ts"], 6)))
        assert received == published, "every alert arrives once, in order"
        # and nothing twice (a later event of the growing fault may come: it must be new, not a repeat)
        try:
            extra = await scada.next(timeout=1.0)
        except asyncio.TimeoutError:
            extra = None
        if extra is not None:
            late = (extra.body["alarm_id"], extra.body["event"], round(extra.body["ts"], 6))
            assert late not in received, f"{late} arrived twice"
            assert late in [(e.alarm_id, e.event, round(e.ts, 6)) for e in engine.audit()]
    finally:
        health.task.cancel()
        scada.close()
        await plant.close()
