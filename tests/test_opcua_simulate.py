"""The simulator served over OPC UA and MQTT at once; both collectors see the same readings."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

from factory_copilot.plumbing.broker import free_port
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.collect.mqtt import MqttCollector
from factory_copilot.collect.opcua import OpcuaCollector
from factory_copilot.config import MqttConnection
from factory_copilot.records import Reading
from simulators.line import SimulatedLine
from simulators.mqtt_publisher import ReadingPublisher
from simulators.runner import run_simulation
from simulators.scenarios import FaultScenario, ModeSchedule, read_ground_truth
from tests.support.opcua import drain, line_with_opcua, start_server


async def test_one_simulated_stream_reaches_both_collectors(broker, tmp_path):
    server = await start_server()
    line = line_with_opcua(endpoint=server.endpoint, publishing_interval_ms=50, queue_size=50)
    mqtt_conn = MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)
    from_opcua: Buffer[Reading] = Buffer(10_000)
    from_mqtt: Buffer[Reading] = Buffer(10_000)
    opcua = OpcuaCollector(line, from_opcua)
    mqtt = MqttCollector(line, from_mqtt, mqtt_conn)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(opcua.run(stop)), asyncio.create_task(mqtt.run(stop))]
    publisher = await ReadingPublisher(line, mqtt_conn).start(wait_s=10)
    try:
        await asyncio.wait_for(opcua.connected.wait(), 10)
        await asyncio.wait_for(mqtt.connected.wait(), 10)
        # the simulation runs 40x faster than the clock: stamped in the past, as the server never serves a
        # reading stamped ahead of its own clock; earlier than any initial value the server hands out
        start_ts = time.time() - 60
        sim = SimulatedLine(
            line, seed=3, dt_s=1.0, schedule=ModeSchedule.running(), scenarios=[FaultScenario("bearing_wear", 4)], start_ts=start_ts
        )
        steps = 8
        stats = await run_simulation(
            sim, speed=40, duration_s=steps, server=server, publisher=publisher, ground_truth=tmp_path / "gt.jsonl"
        )
        n_signals = len(line.signal_keys(include_mode=True))
        assert stats.steps == steps and stats.readings == steps * n_signals
        # half a step of slack: a timestamp comes back through OPC UA's DateTime rounded to the microsecond
        fresh = lambda rs: [r for r in rs if start_ts + 0.5 < r.ts < start_ts + steps + 0.5]  # noqa: E731
        via_opcua = fresh(await drain(from_opcua, lambda rs: len(fresh(rs)) >= steps * n_signals))
        via_mqtt = fresh(await drain(from_mqtt, lambda rs: len(fresh(rs)) >= steps * n_signals))
        as_set = lambda rs: {(r.key, round(r.ts, 3), r.value, r.quality, r.unit) for r in rs}  # noqa: E731
        assert len(as_set(via_opcua)) == steps * n_signals
        assert as_set(via_opcua) == as_set(via_mqtt)
        assert {r.source for r in via_opcua} == {"opcua"} and {r.source for r in via_mqtt} == {"mqtt"}
        truth = read_ground_truth(tmp_path / "gt.jsonl")
        assert [(t["fault_type"], t["start_ts"]) for t in truth] == [("bearing_wear", start_ts + 4)]
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await publisher.stop()
        await server.stop()


def test_the_simulate_command_serves_opcua_and_writes_ground_truth(tmp_path, broker):
    port = free_port()
    gt = tmp_path / "gt.jsonl"
    cmd = [
        sys.executable, "-m", "factory_copilot.cli", "simulate",
        "--seed", "1", "--speed", "20", "--duration", "40", "--dt", "1",
        "--fault", "bearing_wear", "--fault-at", "30", "--ground-truth", str(gt),
        "--opcua-endpoint", f"opc.tcp://127.0.0.1:{port}/factory-copilot/",
        "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--no-embedded-broker",
    ]  # fmt: skip
    collect = [
        sys.executable, "-m", "factory_copilot.cli", "collect", "--config", "src/factory_copilot/seeds/lines/packaging_line.yaml",
        "--source", "mqtt", "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--count", "40", "--duration", "30",
    ]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    collector = subprocess.Popen(collect, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sim = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=60)
    out, err = collector.communicate(timeout=40)
    assert sim.returncode == 0, sim.stderr
    assert "simulation ended" in sim.stderr and "'steps': 40" in sim.stderr
    readings = [json.loads(line) for line in out.splitlines()]
    assert len(readings) == 40, err
    assert all(r["source"] == "mqtt" and r["unit"] for r in readings)
    truth = read_ground_truth(gt)
    assert truth[0]["fault_type"] == "bearing_wear" and truth[0]["start_s"] == 30
