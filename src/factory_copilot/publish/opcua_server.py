"""The line's alarms served as OPC UA Alarms & Conditions, on a server of the service's own (``service.opcua_server``).

An HMI or SCADA that speaks A&C subscribes to events of the Server object (an EventFilter on
AlarmConditionType) and sees every alarm of the engine as one AlarmConditionType instance, under an
object per asset (``<line>/<asset>/<alarm_id>``, HasCondition from the asset), with an event on each of its
changes (fields: ``publish/conditions.py``). The copilot's diagnosis summary is the condition's Comment
(user ``copilot``), told by an event of its own as a comment is in Part 9; the Comment stays until another
change brings one. ConditionRefresh is asyncua's own: it sends again the newest event of every condition whose
Retain is true.

At start it serves the alarms that stand in the engine's journal (read only), so ConditionRefresh finds
them before any of them changes; an event older than what a condition shows is passed over.

Acknowledge, TimedShelve and Unshelve are implemented here (asyncua ships the types, not the methods),
linked both on the type's method (a client calls it with the condition as object, as Part 9 says) and on
each instance's copy. They go the engine's command path (``execute``: the alarm station's, as MQTT
commands), as the user the OPC UA session logged in with (username and password checked against the
broker's users file, the Argon2id hashes of ``broker init``), so the line's ``roles:`` decide and the audit
trail names who. A refusal is the method's status: BadUserAccessDenied (roles, or an anonymous session),
BadEventIdUnknown, BadConditionBranchAlreadyAcked, BadConditionNotShelved. OneShotShelve is refused
with BadNotSupported: the engine's shelving always expires (ISA-18.2).

Who sent a method call: asyncua hands a method only its object and arguments, so the permission ruleset,
which asyncua asks about every request of a session with its user, keeps that user in a context
variable the method reads (the same task runs the check and the call).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from asyncua import Node, Server, ua
from asyncua.common import event_objects
from asyncua.crypto.permission_rules import USER_TYPES, PermissionRuleset, User, UserRole
from asyncua.server.event_generator import EventGenerator

from factory_copilot.alarms.journal import UNCHANGED, Journal
from factory_copilot.config import LineConfig, OpcuaAlarmServer
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.logins import Logins
from factory_copilot.plumbing.logs import Throttled, printable
from factory_copilot.plumbing.opcua import ensure_certificate
from factory_copilot.plumbing.tasks import run_until
from factory_copilot.publish.conditions import EXTRA_FIELDS, condition_fields, two_states, utc
from factory_copilot.records import Alarm, AlarmEvent, AlarmState, CommandKind, CommandResult, Diagnosis, OperatorCommand

log = logging.getLogger(__name__)

_CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("opcua_caller", default=None)
_TELLS_NOTHING = UNCHANGED  # audit rows of a refused command or a verdict: the alarm did not change
_RECENT_EVENTS = 64  # an Acknowledge may name any of a condition's last events (an HMI acts on what it shows)


class _Sessions(PermissionRuleset):
    """What a session may ask (reads, browsing, subscriptions, method calls; no writes, no address-space changes),
    and who asked: the user of each request, kept for the method that request calls."""

    def __init__(self, anonymous: bool):
        allowed = {ua.NodeId(t) for t in USER_TYPES} - {ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)}
        self.allowed = {UserRole.User: allowed, UserRole.Anonymous: allowed if anonymous else set()}

    def check_validity(self, user: User | None, action_type_id: ua.NodeId, body: Any) -> bool:
        named = user is not None and user.role is UserRole.User and user.name
        _CALLER.set(user.name if named else None)  # type: ignore[union-attr]
        return action_type_id in self.allowed.get(user.role if user else UserRole.Anonymous, set())


class _Logins:
    """asyncua's user manager: a username and password of the users file, or (if allowed) anonymous."""

    def __init__(self, logins: Logins | None, anonymous: bool):
        self.logins = logins
        self.anonymous = anonymous
        self.refusals = Throttled(log, 10.0)

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is None:
            return User(role=UserRole.Anonymous) if self.anonymous else None
        # Argon2id takes ~0.1 s of this thread once per session: asyncua asks synchronously, at log-in only
        if self.logins is not None and self.logins.check(username, password or ""):
            return User(role=UserRole.User, name=username)
        self.refusals.warning("login", "OPC UA alarm server: log-in of %s refused (unknown user or wrong password%s)",
                              printable(username), "" if self.logins else "; no users file configured")
        return None


@dataclass
class _Served:
    """One alarm's condition: its node, its event (asyncua keeps the newest for ConditionRefresh), its history."""

    alarm: Alarm
    node: Node
    event: Any
    generator: EventGenerator
    variables: dict[str, ua.NodeId]  # browse path ("ActiveState/Id") -> node of the instance, for its values
    states: dict[str, bool] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)
    event_ids: deque = field(default_factory=lambda: deque(maxlen=_RECENT_EVENTS))
    severity: int | None = None
    comment: tuple[str, str] | None = None  # (text, user) of the last comment: Part 9 keeps it until the next


class AlarmServer:
    """The publish station's OPC UA side: ``run(stop)`` serves the conditions until ``stop``; ``stats()``."""

    # the records it takes off the line's bus and gives onto it (plumbing/bus.py)
    takes = (AlarmEvent, Diagnosis)
    gives = ()

    def __init__(
        self,
        line: LineConfig,
        settings: OpcuaAlarmServer,
        events: Buffer[AlarmEvent],
        execute: Callable[[OperatorCommand], Awaitable[CommandResult]],
        journal_path: Path | None = None,
        *,
        pki_dir: Path,
        base_dir: Path | None = None,
        max_shelve_s: float | None = None,
        clock: Callable[[], float] = time.time,
        diagnoses: Buffer[Diagnosis] | None = None,
    ):
        self.line = line
        self.diagnoses = diagnoses
        self.settings = settings
        self.events = events
        self.execute = execute
        self.journal_path = Path(journal_path) if journal_path else None  # the engine's file: its alarms at start
        self.pki_dir = Path(pki_dir)
        self.base_dir = Path(base_dir) if base_dir else (line.path.parent if line.path else Path.cwd())
        self.max_shelve_s = max_shelve_s
        self.clock = clock
        self.endpoint = settings.endpoint
        self.uri = f"urn:factory-copilot:{line.site}:{line.line}:alarms"
        self.serving = asyncio.Event()  # set once clients can connect (tests and the service wait on it)
        self.server: Server | None = None
        self._served: dict[str, _Served] = {}
        self._by_node: dict[ua.NodeId, _Served] = {}  # the condition's node and its ShelvingState's -> the alarm
        self._assets: dict[str, Node] = {}
        self.counts = {"events": 0, "conditions": 0, "commands": 0, "refused": 0, "errors": 0}

    # ---- life cycle -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop``; OSError when the endpoint's port is taken (the service restarts the station)."""
        server = await self._start()
        try:
            for alarm in await asyncio.to_thread(self._standing):
                await self._tell(alarm, None)
            self.serving.set()
            log.info("serving %d alarms as OPC UA conditions on %s (%s)", len(self._served), self.endpoint,
                     self.settings.security)
            loops = [self._event_loop()] + ([self._diagnosis_loop()] if self.diagnoses is not None else [])
            await run_until(stop, [asyncio.create_task(loop) for loop in loops])
        finally:
            self.serving.clear()
            self.server = None
            self._served, self._by_node, self._assets = {}, {}, {}
            await server.stop()

    def _standing(self) -> list[Alarm]:
        """The alarms that stand in the engine's journal (read beside the engine, as the shift station reads it)."""
        if self.journal_path is None or not self.journal_path.exists():
            return []
        journal = Journal(self.journal_path, read_only=True)
        try:
            return [s.alarm for s in journal.load_alarms() if s.alarm.state is not AlarmState.NORMAL]
        finally:
            journal.close()

    def stats(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "serving": self.serving.is_set(), "served": len(self._served),
                **self.counts}

    async def _start(self) -> Server:
        s = self.settings
        logins = Logins.load(self._path(s.users)) if s.users else None  # LoginsError names the file
        if logins is None:
            log.warning("%s/%s: service.opcua_server names no users file: OPC UA clients may watch the alarms but "
                        "nobody can acknowledge or shelve them there", self.line.site, self.line.line)
        server = Server(user_manager=_Logins(logins, s.anonymous))  # type: ignore[arg-type]
        server.iserver.bind_condition_methods = True  # asyncua's ConditionRefresh (off unless asked, before init)
        await server.init()
        server.set_endpoint(s.endpoint)
        server.set_server_name(f"factory-copilot alarms of {self.line.site}/{self.line.line}")
        await server.set_application_uri(self.uri)
        tokens: list[type] = [ua.UserNameIdentityToken] + ([ua.AnonymousIdentityToken] if s.anonymous else [])
        server.set_identity_tokens(tokens)
        if s.security == "basic256sha256_sign_encrypt":
            if s.certificate and s.private_key:
                cert, key = self._path(s.certificate), self._path(s.private_key)
            else:
                cert, key = await ensure_certificate(self.pki_dir, "opcua-alarm-server", self.uri, server=True)
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            policy = ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt
        else:
            policy = ua.SecurityPolicyType.NoSecurity
        server.set_security_policy([policy], permission_ruleset=_Sessions(s.anonymous))  # type: ignore[arg-type]
        self.ns = await server.register_namespace(self.uri)
        self.root = await server.nodes.objects.add_object(ua.NodeId(self.line.line, self.ns),
                                                          ua.QualifiedName(self.line.line, self.ns))
        # Part 9: a client calls a condition's method by the type's method id with the condition as object
        for method_id, call in ((ua.ObjectIds.AcknowledgeableConditionType_Acknowledge, self._acknowledge),
                                (ua.ObjectIds.ShelvedStateMachineType_TimedShelve, self._timed_shelve),
                                (ua.ObjectIds.ShelvedStateMachineType_OneShotShelve, self._one_shot_shelve),
                                (ua.ObjectIds.ShelvedStateMachineType_Unshelve, self._unshelve)):
            server.link_method(server.get_node(ua.NodeId(method_id)), call)
        self._method_of = {"Acknowledge": self._acknowledge, "ShelvingState/TimedShelve": self._timed_shelve,
                           "ShelvingState/OneShotShelve": self._one_shot_shelve,
                           "ShelvingState/Unshelve": self._unshelve}
        try:
            await server.start()
        except BaseException:  # e.g. the port is taken: what init started goes too, and the watchdog retries
            with contextlib.suppress(Exception):
                await server.stop()
            raise
        self.server = server
        return server

    def _path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.base_dir / p

    # ---- alarms out -----------------------------------------------------------------------------------

    async def _event_loop(self) -> None:
        while True:
            ev = await self.events.get()
            if ev.event in _TELLS_NOTHING:
                continue
            try:
                await self._tell(ev.alarm, ev)
            except Exception:  # one alarm that cannot be served must not silence the others
                self.counts["errors"] += 1
                log.exception("alarm %s could not be served as an OPC UA condition", printable(ev.alarm_id))

    async def _diagnosis_loop(self) -> None:
        assert self.diagnoses is not None
        while True:
            diagnosis = await self.diagnoses.get()
            served = self._served.get(diagnosis.alarm_id)
            if served is None or not diagnosis.summary:
                continue  # an alarm this server has not told (yet): its comment comes with the next diagnosis
            try:
                served.comment = (f"copilot ({diagnosis.origin}): {diagnosis.summary}", "copilot")
                await self._tell(served.alarm, None, told=diagnosis.created_at)
            except Exception:
                self.counts["errors"] += 1
                log.exception("the diagnosis of %s could not be told as an OPC UA comment", printable(diagnosis.alarm_id))

    async def _tell(self, alarm: Alarm, ev: AlarmEvent | None, told: float | None = None) -> None:
        """Bring ``alarm``'s condition to its state and fire its event (at ``told``: a comment's time)."""
        served = self._served.get(alarm.alarm_id) or await self._condition(alarm)
        if ev is not None and alarm.updated_at < served.alarm.updated_at:
            return  # older than what the condition shows (the engine's alarms at start came first)
        if ev is not None and ev.comment:
            served.comment = (ev.comment, ev.actor or "")
        now = self.clock()
        for name, on in two_states(alarm, now).items():
            if served.states.get(name) != on:
                served.states[name], served.since[name] = on, ev.ts if ev else alarm.updated_at
        fields = condition_fields(alarm, now, since=served.since, event=ev, max_shelve_s=self.max_shelve_s,
                                  last_severity=served.severity)
        if served.comment is not None:
            fields["Comment"] = (ua.LocalizedText(served.comment[0]), ua.VariantType.LocalizedText)
        if ev is None and told is not None:
            fields["ClientUserId"] = (served.comment[1] if served.comment else "", ua.VariantType.String)
        for name, (value, vtype) in fields.items():
            # asyncua declares some fields by DataType node (UtcTime, Duration), which a Variant cannot carry
            served.event.add_property(name, value, vtype)
        served.alarm, served.severity = alarm, fields["Severity"][0]
        await served.generator.trigger(utc(ev.ts if ev else told or alarm.updated_at), alarm.message)
        event_id = served.event.EventId
        served.event_ids.append(event_id.Value if isinstance(event_id, ua.Variant) else event_id)
        self.counts["events"] += 1
        await self._write_values(served, fields)

    async def _condition(self, alarm: Alarm) -> _Served:
        """The AlarmConditionType instance of a new alarm, under its asset's object."""
        assert self.server is not None
        asset = self._assets.get(alarm.asset)
        if asset is None:
            asset = await self.root.add_object(ua.NodeId(f"{self.line.line}.{alarm.asset}", self.ns),
                                               ua.QualifiedName(alarm.asset, self.ns))
            await asset.set_event_notifier([ua.EventNotifier.SubscribeToEvents])
            self._assets[alarm.asset] = asset
        node = await asset.add_object(ua.NodeId(alarm.alarm_id, self.ns), ua.QualifiedName(alarm.alarm_id, self.ns),
                                      objecttype=ua.ObjectIds.AlarmConditionType)
        await asset.add_reference(node.nodeid, ua.ObjectIds.HasCondition, forward=True, bidirectional=False)
        children = await _paths(node)
        event = event_objects.AlarmCondition(sourcenode=asset.nodeid)
        for name, vtype in EXTRA_FIELDS.items():
            event.add_property(name, None, vtype)
        event.add_property("NodeId", node.nodeid, ua.VariantType.NodeId)  # the ConditionId a client selects
        event.SourceName = alarm.asset
        event.InputNode = ua.NodeId()
        generator = EventGenerator(self.server.iserver.isession)
        await generator.init(event, emitting_node=ua.ObjectIds.Server, add_generates_event=False)
        served = _Served(alarm, node, event, generator, {p: n for p, (n, cls) in children.items()
                                                         if cls == ua.NodeClass.Variable})
        for path, call in self._method_of.items():
            if path in children:
                self.server.link_method(self.server.get_node(children[path][0]), call)
        self._served[alarm.alarm_id] = served
        self._by_node[node.nodeid] = served
        if "ShelvingState" in children:
            self._by_node[children["ShelvingState"][0]] = served
        self.counts["conditions"] += 1
        return served

    async def _write_values(self, served: _Served, fields: dict[str, tuple[Any, ua.VariantType]]) -> None:
        """The instance's variables show what the event told (a client that reads rather than subscribes)."""
        assert self.server is not None
        told = {**fields, "EventId": (served.event_ids[-1], ua.VariantType.ByteString),
                "Time": (served.event.Time, ua.VariantType.DateTime)}
        for name, (value, vtype) in told.items():
            node_id = served.variables.get(name)
            if node_id is not None:
                await self.server.write_attribute_value(node_id, ua.DataValue(ua.Variant(value, vtype)))

    # ---- commands in ----------------------------------------------------------------------------------

    async def _acknowledge(self, parent: ua.NodeId, event_id: Any = None, comment: Any = None) -> Any:
        served = self._by_node.get(parent)
        if served is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        if _value(event_id) not in served.event_ids:
            return ua.StatusCode(ua.StatusCodes.BadEventIdUnknown)
        return await self._command(CommandKind.ACKNOWLEDGE, served, _text(comment))

    async def _timed_shelve(self, parent: ua.NodeId, shelving_time: Any = None) -> Any:
        served = self._by_node.get(parent)
        if served is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        ms = _value(shelving_time)
        if not isinstance(ms, (int, float)) or ms <= 0:
            return ua.StatusCode(ua.StatusCodes.BadShelvingTimeOutOfRange)
        return await self._command(CommandKind.SHELVE, served, None, float(ms) / 1000.0)

    async def _one_shot_shelve(self, parent: ua.NodeId) -> Any:
        return ua.StatusCode(ua.StatusCodes.BadNotSupported)  # shelving always expires: TimedShelve

    async def _unshelve(self, parent: ua.NodeId) -> Any:
        served = self._by_node.get(parent)
        if served is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        return await self._command(CommandKind.UNSHELVE, served, None)

    async def _command(self, command: CommandKind, served: _Served, comment: str | None, shelve_s: float | None = None) -> Any:
        """The engine's command path as the session's user; the method's status says how it went."""
        actor = _CALLER.get()
        self.counts["commands"] += 1
        if not actor:
            self.counts["refused"] += 1
            log.warning("OPC UA %s of %s refused: an anonymous session may not change an alarm", command.value,
                        served.alarm.alarm_id)
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        cmd = OperatorCommand(command.value, served.alarm.alarm_id, actor, comment or None, shelve_s,
                              request_id=f"opcua-{uuid.uuid4().hex}")
        result = await self.execute(cmd)
        if result.ok:
            return []
        self.counts["refused"] += 1
        log.info("OPC UA %s of %s by %s: %s", command.value, served.alarm.alarm_id, printable(actor), result.message)
        return ua.StatusCode(_status_of(command, result.message))


def _status_of(command: CommandKind, message: str) -> int:
    """The Part 9 status of the engine's refusal (its message is the reason, in the audit trail and the log)."""
    if message.startswith("refused:"):
        return ua.StatusCodes.BadUserAccessDenied
    if "already acknowledged" in message:
        return ua.StatusCodes.BadConditionBranchAlreadyAcked
    if "not shelved" in message:
        return ua.StatusCodes.BadConditionNotShelved
    if command is CommandKind.SHELVE and "shelve_s" in message:
        return ua.StatusCodes.BadShelvingTimeOutOfRange
    return ua.StatusCodes.BadInvalidState


def _value(arg: Any) -> Any:
    return arg.Value if isinstance(arg, ua.Variant) else arg


def _text(arg: Any) -> str | None:
    v = _value(arg)
    return v.Text if isinstance(v, ua.LocalizedText) else (v if isinstance(v, str) else None)


async def _paths(node: Node, prefix: str = "") -> dict[str, tuple[ua.NodeId, ua.NodeClass]]:
    """Every child of an instance by browse path ("ShelvingState/TimedShelve"), with its node class."""
    found: dict[str, tuple[ua.NodeId, ua.NodeClass]] = {}
    for d in await node.get_children_descriptions(refs=ua.ObjectIds.Aggregates):
        path = f"{prefix}{d.BrowseName.Name}"
        found[path] = (d.NodeId, d.NodeClass)
        if d.NodeClass in (ua.NodeClass.Object, ua.NodeClass.Variable):
            found |= await _paths(Node(node.session, d.NodeId), path + "/")
    return found
