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

    PYTHONPATH=src:. .venv/bin/python bench/site.py [--lines 1,5,20] [--seconds 300] [--quick]

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


def run_site(n: int, seconds: float, work: Path, cluster, detector: Path, model: Path, drain_s: float) -> dict:
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
                           "site-reader")
        listeners.append(at_site)
        at_edge = [Listener(e.port, "factory-copilot", PW["factory-copilot"], [f"{base}/+/events"],
                            name=f"edge-{k + 1:02d}-reader") for k, e in enumerate(edges)]
        listeners += at_edge
        for name in ("pool-1", "pool-2"):
            explainers.append(start_explainer(site.port, ca, model, SITE, name, PW[name], threads=1))
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
        cpu0 = [cpu_s([pid]) for pid in svc_pids]
        other0 = {k: cpu_s(v) for k, v in others.items()}
        pg0 = pg_counters(pg_url)
        t0 = time.time()
        mark = 0  # every event counts, the start-up's too: the edge listeners have them all since the start
        plant.go()
        time.sleep(seconds)
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
        pool_done = [stop_explainer(p) for p in explainers]
        explainers.clear()
        wall = t1 - t0
        result = analyse(at_site.got[mark:], [e.got for e in at_edge], n)
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
        "event_messages_at_site": event_msgs,
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
    args = ap.parse_args()
    if MOSQUITTO is None:
        raise SystemExit("bench/site.py needs Mosquitto (apt-get install mosquitto)")
    from bench.pool import tiny_model
    from tests.support.postgres import Cluster, pg_bin

    if pg_bin() is None:
        raise SystemExit("bench/site.py needs PostgreSQL (/usr/lib/postgresql/*/bin; scripts/bootstrap.sh test)")
    counts = [1, 2] if args.quick else [int(x) for x in args.lines.split(",")]
    seconds = 120.0 if args.quick and args.seconds == 300.0 else args.seconds
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
                results.append(run_site(n, seconds, work / f"n{n}", cluster, detector, model, args.drain))
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
