"""Ingest benchmark: readings per second through each collector into the stream, and the collector's CPU share.

A generated line of 300 signals (30 assets x 10) updates at 10 Hz (3,000 readings/s
offered). The OPC UA server / MQTT publisher / Sparkplug B edge node (one edge node, a
device per asset, one DDATA per device and step) runs in a separate process so its CPU is
not counted; this process runs only the collector and a consumer draining its Buffer.
CPU share = this process's CPU time / wall time over the measured window (100% = one
core). Mosquitto is the broker when installed.

    .venv/bin/python bench/ingest.py [--source opcua,mqtt,sparkplug] [--signals 300] [--hz 10] [--seconds 15]

Last line: ``ingest: <N> readings/s opcua, <M> readings/s mqtt, <K> readings/s sparkplug`` (the sources measured).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: bench

from factory_copilot.plumbing.broker import free_port  # noqa: E402
from factory_copilot.plumbing.buffer import Buffer  # noqa: E402
from factory_copilot.config import LineConfig, parse_line  # noqa: E402
from factory_copilot.records import Reading  # noqa: E402


def bench_line(n_signals: int, opcua_port: int, mqtt_port: int) -> LineConfig:
    per_asset = 10
    assets = []
    for a in range(max(1, n_signals // per_asset)):
        aid = f"asset{a:02d}"
        signals = [
            {
                "name": f"s{s:02d}",
                "unit": "bar",
                "normal": [0, 100],
                "source": {"opcua": f"ns=2;s={aid}.s{s:02d}", "mqtt": {"topic": f"bench/line/{aid}/s{s:02d}"},
                           "sparkplug": {"group": "bench", "edge_node": "line", "device": aid, "metric": f"s{s:02d}"}},
            }
            for s in range(per_asset)
        ]
        assets.append({"id": aid, "name": aid, "signals": signals})
    return parse_line(
        {
            "site": "bench",
            "line": "line",
            "mode_signal": None,
            "opcua": {"endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/bench/", "publishing_interval_ms": 100, "queue_size": 20},
            "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "protocol": "5"},
            "assets": assets,
        },
        "bench-line",
    )


# -- the source side, in its own process ---------------------------------------------------


def _source(kind: str, line_json: dict, hz: float, seconds: float, ready, go, result, part: tuple[int, int] = (0, 1), qos: int = 1) -> None:
    import logging

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    asyncio.run(_source_main(kind, LineConfig.model_validate(line_json), hz, seconds, ready, go, result, part, qos))


async def _source_main(kind: str, line: LineConfig, hz: float, seconds: float, ready, go, result, part, qos: int) -> None:
    from simulators.mqtt_publisher import ReadingPublisher
    from simulators.opcua_server import LineServer

    index, parts = part
    keys = line.signal_keys(include_mode=True)[index::parts]
    if kind == "opcua":
        sink = await LineServer(line, line.opcua.endpoint).start()
        send = sink.write
    elif kind == "sparkplug":
        from simulators.sparkplug_node import SparkplugPublisher

        sink = await SparkplugPublisher(line, line.mqtt).start(wait_s=10)

        async def send(readings):
            sink.publish(readings)
    else:
        sink = await ReadingPublisher(line, line.mqtt, qos=qos).start(wait_s=10)

        async def send(readings):
            sink.publish(readings)

    ready.set()
    await asyncio.to_thread(go.wait)
    sent, t0 = 0, time.monotonic()
    next_due = t0
    i = 0
    while time.monotonic() - t0 < seconds:
        ts = time.time()
        await send([Reading(ts, k.split(".")[0], k.split(".")[1], float(i % 100)) for k in keys])
        sent += len(keys)
        i += 1
        next_due += 1.0 / hz
        await asyncio.sleep(max(0.0, next_due - time.monotonic()))
    feed_s = time.monotonic() - t0
    if kind != "opcua":
        # paho queues what it cannot send yet: let it flush before disconnecting, or the queue is lost
        clients = [n.session.client for n in sink.nodes] if kind == "sparkplug" else [sink.client]
        while any(c is not None and c._out_messages for c in clients) and time.monotonic() - t0 < seconds + 60:
            await asyncio.sleep(0.05)
    result.put((sent, feed_s, time.monotonic() - t0))
    await asyncio.sleep(1.0)
    await sink.stop()


# -- the collector side, measured ---------------------------------------------------------


async def measure(kind: str, line: LineConfig, hz: float, seconds: float, parts: int = 1, qos: int = 1) -> dict:
    from factory_copilot.collect.mqtt import MqttCollector
    from factory_copilot.collect.opcua import OpcuaCollector
    from factory_copilot.collect.sparkplug import SparkplugCollector

    ctx = mp.get_context("spawn")
    go, result = ctx.Event(), ctx.Queue()
    procs, readies = [], []
    for i in range(parts):
        ready = ctx.Event()
        proc = ctx.Process(
            target=_source,
            args=(kind, line.model_dump(mode="json"), hz, seconds, ready, go, result, (i, parts), qos),
            daemon=True,
        )
        proc.start()
        procs.append(proc)
        readies.append(ready)
    for ready in readies:
        if not await asyncio.to_thread(ready.wait, 60):
            raise RuntimeError(f"{kind} source did not start")
    buffer: Buffer[Reading] = Buffer(100_000, name=f"bench-{kind}")
    if kind == "opcua":
        collector = OpcuaCollector(line, buffer)
    elif kind == "sparkplug":
        collector = SparkplugCollector(line, buffer, line.mqtt)
    else:
        collector = MqttCollector(line, buffer, line.mqtt, qos=qos)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    await asyncio.wait_for(collector.connected.wait(), 30)
    await asyncio.sleep(1.0)
    while buffer.qsize():  # initial values (and Sparkplug births) are not part of the measurement
        buffer.get_nowait()
    received = 0
    baseline_in = collector.readings_in
    cpu0, wall0 = os.times(), time.monotonic()
    go.set()
    reported: list[tuple[int, float, float]] = []
    sent, feed_s = None, 0.0
    last_rx = wall0
    while True:
        try:
            item = await asyncio.wait_for(buffer.get(), 0.5)
            received += isinstance(item, Reading)  # source states are not readings
            last_rx = time.monotonic()
            while buffer.qsize():
                received += isinstance(buffer.get_nowait(), Reading)
        except asyncio.TimeoutError:
            pass
        while not result.empty():
            reported.append(result.get())
        if sent is None and len(reported) == parts:
            sent, feed_s = sum(r[0] for r in reported), max(r[1] for r in reported)
            flushed_s = max(r[2] for r in reported)
        if sent is not None and (received >= sent or time.monotonic() - last_rx > 5.0):
            break
    cpu1, wall1 = os.times(), time.monotonic()
    stop.set()
    await task
    for proc in procs:
        proc.join(10)
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    wall = wall1 - wall0
    return {
        "source": kind,
        "sent": sent,
        "received": received,
        "lost": sent - received,
        "offered_per_s": sent / feed_s,
        "source_done_s": flushed_s,
        "last_received_s": last_rx - wall0,
        "readings_per_s": received / (last_rx - wall0),
        "collector_cpu_share": cpu / wall,
        "cpu_us_per_reading": 1e6 * cpu / max(received, 1),
        "collector_in": collector.readings_in - baseline_in,
        "buffer_dropped": buffer.dropped,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="opcua,mqtt,sparkplug", help="comma-separated: opcua, mqtt, sparkplug")
    ap.add_argument("--signals", type=int, default=300)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--mqtt-qos", type=int, choices=[0, 1], default=1, help="publish and subscribe QoS (default 1, as deployed)")
    ap.add_argument("--mqtt-publishers", type=int, default=2, help="publisher processes (one paho client tops out below 3,000 msg/s)")
    args = ap.parse_args()

    from bench import start_broker

    broker = start_broker()
    try:
        line = bench_line(args.signals, free_port(), broker.port)
        if broker.protocol != "5":
            line = line.model_copy(update={"mqtt": line.mqtt.model_copy(update={"protocol": broker.protocol})})
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work on the machine skews these figures)")
        print(f"{len(line.signal_keys())} signals at {args.hz:g} Hz = {len(line.signal_keys()) * args.hz:,.0f} readings/s offered, {args.seconds:g} s per source; broker {broker.kind}")
        results = {}
        kinds = [k.strip() for k in args.source.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in ("opcua", "mqtt", "sparkplug")]
        if unknown:
            raise SystemExit(f"--source: unknown {', '.join(unknown)}; use opcua, mqtt, sparkplug")
        for kind in kinds:
            # one Sparkplug edge node is one MQTT client (its births and seq are per node)
            r = await measure(kind, line, args.hz, args.seconds, args.mqtt_publishers if kind == "mqtt" else 1,
                              args.mqtt_qos)
            results[kind] = r
            print(
                f"{kind:6s} sent {r['sent']:>7,} ({r['offered_per_s']:,.0f}/s, source done at {r['source_done_s']:.1f} s, "
                f"last received at {r['last_received_s']:.1f} s) received {r['received']:>7,} lost {r['lost']:>5,}  "
                f"{r['readings_per_s']:>7,.0f} readings/s  collector CPU {r['collector_cpu_share']:.1%} of one core ({r['cpu_us_per_reading']:.0f} us/reading)"
            )
    finally:
        broker.stop()
    print("ingest: " + ", ".join(f"{r['readings_per_s']:.0f} readings/s {k}" for k, r in results.items()))


if __name__ == "__main__":
    asyncio.run(main())
