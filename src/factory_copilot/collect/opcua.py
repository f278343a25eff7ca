"""The OPC UA collector: subscribes to every signal of the line and offers typed Readings into a Buffer.

Data-change notifications come through one asyncua subscription (publishing
interval, sampling interval and monitored-item queue size from the line's
OpcuaConnection). The StatusCode becomes the reading's Quality (value None when
Bad). When the server goes away, asyncua's auto-reconnect supervisor brings the
session back and re-creates the subscription; we say so in one log line per
outage and count it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import security_policies, uacrypto
from cryptography.hazmat.primitives.serialization import Encoding

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.opcua import ensure_certificate, quality_of, status_name, to_epoch
from factory_copilot.config import LineConfig, OpcuaConnection
from factory_copilot.records import Quality, Reading

log = logging.getLogger(__name__)

CLIENT_URI = "urn:factory-copilot:collector"
DEFAULT_PKI_DIR = Path(os.environ.get("FACTORY_COPILOT_PKI", ".factory-copilot/pki"))
# how long to wait between first-connect attempts while the server is not up yet
FIRST_CONNECT_MAX_DELAY_S = 10.0


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
    server_cert: bytes | None = None
    if conn.server_certificate:
        trusted = await uacrypto.load_certificate(conn.server_certificate)
        endpoints = await client.connect_and_get_server_endpoints()
        offered = Client.find_endpoint(
            endpoints, ua.MessageSecurityMode.SignAndEncrypt, security_policies.SecurityPolicyBasic256Sha256.URI
        )
        trusted_der = trusted.public_bytes(Encoding.DER)
        if offered.ServerCertificate is None or _fingerprint(trusted_der) != _fingerprint(
            uacrypto.x509_from_der(offered.ServerCertificate).public_bytes(Encoding.DER)
        ):
            raise OpcuaConnectError(
                f"{conn.endpoint}: server certificate is not the trusted one in {conn.server_certificate} (BadCertificateUntrusted)"
            )
        server_cert = trusted_der
    await client.set_security(
        security_policies.SecurityPolicyBasic256Sha256,
        certificate=str(cert),
        private_key=str(key),
        server_certificate=server_cert,
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )


class OpcuaCollector:
    """Turns the line's OPC UA variables into Readings offered into ``buffer``.

    Use ``await collector.run(stop_event)`` as a task; ``stats()`` for the health endpoint.
    """

    source = "opcua"

    def __init__(
        self,
        line: LineConfig,
        buffer: Buffer[Reading],
        connection: OpcuaConnection | None = None,
        *,
        pki_dir: str | Path | None = None,
        reconnect_max_delay_s: float = 5.0,
    ):
        conn = connection or line.opcua
        if conn is None:
            raise ValueError(f"line {line.site}/{line.line} has no opcua connection")
        self.line = line
        self.buffer = buffer
        self.conn = conn
        self.pki_dir = Path(pki_dir) if pki_dir else DEFAULT_PKI_DIR
        self.reconnect_max_delay_s = reconnect_max_delay_s
        # node id string -> (asset, signal, unit)
        self.signals: dict[str, tuple[str, str, str]] = {}
        for asset in line.assets:
            for signal in asset.signals:
                if signal.source.opcua:
                    nodeid = ua.NodeId.from_string(signal.source.opcua).to_string()
                    self.signals[nodeid] = (asset.id, signal.name, signal.unit)
        self.client: Client | None = None
        self.connected = asyncio.Event()
        self.readings_in = 0
        self.by_quality = {q.value: 0 for q in Quality}
        self.rejects: dict[str, int] = {}
        self.reconnects = 0
        self.outages = 0
        self.last_reading_ts: float | None = None
        self._tasks: list[asyncio.Task] = []
        self._lost_at: float | None = None

    # -- public -------------------------------------------------------------------

    def stats(self) -> dict:
        return {
            "source": self.source,
            "endpoint": self.conn.endpoint,
            "connected": self.connected.is_set(),
            "signals": len(self.signals),
            "readings_in": self.readings_in,
            "by_quality": dict(self.by_quality),
            "rejects": dict(self.rejects),
            "reconnects": self.reconnects,
            "outages": self.outages,
            "last_reading_ts": self.last_reading_ts,
            "buffer": self.buffer.stats(),
        }

    async def connect(self) -> Client:
        """Open a session (with security and user as configured); OpcuaConnectError says why it failed."""
        self.client = await open_client(self.conn, self.pki_dir, reconnect_max_delay_s=self.reconnect_max_delay_s)
        return self.client

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Connect (retrying while the server is unreachable), subscribe, and stream until ``stop`` is set."""
        stop = stop or asyncio.Event()
        # asyncua logs each failed publish and reconnect attempt with a stack trace; the watcher says it in one line
        with quiet_asyncua():
            await self._first_connect(stop)
            if stop.is_set():
                return
            assert self.client is not None
            try:
                sub = await self._subscribe(self.client)
                self.connected.set()
                self._tasks = [
                    asyncio.create_task(self._pump(sub), name="opcua-pump"),
                    asyncio.create_task(self._watch_connection(self.client), name="opcua-watch"),
                ]
                await stop.wait()
            finally:
                await self.close()

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
        delay, waiting_logged = 0.5, False
        while not stop.is_set():
            try:
                await self.connect()
                log.info("OPC UA connected to %s (security %s)", self.conn.endpoint, self.conn.security)
                return
            except OpcuaConnectError as exc:
                if not exc.retryable:
                    raise  # credentials or certificates: retrying will not help
                if not waiting_logged:
                    log.warning("%s; retrying until it answers", exc)
                    waiting_logged = True
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                delay = min(delay * 2, FIRST_CONNECT_MAX_DELAY_S)

    async def _watch_connection(self, client: Client) -> None:
        """One log line when the session is lost, one when it is back (with the subscription re-created)."""
        async with client.subscribe_state() as states:
            while True:
                state = await states.next_change()
                if state is UaClientState.RECONNECTING and self._lost_at is None:
                    self._lost_at = time.monotonic()
                    self.outages += 1
                    self.connected.clear()
                    log.warning("OPC UA connection to %s lost; reconnecting with back-off", self.conn.endpoint)
                elif state is UaClientState.CONNECTED and self._lost_at is not None:
                    gap = time.monotonic() - self._lost_at
                    self._lost_at = None
                    self.reconnects += 1
                    self.connected.set()
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
                self.rejects["unknown_node"] = self.rejects.get("unknown_node", 0) + 1
                log.warning("OPC UA %s: cannot subscribe to %s (%s)", conn.endpoint, nid, status_name(handle))
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
            self.rejects["unknown_node"] = self.rejects.get("unknown_node", 0) + 1
            return
        asset, signal, unit = where
        quality = quality_of(dv.StatusCode)
        value = dv.Value.Value if dv.Value is not None else None
        if quality is Quality.BAD:
            value = None
        elif value is not None:
            try:
                value = float(value)
            except (TypeError, ValueError):
                value, quality = None, Quality.BAD
            else:
                if not math.isfinite(value):
                    value, quality = None, Quality.BAD
        ts = to_epoch(dv.SourceTimestamp) or to_epoch(dv.ServerTimestamp) or time.time()
        self.readings_in += 1
        self.by_quality[quality.value] += 1
        self.last_reading_ts = ts
        self.buffer.offer(Reading(ts, asset, signal, value, quality, self.source, unit))
