"""The publish station: alarm states, events and diagnoses out over MQTT (store-and-forward), operator commands and questions in.

Built with its input buffers (alarm events, diagnoses, diagnosis chunks, command results,
answer chunks) and output buffers (operator commands for the alarm station, questions for the
copilot), it runs as ``await publisher.run(stop)``. Its jobs live beside it:

* ``session.py``: the MQTT session, its birth and will, one instance per line;
* ``sender.py``: priorities, the in-flight window, the SQLite outbox (``outbox.py``);
* ``inbound.py``: commands and questions in, refusals answered;
* ``topics.py`` and ``payloads.py``: the topic scheme and the versioned payloads.

No ghosts: when the alarm station says which alarms the engine holds (``HeldAlarms``, once at its
start), the retained alarm and diagnosis messages under this line's topics are read back, and
those of alarms neither the engine holds nor this run published are cleared (an earlier run's,
whose state was lost or reset). Other lines' and other prefixes' topics are never touched.

Alerts are written to the outbox first and deleted when their PUBACK arrives. paho keeps
the messages it was handed and resends them itself after a reconnect, so a row is handed
to paho once per process; only a new process resends rows that were never acknowledged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path
from typing import Any, Callable

from factory_copilot.config import LineConfig, MqttConnection
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.logs import printable
from factory_copilot.plumbing.tasks import run_until
from factory_copilot.publish import payloads
from factory_copilot.publish.inbound import Inbound, Route
from factory_copilot.publish.outbox import ALARM_LANE, DIAGNOSIS_LANE, Message, Outbox
from factory_copilot.publish.sender import Sender
from factory_copilot.publish.session import InstanceConflict, PublishSession
from factory_copilot.names import DEFAULT_PREFIX
from factory_copilot.publish.topics import Topics
from factory_copilot.records import (
    AlarmEvent,
    AlarmState,
    AnswerChunk,
    CommandResult,
    Diagnosis,
    DiagnosisChunk,
    Handover,
    HandoverAck,
    HeldAlarms,
    ModelJob,
    OperatorCommand,
    OperatorFeedback,
    Question,
)

log = logging.getLogger(__name__)

UNKNOWN_ASSET = "unknown"  # topic level for a diagnosis chunk or job (or an old diagnosis) whose alarm was never seen

__all__ = ["InstanceConflict", "Publisher", "UNKNOWN_ASSET"]


class Publisher:
    """Publishes one line's alarms and diagnoses under ``<prefix>/<site>/<line>``; see the module docstring."""

    # the records it takes off the line's bus and gives onto it (plumbing/bus.py)
    takes = (AlarmEvent, Diagnosis, DiagnosisChunk, CommandResult, AnswerChunk, HeldAlarms, ModelJob,
             Handover)
    gives = (OperatorCommand, OperatorFeedback, Question, HandoverAck)

    def __init__(
        self,
        site: str,
        line: str,
        outbox_path: str | Path,
        *,
        connection: MqttConnection | None = None,
        prefix: str = DEFAULT_PREFIX,
        client_id: str | None = None,
        events: Buffer[AlarmEvent] | None = None,
        diagnoses: Buffer[Diagnosis] | None = None,
        chunks: Buffer[DiagnosisChunk] | None = None,
        results: Buffer[CommandResult] | None = None,
        answers: Buffer[AnswerChunk] | None = None,
        commands: Buffer[OperatorCommand] | None = None,
        questions: Buffer[Question] | None = None,
        held: Buffer[HeldAlarms] | None = None,
        jobs: Buffer[ModelJob] | None = None,
        handovers: Buffer[Handover] | None = None,
        handover_acks: Buffer[HandoverAck] | None = None,
        feedback: Buffer[OperatorFeedback] | None = None,
        window: int = 32,
        stream_expiry_s: int = 120,
        stream_max: int = 2000,
        outbox_max_rows: int = 100_000,
        status_every_s: float | None = 30.0,
    ):
        self.site, self.line = site, line
        self.topics = Topics(site, line, prefix)
        self.connection = connection or MqttConnection()
        self.client_id = client_id or self.connection.client_id or f"factory-copilot-publish-{site}-{line}"
        self.inputs = {"events": events, "diagnoses": diagnoses, "chunks": chunks, "results": results, "answers": answers,
                       "held": held, "jobs": jobs, "handovers": handovers}
        self.counts: collections.Counter = collections.Counter()
        self.outbox = Outbox(outbox_path, max_rows=outbox_max_rows)
        self.session = PublishSession(self.topics, self.connection, self.client_id, on_online=self._online,
                                      on_offline=self._offline, on_new_client=lambda: self.sender.new_client(),
                                      on_acked=lambda mid, failure: self.sender.acked(mid, failure),
                                      on_message=self._message)
        self.sender = Sender(self.outbox, self._hand, window=window, stream_expiry_s=stream_expiry_s,
                             stream_max=stream_max, counts=self.counts)
        self.inbound = Inbound(self.topics, commands, questions, self._reply, self._answer, self.counts,
                               handover_acks=handover_acks, feedback=feedback)
        self.session.every_s = status_every_s
        # the service's /health reasons (empty: ok), said with every heartbeat; the service wires it (None: not said)
        self.health: Callable[[], list[str]] | None = None
        self.online = self.sender.online  # set once the broker acknowledged this connection's birth message
        self.offline = asyncio.Event()
        self.idle = self.sender.idle  # nothing pending anywhere
        self._sending: asyncio.Task | None = None
        self._assets: dict[str, str] = {}  # alarm id -> asset, learnt from alarm events
        self.site_links: dict[str, dict[str, Any]] = {}  # the edge broker's bridges to the site: name -> up, since
        self.site_link_changed = asyncio.Event()  # set at each change of a link's state (tests wait on it)
        self._cleared: set[str] = set()  # alarms back to normal: their diagnosis is no longer retained
        self._stream_seq: dict[str, int] = {}
        self._answer_seq: dict[str, int] = {}
        self._reconciling: asyncio.Task | None = None
        self.reconciled = asyncio.Event()  # set once the broker was reconciled with the engine's alarms

    @classmethod
    def for_line(cls, line: LineConfig, outbox_path: str | Path, **kwargs: Any) -> "Publisher":
        return cls(line.site, line.line, outbox_path, connection=kwargs.pop("connection", line.mqtt), **kwargs)

    @property
    def v5(self) -> bool:
        return self.session.v5

    @property
    def started_at(self) -> float:
        return self.session.started_at

    @property
    def client(self):
        return self.session.mqtt.client if self.session.mqtt else None

    # ---- life cycle --------------------------------------------------------------------------------------------

    async def start(self, check_instance: bool = True) -> "Publisher":
        """Start connecting (retrying until the broker answers) and sending; returns at once.

        With ``check_instance``, first make sure no other publisher is online for this site/line
        (InstanceConflict if one is); a broker that does not answer yet is not waited for.
        """
        await self.session.start(check_instance)
        self._sending = asyncio.create_task(self.sender.run(), name="publish-sender")
        log.info("publishing %s under %s to %s:%d (MQTT %s), outbox %s", self.client_id, self.topics.base,
                 self.connection.host, self.connection.port, self.connection.protocol, self.outbox)
        return self

    async def stop(self, timeout_s: float = 3.0) -> None:
        """Say offline (retained), disconnect and close the outbox; what was not acknowledged stays for the next start."""
        if self._reconciling:
            self._reconciling.cancel()
            await asyncio.gather(self._reconciling, return_exceptions=True)
            self._reconciling = None
        if self._sending:
            self._sending.cancel()
            await asyncio.gather(self._sending, return_exceptions=True)
            self._sending = None
        await self.session.stop(timeout_s)
        self.online.clear()
        self.sender.forget_acked()
        self.outbox.close()

    async def __aenter__(self) -> "Publisher":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Publish what the input buffers bring until ``stop`` is set (or the task is cancelled)."""
        takers: dict[str, Callable[[Any], None]] = {
            "events": self.alarm_event,
            "diagnoses": self.diagnosis,
            "chunks": lambda c: self.diagnosis_token(c.alarm_id, c.text, c.done),
            "results": self.command_reply,
            "answers": lambda a: self.answer_chunk(a.request_id, a.alarm_id, a.text, a.done, a.full_text, a.error,
                                                   a.origin),
            "held": self.held_alarms,
            "jobs": self.model_job,
            "handovers": self.handover,
        }

        async def drain(buffer: Buffer, take: Callable[[Any], None]) -> None:
            while True:
                item = await buffer.get()
                try:
                    take(item)
                except Exception:  # one bad record must not stop the station
                    log.exception("could not publish %r from %s", item, buffer.name)

        jobs = [asyncio.create_task(drain(b, takers[name])) for name, b in self.inputs.items() if b is not None]
        if self.session.every_s:
            jobs.append(asyncio.create_task(self._heartbeats(self.session.every_s), name="publish-heartbeat"))
        try:
            await run_until(stop, jobs)
        finally:
            for name, buffer in self.inputs.items():  # what was handed in before the stop still goes out
                while buffer is not None and buffer.qsize():
                    item = buffer.get_nowait()
                    try:
                        takers[name](item)
                    except Exception:
                        log.exception("could not publish %r from %s", item, buffer.name)

    async def _heartbeats(self, every_s: float) -> None:
        """The online status again every ``every_s`` with the service's health; the first as soon as it is online."""
        while True:
            await self.online.wait()
            try:
                reasons = self.health() if self.health is not None else None
            except Exception:  # the health is a courtesy to the site: never the reason a heartbeat stops
                log.exception("could not read the service's health for the status heartbeat")
                reasons = None
            if self.session.heartbeat(reasons):
                self.counts["heartbeats"] += 1
            await asyncio.sleep(every_s)

    # ---- what the other stations hand in -----------------------------------------------------------------------

    def alarm_event(self, ev: AlarmEvent) -> None:
        """An alarm transition: its retained state (cleared once normal and acknowledged) and the event, both stored first."""
        alarm = ev.alarm
        self._assets[ev.alarm_id] = alarm.asset
        topic = self.topics.alarm(alarm.asset, ev.alarm_id)
        if ev.state is AlarmState.NORMAL:
            self.sender.store(Message(topic, b"", retain=True, lane=ALARM_LANE))
            self._cleared.add(ev.alarm_id)
        else:
            self._cleared.discard(ev.alarm_id)
            self.sender.store(self._json(topic, payloads.alarm_state(alarm, self.site, self.line), payloads.ALARM, True, ALARM_LANE))
        self.sender.store(self._json(self.topics.events(), payloads.event(ev, self.site, self.line), payloads.EVENT, False, ALARM_LANE))
        if ev.state is AlarmState.NORMAL:
            # same lane as the diagnosis itself, so a diagnosis still queued cannot land after its clearing
            self.sender.store(Message(self.topics.diagnosis(alarm.asset, ev.alarm_id), b"", retain=True, lane=DIAGNOSIS_LANE))

    def diagnosis(self, d: Diagnosis, asset: str | None = None) -> None:
        """The copilot's diagnosis, retained while its alarm lives (a diagnosis for a cleared alarm is not retained)."""
        asset = asset or d.asset or self._asset_of(d.alarm_id)  # the record names it; older ones (stored) may not
        if d.asset and d.alarm_id not in self._assets:
            self._assets[d.alarm_id] = d.asset  # its streamed text and model job go out under the same asset
        body = payloads.diagnosis(d, asset, self.site, self.line)
        retain = d.alarm_id not in self._cleared
        self.sender.store(self._json(self.topics.diagnosis(asset, d.alarm_id), body, payloads.DIAGNOSIS, retain, DIAGNOSIS_LANE))

    def diagnosis_token(self, alarm_id: str, token: str, done: bool = False, asset: str | None = None) -> None:
        """A piece of the diagnosis text as it is written; never waits, dropped (counted) when late."""
        asset = asset or self._asset_of(alarm_id)
        seq = self._stream_seq.get(alarm_id, 0)
        self._stream_seq[alarm_id] = seq + 1
        if done:
            self._stream_seq.pop(alarm_id, None)
        body = payloads.stream_chunk(alarm_id, asset, seq, token, done)
        self.sender.ephemeral(self._json(self.topics.diagnosis_stream(asset, alarm_id), body, payloads.STREAM, False, -1))

    def answer_chunk(self, request_id: str, alarm_id: str | None, token: str, done: bool, text: str | None = None,
                     error: str | None = None, origin: str | None = None) -> None:
        """A piece of the copilot's answer to a question; the last one (``done``) carries the full text."""
        key = request_id or ""  # "" also keys the response topic of a question whose id could not be read
        self._answer(AnswerChunk(key, alarm_id, token, done, text, error, origin),
                     self.inbound.route(key, self.topics.answer(request_id), forget=done))

    def model_job(self, job: ModelJob) -> None:
        """Where a job for the model stands: a diagnosis' on its alarm's ``.../job`` topic, an answer's on the
        question's reply route. Not retained (a restart leaves no stale "queued"): it goes out again while it waits."""
        body = payloads.model_job(job, self.site, self.line)
        if job.job == "answer":
            key = job.request_id or ""
            topic, correlation = self.inbound.route(key, self.topics.answer(job.request_id), forget=False)
        else:
            if job.alarm_id is None:
                return
            topic, correlation = self.topics.diagnosis_job(self._asset_of(job.alarm_id), job.alarm_id), None
        message = self._json(topic, body, payloads.MODEL_JOB, False, -1)
        message.extra["correlation"] = correlation
        self.sender.ephemeral(message)

    def held_alarms(self, held: HeldAlarms) -> None:
        """The alarms the engine holds: once online, clear the retained messages of every other alarm (ghosts)."""
        if self._reconciling is not None and not self._reconciling.done():
            self._reconciling.cancel()  # a newer word from the engine (its station restarted) replaces it
        self.reconciled.clear()
        self._reconciling = asyncio.create_task(self._reconcile(held), name="publish-reconcile")

    def handover(self, h: Handover) -> None:
        """A shift handover, retained as the line's newest (stored first, sent with the alarms' priority)."""
        self.sender.store(self._json(self.topics.handover(), payloads.handover(h), payloads.HANDOVER, True, ALARM_LANE))

    def command_reply(self, result: CommandResult) -> None:
        """The alarm engine's result for a command that came in over MQTT."""
        self._reply(result, self.inbound.route(result.request_id, self.topics.command_reply(result.request_id)))

    async def _reconcile(self, held: HeldAlarms, wait_s: float = 10.0, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            await self.online.wait()
            retained = await self.session.retained([self.topics.all_alarms(), self.topics.all_diagnoses()], wait_s)
            if retained is not None:
                break
            self.counts["reconcile_retries"] += 1
            log.warning("could not read the retained alarms on %s:%d within %.0f s (attempt %d of %d); ghosts of "
                        "an earlier run are not cleared yet", self.connection.host, self.connection.port, wait_s,
                        attempt, attempts)
        else:
            # e.g. a broker ACL that refuses the second connection: alarms still go out, ghosts may stay
            self.counts["reconcile_failed"] += 1
            log.error("gave up reconciling the broker with the engine's alarms on %s:%d: retained alarms of an "
                      "earlier run may remain (the dashboard drops those the engine refuses)",
                      self.connection.host, self.connection.port)
            return
        ghosts = []
        for topic in sorted(retained):
            parts = self.topics.parse(topic)
            if parts is None or parts.site != self.site or parts.line != self.line or parts.alarm_id is None:
                continue
            owner = held.alarms.get(parts.alarm_id) or self._assets.get(parts.alarm_id)
            if owner == parts.asset:
                continue  # the engine holds it, or this run published it since: not ours to clear
            lane = ALARM_LANE if parts.kind == "alarm" else DIAGNOSIS_LANE
            self.sender.store(Message(topic, b"", retain=True, lane=lane))
            ghosts.append(f"{parts.kind} {parts.alarm_id}")
        self.counts["ghosts_cleared"] += len(ghosts)
        if ghosts:
            log.warning("cleared %d retained message(s) of alarms the engine does not hold (left by an earlier run): %s",
                        len(ghosts), ", ".join(ghosts[:10]) + (" ..." if len(ghosts) > 10 else ""))
        log.info("broker reconciled with the engine: %d alarm(s) held, %d ghost message(s) cleared",
                 len(held.alarms), len(ghosts))
        self.reconciled.set()

    # ---- observation -------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "online": self.online.is_set(),
            "conflict": self.session.conflict,
            "outbox_pending": self.outbox.pending(),
            "outbox_dropped": self.outbox.dropped,
            "inflight": self.sender.inflight,
            "stream_queued": self.sender.stream_queued,
            "site_links": {name: dict(link) for name, link in self.site_links.items()},
            **self.counts,
        }

    async def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Wait until every alert was acknowledged by the broker."""
        await asyncio.wait_for(self.idle.wait(), timeout_s)

    # ---- inside --------------------------------------------------------------------------------------------------

    def _message(self, topic: str, raw: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        name = self.topics.site_link_name(topic)
        if name is None:
            self.inbound.message(topic, raw, response_topic, correlation)
            return
        up = raw.strip() == b"1"
        if raw.strip() not in (b"0", b"1", b""):
            self.counts["site_link_unreadable"] += 1
            log.warning("site link %s: unreadable state %r on %s (expected 1 or 0)", printable(name),
                        printable(raw[:40].decode(errors="replace")), topic)
            return
        if not raw.strip():  # the bridge was removed from the edge broker's configuration
            self.site_links.pop(name, None)
            return
        link = self.site_links.get(name)
        if link is None or link["up"] != up:
            self.site_links[name] = {"up": up, "since": time.time()}
            self.site_link_changed.set()
            (log.info if up else log.warning)("site link %s %s%s", printable(name), "up" if up else "down",
                                              "" if up else ": alarms wait in the edge broker's queue until it is back")

    def _online(self) -> None:
        self.offline.clear()
        self.counts["connects"] += 1
        log.info("publisher online at %s:%d; %d alerts pending", self.connection.host, self.connection.port,
                 self.outbox.pending())
        self.sender.went_online()

    def _offline(self, reason: str) -> None:
        if self.online.is_set():
            log.warning("publisher lost the broker (%s); alerts go to the outbox until it is back", reason)
        self.sender.went_offline()
        self.offline.set()
        self.counts["disconnects"] += 1

    def _hand(self, message: Message):
        return self.session.publish(message.topic, message.payload, retain=message.retain, kind=message.schema,
                                    expiry_s=message.expiry_s, correlation=message.extra.get("correlation"))

    def _reply(self, result: CommandResult, route: Route) -> None:
        topic, correlation = route
        message = self._json(topic, payloads.command_reply(result), payloads.COMMAND_REPLY, False, -1)
        message.extra["correlation"] = correlation
        self.sender.reply(message)

    def _answer(self, chunk: AnswerChunk, route: Route) -> None:
        key = chunk.request_id
        seq = self._answer_seq.get(key, 0)
        self._answer_seq[key] = seq + 1
        if chunk.done:
            self._answer_seq.pop(key, None)
        topic, correlation = route
        body = payloads.answer(chunk.request_id or None, chunk.alarm_id, seq, chunk.text, chunk.done, chunk.full_text,
                               chunk.error, chunk.origin)
        message = self._json(topic, body, payloads.ANSWER, False, -1)
        message.extra["correlation"] = correlation
        if chunk.error:
            self.sender.reply(message)
        else:
            self.sender.ephemeral(message)

    def _asset_of(self, alarm_id: str) -> str:
        asset = self._assets.get(alarm_id)
        if asset is None:
            log.warning("diagnosis for alarm %s whose asset is unknown (no alarm event seen): topic level %r", alarm_id, UNKNOWN_ASSET)
            return UNKNOWN_ASSET
        return asset

    def _json(self, topic: str, body: dict[str, Any], kind: str, retain: bool, lane: int) -> Message:
        return Message(topic, payloads.encode(body), retain=retain, schema=kind, lane=lane)
