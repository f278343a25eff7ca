"""The one MQTT session every part of the project uses: collector, publisher, ``alerts tail``, dashboard, simulator.

``MqttSession`` wraps a paho-mqtt client (callback API 2) built from the line's
MqttConnection and owns what every client needs and none may get wrong on its own:

* protocol MQTT 5, falling back to 3.1.1 when the broker refuses 5 (or, like amqtt,
  cannot even parse an MQTT 5 CONNECT and drops it without an answer);
* TLS, username/password, a readable client id;
* connecting in the background and reconnecting with capped back-off, forever;
* subscriptions made again on every (re)connect (a clean session forgets them);
* every callback guarded: an exception in our code is counted and logged (rate-limited),
  never lets paho's network thread die (a dead thread is a collector that silently stops);
* one log line per outage (down, then back after N s), not one per attempt;
* the broker handing our client id to another client (MQTT 5 reason "Session taken over")
  is a conflict: one clear error, and the session stops instead of fighting a takeover loop.

Callbacks run on paho's network thread; hand work to asyncio with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from factory_copilot.config import MqttConnection
from factory_copilot.plumbing.logs import Throttled, printable

log = logging.getLogger(__name__)

# back-off between reconnect attempts after the broker goes away (seconds)
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 10
SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason: another client connected with our client id
# Mosquitto 2.0 closes a taken-over connection without saying why: this many drops within a minute, each
# soon after a successful connect to a broker that keeps accepting us, is another client with our id
TAKEOVER_DROPS = 3
TAKEOVER_UP_S = 5.0
# an MQTT 5 connect unanswered this long while the port is open: ask whether the broker speaks 5 at all
PROBE_AFTER_S = 3.0


def connection_of(url: str, username: str | None = None, password: str | None = None) -> MqttConnection:
    """``mqtt://host:port`` (or ``mqtts://`` for TLS) as a connection."""
    u = urlparse(url if "://" in url else f"mqtt://{url}")
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
        raise ValueError(f"{url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    tls = u.scheme in ("mqtts", "ssl")
    return MqttConnection(host=u.hostname, port=u.port or (8883 if tls else 1883), tls=tls,
                          username=username or u.username, password=password or u.password)


def protocol_of(conn: MqttConnection) -> paho.MQTTProtocolVersion:
    return paho.MQTTv5 if conn.protocol == "5" else paho.MQTTv311


def reason_text(reason_code: object) -> str:
    """A readable reason from paho's ReasonCode (MQTT 5) or integer rc (3.1.1)."""
    name = getattr(reason_code, "getName", None)
    return name() if callable(name) else str(reason_code)


def reason_value(reason_code: object) -> int | None:
    value = getattr(reason_code, "value", reason_code)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def unsupported_protocol(reason_code: object) -> bool:
    """The broker refused our protocol version (MQTT 5 to a 3.1.1-only broker)."""
    return "protocol version" in reason_text(reason_code).lower() or str(reason_code) in ("1", "132")


def is_failure(reason_code: object) -> bool:
    failed = getattr(reason_code, "is_failure", None)
    if isinstance(failed, bool):
        return failed
    try:
        return int(reason_code) != 0  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return True


@dataclass(frozen=True)
class Will:
    """The last will: what the broker publishes for us when we vanish without saying goodbye."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    content_type: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


def _client(conn: MqttConnection, client_id: str, persistent: bool = False) -> paho.Client:
    # MQTT 3.1.1 sets its session kind at construction; MQTT 5 at connect (clean_start)
    extra = {} if conn.protocol == "5" else {"clean_session": not persistent}
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol_of(conn), **extra)
    if conn.username:
        client.username_pw_set(conn.username, conn.password)
    if conn.tls:
        client.tls_set(
            ca_certs=conn.ca_file,
            certfile=conn.cert_file,
            keyfile=conn.key_file,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    # our wrappers catch first; this keeps paho's thread alive even if one slipped through
    client.suppress_exceptions = True
    return client


class MqttSession:
    """One connection to the broker, kept up for as long as the session runs; see the module docstring.

    ``on_up()`` runs after every successful (re)connect, once the subscriptions are sent (publish a birth
    message there); ``on_down(reason)`` when the connection is lost or refused; ``on_message(msg)`` per
    message; ``on_subscribed()`` when the broker acknowledged the subscriptions (of a connect, or one added
    later); ``on_publish(mid, failure)`` per acknowledged publish (``failure`` is the broker's refusal
    reason, or None). All run on paho's thread, guarded.
    """

    def __init__(
        self,
        conn: MqttConnection,
        *,
        role: str = "client",
        client_id: str | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        will: Will | None = None,
        on_message: Callable[[paho.MQTTMessage], None] | None = None,
        on_up: Callable[[], None] | None = None,
        on_down: Callable[[str], None] | None = None,
        on_publish: Callable[[int, str | None], None] | None = None,
        on_refused_subscriptions: Callable[[list[str]], None] | None = None,
        on_subscribed: Callable[[], None] | None = None,
        persistent: bool = False,
        session_expiry_s: int = 3600,
        configure: Callable[[paho.Client], None] | None = None,
        log_every_s: float = 30.0,
        max_packet_bytes: int | None = None,
    ):
        self.conn = conn
        self.role = role
        self.client_id = client_id or conn.client_id or f"factory-copilot-{role}-{uuid.uuid4().hex[:8]}"
        self.subscriptions = list(subscriptions)
        self.will = will
        self.on_message = on_message
        self.on_up = on_up
        self.on_down = on_down
        self.on_publish = on_publish
        self.on_refused_subscriptions = on_refused_subscriptions
        self.on_subscribed = on_subscribed
        self.persistent = persistent
        self.session_expiry_s = session_expiry_s
        self.max_packet_bytes = max_packet_bytes  # MQTT 5: the broker sends us nothing bigger
        self.configure = configure  # queue and in-flight limits, set on every paho client this session makes
        self.where = f"{conn.host}:{conn.port}"
        self.client: paho.Client | None = None
        self.generation = 0  # +1 each time the paho client is replaced (protocol fallback)
        self.conflict: str | None = None
        self.connects = 0
        self.outages = 0
        self.callback_errors = 0
        self.refused_connects = 0
        self.last_refusal: str | None = None
        self._connected = threading.Event()
        self._down_since: float | None = None
        self._up_at: float | None = None
        self._quick_drops: list[float] = []
        self._stopped = threading.Event()
        self._lock = threading.RLock()
        self._throttle = Throttled(log, log_every_s)
        self._prober: threading.Thread | None = None

    # ---- life cycle ---------------------------------------------------------------------------------

    @property
    def v5(self) -> bool:
        return self.conn.protocol == "5"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> "MqttSession":
        """Start connecting in the background; returns at once (the broker may come later: we keep trying)."""
        self._stopped.clear()
        with self._lock:
            self._open()
        if self.v5:
            self._prober = threading.Thread(target=self._probe_protocol, name=f"mqtt-{self.role}-probe", daemon=True)
            self._prober.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Disconnect (the broker publishes no will: we said goodbye) and stop paho's thread."""
        self._stopped.set()
        with self._lock:
            client, self.client = self.client, None
        if client is not None:
            client.on_disconnect = None
            try:
                client.disconnect()
            except Exception:  # already gone
                pass
            client.loop_stop()
        self._connected.clear()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def stats(self) -> dict[str, Any]:
        return {
            "broker": self.where,
            "client_id": self.client_id,
            "protocol": self.conn.protocol,
            "connected": self.connected,
            "connects": self.connects,
            "reconnects": max(0, self.connects - 1),
            "outages": self.outages,
            "down_for_s": round(time.monotonic() - self._down_since, 1) if self._down_since is not None else 0.0,
            "refused_connects": self.refused_connects,
            "last_refusal": self.last_refusal,
            "callback_errors": self.callback_errors,
            "conflict": self.conflict,
        }

    # ---- use ------------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                properties: Properties | None = None) -> paho.MQTTMessageInfo:
        """Hand a message to paho (never waits; while offline paho queues it and sends it after the reconnect)."""
        client = self.client
        if client is None:
            raise RuntimeError(f"MQTT session {self.client_id} is not started")
        return client.publish(topic, payload, qos=qos, retain=retain, properties=properties if self.v5 else None)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Add a subscription, now and after every reconnect."""
        with self._lock:
            if (topic, qos) not in self.subscriptions:
                self.subscriptions.append((topic, qos))
            client = self.client
        if client is not None and self.connected:
            client.subscribe(topic, qos)

    def properties(self, *, content_type: str | None = None, user: Sequence[tuple[str, str]] = (),
                   expiry_s: int | None = None, correlation: bytes | None = None,
                   response_topic: str | None = None, packet: int = PacketTypes.PUBLISH) -> Properties | None:
        """MQTT 5 message properties, or None when the session speaks 3.1.1 (which has none)."""
        if not self.v5:
            return None
        props = Properties(packet)
        if content_type:
            props.ContentType = content_type
        if user:
            props.UserProperty = list(user)
        if expiry_s:
            props.MessageExpiryInterval = int(expiry_s)
        if correlation is not None:
            props.CorrelationData = correlation
        if response_topic:
            props.ResponseTopic = response_topic
        return props

    # ---- inside -----------------------------------------------------------------------------------------

    def _open(self) -> None:
        client = _client(self.conn, self.client_id, self.persistent)
        if self.will is not None:
            w = self.will
            props = self.properties(content_type=w.content_type, user=w.user_properties, packet=PacketTypes.WILLMESSAGE)
            client.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain, properties=props)
        client.on_connect = self._guard("on_connect", self._on_connect)
        client.on_disconnect = self._guard("on_disconnect", self._on_disconnect)
        client.on_connect_fail = self._guard("on_connect_fail", self._on_connect_fail)
        client.on_message = self._guard("on_message", self._on_message)
        client.on_publish = self._guard("on_publish", self._on_publish)
        client.on_subscribe = self._guard("on_subscribe", self._on_subscribe)
        if self.configure is not None:
            self.configure(client)
        self.client = client
        self.generation += 1
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            if self.persistent:
                props.SessionExpiryInterval = self.session_expiry_s
            if self.max_packet_bytes:
                props.MaximumPacketSize = self.max_packet_bytes
            client.connect_async(self.conn.host, self.conn.port, keepalive=self.conn.keepalive_s,
                                 clean_start=not self.persistent, properties=props)
        else:
            client.connect_async(self.conn.host, self.conn.port, keepalive=self.conn.keepalive_s)
        client.loop_start()

    def _guard(self, name: str, fn: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # the network thread must outlive any bug of ours
                self.callback_errors += 1
                self._throttle.error(f"callback:{name}", "MQTT %s %s: %s failed: %s: %s", self.role, self.where, name,
                                     type(exc).__name__, printable(exc))
        return guarded

    def _call(self, name: str, fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception as exc:
            self.callback_errors += 1
            self._throttle.error(f"user:{name}", "MQTT %s %s: %s failed: %s: %s", self.role, self.where, name,
                                 type(exc).__name__, printable(exc))

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if is_failure(reason):
            self.refused_connects += 1
            self.last_refusal = reason_text(reason)
            if self.v5 and unsupported_protocol(reason):
                self._fall_back("refused MQTT 5")
                return
            self._went_down(f"refused the connection ({self.last_refusal})")
            return
        if self.subscriptions:
            client.subscribe(list(self.subscriptions))
        self.connects += 1
        self.last_refusal = None
        if self._down_since is not None:
            log.info("MQTT %s back at %s after %.1f s", self.role, self.where, time.monotonic() - self._down_since)
            self._down_since = None
        elif self.connects == 1:
            log.info("MQTT %s connected to %s (MQTT %s, client id %s)", self.role, self.where, self.conn.protocol,
                     self.client_id)
        self._up_at = time.monotonic()
        self._connected.set()
        self._call("on_up", self.on_up)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if (self.v5 and reason_value(reason) == SESSION_TAKEN_OVER) or self._taken_over(flags):
            self.conflict = (
                f"the broker {self.where} gave client id {self.client_id!r} to another client: another instance "
                "with the same id is running; stop it or give this one another client id"
            )
            log.error("MQTT %s: %s; this session stops", self.role, self.conflict)
            self._connected.clear()
            self._stopped.set()
            # end paho's loop instead of taking the id back, and back again; from another thread, since paho
            # sets its state after this callback and only loop_stop() is sure to end the loop
            threading.Thread(target=_halt, args=(client,), name=f"mqtt-{self.role}-halt", daemon=True).start()
            self._call("on_down", self.on_down, "client id taken over by another client")
            return
        self._went_down(f"disconnected ({reason_text(reason)})")

    def _taken_over(self, flags: Any) -> bool:
        """Dropped again and again right after the broker accepted us: someone else connects with our client id."""
        if self._up_at is None or getattr(flags, "is_disconnect_packet_from_server", False):
            return False  # a broker that says why is believed
        now = time.monotonic()
        if now - self._up_at > TAKEOVER_UP_S:
            self._quick_drops.clear()
            return False
        self._quick_drops = [t for t in self._quick_drops if now - t < 60.0] + [now]
        return len(self._quick_drops) >= TAKEOVER_DROPS

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._went_down("cannot reach the broker")

    def _went_down(self, why: str) -> None:
        was_up = self._connected.is_set()
        self._connected.clear()
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.outages += 1
            log.warning("MQTT %s %s %s; reconnecting with back-off", self.role, self.where, why)
        if was_up or self.outages == 1:
            self._call("on_down", self.on_down, why)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self._call("on_message", self.on_message, msg)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any = None, properties: Any = None) -> None:
        failure = None if reason is None or not is_failure(reason) else reason_text(reason)
        self._call("on_publish", self.on_publish, mid, failure)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any = None) -> None:
        # the broker has the subscriptions now: from here on nothing published to them is missed
        self._call("on_subscribed", self.on_subscribed)
        refused = [topic for (topic, _), rc in zip(self.subscriptions, reason_codes or []) if is_failure(rc)]
        if refused:  # an ACL that hides topics looks exactly like a silent sensor otherwise
            log.error("MQTT %s %s refused the subscription to %d topic(s): %s", self.role, self.where, len(refused),
                      ", ".join(printable(t) for t in refused[:5]) + (" ..." if len(refused) > 5 else ""))
            self._call("on_refused_subscriptions", self.on_refused_subscriptions, refused)

    # ---- MQTT 5 -> 3.1.1 ---------------------------------------------------------------------------------

    def _fall_back(self, why: str) -> None:
        """Speak 3.1.1 from now on: a new paho client (its protocol is fixed at construction), from another thread."""
        if not self.v5:
            return
        log.warning("MQTT broker %s %s: falling back to 3.1.1 (no message properties)", self.where, why)
        threading.Thread(target=self._reopen_as_311, name=f"mqtt-{self.role}-fallback", daemon=True).start()

    def _reopen_as_311(self) -> None:
        with self._lock:
            if self._stopped.is_set() or not self.v5:
                return
            old = self.client
            self.conn = self.conn.model_copy(update={"protocol": "3.1.1"})
            if old is not None:
                old.on_disconnect = None
                old.on_connect_fail = None
                try:
                    old.disconnect()
                except Exception:
                    pass
                old.loop_stop()
            self._open()

    def _probe_protocol(self) -> None:
        """A broker that drops an MQTT 5 CONNECT without an answer (amqtt): ask it with a bare one."""
        while not self._stopped.wait(PROBE_AFTER_S):
            if self.connects or not self.v5:
                return
            answer = speaks_mqtt5(self.conn)
            if answer is True:
                return  # the broker speaks 5: whatever keeps us out, it is not the protocol
            if answer is False:
                self._fall_back("does not speak MQTT 5")
                return


def _halt(client: paho.Client) -> None:
    try:
        client.disconnect()
    except Exception:
        pass
    client.loop_stop()


def speaks_mqtt5(conn: MqttConnection, timeout_s: float = 3.0) -> bool | None:
    """Ask the broker with a bare MQTT 5 CONNECT: True if it accepts, False if it refuses the version, None if unknown."""
    try:
        with socket.create_connection((conn.host, conn.port), timeout=1.0):
            pass
    except OSError:
        return None  # nobody listens yet: nothing to learn
    answer: list[Any] = []
    done = threading.Event()
    probe = _client(conn.model_copy(update={"protocol": "5"}), f"factory-copilot-probe-{uuid.uuid4().hex[:8]}")

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        answer.append(reason)
        done.set()

    probe.on_connect = on_connect
    try:
        probe.connect(conn.host, conn.port, keepalive=10)
    except OSError:
        return None
    probe.loop_start()
    try:
        if not done.wait(timeout_s):
            return None
        reason = answer[0]
        if not is_failure(reason):
            return True
        return False if unsupported_protocol(reason) else None
    finally:
        probe.disconnect()
        probe.loop_stop()
