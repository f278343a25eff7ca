"""The dashboard's one MQTT connection: follows the line's alarm, diagnosis, stream and reply topics
into a lock-protected snapshot, and publishes operator commands, feedback and questions.

paho calls back on its own network thread; that thread only updates the snapshot
under the lock. The Streamlit script (in its own thread) copies the snapshot and
renders it, so no ``st.*`` call ever happens on paho's thread.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from factory_copilot.config import MqttConnection
from factory_copilot.records import Alarm, CommandKind, Diagnosis
from factory_copilot.plumbing.mqtt import MqttSession
from factory_copilot.names import DEFAULT_PREFIX
from factory_copilot.publish import payloads
from factory_copilot.publish.topics import Topics

log = logging.getLogger(__name__)

# the operator's buttons; out of service and back are an engineer's commands (MQTT, `alarms` CLI)
COMMANDS = tuple(k.value for k in (CommandKind.ACKNOWLEDGE, CommandKind.SHELVE, CommandKind.UNSHELVE))


@dataclass
class Snapshot:
    """What the broker has told the dashboard so far."""

    connected: bool = False
    publisher_status: str | None = None  # the publish station's birth/will: "online" / "offline"
    alarms: dict[str, Alarm] = field(default_factory=dict)  # retained alarm states (cleared ones removed)
    cleared: set[str] = field(default_factory=set)  # alarms whose retained state was cleared
    diagnoses: dict[str, Diagnosis] = field(default_factory=dict)
    streams: dict[str, dict[int, str]] = field(default_factory=dict)  # alarm id -> seq -> token
    stream_done: set[str] = field(default_factory=set)  # every chunk up to the final one has arrived
    stream_end: dict[str, int] = field(default_factory=dict)  # alarm id -> seq of the final chunk
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)  # command request id -> reply
    answers: dict[str, dict[int, str]] = field(default_factory=dict)  # ask request id -> seq -> token
    answer_done: dict[str, dict[str, Any]] = field(default_factory=dict)  # ask request id -> final chunk, once complete
    answer_end: dict[str, dict[str, Any]] = field(default_factory=dict)  # final chunks whose predecessors may lag
    answer_first: dict[str, dict[str, Any]] = field(default_factory=dict)  # ask request id -> the runbook's answer,
    # sent at once while the model works (answer/1 with done false and text set)
    diagnosis_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # alarm id -> newest model-job/1
    answer_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # ask request id -> newest model-job/1
    events: deque = field(default_factory=lambda: deque(maxlen=200))
    rejected: int = 0  # payloads that could not be read (logged, skipped)

    def stream_text(self, alarm_id: str) -> str:
        return "".join(t for _, t in sorted(self.streams.get(alarm_id, {}).items()))

    def answer_text(self, request_id: str) -> str:
        final = self.answer_done.get(request_id)
        if final and final.get("text"):
            return str(final["text"])
        if final and final.get("error"):
            return f"The copilot could not answer: {final['error']}"
        return self.answer_tokens(request_id)

    def answer_tokens(self, request_id: str) -> str:
        """The model's words so far (the runbook's answer, sent whole, is ``answer_first``)."""
        return "".join(t for _, t in sorted(self.answers.get(request_id, {}).items()))


class LiveFeed:
    """Subscribes to ``<prefix>/<site>/<line>/#`` on start(); thread-safe ``snapshot()``, ``command()``, ``ask()``."""

    instances: ClassVar[list["LiveFeed"]] = []  # lets a test reach the feed a dashboard script built

    def __init__(self, conn: MqttConnection, site: str, line: str, prefix: str = DEFAULT_PREFIX):
        self.conn = conn
        self.topics = Topics(site, line, prefix)
        self._lock = threading.Condition()
        self._snap = Snapshot()
        self.session = MqttSession(conn, role="dashboard", subscriptions=[(self.topics.everything(), 1)],
                                   on_message=self._on_message, on_up=lambda: self._set_connected(True),
                                   on_down=lambda why: self._set_connected(False))
        LiveFeed.instances.append(self)

    @property
    def client(self):
        return self.session.client

    def start(self) -> "LiveFeed":
        self.session.start()
        return self

    def stop(self) -> None:
        self.session.stop()
        if self in LiveFeed.instances:
            LiveFeed.instances.remove(self)

    # ---------------------------------------------------------------- paho's thread

    def _set_connected(self, up: bool) -> None:
        with self._lock:
            self._snap.connected = up
            self._lock.notify_all()

    def _on_message(self, msg) -> None:
        parts = self.topics.parse(msg.topic)
        if parts is None or parts.kind in ("commands", "ask"):
            return
        try:
            body = json.loads(msg.payload) if msg.payload else None
            with self._lock:
                self._apply(parts, body)
                self._lock.notify_all()
        except Exception as exc:  # a malformed message is skipped; every other topic keeps flowing
            with self._lock:
                self._snap.rejected += 1
            log.warning("dashboard: skipped message on %s: %s", msg.topic, exc)

    def _apply(self, parts, body: Any) -> None:
        s = self._snap
        if parts.kind == "alarm":
            if body is None:
                s.alarms.pop(parts.alarm_id, None)
                s.cleared.add(parts.alarm_id)
            else:
                s.alarms[parts.alarm_id] = Alarm.from_dict(body)
                s.cleared.discard(parts.alarm_id)
        elif parts.kind == "diagnosis" and body is not None:
            s.diagnoses[parts.alarm_id] = payloads.parse_diagnosis(body)
        elif parts.kind == "stream" and body is not None:
            chunks = s.streams.setdefault(parts.alarm_id, {})
            chunks[int(body.get("seq", 0))] = str(body.get("token") or "")
            if body.get("done"):
                s.stream_end[parts.alarm_id] = int(body.get("seq", 0))
            # QoS 1 may deliver out of order: the text is complete only when no chunk before the last is missing
            if parts.alarm_id in s.stream_end and len(chunks) > s.stream_end[parts.alarm_id]:
                s.stream_done.add(parts.alarm_id)
        elif parts.kind == "command_reply" and body is not None:
            s.replies[parts.request_id] = body
        elif parts.kind == "answer" and isinstance(body, dict) and body.get("schema") == "model-job/1":
            # model-job/1 shares the reply topic: where the model's answer stands, not a piece of it
            self._job(s.answer_jobs, parts.request_id, body)
        elif parts.kind == "diagnosis_job" and isinstance(body, dict):
            self._job(s.diagnosis_jobs, parts.alarm_id, body)
        elif parts.kind == "answer" and body is not None and body.get("schema", "answer/1") == "answer/1":
            if not body.get("done") and body.get("text"):  # the runbook's answer, whole, ahead of the model's
                s.answer_first[parts.request_id] = body
            chunks = s.answers.setdefault(parts.request_id, {})
            chunks[int(body.get("seq", 0))] = str(body.get("token") or "")
            if body.get("done"):
                s.answer_end[parts.request_id] = body
            final = s.answer_end.get(parts.request_id)
            if final is not None and (final.get("text") or len(chunks) > int(final.get("seq", 0))):
                s.answer_done[parts.request_id] = final
        elif parts.kind == "status":
            # the publisher's birth/will (publish/payloads.py status): {"state": "online"|"offline", ...}
            s.publisher_status = (body.get("state") or body.get("status")) if isinstance(body, dict) else str(body)
        elif parts.kind == "events" and body is not None:
            s.events.appendleft(body)

    @staticmethod
    def _job(jobs: dict[str, dict[str, Any]], key: str, body: dict[str, Any]) -> None:
        """Keep a job's newest state (QoS 1 may deliver out of order), stamped with when the page heard it."""
        old = jobs.get(key)
        if old is not None and float(old.get("ts") or 0) > float(body.get("ts") or 0):
            return
        jobs[key] = {**body, "received": time.time()}

    # ---------------------------------------------------------------- the script's thread

    def snapshot(self) -> Snapshot:
        with self._lock:
            return copy.deepcopy(self._snap)

    def wait_for(self, predicate: Callable[[Snapshot], bool], timeout: float) -> bool:
        """Block until ``predicate(snapshot)`` holds (True) or ``timeout`` passes (False)."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self._snap), timeout)

    def command(self, command: str, alarm_id: str, actor: str, comment: str | None = None,
                shelve_s: float | None = None) -> str:
        """Publish an operator command on ``actor``'s own level (commands/<actor>); returns its request id."""
        if command not in COMMANDS:
            raise ValueError(f"command {command!r}: use one of {', '.join(COMMANDS)}")
        if command == CommandKind.SHELVE and not shelve_s:
            raise ValueError("shelving needs a duration (shelve_s): shelving always expires")
        request_id = uuid.uuid4().hex
        body = payloads.command(command, alarm_id, request_id, actor=actor, comment=comment, shelve_s=shelve_s)
        self.session.publish(self.topics.commands(actor), json.dumps(body), qos=1)
        return request_id

    def feedback(self, alarm_id: str, verdict: str, actor: str, actual_cause: str | None = None,
                 fix: str | None = None) -> str:
        """Publish an operator's verdict on an alarm on ``actor``'s own level (commands/<actor>), like a command:
        the service authorises it, audits it and stores it; returns its request id (the reply on commands/reply)."""
        request_id = uuid.uuid4().hex
        body = payloads.feedback(alarm_id, verdict, request_id, actor=actor, actual_cause=actual_cause, fix=fix)
        self.session.publish(self.topics.commands(actor), json.dumps(body), qos=1)
        return request_id

    def ask(self, alarm_id: str | None, question: str, actor: str) -> str:
        """Publish a question to the copilot; returns its request id (answer chunks on ask/reply/<id>)."""
        request_id = uuid.uuid4().hex
        body = payloads.question(alarm_id, question, request_id, actor)
        self.session.publish(self.topics.ask(actor), json.dumps(body), qos=1)
        return request_id
