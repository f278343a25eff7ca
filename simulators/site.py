"""A site on one box (issue 22): a site Mosquitto, N edge Mosquittos bridged to it, N simulated lines each served by
its own ``factory-copilot run``, a pool of explainers and one PostgreSQL cluster, composed from the stock pieces.

``factory-copilot demo --site N`` runs it (``run_site_demo``); bench/site.py measures the same composition. Every
process is a child of the one that composes the site, each started the way a site would start it (the brokers from
``broker init``'s ``write_site``, the lines' services from their line files, the explainers by their command), and
every one is stopped by ``SiteDemo.stop`` (PostgreSQL, which ``pg_ctl`` detaches, by ``pg_ctl stop``). The simulated
lines themselves are one plant process (``python -m simulators.site --plant PLAN.json``): up to 5 OPC UA servers in
one event loop, each line's faults at its times.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import hashlib
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from factory_copilot.config import SIMULATED_LINE, Roles, load_line
from factory_copilot.errors import GiveUp
from factory_copilot.names import DEFAULT_PREFIX
from factory_copilot.plumbing.broker import MosquittoBroker
from factory_copilot.plumbing.broker_site import Account, Bridge, write_site

# faults the simulated line shows within a minute or two at severity 2 and a 20 s ramp; each line takes two in turn
FAULTS = ["pump_cavitation", "belt_slip", "motor_overload", "air_leak", "heater_degradation", "stuck_sensor",
          "clogged_filter", "bearing_wear"]
LINES_PER_PLANT = 5  # simulated lines a plant process serves (bench/site.py: more fall behind on 2 cores)
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # holds simulators/ (a checkout: bench/, tests/ too)
PG_PACKAGE = "postgresql"  # Debian's package with /usr/lib/postgresql/<version>/bin


def line_name(k: int) -> str:
    return f"line-{k:02d}"


def line_role(site: str, k: int) -> str:
    """Line ``k``'s PostgreSQL role (``store grant-line`` binds it to the line: row-level security)."""
    return f"{site}_{line_name(k)}".replace("-", "_")


_taken: set[int] = set()


def own_port() -> int:
    """A free loopback port below the kernel's ephemeral range, never given twice in a run: with many servers'
    ports chosen before they bind, a port from free_port() may meanwhile be some client's outgoing port."""
    while True:
        port = random.randint(20000, 32000)
        if port in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port


def child_env(**extra: str) -> dict[str, str]:
    """The environment of the site's Python processes: this runtime and simulators/ importable."""
    import factory_copilot

    paths = [str(Path(factory_copilot.__file__).resolve().parents[1]), str(SOURCE_ROOT)]
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([old] if old else [])), **extra}


def fault_plan(k: int, seconds: float) -> list[dict]:
    """Two faults on line ``k``, different lines at different times: the first in the window's first third, the
    second a third later, each repaired after a quarter of the window (at least a minute)."""
    lasts = max(60.0, seconds / 4)
    first = 5.0 + (k * 7.3) % max(1.0, seconds / 3)
    return [{"fault": FAULTS[k % len(FAULTS)], "at_s": first, "lasts_s": lasts},
            {"fault": FAULTS[(k + 3) % len(FAULTS)], "at_s": first + seconds / 3, "lasts_s": lasts}]


# ---- PostgreSQL: one cluster of the site's own ----------------------------------------------------------------------


class PostgresMissing(RuntimeError):
    pass


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian's layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _postgres_may_enter(folder: Path) -> bool:
    """As root the cluster runs as ``postgres``: can that user reach ``folder`` (every parent searchable)?"""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    return subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(probe)],
                          capture_output=True).returncode == 0


class SitePostgres:
    """A PostgreSQL cluster in ``folder`` (initdb on first use), served on 127.0.0.1:``port`` with trust on loopback
    and its socket in its own folder; ``stop()`` takes it down. As root it runs as the ``postgres`` user (initdb
    refuses root); where that user cannot reach ``folder`` the cluster goes to the temp folder instead."""

    def __init__(self, folder: Path, port: int | None = None):
        bindir = pg_bin()
        if bindir is None:
            raise PostgresMissing(f"PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                                  f"apt-get install {PG_PACKAGE} (its server binaries; the service need not run)")
        self.bindir = bindir
        self._as: list[str] = []
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        folder = Path(folder).resolve()
        if os.geteuid() == 0:
            self._as, self.user = ["runuser", "-u", "postgres", "--"], "postgres"
            if not _postgres_may_enter(folder):
                digest = hashlib.sha1(str(folder).encode()).hexdigest()[:10]
                folder = Path(tempfile.gettempdir()) / f"factory-copilot-pg-{digest}"
        self.root = folder
        self.data = folder / "data"
        self.port = port or own_port()

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self._as, str(self.bindir / tool), *args], check=check, capture_output=True,
                              text=True, timeout=120)

    def start(self) -> "SitePostgres":
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-sync")
        if self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0:
            self.stop()  # left running by a run that was killed: ours, on some other port
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c full_page_writes=off"
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", opts, "-w",
                         "start", check=False)
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start in {self.data}: {done.stdout.strip()} {done.stderr.strip()} "
                               f"(see {self.root / 'server.log'})")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def url(self, db: str = "postgres", role: str | None = None) -> str:
        """``role`` (default: the cluster's superuser, which owns what it creates) on database ``db``."""
        return f"postgresql://{role or self.user}@127.0.0.1:{self.port}/{db}"

    def database(self, name: str, fresh: bool = True) -> str:
        """The URL of database ``name``, made now (dropped first when ``fresh``)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            if fresh:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def rows_per_line(url: str, tables: tuple[str, ...] = ("alarms", "alarm_events", "diagnoses")) -> dict[str, dict]:
    """``{line: {table: rows}}`` of the site's store, and ``{line: {"alarm_ids": [...]}}`` of its alarms."""
    import psycopg

    out: dict[str, dict] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for table in tables:
            try:
                for line, n in conn.execute(f"SELECT line, count(*) FROM {table} GROUP BY line").fetchall():
                    out.setdefault(line, {})[table] = int(n)
            except psycopg.errors.UndefinedTable:
                pass  # no line has written yet
        try:
            for line, alarm_id in conn.execute("SELECT line, alarm_id FROM alarms").fetchall():
                out.setdefault(line, {}).setdefault("alarm_ids", []).append(alarm_id)
        except psycopg.errors.UndefinedTable:
            pass
    return out


# ---- MQTT: who the site's brokers know, and a listener --------------------------------------------------------------


def site_accounts(explainers: int = 2) -> list[Account]:
    """The site broker's users, with fresh passwords: the edges' bridge, the lines' services (their pool),
    a reader (SCADA, the demo's own listener), the explainers, the site page and two people for its log-in."""
    def pw() -> str:
        return secrets.token_urlsafe(12)
    return [Account("edge-bridge", "bridge", pw(), True), Account("factory-copilot", "service", pw(), True),
            Account("scada", "reader", pw(), True), *(Account(f"pool-{i}", "explainer", pw(), True)
                                                      for i in range(1, explainers + 1)),
            Account("dashboard", "dashboard", pw(), True), Account("ann", "person", pw(), True),
            Account("sam", "person", pw(), True)]


def password(accounts: list[Account], name: str) -> str:
    return next(a.password for a in accounts if a.name == name)


def start_site_broker(folder: Path, accounts: list[Account], port: int | None = None) -> MosquittoBroker:
    """The site broker as ``broker init`` writes it: TLS (a site CA made here), password file, per-user ACL."""
    files = write_site(folder, accounts, bind="127.0.0.1", port=port or own_port(), tls=True,
                       hostnames=["127.0.0.1"], max_queued=1_000_000)
    return MosquittoBroker(site=files).start()


def start_edge_broker(folder: Path, site: str, line: str, site_port: int, ca_file: Path, bridge_password: str,
                      service_password: str, port: int | None = None) -> MosquittoBroker:
    """A line's edge broker (the line's service its one user, on loopback) bridged to the site broker over TLS."""
    bridge = Bridge.parse(f"127.0.0.1:{site_port}", "edge-bridge", bridge_password, [f"{site}/{line}"], str(ca_file))
    files = write_site(folder, [Account("factory-copilot", "service", service_password)], bind="127.0.0.1",
                       port=port or own_port(), tls=False, max_queued=1_000_000, bridge=bridge)
    return MosquittoBroker(site=files).start()


class Listener:
    """A paho MQTT 5 client that keeps (arrival time, topic, payload) of every message on its topics."""

    def __init__(self, port: int, user: str, secret: str, topics: list[str], ca_file: Path | None = None,
                 name: str = "site-listener", persistent: bool = False):
        """``persistent``: a session the broker keeps an hour (clean_start False), resumed on every reconnect, so
        what was queued for it while it was away is delivered (a site reader that outlives a site broker restart)."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.got: list[tuple[float, str, bytes]] = []
        self.subscribed = threading.Event()
        self.connects = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{os.getpid()}", protocol=paho.MQTTv5)
        self.client.username_pw_set(user, secret)
        if ca_file:
            self.client.tls_set(ca_certs=str(ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)

        def on_connect(c, *a) -> None:
            self.connects += 1
            c.subscribe([(t, 1) for t in topics])
        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.got.append((time.time(), m.topic, bytes(m.payload)))
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.client.reconnect_delay_set(1, 5)
        self.client.connect("127.0.0.1", port, clean_start=False if persistent else paho.MQTT_CLEAN_START_FIRST_ONLY,
                            properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(20):
            self.close()
            raise RuntimeError(f"{name}: no subscription on 127.0.0.1:{port}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---- the lines' files, the plant, the explainers --------------------------------------------------------------------


def line_file(folder: Path, site: str, k: int, edge_port: int, site_port: int, ca_file: Path, pg_url: str,
              detector: Path, service_password: str, pool: bool = True, roles: Roles | None = None,
              pool_password: str | None = None) -> Path:
    """Line ``k``'s file: the simulated line on its own OPC UA port, its edge broker, the site's store and (with
    ``pool``) the site's explainers for its model calls (as the site broker's ``factory-copilot``, its password
    ``pool_password``, else the edge's)."""
    data = load_line(SIMULATED_LINE).model_dump(mode="json")
    data["site"], data["line"] = site, line_name(k)
    data["opcua"]["endpoint"] = f"opc.tcp://127.0.0.1:{own_port()}/factory-copilot/"
    data["mqtt"] = {"host": "127.0.0.1", "port": edge_port, "username": "factory-copilot",
                    "password": service_password}
    data["store"] = {"url": pg_url}
    if roles is not None:
        data["roles"] = roles.model_dump(mode="json")
    copilot = dict(data["service"]["copilot"])
    if pool:
        copilot["pool"] = {"mqtt": {"host": "127.0.0.1", "port": site_port, "tls": True, "ca_file": str(ca_file),
                                    "username": "factory-copilot", "password": pool_password or service_password,
                                    "client_id": f"pool-{site}-{line_name(k)}"},
                           "lease_s": 10, "deadline_s": 120}
    data["service"].update({"source": "opcua", "state_dir": str(folder / "state"), "detector": str(detector),
                            "health_port": own_port(), "copilot": copilot})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "line.yaml"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the service's password
    with os.fdopen(fd, "w") as f:
        f.write(yaml.safe_dump(data, sort_keys=False))
    return path


async def plant_main(config_path: Path) -> None:
    """A plant process: the simulated lines of ``config_path``, each on its own OPC UA server; after ``go`` on stdin,
    each line's faults at their times (seconds after go). Prints ``ready`` and one JSON line per fault injected."""
    from factory_copilot.plumbing.signals import stop_on_signals
    from simulators import FaultScenario, ModeSchedule, SimulatedLine
    from simulators.opcua_server import LineServer

    plan = json.loads(config_path.read_text())
    stop = stop_on_signals()
    sims, servers, tasks = [], [], []
    for entry in plan:
        line = load_line(entry["line_file"])
        sim = SimulatedLine(line, seed=11 + entry["index"], dt_s=1.0, schedule=ModeSchedule.running(startup_s=120),
                            start_ts=time.time() - 600)
        sim.steps(600)  # start-up is over before the service connects
        servers.append(await LineServer(line, entry["endpoint"],
                                        pki_dir=config_path.parent / f"pki-{entry['index']}").start())
        sims.append(sim)
    # every line stepped from now on, once all servers are up: a line stepping while the next servers start (seconds
    # each) falls seconds behind, and its readings, stamped that old, are late for its detector (all stale)
    for sim, server in zip(sims, servers):
        tasks.append(asyncio.create_task(step_line(sim, server, stop)))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    go = loop.run_in_executor(None, sys.stdin.readline)
    await asyncio.wait([go, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)

    def inject(sim, entry, fault) -> None:
        sim.inject(FaultScenario(fault["fault"], start_s=0.0, end_s=fault["lasts_s"], severity=2.0, ramp_s=20.0))
        print(json.dumps({"line": entry["line"], "fault": fault["fault"], "at": time.time()}), flush=True)

    if go.done():
        for sim, entry in zip(sims, plan):
            for fault in entry["faults"]:
                loop.call_later(fault["at_s"], inject, sim, entry, fault)
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)
    for server in servers:
        await server.stop()
    os._exit(0)  # the thread still reading stdin (stopped before go) would hold the interpreter's exit


async def step_line(sim, server, stop: asyncio.Event) -> None:
    """One simulated line at 1 Hz, each step stamped with the wall clock as a PLC stamps its samples (bench/latency.py):
    a plant process that falls behind samples less often, its lines' clocks do not fall behind (run_simulation's
    would, and the alarms' times with them)."""
    next_due = time.monotonic()
    while not stop.is_set():
        sim.start_ts = time.time() - (sim.t + sim.dt_s)
        await server.write(sim.step())
        next_due = max(next_due + sim.dt_s, time.monotonic())
        try:
            await asyncio.wait_for(stop.wait(), next_due - time.monotonic())
        except TimeoutError:
            pass


class Plant:
    """The plant processes serving the lines of ``plans`` (``LINES_PER_PLANT`` each); ``go()`` starts the faults."""

    def __init__(self, plans: list[dict], folder: Path):
        self.procs: list[subprocess.Popen] = []
        self.injected: list[dict] = []
        for i in range(0, len(plans), LINES_PER_PLANT):
            cfg = folder / f"plant-{i // LINES_PER_PLANT}.json"
            cfg.write_text(json.dumps(plans[i:i + LINES_PER_PLANT]))
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "simulators.site", "--plant", str(cfg)], env=child_env(), cwd=SOURCE_ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(folder / f"{cfg.stem}.log", "w"),
                text=True, start_new_session=True))
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a plant process did not start (see {folder}/plant-*.log)")
            threading.Thread(target=self._read, args=(p,), daemon=True).start()

    def _read(self, p: subprocess.Popen) -> None:
        for ln in p.stdout:
            try:
                self.injected.append(json.loads(ln))
            except ValueError:
                pass

    def go(self) -> None:
        for p in self.procs:
            p.stdin.write("go\n")
            p.stdin.flush()

    def stop(self) -> None:
        stop_all(self.procs, signal.SIGTERM, 30)


def start_explainer(site_port: int, ca_file: Path, model: Path | None, site: str, name: str, secret: str,
                    threads: int = 1, log_file: Path | None = None, openai_url: str | None = None) -> subprocess.Popen:
    """``factory-copilot explainer`` on the site broker as ``name`` (its password in the environment, not argv),
    on the GGUF ``model`` or the server at ``openai_url``; returned once it takes jobs."""
    serves = ["--model", str(model), "--threads", str(threads)] if model else ["--openai-url", str(openai_url)]
    proc = subprocess.Popen([sys.executable, "-m", "factory_copilot.cli", "explainer", "--broker",
                             f"mqtts://127.0.0.1:{site_port}", "--site", site, *serves, "--name", name, "--username",
                             name, "--ca-file", str(ca_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=child_env(FACTORY_COPILOT_MQTT_PASSWORD=secret))
    ready = threading.Event()
    log = open(log_file, "w") if log_file else None

    def read() -> None:
        for line in proc.stderr:
            if log:
                log.write(line)
                log.flush()
            if "taking jobs" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 180
    while not ready.wait(0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_all([proc], signal.SIGKILL, 5)
            raise RuntimeError(f"explainer {name} did not start" + (f" (see {log_file})" if log_file else ""))
    return proc


def stop_explainer(proc: subprocess.Popen) -> dict:
    """SIGTERM; the counters it prints as it stops (done, expired, refused)."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    found = [ln for ln in (out or "").splitlines() if ln.startswith("{")]
    return json.loads(found[-1]) if found else {}


def stop_all(procs: list[subprocess.Popen], sig: int = signal.SIGTERM, wait_s: float = 30.0) -> None:
    """``sig`` to each process still running, then each waited for (killed after ``wait_s``)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.monotonic() + wait_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


# ---- the demo: ``factory-copilot demo --site N`` --------------------------------------------------------------------


DEMO_SITE = "demo-site"
DEMO_DB = "factory_copilot_site"


@dataclass
class SiteDemo:
    """What ``demo --site`` started, so that ``stop()`` ends all of it, in order."""

    state: Path
    n: int
    site: str = DEMO_SITE
    brokers: list[MosquittoBroker] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)
    services: list[subprocess.Popen] = field(default_factory=list)
    explainers: list[subprocess.Popen] = field(default_factory=list)
    others: list[subprocess.Popen] = field(default_factory=list)  # the dashboard
    plant: Plant | None = None
    postgres: SitePostgres | None = None
    pg_url: str | None = None  # the tables' owner's
    reader_url: str | None = None  # a site reader's: every line's rows, no writes
    at_site: Listener | None = None
    at_edges: list[Listener] = field(default_factory=list)
    lines: list[Path] = field(default_factory=list)
    explainers_done: list[dict] = field(default_factory=list)

    def stop(self) -> None:
        """The dashboard, the lines' services (they write what they hold), the plant, the explainers, the
        listeners, the brokers, PostgreSQL."""
        stop_all(self.others, signal.SIGTERM, 10)
        stop_all(self.services, signal.SIGTERM, 60)
        if self.plant:
            self.plant.stop()
        self.explainers_done += [stop_explainer(p) for p in self.explainers if p.poll() is None]
        self.explainers.clear()
        for lst in self.listeners:
            lst.close()
        self.listeners.clear()
        for b in reversed(self.brokers):
            b.stop()
        self.brokers.clear()
        if self.postgres:
            self.postgres.stop()


def analyse(demo: SiteDemo, stored: dict[str, dict]) -> dict:
    """Per line: alarms its service raised (its edge broker), those seen at the site broker, the pool's model
    diagnoses at the site, and the rows the site's PostgreSQL holds for it."""
    raised_edge: dict[str, set] = {line_name(k): set() for k in range(1, demo.n + 1)}
    for lst in demo.at_edges:
        for _, topic, payload in list(lst.got):
            e = json.loads(payload) if payload else {}
            if e.get("event") == "raised":
                raised_edge.setdefault(e["line"], set()).add(e["alarm_id"])
    raised_site: dict[str, set] = {k: set() for k in raised_edge}
    model: dict[str, set] = {k: set() for k in raised_edge}
    for _, topic, payload in list(demo.at_site.got if demo.at_site else []):
        body = json.loads(payload) if payload else {}
        if topic.endswith("/events") and body.get("event") == "raised":
            raised_site.setdefault(body["line"], set()).add(body["alarm_id"])
        elif "/diagnosis/" in topic and body.get("source") == "model":
            model.setdefault(body["line"], set()).add((body["alarm_id"], body.get("created_at")))
    per_line = {}
    for line, ids in raised_edge.items():
        rows = stored.get(f"{demo.site}/{line}") or stored.get(line) or {}
        in_pg = set(rows.get("alarm_ids", []))
        per_line[line] = {
            "alarms_raised": len(ids), "alarms_at_site": len(ids & raised_site[line]),
            "alarms_stored": len(ids & in_pg), "model_diagnoses_from_pool": len(model[line]),
            "postgres_rows": {t: rows.get(t, 0) for t in ("alarms", "alarm_events", "diagnoses")},
            "ok": bool(ids) and ids <= raised_site[line] and ids <= in_pg,
        }
    return per_line


def _stored(demo: SiteDemo) -> dict:
    try:
        return rows_per_line(demo.reader_url)
    except Exception as exc:  # the summary says so rather than fail
        return {"error": {"message": str(exc)}}


def settle(demo: SiteDemo, wait_s: float, stop: threading.Event | None = None) -> tuple[dict, dict]:
    """Until every alarm an edge saw is at the site and in PostgreSQL, or ``wait_s``: (per line, rows)."""
    deadline = time.monotonic() + wait_s
    while True:
        stored = _stored(demo)
        per_line = analyse(demo, stored)
        if all(v["ok"] for v in per_line.values()) or time.monotonic() > deadline:
            return per_line, stored
        time.sleep(1.0)


def start_demo(demo: SiteDemo, args: argparse.Namespace, detector: Path, model: str | None,
               stop: threading.Event) -> None:
    """Everything of the site, each piece once the one it needs answers; ``stop`` cuts the start short."""
    from factory_copilot.store.roles import grant_line, grant_reader
    from simulators.demo import DEMO_ROLES

    state = demo.state
    demo.postgres = SitePostgres(state / "postgres").start()
    demo.pg_url = demo.postgres.database(DEMO_DB, fresh=not args.keep_state)
    # as a site sets it up: the owner makes the tables, a role per line bound to its line, a site reader
    line_urls = []
    for k in range(1, demo.n + 1):
        grant_line(demo.pg_url, f"{demo.site}/{line_name(k)}", line_role(demo.site, k))
        line_urls.append(demo.postgres.url(DEMO_DB, line_role(demo.site, k)))
    grant_reader(demo.pg_url, "site_reader")
    demo.reader_url = demo.postgres.url(DEMO_DB, "site_reader")
    print(f"PostgreSQL: {demo.reader_url} (a site reader; each line its own role, {line_role(demo.site, 1)} ...; "
          f"cluster in {demo.postgres.root})", flush=True)
    accounts = site_accounts()
    site = start_site_broker(state / "site-broker", accounts)
    demo.brokers.append(site)
    ca = site.site.ca_file
    print(f"Site broker: mqtts://127.0.0.1:{site.port} (TLS, CA {ca}; users in {site.site.credentials})", flush=True)
    plans = []
    for k in range(1, demo.n + 1):
        if stop.is_set():
            return
        svc_pw = secrets.token_urlsafe(12)
        folder = state / line_name(k)
        edge = start_edge_broker(folder / "edge-broker", demo.site, line_name(k), site.port, ca,
                                 password(accounts, "edge-bridge"), svc_pw)
        demo.brokers.append(edge)
        path = line_file(folder, demo.site, k, edge.port, site.port, ca, line_urls[k - 1], detector, svc_pw,
                         pool=bool(model or args.openai_url), roles=DEMO_ROLES,
                         pool_password=password(accounts, "factory-copilot"))
        demo.lines.append(path)
        demo.at_edges.append(Listener(edge.port, "factory-copilot", svc_pw,
                                      [f"{DEFAULT_PREFIX}/{demo.site}/{line_name(k)}/events"], name=f"edge-{k:02d}"))
        demo.listeners.append(demo.at_edges[-1])
        entry = yaml.safe_load(path.read_text())
        plans.append({"index": k, "line": line_name(k), "line_file": str(path), "endpoint": entry["opcua"]["endpoint"],
                      "faults": fault_plan(k, args.window)})
    base = f"{DEFAULT_PREFIX}/{demo.site}"
    demo.at_site = Listener(site.port, "scada", password(accounts, "scada"),
                            [f"{base}/+/events", f"{base}/+/+/diagnosis/+", f"{base}/+/status"], ca, "site-reader")
    demo.listeners.append(demo.at_site)
    if model or args.openai_url:
        for i in (1, 2):
            demo.explainers.append(start_explainer(site.port, ca, Path(model) if model else None, demo.site,
                                                   f"pool-{i}", password(accounts, f"pool-{i}"),
                                                   threads=args.threads or 1, log_file=state / f"explainer-{i}.log",
                                                   openai_url=args.openai_url))
        print(f"Explainers: pool-1, pool-2 on {model or args.openai_url}", flush=True)
    else:
        print("Explainers: none (no model): the lines explain their alarms from the runbooks", flush=True)
    demo.plant = Plant(plans, state)
    for k, path in enumerate(demo.lines, start=1):
        log = open(path.parent / "service.log", "w")
        demo.services.append(subprocess.Popen(
            [sys.executable, "-m", "factory_copilot.cli", "--log-level", "warning", "run", "--config", str(path)],
            env=child_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    names = {line_name(k) for k in range(1, demo.n + 1)}
    deadline = time.monotonic() + 120 + 10 * demo.n
    while not stop.is_set():
        online = {json.loads(p)["line"] for _, t, p in list(demo.at_site.got)
                  if t.endswith("/status") and p and json.loads(p).get("state") == "online"}
        if online >= names:
            break
        dead = [line_name(k + 1) for k, p in enumerate(demo.services) if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"{', '.join(dead or sorted(names - online))} did not come online at the site "
                               f"(see {state}/line-*/service.log)")
        time.sleep(0.5)
    print(f"{demo.n} lines online at the site broker; faults from now on: "
          + "; ".join(f"{p['line']} {f['fault']} at +{f['at_s']:.0f} s" for p in plans for f in p["faults"]),
          flush=True)


def start_site_page(demo: SiteDemo, args: argparse.Namespace) -> subprocess.Popen:
    """``factory-copilot dashboard --site``: the lines' files as the site sees them (the site broker, TLS)."""
    from factory_copilot.store.cli import dashboard_command

    site = demo.brokers[0].site
    creds = {u["name"]: u["password"] for u in yaml.safe_load(site.credentials.read_text())["users"]}
    views = []
    for path in demo.lines:
        data = yaml.safe_load(path.read_text())
        data["mqtt"] = {"host": "127.0.0.1", "port": site.port, "tls": True, "ca_file": str(site.ca_file)}
        view = path.parent / "site-view.yaml"
        view.write_text(yaml.safe_dump(data, sort_keys=False))
        views.append(view)
    cmd = dashboard_command(data["store"]["url"], views[0], "127.0.0.1", site.port, "5", args.dashboard_port,
                            site=views)
    env = child_env(FACTORY_COPILOT_MQTT_USERNAME="dashboard", FACTORY_COPILOT_MQTT_PASSWORD=creds["dashboard"],
                    FACTORY_COPILOT_DASHBOARD_USERS=str(site.logins))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    print(f"Site page: http://127.0.0.1:{args.dashboard_port}  (log in as ann / {creds['ann']} or sam / "
          f"{creds['sam']}; Ctrl-C stops the site)", flush=True)
    return proc


def run_site_demo(args: argparse.Namespace) -> int:
    """``demo --site N``: the site on this box until the duration or Ctrl-C / SIGTERM, then all of it stopped."""
    from simulators.demo import demo_model, forget_last_run, trained_models

    if not 1 <= args.site <= 20:
        print(f"error: --site {args.site}: 1 to 20 lines (about 10 is what a laptop carries)", file=sys.stderr)
        return 2
    from factory_copilot.plumbing.broker import MOSQUITTO

    if MOSQUITTO is None:
        print("error: demo --site needs Mosquitto (apt-get install mosquitto): the site is its brokers",
              file=sys.stderr)
        return 2
    if pg_bin() is None:
        print(f"error: demo --site needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin): apt-get install "
              f"{PG_PACKAGE}", file=sys.stderr)
        return 2
    args.window = args.duration or 300.0
    state = Path(args.state_dir).resolve() / "site"
    if not args.keep_state:  # a fresh site: the last run's stores, journals, outboxes and brokers' retained messages
        for folder in state.glob("line-*"):
            forget_last_run(folder / "state")
            shutil.rmtree(folder / "edge-broker" / "data", ignore_errors=True)
        shutil.rmtree(state / "site-broker" / "data", ignore_errors=True)
    state.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    demo = SiteDemo(state, args.site)
    code = 0
    try:
        detector = Path(args.state_dir).resolve() / "detector.joblib"  # the one-line demo's, for every line
        trained_models(load_line(SIMULATED_LINE), detector, args.train_hours, args.seed)
        model = demo_model(args)
        start_demo(demo, args, detector, model, stop)
        if not args.headless and not stop.is_set():
            demo.others.append(start_site_page(demo, args))
        if demo.plant and not stop.is_set():
            demo.plant.go()
        started = time.time()
        stop.wait(args.duration)
        took = time.time() - started
        print("stopping the site ...", flush=True)
        per_line, stored = settle(demo, 5.0 if stop.is_set() else 30.0)  # after Ctrl-C, not long
        demo.stop()
        ok = all(v["ok"] for v in per_line.values())
        result = {"site": demo.site, "lines": demo.n, "duration_s": round(took, 1),
                  "model": model or args.openai_url, "faults_injected": demo.plant.injected if demo.plant else [],
                  "explainers_done": [d.get("done") for d in demo.explainers_done],
                  "postgres": {"url": demo.reader_url, "folder": str(demo.postgres.root) if demo.postgres else None},
                  "per_line": per_line, "all_lines_at_site_and_stored": ok}
        if args.headless:
            print(json.dumps(result, indent=2, default=str), flush=True)
        else:
            print("Site stopped: " + ", ".join(f"{k} {v['alarms_raised']} alarms ({v['alarms_at_site']} at the "
                                               f"site, {v['alarms_stored']} stored)" for k, v in per_line.items()))
        code = 0 if ok else 1
    except (RuntimeError, PostgresMissing, GiveUp) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        demo.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="a plant process of the site (simulators/site.py)")
    ap.add_argument("--plant", type=Path, required=True)
    asyncio.run(plant_main(ap.parse_args().plant))
