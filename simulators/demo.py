"""The one-command demo: a simulated line, a broker, the service and the dashboard, then a fault.

It starts its own Mosquitto, configured as ``broker init`` configures a site's (password file,
per-user ACL, persistence in the demo's state folder) for generated demo users on 127.0.0.1
(amqtt, anonymous, only where Mosquitto is not installed), trains the detector on
simulated history (faster than real time, with a progress bar), serves the simulated
line over OPC UA or as a Sparkplug B edge node (``--source sparkplug``), runs the service
against it, opens the dashboard, and injects a fault so the operator sees an alarm, its
diagnosis and the fix within about a minute. ``--headless --duration N`` prints a JSON
summary instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from factory_copilot.catalogue import load_faults
from factory_copilot.cli import command as cli_command
from factory_copilot.config import (
    SIMULATED_FAULTS,
    SIMULATED_LINE,
    LineConfig,
    MqttConnection,
    Roles,
    demo_state_dir,
    load_line,
)
from factory_copilot.copilot.choice import backend_from_settings
from factory_copilot.copilot.station import EXPLAIN_EVENTS
from factory_copilot.detect.persist import (
    ModelMismatchError,
    TrainedDetector,
    load_detector,
    save_detector,
)
from factory_copilot.plumbing.broker import (
    MOSQUITTO,
    Broker,
    MosquittoBroker,
    broker_reachable,
    free_port,
    start_broker,
)
from factory_copilot.plumbing.broker_site import SiteFiles, demo_accounts, write_site
from factory_copilot.plumbing.signals import stop_on_signals
from factory_copilot.service import LineService, ServicePaths
from factory_copilot.store.cli import dashboard_command

log = logging.getLogger(__name__)

# faults that show within about a minute when they grow over DEMO_RAMP_S
DEMO_FAULTS = ("pump_cavitation", "air_leak", "heater_degradation", "clogged_filter", "motor_overload", "bearing_wear",
               "belt_slip", "sensor_drift", "stuck_sensor")
DEMO_RAMP_S = 30.0


# who may do what on the demo line: the demo's generated people (plumbing/broker_site.demo_accounts)
DEMO_ROLES = Roles.model_validate({"operators": {"users": ["ann", "node-red"], "shelve_max_s": 1800},
                                   "supervisors": {"users": ["sam"], "shelve_max_s": 8 * 3600}})


def demo_line(line: LineConfig, opcua_port: int, mqtt: MqttConnection) -> LineConfig:
    """The simulated line's file, pointed at this demo's own OPC UA port and broker, with the demo's roles."""
    assert line.opcua is not None
    opcua = line.opcua.model_copy(update={"endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/factory-copilot/"})
    return line.model_copy(update={"opcua": opcua, "mqtt": mqtt, "roles": line.roles or DEMO_ROLES})


def demo_opcua_port(requested: int | None) -> int:
    """The simulated line's OPC UA port: the requested one (it must be free on 127.0.0.1), else a free one."""
    if requested is None:
        return free_port()
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", requested))
        except OSError as exc:
            raise ValueError(f"--opcua-port {requested}: 127.0.0.1:{requested} is taken ({exc.strerror}); "
                             "choose a free port or leave the flag out for a free one") from None
    return requested


def forget_last_run(state: Path) -> None:
    """A fresh demo: the last run's store, alarm journal, outbox and its broker's retained messages go.

    The broker's persistence goes too, before the broker starts: else it hands a subscriber the last
    run's alarms as active until the new service clears them (issue 25).
    """
    paths = ServicePaths(state)
    for p in (paths.store, paths.alarms, paths.outbox):
        for suffix in ("", "-wal", "-shm"):
            Path(str(p) + suffix).unlink(missing_ok=True)
    broker_dir = state / "mosquitto"
    shutil.rmtree(broker_dir / "data", ignore_errors=True)  # the demo's own Mosquitto (broker init layout)
    (broker_dir / "mosquitto.db").unlink(missing_ok=True)  # the plain generated configuration's


def demo_broker(requested: int | None, state: Path) -> tuple[Broker | None, int, SiteFiles | None]:
    """The demo's broker: its own on 1883 (or a free port when 1883 is taken), or on the requested port.

    Its own is configured as ``broker init`` configures a site's (password file, per-user ACL, persistence),
    with generated demo users, on loopback without TLS. A requested port where a broker already answers is
    used as it is (the user's own broker, anonymous).
    """
    if requested is not None and broker_reachable("127.0.0.1", requested):
        log.info("using the MQTT broker already at 127.0.0.1:%d", requested)
        return None, requested, None
    port = requested or (1883 if not broker_reachable("127.0.0.1", 1883) else free_port())
    if requested is None and port != 1883:
        log.warning("port 1883 is taken: the demo's broker listens on 127.0.0.1:%d (alerts tail --port %d)", port, port)
    if MOSQUITTO is None:
        return start_broker(port, state / "mosquitto"), port, None  # amqtt, anonymous, with its warning
    site = write_site(state / "mosquitto", demo_accounts(), bind="127.0.0.1", port=port, tls=False)
    return MosquittoBroker(site=site).start(), port, site


def demo_user(site: SiteFiles | None, name: str) -> tuple[str, str] | None:
    """(name, password) of one of the demo's generated users, from its credentials file."""
    if site is None or site.credentials is None:
        return None
    users = yaml.safe_load(site.credentials.read_text())["users"]
    return next(((u["name"], u["password"]) for u in users if u["name"] == name), None)


def as_user(mqtt: MqttConnection, site: SiteFiles | None, name: str) -> MqttConnection:
    user = demo_user(site, name)
    return mqtt if user is None else mqtt.model_copy(update={"username": user[0], "password": user[1]})


def trained_models(line: LineConfig, path: Path, hours: float, seed: int) -> TrainedDetector:
    """Models for the simulated line: reused from ``path`` when they match the line file, else trained and saved."""
    if path.exists():
        try:
            models = load_detector(path, line)
            log.info("using the detector trained earlier (%s)", path)
            return models
        except ModelMismatchError as exc:
            log.info("retraining: %s", exc)
    print(f"Training the detector on {hours:g} h of simulated normal running and the fault catalogue ...", flush=True)
    # in a child process: training's libraries (scikit-learn, scipy, pandas) and its peak (~300 MB) leave with it,
    # so the first demo serves in what every later one does
    child = multiprocessing.get_context("spawn").Process(target=train_and_save, args=(line, path, hours, seed),
                                                         name="train-detector")
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"training the detector failed (exit code {child.exitcode}); see the lines above")
    return load_detector(path, line)


def train_and_save(line: LineConfig, path: Path, hours: float, seed: int) -> None:
    """Train the simulated line's detector on ``hours`` of simulated normal running and save it to ``path``."""
    from factory_copilot.detect.evaluate import train_models
    from simulators.evaluation import simulated_history

    history = simulated_history(line, seed=seed, normal_hours=hours, progress=True)
    save_detector(path, train_models(line, history, progress=True))


def start_dashboard(paths: ServicePaths, line_path: Path, mqtt: MqttConnection, port: int,
                    site: SiteFiles | None = None) -> subprocess.Popen:
    cmd = dashboard_command(paths.store, line_path, mqtt.host, mqtt.port, mqtt.protocol, port)
    env = dict(os.environ)
    dashboard = demo_user(site, "dashboard")
    if dashboard and site and site.logins:  # its own MQTT account, and the people's log-ins; secrets not in argv
        env.update(FACTORY_COPILOT_MQTT_USERNAME=dashboard[0], FACTORY_COPILOT_MQTT_PASSWORD=dashboard[1],
                   FACTORY_COPILOT_DASHBOARD_USERS=str(site.logins))
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def _p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def latencies(service: LineService, started: float) -> dict[str, float | None]:
    """Reading row -> alarm, and alarm -> diagnosis (model, runbook), from the alarm journal and the store."""
    events = service.engine.audit(since=started)
    raised = {e.alarm_id: e for e in events if e.event == "raised"}
    after_reading = [max(0.0, e.ts - e.alarm.anomaly.ts) for e in raised.values() if e.alarm.anomaly is not None]
    explained: dict[str, list[float]] = {}  # alarm -> the times of the events the copilot explains, in order
    for e in events:
        if e.event in EXPLAIN_EVENTS:
            explained.setdefault(e.alarm_id, []).append(e.ts)
    after_alarm: dict[str, list[float]] = {}
    for d in service.store.diagnoses_since(started):
        # a diagnosis answers the alarm's latest event the copilot explains (raised, realarm, escalated): a
        # re-diagnosis after a realarm is not minutes late for the first raise
        cause = [ts for ts in explained.get(d.alarm_id, []) if ts <= d.created_at]
        if cause and d.alarm_id in raised:
            after_alarm.setdefault(d.origin, []).append(d.created_at - cause[-1])
    return {
        "alarm_after_reading_p50": _p(after_reading, 0.5),
        "alarm_after_reading_max": _p(after_reading, 1.0),
        **{f"diagnosis_after_alarm_{origin}_p50": _p(v, 0.5) for origin, v in after_alarm.items()},
    }


def summary(service: LineService, sim: Any, fault_at: float | None, started: float) -> dict[str, Any]:
    """What the demo did, read before the service stops (the journal and the store are open then)."""
    alarms = service.engine.alarms()
    raised = [a for a in alarms if a.raised_at >= started]
    truth = sim.ground_truth()
    first_fault_alarm = min((a.raised_at for a in raised if a.condition == "fault"), default=None)
    return {
        "duration_s": round(time.time() - started, 1),
        "readings": service.collector.stats()["readings_in"],
        "injected": truth,
        "alarms_raised": [
            {"alarm_id": a.alarm_id, "priority": a.priority.name.lower(), "state": a.state.value, "message": a.message,
             "raised_at": a.raised_at, "parent_id": a.parent_id}  # parent_id: folded under that root, not rung
            for a in raised
        ],
        "detection_delay_s": round(first_fault_alarm - fault_at, 1) if first_fault_alarm and fault_at else None,
        "diagnoses": service.copilot.stats(),
        "latency_s": latencies(service, started),
        "published": service.publisher.stats(),
    }


def demo_model(args: argparse.Namespace) -> str | None:
    """The GGUF the demo explains with: ``--model``, else the default model for this machine (pulled once, verified).

    ``--no-model`` (or ``--openai-url``) skips it. Offline or refused: one line, and the demo runs runbook-only.
    """
    if args.model or args.no_model or args.openai_url:
        return args.model
    from factory_copilot.copilot.model_files import (
        PullError,
        local_default,
        pull_default,
    )

    here = local_default()
    if here is not None:
        print(f"Copilot model: {here}", flush=True)
        return str(here)
    print("Fetching the copilot's model for this machine once (factory-copilot models pull; --no-model skips) ...",
          flush=True)
    try:
        path = pull_default(progress=not args.headless)
    except PullError as exc:
        print(f"No copilot model: {exc}. The demo explains alarms from the runbooks.", flush=True)
        return None
    print(f"Copilot model: {path}", flush=True)
    return str(path)


async def run_demo(args: argparse.Namespace) -> int:
    from simulators import FaultScenario, ModeSchedule, SimulatedLine
    from simulators.opcua_server import LineServer
    from simulators.runner import run_simulation

    if args.fault not in load_faults(SIMULATED_FAULTS):
        print(f"error: unknown fault {args.fault!r}; choose one of {', '.join(load_faults(SIMULATED_FAULTS))}", file=sys.stderr)
        return 2
    try:
        opcua_port = demo_opcua_port(args.opcua_port)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state = Path(args.state_dir)
    paths = ServicePaths(state)
    if not args.keep_state:
        forget_last_run(state)
    state.mkdir(parents=True, exist_ok=True)

    broker, mqtt_port, site = demo_broker(args.mqtt_port, state)
    # amqtt, the last resort, speaks MQTT 3.1.1 only
    open_mqtt = MqttConnection(host="127.0.0.1", port=mqtt_port, protocol=broker.protocol if broker else "5")
    mqtt = as_user(open_mqtt, site, "factory-copilot")  # the service's own account
    base = load_line(SIMULATED_LINE)
    line = demo_line(base, opcua_port, mqtt)
    if args.source == "sparkplug":
        from simulators.sparkplug_node import with_sparkplug_sources

        line = with_sparkplug_sources(line)  # group demo-plant, edge node packaging-1, one device per asset
    viewer = demo_user(site, "viewer")
    login = f" --username {viewer[0]} --password {viewer[1]}" if viewer else ""
    # the next step as it runs in this shell (after the quick start the CLI is in .venv/bin, not on the PATH)
    print(f"MQTT broker: 127.0.0.1:{mqtt_port} ({broker.kind if broker else 'already running'}); "
          f"alarms: {cli_command()} alerts tail --port {mqtt_port}{login}", flush=True)
    if site is not None:
        people = [demo_user(site, name) for name in ("ann", "sam")]
        print("Demo users (passwords new each run; all in " + str(site.credentials) + "): "
              + ", ".join(f"{u[0]} / {u[1]}" for u in people if u) + " (ann operator, sam supervisor)", flush=True)
    models = trained_models(line, paths.detector, args.train_hours, args.seed)

    backend = backend_from_settings(demo_model(args), args.openai_url, n_threads=args.threads,
                                    state_dir=state / "copilot")
    service = LineService(line, models, paths, source=args.source, backend=backend, health_port=args.health_port)
    # start the line already running: its start-up is simulated before serving, faster than real time
    sim = SimulatedLine(line, seed=args.seed + 1000, dt_s=line.sampling_interval_s,
                        schedule=ModeSchedule.running(startup_s=120), start_ts=time.time() - args.warmup_s)
    sim.steps(int(args.warmup_s / sim.dt_s))
    server = edge = None
    if args.source == "sparkplug":
        from simulators.sparkplug_node import SparkplugPublisher

        edge = await SparkplugPublisher(line, as_user(open_mqtt, site, "edge")).start()
    else:
        server = LineServer(line, line.opcua.endpoint, pki_dir=state / "pki-server")
        await server.start()
        print(f"OPC UA server: {line.opcua.endpoint} (the simulated line; --opcua-port to choose)", flush=True)

    stop = stop_on_signals()  # Ctrl-C or the duration: the summary is read, then everything halts
    halt = asyncio.Event()
    dashboard = None
    if not args.headless:
        dashboard = start_dashboard(paths, SIMULATED_LINE, open_mqtt, args.dashboard_port, site)
        print(f"Dashboard: http://127.0.0.1:{args.dashboard_port}  (Ctrl-C stops the demo)", flush=True)
    started = time.time()
    sim.start_ts = started - sim.t  # the warm-up and the start of the servers took time: stamp from now on
    tasks = [
        asyncio.create_task(run_simulation(sim, speed=1.0, server=server, publisher=edge, stop=halt), name="simulator"),
        asyncio.create_task(service.run(halt), name="service"),
    ]
    fault_at: float | None = None
    try:
        await asyncio.wait_for(stop.wait(), args.fault_after)
    except asyncio.TimeoutError:
        injected = sim.inject(FaultScenario(args.fault, start_s=0.0, severity=args.severity, ramp_s=DEMO_RAMP_S))
        fault_at = time.time()
        print(f"Injected {args.fault} on {injected.asset} (grows over {DEMO_RAMP_S:.0f} s); watch for the alarm.",
              flush=True)
    try:
        remaining = None if args.duration is None else max(0.0, args.duration - (time.time() - started))
        await asyncio.wait_for(stop.wait(), remaining)
    except asyncio.TimeoutError:
        pass
    stop.set()
    await service.store_station.drain()
    result = summary(service, sim, fault_at, started)
    halt.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    if server:
        await server.stop()
    if edge:
        await edge.stop()
    if dashboard:
        dashboard.terminate()
        dashboard.wait(10)
    if broker:
        broker.stop()
    if args.headless:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"Demo stopped: {len(result['alarms_raised'])} alarms raised; state kept in {state}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulated line + broker + service + dashboard, then a fault (one command)")
    p.add_argument("--headless", action="store_true", help="no dashboard; print a JSON summary at the end")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C; 120 headless)")
    p.add_argument("--fault", default="pump_cavitation", help="fault to inject (a seeds/faults.yaml id)")
    p.add_argument("--fault-after", type=float, default=20.0, help="seconds of normal running before the fault")
    p.add_argument("--severity", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--train-hours", type=float, default=6.0, help="hours of simulated normal running to train on")
    p.add_argument("--warmup-s", type=float, default=600.0, help="simulated running before serving (start-up done)")
    p.add_argument("--source", choices=["opcua", "sparkplug"], default="opcua",
                   help="how the simulated line is served: an OPC UA server, or a Sparkplug B edge node on the broker")
    p.add_argument("--mqtt-port", type=int, default=None,
                   help="the demo's broker port (default 1883, or a free one when 1883 is taken); a broker already "
                        "answering on a requested port is used as it is")
    p.add_argument("--opcua-port", type=int, default=None,
                   help="the simulated line's OPC UA server port on 127.0.0.1 (default: a free one); must be free")
    p.add_argument("--dashboard-port", type=int, default=8501)
    p.add_argument("--health-port", type=int, default=None)
    p.add_argument("--state-dir", default=str(demo_state_dir()))
    p.add_argument("--keep-state", action="store_true", help="keep alarms and trends of earlier demo runs")
    p.add_argument("--model", help="a Qwen GGUF file; default: the model for this machine, pulled once (models pull)")
    p.add_argument("--no-model", action="store_true", help="runbook-only diagnoses: do not pull or load a model")
    p.add_argument("--threads", type=int, help="llama.cpp threads (default: the service's, the cores the machine leaves idle, at least all but one)")
    p.add_argument("--openai-url", help="an OpenAI-compatible endpoint instead of a local model")
    p.add_argument("--site", type=int, nargs="?", const=3, metavar="N",
                   help="a site on this box instead of one line: N simulated lines (default 3) with their edge "
                        "brokers bridged to a site broker, 2 explainers, PostgreSQL and the site page (docs/site.md)")

    def run(a: argparse.Namespace):
        if a.headless and a.duration is None:
            a.duration = 120.0
        if a.site is not None:
            from simulators.site import run_site_demo

            return run_site_demo(a)
        return run_demo(a)

    p.set_defaults(func=run)
