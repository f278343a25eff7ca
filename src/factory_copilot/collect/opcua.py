"""The OPC UA collector: subscribes to every signal of the line and offers typed Readings into a Buffer.

Data-change notifications come through one asyncua subscription (publishing
interval, sampling interval and monitored-item queue size from the line's
OpcuaConnection). The StatusCode becomes the reading's Quality (value None when
Bad); every value and SourceTimestamp passes the sample gate (``gate.py``).
When the server goes away, asyncua's auto-reconnect supervisor brings the
session back and re-creates the subscription; we say so in one log line per
outage, count it, and tell downstream (``SourceState``) so the outage is a state.

A connect that fails for any reason - server down, user rejected, certificate not
trusted - is retried with capped back-off for as long as the collector runs: the
server's operator may fix the user or the trust list, and the line comes back
without a restart. Each failure is said once, then once per ``retry_log_s``.

With SignAndEncrypt, the server certificate is pinned: from the line file when given
(``server_certificate``), else trusted on first use and stored in the PKI folder; a
server that later shows another certificate is refused with a message saying how to
accept it if the change was intended.

With ``plc`` (a ``Buffer[PlcCondition]``), it also subscribes to the Alarms & Conditions events of the
server (or of the notifier nodes the line file's ``service.plc_alarms`` names), AlarmConditionType and its
subtypes, calls ConditionRefresh after every connect and reconnect, and offers each event as a
``PlcCondition``: the source node mapped to the line's asset and signal where the line file says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import security_policies, uacrypto
from cryptography.hazmat.primitives.serialization import Encoding

from factory_copilot.collect.gate import BadSample, SampleGate
from factory_copilot.config import LineConfig, OpcuaConnection
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.opcua import ensure_certificate, quality_of, status_name, to_epoch
from factory_copilot.records import PlcAcknowledge, PlcCondition, Quality, Reading, SourceState

log = logging.getLogger(__name__)

CLIENT_URI = "urn:factory-copilot:collector"
DEFAULT_PKI_DIR = Path(os.environ.get("FACTORY_COPILOT_PKI", ".factory-copilot/pki"))
# how long to wait between connect attempts: unreachable servers come back soon, a rejected user waits for a person
FIRST_CONNECT_MAX_DELAY_S = 10.0
REJECTED_MAX_DELAY_S = 60.0


class OpcuaConnectError(RuntimeError):
    """A connect that failed, in one sentence; ``retryable`` when the server was merely unreachable or silent."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@contextmanager
def quiet_asyncua():
    """asyncua logs every lost socket with a stack trace; during an outage we say it once ourselves."""
    loggers = [logging.getLogger(n) for n in ("asyncua",)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        if not lg.isEnabledFor(logging.DEBUG):
            lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _explain(endpoint: str, conn: OpcuaConnection, exc: BaseException) -> str:
    """One readable sentence for a failed connect."""
    code = getattr(exc, "code", None)
    name = status_name(code) if isinstance(code, int) else type(exc).__name__
    if name in ("BadUserAccessDenied", "BadIdentityTokenInvalid"):
        return f"{endpoint}: user {conn.username!r} rejected ({name})"
    if name == "BadIdentityTokenRejected":
        who = f"user {conn.username!r}" if conn.username else "anonymous access"
        return f"{endpoint}: {who} not accepted by the server ({name})"
    if name in ("BadCertificateUntrusted", "BadSecurityChecksFailed", "BadCertificateInvalid"):
        return f"{endpoint}: our client certificate is not trusted by the server ({name}); add it to the server's trust list"
    if name in ("BadSecurityPolicyRejected", "BadSecurityModeRejected") or "No matching endpoints" in str(exc):
        return f"{endpoint}: the server does not offer security {conn.security} ({'BadSecurityPolicyRejected' if name == 'UaError' else name})"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"{endpoint}: no answer within {conn.timeout_s:g} s"
    if isinstance(exc, OSError):
        return f"{endpoint}: cannot reach the server ({exc.strerror or exc})"
    return f"{endpoint}: {name}: {exc}"


def _fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


async def open_client(
    conn: OpcuaConnection, pki_dir: str | Path | None = None, *, auto_reconnect: bool = True, reconnect_max_delay_s: float = 5.0
) -> Client:
    """A connected asyncua Client as ``conn`` says (security, certificates, user); OpcuaConnectError says why not."""
    client = Client(
        conn.endpoint,
        timeout=conn.timeout_s,
        auto_reconnect=auto_reconnect,
        reconnect_max_delay=reconnect_max_delay_s,
    )
    client.application_uri = CLIENT_URI
    client.name = client.description = "factory-copilot collector"
    if conn.username:
        client.set_user(conn.username)
        client.set_password(conn.password or "")
    try:
        with quiet_asyncua():
            if conn.security == "basic256sha256_sign_encrypt":
                await _set_security(client, conn, Path(pki_dir) if pki_dir else DEFAULT_PKI_DIR)
            await client.connect()
    except OpcuaConnectError:
        raise
    except Exception as exc:
        with quiet_asyncua():
            try:
                await client.disconnect()
            except Exception:  # the half-open session is gone anyway
                pass
        unreachable = isinstance(exc, (OSError, asyncio.TimeoutError, TimeoutError))
        raise OpcuaConnectError(_explain(conn.endpoint, conn, exc), retryable=unreachable) from None
    return client


async def _set_security(client: Client, conn: OpcuaConnection, pki_dir: Path) -> None:
    cert = Path(conn.certificate) if conn.certificate else pki_dir / "collector_cert.der"
    key = Path(conn.private_key) if conn.private_key else cert.with_name(cert.stem.removesuffix("_cert") + "_key.pem")
    if not cert.exists() or not key.exists():
        made_cert, made_key = await ensure_certificate(cert.parent, cert.stem.removesuffix("_cert"), CLIENT_URI, server=False)
        cert, key = made_cert, made_key
        log.info("made a client certificate %s; the server must trust it", cert)
    endpoints = await client.connect_and_get_server_endpoints()
    offered = Client.find_endpoint(
        endpoints, ua.MessageSecurityMode.SignAndEncrypt, security_policies.SecurityPolicyBasic256Sha256.URI
    )
    if offered.ServerCertificate is None:
        raise OpcuaConnectError(f"{conn.endpoint}: the server offers no certificate for SignAndEncrypt (BadCertificateInvalid)")
    offered_der = uacrypto.x509_from_der(offered.ServerCertificate).public_bytes(Encoding.DER)
    if conn.server_certificate:
        trusted = await uacrypto.load_certificate(conn.server_certificate)
        if _fingerprint(trusted.public_bytes(Encoding.DER)) != _fingerprint(offered_der):
            raise OpcuaConnectError(
                f"{conn.endpoint}: server certificate is not the trusted one in {conn.server_certificate} (BadCertificateUntrusted)"
            )
    else:
        _trust_on_first_use(conn.endpoint, offered_der, pki_dir)
    server_cert: bytes | None = offered_der
    await client.set_security(
        security_policies.SecurityPolicyBasic256Sha256,
        certificate=str(cert),
        private_key=str(key),
        server_certificate=server_cert,
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )


def pinned_certificate(endpoint: str, pki_dir: Path) -> Path:
    """Where the server certificate trusted on first use for ``endpoint`` is kept."""
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    return Path(pki_dir) / "trusted-servers" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", host) + ".der")


def _trust_on_first_use(endpoint: str, offered_der: bytes, pki_dir: Path) -> None:
    pin = pinned_certificate(endpoint, pki_dir)
    if pin.exists():
        if _fingerprint(pin.read_bytes()) != _fingerprint(offered_der):
            raise OpcuaConnectError(
                f"{endpoint}: the server shows another certificate (SHA-256 {_fingerprint(offered_der)[:16]}...) than the one "
                f"trusted on first use and pinned in {pin} (SHA-256 {_fingerprint(pin.read_bytes())[:16]}...) "
                "(BadCertificateUntrusted); if the server's certificate was renewed on purpose, delete that file to trust "
                "the new one")
        return
    pin.parent.mkdir(parents=True, exist_ok=True)
    pin.write_bytes(offered_der)
    subject = uacrypto.x509_from_der(offered_der).subject.rfc4514_string()
    log.warning("%s: trusting the server certificate %s (SHA-256 %s) on first use; pinned in %s - compare the "
                "fingerprint with the server's, or set opcua.server_certificate in the line file",
                endpoint, subject, _fingerprint(offered_der), pin)


class OpcuaCollector:
    """Turns the line's OPC UA variables into Readings offered into ``buffer``.

    Use ``await collector.run(stop_event)`` as a task; ``stats()`` for the health endpoint.
    """

    source = "opcua"

    def __init__(
        self,
        line: LineConfig,
        buffer: Buffer[Reading | SourceState],
        connection: OpcuaConnection | None = None,
        *,
        signals: list[str] | None = None,
        pki_dir: str | Path | None = None,
        reconnect_max_delay_s: float = 5.0,
        retry_log_s: float = 300.0,
        clock=time.time,
        plc: Buffer[PlcCondition] | None = None,
        plc_acks: Buffer[PlcAcknowledge] | None = None,
    ):
        conn = connection or line.opcua
        if conn is None:
            raise ValueError(f"line {line.site}/{line.line} has no opcua connection")
        self.line = line
        self.buffer = buffer
        self.conn = conn
        self.pki_dir = Path(pki_dir) if pki_dir else DEFAULT_PKI_DIR
        self.reconnect_max_delay_s = reconnect_max_delay_s
        self.retry_log_s = retry_log_s
        self.clock = clock
        self.gate = SampleGate(line.samples.max_future_s, line.samples.max_age_s, clock, 10.0, self.source, log)
        wanted = set(signals) if signals is not None else None
        # node id string -> (asset, signal, unit)
        self.signals: dict[str, tuple[str, str, str]] = {}
        for asset in line.assets:
            for signal in asset.signals:
                if signal.source.opcua and (wanted is None or f"{asset.id}.{signal.name}" in wanted):
                    nodeid = ua.NodeId.from_string(signal.source.opcua).to_string()
                    self.signals[nodeid] = (asset.id, signal.name, signal.unit)
        self.client: Client | None = None
        self.connected = asyncio.Event()
        self.served = tuple(f"{a}.{s}" for a, s, _ in self.signals.values())
        self.readings_in = 0
        self.by_quality = {q.value: 0 for q in Quality}
        self.reconnects = 0
        self.outages = 0
        self.connect_attempts = 0
        self.last_error: str | None = None
        self.last_reading_ts: float | None = None
        self.last_arrival: float | None = None
        self._tasks: list[asyncio.Task] = []
        self._lost_at: float | None = None
        self.plc = plc
        self.plc_acks = plc_acks
        self.acks_sent = 0
        self.acks_refused = 0
        settings = line.service.plc_alarms
        self.plc_notifiers = [ua.NodeId.from_string(n) for n in (settings.notifiers if settings else ["i=2253"])]
        # source node id string -> (asset, signal)
        self.plc_sources = {ua.NodeId.from_string(m.source).to_string(): (m.asset, m.signal)
                            for m in (settings.map if settings else [])}
        self.plc_events = 0
        self.refreshes = 0
        self._plc_sub = None

    @property
    def rejects(self) -> dict[str, int]:
        return dict(self.gate.rejects)

    # -- public -------------------------------------------------------------------

    def stats(self) -> dict:
        return {
            "source": self.source,
            "endpoint": self.conn.endpoint,
            "connected": self.connected.is_set(),
            "signals": len(self.signals),
            "readings_in": self.readings_in,
            "by_quality": dict(self.by_quality),
            "rejects": self.rejects,
            "rejected": sum(self.gate.rejects.values()),
            "reconnects": self.reconnects,
            "outages": self.outages,
            "connect_attempts": self.connect_attempts,
            "last_error": self.last_error,
            "last_reading_ts": self.last_reading_ts,
            "last_arrival": self.last_arrival,
            "buffer": self.buffer.stats(),
            **({"plc_events": self.plc_events, "condition_refreshes": self.refreshes} if self.plc is not None else {}),
        }

    async def connect(self) -> Client:
        """Open a session (with security and user as configured); OpcuaConnectError says why it failed."""
        self.client = await open_client(self.conn, self.pki_dir, reconnect_max_delay_s=self.reconnect_max_delay_s)
        return self.client

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Connect (retrying whatever the failure), subscribe, and stream until ``stop`` is set."""
        stop = stop or asyncio.Event()
        self._state(False, f"OPC UA server {self.conn.endpoint}: connecting")
        # asyncua logs each failed publish and reconnect attempt with a stack trace; the watcher says it in one line
        with quiet_asyncua():
            await self._first_connect(stop)
            if stop.is_set():
                return
            assert self.client is not None
            try:
                sub = await self._subscribe(self.client)
                if self.plc is not None:
                    await self._subscribe_alarms(self.client)
                self.connected.set()
                self._state(True, f"OPC UA server {self.conn.endpoint} connected")
                self._tasks = [
                    asyncio.create_task(self._pump(sub), name="opcua-pump"),
                    asyncio.create_task(self._watch_connection(self.client), name="opcua-watch"),
                ]
                if self.plc is not None and self.plc_acks is not None:
                    self._tasks.append(asyncio.create_task(self._acknowledge_loop(), name="opcua-plc-acks"))
                await stop.wait()
            finally:
                await self.close()

    def _state(self, up: bool, detail: str) -> None:
        self.buffer.offer(SourceState(self.source, self.clock(), up, detail, self.served))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        self.connected.clear()
        if self.client is not None:
            with quiet_asyncua():
                try:
                    await asyncio.wait_for(self.client.disconnect(), self.conn.timeout_s)
                except Exception:  # closing a dead connection: nothing more to do
                    pass
            self.client = None

    # -- connection -----------------------------------------------------------------

    async def _first_connect(self, stop: asyncio.Event) -> None:
        """Try until connected or stopped: an unreachable server and a rejected user alike may be fixed meanwhile."""
        delay, said, said_at = 0.5, None, -float("inf")
        while not stop.is_set():
            self.connect_attempts += 1
            try:
                await self.connect()
                if said is not None:
                    log.info("OPC UA connected to %s after %d attempts", self.conn.endpoint, self.connect_attempts)
                else:
                    log.info("OPC UA connected to %s (security %s)", self.conn.endpoint, self.conn.security)
                self.last_error = None
                return
            except OpcuaConnectError as exc:
                message = str(exc)
                self.last_error = message
                cap = FIRST_CONNECT_MAX_DELAY_S if exc.retryable else REJECTED_MAX_DELAY_S
                now = time.monotonic()
                # once per distinct failure, then once per retry_log_s while it lasts
                if message != said or now - said_at >= self.retry_log_s:
                    what = "retrying until it answers" if exc.retryable else (
                        "retrying with back-off (up to every %.0f s) until the server's operator fixes it" % cap)
                    log.warning("%s; %s (attempt %d)", message, what, self.connect_attempts)
                    self._state(False, message)
                    said, said_at = message, now
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                delay = min(delay * 2, cap)

    async def _watch_connection(self, client: Client) -> None:
        """One log line when the session is lost, one when it is back (with the subscription re-created)."""
        async with client.subscribe_state() as states:
            while True:
                state = await states.next_change()
                if state is UaClientState.RECONNECTING and self._lost_at is None:
                    self._lost_at = time.monotonic()
                    self.outages += 1
                    self.connected.clear()
                    self._state(False, f"OPC UA server {self.conn.endpoint} unreachable")
                    log.warning("OPC UA connection to %s lost; reconnecting with back-off", self.conn.endpoint)
                elif state is UaClientState.CONNECTED and self._lost_at is not None:
                    gap = time.monotonic() - self._lost_at
                    self._lost_at = None
                    self.reconnects += 1
                    self.connected.set()
                    self._state(True, f"OPC UA server {self.conn.endpoint} connected")
                    log.info(
                        "OPC UA reconnected to %s after %.1f s; subscription to %d signals re-created",
                        self.conn.endpoint,
                        gap,
                        len(self.signals),
                    )

    # -- data -------------------------------------------------------------------------

    async def _subscribe(self, client: Client):
        conn = self.conn
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=conn.publishing_interval_ms,
            RequestedLifetimeCount=10000,
            RequestedMaxKeepAliveCount=max(3, int(1000 / max(conn.publishing_interval_ms, 1))),
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        # the iterator queue drops its oldest events when full: size it for bursts of every signal many times over
        sub = await client.create_subscription(params, None, queue_maxsize=max(10_000, 50 * len(self.signals)))
        nodes = [client.get_node(nid) for nid in self.signals]
        # a repeated identical value is still a sample (a stuck sensor looks exactly like that): trigger on timestamps too
        every_sample = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp)
        results = await sub._subscribe(
            nodes, mfilter=every_sample, queuesize=conn.queue_size, sampling_interval=conn.sampling_interval_ms
        )
        for nid, handle in zip(self.signals, results):
            if isinstance(handle, ua.StatusCode):
                self.gate.reject("unknown_node", nid, f"cannot subscribe ({status_name(handle)}): check the node id")
        return sub

    async def _pump(self, sub) -> None:
        async for event in sub:
            data = getattr(event, "data", None)
            node = getattr(event, "node", None)
            if data is None or node is None:
                continue  # status-change notifications: the connection watcher reports outages
            self._on_value(node.nodeid.to_string(), data.monitored_item.Value)

    def _on_value(self, nodeid: str, dv: ua.DataValue | None) -> None:
        where = self.signals.get(nodeid)
        if where is None or dv is None:
            self.gate.reject("unknown_node", nodeid, "a value for a node no signal maps to")
            return
        asset, signal, unit = where
        now = self.clock()
        quality = quality_of(dv.StatusCode)
        value = dv.Value.Value if dv.Value is not None else None
        ts = to_epoch(dv.SourceTimestamp) or to_epoch(dv.ServerTimestamp) or now
        try:
            if quality is not Quality.BAD and value is None:
                raise BadSample("not_a_number", "Good/Uncertain status without a value")
            reading = self.gate.reading(ts, asset, signal, value, quality, unit, now)
        except BadSample as exc:
            self.gate.reject(exc.reason, f"{nodeid} ({asset}.{signal})", exc.detail)
            return
        self.gate.accept()
        self.readings_in += 1
        self.by_quality[quality.value] += 1
        self.last_reading_ts, self.last_arrival = reading.ts, now
        self.buffer.offer(reading)

    # -- alarms of the PLC ------------------------------------------------------------------

    async def _subscribe_alarms(self, client: Client) -> None:
        """Events of AlarmConditionType (and subtypes) and a refresh's brackets, then a ConditionRefresh."""
        self._plc_sub = await client.create_subscription(self.conn.publishing_interval_ms, _PlcEvents(self))
        types = [client.get_node(ua.ObjectIds.AlarmConditionType),
                 client.get_node(ua.ObjectIds.RefreshStartEventType), client.get_node(ua.ObjectIds.RefreshEndEventType)]
        for notifier in self.plc_notifiers:
            await self._plc_sub.subscribe_events(client.get_node(notifier), types, queuesize=1000)
        await self._refresh()
        # CONNECTED is told before asyncua has re-created the subscriptions; only after that can a refresh reach them
        finalize = getattr(client, "_finalize_reconnect", None)
        if finalize is not None:
            async def then_refresh(reused: bool) -> None:
                await finalize(reused)
                await self._refresh()
            client._finalize_reconnect = then_refresh  # type: ignore[method-assign]
        else:
            log.warning("this asyncua has no reconnect hook: the PLC's alarms are not refreshed after a reconnect")

    async def _refresh(self) -> None:
        assert self.client is not None and self._plc_sub is not None
        try:
            await self.client.get_node(ua.ObjectIds.ConditionType).call_method(
                ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
                ua.Variant(self._plc_sub.subscription_id, ua.VariantType.UInt32))
            self.refreshes += 1
        except Exception as exc:  # a server without ConditionRefresh still sends what changes from now on
            log.warning("OPC UA %s: ConditionRefresh failed (%s); the PLC's standing alarms show when they next change",
                        self.conn.endpoint, exc)

    async def _acknowledge_loop(self) -> None:
        """An operator's acknowledgement of a PLC's alarm: the condition's Acknowledge with its EventId."""
        assert self.plc_acks is not None
        while True:
            ack = await self.plc_acks.get()
            try:
                assert self.client is not None
                await self.client.get_node(ack.condition_id).call_method(
                    ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge),
                    ua.Variant(bytes.fromhex(ack.event_id), ua.VariantType.ByteString),
                    ua.Variant(ua.LocalizedText(ack.comment), ua.VariantType.LocalizedText))
                self.acks_sent += 1
            except Exception as exc:  # the PLC says no (already acked, EventId unknown) or is away: said, not fatal
                self.acks_refused += 1
                log.warning("OPC UA %s: the PLC did not take %s's acknowledgement of %s (%s)", self.conn.endpoint,
                            ack.actor, ack.condition_id, exc)

    def _on_event(self, ev) -> None:
        kind = getattr(ev, "EventType", None)
        now = self.clock()
        if kind == ua.NodeId(ua.ObjectIds.RefreshStartEventType) or kind == ua.NodeId(ua.ObjectIds.RefreshEndEventType):
            which = "refresh_start" if kind == ua.NodeId(ua.ObjectIds.RefreshStartEventType) else "refresh_end"
            self.plc.offer(PlcCondition("", now, which, endpoint=self.conn.endpoint))  # type: ignore[union-attr]
            return
        condition = getattr(ev, "NodeId", None)
        if condition is None:
            self.gate.reject("not_a_condition", str(kind), "an alarm event without a ConditionId")
            return
        source = getattr(ev, "SourceNode", None)
        source_id = source.to_string() if isinstance(source, ua.NodeId) else ""
        source_name = getattr(ev, "SourceName", None) or ""
        asset, signal = self.plc_sources.get(source_id, (source_name or source_id, None))
        event_id = getattr(ev, "EventId", None) or b""
        message = getattr(ev, "Message", None)
        shelving = getattr(ev, "ShelvingState/CurrentState/Id", None)
        confirmed = getattr(ev, "ConfirmedState/Id", None)
        unshelve_ms = getattr(ev, "ShelvingState/UnshelveTime", None)
        self.plc_events += 1
        self.plc.offer(PlcCondition(  # type: ignore[union-attr]
            condition.to_string(), to_epoch(getattr(ev, "Time", None)) or now,
            event_id=event_id.hex() if isinstance(event_id, bytes) else str(event_id),
            source_node=source_id, source_name=source_name, asset=asset, signal=signal,
            severity=int(getattr(ev, "Severity", 0) or 0),
            message=(message.Text or "") if isinstance(message, ua.LocalizedText) else str(message or ""),
            active=bool(getattr(ev, "ActiveState/Id", False)), acked=bool(getattr(ev, "AckedState/Id", True)),
            confirmed=None if confirmed is None else bool(confirmed),
            shelved=shelving is not None and shelving != ua.NodeId(ua.ObjectIds.ShelvedStateMachineType_Unshelved)
            and not (isinstance(shelving, ua.NodeId) and shelving.is_null()),
            unshelve_in_s=float(unshelve_ms) / 1000.0 if isinstance(unshelve_ms, (int, float)) and unshelve_ms > 0 else None,
            retain=bool(getattr(ev, "Retain", False)), endpoint=self.conn.endpoint,
            user=str(getattr(ev, "ClientUserId", None) or "")))


class _PlcEvents:
    """asyncua's subscription handler for the PLC's alarm events."""

    def __init__(self, collector: OpcuaCollector):
        self.collector = collector

    def event_notification(self, event) -> None:
        try:
            self.collector._on_event(event)
        except Exception:  # one odd event must not end the subscription
            log.exception("OPC UA alarm event could not be read: %r", event)
