"""MQTT test clients: a paho subscriber awaited from the test's event loop, and broker helpers."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT_S = 10


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Properties | None

    @property
    def body(self):
        return json.loads(self.payload)


class Listener:
    """A paho subscriber whose messages are awaited from the test's event loop."""

    def __init__(self, broker, topics, client_id=None, persistent=False, protocol=None, login=None):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Received] = asyncio.Queue()
        self.seen: list[Received] = []  # every message taken from the queue, in order
        self.topics = topics
        self.subscribed = asyncio.Event()
        v5 = (protocol or broker.protocol) == "5"
        kwargs = {} if v5 else {"clean_session": not persistent}
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or "", protocol=paho.MQTTv5 if v5 else paho.MQTTv311, **kwargs
        )
        self.client.reconnect_delay_set(0.2, 1)
        if login:  # (user, password) on a broker that asks
            self.client.username_pw_set(*login)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.loop.call_soon_threadsafe(self.subscribed.set)
        self.client.on_message = lambda c, u, m: self.loop.call_soon_threadsafe(
            self.queue.put_nowait, Received(m.topic, bytes(m.payload), bool(m.retain), getattr(m, "properties", None))
        )
        if v5:
            props = Properties(PacketTypes.CONNECT)
            if persistent:
                props.SessionExpiryInterval = 3600
            self.client.connect(broker.host, broker.port, clean_start=not persistent, properties=props)
        else:
            self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties=None):
        self.loop.call_soon_threadsafe(self.subscribed.clear)
        client.subscribe([(t, 1) for t in self.topics])

    async def ready(self):
        await asyncio.wait_for(self.subscribed.wait(), WAIT_S)
        return self

    async def synced(self) -> "Listener":
        """Wait until the broker has processed everything this client sent (its PUBACKs included).

        The broker answers one connection's packets in order, so a SUBACK means every earlier PUBACK
        is done: stop a persistent broker after this, or it may rightly deliver an unacknowledged
        QoS 1 message again after its restart.
        """
        self.subscribed.clear()
        self.client.subscribe(f"barrier/{id(self)}", 1)
        await asyncio.wait_for(self.subscribed.wait(), WAIT_S)
        return self

    async def next(self, timeout=WAIT_S) -> Received:
        msg = await asyncio.wait_for(self.queue.get(), timeout)
        self.seen.append(msg)
        return msg

    async def since_start(self, predicate, timeout=WAIT_S) -> Received:
        """The first message since this listener subscribed that matches, one already passed over by ``until`` included
        (a diagnosis may go out before the alarm's later change a test waited for)."""
        for msg in self.seen:
            if predicate(msg):
                return msg
        return await self.until(predicate, timeout)

    async def until(self, predicate, timeout=WAIT_S) -> Received:
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.next(max(0.01, deadline - time.monotonic()))
            if predicate(msg):
                return msg

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


async def retained_now(broker, topic_filter, barrier: str) -> list[Received]:
    """Every retained message under ``topic_filter``: a fresh client subscribes, then to ``barrier`` (a retained topic, e.g. the status) as a barrier.

    The broker answers one connection's subscriptions in order, so when the status arrives
    every retained message of the first filter has arrived before it.
    """
    probe = Listener(broker, [topic_filter])
    await probe.ready()
    probe.client.subscribe(barrier, 1)
    seen = []
    while True:
        msg = await probe.next()
        if msg.topic == barrier:
            break
        seen.append(msg)
    probe.close()
    return seen


def persistent_broker(broker, tmp_path):
    """Turn on Mosquitto persistence so a subscriber's session (and its queued QoS 1 messages) outlives a broker restart.

    Before stopping the broker, ``await listener.synced()``: an unacknowledged QoS 1 message comes again.
    """
    if broker.kind != "mosquitto":
        pytest.skip("needs Mosquitto persistence to keep the subscriber's session across a restart")
    store = tmp_path / "mosquitto-store"
    store.mkdir()
    text = broker.conf.read_text().replace("persistence false\n", f"persistence true\npersistence_location {store}/\n")
    broker.conf.write_text(text)
    broker.restart()
