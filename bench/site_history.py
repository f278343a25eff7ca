"""How fast a site's reads of its alarm history are when its PostgreSQL store holds a month of every line (issue 22).

A throwaway cluster (tests/support/postgres.py: initdb in a temp dir, a free 127.0.0.1 port, fsync and
full_page_writes OFF, so the fill is not a disk benchmark); the schema made by the store's own migrations; a role per
line (``store grant-line``) and a site reader (``store grant-reader``), as docs/site.md "Who reads what" says. Each
line writes its month through its own ``PostgresStore`` as its own role: ~1,000 alarms, each raised, acknowledged
and cleared (the last few left standing), a diagnosis each, feedback on some. Then each read a site makes is timed
through the project's own code (the CLI functions, the site page's ``shift_figures``), repeated, p50/p99 in ms;
the slowest read's plan is printed (EXPLAIN ANALYZE, top nodes); and one line's day is swept by retention while
the reads run.

    PYTHONPATH=src:. .venv/bin/python bench/site_history.py [--lines 200] [--alarms 1000] [--repeat 50]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from factory_copilot.alarms import cli as alarms_cli
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.plumbing import postgres
from factory_copilot.records import (Alarm, AlarmEvent, AlarmState, Anomaly, Cause, Diagnosis, Feedback, Priority,
                                     Step)
from factory_copilot.store import cli as store_cli
from factory_copilot.store.roles import grant_line, grant_reader
from factory_copilot.store.site import SiteHistory
from factory_copilot.store.store import DAY, PostgresStore, Retention

MONTH = 30 * DAY
# not a look-up but a dump (`alarms list --db --all`: every alarm of the month, normal ones too, decoded): timed,
# and kept out of the slowest read
DUMP = "alarms list --db --all: every line's every alarm, open connection as site reader (SiteHistory.alarms)"
STANDING = 5  # per line, the newest alarms are left active (what `alarms list` shows)
ASSETS = ["feed_pump", "product_pump", "reactor", "separator", "compressor", "cooler"]


def line_name(i: int) -> str:
    return f"site_a/line_{i:03d}"


def role_name(i: int) -> str:
    return f"line_{i:03d}"


def month_of(line: str, alarms: int, now: float) -> tuple[list[AlarmEvent], list[Diagnosis], list[Feedback]]:
    """A line's month: each alarm raised, acknowledged 60 s later, cleared 300 s later (the newest stay active)."""
    events, diagnoses, feedback = [], [], []
    start, step = now - MONTH, MONTH / alarms
    for n in range(alarms):
        t = start + n * step + (hash((line, n)) % 600)
        asset = ASSETS[n % len(ASSETS)]
        aid = f"{asset}:high_temperature:{n}"
        anomaly = Anomaly(t, asset, "limit", 3.2, 1.0, signal="temperature", value=91.5,
                          contributions={f"{asset}.temperature": 0.8, f"{asset}.pressure": 0.2},
                          values={f"{asset}.temperature": 91.5, f"{asset}.pressure": 4.1})
        alarm = Alarm(aid, asset, "high_temperature", AlarmState.ACTIVE_UNACK, Priority(1 + n % 4),
                      f"{asset} temperature 91.5 °C above 85 °C", t, t, anomaly=anomaly, severity="moderate")

        def at(ts: float, event: str, state: AlarmState, actor: str | None = None) -> None:
            a = Alarm.from_dict({**alarm.to_dict(), "state": state.value, "updated_at": ts,
                                 **({"acked_by": actor, "acked_at": ts} if actor else {})})
            events.append(AlarmEvent(aid, ts, event, state, a, actor, "seen, checking cooler" if actor else None))

        at(t, "raised", AlarmState.ACTIVE_UNACK)
        if n < alarms - STANDING:
            at(t + 60, "acknowledged", AlarmState.ACTIVE_ACK, "operator_1")
            at(t + 300, "cleared", AlarmState.NORMAL)
        diagnoses.append(Diagnosis(aid, f"{asset} running hot: cooling water flow low", [
            Cause("cooling_loss", "Cooling water flow low", 0.7), Cause("fouling", "Exchanger fouled", 0.2)],
            [Step("Check cooling water valve position", "check"), Step("Reduce feed 10 %")], ["hot surfaces"],
            ["cooling flow back to normal"], "runbook", created_at=t + 5, asset=asset))
        if n % 10 == 0:
            feedback.append(Feedback(aid, "confirmed" if n % 20 else "false_alarm", actor="operator_1", ts=t + 400))
    return events, diagnoses, feedback


def fill(owner: str, url_of, lines: int, alarms: int, now: float) -> dict[str, float]:
    """Each line writes its month through its own store as its own role (4 lines at a time)."""
    spent = {"events": 0.0, "diagnoses": 0.0, "feedback": 0.0}
    lock = threading.Lock()

    def one(i: int) -> None:
        events, diagnoses, feedback = month_of(line_name(i), alarms, now)
        with PostgresStore(url_of(role_name(i)), line_name(i)) as store:
            took = {}
            t = time.perf_counter()
            for k in range(0, len(events), 500):  # the store station writes batches
                store.add_alarm_events(events[k:k + 500])
            took["events"] = time.perf_counter() - t
            t = time.perf_counter()
            store.add_diagnoses(diagnoses)
            took["diagnoses"] = time.perf_counter() - t
            t = time.perf_counter()
            for f in feedback:
                store.add_feedback(f)
            took["feedback"] = time.perf_counter() - t
        with lock:
            for k, v in took.items():
                spent[k] += v

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(lines)))
    conn = postgres.Connection(owner)
    conn.execute("ANALYZE")  # autovacuum would, soon after such a fill; the plans are those of a settled store
    conn.close()
    return spent


class Recorder:
    """Every statement the store's connections send during a read, with how long it took (to EXPLAIN the slowest)."""

    def __init__(self):
        self.calls: list[tuple[float, postgres.Connection, str, tuple]] = []
        self.on = False
        self._execute = postgres.Connection.execute
        recorder = self

        def execute(conn, sql, params=()):
            if recorder.on:
                conn.open()  # the statement's own time, not the connecting's
            t = time.perf_counter()
            out = recorder._execute(conn, sql, params)
            if recorder.on:
                recorder.calls.append((time.perf_counter() - t, conn, sql, tuple(params)))
            return out

        postgres.Connection.execute = execute

    def slowest(self, fn) -> tuple[str, str]:
        """The plan's top lines of the slowest statement one run of ``fn`` sends."""
        self.calls, self.on = [], True
        try:
            fn(keep_open=True)
        finally:
            self.on = False
        _, conn, sql, params = max(self.calls, key=lambda c: c[0])
        plan = [r[0] for r in self._execute(conn, "EXPLAIN (ANALYZE, BUFFERS OFF) " + sql, params).fetchall()]
        conn.close()
        # the top node, the scans (which index, if any) and the time; the role checks' InitPlans left out
        keep = [plan[0]] + [x for x in plan[1:] if any(w in x for w in ("Index", "Seq Scan on", "Sort", "Limit",
                                                                         "Execution Time")) and "pg_authid" not in x
                            and "line_roles" not in x]
        return sql, "\n".join("    " + p for p in keep[:10])


def quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args)


def timings(fn, repeat: int, budget_s: float = 20.0) -> list[float]:
    out, start = [], time.perf_counter()
    while len(out) < repeat and (len(out) < 5 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(lines: int, alarms: int, repeat: int) -> None:
    from dashboards.site import shift_figures
    from tests.support.postgres import Cluster, pg_bin

    cluster = Cluster(pg_bin())
    cluster.start()
    try:
        owner = cluster.create_database("site")
        url_of = lambda role: f"postgresql://{role}@127.0.0.1:{cluster.port}/site"  # noqa: E731  trust auth
        t = time.perf_counter()
        for i in range(lines):
            grant_line(owner, line_name(i), role_name(i))
        grant_reader(owner, "site_reader")
        print(f"cluster: PostgreSQL at 127.0.0.1:{cluster.port}, fsync=off full_page_writes=off (a throwaway: the "
              f"fill is not a disk benchmark); {lines} line roles + a site reader in {time.perf_counter() - t:.1f} s")
        now = time.time()
        t = time.perf_counter()
        spent = fill(owner, url_of, lines, alarms, now)
        wall = time.perf_counter() - t
        n_alarms = lines * alarms
        print(f"fill through each line's PostgresStore (its own role, 4 lines at a time): {n_alarms:,} alarms, "
              f"{lines * (3 * alarms - 2 * STANDING):,} events, {n_alarms:,} diagnoses, {lines * len(range(0, alarms, 10)):,} "
              f"feedback in {wall:.0f} s (summed per writer: events {spent['events']:.0f} s, diagnoses "
              f"{spent['diagnoses']:.0f} s, feedback {spent['feedback']:.0f} s)")
        site = url_of("site_reader")
        line, role = line_name(lines // 2), url_of(role_name(lines // 2))
        alarm_id = f"{ASSETS[(alarms // 2) % len(ASSETS)]}:high_temperature:{alarms // 2}"
        check = SiteHistory(role, line)
        events = check.audit(line, alarm_id)
        check.close()
        assert [e.event.event for e in events] == ["raised", "acknowledged", "cleared"], events

        def cli_list(db, scope, every=False):
            return lambda: quiet(alarms_cli._list, SimpleNamespace(db=db, line=scope, from_store=False, config=None,
                                                                    json=False, all=every, state_dir=None))

        def cli_audit(db, scope, alarm=None):
            return lambda: quiet(alarms_cli._audit, SimpleNamespace(db=db, line=scope, from_store=False, config=None,
                                                                     json=False, state_dir=None, alarm=alarm,
                                                                     since_min=None, limit=200))

        def cli_stats(db, scope):
            return lambda: quiet(store_cli._run_store, SimpleNamespace(db=db, line=scope, action="stats", role=None))

        site_open, line_open = SiteHistory(site), SiteHistory(role, line)  # a long-lived reader's connections
        page_line = load_line(SIMULATED_LINE)
        page_store = PostgresStore.reader(role, line)  # the site page keeps it open (st.cache_resource)
        reads = {
            f"alarms list --db --line {line} (its own role)": cli_list(role, line),
            f"alarms audit --db --line {line} --alarm ID (its own role)": cli_audit(role, line, alarm_id),
            f"alarms audit --db --line {line} --limit 200 (its own role)": cli_audit(role, line),
            "alarms list --db (site reader, every line)": cli_list(site, None),
            f"alarms list --db --line {line} (site reader)": cli_list(site, line),
            "alarms audit --db --limit 200 (site reader, newest 200 across lines)": cli_audit(site, None),
            f"alarms audit --db --line {line} --limit 200 (site reader)": cli_audit(site, line),
            DUMP:
                lambda: site_open.alarms(None, include_normal=True),
            f"alarms list of {line}, open connection as its own role (SiteHistory.alarms)":
                lambda: line_open.alarms(line, include_normal=True),
            "newest 200 events across lines, open connection (SiteHistory.audit)":
                lambda: site_open.audit(None, None, None, 200),
            "site page: EEMUA 191 figures of a line's shift (shift_figures, open store)":
                lambda: shift_figures(page_store, page_line, now),
            f"store stats --db --line {line} (its own role)": cli_stats(role, line),
            "store stats --db (site reader, every line)": cli_stats(site, None),
        }
        results = {}
        print(f"\nreads, each repeated up to {repeat} times (at least 5, at most ~20 s), ms (CLI reads include "
              "connecting, as a command does):")
        for name, fn in reads.items():
            ms = timings(fn, repeat)
            results[name] = ms
            print(f"  p50 {p(ms, 0.5):8.1f}  p99 {p(ms, 0.99):8.1f}  (n={len(ms):2d})  {name}")

        # the retention sweep: one line's oldest day, while the site reads run beside it
        keep = MONTH - DAY
        retention = Retention(alarm_events=keep, alarms=keep, diagnoses=keep, conversations=keep, anomalies=keep)
        beside: list[float] = []
        stop = threading.Event()
        side = reads[f"alarms list --db --line {line} (its own role)"]

        def alongside():
            while not stop.is_set():
                t0 = time.perf_counter()
                side()
                beside.append((time.perf_counter() - t0) * 1000)

        reader = threading.Thread(target=alongside, daemon=True)
        reader.start()
        with PostgresStore(role, line, retention=retention) as sweeper:
            t = time.perf_counter()
            deleted = sweeper.enforce_retention(now)
            sweep_ms = (time.perf_counter() - t) * 1000
        stop.set()
        reader.join()
        print(f"\nretention sweep of {line}'s oldest day (enforce_retention, its own role): {sweep_ms:.0f} ms, "
              f"deleted {', '.join(f'{k} {v}' for k, v in deleted.items() if v)}; its alarms list beside it: "
              f"p50 {p(beside, 0.5):.1f} p99 {p(beside, 0.99):.1f} ms (n={len(beside)})")

        slow_name = max((k for k in results if k != DUMP), key=lambda k: p(results[k], 0.99))
        print(f"\nslowest read: {slow_name}")
        recorder = Recorder()
        fn = reads[slow_name]
        sql, plan = recorder.slowest(lambda keep_open: fn())
        print(f"  its slowest statement: {sql}\n  EXPLAIN ANALYZE (top):\n{plan}")
        page_store.close()
        site_open.close()
        line_open.close()
        print(f"\nsite history: {lines} lines, {n_alarms:,} alarms, slowest read p99 {p(results[slow_name], 0.99):.0f} "
              f"ms ({slow_name}); the --all dump of every alarm p99 {p(results[DUMP], 0.99):.0f} ms")
    finally:
        cluster.remove()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--alarms", type=int, default=1000, help="alarms per line in the month")
    ap.add_argument("--repeat", type=int, default=50)
    a = ap.parse_args()
    main(a.lines, a.alarms, a.repeat)
