"""The ``factory-copilot simulate`` command: serve the simulated line over OPC UA and MQTT, with injected faults."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from factory_copilot.plumbing.broker import ensure_broker
from factory_copilot.config import SIMULATED_LINE, MqttConnection, load_line
from factory_copilot.cli import parse_user
from factory_copilot.plumbing.signals import stop_on_signals

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="run the simulated packaging line as an OPC UA server and MQTT publisher",
        description="Run the simulated line: an OPC UA server (asyncua) and JSON over MQTT, with injectable faults.",
    )
    p.add_argument("--line", default=str(SIMULATED_LINE), help="line file (default: the simulated packaging line)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per wall second (0: as fast as possible); readings carry simulation time "
        "(start + t), so above 1 they run ahead of the wall clock, in step with the ground truth",
    )
    p.add_argument("--dt", type=float, default=None, help="simulated seconds per step (default: the line's sampling interval)")
    p.add_argument("--duration", type=float, default=None, help="simulated seconds to run (default: until Ctrl-C)")
    p.add_argument("--schedule", choices=["default", "running"], default="default", help="operating-mode schedule")
    p.add_argument("--fault", action="append", default=[], help="fault id to inject (repeatable; see seeds/faults.yaml)")
    p.add_argument("--fault-at", action="append", type=float, default=[], help="simulated second of each fault's onset (default 600)")
    p.add_argument("--fault-severity", type=float, default=1.0)
    p.add_argument("--ground-truth", help="write the injected faults as JSON lines here")
    p.add_argument("--opcua-endpoint", help="default: the line file's opcua.endpoint")
    p.add_argument("--no-opcua", action="store_true")
    p.add_argument("--security", choices=["none", "sign-encrypt", "both"], default="none")
    p.add_argument("--user", action="append", type=parse_user, default=[], metavar="NAME:PASSWORD", help="OPC UA user (repeatable)")
    p.add_argument("--pki-dir", default=".factory-copilot/pki/simulator", help="server certificate (made on first start); trusted/ holds client certificates")
    p.add_argument("--mqtt-host", help="default: the line file's mqtt.host")
    p.add_argument("--mqtt-port", type=int, help="default: the line file's mqtt.port")
    p.add_argument("--mqtt-qos", type=int, choices=[0, 1], default=1)
    p.add_argument("--no-mqtt", action="store_true")
    p.add_argument("--no-embedded-broker", action="store_true", help="do not start an embedded broker when none answers")
    p.set_defaults(func=simulate)


async def simulate(args: argparse.Namespace) -> int:
    # submodules, not the package: an editable install may see simulators/ as a namespace package
    from simulators.line import SimulatedLine
    from simulators.scenarios import FaultScenario, ModeSchedule
    from simulators.mqtt_publisher import ReadingPublisher
    from simulators.opcua_server import LineServer
    from simulators.runner import run_simulation

    line = load_line(args.line)
    if args.no_opcua and args.no_mqtt:
        log.error("--no-opcua and --no-mqtt together leave nothing to serve")
        return 2
    scenarios = []
    for i, fault in enumerate(args.fault):
        at = args.fault_at[i] if i < len(args.fault_at) else (args.fault_at[-1] if args.fault_at else 600.0)
        try:
            scenarios.append(FaultScenario(fault, start_s=at, severity=args.fault_severity))
        except ValueError as exc:
            log.error("--fault %s: %s", fault, exc)
            return 2
    schedule = ModeSchedule.running() if args.schedule == "running" else ModeSchedule.default()
    sim = SimulatedLine(line, seed=args.seed, dt_s=args.dt or line.sampling_interval_s, schedule=schedule, scenarios=scenarios, start_ts=time.time())

    server = publisher = broker = None
    stop = stop_on_signals()
    try:
        if not args.no_opcua:
            endpoint = args.opcua_endpoint or (line.opcua.endpoint if line.opcua else "opc.tcp://127.0.0.1:4840/factory-copilot/")
            pki = Path(args.pki_dir)
            trusted_dir = pki / "trusted"
            trusted = sorted(p for p in trusted_dir.glob("*") if p.suffix in (".der", ".pem")) if trusted_dir.is_dir() else []
            if args.security != "none" and not trusted:
                log.warning("no client certificates in %s: accepting any client certificate (demo mode)", trusted_dir)
            server = await LineServer(
                line,
                endpoint,
                security=args.security,
                users=dict(args.user),
                pki_dir=pki,
                trusted_clients=trusted or None,
            ).start()
        if not args.no_mqtt:
            base = line.mqtt or MqttConnection()
            conn = base.model_copy(update={k: v for k, v in {"host": args.mqtt_host, "port": args.mqtt_port}.items() if v is not None})
            if not args.no_embedded_broker:
                broker = ensure_broker(conn.host, conn.port)
                if broker is not None and conn.protocol == "5":
                    conn = conn.model_copy(update={"protocol": "3.1.1"})  # amqtt speaks 3.1.1 only
            publisher = await ReadingPublisher(line, conn, qos=args.mqtt_qos).start(wait_s=5)
        log.info(
            "simulating %s/%s: seed %d, speed %g, %d fault(s)%s",
            line.site,
            line.line,
            args.seed,
            args.speed,
            len(scenarios),
            "".join(f", {s.fault_type} at {s.start_s:g} s" for s in scenarios),
        )
        stats = await run_simulation(
            sim,
            speed=args.speed,
            duration_s=args.duration,
            server=server,
            publisher=publisher,
            stop=stop,
            ground_truth=args.ground_truth,
        )
        log.info("simulation ended: %s", stats.as_dict())
    finally:
        if publisher is not None:
            await publisher.stop()
        if server is not None:
            await server.stop()
        if broker is not None:
            broker.stop()
    return 0
