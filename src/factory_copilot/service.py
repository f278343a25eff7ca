"""The service for one line: builds the stations, joins them with bounded buffers, runs, watches and stops them.

    collect -> readings -> detect -> anomalies -> alarms -> events -> copilot -> diagnoses, chunks
                  |                     |                    |  ^                       |
                  +-> store, copilot    +-> store            |  +- commands <- publish   +-> publish, store
                                                             +-> publish, store            publish -> questions -> copilot
                                                             +-> opcua-server (if configured; its methods -> commands)

Each station is built with its input and output buffers, runs as ``run(stop)`` and reports
``stats()``; the service knows nothing of what they do inside. No station waits on another:
the alarm goes out the moment the engine raises it, the copilot's diagnosis follows on its
own. A station that dies is logged, counted and started again; ``GET /health`` says so.
``factory-copilot run`` and the demo both use this module.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Coroutine

from factory_copilot.alarms.engine import AlarmEngine, AlarmSettings
from factory_copilot.alarms.station import AlarmStation
from factory_copilot.collect.replay import ReplayClock
from factory_copilot.collect.station import CollectStation
from factory_copilot.config import LineConfig, MqttConnection, ServicePaths, load_line
from factory_copilot.copilot.language_model import LLMBackend
from factory_copilot.copilot.choice import backend_from_settings
from factory_copilot.copilot.station import Copilot
from factory_copilot.detect.persist import ModelMismatchError, TrainedDetector, load_detector
from factory_copilot.detect.station import DetectStation
from factory_copilot.errors import AuthRefused, GiveUp, Transient
from factory_copilot.plumbing.bus import Bus
from factory_copilot.plumbing.signals import stop_on_signals
from factory_copilot.publish.opcua_server import AlarmServer
from factory_copilot.publish.publisher import InstanceConflict, Publisher
from factory_copilot.records import (
    AlarmEvent,
    Anomaly,
    AnswerChunk,
    CommandResult,
    Diagnosis,
    DiagnosisChunk,
    Feedback,
    Handover,
    HandoverAck,
    HeldAlarms,
    ModelJob,
    OperatorCommand,
    OperatorFeedback,
    PlcAcknowledge,
    PlcCondition,
    Question,
    Reading,
    SourceState,
    Turn,
)
from factory_copilot.shift.station import ShiftStation
from factory_copilot.store.station import StoreStation
from factory_copilot.store.store import open_store

log = logging.getLogger(__name__)


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
        replay: Path | None = None,
        speed: float = 1.0,
        labels: str | None = None,
    ):
        if source is not None:  # one kind of source for this run, whatever the line file says
            line = line.model_copy(update={"service": line.service.model_copy(update={"source": source})})
        self.line = line
        self.paths = paths
        self.health_port = health_port
        settings = line.service
        # the stations' records travel on one typed bus: each station takes and gives the records its class
        # declares (``takes``/``gives``), each subscription a bounded, counted, drop-oldest buffer of its own
        self.bus = bus = Bus(buffer_size)
        plc_wired = settings.plc_alarms is not None and replay is None
        served = settings.opcua_server if replay is None else None  # a replay's alarms are no line's to serve

        # collect
        readings = bus.outlet("collect", Reading, SourceState)
        plc = bus.outlet("collect", PlcCondition) if plc_wired else None
        plc_acks = bus.subscribe("collect", PlcAcknowledge, size=1000) if plc_wired else None
        # every clock of the pipeline: the wall clock live, the recording's time in a replay
        self.clock: Callable[[], float] = time.time
        if replay is not None:
            self.clock = ReplayClock(speed, step_s=line.sampling_interval_s)
            self.collector = CollectStation.replaying(line, readings, Path(replay), self.clock, labels)
        else:
            self.collector = CollectStation(line, readings, pki_dir=paths.pki, plc=plc, plc_acks=plc_acks)
        self.source = "+".join(self.collector.kinds)

        # detect
        to_detect = bus.subscribe("detect", Reading, SourceState)
        self.detect = DetectStation(line, to_detect, bus.outlet("detect", Anomaly), detector=models.detector,
                                    classifier=models.classifier, checks=models.checks(line), clock=self.clock)

        # alarms
        self.engine = AlarmEngine(line, paths.alarms, alarm_settings, clock=self.clock)
        if line.roles is None:
            log.warning("%s/%s: the line file has no roles: every user the broker logs in may acknowledge, shelve "
                        "and take alarms out of service; name operators and supervisors (docs/mqtt.md)",
                        line.site, line.line)
        to_alarms = bus.subscribe("alarms", Anomaly)
        commands = bus.subscribe("alarms", OperatorCommand, size=1000)
        # live the engine's delays are checked 4 times a second; in a replay once per step of data time, after
        # the step's anomalies (the replay clock calls the tick), so no wall-clock timer decides an alarm
        self.alarms = AlarmStation(
            self.engine, to_alarms, bus.outlet("alarms", AlarmEvent), commands, bus.outlet("alarms", CommandResult),
            tick_s=None if replay is not None else 0.25,
            held=bus.outlet("alarms", HeldAlarms),  # the alarms at start: the publisher clears retained ghosts
            plc=bus.subscribe("alarms", PlcCondition, size=10_000) if plc_wired else None,
            plc_acks=bus.outlet("alarms", PlcAcknowledge) if plc_wired else None,
            # operators' verdicts from their command levels: authorised and audited here, written by the store
            feedback_in=bus.subscribe("alarms", OperatorFeedback, size=1000),
            feedback_out=bus.outlet("alarms", Feedback))

        # copilot
        self.store = open_store(line, paths, patient=True)  # the line alarms while its site's database is away
        self.copilot = Copilot(
            line, backend=backend, memory=self.store, timeout_s=settings.copilot.timeout_s,
            max_tokens=settings.copilot.max_tokens, alarms=bus.subscribe("copilot", AlarmEvent, size=1000),
            readings=bus.subscribe("copilot", Reading), questions=bus.subscribe("copilot", Question, size=100),
            diagnoses=bus.outlet("copilot", Diagnosis), chunks=bus.outlet("copilot", DiagnosisChunk),
            answers=bus.outlet("copilot", AnswerChunk), turns=bus.outlet("copilot", Turn),
            jobs=bus.outlet("copilot", ModelJob),  # where each job for the model stands: what an operator waits for
            clock=self.clock,
        )

        # publish
        self.publisher = Publisher.for_line(
            line, paths.outbox, connection=alerts or line.mqtt or MqttConnection(), prefix=settings.alerts_prefix,
            events=bus.subscribe("publish", AlarmEvent), diagnoses=bus.subscribe("publish", Diagnosis, size=1000),
            chunks=bus.subscribe("publish", DiagnosisChunk, size=20_000),
            results=bus.subscribe("publish", CommandResult, size=1000),
            answers=bus.subscribe("publish", AnswerChunk, size=20_000), commands=bus.outlet("publish", OperatorCommand),
            questions=bus.outlet("publish", Question), held=bus.subscribe("publish", HeldAlarms, size=10),
            jobs=bus.subscribe("publish", ModelJob, size=1000),
            handovers=bus.subscribe("publish", Handover, size=100) if line.shifts else None,
            handover_acks=bus.outlet("publish", HandoverAck) if line.shifts else None,
            feedback=bus.outlet("publish", OperatorFeedback),
        )
        self.publisher.health = lambda: self.health()[1]  # said with the status heartbeat: what a site page shows
        if isinstance(self.clock, ReplayClock):  # a replay waits for detect and alarms rather than outrun them
            self.clock.backlog = lambda: to_detect.qsize() + to_alarms.qsize()
            self.clock.on_step.append(self.alarms.tick)

        # store
        self.store_station = StoreStation(
            self.store, readings=bus.subscribe("store", Reading), anomalies=bus.subscribe("store", Anomaly),
            events=bus.subscribe("store", AlarmEvent), diagnoses=bus.subscribe("store", Diagnosis, size=1000),
            turns=bus.subscribe("store", Turn, size=1000), feedback=bus.subscribe("store", Feedback, size=1000),
            clock=self.clock)

        # shift: a line with shifts gets a handover at each change, acknowledged by the incoming operator
        self.shift = ShiftStation(
            line, self.store, paths.alarms, bus.outlet("shift", Handover), bus.subscribe("shift", HandoverAck, size=100),
            bus.outlet("shift", CommandResult), clock=self.clock, catch_up=replay is None) if line.shifts else None

        # the alarms as OPC UA conditions for an HMI or SCADA
        self.opcua_server = AlarmServer(
            line, served, bus.subscribe("opcua-server", AlarmEvent, size=1000), self.alarms.execute, paths.alarms,
            pki_dir=paths.pki, max_shelve_s=self.engine.settings.max_shelve_s,
            diagnoses=bus.subscribe("opcua-server", Diagnosis, size=1000)) if served else None
        bus.check({"collect": self.collector, "detect": self.detect, "alarms": self.alarms, "copilot": self.copilot,
                   "publish": self.publisher, "store": self.store_station, "shift": self.shift,
                   "opcua-server": self.opcua_server})
        self.stations: dict[str, Callable[[asyncio.Event], Coroutine]] = {
            "collect": self.collector.run,
            "detect": self.detect.run,
            "alarms": self.alarms.run,
            "copilot": self.copilot.run,
            "publish": self.publisher.run,
            "store": self.store_station.run,
            **({"shift": self.shift.run} if self.shift else {}),
            **({"opcua-server": self.opcua_server.run} if self.opcua_server else {}),
        }
        self.started_at = time.time()
        self._tasks: list[asyncio.Task] = []
        self.restarts: dict[str, int] = {}
        self.stopped: dict[str, str] = {}  # station -> why it is not running (between a crash and its restart)

    # ---- life cycle ---------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop``; InstanceConflict (another service on this line) or OSError (health port taken) at start."""
        health = None
        try:
            health = await self._serve_health() if self.health_port else None
            await self.publisher.start()
        except BaseException:
            if health is not None:
                health.close()
            await self.publisher.stop()
            self.engine.close()
            self.store.close()
            raise
        _freeze_start_up_heap()
        self._tasks = [asyncio.create_task(self._station(name, run, stop), name=name) for name, run in self.stations.items()]
        log.info("serving %s/%s from %s: %d signals, %d active alarms resumed", self.line.site, self.line.line,
                 self.source, len(self.line.signal_keys()), len(self.engine.active()))
        try:
            await stop.wait()
        finally:
            await self._shutdown(health)

    async def _station(self, name: str, run: Callable[[asyncio.Event], Coroutine], stop: asyncio.Event,
                       backoff_max_s: float = 30.0, backoff_s: float = 1.0) -> None:
        """Run one station; when it dies, say why, count it and start it again (with back-off) until ``stop``;
        one that gives up (``errors.GiveUp``) stays stopped, one refused its credentials retries at the slow pace."""
        delay = backoff_s
        while True:
            began = time.monotonic()
            try:
                await run(stop)
                if stop.is_set():
                    return
                raise RuntimeError("returned while the service was running")
            except asyncio.CancelledError:
                raise
            except GiveUp as exc:  # nothing changes without a person: stay stopped, and /health says why
                self.stopped[name] = f"gave up: {exc}"
                log.error("station %s stopped for good: %s", name, exc)
                await stop.wait()
                return
            except AuthRefused as exc:  # retrying at once cannot help: slowly, until someone fixes the credentials
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self.stopped[name] = f"credentials refused: {exc}"
                delay = max(delay, backoff_max_s)
                log.error("station %s stopped (%s); retry #%d in %.0f s", name, self.stopped[name],
                          self.restarts[name], delay)
            except Exception as exc:  # a station that dies is a bug; the service must keep watching the line
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self.stopped[name] = f"{type(exc).__name__}: {exc}"
                log.error("station %s stopped (%s); restart #%d in %.0f s", name, self.stopped[name],
                          self.restarts[name], delay, exc_info=None if isinstance(exc, Transient) else exc)
            if time.monotonic() - began > 60:
                delay = backoff_s  # it ran a good while: a new failure starts the back-off again
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, backoff_max_s)
            self.stopped.pop(name, None)

    async def _shutdown(self, health: asyncio.AbstractServer | None) -> None:
        # every station watches `stop` and ends by itself (the collectors close their connections); wait for that
        stations = list(self._tasks)
        if stations:
            _, late = await asyncio.wait(stations, timeout=10)
            for t in late:
                log.warning("station %s did not stop within 10 s; cancelled", t.get_name())
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store_station.drain()
        try:
            await self.publisher.wait_idle(3.0)
        except asyncio.TimeoutError:
            log.warning("%d alerts still in the outbox at shutdown; they go out at the next start",
                        self.publisher.outbox.pending())
        await self.publisher.stop()
        await asyncio.to_thread(self.copilot.close)
        if health:
            health.close()
        self.engine.close()
        self.store.close()

    # ---- observation --------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "site": self.line.site,
            "line": self.line.line,
            "uptime_s": round(time.time() - self.started_at, 1),
            "collect": self.collector.stats(),
            "detect": self.detect.stats(),
            "alarms": {**self.alarms.stats(), "active": len(self.engine.active())},
            "copilot": self.copilot.stats(),
            "publish": self.publisher.stats(),
            "store": self.store_station.stats(),
            **({"shift": self.shift.stats()} if self.shift else {}),
            **({"opcua_server": self.opcua_server.stats()} if self.opcua_server else {}),
            "stations": {"restarts": dict(self.restarts), "stopped": dict(self.stopped)},
            "buffers": {buf.name: buf.stats() for buf in self.bus.buffers()},
            "unrouted": dict(self.bus.unrouted),
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
        store = stats["store"]
        if store.get("unavailable"):
            reasons.append(f"store unavailable since {_utc(store['unavailable_since'])} ({store['unavailable']}): "
                           f"{sum(store['held'].values())} items held, written when it is back")
        publish = stats["publish"]
        if publish.get("conflict"):
            reasons.append(f"publisher: {publish['conflict']}")
        elif not publish["online"]:
            reasons.append("publisher offline: alerts wait in the outbox")
        for name, link in publish.get("site_links", {}).items():
            if not link["up"]:
                reasons.append(f"site link {name} down since {_utc(link['since'])}: alarms reach the line's own "
                               f"broker and wait in its queue for the site")
        backend = (stats["copilot"].get("model_file") or {}).get("backend") or {}
        reasons += [f"explain pool: {why}" for why in backend.get("problems", [])]  # pool.py: broker away, no taker
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


_heap_frozen = False


def _freeze_start_up_heap() -> None:
    """Once a process, as its first service starts: what start-up made and keeps (modules, the line, the models,
    the runbooks) is moved out of the garbage collector's reach (``gc.freeze``), so a full collection scans only
    what came after. Over the whole heap one held every thread, the event loop's too, 0.5-2.5 s on a busy 2-core
    machine (issue 21, ``bench/sweep_latency.py``); a later service in the same process (tests) adds nothing."""
    global _heap_frozen
    if _heap_frozen:
        return
    _heap_frozen = True
    gc.collect()
    gc.freeze()
    log.info("start-up heap frozen: %d objects left out of full garbage collections", gc.get_freeze_count())


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def build_service(line: LineConfig, line_path: Path, **overrides: Any) -> LineService:
    """The service as the line file's ``service`` section says (state dir relative to the line file)."""
    paths = ServicePaths.of_line(line, line_path, overrides.pop("state_dir", None))
    models = overrides.pop("models", None) or load_detector(paths.detector, line, line_path)
    c = line.service.copilot
    backend = overrides.pop("backend", None) or backend_from_settings(
        c.model_path, c.openai_url, c.openai_model, c.n_threads, c.n_ctx, c.n_gpu_layers,
        state_dir=paths.state_dir / "copilot", line=line)  # the warm prompt prefix, kept across restarts
    return LineService(line, models, paths, backend=backend,
                       health_port=overrides.pop("health_port", line.service.health_port), **overrides)


async def serve(line_path: Path, source: str | None = None, health_port: int | None = None,
                replay: Path | None = None, speed: float = 1.0, state_dir: Path | None = None,
                labels: str | None = None) -> int:
    line = load_line(line_path)
    overrides: dict[str, Any] = {"source": source}
    if health_port is not None:
        overrides["health_port"] = health_port
    if replay is not None:
        # a commissioning run: its own state, and alerts under their own prefix, so SCADA does not take them for the line's
        paths = ServicePaths.of_line(line, line_path, state_dir)
        overrides |= {"replay": replay, "speed": speed, "labels": labels, "state_dir": paths.state_dir / "replay"}
        # the line's health port belongs to the live service: a replay answers /health only on a port it is given
        overrides["health_port"] = health_port
        try:  # the detector the line serves with, not one of the replay's own
            overrides["models"] = load_detector(paths.detector, line, line_path)
        except ModelMismatchError as exc:
            log.error("%s", exc)
            return 2
        line = line.model_copy(update={"service": line.service.model_copy(
            update={"alerts_prefix": f"{line.service.alerts_prefix}-replay"})})
        for old in ("store.db", "alarms.db", "outbox.db"):
            for suffix in ("", "-wal", "-shm"):
                (Path(overrides["state_dir"]) / (old + suffix)).unlink(missing_ok=True)
    elif state_dir is not None:
        overrides["state_dir"] = state_dir
    try:
        service = build_service(line, line_path, **overrides)
    except (ModelMismatchError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    stop = stop_on_signals()
    finished = service.collector.finished
    watcher = asyncio.create_task(_stop_after_replay(service, finished, stop)) if finished is not None else None
    try:
        await service.run(stop)
    except InstanceConflict as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot serve /health on 127.0.0.1:%s: %s (another process uses the port? set service.health_port "
                  "or --health-port)", service.health_port, exc.strerror or exc)
        return 2
    finally:
        if watcher is not None:
            watcher.cancel()
    if watcher is not None and watcher.done() and not watcher.cancelled() and watcher.result() is not None:
        print(json.dumps(watcher.result(), indent=2, default=str))
    return 0


async def _stop_after_replay(service: LineService, finished: asyncio.Event, stop: asyncio.Event,
                             settle_s: float = 60.0) -> dict[str, Any]:
    """When the recording has played and the pipeline has digested it (at most ``settle_s``): say what happened, stop.

    The recording's time ends with its last reading: nothing is judged on data the recording does not have.
    """
    await finished.wait()
    deadline = time.monotonic() + settle_s
    backlog = service.clock.backlog or (lambda: 0)
    while backlog() > 0 and time.monotonic() < deadline and not stop.is_set():  # the engine ingests as it takes
        await asyncio.sleep(0.05)
    await service.store_station.drain()
    from factory_copilot.plumbing.history import event_delay  # replay only: a live service never loads pandas

    replay = service.collector.collectors["replay"]
    first, last = replay.span
    raised = [e for e in service.engine.audit(since=first) if e.event == "raised"]
    summary = {
        "recording": str(replay.path),
        "data_from": first, "data_to": last, "speed": replay.clock.speed,
        "readings": replay.readings_in,
        "alarms_raised": [{"alarm_id": e.alarm_id, "raised_at": round(e.ts, 3), "priority": e.alarm.priority.name.lower(),
                           "message": e.alarm.message} for e in raised],
        # an event is detected by an alarm raised while it is on, measured from its first row, as evaluate does
        "faults": [
            {"fault": fault, "start": start, "end": end,
             "first_alarm_after_s": None if (d := event_delay(start, end, [e.ts for e in raised])) is None else round(d, 1)}
            for start, end, fault in replay.events
        ],
    }
    stop.set()
    return summary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="serve a real line: collect, detect, alarm, explain, publish, store")
    p.add_argument("--config", required=True, type=Path, help="the line file (YAML)")
    p.add_argument("--source", choices=["opcua", "sparkplug", "mqtt"], help="override the line file's service.source")
    p.add_argument("--health-port", type=int, help="override service.health_port (a replay answers /health only on this port; by default on none)")
    p.add_argument("--state-dir", type=Path, help="override service.state_dir")
    p.add_argument("--replay", type=Path, metavar="RECORDING",
                   help="commissioning: play a recording (CSV, Parquet or JSON lines; docs/history.md) instead of the "
                        "line's sources, every clock on the recording's time; prints what was alarmed and exits")
    p.add_argument("--speed", type=float, default=1.0, help="replay this many times faster than real time")
    p.add_argument("--labels", metavar="COLUMN",
                   help="with --replay: the recording's label column, read as `evaluate --labels` reads it ('normal', "
                        "0, false or empty for normal rows; default: fault, else label); a column of a CSV or Parquet "
                        "recording, not a file (a JSON-lines stream has none)")
    p.set_defaults(func=lambda a: serve(a.config, a.source, a.health_port, a.replay, a.speed, a.state_dir, a.labels))
