"""Service CPU benchmark: the whole service (no model) on a 300-signal line at 10 Hz, CPU time per station.

The line (30 assets x 10 signals, sampled every 100 ms: 3,000 readings/s) is served over OPC UA by a
separate process, so the source's CPU is not counted. This process runs the service as deployed -
collect, detect (a detector trained on the line's normal data), alarms, store, publish (to Mosquitto),
the copilot without a model - for ``--seconds``. Each station's CPU is measured where it is spent:
its asyncio tasks (every step timed with the thread's CPU clock, child tasks counted to the station that
started them), and its threads (paho's network threads, SQLite writes in worker threads); what is left
is the event loop itself (I/O polling, callbacks from other threads).

    .venv/bin/python bench/service_cpu.py [--signals 300] [--hz 10] [--seconds 120]

Last line: ``service cpu: <p>% of one core at <r> readings/s``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import collections.abc
import contextvars
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402

from bench.ingest import bench_line  # noqa: E402
from factory_copilot.config import LineConfig, MqttConnection  # noqa: E402
from factory_copilot.plumbing.broker import free_port  # noqa: E402
from factory_copilot.records import Reading  # noqa: E402

STATION: contextvars.ContextVar[str] = contextvars.ContextVar("station", default="other tasks")
CPU: collections.Counter = collections.Counter()


class Timed(collections.abc.Coroutine):
    """A coroutine whose every step is charged (thread CPU time) to a station.

    The station is the name of the service's task that runs it (known from its first step: a task gets its
    name after the factory made it), or the station of the task that started it (the context variable).
    """

    stations: set[str] = set()

    def __init__(self, coro):
        self.coro, self.station = coro, None

    def _who(self) -> str:
        if self.station is None:
            task = asyncio.current_task()
            name = task.get_name() if task else ""
            if name in self.stations:
                STATION.set(name)
            self.station = STATION.get()
        return self.station

    def send(self, value):
        station = self._who()
        t = time.thread_time()
        try:
            return self.coro.send(value)
        finally:
            CPU[station] += time.thread_time() - t

    def throw(self, *args):
        station = self._who()
        t = time.thread_time()
        try:
            return self.coro.throw(*args)
        finally:
            CPU[station] += time.thread_time() - t

    def close(self):
        return self.coro.close()

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)


def task_factory(stations: set[str]):
    Timed.stations = stations

    def factory(loop, coro, **kwargs):
        return asyncio.Task(Timed(coro), loop=loop, **kwargs)

    return factory


def history(line: LineConfig, rows: int, seed: int = 1) -> pd.DataFrame:
    """Normal running: every signal noise around its own level, as the source sends it."""
    rng = np.random.default_rng(seed)
    keys = line.signal_keys()
    levels = np.linspace(20, 80, len(keys))
    data = levels + rng.normal(0, 2.0, size=(rows, len(keys)))
    return pd.DataFrame(data, columns=keys)


def _source(line_json: dict, hz: float, seconds: float, ready, go, done) -> None:
    import logging

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    asyncio.run(_serve(LineConfig.model_validate(line_json), hz, seconds, ready, go, done))


async def _serve(line: LineConfig, hz: float, seconds: float, ready, go, done) -> None:
    from simulators.opcua_server import LineServer

    keys = line.signal_keys()
    levels = np.linspace(20, 80, len(keys))
    rng = np.random.default_rng(2)
    server = await LineServer(line, line.opcua.endpoint).start()
    ready.set()
    await asyncio.to_thread(go.wait)
    t0 = next_due = time.monotonic()
    while time.monotonic() - t0 < seconds:
        ts = time.time()
        values = levels + rng.normal(0, 2.0, len(keys))
        await server.write([Reading(ts, k.split(".")[0], k.split(".")[1], float(v)) for k, v in zip(keys, values)])
        next_due += 1.0 / hz
        await asyncio.sleep(max(0.0, next_due - time.monotonic()))
    done.set()
    await asyncio.sleep(2.0)
    await server.stop()


def thread_cpu(proc: psutil.Process) -> dict[str, float]:
    """CPU seconds per thread of this process, keyed by what the thread does."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: collections.Counter = collections.Counter()
    main = threading.main_thread().native_id
    for t in proc.threads():
        if t.id == main:
            continue
        name = names.get(t.id, "other threads")
        if "collector" in name:
            kind = "collect"
        elif "publish" in name:
            kind = "publish"
        elif name.startswith("asyncio"):
            kind = "store"  # to_thread work: the store's writes (no model here)
        else:
            kind = "other threads"
        out[kind] += t.user_time + t.system_time
    return out


async def measure(args: argparse.Namespace, broker) -> dict:
    from factory_copilot.detect.evaluate import train_models
    from factory_copilot.service import LineService, ServicePaths

    line = bench_line(args.signals, free_port(), broker.port)
    line = line.model_copy(update={"sampling_interval_s": 1.0 / args.hz,
                                   "mqtt": MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)})
    print(f"training the detector on {args.train_rows:,} rows of normal running ...", flush=True)
    models = train_models(line, history(line, args.train_rows), progress=False)
    ctx = mp.get_context("spawn")
    ready, go, done = ctx.Event(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_source, args=(line.model_dump(mode="json"), args.hz, args.seconds + 10, ready, go, done),
                       daemon=True)
    proc.start()
    if not await asyncio.to_thread(ready.wait, 60):
        raise RuntimeError("the OPC UA source did not start")
    state = Path(tempfile.mkdtemp(prefix="fc-service-cpu-"))
    service = LineService(line, models, ServicePaths(state), source="opcua")
    asyncio.get_running_loop().set_task_factory(task_factory(set(service.stations)))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop), name="service")
    await asyncio.wait_for(service.collector.connected.wait(), 30)
    go.set()
    await asyncio.sleep(5.0)  # warm up: the first rows, the first SQLite pages
    me = psutil.Process(os.getpid())
    CPU.clear()
    threads0, cpu0, wall0 = thread_cpu(me), me.cpu_times(), time.monotonic()
    readings0 = service.collector.stats()["readings_in"]
    rows0 = service.detect.stats()["rows"]
    await asyncio.sleep(args.seconds)
    threads1, cpu1, wall1 = thread_cpu(me), me.cpu_times(), time.monotonic()
    readings = service.collector.stats()["readings_in"] - readings0
    rows = service.detect.stats()["rows"] - rows0
    tasks = dict(CPU)
    alarms = len(service.engine.active())
    stop.set()
    await task
    proc.join(15)
    wall = wall1 - wall0
    total = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    per: collections.Counter = collections.Counter()
    for name, s in tasks.items():
        per[name] += s
    for name in set(threads0) | set(threads1):
        per[f"{name} (threads)" if name in ("collect", "publish", "store") else name] += threads1.get(name, 0.0) - threads0.get(name, 0.0)
    per["event loop (I/O, callbacks)"] = max(0.0, total - sum(per.values()))
    return {"wall": wall, "total": total, "per": per, "readings": readings, "rows": rows, "alarms": alarms}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signals", type=int, default=300)
    ap.add_argument("--hz", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--train-rows", type=int, default=6000)
    args = ap.parse_args()
    from bench import start_broker

    broker = start_broker()
    try:
        r = asyncio.run(measure(args, broker))
    finally:
        broker.stop()
    wall, total = r["wall"], r["total"]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work on the machine skews these figures)")
    print(f"{args.signals} signals at {args.hz:g} Hz for {wall:.0f} s: {r['readings'] / wall:,.0f} readings/s in, "
          f"{r['rows'] / wall:.1f} detector rows/s, {r['alarms']} alarms active at the end")
    print("CPU by station (% of one core):")
    for name, s in sorted(r["per"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<30} {100 * s / wall:6.1f} %")
    print(f"service cpu: {100 * total / wall:.1f}% of one core at {r['readings'] / wall:.0f} readings/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
