"""Publishes the simulated line as Sparkplug B edge nodes: births with aliases, device data, Rebirth, NDEATH as will.

Each signal goes where its ``source.sparkplug`` says (group, edge node, device, metric); a
signal without one follows the convention group = site, edge node = line, device = asset,
metric = signal name. Each (group, edge node) is one ``SparkplugEdgeNode`` with its own MQTT
session, as a real gateway would be:

* MQTT CONNECT carries the NDEATH will with ``bdSeq``, +1 on every new connection (0-255);
* on every connect: NCMD/DCMD subscribed (acknowledged), then NBIRTH (bdSeq, ``Node Control/Rebirth`` false,
  seq 0) and one DBIRTH per device declaring every metric with name, alias, datatype and value;
* each step, one DDATA per device carrying its metrics by alias, with their timestamps; a
  reading of BAD quality is ``is_null``, UNCERTAIN carries the Quality property 500 (stale);
* an NCMD ``Node Control/Rebirth`` = true: births again, same bdSeq (data waits meanwhile);
* ``stop()`` publishes NDEATH then disconnects; ``kill()`` drops the connection like a crash,
  so the broker delivers the will.

Births and data go out QoS 0, as the specification says; paho's publish only queues, so the
simulator loop never waits on the network.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import paho.mqtt.client as paho

from factory_copilot.config import LineConfig, MqttConnection, SparkplugSource
from factory_copilot.plumbing import sparkplug as spb
from factory_copilot.plumbing.mqtt import MqttSession, Will
from factory_copilot.records import Quality, Reading

log = logging.getLogger(__name__)


def address_of(line: LineConfig, asset: str, signal: str) -> SparkplugSource:
    """Where a signal is published: its line file's ``source.sparkplug``, else site / line / asset / signal."""
    src = line.asset(asset).signal(signal).source.sparkplug
    return src or SparkplugSource(group=line.site, edge_node=line.line, device=asset, metric=signal)


def with_sparkplug_sources(line: LineConfig) -> LineConfig:
    """The line with every signal mapped to Sparkplug (``address_of``), e.g. to run the demo line on Sparkplug."""
    assets = []
    for a in line.assets:
        signals = [s.model_copy(update={"source": s.source.model_copy(update={"sparkplug": address_of(line, a.id, s.name)})})
                   for s in a.signals]
        assets.append(a.model_copy(update={"signals": signals}))
    return line.model_copy(update={"assets": assets})


@dataclass
class _Metric:
    key: str  # asset.signal
    device: str | None
    name: str
    alias: int
    datatype: spb.DataType
    unit: str


class SparkplugEdgeNode:
    """One edge node of the simulated line; ``publish(readings)`` sends its devices' data."""

    def __init__(self, group: str, edge_node: str, metrics: list[_Metric], connection: MqttConnection, *,
                 bd_seq: int = 0, qos: int = 0):
        self.group, self.edge_node = group, edge_node
        self.metrics = {m.key: m for m in metrics}
        self.devices = sorted({m.device for m in metrics if m.device is not None})
        self.conn = connection
        self.qos = qos
        self.next_bd_seq = bd_seq % 256  # the bdSeq of the will in the next CONNECT
        self.bd_seq: int | None = None  # the bdSeq of this session (its NBIRTH and will)
        self.seq = 0
        self.last: dict[str, Reading] = {}
        self.session: MqttSession | None = None
        self.born = threading.Event()
        self._lock = threading.RLock()
        self.stats_ = {"births": 0, "rebirths": 0, "data_messages": 0, "metrics_sent": 0, "skipped_offline": 0,
                       "seq_skipped": 0, "commands": 0}

    @property
    def name(self) -> str:
        return f"{self.group}/{self.edge_node}"

    # ---- life cycle ---------------------------------------------------------------------------------

    def _will(self, bd_seq: int) -> Will:
        return Will(spb.topic(self.group, "NDEATH", self.edge_node), self._death(bd_seq), qos=1, retain=False)

    def _death(self, bd_seq: int) -> bytes:
        payload = spb.Payload(timestamp=spb.now_ms())
        m = payload.metrics.add(name=spb.BDSEQ, datatype=spb.DataType.Int64)
        m.long_value = bd_seq
        return payload.SerializeToString()

    async def start(self, wait_s: float | None = None) -> "SparkplugEdgeNode":
        subs = [(spb.topic(self.group, "NCMD", self.edge_node), 1)]
        subs += [(spb.topic(self.group, "DCMD", self.edge_node, d), 1) for d in self.devices]
        self.session = MqttSession(
            self.conn, role="edge-node", client_id=f"sim-{self.group}-{self.edge_node}-{id(self) % 10_000}",
            subscriptions=subs, will=self._will(self.next_bd_seq), on_message=self._on_message,
            on_subscribed=self._on_subscribed, on_down=lambda why: self.born.clear(),
        )
        self.session.start()  # after the assignment: on_up may run before start() returns
        if wait_s and not await asyncio.to_thread(self.born.wait, wait_s):
            log.warning("Sparkplug edge node %s: broker %s:%d did not answer within %g s; birth follows once it does",
                        self.name, self.conn.host, self.conn.port, wait_s)
        return self

    async def stop(self) -> None:
        """An orderly end: NDEATH first (the broker drops the will on DISCONNECT), then disconnect."""
        session, self.session = self.session, None
        if session is None:
            return
        with self._lock:
            if self.born.is_set() and session.client is not None and self.bd_seq is not None:
                info = session.publish(spb.topic(self.group, "NDEATH", self.edge_node), self._death(self.bd_seq), qos=1)
                await asyncio.to_thread(_wait_published, info, 2.0)
            self.born.clear()
        await asyncio.to_thread(session.stop)

    async def kill(self) -> None:
        """Vanish like a crashed gateway: no NDEATH, no DISCONNECT; the broker publishes the will."""
        session, self.session = self.session, None
        if session is None:
            return
        self.born.clear()
        client = session.client
        if client is not None:
            client.on_disconnect = None
            client.on_connect_fail = None
            await asyncio.to_thread(client.loop_stop)  # paho's thread ends without a DISCONNECT
            sock = client.socket()
            if sock is not None:
                sock.close()  # the broker sees the connection drop and publishes the will

    def skip_seq(self, n: int = 1) -> None:
        """Lose the next ``n`` messages on the way (tests): the next DATA carries a seq ``n`` ahead."""
        with self._lock:
            for _ in range(n):
                self.seq = spb.next_seq(self.seq)
            self.stats_["seq_skipped"] += n

    # ---- paho thread ------------------------------------------------------------------------------------

    def _on_subscribed(self) -> None:
        """NCMD/DCMD subscribed (the spec's order): the births of this connection."""
        session = self.session
        if session is None or session.client is None or self.born.is_set():
            return
        with self._lock:
            self.bd_seq = self.next_bd_seq
            self.next_bd_seq = (self.bd_seq + 1) % 256
            # the next CONNECT (after a lost connection) announces the next bdSeq, as the spec wants
            will = self._will(self.next_bd_seq)
            session.will = will
            session.client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
            self._births()
            self.born.set()
        self.stats_["births"] += 1

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        self.stats_["commands"] += 1
        try:
            payload = spb.decode(bytes(msg.payload))
        except ValueError:
            log.warning("Sparkplug edge node %s: unreadable command on %s", self.name, msg.topic)
            return
        if msg.topic.endswith(f"/NCMD/{self.edge_node}") and spb.is_rebirth_request(payload):
            log.info("Sparkplug edge node %s: Rebirth requested; births again (bdSeq %s)", self.name, self.bd_seq)
            with self._lock:
                if self.born.is_set():
                    self._births()
                    self.stats_["rebirths"] += 1

    def _births(self) -> None:
        """NBIRTH then every DBIRTH, seq from 0 (caller holds the lock)."""
        session = self.session
        assert session is not None
        now = spb.now_ms()
        self.seq = 0
        nbirth = spb.Payload(timestamp=now, seq=self.seq)
        bd = nbirth.metrics.add(name=spb.BDSEQ, timestamp=now, datatype=spb.DataType.Int64)
        bd.long_value = self.bd_seq or 0
        rebirth = nbirth.metrics.add(name=spb.REBIRTH, timestamp=now, datatype=spb.DataType.Boolean)
        rebirth.boolean_value = False
        for m in self.metrics.values():
            if m.device is None:
                self._declare(nbirth, m, now)
        session.publish(spb.topic(self.group, "NBIRTH", self.edge_node), nbirth.SerializeToString(), qos=self.qos)
        for device in self.devices:
            self.seq = spb.next_seq(self.seq)
            dbirth = spb.Payload(timestamp=now, seq=self.seq)
            for m in self.metrics.values():
                if m.device == device:
                    self._declare(dbirth, m, now)
            session.publish(spb.topic(self.group, "DBIRTH", self.edge_node, device), dbirth.SerializeToString(),
                            qos=self.qos)

    def _declare(self, payload: spb.Payload, m: _Metric, now: int) -> None:
        last = self.last.get(m.key)
        metric = payload.metrics.add(name=m.name, alias=m.alias, datatype=m.datatype,
                                     timestamp=int(last.ts * 1000) if last else now)
        if m.unit:
            metric.properties.keys.append("engUnit")
            metric.properties.values.add(type=spb.DataType.String, string_value=m.unit)
        self._value(metric, m, last)

    def _value(self, metric: spb.Metric, m: _Metric, r: Reading | None) -> None:
        if r is None or r.value is None or r.quality is Quality.BAD:
            metric.is_null = True
            return
        spb.set_value(metric, m.datatype, round(r.value) if m.datatype not in spb.FLOATS else r.value)
        if r.quality is Quality.UNCERTAIN:
            metric.properties.keys.append(spb.QUALITY)
            metric.properties.values.add(type=spb.DataType.Int32, int_value=spb.QUALITY_STALE)

    # ---- data -----------------------------------------------------------------------------------------

    def publish(self, readings: Iterable[Reading]) -> int:
        """One DDATA (or NDATA) per device with the readings of this node; nothing while not born."""
        by_device: dict[str | None, list[tuple[_Metric, Reading]]] = {}
        for r in readings:
            m = self.metrics.get(r.key)
            if m is not None:
                self.last[r.key] = r
                by_device.setdefault(m.device, []).append((m, r))
        if not by_device:
            return 0
        with self._lock:
            session = self.session
            if session is None or not self.born.is_set():
                self.stats_["skipped_offline"] += sum(len(v) for v in by_device.values())
                return 0
            sent = 0
            for device, items in by_device.items():
                self.seq = spb.next_seq(self.seq)
                payload = spb.Payload(timestamp=spb.now_ms(), seq=self.seq)
                for m, r in items:
                    metric = payload.metrics.add(alias=m.alias, timestamp=int(r.ts * 1000))
                    self._value(metric, m, r)
                kind = "NDATA" if device is None else "DDATA"
                session.publish(spb.topic(self.group, kind, self.edge_node, device), payload.SerializeToString(),
                                qos=self.qos)
                sent += len(items)
                self.stats_["data_messages"] += 1
            self.stats_["metrics_sent"] += sent
            return sent

    def stats(self) -> dict:
        return {"edge_node": self.name, "bd_seq": self.bd_seq, "born": self.born.is_set(), **self.stats_}


class SparkplugPublisher:
    """The whole line as Sparkplug edge nodes (one per group/edge node its signals name); runner-compatible."""

    def __init__(self, line: LineConfig, connection: MqttConnection | None = None, *, bd_seq: int = 0,
                 datatypes: dict[str, spb.DataType] | None = None, qos: int = 0):
        self.line = line
        conn = connection or line.sparkplug_broker
        grouped: dict[tuple[str, str], list[_Metric]] = {}
        alias = 0
        mode_key = line.modes.signal if line.modes and line.modes.codes is not None else None  # a coded mode is an integer
        for a in line.assets:
            for s in a.signals:
                key = f"{a.id}.{s.name}"
                where = address_of(line, a.id, s.name)
                alias += 1  # unique across the whole line, hence across each node
                dt = (datatypes or {}).get(key) or (spb.DataType.Int32 if key == mode_key else spb.DataType.Double)
                grouped.setdefault((where.group, where.edge_node), []).append(
                    _Metric(key, where.device, where.metric, alias, dt, s.unit))
        self.nodes = [SparkplugEdgeNode(g, e, metrics, conn, bd_seq=bd_seq, qos=qos)
                      for (g, e), metrics in grouped.items()]

    def node(self, group: str, edge_node: str) -> SparkplugEdgeNode:
        return next(n for n in self.nodes if (n.group, n.edge_node) == (group, edge_node))

    async def start(self, wait_s: float | None = None) -> "SparkplugPublisher":
        for n in self.nodes:
            await n.start(wait_s)
        return self

    def publish(self, readings: Iterable[Reading]) -> int:
        readings = list(readings)
        return sum(n.publish(readings) for n in self.nodes)

    async def stop(self) -> None:
        for n in self.nodes:
            await n.stop()

    @property
    def connected(self) -> bool:
        return all(n.born.is_set() for n in self.nodes)

    def stats(self) -> dict:
        return {"edge_nodes": [n.stats() for n in self.nodes]}


def _wait_published(info: paho.MQTTMessageInfo, timeout_s: float) -> None:
    try:
        info.wait_for_publish(timeout_s)
    except (RuntimeError, ValueError):  # not connected any more: the will speaks for us
        pass
