"""The publish station: alarm states, events and diagnoses out over MQTT (store-and-forward), operator commands and questions in.

Outgoing traffic leaves in this order of priority, one MQTT client, QoS 1:

1. alarm states and events (SQLite outbox lane 0),
2. replies to commands (memory),
3. diagnoses (outbox lane 1),
4. streamed diagnosis text and copilot answers (memory, bounded, expire when late).

Alerts are written to the outbox first and deleted when their PUBACK arrives.
paho keeps the messages it was handed and resends them itself after a
reconnect, so a row is handed to paho once per process; only a new process
resends rows that were never acknowledged. After each (re)connect the birth
message goes first and the outbox is resumed only once the broker acknowledged
it — by then paho has resent its own unacknowledged messages, so order holds.

One publisher per site/line: at start it reads the retained status, and if another
instance is online there it waits for that one's will, then refuses to start with a
message naming it (rather than taking the client id from it, and back, forever).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Union

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.mqtt import MqttSession, Will
from factory_copilot.config import LineConfig, MqttConnection
from factory_copilot.records import (
    AlarmEvent,
    AlarmState,
    CommandResult,
    Diagnosis,
    OperatorCommand,
    Question,
)
from factory_copilot.publish import payloads
from factory_copilot.publish.outbox import ALARM_LANE, DIAGNOSIS_LANE, Message, Outbox
from factory_copilot.publish.payloads import Rejected
from factory_copilot.publish.topics import DEFAULT_PREFIX, Topics

log = logging.getLogger(__name__)

CommandRunner = Callable[[OperatorCommand], Union[CommandResult, Awaitable[CommandResult]]]


class InstanceConflict(RuntimeError):
    """Another publisher is online for the same site/line on this broker."""
UNKNOWN_ASSET = "unknown"  # topic level for a diagnosis whose alarm this publisher never saw


class Publisher:
    """Publishes one line's alarms and diagnoses under ``<prefix>/<site>/<line>``; see the module docstring."""

    def __init__(
        self,
        site: str,
        line: str,
        outbox_path: str | Path,
        *,
        connection: MqttConnection | None = None,
        prefix: str = DEFAULT_PREFIX,
        client_id: str | None = None,
        commands: Buffer[OperatorCommand] | CommandRunner | None = None,
        questions: Buffer[Question] | None = None,
        window: int = 32,
        stream_expiry_s: int = 120,
        stream_max: int = 2000,
        outbox_max_rows: int = 100_000,
    ):
        self.site, self.line = site, line
        self.topics = Topics(site, line, prefix)
        self.connection = connection or MqttConnection()
        self.client_id = client_id or self.connection.client_id or f"factory-copilot-publish-{site}-{line}"
        self.outbox = Outbox(outbox_path, max_rows=outbox_max_rows)
        self.commands = commands
        self.questions = questions
        self.window = window  # messages handed to paho and not yet acknowledged
        self.stream_expiry_s = stream_expiry_s
        self.started_at = time.time()
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        # set once the broker acknowledged this connection's birth message; cleared on disconnect
        self.online = asyncio.Event()
        self.offline = asyncio.Event()
        self.idle = asyncio.Event()  # nothing pending anywhere
        self.session: MqttSession | None = None
        self.counts = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender: asyncio.Task | None = None
        self._generation = 0  # the session's paho client generation our in-flight messages were handed to
        self._wake = asyncio.Event()
        self._inflight: dict[int, Message] = {}
        self._acked_ids: list[int] = []  # acknowledged, to be deleted from the outbox by the sender
        self._birth_mid: int | None = None
        self._queued: dict[int, collections.deque[Message]] = {ALARM_LANE: collections.deque(), DIAGNOSIS_LANE: collections.deque()}
        self._loaded = {ALARM_LANE: 0, DIAGNOSIS_LANE: 0}  # highest outbox id read into _queued, per lane
        self._replies: collections.deque[Message] = collections.deque(maxlen=1000)
        self._stream: collections.deque[Message] = collections.deque(maxlen=stream_max)
        self._assets: dict[str, str] = {}  # alarm id -> asset, learnt from alarm events
        self._cleared: set[str] = set()  # alarms back to normal: their diagnosis is no longer retained
        self._stream_seq: dict[str, int] = {}
        self._answer_seq: dict[str, int] = {}
        self._routes: collections.OrderedDict[str, tuple[str, bytes | None]] = collections.OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self._update_idle()

    @classmethod
    def for_line(cls, line: LineConfig, outbox_path: str | Path, **kwargs: Any) -> "Publisher":
        return cls(line.site, line.line, outbox_path, connection=kwargs.pop("connection", line.mqtt), **kwargs)

    # ---- life cycle --------------------------------------------------------------------------------------------

    @property
    def v5(self) -> bool:
        return self.session.v5 if self.session is not None else self.connection.protocol == "5"

    @property
    def client(self) -> paho.Client | None:
        return self.session.client if self.session is not None else None

    async def start(self, check_instance: bool = True) -> "Publisher":
        """Start connecting (retrying until the broker answers) and sending; returns at once.

        With ``check_instance``, first make sure no other publisher is online for this site/line
        (InstanceConflict if one is); a broker that does not answer yet is not waited for.
        """
        self._loop = asyncio.get_running_loop()
        if check_instance:
            await self._check_instance()
        self._open_session()
        self._sender = asyncio.create_task(self._send_forever(), name="publish-sender")
        log.info(
            "publishing %s under %s to %s:%d (MQTT %s), outbox %s",
            self.client_id, self.topics.base, self.connection.host, self.connection.port, self.connection.protocol, self.outbox,
        )
        return self

    def _open_session(self) -> None:
        will = payloads.status("offline", self.site, self.line, self.started_at, self.client_id, self.instance)
        self.session = MqttSession(
            self.connection, role="publish", client_id=self.client_id,
            subscriptions=[(self.topics.commands(), 1), (self.topics.ask(), 1)],
            will=Will(self.topics.status(), payloads.encode(will), qos=1, retain=True, content_type="application/json",
                      user_properties=(("schema", payloads.STATUS),)),
            on_up=self._on_up, on_down=self._on_down, on_message=self._on_message, on_publish=self._on_publish,
            # our own window decides; paho must never hold a message back as "queued"
            configure=lambda client: client.max_inflight_messages_set(0),
        )
        self.session.start()

    async def _check_instance(self, read_s: float = 2.0) -> None:
        """Refuse to start beside a live publisher of the same site/line (its retained status says online)."""
        status = await asyncio.to_thread(_retained_status, self.connection, self.topics.status(), read_s)
        if not status or status.get("state") != "online" or status.get("instance") == self.instance:
            return
        # a crashed instance's will arrives within 1.5 keep-alives; a live one stays online
        wait_s = 1.5 * self.connection.keepalive_s
        log.warning("another publisher (%s, started %s) says it is online for %s; waiting up to %.0f s for its will",
                    status.get("instance") or status.get("client_id"), _when(status.get("started_at")),
                    self.topics.base, wait_s)
        later = await asyncio.to_thread(_retained_status, self.connection, self.topics.status(), wait_s,
                                        lambda s: s.get("state") == "offline")
        if later and later.get("state") == "offline":
            return
        raise InstanceConflict(
            f"another factory-copilot instance ({status.get('instance') or status.get('client_id')}, started "
            f"{_when(status.get('started_at'))}) is publishing {self.site}/{self.line} on {self.connection.host}:"
            f"{self.connection.port}; stop it first, or give this line another site/line"
        )

    async def stop(self, timeout_s: float = 3.0) -> None:
        """Say offline (retained), disconnect and close the outbox; what was not acknowledged stays for the next start."""
        if self._sender:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            self._sender = None
        for task in list(self._tasks):
            task.cancel()
        if self.session:
            if self.session.connected:
                bye = payloads.status("offline", self.site, self.line, self.started_at, self.client_id, self.instance)
                info = self.session.publish(
                    self.topics.status(), payloads.encode(bye), qos=1, retain=True, properties=self._props(payloads.STATUS)
                )
                try:
                    await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, timeout_s), timeout_s + 1)
                except (asyncio.TimeoutError, RuntimeError, ValueError):
                    log.warning("offline status not acknowledged before disconnect; the broker's last will says it instead")
            await asyncio.to_thread(self.session.stop)
            self.session = None
        self.online.clear()
        self._closed = True
        self._forget_acked()
        self.outbox.close()

    async def __aenter__(self) -> "Publisher":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(
        self,
        events: Buffer[AlarmEvent] | None = None,
        diagnoses: Buffer[Diagnosis] | None = None,
        tokens: Buffer[tuple] | None = None,
        results: Buffer[CommandResult] | None = None,
    ) -> None:
        """Consume the station's input buffers until cancelled (``tokens`` holds ``(alarm_id, token[, done])``)."""

        async def drain(buffer: Buffer, take: Callable[[Any], None]) -> None:
            while True:
                item = await buffer.get()
                try:
                    take(item)
                except Exception:  # one bad record must not stop the station
                    log.exception("could not publish %r from %s", item, buffer.name)

        jobs = [
            drain(b, take)
            for b, take in (
                (events, self.alarm_event),
                (diagnoses, self.diagnosis),
                (tokens, lambda t: self.diagnosis_token(*t)),
                (results, self.command_reply),
            )
            if b is not None
        ]
        await asyncio.gather(*jobs)

    # ---- what the other stations hand in -----------------------------------------------------------------------

    def alarm_event(self, ev: AlarmEvent) -> None:
        """An alarm transition: its retained state (cleared once normal and acknowledged) and the event, both stored first."""
        alarm = ev.alarm
        self._assets[ev.alarm_id] = alarm.asset
        topic = self.topics.alarm(alarm.asset, ev.alarm_id)
        if ev.state is AlarmState.NORMAL:
            self._store(Message(topic, b"", retain=True, lane=ALARM_LANE))
            self._cleared.add(ev.alarm_id)
        else:
            self._cleared.discard(ev.alarm_id)
            self._store(self._json(topic, payloads.alarm_state(alarm, self.site, self.line), payloads.ALARM, True, ALARM_LANE))
        self._store(self._json(self.topics.events(), payloads.event(ev, self.site, self.line), payloads.EVENT, False, ALARM_LANE))
        if ev.state is AlarmState.NORMAL:
            # same lane as the diagnosis itself, so a diagnosis still queued cannot land after its clearing
            self._store(Message(self.topics.diagnosis(alarm.asset, ev.alarm_id), b"", retain=True, lane=DIAGNOSIS_LANE))

    def diagnosis(self, d: Diagnosis, asset: str | None = None) -> None:
        """The copilot's diagnosis, retained while its alarm lives (a diagnosis for a cleared alarm is not retained)."""
        asset = asset or self._asset_of(d.alarm_id)
        body = payloads.diagnosis(d, asset, self.site, self.line)
        retain = d.alarm_id not in self._cleared
        self._store(self._json(self.topics.diagnosis(asset, d.alarm_id), body, payloads.DIAGNOSIS, retain, DIAGNOSIS_LANE))

    def diagnosis_token(self, alarm_id: str, token: str, done: bool = False, asset: str | None = None) -> None:
        """A piece of the diagnosis text as it is written; never waits, dropped (counted) when late."""
        asset = asset or self._asset_of(alarm_id)
        seq = self._stream_seq.get(alarm_id, 0)
        self._stream_seq[alarm_id] = seq + 1
        if done:
            self._stream_seq.pop(alarm_id, None)
        body = payloads.stream_chunk(alarm_id, asset, seq, token, done)
        self._ephemeral(self._json(self.topics.diagnosis_stream(asset, alarm_id), body, payloads.STREAM, False, -1))

    def answer_chunk(self, request_id: str, alarm_id: str | None, token: str, done: bool, text: str | None = None) -> None:
        """A piece of the copilot's answer to a question; the last one (``done``) carries the full text."""
        self._answer(request_id, alarm_id, token, done, text)

    def command_reply(self, result: CommandResult) -> None:
        """The alarm engine's result for a command that came in over MQTT."""
        self._reply(result, *self._route(result.request_id, self.topics.command_reply(result.request_id)))

    def _reply(self, result: CommandResult, topic: str, correlation: bytes | None) -> None:
        message = self._json(topic, payloads.command_reply(result), payloads.COMMAND_REPLY, False, -1)
        message.extra["correlation"] = correlation
        self._replies.append(message)
        self._kick()

    # ---- observation -------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "online": self.online.is_set(),
            "conflict": self.session.conflict if self.session else None,
            "outbox_pending": self.outbox.pending(),
            "outbox_dropped": self.outbox.dropped,
            "inflight": len(self._inflight),
            "stream_queued": len(self._stream),
            **self.counts,
        }

    async def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Wait until every alert was acknowledged by the broker."""
        await asyncio.wait_for(self.idle.wait(), timeout_s)

    # ---- inside --------------------------------------------------------------------------------------------------

    def _asset_of(self, alarm_id: str) -> str:
        asset = self._assets.get(alarm_id)
        if asset is None:
            log.warning("diagnosis for alarm %s whose asset is unknown (no alarm event seen): topic level %r", alarm_id, UNKNOWN_ASSET)
            return UNKNOWN_ASSET
        return asset

    def _json(self, topic: str, body: dict[str, Any], kind: str, retain: bool, lane: int) -> Message:
        return Message(topic, payloads.encode(body), retain=retain, schema=kind, lane=lane)

    def _store(self, message: Message) -> None:
        self.outbox.add(message)
        self.counts["stored"] += 1
        self._kick()

    def _ephemeral(self, message: Message) -> None:
        message.expiry_s = self.stream_expiry_s
        if len(self._stream) == self._stream.maxlen:
            self.counts["stream_dropped"] += 1
        self._stream.append(message)
        self._kick()

    def _answer(self, request_id: str | None, alarm_id: str | None, token: str, done: bool, text: str | None, error: str | None = None) -> None:
        key = request_id or ""  # "" also keys the response topic of a question whose id could not be read
        seq = self._answer_seq.get(key, 0)
        self._answer_seq[key] = seq + 1
        if done:
            self._answer_seq.pop(key, None)
        topic, correlation = self._route(key, self.topics.answer(request_id), forget=done)
        message = self._json(topic, payloads.answer(request_id, alarm_id, seq, token, done, text, error), payloads.ANSWER, False, -1)
        message.extra["correlation"] = correlation
        if error:
            self._replies.append(message)
            self._kick()
        else:
            self._ephemeral(message)

    def _remember_route(self, request_id: str, response_topic: str | None, correlation: bytes | None) -> None:
        if response_topic:
            self._routes[request_id] = (response_topic, correlation)
            while len(self._routes) > 1000:
                self._routes.popitem(last=False)

    def _route(self, request_id: str | None, default: str, forget: bool = True) -> tuple[str, bytes | None]:
        """Where the reply to ``request_id`` goes: the MQTT 5 response topic it named, else ``default``."""
        if request_id is not None and request_id in self._routes:
            return self._routes.pop(request_id) if forget else self._routes[request_id]
        return default, None

    def _kick(self) -> None:
        self.idle.clear()
        self._wake.set()

    def _update_idle(self) -> None:
        if not self._inflight and not self.outbox.pending() and not self._replies and not self._stream:
            self.idle.set()
        else:
            self.idle.clear()

    async def _send_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self._forget_acked()
                self._fill()
            except Exception:  # the sender must outlive any one bad message
                log.exception("publish sender failed; retrying on the next message")
            self._update_idle()

    def _forget_acked(self) -> None:
        """Delete acknowledged alerts from the outbox, many in one transaction."""
        if self._acked_ids:
            ids, self._acked_ids = self._acked_ids, []
            self.outbox.done(ids)

    def _next(self, urgent_only: bool) -> Message | None:
        """The most urgent message not yet handed to the client (only alarms and replies when ``urgent_only``)."""
        for source in (ALARM_LANE, "replies") if urgent_only else (ALARM_LANE, "replies", DIAGNOSIS_LANE, "stream"):
            if source == "replies":
                if self._replies:
                    return self._replies.popleft()
            elif source == "stream":
                while self._stream:
                    message = self._stream.popleft()
                    if time.time() - message.created_at <= (message.expiry_s or 0):
                        return message
                    self.counts["stream_expired"] += 1
            else:
                queue = self._queued[source]
                if not queue:
                    rows = self.outbox.after(source, self._loaded[source], 256)
                    if rows:
                        self._loaded[source] = rows[-1].id
                        queue.extend(rows)
                if queue:
                    return queue.popleft()
        return None

    def _fill(self) -> None:
        while self.online.is_set() and self.session and len(self._inflight) < self.window:
            # half the window stays free for alarms, so a diagnosis flood never makes an alarm wait for a slot
            message = self._next(urgent_only=len(self._inflight) >= self.window // 2)
            if message is None:
                return
            try:
                info = self.session.publish(
                    message.topic, message.payload, qos=1, retain=message.retain,
                    properties=self._props(message.schema, message.expiry_s, message.extra.get("correlation")),
                )
            except ValueError as exc:  # a message the client refuses (too large, bad topic) must not block the ones behind it
                log.error("cannot publish to %s: %s; message dropped", message.topic, exc)
                self.counts["refused"] += 1
                if message.id:
                    self.outbox.done([message.id])
                continue
            # NO_CONN: paho keeps the message and sends it after the reconnect; the PUBACK still finds it here
            self._inflight[info.mid] = message
            self.counts["handed"] += 1

    def _props(
        self, kind: str | None, expiry_s: int | None = None, correlation: bytes | None = None
    ) -> Properties | None:
        if self.session is None or kind is None:
            return None  # an empty retained clear carries no properties
        return self.session.properties(content_type="application/json", user=[("schema", kind)], expiry_s=expiry_s,
                                       correlation=correlation)

    # ---- session callbacks (paho's network thread, guarded): hand everything over to the event loop ---------------

    def _on_up(self) -> None:
        session = self.session
        if session is None:
            return
        birth = payloads.status("online", self.site, self.line, self.started_at, self.client_id, self.instance)
        info = session.publish(self.topics.status(), payloads.encode(birth), qos=1, retain=True,
                               properties=self._props(payloads.STATUS))
        # scheduled before its PUBACK can be handed over (same thread, FIFO), so _acked will know it
        self._call(self._birth_sent, info.mid, session.generation)

    def _on_down(self, reason: str) -> None:
        self._call(self._went_offline, reason)

    def _on_publish(self, mid: int, failure: str | None) -> None:
        self._call(self._acked, mid, failure)

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        self._call(self._incoming, msg.topic, bytes(msg.payload), response_topic, correlation)

    def _call(self, fn: Callable, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._unless_closed, fn, *args)

    def _unless_closed(self, fn: Callable, *args: Any) -> None:
        # callbacks already on their way when stop() closed the outbox have nothing left to update
        if not self._closed:
            fn(*args)

    # ---- the same, on the event loop -----------------------------------------------------------------------------

    def _birth_sent(self, mid: int, generation: int) -> None:
        self._birth_mid = mid
        if generation != self._generation:
            # a new paho client (protocol fallback) never saw what the old one held: hand those again
            self._generation = generation
            for message in self._inflight.values():
                queue = self._replies if message.lane < 0 else self._queued[message.lane]
                queue.appendleft(message)
            self._inflight.clear()

    def _went_offline(self, reason: str) -> None:
        if self.online.is_set():
            log.warning("publisher lost the broker (%s); alerts go to the outbox until it is back", reason)
        self.online.clear()
        self.offline.set()
        self.counts["disconnects"] += 1

    def _acked(self, mid: int, failure: str | None) -> None:
        if mid == self._birth_mid:
            self._birth_mid = None
            self.offline.clear()
            self.online.set()
            self.counts["connects"] += 1
            log.info("publisher online at %s:%d; %d alerts pending", self.connection.host, self.connection.port, self.outbox.pending())
            self._kick()
            return
        message = self._inflight.pop(mid, None)
        if message is None:
            return
        if failure:
            # the broker refused it (not authorised, quota...): resending cannot help, so it leaves the outbox, loudly
            log.error("broker refused the message on %s: %s", message.topic, failure)
            self.counts["refused"] += 1
        else:
            self.counts["acked"] += 1
        if message.id:
            self._acked_ids.append(message.id)
        self._kick()

    def _incoming(self, topic: str, raw: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        parts = self.topics.parse(topic)
        kind = parts.kind if parts else None
        if kind == "commands":
            self._command_in(raw, response_topic, correlation)
        elif kind == "ask":
            self._question_in(raw, response_topic, correlation)

    def _command_in(self, raw: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        parsed = payloads.parse_command(raw)
        if isinstance(parsed, Rejected):
            self.counts["commands_rejected"] += 1
            log.warning("rejected command on %s: %s", self.topics.commands(), parsed.reason)
            result = CommandResult(parsed.request_id, False, f"rejected: {parsed.reason}")
            self._reply(result, response_topic or self.topics.command_reply(parsed.request_id), correlation)
            return
        self.counts["commands"] += 1
        self._remember_route(parsed.request_id, response_topic, correlation)
        if isinstance(self.commands, Buffer):
            self.commands.offer(parsed)
        elif callable(self.commands):
            task = asyncio.ensure_future(self._run_command(parsed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.command_reply(CommandResult(parsed.request_id, False, "no alarm engine is attached to this publisher; nothing changed"))

    async def _run_command(self, cmd: OperatorCommand) -> None:
        try:
            result = self.commands(cmd)  # type: ignore[operator]
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            log.exception("alarm engine failed on %s %s", cmd.command, cmd.alarm_id)
            result = CommandResult(cmd.request_id, False, f"alarm engine error: {exc}")
        self.command_reply(result)

    def _question_in(self, raw: bytes, response_topic: str | None, correlation: bytes | None) -> None:
        parsed = payloads.parse_question(raw)
        self._remember_route(parsed.request_id or "", response_topic, correlation)
        if isinstance(parsed, Rejected):
            self.counts["questions_rejected"] += 1
            log.warning("rejected question on %s: %s", self.topics.ask(), parsed.reason)
            self._answer(parsed.request_id, None, "", True, None, error=f"rejected: {parsed.reason}")
            return
        if self.questions is None:
            self._answer(parsed.request_id, parsed.alarm_id, "", True, None, error="no copilot is attached to this publisher")
            return
        self.counts["questions"] += 1
        self.questions.offer(parsed)


def _when(ts: object) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(ts)))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return "at an unknown time"


def _retained_status(conn: MqttConnection, topic: str, wait_s: float,
                     until: Callable[[dict], bool] | None = None) -> dict | None:
    """The retained status on ``topic`` (None if there is none or the broker does not answer in ``wait_s``).

    With ``until``, keep listening up to ``wait_s`` for a status that satisfies it and return that one.
    """
    import threading

    seen: list[dict] = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(msg: paho.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload) if msg.payload else {}
        except ValueError:
            return
        if isinstance(body, dict):
            seen.append(body)
            if until is None or until(body):
                done.set()

    probe = MqttSession(conn, role="instance-check", subscriptions=[(topic, 1)], on_message=on_message,
                        on_up=subscribed.set)
    probe.start()
    try:
        if not subscribed.wait(wait_s if until else min(wait_s, 5.0)):
            return None  # no broker yet: nothing to check against; the session will keep trying
        # a retained message comes right after the subscription; none within a moment means there is none
        done.wait(wait_s if until else 1.0)
        return seen[-1] if seen else None
    finally:
        probe.stop()
