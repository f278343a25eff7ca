"""The service for one line: joins the stations with bounded buffers and runs them together.

    collector -> readings -> detect -> anomalies -> alarms -> events -> copilot -> diagnoses
                    |                     |                     |                    |
                    +-> store, copilot    +-> store             +-> publish, store   +-> publish, store

Commands and questions come back from MQTT through the publish station. No
station waits on another: the alarm goes out the moment the engine raises it,
the copilot's diagnosis follows on its own. ``factory-copilot run`` and the demo
both use this module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory_copilot.alarms.engine import AlarmEngine, AlarmSettings
from factory_copilot.alarms.station import AlarmStation
from factory_copilot.plumbing.buffer import Buffer, fan_out
from factory_copilot.collect.station import CollectStation
from factory_copilot.config import LineConfig, MqttConnection, ServicePaths, load_line
from factory_copilot.copilot.backends import LLMBackend, backend_from_settings
from factory_copilot.copilot.station import Copilot
from factory_copilot.detect.persist import TrainedDetector, ModelMismatchError, load_detector
from factory_copilot.detect.station import DetectStation
from factory_copilot.records import AlarmEvent, Anomaly, Diagnosis, OperatorCommand, Question, Reading, SourceState, Turn
from factory_copilot.publish.publisher import Publisher
from factory_copilot.store.station import StoreStation
from factory_copilot.store.store import Store

log = logging.getLogger(__name__)


@dataclass
class Latency:
    """Reading-to-alarm and alarm-to-diagnosis latencies the service observed (for the demo summary)."""

    alarm_after_reading_s: list[float] = field(default_factory=list)
    diagnosis_after_alarm_s: dict[str, list[float]] = field(default_factory=dict)


class LineService:
    """Every station of one line, joined; ``await run(stop)`` serves until ``stop`` is set."""

    def __init__(
        self,
        line: LineConfig,
        models: TrainedDetector,
        paths: ServicePaths,
        *,
        source: str | None = None,
        alerts: MqttConnection | None = None,
        backend: LLMBackend | None = None,
        health_port: int | None = None,
        alarm_settings: AlarmSettings | None = None,
        buffer_size: int = 50_000,
    ):
        if source is not None:  # one kind of source for this run, whatever the line file says
            line = line.model_copy(update={"service": line.service.model_copy(update={"source": source})})
        self.line = line
        self.paths = paths
        self.health_port = health_port
        settings = line.service
        b = lambda name, size=buffer_size: Buffer(size, name)  # noqa: E731 - one line per buffer below
        # collector output and its copies for each consumer
        self.readings: Buffer[Reading | SourceState] = b("readings")
        self.readings_detect: Buffer[Reading | SourceState] = b("readings->detect")
        self.readings_store: Buffer[Reading] = b("readings->store")
        self.readings_copilot: Buffer[Reading] = b("readings->copilot")
        self.anomalies: Buffer[Anomaly] = b("anomalies")
        self.anomalies_alarms: Buffer[Anomaly] = b("anomalies->alarms")
        self.anomalies_store: Buffer[Anomaly] = b("anomalies->store")
        self.events: Buffer[AlarmEvent] = b("alarm events")
        self.events_publish: Buffer[AlarmEvent] = b("events->publish")
        self.events_store: Buffer[AlarmEvent] = b("events->store")
        self.events_copilot: Buffer[AlarmEvent] = b("events->copilot", 1000)
        self.diagnoses: Buffer[Diagnosis] = b("diagnoses", 1000)
        self.diagnoses_publish: Buffer[Diagnosis] = b("diagnoses->publish", 1000)
        self.diagnoses_store: Buffer[Diagnosis] = b("diagnoses->store", 1000)
        self.tokens: Buffer[tuple] = b("diagnosis tokens", 20_000)
        self.commands: Buffer[OperatorCommand] = b("commands", 1000)
        self.questions: Buffer[Question] = b("questions", 100)
        self.turns: Buffer[Turn] = b("conversation turns", 1000)

        self.collector = CollectStation(line, self.readings, pki_dir=paths.pki)
        self.source = "+".join(self.collector.kinds)
        self.detect = DetectStation(
            line, self.readings_detect, self.anomalies, detector=models.detector, classifier=models.classifier,
            checks=models.checks(line),
        )
        self.engine = AlarmEngine(line, paths.alarms, alarm_settings)
        self.store = Store(paths.store)
        self.copilot = Copilot(
            line, backend=backend, memory=self.store, timeout_s=settings.copilot.timeout_s,
            max_tokens=settings.copilot.max_tokens,
        )
        self.publisher = Publisher.for_line(
            line, paths.outbox, connection=alerts or line.mqtt or MqttConnection(), prefix=settings.alerts_prefix,
            commands=self.commands, questions=self.questions,
        )
        self.alarms = AlarmStation(self.engine, self.anomalies_alarms, self.events, self.commands,
                                   reply=self.publisher.command_reply)
        self.store_station = StoreStation(
            self.store, readings=self.readings_store, anomalies=self.anomalies_store, events=self.events_store,
            diagnoses=self.diagnoses_store, turns=self.turns,
        )
        self.started_at = time.time()
        self.latency = Latency()
        self._raised_at: dict[str, float] = {}
        self._diagnosed: Buffer[Diagnosis] = b("diagnoses (observed)", 1000)
        self._events_seen: Buffer[AlarmEvent] = b("events (observed)", 10_000)
        self._tasks: list[asyncio.Task] = []
        self.restarts: dict[str, int] = {}
        self.stopped: dict[str, str] = {}  # station -> why it is not running (between a crash and its restart)

    # ---- life cycle ---------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.publisher.start()
        health = await self._serve_health() if self.health_port else None
        jobs = {
            "collect": lambda: self.collector.run(stop),
            "detect": lambda: self.detect.run(stop),
            "alarms": lambda: self.alarms.run(),
            "copilot": lambda: self.copilot.run(self.events_copilot, self.diagnoses, readings=self.readings_copilot,
                                                tokens=self.tokens),
            "publish": lambda: self.publisher.run(events=self.events_publish, diagnoses=self.diagnoses_publish,
                                                  tokens=self.tokens),
            "store": lambda: self.store_station.run(),
            "questions": lambda: self._answer_questions(),
            "observe": lambda: self._observe(),
            "fan-out readings": lambda: fan_out(self.readings, self.readings_detect, self.readings_store,
                                                self.readings_copilot),
            "fan-out anomalies": lambda: fan_out(self.anomalies, self.anomalies_alarms, self.anomalies_store),
            "fan-out events": lambda: fan_out(self.events, self.events_publish, self.events_store, self.events_copilot,
                                              self._events_seen),
            "fan-out diagnoses": lambda: fan_out(self.diagnoses, self.diagnoses_publish, self.diagnoses_store,
                                                 self._diagnosed),
        }
        self._tasks = [asyncio.create_task(self._station(name, job, stop), name=name) for name, job in jobs.items()]
        log.info("serving %s/%s from %s: %d signals, %d active alarms resumed", self.line.site, self.line.line,
                 self.source, len(self.line.signal_keys()), len(self.engine.active()))
        try:
            await stop.wait()
        finally:
            await self._shutdown(health)

    async def _station(self, name: str, start: Any, stop: asyncio.Event, backoff_max_s: float = 30.0) -> None:
        """Run one station; when it dies, say why, count it and start it again (with back-off) until ``stop``."""
        delay = 1.0
        while True:
            began = time.monotonic()
            try:
                await start()
                if stop.is_set():
                    return
                raise RuntimeError("returned while the service was running")
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # a station that dies is a bug; the service must keep watching the line
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self.stopped[name] = f"{type(exc).__name__}: {exc}"
                log.error("station %s stopped (%s); restart #%d in %.0f s", name, self.stopped[name],
                          self.restarts[name], delay, exc_info=exc)
            if time.monotonic() - began > 60:
                delay = 1.0  # it ran a good while: a new failure starts the back-off again
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, backoff_max_s)
            self.stopped.pop(name, None)

    async def _shutdown(self, health: asyncio.AbstractServer | None) -> None:
        await asyncio.sleep(0)  # let stations that watch `stop` finish their own close
        for t in self._tasks:
            if t.get_name() in ("collect", "detect") and not t.done():
                try:  # they watch `stop` and close their connections themselves
                    await asyncio.wait_for(asyncio.shield(t), 10)
                except (asyncio.TimeoutError, Exception):
                    t.cancel()
                continue
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store_station.drain()
        try:
            await self.publisher.wait_idle(3.0)
        except asyncio.TimeoutError:
            log.warning("%d alerts still in the outbox at shutdown; they go out at the next start",
                        self.publisher.outbox.pending())
        await self.publisher.stop()
        close_model = getattr(self.copilot.backend, "close", None)  # the model's worker process, if any
        if close_model:
            await asyncio.to_thread(close_model)
        if health:
            health.close()
        self.engine.close()
        self.store.close()

    # ---- questions from the dashboard (over MQTT) -----------------------------------------------------------

    async def _answer_questions(self) -> None:
        while True:
            q = await self.questions.get()
            sink = lambda piece, q=q: self.publisher.answer_chunk(q.request_id, q.alarm_id, piece, False)  # noqa: E731
            try:
                turn = await self.copilot.ask(q.alarm_id, q.question, q.actor, q.request_id, on_token=sink)
            except KeyError as exc:
                self.publisher.answer_chunk(q.request_id, q.alarm_id, "", True, text=str(exc.args[0]))
                continue
            self.publisher.answer_chunk(q.request_id, q.alarm_id, "", True, text=turn.text)
            for t in self.copilot.conversation(q.alarm_id)[-2:]:
                self.turns.offer(t)

    # ---- observation --------------------------------------------------------------------------------------

    async def _observe(self) -> None:
        async def events() -> None:
            while True:
                ev = await self._events_seen.get()
                if ev.event == "raised":
                    self._raised_at[ev.alarm_id] = time.time()
                    if ev.alarm.anomaly is not None:
                        self.latency.alarm_after_reading_s.append(max(0.0, ev.ts - ev.alarm.anomaly.ts))

        async def diagnoses() -> None:
            while True:
                d = await self._diagnosed.get()
                raised = self._raised_at.get(d.alarm_id)
                if raised is not None:
                    self.latency.diagnosis_after_alarm_s.setdefault(d.source, []).append(time.time() - raised)

        await asyncio.gather(events(), diagnoses())

    def stats(self) -> dict[str, Any]:
        return {
            "site": self.line.site,
            "line": self.line.line,
            "uptime_s": round(time.time() - self.started_at, 1),
            "collect": self.collector.stats(),
            "detect": self.detect.stats(),
            "alarms": {**self.alarms.stats(), "active": len(self.engine.active())},
            "copilot": dict(self.copilot.stats),
            "publish": self.publisher.stats(),
            "store": {"written": dict(self.store_station.written), "failed": dict(self.store_station.failed)},
            "stations": {"restarts": dict(self.restarts), "stopped": dict(self.stopped)},
            "buffers": {
                buf.name: buf.stats()
                for buf in (self.readings, self.readings_detect, self.readings_store, self.readings_copilot,
                            self.anomalies_alarms, self.events_publish, self.events_copilot, self.diagnoses_publish)
            },
        }

    def health(self) -> tuple[bool, list[str], dict[str, Any]]:
        """(healthy, reasons it is not, the stats): unhealthy while a source is down or stale or a station stopped."""
        stats = self.stats()
        reasons: list[str] = []
        for name, src in stats["detect"]["sources"].items():
            if not src["connected"]:
                reasons.append(f"source {name} down: {src['detail']}")
            elif src["down"]:
                reasons.append(f"source {name}: no sample from any of its {src['signals']} signals")
            elif src["stale_signals"]:
                reasons.append(f"source {name}: {src['stale_signals']} of {src['signals']} signals stale")
        for kind, c in stats["collect"]["sources"].items():
            if not c["connected"] and kind not in stats["detect"]["sources"]:
                reasons.append(f"source {kind} not connected")
        if not stats["collect"]["sources"]:
            reasons.append("no source: the line file maps no signal to a source this service reads")
        for name, why in stats["stations"]["stopped"].items():
            reasons.append(f"station {name} stopped: {why}")
        dead = [t.get_name() for t in self._tasks if t.done()]
        reasons += [f"station {name} is not running" for name in dead if name not in stats["stations"]["stopped"]]
        publish = stats["publish"]
        if publish.get("conflict"):
            reasons.append(f"publisher: {publish['conflict']}")
        elif not publish["online"]:
            reasons.append("publisher offline: alerts wait in the outbox")
        stats["status"] = "ok" if not reasons else "degraded"
        stats["reasons"] = reasons
        return not reasons, reasons, stats

    async def _serve_health(self) -> asyncio.AbstractServer:
        """GET /health on 127.0.0.1: the stations' counters as JSON (for a supervisor or a load balancer)."""

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                ok, _, stats = self.health()
                body = json.dumps(stats, default=str).encode()
                status = b"200 OK" if ok else b"503 Service Unavailable"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
                await writer.drain()
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", self.health_port)
        log.info("health on http://127.0.0.1:%d/health", self.health_port)
        return server


def build_service(line: LineConfig, line_path: Path, **overrides: Any) -> LineService:
    """The service as the line file's ``service`` section says (state dir relative to the line file)."""
    paths = ServicePaths.of_line(line, line_path, overrides.pop("state_dir", None))
    models = overrides.pop("models", None) or load_detector(paths.detector, line, line_path)
    c = line.service.copilot
    backend = overrides.pop("backend", None) or backend_from_settings(
        c.model_path, c.openai_url, c.openai_model, c.n_threads, c.n_ctx, c.n_gpu_layers)
    return LineService(line, models, paths, backend=backend,
                       health_port=overrides.pop("health_port", line.service.health_port), **overrides)


async def serve(line_path: Path, source: str | None = None, health_port: int | None = None) -> int:
    line = load_line(line_path)
    overrides: dict[str, Any] = {"source": source}
    if health_port is not None:
        overrides["health_port"] = health_port
    try:
        service = build_service(line, line_path, **overrides)
    except ModelMismatchError as exc:
        log.error("%s", exc)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.run(stop)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="serve a real line: collect, detect, alarm, explain, publish, store")
    p.add_argument("--config", required=True, type=Path, help="the line file (YAML)")
    p.add_argument("--source", choices=["opcua", "mqtt"], help="override the line file's service.source")
    p.add_argument("--health-port", type=int, help="override service.health_port")
    p.set_defaults(func=lambda a: serve(a.config, a.source, a.health_port))
