"""Alarm latency: from the moment the simulator changes a value on its OPC UA server to the moment a
subscriber receives the alarm on MQTT, with the collector, detector, alarm engine, store and publisher
in the path, at a 100 ms sampling interval.

The simulated line runs at dt 0.1 s; every cycle one signal is pushed past its high engineering limit
(a real limit alarm, not a test hook), the time of that OPC UA write is t0, and the time a subscriber
receives that alarm's active state is t1. The alarm's on-delay is set to 0 for this measurement (it is
configuration, not latency); everything else is the service as deployed.

With ``--model GGUF`` it measures the same three times more while the copilot's model explains every alarm:
in its worker process (``LocalModel``, what the service uses) with the service's threads (every core the rest of
the machine leaves idle, so the model's threads meet the pipeline's work) and with one thread, and with llama.cpp
in the service's own process (``LlamaCppBackend``, one thread), side by side in one run.

    .venv/bin/python bench/latency.py [--alarms 200] [--model models/shaped-qwen2.5-1.5b-q4_k_m.gguf]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from factory_copilot.alarms.engine import AlarmSettings  # noqa: E402
from factory_copilot.plumbing.broker import free_port  # noqa: E402
from factory_copilot.config import SIMULATED_LINE, MqttConnection, load_line  # noqa: E402
from factory_copilot.copilot import LlamaCppBackend, LocalModel  # noqa: E402
from factory_copilot.detect.evaluate import train_models  # noqa: E402
from factory_copilot.records import OperatorCommand  # noqa: E402
from factory_copilot.publish import Topics  # noqa: E402
from factory_copilot.service import LineService, ServicePaths  # noqa: E402
from simulators import ModeSchedule, SimulatedLine, simulate_frame  # noqa: E402
from simulators.opcua_server import LineServer  # noqa: E402
from bench import start_broker  # noqa: E402

DT = 0.1


def fast_line(broker):
    base = load_line(SIMULATED_LINE)
    return base.model_copy(update={
        "sampling_interval_s": DT,
        "opcua": base.opcua.model_copy(update={"endpoint": f"opc.tcp://127.0.0.1:{free_port()}/factory-copilot/",
                                               "publishing_interval_ms": 50, "sampling_interval_ms": 100}),
        "mqtt": MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol),
    })


def targets(line):
    """Signals with a high limit below the sensor's range: pushing them past it raises a limit alarm."""
    out = []
    for key in line.signal_keys():
        s = line.signal(key)
        if s.limits and s.physical and s.limits[1] < s.physical[1] and s.limits[1] > s.normal[1]:
            out.append((key, s.limits[1] + 0.25 * (s.physical[1] - s.limits[1])))
    return out


def trained(broker):
    """The fast simulated line on ``broker`` and its detector, trained on two hours of its normal running."""
    line = fast_line(broker)
    print(f"broker: {broker.kind}; line: {len(line.signal_keys())} signals at {DT * 1000:.0f} ms", flush=True)
    history = simulate_frame(line, seed=5, duration_s=2 * 3600, dt_s=DT, schedule=ModeSchedule.running(startup_s=300))
    return line, train_models(line, history, progress=False)


def pct(sorted_ms: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted samples (p99 of 100 is the 99th, not the largest)."""
    return sorted_ms[max(0, math.ceil(q * len(sorted_ms)) - 1)] if sorted_ms else float("nan")


def p99(sorted_ms: list[float]) -> float:
    return pct(sorted_ms, 0.99)


async def main(n_alarms: int, model: str | None) -> None:
    logging.basicConfig(level=logging.WARNING)
    broker = start_broker()
    line, models = trained(broker)
    runs = [("no model", None)]
    if model:
        # in-process last: its generation thread cannot be stopped and would run on into the next measurement
        runs += [("model in its worker process, the service's threads (the cores left idle)", LocalModel(model)),
                 ("model in its worker process, one thread", LocalModel(model, n_threads=1)),
                 ("model in the service's process", LlamaCppBackend(model, n_threads=1))]
    figures = []
    for label, backend in runs:
        lat = await measure(line, models, broker, n_alarms, backend)
        print(f"{label}: p50 {statistics.median(lat):.0f} ms, p99 {p99(lat):.0f} ms", flush=True)
        figures.append((statistics.median(lat), p99(lat)))
    broker.stop()
    p50, p_99 = figures[0]
    print(f"latency: p50 {p50:.0f} ms, p99 {p_99:.0f} ms")


class LatencyRig:
    """A fresh service on ``broker`` reading the simulated line over OPC UA, and a subscriber to its alarms:
    ``await rig.alarm()`` pushes the next signal past its high limit and times that alarm to the subscriber.

    ``state`` is the service's state folder (a new one by default: a bench may fill its store first);
    ``rig.service`` is built on construction and started by ``async with``.
    """

    def __init__(self, line, models, broker, backend=None, state: Path | None = None):
        self.state = state or Path(tempfile.mkdtemp(prefix="fc-latency-"))
        self.broker = broker
        self.sim = SimulatedLine(line, seed=9, dt_s=DT, schedule=ModeSchedule.running(startup_s=120),
                                 start_ts=time.time() - 600)
        self.line = line.model_copy(update={"opcua": line.opcua.model_copy(update={
            "endpoint": f"opc.tcp://127.0.0.1:{free_port()}/factory-copilot/"})})
        settings = AlarmSettings(on_delay_s=0.0, off_delay_s=0.3, flood_count=10_000)
        self.service = LineService(self.line, models, ServicePaths(self.state), source="opcua",
                                   alarm_settings=settings, backend=backend)
        self.candidates = targets(self.line)
        self.missed = 0
        self._next = 0
        self._arrived: dict[str, asyncio.Future] = {}
        self._override: dict[str, float] = {}
        self._written: dict[str, float] = {}

    async def __aenter__(self) -> "LatencyRig":
        sim, line, broker = self.sim, self.line, self.broker
        sim.steps(int(600 / DT))
        # the 6,000 steps above take seconds: the line's clock must not lag the wall clock by them, or its samples
        # arrive seconds old on a 100 ms line, and the collector (rightly) calls the source stale and holds every alarm
        sim.start_ts = time.time() - sim.t
        self.server = await LineServer(line, line.opcua.endpoint, pki_dir=self.state / "pki").start()
        self.stop = asyncio.Event()
        self.service_task = asyncio.create_task(self.service.run(self.stop))
        await asyncio.wait_for(self.service.collector.connected.wait(), 30)

        loop = asyncio.get_running_loop()
        topics = Topics(line.site, line.line)

        def on_message(client, userdata, msg):
            t1 = time.time()
            if not msg.payload:
                return
            body = json.loads(msg.payload)
            if body.get("state") == "active_unacknowledged":
                fut = self._arrived.get(body["alarm_id"])
                if fut is not None:
                    loop.call_soon_threadsafe(lambda f=fut: f.done() or f.set_result(t1))

        self.sub = sub = paho.Client(CallbackAPIVersion.VERSION2,
                                     protocol=paho.MQTTv5 if broker.protocol == "5" else paho.MQTTv311)
        subscribed = asyncio.Event()
        sub.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
        sub.on_connect = lambda c, *a: c.subscribe(f"{topics.base}/+/alarms/+", 1)
        sub.on_message = on_message
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        await asyncio.wait_for(subscribed.wait(), 10)
        self.line_task = asyncio.create_task(self._run_line())
        await asyncio.sleep(3.0)  # let the detector's smoothing settle on live data
        return self

    async def _run_line(self) -> None:
        sim, override, written = self.sim, self._override, self._written
        next_due = time.monotonic()
        while not self.stop.is_set():
            # each step stamped with the wall clock, as a PLC stamps its samples: when 36 OPC UA writes take longer
            # than a step on a busy machine the line samples less often, its clock does not fall behind
            sim.start_ts = time.time() - (sim.t + DT)
            readings = sim.step()
            if override:
                readings = [r if r.key not in override else type(r)(r.ts, r.asset, r.signal, override[r.key], r.quality,
                                                                       r.source, r.unit) for r in readings]
            now = time.time()
            for key in override:
                written.setdefault(key, now)
            await self.server.write(readings)
            next_due += DT
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))

    async def alarm(self) -> tuple[str, float | None]:
        """One limit alarm, acknowledged after: (signal, latency in ms, or None if it was not seen within 10 s)."""
        key, value = self.candidates[self._next % len(self.candidates)]
        self._next += 1
        alarm_id = f"{key}-limit"
        fut = asyncio.get_running_loop().create_future()
        self._arrived[alarm_id] = fut
        self._override[key] = value
        ms = None
        try:
            t1 = await asyncio.wait_for(fut, 10)
            ms = (t1 - self._written[key]) * 1000
        except asyncio.TimeoutError:
            self.missed += 1
        self._override.pop(key, None)
        self._written.pop(key, None)
        self._arrived.pop(alarm_id, None)
        await self.service.alarms.execute(OperatorCommand("acknowledge", alarm_id, "bench"))
        await asyncio.sleep(0.3)
        return key, ms

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.gather(self.line_task, self.service_task, return_exceptions=True)
        self.sub.disconnect()
        self.sub.loop_stop()
        await self.server.stop()


async def measure(line, models, broker, n_alarms: int, backend) -> list[float]:
    """Latencies (ms) of ``n_alarms`` limit alarms through a fresh service on ``broker``."""
    latencies: list[float] = []
    slowest: list[tuple[float, str]] = []
    async with LatencyRig(line, models, broker, backend) as rig:
        started = time.monotonic()
        while len(latencies) < n_alarms and rig.missed < 10:  # a broken path ends the run, not an endless loop
            key, ms = await rig.alarm()
            if ms is not None:
                latencies.append(ms)
                slowest.append((ms, key))
        wall = time.monotonic() - started
        stats = rig.service.stats()
    latencies.sort()
    print(f"alarms measured: {len(latencies)} in {wall:.0f} s ({rig.missed} not seen within 10 s)")
    if not latencies:
        raise SystemExit(f"no alarm arrived; the service said: {json.dumps(stats['detect'])}")
    print(f"latency ms: min {latencies[0]:.0f}, p50 {statistics.median(latencies):.0f}, "
          f"p90 {latencies[int(0.9 * len(latencies))]:.0f}, p99 {p99(latencies):.0f}, max {latencies[-1]:.0f}")
    print("slowest: " + ", ".join(f"{k} {ms:.0f} ms" for ms, k in sorted(slowest, reverse=True)[:5]))
    print(f"service: {json.dumps(stats['detect'])}, store written {stats['store']['written']}, copilot {stats['copilot']}")
    return latencies


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alarms", type=int, default=200)
    ap.add_argument("--model", help="a GGUF: also measure while the copilot's model explains every alarm")
    args = ap.parse_args()
    asyncio.run(main(args.alarms, args.model))
