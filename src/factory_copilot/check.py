"""``factory-copilot check``: everything a first run needs, checked before it, each with what to do when it fails.

1. the line file validates (every mistake named by its path);
2. the trained detector is there and fits the line (which file, trained when, on what);
3. the ports the service serves on are free;
4. each source connects, and every configured signal delivers a sample within a few sampling
   intervals: the silent ones are listed, and so are the MQTT topics near the line's that carry
   data no signal maps (a typo in a topic or a field is the usual cause of a silent signal).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from collections import Counter
from pathlib import Path

from factory_copilot.collect.station import CollectStation
from factory_copilot.config import LineConfig, LineConfigError, ServicePaths, load_line
from factory_copilot.detect.persist import ModelMismatchError, load_detector
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.mqtt import MqttSession
from factory_copilot.records import Reading, SourceState

OK, FAIL, WARN = "ok  ", "FAIL", "warn"


class Report:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def add(self, status: str, text: str) -> None:
        self.lines.append((status, text))
        print(f"[{status}] {text}", flush=True)

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


async def check(line_path: Path, listen_s: float | None = None, state_dir: Path | None = None) -> int:
    report = Report()
    try:
        line = load_line(line_path)
    except LineConfigError as exc:
        report.add(FAIL, f"line file: {exc}")
        return 1
    report.add(OK, f"line file {line_path}: {line.site}/{line.line}, {len(line.assets)} assets, "
                   f"{len(line.signal_keys(include_mode=True))} signals, sampled every {line.sampling_interval_s:g} s")
    paths = ServicePaths.of_line(line, line_path, state_dir)
    try:
        models = load_detector(paths.detector, line, line_path)
        describe = getattr(models, "describe", None)
        report.add(OK, f"detector {paths.detector}: " + (describe() if describe else f"trained for {models.line}"))
    except ModelMismatchError as exc:
        report.add(FAIL, f"detector: {exc}")
    port = line.service.health_port
    if port is not None:
        report.add(OK if port_free(port) else FAIL,
                   f"health port 127.0.0.1:{port} " + ("free" if port_free(port) else
                                                       "in use: another service runs, or set service.health_port"))
    sources = line.sources()
    if not sources:
        report.add(FAIL, "sources: no signal names a source this service can read (opcua node or mqtt topic)")
        return 1
    seconds = listen_s if listen_s is not None else max(10.0, 5 * line.sampling_interval_s)
    print(f"listening to {', '.join(sources)} for {seconds:g} s ...", flush=True)
    per_source, heard, unmapped = await listen(line, paths, seconds)
    for kind, stats in per_source.items():
        served = sources.get(kind, [])
        if not stats["connected"] and not (set(served) & heard):
            why = stats.get("last_error") or f"cannot reach {stats.get('endpoint') or stats.get('broker')}"
            report.add(FAIL, f"source {kind}: not connected: {why}")
            continue
        silent = [k for k in served if k not in heard]
        rejects = stats.get("rejects") or {}
        if silent:
            report.add(FAIL, f"source {kind}: {len(silent)} of {len(served)} signals sent nothing in {seconds:g} s: "
                             + ", ".join(silent[:10]) + (" ..." if len(silent) > 10 else ""))
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="before the first run: line file, detector, ports, sources and every signal")
    p.add_argument("--config", required=True, type=Path, help="the line file (YAML)")
    p.add_argument("--listen", type=float, help="seconds to listen for samples (default: 5 intervals, at least 10 s)")
    p.add_argument("--state-dir", type=Path, help="override service.state_dir")
    p.set_defaults(func=lambda a: check(a.config, a.listen, a.state_dir))
