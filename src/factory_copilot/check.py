"""``factory-copilot check``: everything a first run needs, checked before it, each with what to do when it fails.

1. the line file validates (every mistake named by its path);
2. the trained detector is there and fits the line (which file, trained when, on what);
3. the ports the service serves on are free;
4. the broker alarms go to takes the service's login (its user, password and TLS, as the publish
   station connects): whatever the sources, an alarm that cannot go out is no alarm;
5. each source connects, and every configured signal delivers a sample within a few sampling
   intervals: the silent ones are listed, and so are the MQTT topics near the line's that carry
   data no signal maps (a typo in a topic or a field is the usual cause of a silent signal).

Every FAIL line says what to do about it (`` — fix: ...``).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from collections import Counter
from pathlib import Path

from factory_copilot.collect.station import CollectStation
from factory_copilot.config import LineConfig, LineConfigError, MqttConnection, ServicePaths, load_line
from factory_copilot.detect.persist import ModelMismatchError, load_detector
from factory_copilot.plumbing.broker import broker_reachable
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.mqtt import MqttSession
from factory_copilot.records import Reading, SourceState

OK, FAIL, WARN = "ok  ", "FAIL", "warn"


class Report:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def add(self, status: str, text: str, fix: str | None = None) -> None:
        line = f"{text} — fix: {fix}" if fix else text
        self.lines.append((status, line))
        print(f"[{status}] {line}", flush=True)

    @property
    def failed(self) -> bool:
        return any(s == FAIL for s, _ in self.lines)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def topic_prefixes(line: LineConfig) -> list[str]:
    """The common first levels of the line's MQTT topics, as wildcard subscriptions (``plant/hall-2/#``)."""
    topics = {s.source.mqtt.topic for a in line.assets for s in a.signals if s.source.mqtt}
    prefixes = Counter("/".join(t.split("/")[:2]) for t in topics if "/" in t)
    return [f"{p}/#" for p in prefixes]


async def listen(line: LineConfig, paths: ServicePaths, seconds: float) -> tuple[dict[str, dict], set[str], Counter]:
    """Run the line's collectors for ``seconds``: the signals heard, and the unmapped MQTT topics near the line's."""
    readings: Buffer[Reading | SourceState] = Buffer(1_000_000, "check")
    station = CollectStation(line, readings, pki_dir=paths.pki)
    heard: set[str] = set()
    unmapped: Counter = Counter()
    probe = None
    if "mqtt" in station.collectors and line.mqtt is not None:
        mapped = set(station.collectors["mqtt"].topics)

        def on_message(msg) -> None:
            if msg.topic not in mapped:
                unmapped[msg.topic] += 1

        probe = MqttSession(line.mqtt, role="check", subscriptions=[(p, 0) for p in topic_prefixes(line)],
                            on_message=on_message).start()
    stop = asyncio.Event()
    task = asyncio.create_task(station.run(stop))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            item = await asyncio.wait_for(readings.get(), max(0.01, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            break
        if isinstance(item, Reading):
            heard.add(item.key)
    stats = {kind: c.stats() for kind, c in station.collectors.items()}  # before the stop closes the connections
    stop.set()
    await asyncio.gather(task, return_exceptions=True)
    if probe is not None:
        probe.stop()
    return stats, heard, unmapped


def alerts_broker(line: LineConfig, line_path: Path, timeout_s: float = 10.0) -> tuple[str, str, str | None]:
    """Log in to the broker alarms go to exactly as the publish station does; (status, finding, fix)."""
    conn = line.mqtt or MqttConnection()  # the publisher's default when the line file names no broker
    where = f"{conn.host}:{conn.port}" + (" (TLS)" if conn.tls else "")
    user = repr(conn.username) if conn.username else "anonymous"
    outcome: list[str] = []
    settled = threading.Event()

    def down(why: str) -> None:
        outcome.append(why)
        settled.set()

    session = MqttSession(conn, role="check-alerts", on_up=settled.set, on_down=down, log_every_s=3600.0).start()
    try:
        settled.wait(timeout_s)
        up = session.connected
        refusal = session.last_refusal
    finally:
        session.stop()
    if up:
        return OK, f"alerts broker {where}: logged in as {user}, as the service publishes alarms", None
    if refusal:
        return (FAIL, f"alerts broker {where}: refused the service's login as {user} ({refusal}); no alarm could go out",
                f"set mqtt.username and mqtt.password in {line_path} to the service's account on that broker "
                "(`broker init` wrote it to credentials.yaml), or add the account to the broker's password file and ACL")
    if not broker_reachable(conn.host, conn.port, 2.0):
        return (FAIL, f"alerts broker {where}: nothing answers" + (f" ({outcome[0]})" if outcome else ""),
                f"start the broker, or correct mqtt.host / mqtt.port in {line_path} (a firewall in between?)")
    return (FAIL, f"alerts broker {where}: the port answers but the MQTT connection fails"
                  + (f" ({outcome[0]})" if outcome else f" (no answer within {timeout_s:g} s)"),
            "for a TLS listener set mqtt.tls: true and mqtt.ca_file to the broker's CA (`broker init`'s certs/ca.crt); "
            "for a plain one mqtt.tls: false; check mqtt.protocol against what the broker speaks")


async def check(line_path: Path, listen_s: float | None = None, state_dir: Path | None = None) -> int:
    report = Report()
    try:
        line = load_line(line_path)
    except LineConfigError as exc:
        report.add(FAIL, f"line file: {exc}", "correct the entries named above and run check again")
        return 1
    report.add(OK, f"line file {line_path}: {line.site}/{line.line}, {len(line.assets)} assets, "
                   f"{len(line.signal_keys(include_mode=True))} signals, sampled every {line.sampling_interval_s:g} s")
    paths = ServicePaths.of_line(line, line_path, state_dir)
    try:
        models = load_detector(paths.detector, line, line_path, announce=False)  # said once, below
        describe = getattr(models, "describe", None)
        report.add(OK, f"detector {paths.detector}: " + (describe() if describe else f"trained for {models.line}"))
    except ModelMismatchError as exc:
        report.add(FAIL, f"detector: {exc}",
                   f"record normal running and `factory-copilot train --line {line_path} --history FILE` "
                   "(docs/history.md); or point service.detector at the trained file")
    port = line.service.health_port
    if port is not None:
        if port_free(port):
            report.add(OK, f"health port 127.0.0.1:{port} free")
        else:
            report.add(FAIL, f"health port 127.0.0.1:{port} in use",
                       "stop the other service on it (another `run` of this line?), or set service.health_port")
    report.add(*alerts_broker(line, line_path))
    sources = line.sources()
    if not sources:
        report.add(FAIL, "sources: no signal names a source this service can read (opcua node or mqtt topic)",
                   "give each signal a source: opcua (node id), mqtt (topic and field) or sparkplug (metric)")
        print("check: FAILED", flush=True)
        return 1
    seconds = listen_s if listen_s is not None else max(10.0, 5 * line.sampling_interval_s)
    print(f"listening to {', '.join(sources)} for {seconds:g} s ...", flush=True)
    per_source, heard, unmapped = await listen(line, paths, seconds)
    for kind, stats in per_source.items():
        served = sources.get(kind, [])
        if not stats["connected"] and not (set(served) & heard):
            why = stats.get("last_error") or f"cannot reach {stats.get('endpoint') or stats.get('broker')}"
            report.add(FAIL, f"source {kind}: not connected: {why}", SOURCE_FIX.get(kind.partition(":")[0],
                                                                                     SOURCE_FIX["mqtt"]))
            continue
        silent = [k for k in served if k not in heard]
        rejects = stats.get("rejects") or {}
        if silent:
            report.add(FAIL, f"source {kind}: {len(silent)} of {len(served)} signals sent nothing in {seconds:g} s: "
                             + ", ".join(silent[:10]) + (" ..." if len(silent) > 10 else ""),
                       "compare each one's source in the line file with what the source sends (node id; topic and "
                       "field; metric name): a typo, or a topic listed below as carrying data no signal maps; a "
                       "source that sends only on change needs samples.stale_after_intervals: null or a longer --listen")
        else:
            report.add(OK, f"source {kind}: connected; all {len(served)} signals delivered")
        if rejects:
            report.add(WARN, f"source {kind}: samples rejected: "
                             + ", ".join(f"{r} {n}" for r, n in sorted(rejects.items(), key=lambda kv: -kv[1])))
    if unmapped:
        top = ", ".join(f"{t} ({n})" for t, n in unmapped.most_common(10))
        report.add(WARN, f"MQTT topics near the line's that carry data no signal maps: {top}")
    print("check: " + ("FAILED" if report.failed else "ready to run"), flush=True)
    return 1 if report.failed else 0


SOURCE_FIX = {
    "opcua": "check opcua.endpoint, that the server runs and this machine reaches it, and its security settings "
             "(user, certificates: the log names a refused one)",
    "mqtt": "check mqtt.host / port / tls and the service's user and password on the broker",
    "sparkplug": "check sparkplug.mqtt (or mqtt) and that the edge nodes are online (their NBIRTH)",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="before the first run: line file, detector, ports, alarm broker, sources, signals")
    p.add_argument("--config", required=True, type=Path, help="the line file (YAML)")
    p.add_argument("--listen", "--seconds", dest="listen", type=float, metavar="SECONDS",
                   help="seconds to listen for samples (default: 5 intervals, at least 10 s; --seconds is the same)")
    p.add_argument("--state-dir", type=Path, help="override service.state_dir")
    p.set_defaults(func=lambda a: check(a.config, a.listen, a.state_dir))
