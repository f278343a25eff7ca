"""Dashboard CPU benchmark: the Streamlit server's CPU with N headless browser sessions open, before and after.

The dashboard is served as `factory-copilot dashboard` serves it, on a seeded store (``dashboards.sample``:
the pump-cavitation half hour) and a real Mosquitto, whose retained alarm states, a streamed diagnosis
(``--tokens`` chunks) and ``--events`` alarm events stand for a running line: what the live feed holds on
the demo after a while. Headless Chromium (Debian's ``chromium``, through Playwright) opens the sessions
one by one; with each count open the server process's CPU (user + system, its children too) is measured
over ``--seconds``. The browsers' own CPU is not counted.

Two dashboards are measured, one after the other on the same kind of store: ``--before REV`` (the git
revision's ``dashboards/``, ``src/`` and ``.streamlit/``, exported to a temporary folder and served by
its own ``dashboard_command``) and this checkout's.

    .venv/bin/python bench/dashboard_cpu.py [--sessions 1,2] [--seconds 30] [--before main]

Last line: ``dashboard cpu: <before>% -> <after>% of one core with <n> sessions``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from paho.mqtt import publish  # noqa: E402

from dashboards import sample  # noqa: E402
from factory_copilot.config import SIMULATED_LINE, load_line  # noqa: E402
from factory_copilot.plumbing.broker import free_port, start_broker  # noqa: E402
from factory_copilot.publish.topics import Topics  # noqa: E402
from factory_copilot.store import Store  # noqa: E402
from factory_copilot.store.cli import DASHBOARD_APP  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def export(rev: str, into: Path) -> Path:
    """The revision's dashboards/, src/ and .streamlit/ in ``into``; the app file to serve."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "dashboards", "src", ".streamlit"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "dashboards" / "app.py"


def live_line(host: str, port: int, db: Path, tokens: int, events: int) -> None:
    """What the feed holds on a running line: retained alarm states, a streamed diagnosis, recent alarm events."""
    line = load_line(SIMULATED_LINE)
    topics = Topics(line.site, line.line)
    with Store(db) as store:
        alarms = store.active_alarms()
    msgs = [{"topic": topics.alarm(a.asset, a.alarm_id), "payload": json.dumps({**a.to_dict(), "schema": "alarm/1"}),
             "qos": 1, "retain": True} for a in alarms]
    msgs.append({"topic": topics.status(), "payload": json.dumps({"state": "online"}), "qos": 1, "retain": True})
    publish.multiple(msgs, hostname=host, port=port)
    cavitation = next(a for a in alarms if a.alarm_id == sample.CAVITATION_ID)
    stream = topics.diagnosis_stream(cavitation.asset, cavitation.alarm_id)
    words = [{"topic": stream, "payload": json.dumps({"seq": i, "token": f"word{i} ", "done": i == tokens - 1}),
              "qos": 1} for i in range(tokens)]
    news = [{"topic": topics.events(), "qos": 1, "payload": json.dumps(
        {"event": "raised", "alarm_id": f"asset{i % 7}.signal-limit", "ts": time.time() - i, "alarm": a.to_dict()})}
        for i, a in zip(range(events), [cavitation] * events)]
    publish.multiple(words + news, hostname=host, port=port)


def serve(app: Path, db: Path, host: str, mqtt_port: int, env: dict) -> tuple[subprocess.Popen, str]:
    """The dashboard served by the command line of the runtime in ``env`` (its flags are part of what is measured)."""
    port = free_port()
    ask = ("import json, sys; from factory_copilot.store.cli import dashboard_command as d; "
           "print(json.dumps(d(*json.loads(sys.argv[1]))))")
    cmd = json.loads(subprocess.run([sys.executable, "-c", ask, json.dumps([str(db), str(SIMULATED_LINE), host,
                                                                           mqtt_port, "5", port])],
                                    env=env, capture_output=True, text=True, check=True).stdout)
    assert str(app) in cmd, f"{app} is not what {cmd} serves"
    proc = subprocess.Popen(cmd, cwd=app.parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    said = []
    while True:  # the server says when it listens
        try:
            said.append(lines.get(timeout=90))
        except queue.Empty:
            proc.kill()
            raise SystemExit("streamlit did not start within 90 s:\n" + "".join(said))
        if "URL:" in said[-1]:
            return proc, f"http://127.0.0.1:{port}"


def cpu_s(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(name: str, app: Path, args, broker_port: int, env: dict) -> dict[int, float]:
    """Per session count: the server's CPU in % of one core."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "store.db"
        with Store(db) as store:
            sample.seed(store, load_line(SIMULATED_LINE), now=time.time())
        live_line("127.0.0.1", broker_port, db, args.tokens, args.events)
        proc, url = serve(app, db, "127.0.0.1", broker_port, env)
        server = psutil.Process(proc.pid)
        out: dict[int, float] = {}
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
                pages = []
                for n in range(1, max(args.sessions) + 1):
                    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
                    page.goto(url)
                    page.get_by_text("Alarms (").first.wait_for(timeout=90_000)
                    pages.append(page)
                    if n not in args.sessions:
                        continue
                    time.sleep(args.warmup)  # the page's first runs (charts, KPIs) are not its steady cost
                    c0, t0 = cpu_s(server), time.monotonic()
                    time.sleep(args.seconds)
                    out[n] = 100 * (cpu_s(server) - c0) / (time.monotonic() - t0)
                    print(f"{name:>7s}: {n} session(s): {out[n]:5.1f} % of one core", flush=True)
                browser.close()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", default="1,2", help="session counts to measure, comma-separated (default 1,2)")
    p.add_argument("--seconds", type=float, default=30.0, help="measuring window per count (default 30)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds after a page opened before measuring")
    p.add_argument("--tokens", type=int, default=600, help="chunks of the streamed diagnosis in the feed")
    p.add_argument("--events", type=int, default=200, help="alarm events in the feed")
    p.add_argument("--before", default="main", help="git revision measured as 'before' (default main)")
    args = p.parse_args()
    args.sessions = sorted({int(x) for x in args.sessions.split(",")})
    broker = start_broker(free_port(), persistence=False)
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            old = export(args.before, Path(tmp))
            env = {**os.environ, "PYTHONPATH": str(Path(tmp) / "src")}  # its own runtime, not this checkout's
            results["before"] = measure("before", old, args, broker.port, env)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        results["after"] = measure("after", DASHBOARD_APP, args, broker.port, env)
    finally:
        broker.stop()
    print(f"{'sessions':>8s} {'before %':>9s} {'after %':>8s}   (server CPU, % of one core; before = {args.before})")
    for n in args.sessions:
        print(f"{n:8d} {results['before'][n]:9.1f} {results['after'][n]:8.1f}")
    n = max(args.sessions)
    print(f"dashboard cpu: {results['before'][n]:.1f}% -> {results['after'][n]:.1f}% of one core with {n} sessions")


if __name__ == "__main__":
    main()
