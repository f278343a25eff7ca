"""The publish station's connection: one MQTT session with a birth and a last will, and one instance per line.

After every (re)connect the retained status goes out first (``online``); the broker's
acknowledgement of it is what makes the station online, because by then paho has resent
its own unacknowledged messages and order holds. The last will says ``offline`` for us
when we vanish. At start the retained status is read: another instance online for the
same site/line makes this one refuse to start (``InstanceConflict``) instead of fighting
it for the client id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as paho

from factory_copilot.config import MqttConnection
from factory_copilot.plumbing.mqtt import MqttSession, Will
from factory_copilot.publish import payloads
from factory_copilot.publish.topics import Topics
from factory_copilot.errors import GiveUp

log = logging.getLogger(__name__)


class InstanceConflict(GiveUp, RuntimeError):
    """Another publisher is online for the same site/line on this broker."""


# what we accept from the broker at most, even one without a packet limit of its own; between this and the 64 KiB
# of a command (payloads.MAX_INCOMING_BYTES) the sender still gets a "too large" reply
MAX_PACKET_BYTES = 1024 * 1024


class PublishSession:
    """The station's MQTT session; calls back on the event loop: ``on_online()``, ``on_offline(why)``,
    ``on_new_client()``, ``on_acked(mid, failure)``, ``on_message(topic, raw, response_topic, correlation)``."""

    def __init__(self, topics: Topics, connection: MqttConnection, client_id: str, *,
                 on_online: Callable[[], None], on_offline: Callable[[str], None], on_new_client: Callable[[], None],
                 on_acked: Callable[[int, str | None], None],
                 on_message: Callable[[str, bytes, str | None, bytes | None], None]):
        self.topics = topics
        self.connection = connection
        self.client_id = client_id
        self.on_online, self.on_offline, self.on_new_client = on_online, on_offline, on_new_client
        self.on_acked, self.on_message = on_acked, on_message
        self.started_at = time.time()
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.mqtt: MqttSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._birth_mid: int | None = None
        self._generation = 0  # the paho client generation our in-flight messages were handed to
        self._closed = False
        self.every_s: float | None = None  # the publisher's heartbeat, when it has one

    @property
    def v5(self) -> bool:
        return self.mqtt.v5 if self.mqtt is not None else self.connection.protocol == "5"

    @property
    def conflict(self) -> str | None:
        return self.mqtt.conflict if self.mqtt else None

    def status(self, state: str, reasons: list[str] | None = None) -> dict[str, Any]:
        return payloads.status(state, self.topics.site, self.topics.line, self.started_at, self.client_id, self.instance,
                               every_s=self.every_s, reasons=reasons)

    def heartbeat(self, reasons: list[str] | None) -> bool:
        """Say online again (retained), with the service's health: a site page tells a quiet line from a live one."""
        if self.mqtt is None or not self.mqtt.connected or self._closed:
            return False
        self.publish(self.topics.status(), payloads.encode(self.status("online", reasons)), retain=True,
                     kind=payloads.STATUS)
        return True

    async def start(self, check_instance: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        if check_instance:
            await self._check_instance()
        will = self.status("offline")
        self.mqtt = MqttSession(
            self.connection, role="publish", client_id=self.client_id,
            # every user's own level; the broker's ACL makes sure the level is the sender's user name
            subscriptions=[(self.topics.commands("+"), 1), (self.topics.ask("+"), 1), (self.topics.site_links(), 1)],
            # MQTT 5: the broker must not forward us a packet beyond this (a 20 MB "command" never reaches us)
            max_packet_bytes=MAX_PACKET_BYTES,
            will=Will(self.topics.status(), payloads.encode(will), qos=1, retain=True, content_type="application/json",
                      user_properties=(("schema", payloads.STATUS),)),
            on_up=self._up, on_down=lambda why: self._call(self.on_offline, why), on_message=self._message,
            on_publish=self._published,
            # the sender's window decides; paho must never hold a message back as "queued"
            configure=lambda client: client.max_inflight_messages_set(0),
        )
        self.mqtt.start()

    async def stop(self, timeout_s: float = 3.0) -> None:
        """Say offline (retained) and disconnect; the will would say it otherwise."""
        self._closed = True
        if self.mqtt is None:
            return
        if self.mqtt.connected:
            info = self.publish(self.topics.status(), payloads.encode(self.status("offline")), retain=True,
                                kind=payloads.STATUS)
            try:
                await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, timeout_s), timeout_s + 1)
            except (asyncio.TimeoutError, RuntimeError, ValueError):
                log.warning("offline status not acknowledged before disconnect; the broker's last will says it instead")
        await asyncio.to_thread(self.mqtt.stop)
        self.mqtt = None

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, kind: str | None = None,
                expiry_s: int | None = None, correlation: bytes | None = None) -> paho.MQTTMessageInfo:
        """QoS 1; on MQTT 5 with content type, schema and (for streams) expiry; an empty retained clear carries none."""
        assert self.mqtt is not None
        props = None if kind is None else self.mqtt.properties(
            content_type="application/json", user=[("schema", kind)], expiry_s=expiry_s, correlation=correlation)
        return self.mqtt.publish(topic, payload, qos=1, retain=retain, properties=props)

    async def retained(self, filters: list[str], wait_s: float = 10.0) -> dict[str, bytes] | None:
        """Every retained message under ``filters`` now (topic -> payload); None if the broker did not answer.

        Read on a second connection, with our own retained status as the barrier: the broker answers one
        connection's subscriptions in order, so once the status arrives every retained message of the
        filters subscribed before it has arrived too. Called once online, so the status is there.
        """
        # its own client id: the line's configured one is the publisher's, and a broker drops the older of two
        return await asyncio.to_thread(_retained_under, self.connection, filters, self.topics.status(), wait_s,
                                       f"{self.client_id}-reconcile")

    # ---- paho's thread (guarded by MqttSession) -> the event loop ---------------------------------------------------

    def _up(self) -> None:
        session = self.mqtt
        if session is None:
            return
        info = self.publish(self.topics.status(), payloads.encode(self.status("online")), retain=True,
                            kind=payloads.STATUS)
        # scheduled before its PUBACK can be handed over (same thread, FIFO), so _acked will know it
        self._call(self._birth_sent, info.mid, session.generation)

    def _published(self, mid: int, failure: str | None) -> None:
        self._call(self._acked, mid, failure)

    def _message(self, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        self._call(self.on_message, msg.topic, bytes(msg.payload), response_topic, correlation)

    def _call(self, fn: Callable, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._unless_closed, fn, *args)

    def _unless_closed(self, fn: Callable, *args: Any) -> None:
        # callbacks already on their way when stop() closed the station have nothing left to update
        if not self._closed:
            fn(*args)

    def _birth_sent(self, mid: int, generation: int) -> None:
        self._birth_mid = mid
        if generation != self._generation:
            self._generation = generation
            if generation > 1:
                self.on_new_client()

    def _acked(self, mid: int, failure: str | None) -> None:
        if mid == self._birth_mid:
            self._birth_mid = None
            self.on_online()
            return
        self.on_acked(mid, failure)

    # ---- one instance per line ----------------------------------------------------------------------------------------

    async def _check_instance(self, read_s: float = 2.0) -> None:
        """Refuse to start beside a live publisher of the same site/line (its retained status says online)."""
        status = await asyncio.to_thread(_retained_status, self.connection, self.topics.status(), read_s)
        if not status or status.get("state") != "online":
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
            f"{_when(status.get('started_at'))}) is publishing {self.topics.site}/{self.topics.line} on "
            f"{self.connection.host}:{self.connection.port}; stop it first, or give this line another site/line"
        )


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
                        on_subscribed=subscribed.set)
    probe.start()
    try:
        if not subscribed.wait(wait_s if until else min(wait_s, 5.0)):
            return None  # no broker yet: nothing to check against; the session will keep trying
        # a retained message comes right after the subscription; none within a moment means there is none
        done.wait(wait_s if until else 1.0)
        return seen[-1] if seen else None
    finally:
        probe.stop()


def _retained_under(conn: MqttConnection, filters: list[str], barrier: str, wait_s: float,
                    client_id: str) -> dict[str, bytes] | None:
    """The retained messages under ``filters`` (see ``PublishSession.retained``), None after ``wait_s`` without the barrier."""
    seen: dict[str, bytes] = {}
    done = threading.Event()
    subscribed: list[bool] = []
    probe: MqttSession

    def on_message(msg: paho.MQTTMessage) -> None:
        if msg.topic == barrier:
            done.set()
        elif msg.retain and msg.payload:
            seen[msg.topic] = bytes(msg.payload)

    def on_subscribed() -> None:
        if not subscribed:  # the filters are in: the barrier goes in a later SUBSCRIBE, answered after them
            subscribed.append(True)
            probe.subscribe(barrier, 1)

    probe = MqttSession(conn, role="reconcile", client_id=client_id, subscriptions=[(f, 1) for f in filters],
                        on_message=on_message, on_subscribed=on_subscribed)
    probe.start()
    try:
        return dict(seen) if done.wait(wait_s) else None
    finally:
        probe.stop()
