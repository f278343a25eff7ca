"""MCP tool call latency against the store of a month of a 300-signal line, with the `mcp` SDK's own client.

The store and the alarm journal are built synthetically, the way the service writes them: 30 days of trend
buckets for 300 signals, the last 15 minutes of raw samples, a month of alarms run through the real alarm
engine on a data clock (raised, acknowledged, returned, chattering ones, shelved and out-of-service ones),
a runbook diagnosis per alarm, operators' verdicts, and a handover per shift. Then every read tool is called
``--calls`` times, in memory and over streamable HTTP with a bearer token, side by side; p50 and p99 per tool.

    .venv/bin/python bench/mcp.py [--days 30 --signals 300 --bucket-s 60 --calls 40 --dir DIR]

Trends are kept at ``--bucket-s`` (60 s by default: 13 M rows for a month of 300 signals; the service's 5 s
buckets for its 14-day trend retention would be 73 M rows, and one trend request reads at most 7 days of one
signal either way: 10 k rows at 60 s, 121 k at 5 s; ``--bucket-s 5 --days 7`` measures that).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

# run as a script, bench/ leads sys.path and this file would stand in for the `mcp` SDK it measures
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import httpx2  # noqa: E402
import yaml  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from factory_copilot.agents import server  # noqa: E402
from factory_copilot.agents.access import TokenFile  # noqa: E402
from factory_copilot.agents.tools import LineRecords  # noqa: E402
from factory_copilot.alarms.engine import AlarmEngine, AlarmSettings  # noqa: E402
from factory_copilot.alarms.evaluate import DataClock  # noqa: E402
from factory_copilot.alarms.journal import Journal  # noqa: E402
from factory_copilot.config import SEEDS_DIR, ServicePaths, load_line  # noqa: E402
from factory_copilot.names import UNKNOWN  # noqa: E402
from factory_copilot.plumbing.sqlite import transaction  # noqa: E402
from factory_copilot.records import Anomaly, Cause, Diagnosis, Evidence, Feedback, OperatorCommand, Step  # noqa: E402
from factory_copilot.shift.calendar import last_completed, previous  # noqa: E402
from factory_copilot.shift.handover import write_handover  # noqa: E402
from factory_copilot.store import Store  # noqa: E402

DAY = 86_400.0


def line_file(folder: Path, signals: int) -> Path:
    """A 300-signal line: 30 assets of 10 signals, in a row, with shifts, roles and the demo's runbooks."""
    per = 10
    assets = []
    for a in range(signals // per):
        assets.append({"id": f"unit{a:02d}", "name": f"Unit {a:02d}", "criticality": ["low", "medium", "high"][a % 3],
                       "feeds": [f"unit{a + 1:02d}"] if a + 1 < signals // per else [],
                       "signals": [{"name": f"s{s}", "unit": "bar", "normal": [40, 60], "limits": [20, 80],
                                    "source": {"mqtt": {"topic": f"plant/unit{a:02d}", "field": f"s{s}"}}}
                                   for s in range(per)]})
    data = {"site": "bench-plant", "line": "line-300", "sampling_interval_s": 1.0, "timezone": "Europe/Berlin",
            "shifts": [{"name": "early", "start": "06:00"}, {"name": "late", "start": "14:00"},
                       {"name": "night", "start": "22:00"}],
            "mcp": {"write_tools": False}, "knowledge": {"runbooks": str(SEEDS_DIR / "runbooks")},
            "service": {"state_dir": "state", "health_port": None}, "assets": assets}
    path = folder / "line.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def build(folder: Path, days: float, signals: int, bucket_s: float, seed: int = 7) -> tuple[Path, float]:
    """The month's store and journal; returns the line file and the month's end."""
    rng = random.Random(seed)
    path = line_file(folder, signals)
    line = load_line(path)
    paths = ServicePaths.of_line(line, path)
    end = time.time()
    start = end - days * DAY
    keys = [(a.id, s.name) for a in line.assets for s in a.signals]
    store = Store(paths.store, bucket_s=bucket_s)
    t0 = time.perf_counter()
    rows, first = [], start - start % bucket_s
    n_buckets = int((end - first) // bucket_s)
    written = 0
    with store._db as conn:  # the bench's own bulk load of what the store station would have written
        for b in range(n_buckets):
            bucket = first + b * bucket_s
            for i, (asset, name) in enumerate(keys):
                mean = 50 + 8 * ((b // 600 + i) % 5 - 2) / 2 + rng.random()
                rows.append((asset, name, bucket, 5, 5 * mean, mean - 1, mean + 1, 0))
            if len(rows) >= 300_000:
                with transaction(conn):
                    conn.executemany("INSERT INTO trend VALUES(?,?,?,?,?,?,?,?)", rows)
                written += len(rows)
                rows = []
        with transaction(conn):
            conn.executemany("INSERT INTO trend VALUES(?,?,?,?,?,?,?,?)", rows)
            written += len(rows)
            raw = [(end - 900 + k, asset, name, 50.0, "good") for k in range(0, 900, 10) for asset, name in keys]
            conn.executemany("INSERT INTO readings_raw(ts, asset, signal, value, quality) VALUES(?,?,?,?,?)", raw)
    print(f"trend: {written:,} buckets of {bucket_s:g} s, raw: {len(raw):,} samples "
          f"({time.perf_counter() - t0:.0f} s to build)", flush=True)

    t0 = time.perf_counter()
    clock = DataClock(start)
    engine = AlarmEngine(line, paths.alarms, AlarmSettings(on_delay_s=2.0, off_delay_s=5.0), clock=clock)
    events = []
    raised = []
    chatter = f"{keys[7][0]}.{keys[7][1]}"
    t = start + 600
    while t < end - 600:
        asset, name = keys[rng.randrange(len(keys))] if rng.random() > 0.15 else keys[7]  # one bad actor
        length = rng.uniform(20, 300)
        before = len(events)
        for k in range(int(length)):
            clock.t = t + k
            events += engine.ingest(Anomaly(ts=clock.t, asset=asset, kind="limit", signal=name, value=85.0,
                                            score=1.5, threshold=1.0))
            if k % 5 == 0:
                events += engine.tick()
        for k in range(30):
            clock.t = t + length + k
            events += engine.tick()
        new = [e for e in events[before:] if e.event == "raised"]
        raised += new
        for e in new:
            if rng.random() < 0.9 and not engine.get(e.alarm_id).state.acknowledged:
                clock.t += 60
                events += engine.command(OperatorCommand("acknowledge", e.alarm_id, rng.choice(["ann", "bob"]),
                                                         ts=clock.t))[1]
        t += rng.expovariate(1 / 1800)  # about two alarms an hour
    for alarm in engine.active()[:3]:
        events += engine.command(OperatorCommand("shelve", alarm.alarm_id, "sam", "bench", shelve_s=4 * 3600))[1]
    for alarm in engine.alarms()[:2]:
        events += engine.command(OperatorCommand("out_of_service", alarm.alarm_id, "sam", "bench"))[1]
    engine.close()
    store.add_alarm_events(events)
    store.add_diagnoses([Diagnosis(e.alarm_id, f"{e.alarm.message}: check the unit", [
        Cause(UNKNOWN, "No known fault matches", 0.5, [Evidence("signal", f"{e.alarm.asset}.{e.alarm.condition}")])],
        [Step("Check the transmitter", "check")], ["Lock out before opening"], [], "runbook", created_at=e.ts)
        for e in raised])
    for e in raised:
        if rng.random() < 0.3:
            store.add_feedback(Feedback(e.alarm_id, rng.choice(["confirmed", "false_alarm"]), actor="ann",
                                        ts=e.ts + 600))
    print(f"alarms: {len(raised):,} raised ({len({e.alarm_id for e in raised})} alarms, the most on {chatter}), "
          f"{len(events):,} events ({time.perf_counter() - t0:.0f} s to build)", flush=True)

    t0 = time.perf_counter()
    journal = Journal(paths.alarms, read_only=True)
    window, n = last_completed(line, end), 0
    while window.start > start:
        store.add_handover(write_handover(line, window, store, journal, now=window.end + 60))
        window = previous(line, window)
        n += 1
    journal.close()
    store.close()
    print(f"handovers: {n} shifts ({time.perf_counter() - t0:.0f} s to build)", flush=True)
    return path, end


def calls(records: LineRecords, chatty: str) -> list[tuple[str, str, dict]]:
    line = records.line
    shift = last_completed(line, time.time())
    return [
        ("alarms active", "list_alarms", {}),
        ("alarms recent 24 h", "list_alarms", {"which": "recent", "hours": 24}),
        ("alarms recent 30 d", "list_alarms", {"which": "recent", "hours": 720, "limit": 200}),
        ("alarm (chattering, full)", "get_alarm", {"alarm_id": chatty}),
        ("trend 1 h", "signal_trend", {"signal": "unit05.s3", "hours": 1}),
        ("trend 7 d, 500 points", "signal_trend", {"signal": "unit05.s3", "hours": 168, "points": 500}),
        ("trend 1 year (cut)", "signal_trend", {"signal": "unit05.s3", "hours": 8760, "points": 500}),
        ("runbooks", "search_runbooks", {"query": "pump cavitation suction pressure low"}),
        ("similar incidents", "similar_incidents", {"alarm_id": chatty}),
        ("health 24 h", "line_health", {"hours": 24}),
        ("health 30 d", "line_health", {"hours": 720}),
        ("shift report (stored)", "shift_report", {"shift": shift.name, "date": shift.date}),
        ("shift report (so far)", "shift_report", {}),
    ]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def measure(client: Client, plan, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {label: [] for label, _, _ in plan}
    for _ in range(n):
        for label, tool, args in plan:
            t0 = time.perf_counter()
            result = await client.call_tool(tool, args)
            out[label].append((time.perf_counter() - t0) * 1000)
            if result.is_error:
                raise RuntimeError(f"{tool}({args}): {result.content[0].text}")
    return out


async def run(path: Path, n: int, bucket_s: float, days: float) -> None:
    line = load_line(path)
    paths = ServicePaths.of_line(line, path)
    records = LineRecords(line, paths)
    records._store = Store.reader(paths.store, bucket_s=bucket_s)
    journal = Journal(paths.alarms, read_only=True)
    counts = {}
    for _, e in journal.entries():
        counts[e.alarm_id] = counts.get(e.alarm_id, 0) + 1
    journal.close()
    chatty = max(counts, key=counts.get)
    plan = calls(records, chatty)
    tokens = TokenFile(path.parent / "tokens.yaml")
    token = tokens.add("bench")
    sock = server.bind("127.0.0.1", 0)
    url = server.url_of(sock)
    mcp_mem = server.build_server(records)
    mcp_http = server.build_server(records, tokens=server.LineTokens(tokens), url=url)
    stop = asyncio.Event()
    task = asyncio.create_task(server.serve_http(mcp_http, sock, stop))
    try:
        async with Client(mcp_mem) as c:
            await measure(c, plan, 2)  # warm: first imports, SQLite's page cache
            mem = await measure(c, plan, n)
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            async with Client(streamable_http_client(url, http_client=http)) as c:
                await measure(c, plan, 2)
                over_http = await measure(c, plan, n)
    finally:
        stop.set()
        await task
        records.close()
    print(f"\n{'tool call (' + str(n) + ' each)':32s} {'memory p50':>10s} {'p99':>8s} {'HTTP p50':>10s} {'p99':>8s}  (ms)")
    worst = ("", 0.0)
    for label, _, _ in plan:
        row = [pct(mem[label], 0.5), pct(mem[label], 0.99), pct(over_http[label], 0.5), pct(over_http[label], 0.99)]
        print(f"{label:32s} {row[0]:10.1f} {row[1]:8.1f} {row[2]:10.1f} {row[3]:8.1f}")
        if row[3] > worst[1]:
            worst = (label, row[3])
    every = [v for d in (mem, over_http) for vs in d.values() for v in vs]
    print(f"all calls: p50 {statistics.median(every):.1f} ms, p99 {pct(every, 0.99):.1f} ms")
    print(f"mcp tools on {days:g} days of a {sum(len(a.signals) for a in line.assets)}-signal line "
          f"({bucket_s:g} s trend buckets): {len(every)} calls, "
          f"p50 {statistics.median(every):.1f} ms, worst p99 {worst[1]:.1f} ms ({worst[0]}, HTTP); "
          f"all under 200 ms: {'yes' if worst[1] < 200 else 'NO'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=float, default=30)
    p.add_argument("--signals", type=int, default=300)
    p.add_argument("--bucket-s", type=float, default=60.0)
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--dir", type=Path, help="build the store here and keep it (reused when it is there)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "line.yaml"
        if not (folder / "state" / "store.db").exists():
            path, _ = build(folder, a.days, a.signals, a.bucket_s)
        asyncio.run(run(path, a.calls, a.bucket_s, a.days))


if __name__ == "__main__":
    main()
