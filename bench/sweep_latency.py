"""Alarm latency while the store runs retention sweeps and the copilot looks up similar incidents, beside the same
service without them, in one run (issue 21).

``bench/latency.py``'s path (a value pushed past its limit on the simulated line's OPC UA server, timed to the
alarm's arrival on MQTT) on one service whose store is filled first: slices of old raw readings, each as many rows
as a steady-state sweep removes at 3,000 readings/s (one minute's), and ``--incidents`` operator verdicts per asset
for ``similar()`` to read (the most it reads). The two arms alternate, ``--alarms`` alarms at a time, for
``--rounds`` rounds, the order swapped every round (the machine is shared and noisy):

* with: every ``--sweep-every`` s a retention sweep removes the next slice (the store station's ``sweep``:
  ``enforce_retention`` on the store's writer connection, in the station's low-priority worker thread), and every
  ``--lookup-every`` s the copilot gathers the evidence of an alarm on the next asset (``Copilot.gather``, in a
  worker thread: the signals' trends, the runbook search, ``similar()`` on the store's read connection);
* without: neither (the service's own retention is held off for the whole run: it would sweep every slice at once).

Earlier (issue 21) one such sweep held the store's only connection ~0.5 s and ``similar()`` waited for it on the
event loop, so the collectors, alarms and publisher stood still; later each look-up made 2,000 candidates and drove
the process into full garbage collections of 0.5-2.5 s (``similar()`` now ranks in SQL, and the service freezes its
start-up heap as it starts). Target: p99 with them within 20 % of p99 without.

    .venv/bin/python bench/sweep_latency.py [--rounds 5] [--alarms 20] [--sweep-every 2] [--lookup-every 0.3] [--gc-freeze]

Last line: ``latency with store sweeps: p99 X ms vs Y ms without (+Z %), target <= +20 %``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import start_broker  # noqa: E402
from bench.latency import LatencyRig, p99, pct, trained  # noqa: E402
from factory_copilot.catalogue import faults_of  # noqa: E402
from factory_copilot.config import ServicePaths  # noqa: E402
from factory_copilot.plumbing.sqlite import transaction  # noqa: E402
from factory_copilot.records import Alarm, AlarmState, Anomaly, Priority  # noqa: E402
from factory_copilot.store import Store  # noqa: E402

RATE = 3000  # readings/s of the line whose steady-state sweep is measured (issue 21: 300 signals at 10 Hz)
WITH, WITHOUT = "with sweeps and look-ups", "without"


def fill_store(path: Path, line, slices: int, slice_rows: int, incidents: int) -> float:
    """Old raw readings in ``slices`` slices of ``slice_rows`` (data time from 30 days ago at ``RATE``/s), and
    ``incidents`` operator verdicts per asset; returns the start of the old readings (data time)."""
    t0 = time.time() - 30 * 86_400
    keys = [k.split(".", 1) for k in line.signal_keys()]
    faults = list(faults_of(line).values())
    store = Store(path)
    start = time.perf_counter()
    with store._db as conn, transaction(conn):
        conn.execute("CREATE TEMP TABLE bench_keys(k INTEGER PRIMARY KEY, asset TEXT, signal TEXT)")
        conn.executemany("INSERT INTO bench_keys VALUES(?,?,?)", [(i, a, s) for i, (a, s) in enumerate(keys)])
        # written by SQLite itself (a recursive count): millions of rows in seconds, where Python would take a minute
        conn.execute(
            "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
            "INSERT INTO readings_raw(ts, asset, signal, value, quality) "
            "SELECT ? + i * (1.0 / ?), asset, signal, (i % 89) * 0.5, 'good' FROM c JOIN bench_keys ON k = i % ?",
            (slices * slice_rows - 1, t0, RATE, len(keys)))
        rows = []
        for asset in line.assets:
            own = [f for f in faults if f.asset == asset.id] or [None]
            signals = [f"{asset.id}.{s.name}" for s in asset.signals]
            for i in range(incidents):
                f = own[i % len(own)]
                ts = t0 + i * 600.0
                rows.append((f"past-{asset.id}-{i}", ts, "confirmed" if i % 3 else "false_alarm",
                             f.id if f else None, "regreased, re-tensioned and checked", "sam", asset.id,
                             "fault", f.id if f else None, json.dumps(list(f.signals) if f else signals[:3]),
                             ts - 900, ts - 60))
        conn.executemany("INSERT INTO feedback(alarm_id, ts, verdict, actual_cause, fix, actor, asset, condition, "
                         "fault_type, signals, raised_at, cleared_at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    counts = store.counts()
    store.close()
    print(f"store filled in {time.perf_counter() - start:.1f} s: {counts['readings_raw']:,} old raw readings "
          f"({slices} slices of {slice_rows:,}), {counts['feedback']:,} operator verdicts "
          f"({incidents:,} per asset), {path.stat().st_size / 2**20:,.0f} MiB", flush=True)
    return t0


def lookup_alarms(line) -> list[Alarm]:
    """One alarm per asset that has faults in the catalogue, as the classifier names it, for ``gather``."""
    now = time.time()
    out = []
    for f in faults_of(line).values():
        if any(a.asset == f.asset for a in out):
            continue
        an = Anomaly(now, f.asset, "multivariate", 12.0, 5.0, contributions={s: 1 / len(f.signals) for s in f.signals},
                     fault_type=f.id, fault_probability=0.8)
        out.append(Alarm(f"bench-lookup-{f.asset}", f.asset, an.condition, AlarmState.ACTIVE_UNACK, Priority.HIGH,
                         f"{f.asset} anomaly", now, now, an))
    return out


class Load:
    """Retention sweeps and incident look-ups on the service's store while ``running``; their durations (ms)."""

    def __init__(self, service, t0: float, slice_rows: int, slices: int, sweep_every: float, lookup_every: float):
        self.service, self.t0, self.slice_rows, self.slices = service, t0, slice_rows, slices
        self.sweep_every, self.lookup_every = sweep_every, lookup_every
        self.alarms = lookup_alarms(service.line)
        self.swept = 0
        self.sweeps: list[tuple[float, int]] = []  # (ms, raw rows removed)
        self.lookups: list[float] = []
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.running = asyncio.Event()
        self.running.set()
        self.tasks = ([asyncio.create_task(self._sweep())] if self.sweep_every > 0 else []) + \
                     ([asyncio.create_task(self._look_up())] if self.lookup_every > 0 else [])

    async def stop(self) -> None:
        """Let the sweep and the look-up under way finish: none runs on into the other arm."""
        self.running.clear()
        await asyncio.gather(*self.tasks)

    async def _sweep(self) -> None:
        store = self.service.store
        while self.running.is_set():
            if self.swept >= self.slices:
                print("the store's old readings are all swept: raise the slices (--slices)", flush=True)
                return
            self.swept += 1
            # the data time at which retention removes the next slice, and nothing newer
            now = self.t0 + store.retention.readings_raw + self.swept * self.slice_rows / RATE
            start = time.perf_counter()
            deleted = await self.service.store_station.sweep(now)
            took = time.perf_counter() - start
            self.sweeps.append((took * 1000, deleted["readings_raw"]))
            await self._pause(self.sweep_every - took)

    async def _look_up(self) -> None:
        i = 0
        while self.running.is_set():
            alarm = self.alarms[i % len(self.alarms)]
            i += 1
            start = time.perf_counter()
            pack = await self.service.copilot.gather(alarm)
            took = time.perf_counter() - start
            if not pack.incidents:
                raise RuntimeError(f"gather found no past incident on {alarm.asset}: the store was not filled")
            self.lookups.append(took * 1000)
            await self._pause(self.lookup_every - took)

    async def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + max(0.0, seconds)
        while self.running.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, deadline - time.monotonic()))


async def lag_probe(stop: asyncio.Event, arm: list[str], lags: dict[str, list[float]],
                    queued: dict[str, list[int]], tick_s: float = 0.01) -> None:
    """How long the event loop kept this task waiting beyond its tick, charged to the arm running then; and how many
    calls waited for a thread of the loop's default executor (where ``to_thread`` runs the store's work)."""
    loop = asyncio.get_running_loop()
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(tick_s)
        now = time.perf_counter()
        if arm[0] in lags:
            lags[arm[0]].append((now - last - tick_s) * 1000)
            pool = loop._default_executor  # asyncio's own attribute: a bench may look, the service never does
            queued[arm[0]].append(pool._work_queue.qsize() if pool is not None else 0)
        last = now


def watch_full_collections(arm: list[str], pauses: dict[str, list[float]]) -> None:
    """Every full garbage collection (generation 2) and how long it held the interpreter (every thread, the event
    loop's too), charged to the arm running then."""
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        elif arm[0] in pauses:
            pauses[arm[0]].append((time.perf_counter() - started[0]) * 1000)

    gc.callbacks.append(on_gc)


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    broker = start_broker()
    state = Path(tempfile.mkdtemp(prefix="fc-sweep-latency-"))
    try:
        line, models = trained(broker)
        t0 = fill_store(ServicePaths(state).store, line, args.slices, args.slice_rows, args.incidents)
        rig = LatencyRig(line, models, broker, state=state)
        # the bench's sweeps are the store's only ones: the station's own, a minute in, would remove every slice at once
        rig.service.store_station.retention_every_s = 10 ** 9
        load = Load(rig.service, t0, args.slice_rows, args.slices, args.sweep_every, args.lookup_every)
        latencies: dict[str, list[float]] = {WITH: [], WITHOUT: []}
        lags: dict[str, list[float]] = {WITH: [], WITHOUT: []}
        full_gc: dict[str, list[float]] = {WITH: [], WITHOUT: []}
        queued: dict[str, list[int]] = {WITH: [], WITHOUT: []}
        arm = ["warm-up"]
        watch_full_collections(arm, full_gc)
        async with rig:
            if args.gc_freeze:
                # the service froze its start-up heap as it started; this freezes what its first seconds made too
                gc.collect()
                gc.freeze()
                print(f"gc.freeze(): {gc.get_freeze_count():,} objects frozen", flush=True)
            stop = asyncio.Event()
            probe = asyncio.create_task(lag_probe(stop, arm, lags, queued))
            for _ in range(args.warmup):
                await rig.alarm()
            started = time.monotonic()
            for r in range(args.rounds):
                for name in (WITHOUT, WITH) if r % 2 == 0 else (WITH, WITHOUT):
                    arm[0] = name
                    if name == WITH:
                        load.start()
                    for _ in range(args.alarms):
                        _, ms = await rig.alarm()
                        if ms is not None:
                            latencies[name].append(ms)
                    arm[0] = "between"
                    if name == WITH:
                        await load.stop()
                print(f"round {r + 1}/{args.rounds} done, {time.monotonic() - started:.0f} s", flush=True)
                if rig.missed >= 10:
                    break
            stop.set()
            await probe
            stats = rig.service.stats()
    finally:
        broker.stop()
        shutil.rmtree(state, ignore_errors=True)  # the filled store is most of a GiB

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {rig.missed} alarms not seen within 10 s; "
          f"{len(gc.get_objects()):,} objects tracked by the garbage collector; "
          f"copilot {json.dumps({k: stats['copilot'][k] for k in ('runbook', 'incident_lookups_failed')})}")
    sweeps = sorted(ms for ms, _ in load.sweeps)
    removed = sum(n for _, n in load.sweeps)
    lookups = sorted(load.lookups)
    figures = {}
    for name in (WITHOUT, WITH):
        lat, lag = sorted(latencies[name]), sorted(lags[name])
        if not lat:
            raise SystemExit(f"no alarm arrived in the arm {name!r}; the service said: {json.dumps(stats['detect'])}")
        figures[name] = p99(lat)
        print(f"{name}: {len(lat)} alarms, latency p50 {statistics.median(lat):.0f} ms, p95 {pct(lat, 0.95):.0f} ms, "
              f"p99 {p99(lat):.0f} ms, max {lat[-1]:.0f} ms; event-loop lag p99 {pct(lag, 0.99):.1f} ms, "
              f"max {lag[-1]:.0f} ms ({len(lag):,} ticks of 10 ms); full garbage collections {len(full_gc[name])}"
              + (f", longest {max(full_gc[name]):.0f} ms" if full_gc[name] else "")
              + f"; calls waiting for a worker thread: max {max(queued[name], default=0)}, "
              f"in {sum(q > 0 for q in queued[name]):,} ticks")
        if name == WITH and sweeps:
            print(f"  sweeps: {len(sweeps)}, {removed:,} raw rows removed ({args.slice_rows:,} each), "
                  f"p50 {statistics.median(sweeps):.0f} ms, p99 {pct(sweeps, 0.99):.0f} ms, max {sweeps[-1]:.0f} ms")
        if name == WITH and lookups:
            print(f"  look-ups (gather, {args.incidents:,} past verdicts per asset): {len(lookups)}, "
                  f"p50 {statistics.median(lookups):.0f} ms, p99 {pct(lookups, 0.99):.0f} ms")
    with_p99, without_p99 = figures[WITH], figures[WITHOUT]
    print(f"latency with store sweeps: p99 {with_p99:.0f} ms vs {without_p99:.0f} ms without "
          f"({100 * (with_p99 / without_p99 - 1):+.0f} %), target <= +20 %")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of both arms, the order swapped every round")
    ap.add_argument("--alarms", type=int, default=20, help="alarms per arm and round")
    ap.add_argument("--warmup", type=int, default=5, help="alarms before the rounds, not counted")
    ap.add_argument("--sweep-every", type=float, default=2.0, help="seconds from one sweep's start to the next's (0: no sweeps)")
    ap.add_argument("--lookup-every", type=float, default=0.3, help="seconds from one incident look-up to the next (0: none)")
    ap.add_argument("--slice-rows", type=int, default=60 * RATE,
                    help="raw rows each sweep removes (default: one minute at 3,000 readings/s)")
    ap.add_argument("--slices", type=int, default=0, help="slices filled (default: enough for the sweeps of the run)")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="freeze the heap again once the service has connected (gc.freeze; the service "
                    "freezes its start-up heap itself)")
    ap.add_argument("--incidents", type=int, default=2000, help="operator verdicts per asset (similar() reads 2,000)")
    a = ap.parse_args()
    # an alarm takes ~0.5 s on this machine: 0.75 s each leaves room for a slow run
    a.slices = a.slices or (int(a.rounds * a.alarms * 0.75 / a.sweep_every) + 5 if a.sweep_every > 0 else 1)
    sys.exit(asyncio.run(main(a)))
