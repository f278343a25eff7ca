"""A site of N simulated lines end to end (issue 22): edge brokers bridged to one site broker, one pool of explainers,
one PostgreSQL, every line a real ``factory-copilot run`` process.

Per line: the simulated packaging line (35 signals at 1 Hz) served over OPC UA by a plant process (up to 5 lines
each), its service (``factory-copilot run --config line.yaml``, a process of its own), its edge Mosquitto written by
``broker init``'s ``write_site`` with ``--bridge-to`` the site broker (TLS, the bridge account), its store on the
shared PostgreSQL (``store: {url: ...}``) and its copilot's model calls sent to the site pool (``service.copilot.pool``
on the site broker). The pool: 2 ``factory-copilot explainer`` processes on the tiny random-weight GGUF the tests make
(models/make_tiny_qwen.py; ``--model`` for a real one), so what is measured is the site's plumbing, not a model.
Faults are injected in every line, different ones at different times (severity 2, 20 s ramp, repaired after a while).

Measured, per N: alarm events the line published (a subscriber on its edge broker) against those that reached the
site broker (a reader at the site), their latency from the event's time to the site, the model jobs (each line's
``diagnosis/<alarm>/job`` records) and their model diagnoses at the site (lost: a job with none, duplicated: with more
than one), explain jobs a minute, PostgreSQL's commits and inserted rows a second, and each process's CPU.

    PYTHONPATH=src:. .venv/bin/python bench/site.py [--lines 1,5,20] [--seconds 300] [--quick] [--outages]

``--outages`` (issue 22, at least 200 s): in the window an explainer is SIGKILLed while it runs a job (restarted 10 s
later), the site Mosquitto stopped at 60 s and started again at 120 s (same port, configuration and persistence) and
PostgreSQL stopped (``pg_ctl stop -m fast``) at 150 s and started at 180 s; every line's /health is polled every 2 s
and, per outage, the lines it called unhealthy and whose reasons named it are reported, with the audit rows
(``alarm_events``) and diagnoses in PostgreSQL against the events the edges published. The site reader keeps a
persistent session (clean_start False, QoS 1) across the broker's restart.

Last line: ``site: N lines, alarm p99 X ms edge->site, diagnosis p50 Y s, 0 lost, 0 duplicated`` (the largest N).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: bench, tests, simulators

import yaml  # noqa: E402

from factory_copilot.config import SIMULATED_LINE, load_line  # noqa: E402
from factory_copilot.plumbing.broker import MOSQUITTO, MosquittoBroker  # noqa: E402
from factory_copilot.plumbing.broker_site import Account  # noqa: E402
from simulators.site import (  # noqa: E402  the site's pieces, the ones demo --site composes
    Listener,
    Plant,
    child_env,
    fault_plan,
    line_file,
    start_edge_broker,
    start_explainer,
    start_site_broker,
    stop_all,
    stop_explainer,
)

SITE = "bench-site"
PREFIX = "factory-copilot"
PW = {"factory-copilot": "service-secret-1", "edge-bridge": "bridge-secret-1", "scada": "scada-secret-1",
      "pool-1": "pool-secret-1", "pool-2": "pool-secret-2"}


def pct(values: list[float], q: float) -> float:
    """The nearest-rank percentile (bench/latency.py's)."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)] if s else float("nan")


# ---- the site: brokers, database, explainers, lines ----------------------------------------------------------------


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children so far (gone ones count 0)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs = [p] + p.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


def rss_mib(pid: int) -> float:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.NoSuchProcess:
        return float("nan")


def pg_counters(url: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT xact_commit, tup_inserted FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
    return int(row[0]), int(row[1])


def health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 503 still carries the figures
        return json.loads(exc.read())
    except OSError:
        return {}


# ---- --outages: a worker killed mid-job, the site broker away 60 s, PostgreSQL away 30 s ---------------------------

# (what, down at, up at) in seconds after go; the explainer is killed at the first job it is seen running after
# KILL_FROM_S (its replacement started 10 s later under the same name), the broker and the server taken away between
# the lines' first and second faults' alarms, so alarms, jobs and audit rows are made while each is down
KILL_FROM_S, KILL_UNTIL_S, RESTART_AFTER_S = 0.0, 55.0, 10.0
BROKER_DOWN = (60.0, 120.0)
PG_DOWN = (150.0, 180.0)
# what a line's /health reason must say while each is down
NAMES = {"explainer": ("explainer", "pool", "timeout", "waiting"), "site broker": ("site link",),
         "postgresql": ("store unavailable",)}


def outages(t0: float, seconds: float, site: MosquittoBroker, cluster, explainers: list, restart, health_ports: list,
            replies: "Listener") -> dict:
    """Run the outage schedule until ``t0 + seconds``, polling every line's /health every 2 s meanwhile; returns
    each outage's times and, per line, whether its /health was unhealthy and named it while it was down."""
    polls: list[tuple[float, int, dict]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for k, port in enumerate(health_ports):
                polls.append((time.time(), k, health(port)))
            done.wait(2.0)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    log: dict[str, dict] = {}
    # (a) SIGKILL the first explainer seen running a job (its "running" reply to a line), from the reply's callback
    killed = threading.Event()
    by_name = {f"pool-{i + 1}": i for i in range(len(explainers))}
    old_on_message = replies.client.on_message

    def on_reply(c, u, m) -> None:
        old_on_message(c, u, m)
        now = time.time() - t0
        if killed.is_set() or not KILL_FROM_S <= now <= KILL_UNTIL_S:
            return
        try:
            body = json.loads(m.payload)
        except ValueError:
            return
        if body.get("state") == "running" and body.get("worker") in by_name:
            explainers[by_name[body["worker"]]].kill()
            killed.set()
            log["explainer"] = {"worker": body["worker"], "down": time.time(), "job_topic": m.topic}
    replies.client.on_message = on_reply

    def until(offset: float) -> None:
        time.sleep(max(0.0, t0 + offset - time.time()))

    if killed.wait(KILL_UNTIL_S):
        i = by_name[log["explainer"]["worker"]]
        explainers[i].wait()
        time.sleep(RESTART_AFTER_S)
        explainers[i] = restart(log["explainer"]["worker"])
        log["explainer"]["up"] = time.time()
    replies.client.on_message = old_on_message
    # (b) the site broker: stopped (SIGTERM, it saves its persistence), started again on its port, its configuration
    until(BROKER_DOWN[0])
    log["site broker"] = {"down": time.time()}
    site.stop()
    until(BROKER_DOWN[1])
    site.start(timeout_s=30)
    log["site broker"]["up"] = time.time()
    # (c) PostgreSQL: pg_ctl stop -m fast, then start
    until(PG_DOWN[0])
    log["postgresql"] = {"down": time.time()}
    cluster.stop()
    until(PG_DOWN[1])
    cluster.start()
    log["postgresql"]["up"] = time.time()
    until(seconds)
    done.set()
    poller.join(30)
    for what, o in log.items():
        seen = [(k, h) for at, k, h in polls if o["down"] <= at <= o.get("up", o["down"])]
        o["polls"] = len(seen)
        o["unhealthy"] = sorted({k + 1 for k, h in seen if h.get("status") != "ok"})
        o["named"] = sorted({k + 1 for k, h in seen
                             if any(w in r for r in h.get("reasons", []) for w in NAMES[what])})
        o["reasons"] = sorted({r.split(" since ")[0] for k, h in seen for r in h.get("reasons", [])})[:6]
        o["down_s"] = round(o.get("up", o["down"]) - o["down"], 1)
    return log


def pg_check(url: str, edge_msgs: list[list]) -> dict:
    """The lines' audit rows (alarm_events) and diagnoses in PostgreSQL against the alarm events the edges published:
    lost (published, not stored), duplicated (stored twice, by line, alarm, event and time)."""
    import psycopg

    published = set()
    for msgs in edge_msgs:
        for _, _, payload in list(msgs):
            e = json.loads(payload)
            published.add((e["line"], e["alarm_id"], e["event"], round(e["ts"], 3)))
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT line, alarm_id, event, ts FROM alarm_events").fetchall()
        diag = conn.execute("SELECT line, alarm_id, created_at, source, count(*) FROM diagnoses "
                            "GROUP BY line, alarm_id, created_at, source").fetchall()
        alarms = conn.execute("SELECT count(*) FROM alarms").fetchone()[0]
    stored: dict[tuple, int] = {}
    for line, alarm_id, event, ts in rows:
        key = (line.rpartition("/")[2], alarm_id, event, round(ts, 3))
        stored[key] = stored.get(key, 0) + 1
    return {"audit_rows": len(rows), "audit_published": len(published),
            "audit_lost": len(published - set(stored)), "audit_duplicated": sum(c > 1 for c in stored.values()),
            "audit_not_published": len(set(stored) - published), "alarms": alarms,
            "diagnoses": sum(d[4] for d in diag), "diagnoses_model": sum(d[4] for d in diag if d[3] == "model"),
            "diagnoses_duplicated": sum(d[4] > 1 for d in diag)}


def run_site(n: int, seconds: float, work: Path, cluster, detector: Path, model: Path, drain_s: float,
             with_outages: bool = False) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    pg_url = cluster.create_database(f"site_{n}_{int(time.time())}")
    procs: list[subprocess.Popen] = []
    brokers: list[MosquittoBroker] = []
    listeners: list[Listener] = []
    explainers: list[subprocess.Popen] = []
    plant: Plant | None = None
    try:
        accounts = [Account("edge-bridge", "bridge", PW["edge-bridge"]),
                    Account("factory-copilot", "service", PW["factory-copilot"]), Account("scada", "reader", PW["scada"]),
                    Account("pool-1", "explainer", PW["pool-1"]), Account("pool-2", "explainer", PW["pool-2"])]
        site = start_site_broker(work / "site", accounts)
        brokers.append(site)
        ca = site.site.ca_file
        edges, lines = [], []
        for k in range(1, n + 1):
            edges.append(start_edge_broker(work / f"edge-{k:02d}", SITE, f"line-{k:02d}", site.port, ca,
                                           PW["edge-bridge"], PW["factory-copilot"]))
            lines.append(line_file(work / f"line-{k:02d}", SITE, k, edges[-1].port, site.port, ca, pg_url, detector,
                                   PW["factory-copilot"]))
        brokers += edges
        base = f"{PREFIX}/{SITE}"
        at_site = Listener(site.port, "scada", PW["scada"], [f"{base}/+/events", f"{base}/+/+/diagnosis/+",
                                                             f"{base}/+/+/diagnosis/+/job", f"{base}/+/status"], ca,
                           "site-reader", persistent=True)
        listeners.append(at_site)
        at_edge = [Listener(e.port, "factory-copilot", PW["factory-copilot"], [f"{base}/+/events"],
                            name=f"edge-{k + 1:02d}-reader") for k, e in enumerate(edges)]
        listeners += at_edge
        def explainer(name: str) -> subprocess.Popen:  # started again under its name after --outages kills it
            return start_explainer(site.port, ca, model, SITE, name, PW[name], threads=1)
        for name in ("pool-1", "pool-2"):
            explainers.append(explainer(name))
        if with_outages:  # who runs which job: the explainers' replies to the lines
            replies = Listener(site.port, "factory-copilot", PW["factory-copilot"], [f"{base}/+/explain/reply/+"],
                               ca, "site-replies", persistent=True)
            listeners.append(replies)
        # the plants: the simulated lines over OPC UA, simulators/site.py's LINES_PER_PLANT lines a process
        plans = []
        for k, path in enumerate(lines, start=1):
            line = yaml.safe_load(path.read_text())
            plans.append({"index": k, "line": line["line"], "line_file": str(path), "endpoint": line["opcua"]["endpoint"],
                          "faults": fault_plan(k, seconds)})
        plant = Plant(plans, work)
        injected = plant.injected
        # the lines' services, each as deployed
        for k, path in enumerate(lines, start=1):
            log = open(work / f"line-{k:02d}" / "service.log", "w")
            procs.append(subprocess.Popen([sys.executable, "-m", "factory_copilot.cli", "--log-level", "warning", "run",
                                           "--config", str(path)], env=child_env(), stdout=log,
                                          stderr=subprocess.STDOUT))
        names = {f"line-{k:02d}" for k in range(1, n + 1)}
        deadline = time.monotonic() + 120 + 5 * n
        while True:
            online = {json.loads(p)["line"] for _, t, p in list(at_site.got)
                      if t.endswith("/status") and p and json.loads(p).get("state") == "online"}
            if online >= names:
                break
            dead = [k + 1 for k, p in enumerate(procs) if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise SystemExit(f"lines {dead or sorted(names - online)} did not come online (see {work}/line-*/"
                                 "service.log)")
            time.sleep(0.5)
        time.sleep(10)  # the detectors' smoothing settles on live data
        health_ports = [yaml.safe_load(p.read_text())["service"]["health_port"] for p in lines]
        # the window: faults from now, figures over it
        svc_pids = [p.pid for p in procs]
        others = {"site broker": [site.proc.pid], "edge brokers": [e.proc.pid for e in edges],
                  "explainers (with their models)": [p.pid for p in explainers], "plants (simulated OPC UA)":
                  [p.pid for p in plant.procs], "postgresql": [postmaster(cluster)]}
        if with_outages:  # processes restarted in the window: their CPU is not comparable
            for k in ("site broker", "explainers (with their models)", "postgresql"):
                others.pop(k)
        cpu0 = [cpu_s([pid]) for pid in svc_pids]
        other0 = {k: cpu_s(v) for k, v in others.items()}
        pg0 = pg_counters(pg_url)
        t0 = time.time()
        mark = 0  # every event counts, the start-up's too: the edge listeners have them all since the start
        plant.go()
        outage_log = (outages(t0, seconds, site, cluster, explainers, explainer, health_ports, replies)
                      if with_outages else time.sleep(seconds))
        t1 = time.time()
        cpu1 = [cpu_s([pid]) for pid in svc_pids]
        other1 = {k: cpu_s(v) for k, v in others.items()}
        pg1 = pg_counters(pg_url)
        rss = [rss_mib(pid) for pid in svc_pids]
        # the jobs still running are given their time: until every job seen has its model diagnosis at the site
        drained_at = time.monotonic() + drain_s
        while time.monotonic() < drained_at:
            if analyse(at_site.got[mark:], [], n)["lost"] == 0:
                break
            time.sleep(1)
        healths = [health(port) for port in health_ports]
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        # what the bridges still carry: until the site holds every event the edges saw, or 20 s
        settle = time.monotonic() + 20
        while time.monotonic() < settle:
            r = analyse(at_site.got[mark:], [e.got for e in at_edge], n)
            if all(v["expected"] == v["got"] for v in r["per_line"].values()):
                break
            time.sleep(0.5)
        stored = pg_check(pg_url, [e.got for e in at_edge])
        pool_done = [stop_explainer(p) for p in explainers]
        explainers.clear()
        wall = t1 - t0
        result = analyse(at_site.got[mark:], [e.got for e in at_edge], n)
        made = [json.loads(pl) for e in at_edge for _, _, pl in list(e.got)]
        jobs_made = [json.loads(pl) for _, t, pl in list(at_site.got) if t.endswith("/job") and pl]
        for o in (outage_log or {}).values():  # what was made while it was down: the outage was not a quiet one
            o["events_made"] = len({(e["line"], e["alarm_id"], e["event"], e["ts"]) for e in made
                                    if o["down"] <= e["ts"] <= o["up"]})
            o["jobs_made"] = len({(j["line"], j["alarm_id"], j.get("since")) for j in jobs_made
                                  if j.get("job") == "diagnosis" and o["down"] <= (j.get("since") or 0) <= o["up"]})
        result.update({
            "lines": n, "seconds": round(wall, 1), "faults_injected": len(injected),
            "explainers_done": [d.get("done") for d in pool_done],
            "jobs_per_min": round(sum(d.get("done", 0) for d in pool_done) / (time.time() - t0) * 60, 1),
            "pg_commits_per_s": round((pg1[0] - pg0[0]) / wall, 1),
            "pg_rows_inserted_per_s": round((pg1[1] - pg0[1]) / wall, 1),
            "service_cpu_per_line_pct": round(100 * (sum(cpu1) - sum(cpu0)) / wall / n, 2),
            "service_cpu_max_line_pct": round(100 * max(b - a for a, b in zip(cpu0, cpu1)) / wall, 2),
            "service_rss_mib_mean": round(statistics.mean(rss), 1),
            "other_cpu_pct": {k: round(100 * (other1[k] - other0[k]) / wall, 2) for k in others},
            "pool_backends": pool_totals(healths),
            "load_average": round(os.getloadavg()[0], 2),
            "store": stored, "outages": outage_log, "site_reader_connects": at_site.connects,
        })
        return result
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if plant is not None:
            plant.stop()
        stop_all(explainers, signal.SIGKILL, 10)
        for lst in listeners:
            lst.close()
        for b in brokers:
            b.stop()


def postmaster(cluster) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def pool_totals(healths: list[dict]) -> dict:
    """The lines' pool backends' counters (/health copilot.model_file.backend), summed."""
    keys = ("jobs", "answered", "duplicates", "republished", "timeouts")
    total = dict.fromkeys(keys, 0)
    for h in healths:
        b = (((h.get("copilot") or {}).get("model_file") or {}).get("backend") or {})
        for k in keys:
            total[k] += int(b.get(k) or 0)
    total["lines_reporting"] = sum(bool(h) for h in healths)
    return total


def analyse(site_msgs: list, edge_msgs: list[list], n: int) -> dict:
    """Events expected (at the edges) and got (at the site) per line, their latency, and each model job's model
    diagnoses at the site."""
    per_line: dict[str, dict] = {f"line-{k:02d}": {"expected": 0, "got": 0} for k in range(1, n + 1)}
    edge_keys: dict[tuple, float] = {}
    for msgs in edge_msgs:
        for at, topic, payload in list(msgs):
            e = json.loads(payload)
            edge_keys.setdefault((e["line"], e["alarm_id"], e["event"], e["ts"]), at)
    site_keys: dict[tuple, float] = {}
    jobs: dict[tuple, str] = {}
    diagnoses: list[tuple[float, dict]] = []
    event_msgs = 0
    for at, topic, payload in list(site_msgs):
        if not payload:
            continue
        body = json.loads(payload)
        if topic.endswith("/events"):
            event_msgs += 1
            site_keys.setdefault((body["line"], body["alarm_id"], body["event"], body["ts"]), at)
        elif topic.endswith("/job"):
            if body.get("job") == "diagnosis":
                key = (body["line"], body["alarm_id"], round(body["since"], 3))
                if jobs.get(key) != "dropped":
                    jobs[key] = body["state"]
        elif "/diagnosis/" in topic and (body.get("source") == "model" or body.get("fallback_reason")):
            diagnoses.append((at, body))
    for key in edge_keys:
        per_line[key[0]]["expected"] += 1
        per_line[key[0]]["got"] += key in site_keys
    latency_ms = [(at - key[3]) * 1000 for key, at in site_keys.items()]
    by_event: dict[str, list[float]] = {}
    for key, at in site_keys.items():
        by_event.setdefault(key[2], []).append((at - key[3]) * 1000)
    hop_ms = [(site_keys[k] - at) * 1000 for k, at in edge_keys.items() if k in site_keys]
    # each model diagnosis to its job: same line and alarm, its alarm event's time (created_at - latency_s)
    per_job: dict[tuple, set] = {k: set() for k in jobs}
    took_s: dict[tuple, float] = {}
    fallbacks = 0
    for at, d in diagnoses:
        since = d["created_at"] - (d.get("latency_s") or 0.0)
        near = [k for k in jobs if k[0] == d["line"] and k[1] == d["alarm_id"] and abs(k[2] - since) < 2.0]
        if not near:
            continue
        k = min(near, key=lambda j: abs(j[2] - since))
        per_job[k].add(d["created_at"])  # a QoS 1 redelivery is the same diagnosis, not a second one
        took_s.setdefault(k, at - k[2])
        fallbacks += d.get("source") != "model"
    wanted = [k for k, state in jobs.items() if state != "dropped"]
    return {
        "per_line": per_line,
        "events_expected": sum(v["expected"] for v in per_line.values()),
        "events_got": sum(v["got"] for v in per_line.values()),
        "event_messages_at_site": event_msgs, "event_duplicates_at_site": event_msgs - len(site_keys),
        "alarm_p50_ms": round(pct(latency_ms, 0.5), 1), "alarm_p99_ms": round(pct(latency_ms, 0.99), 1),
        "alarm_ms_by_event": {e: [len(v), round(pct(v, 0.5), 1), round(max(v), 1)] for e, v in sorted(by_event.items())},
        "bridge_hop_p50_ms": round(pct(hop_ms, 0.5), 1), "bridge_hop_p99_ms": round(pct(hop_ms, 0.99), 1),
        "jobs": len(wanted), "jobs_dropped": len(jobs) - len(wanted),
        "lost": sum(len(per_job[k]) == 0 for k in wanted), "duplicated": sum(len(per_job[k]) > 1 for k in wanted),
        "model_fallbacks": fallbacks,
        "diagnosis_p50_s": round(pct(list(took_s.values()), 0.5), 2),
        "diagnosis_p99_s": round(pct(list(took_s.values()), 0.99), 2),
    }


def print_result(r: dict) -> None:
    n = r["lines"]
    print(f"== {n} line(s), {r['seconds']:.0f} s, {r['faults_injected']} faults injected, load average "
          f"{r['load_average']}")
    short = [f"{name} {v['got']}/{v['expected']}" for name, v in r["per_line"].items()]
    print(f"  alarm events at the site broker (got/expected, per line): {', '.join(short)}; "
          f"all: {r['events_got']}/{r['events_expected']} ({r['event_messages_at_site']} messages)")
    print(f"  alarm latency, event time -> site subscriber: p50 {r['alarm_p50_ms']} ms, p99 {r['alarm_p99_ms']} ms "
          f"(the bridge hop alone, edge subscriber -> site subscriber: p50 {r['bridge_hop_p50_ms']} ms, "
          f"p99 {r['bridge_hop_p99_ms']} ms)")
    print("  by event (count, p50 ms, max ms): " + ", ".join(f"{e} {v[0]}, {v[1]}, {v[2]}"
                                                          for e, v in r["alarm_ms_by_event"].items()))
    print(f"  model jobs {r['jobs']} (+{r['jobs_dropped']} dropped by the line's queue), lost {r['lost']}, "
          f"duplicated {r['duplicated']}, runbook fallbacks {r['model_fallbacks']}; the lines' pools: "
          f"{json.dumps(r['pool_backends'])}")
    print(f"  explain jobs {sum(d or 0 for d in r['explainers_done'])} by 2 explainers "
          f"({'/'.join(str(d) for d in r['explainers_done'])}): {r['jobs_per_min']} a minute; alarm -> model "
          f"diagnosis at the site p50 {r['diagnosis_p50_s']} s, p99 {r['diagnosis_p99_s']} s")
    print(f"  PostgreSQL: {r['pg_commits_per_s']} commits/s, {r['pg_rows_inserted_per_s']} rows inserted/s "
          f"({r['pg_rows_inserted_per_s'] / n:.1f} a line)")
    print(f"  service CPU (each line its own `factory-copilot run` process): {r['service_cpu_per_line_pct']} % of a "
          f"core a line (busiest {r['service_cpu_max_line_pct']} %), RSS {r['service_rss_mib_mean']} MiB a line; "
          + ", ".join(f"{k} {v} %" for k, v in r["other_cpu_pct"].items()), flush=True)
    s = r["store"]
    print(f"  PostgreSQL: {s['audit_rows']} audit rows (alarm_events) for {s['audit_published']} events published on "
          f"the edges: {s['audit_lost']} lost, {s['audit_duplicated']} duplicated, {s['audit_not_published']} not "
          f"published; {s['diagnoses']} diagnoses ({s['diagnoses_model']} model), {s['diagnoses_duplicated']} "
          f"duplicated; alarm events at the site: {r['events_expected'] - r['events_got']} distinct events lost, "
          f"{r['event_duplicates_at_site']} duplicate deliveries; the site reader connected {r['site_reader_connects']}"
          " time(s)", flush=True)
    for what, o in (r.get("outages") or {}).items():
        print(f"  outage {what}: down {o['down_s']} s, {o['polls']} /health polls while down; unhealthy: lines "
              f"{o['unhealthy']} ({len(o['unhealthy'])}/{n}); named it: lines {o['named']} ({len(o['named'])}/{n}); "
              f"reasons seen: {o['reasons']}; made while down: {o.get('events_made')} alarm events, "
              f"{o.get('jobs_made')} model jobs" + (f"; killed {o['worker']} running a job, restarted "
                                                 f"{RESTART_AFTER_S:g} s later" if what == "explainer" else ""),
              flush=True)


def train(folder: Path) -> Path:
    """The detector the tests use (conftest's sim_models), trained once and saved for every line's service."""
    from factory_copilot.detect.evaluate import train_models
    from factory_copilot.detect.persist import save_detector
    from simulators import ModeSchedule, simulate_frame

    line = load_line(SIMULATED_LINE)
    history = simulate_frame(line, seed=3, duration_s=3 * 3600, schedule=ModeSchedule.default())
    return save_detector(folder / "detector.joblib", train_models(line, history, progress=False))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", default="1,5,20", help="numbers of lines, one run each (default 1,5,20)")
    ap.add_argument("--seconds", type=float, default=300.0, help="each run's window, faults in it (default 300)")
    ap.add_argument("--drain", type=float, default=60.0, help="after the window, seconds for running jobs to finish")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 and 2 lines, 120 s each")
    ap.add_argument("--model", type=Path, help="the explainers' GGUF (default: the tiny generated one)")
    ap.add_argument("--outages", action="store_true",
                    help="in the window: an explainer killed mid-job, the site broker down 60 s, PostgreSQL 30 s")
    args = ap.parse_args()
    if MOSQUITTO is None:
        raise SystemExit("bench/site.py needs Mosquitto (apt-get install mosquitto)")
    from bench.pool import tiny_model
    from tests.support.postgres import Cluster, pg_bin

    if pg_bin() is None:
        raise SystemExit("bench/site.py needs PostgreSQL (/usr/lib/postgresql/*/bin; scripts/bootstrap.sh test)")
    counts = [1, 2] if args.quick else [int(x) for x in args.lines.split(",")]
    seconds = 120.0 if args.quick and args.seconds == 300.0 else args.seconds
    if args.outages and seconds < PG_DOWN[1] + 20:
        raise SystemExit(f"--outages needs --seconds {PG_DOWN[1] + 20:g} at least (PostgreSQL is back at {PG_DOWN[1]:g} s)")
    work = Path(tempfile.mkdtemp(prefix="fc-site-bench-"))
    print(f"work folder {work}; training the detector ...", flush=True)
    detector = train(work)
    model = args.model or tiny_model(work)
    cluster = Cluster(pg_bin())
    cluster.start()
    results = []
    try:
        for n in counts:
            try:
                results.append(run_site(n, seconds, work / f"n{n}", cluster, detector, model, args.drain,
                                        args.outages))
            except (SystemExit, RuntimeError) as exc:  # one run that cannot start costs that run, the others' stand
                print(f"== {n} line(s): not measured: {exc}", flush=True)
                continue
            print_result(results[-1])
    finally:
        cluster.remove()
    if not results:
        return 1
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "per_line"}))
    r = results[-1]
    print(f"site: {r['lines']} lines, alarm p99 {r['alarm_p99_ms']:.0f} ms edge->site, diagnosis p50 "
          f"{r['diagnosis_p50_s']} s, {r['lost']} lost, {r['duplicated']} duplicated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
