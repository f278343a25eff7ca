"""The Sparkplug B collector: a host application that turns edge nodes' births, data and deaths into Readings.

Sparkplug 3.0, and reads 2.2 edge nodes as well. It subscribes to ``spBv1.0/<group>/#`` for every
group the line file names and to its own STATE topic, then:

* learns each metric's name, alias and datatype from NBIRTH/DBIRTH (and uses the values births
  carry), and reads NDATA/DDATA by alias (or by name, for nodes that send no aliases) with the
  birth's datatype and the metric's own timestamp; a Sparkplug ``is_null`` is a BAD reading, the
  ``Quality`` property (0 bad, 192 good, 500 stale) the reading's quality; historical metrics
  (store-and-forward backfill) are counted, not fed to live detection;
* checks ``seq`` (0-255, wrapping) of every message of an edge node; a message missing for
  ``reorder_timeout_s``, an unknown alias, or data before birth sends one NCMD
  ``Node Control/Rebirth`` (at most one per edge node per ``rebirth_min_interval_s``) and keeps
  using whatever it can still read;
* follows ``bdSeq``: an NDEATH whose bdSeq is not the current session's (an old session's will,
  delivered late) is ignored; a restarted edge node's new NBIRTH starts over, no service restart;
* reports every source as a ``SourceState`` in order with the readings: ``sparkplug`` (the broker
  connection), ``sparkplug:<group>/<edge_node>`` (NBIRTH up, NDEATH down) and
  ``sparkplug:<group>/<edge_node>/<device>`` (DBIRTH up, DDEATH down, or no DBIRTH in
  ``device_birth_timeout_s`` after its node's birth). Lost data is a state: the detect station
  makes one source alarm of it, not one per signal;
* publishes its retained STATE ``spBv1.0/STATE/<host_id>`` ``{"online": true, "timestamp": T}``
  with the matching will ``{"online": false, ...}`` (and 2.2's ``STATE/<host_id>`` ONLINE/OFFLINE
  when ``legacy_state`` is set), answers a foreign "offline" on its own STATE topic by publishing
  "online" again, and says "offline" before an orderly stop.

Every metric passes the sample gate (``gate.py``): garbage protobuf, a payload without seq, a value
that is not a number, a skewed timestamp are counted per reason and logged (rate-limited) with the
topic. paho runs the session on its own thread; readings cross to asyncio in batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes

from factory_copilot.collect.gate import BadSample
from factory_copilot.collect.subscriber import BrokerCollector
from factory_copilot.config import LineConfig, MqttConnection, SparkplugSource
from factory_copilot.plumbing import sparkplug as spb
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.logs import Throttled, printable
from factory_copilot.plumbing.mqtt import MqttSession, Will
from factory_copilot.records import Quality, Reading, SourceState

log = logging.getLogger(__name__)

SOURCE = "sparkplug"
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # a birth of a large edge node is big; garbage beyond this is refused unread
TICK_S = 0.25


def node_source(group: str, edge_node: str) -> str:
    return f"{SOURCE}:{group}/{edge_node}"


def device_source(group: str, edge_node: str, device: str) -> str:
    return f"{SOURCE}:{group}/{edge_node}/{device}"


@dataclass(frozen=True, slots=True)
class MetricSignal:
    """The signal of the line file one Sparkplug metric feeds."""

    asset: str
    signal: str
    unit: str
    address: SparkplugSource

    @property
    def key(self) -> str:
        return f"{self.asset}.{self.signal}"


@dataclass(slots=True)
class _Known:
    """A metric as a birth declared it."""

    name: str
    datatype: int
    device: str | None
    signal: MetricSignal | None


@dataclass
class _Device:
    name: str
    signals: tuple[str, ...]
    online: bool = False
    metrics: dict[str, _Known] = field(default_factory=dict)
    reported_down: bool = False


@dataclass
class _EdgeNode:
    group: str
    name: str
    signals: tuple[str, ...]  # every signal it serves, its devices' included
    devices: dict[str, _Device] = field(default_factory=dict)
    online: bool = False
    reported_down: bool = False
    bd_seq: int | None = None
    seq: int | None = None
    born_at: float = 0.0  # monotonic
    births: int = 0
    deaths: int = 0
    aliases: dict[int, _Known] = field(default_factory=dict)
    metrics: dict[str, _Known] = field(default_factory=dict)  # node-level metrics by name
    missing: dict[int, float] = field(default_factory=dict)  # seq -> monotonic deadline of the reorder window
    last_rebirth: float | None = None
    rebirths: int = 0
    awaiting_birth: bool = False

    @property
    def label(self) -> str:
        return f"{self.group}/{self.name}"


def _inferred_datatype(metric: spb.Metric) -> int:
    """A birth that leaves out the datatype (some 2.2 nodes): read the value as its protobuf field says."""
    return {"float_value": spb.DataType.Float, "double_value": spb.DataType.Double,
            "boolean_value": spb.DataType.Boolean, "int_value": spb.DataType.UInt32,
            "long_value": spb.DataType.UInt64}.get(metric.WhichOneof("value") or "", spb.DataType.Unknown)


class SparkplugCollector(BrokerCollector):
    """A Sparkplug B host application offering the line's Readings (and SourceStates) into ``buffer``.

    ``signals``: the signal keys this collector serves (default: every signal with a sparkplug source).
    """

    source = SOURCE

    def __init__(
        self,
        line: LineConfig,
        buffer: Buffer[Reading | SourceState],
        connection: MqttConnection | None = None,
        *,
        signals: list[str] | None = None,
        log_every_s: float = 10.0,
        handover_s: float = 0.01,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(line, buffer, connection or line.sparkplug_broker, log_every_s=log_every_s,
                         handover_s=handover_s, clock=clock, log=log)
        self.settings = line.sparkplug_host
        self.host_id = line.sparkplug_host_id()
        self._throttle = Throttled(log, log_every_s)
        wanted = set(signals) if signals is not None else None
        self.by_address: dict[tuple[str, str, str | None, str], MetricSignal] = {}
        self.nodes: dict[tuple[str, str], _EdgeNode] = {}
        node_signals: dict[tuple[str, str], list[str]] = {}
        device_signals: dict[tuple[str, str, str], list[str]] = {}
        for asset in line.assets:
            for s in asset.signals:
                src = s.source.sparkplug
                key = f"{asset.id}.{s.name}"
                if src is None or (wanted is not None and key not in wanted):
                    continue
                self.by_address[(src.group, src.edge_node, src.device, src.metric)] = MetricSignal(asset.id, s.name,
                                                                                                    s.unit, src)
                node_signals.setdefault((src.group, src.edge_node), []).append(key)
                if src.device is not None:
                    device_signals.setdefault((src.group, src.edge_node, src.device), []).append(key)
        for (group, name), keys in node_signals.items():
            node = _EdgeNode(group, name, tuple(keys))
            for (g, e, d), dkeys in device_signals.items():
                if (g, e) == (group, name):
                    node.devices[d] = _Device(d, tuple(dkeys))
            self.nodes[(group, name)] = node
        self.served = [m.key for m in self.by_address.values()]
        self.groups = sorted({g for g, _ in self.nodes})
        self.state_topic = spb.state_topic(self.host_id)
        self.subscriptions = [spb.group_subscription(g) for g in self.groups] + [self.state_topic]
        self.legacy: MqttSession | None = None
        self.counts: Counter[str] = Counter()
        self._next_tick = 0.0
        self._will_ts = spb.now_ms()  # the timestamp of the STATE will in the coming CONNECT
        self._state_ts: int | None = None  # the one of the current connection (its "online" STATE)
        self._warned: set[tuple] = set()
        # (self._lock guards the node state too: paho's thread and the tick on the event loop)

    # -- public ---------------------------------------------------------------------------------------

    def stats(self) -> dict:
        with self._lock:
            nodes = {
                n.label: {
                    "online": n.online, "bd_seq": n.bd_seq, "seq": n.seq, "births": n.births, "deaths": n.deaths,
                    "rebirths_requested": n.rebirths,
                    "devices_online": sum(d.online for d in n.devices.values()), "devices": len(n.devices),
                }
                for n in self.nodes.values()
            }
            counts = {k: v for k, v in sorted(self.counts.items()) if v}
        return {**super().stats(), "host_id": self.host_id, "edge_nodes": nodes, **counts}

    async def start(self) -> None:
        """Start the host application; returns at once (the broker may come later: the session keeps trying)."""
        self._start_handover()
        self._next_tick = time.monotonic() + TICK_S
        self._state(SOURCE, False, f"Sparkplug broker {self.conn.host}:{self.conn.port}: connecting", self.served)
        will = Will(self.state_topic, spb.state_payload(False, self._will_ts), qos=1, retain=True,
                    content_type="application/json")
        # Sparkplug host applications connect with a clean session, and the host id names the client:
        # a second service with the same host id is refused as a conflict instead of fighting over it
        self.session = MqttSession(
            self.conn, role="sparkplug host", client_id=self.host_id, subscriptions=[(t, 1) for t in self.subscriptions],
            will=will, on_message=self._on_message, on_subscribed=self._on_subscribed, on_down=self._on_down,
        )
        self.session.start()  # after the assignment: on_up may run before start() returns
        if self.settings.legacy_state:
            legacy = spb.legacy_state_topic(self.host_id)
            self.legacy = MqttSession(
                self.conn, role="sparkplug 2.2 state", client_id=f"{self.host_id}-2.2",
                will=Will(legacy, b"OFFLINE", qos=1, retain=True),
                on_up=lambda: self.legacy and self.legacy.publish(legacy, b"ONLINE", qos=1, retain=True),
            )
            self.legacy.start()

    async def stop(self) -> None:
        """Say "offline" on the STATE topic (so edge nodes know at once), then disconnect."""
        for session, topic, body in ((self.session, self.state_topic, None),
                                     (self.legacy, spb.legacy_state_topic(self.host_id), b"OFFLINE")):
            if session is None:
                continue
            if session.connected:
                payload = body if body is not None else spb.state_payload(False, max(spb.now_ms(), self._will_ts))
                try:
                    info = session.publish(topic, payload, qos=1, retain=True)
                    await asyncio.to_thread(_wait_published, info, 2.0)
                except RuntimeError:
                    pass
            await asyncio.to_thread(session.stop)
        self.session = self.legacy = None
        await self._stop_handover()

    # -- paho thread (guarded by the session) ---------------------------------------------------------

    def _on_subscribed(self) -> None:
        session = self.session
        if session is None or session.client is None or self._subscribed:
            return  # (a subscription added later changes nothing)
        self._subscribed = True
        # the broker acknowledged the subscriptions: now the STATE birth, with the timestamp of the will in
        # this connection's CONNECT; no birth an edge node sends in answer can be missed any more
        self._state_ts = self._will_ts
        session.publish(self.state_topic, spb.state_payload(True, self._state_ts), qos=1, retain=True,
                        properties=session.properties(content_type="application/json"))
        # the next CONNECT carries a newer will, so a late will of this connection is recognisably older
        self._will_ts = max(spb.now_ms(), self._state_ts + 1)
        will = Will(self.state_topic, spb.state_payload(False, self._will_ts), qos=1, retain=True,
                    content_type="application/json")
        session.will = will
        session.client.will_set(will.topic, will.payload, qos=1, retain=True,
                                properties=session.properties(content_type="application/json", packet=PacketTypes.WILLMESSAGE))
        self._state(SOURCE, True, f"Sparkplug broker {self.conn.host}:{self.conn.port} connected as host "
                                  f"{self.host_id}", self.served)
        self._set_connected(True)
        with self._lock:
            for node in self.nodes.values():
                if not node.online:
                    node.reported_down = True
                    self._state(node_source(node.group, node.name), False,
                                f"Sparkplug edge node {node.label}: no NBIRTH yet", node.signals)
                # births tell us every alias: ask for them now rather than wait for data we cannot read
                self._rebirth(node, "the host (re)connected", force=True)

    def _on_down(self, why: str) -> None:
        self._subscribed = False
        self._set_connected(False)
        # the node states stay as they are: the broker source speaks for all of them while it is down
        self._state(SOURCE, False, f"Sparkplug broker {self.conn.host}:{self.conn.port} {why}", self.served)

    def _state(self, source: str, up: bool, detail: str, signals, ts: float | None = None) -> None:
        self._park(SourceState(source, ts if ts is not None else self.clock(), up, detail, tuple(signals)))

    def _on_message(self, message: paho.MQTTMessage) -> None:
        topic = message.topic
        now = self.clock()
        if topic == self.state_topic:
            self._on_own_state(bytes(message.payload))
            return
        where = spb.Topic.parse(topic)
        if where is None or where.kind in ("NCMD", "DCMD"):
            return  # commands (our own Rebirth requests among them) are not data
        node = self.nodes.get((where.group, where.edge_node))
        if node is None:
            self.counts["unmapped_node_messages"] += 1  # a node of the group the line file does not read
            return
        raw = bytes(message.payload)
        try:
            if len(raw) > MAX_PAYLOAD_BYTES:
                raise BadSample("oversized", f"{len(raw)} bytes, more than {MAX_PAYLOAD_BYTES}")
            try:
                payload = spb.decode(raw)
            except ValueError as exc:
                raise BadSample("not_decodable", str(exc)) from None
            if where.kind != "NDEATH" and not payload.HasField("seq"):
                raise BadSample("not_decodable", f"{where.kind} without seq: not a Sparkplug B message")
            with self._lock:
                readings = self._handle(node, where, payload, topic, now)
        except BadSample as exc:
            self.gate.reject(exc.reason, topic, exc.detail)
            return
        if readings:
            self._accepted(readings, now)

    def _on_own_state(self, raw: bytes) -> None:
        state = spb.parse_state(raw)
        session = self.session
        if state is None or session is None or not session.connected or self._state_ts is None:
            return
        online, _ = state
        if not online:  # an old will of ours, or another client: we are here, say so again
            self.counts["state_republished"] += 1
            session.publish(self.state_topic, spb.state_payload(True, self._state_ts), qos=1, retain=True,
                            properties=session.properties(content_type="application/json"))

    # -- the Sparkplug session of one edge node (caller holds self._lock) -----------------------------

    def _handle(self, node: _EdgeNode, where: spb.Topic, payload: spb.Payload, topic: str, now: float) -> list[Reading]:
        kind = where.kind
        if kind == "NBIRTH":
            return self._node_birth(node, payload, topic, now)
        if kind == "NDEATH":
            self._node_death(node, payload)
            return []
        if not node.online:
            self.gate.reject("before_birth", topic, f"{kind} before its edge node's NBIRTH: aliases unknown; "
                                                    "Rebirth requested")
            self._rebirth(node, f"{kind} before its NBIRTH")
            return []
        self._check_seq(node, payload.seq)
        if kind == "NDATA":
            return self._data(node, None, payload, topic, now)
        device = node.devices.get(where.device or "")
        if device is None:
            return []  # a device of this node no signal maps to
        if kind == "DBIRTH":
            return self._device_birth(node, device, payload, topic, now)
        if kind == "DDEATH":
            self._device_death(node, device, payload, now)
            return []
        if not device.online:
            self.gate.reject("before_birth", topic, f"DDATA before the DBIRTH of device {device.name}; "
                                                    "Rebirth requested")
            self._rebirth(node, f"DDATA of device {device.name} before its DBIRTH")
            return []
        return self._data(node, device, payload, topic, now)

    def _node_birth(self, node: _EdgeNode, payload: spb.Payload, topic: str, now: float) -> list[Reading]:
        bd_seq = spb.int_metric(payload, spb.BDSEQ)
        if bd_seq is None:
            self.counts["birth_without_bdseq"] += 1
            self._throttle.warning(f"bdseq:{node.label}", "Sparkplug NBIRTH of %s has no bdSeq metric: its deaths "
                                   "cannot be told from an older session's", node.label)
        restarted = node.bd_seq is not None and bd_seq != node.bd_seq
        node.online, node.awaiting_birth, node.bd_seq = True, False, bd_seq
        node.seq = payload.seq % 256
        node.missing.clear()
        node.aliases.clear()
        node.metrics.clear()
        node.born_at = time.monotonic()
        node.births += 1
        for d in node.devices.values():
            d.online = False
            d.metrics.clear()
        readings = self._learn(node, None, node.metrics, payload, topic, now)
        self._warn_unbirthed(node, None, node.metrics)
        if node.reported_down or restarted or node.births == 1:
            node.reported_down = False
            self._state(node_source(node.group, node.name), True,
                        f"Sparkplug edge node {node.label} born (bdSeq {bd_seq})", node.signals)
        log.info("Sparkplug edge node %s born (bdSeq %s, %d metrics)%s", node.label, bd_seq, len(payload.metrics),
                 " after a restart" if restarted else "")
        return readings

    def _node_death(self, node: _EdgeNode, payload: spb.Payload) -> None:
        bd_seq = spb.int_metric(payload, spb.BDSEQ)
        if not node.online:
            self.counts["deaths_while_offline"] += 1
            return
        if bd_seq is not None and node.bd_seq is not None and bd_seq != node.bd_seq:
            # the will of an earlier session, delivered after the new birth: that session is long over
            self.counts["stale_deaths_ignored"] += 1
            log.info("Sparkplug NDEATH of %s with bdSeq %s ignored: the current session is bdSeq %s", node.label,
                     bd_seq, node.bd_seq)
            return
        node.online, node.deaths = False, node.deaths + 1
        node.missing.clear()
        for d in node.devices.values():
            d.online = False
        node.reported_down = True
        # an NDEATH may come from the broker (the will): its timestamp says nothing; our clock does
        self._state(node_source(node.group, node.name), False,
                    f"Sparkplug edge node {node.label} offline (NDEATH, bdSeq {bd_seq})", node.signals)
        log.warning("Sparkplug edge node %s offline (NDEATH, bdSeq %s): %d signals stale", node.label, bd_seq,
                    len(node.signals))

    def _device_birth(self, node: _EdgeNode, device: _Device, payload: spb.Payload, topic: str,
                      now: float) -> list[Reading]:
        for name in list(device.metrics):  # a DBIRTH again (a rebirth): its aliases start over
            known = device.metrics.pop(name)
            for alias, k in list(node.aliases.items()):
                if k is known:
                    del node.aliases[alias]
        device.online = True
        readings = self._learn(node, device.name, device.metrics, payload, topic, now)
        self._warn_unbirthed(node, device.name, device.metrics)
        device.reported_down = False
        self._state(device_source(node.group, node.name, device.name), True,
                    f"Sparkplug device {node.label}/{device.name} born", device.signals)
        return readings

    def _device_death(self, node: _EdgeNode, device: _Device, payload: spb.Payload, now: float) -> None:
        if not device.online:
            return
        device.online = False
        device.reported_down = True
        ts = now
        if payload.HasField("timestamp"):  # sent by the edge node itself: its timestamp is the time of the loss
            try:
                ts = self.gate.check_time(payload.timestamp / 1000.0, now)
            except BadSample:
                ts = now
        self._state(device_source(node.group, node.name, device.name), False,
                    f"Sparkplug device {node.label}/{device.name} offline (DDEATH)", device.signals, ts=ts)
        log.warning("Sparkplug device %s/%s offline (DDEATH): %d signals stale", node.label, device.name,
                    len(device.signals))

    def _learn(self, node: _EdgeNode, device: str | None, names: dict[str, _Known], payload: spb.Payload,
               topic: str, now: float) -> list[Reading]:
        """Register a birth's metrics (name, alias, datatype) and read the values it carries."""
        out: list[Reading] = []
        for m in payload.metrics:
            if not m.name:
                self.counts["birth_metric_without_name"] += 1
                continue
            datatype = m.datatype if m.HasField("datatype") and m.datatype else _inferred_datatype(m)
            known = _Known(m.name, datatype, device, self.by_address.get((node.group, node.name, device, m.name)))
            names[m.name] = known
            if m.HasField("alias"):
                other = node.aliases.get(m.alias)
                if other is not None and other.device == device and other.name != m.name:
                    self.counts["duplicate_aliases"] += 1
                    self._throttle.warning(f"alias:{node.label}", "Sparkplug birth on %s gives alias %d to both %r and "
                                           "%r; the last one is used", printable(topic), m.alias, other.name, m.name)
                node.aliases[m.alias] = known
            r = self._reading(known, m, payload, topic, now)
            if r is not None:
                out.append(r)
        return out

    def _warn_unbirthed(self, node: _EdgeNode, device: str | None, names: dict[str, _Known]) -> None:
        for (g, e, d, metric), sig in self.by_address.items():
            if (g, e, d) == (node.group, node.name, device) and metric not in names:
                key = (g, e, d, metric)
                if key not in self._warned:
                    self._warned.add(key)
                    where = f"{node.label}/{device}" if device else node.label
                    log.warning("Sparkplug: %s maps to metric %r of %s, which its birth does not declare: check the "
                                "line file (names are case-sensitive, folders included)", sig.key, metric, where)

    def _data(self, node: _EdgeNode, device: _Device | None, payload: spb.Payload, topic: str,
              now: float) -> list[Reading]:
        out: list[Reading] = []
        unknown = 0
        names = device.metrics if device is not None else node.metrics
        dev_name = device.name if device is not None else None
        for m in payload.metrics:
            if m.HasField("alias"):
                known = node.aliases.get(m.alias)
                if known is not None and known.device != dev_name:
                    known = None  # an alias of another device of this node: not this message's
            else:
                known = names.get(m.name)
            if known is None:
                unknown += 1
                continue
            r = self._reading(known, m, payload, topic, now)
            if r is not None:
                out.append(r)
        if unknown:
            self.gate.reject("unknown_metric", topic, f"{unknown} metric(s) with an alias or name its birth did not "
                                                      "declare; Rebirth requested")
            self._rebirth(node, "an alias or metric its birth did not declare")
        return out

    def _reading(self, known: _Known, m: spb.Metric, payload: spb.Payload, topic: str, now: float) -> Reading | None:
        sig = known.signal
        if sig is None:
            return None  # a metric no signal maps to
        if m.is_historical:
            self.counts["historical_metrics"] += 1  # store-and-forward backfill: not a live value for the detector
            return None
        try:
            ts_ms = m.timestamp if m.HasField("timestamp") else payload.timestamp if payload.HasField("timestamp") else None
            ts = ts_ms / 1000.0 if ts_ms else now
            try:
                quality = spb.quality_of(m)
            except ValueError as exc:
                raise BadSample("bad_quality", str(exc)) from None
            value: float | None = None
            if quality is not Quality.BAD:
                try:
                    value = spb.metric_value(m, known.datatype)
                except spb.NotAProcessValue as exc:
                    raise BadSample("not_a_number", str(exc)) from None
            return self.gate.reading(ts, sig.asset, sig.signal, value, quality, sig.unit, now)
        except BadSample as exc:
            self.gate.reject(exc.reason, f"{topic} ({known.name} -> {sig.key})", exc.detail)
            return None

    def _check_seq(self, node: _EdgeNode, seq: int) -> None:
        """Every message of an edge node carries seq + 1 (mod 256); a gap gets ``reorder_timeout_s`` to fill."""
        seq %= 256
        if node.seq is None:
            node.seq = seq
            return
        expected = spb.next_seq(node.seq)
        if seq == expected:
            node.seq = seq
            return
        if node.missing.pop(seq, None) is not None:
            self.counts["reordered_messages"] += 1  # a late one, within the reorder window: nothing lost
            return
        ahead = (seq - expected) % 256
        if ahead >= 128:
            self.counts["out_of_order_messages"] += 1  # a duplicate or a very late one: used, seq unchanged
            return
        deadline = time.monotonic() + self.settings.reorder_timeout_s
        for i in range(ahead):
            node.missing[(expected + i) % 256] = deadline
        node.seq = seq
        self.counts["seq_gaps"] += 1
        if self.settings.reorder_timeout_s <= 0:
            self._lost_messages(node)

    def _lost_messages(self, node: _EdgeNode) -> None:
        lost = sorted(node.missing)
        node.missing.clear()
        self.counts["messages_lost"] += len(lost)
        self._throttle.warning(f"gap:{node.label}", "Sparkplug edge node %s: %d message(s) lost (seq %s); Rebirth "
                               "requested", node.label, len(lost), ", ".join(map(str, lost[:5])))
        self._rebirth(node, f"{len(lost)} message(s) lost")

    def _rebirth(self, node: _EdgeNode, why: str, force: bool = False) -> None:
        """Ask the edge node for its births: NCMD Node Control/Rebirth, at most once per rebirth_min_interval_s."""
        if not self.settings.rebirth:
            self.counts["rebirths_not_requested"] += 1
            return
        session = self.session
        if session is None or not session.connected:
            return
        now = time.monotonic()
        if (not force and node.last_rebirth is not None
                and now - node.last_rebirth < self.settings.rebirth_min_interval_s):
            self.counts["rebirths_rate_limited"] += 1
            return
        node.last_rebirth = now
        node.rebirths += 1
        node.awaiting_birth = True
        self.counts["rebirths_requested"] += 1
        session.publish(spb.topic(node.group, "NCMD", node.name), spb.rebirth_request(), qos=0)
        if not force:
            self._throttle.info(f"rebirth:{node.label}", "Sparkplug: asked edge node %s for a Rebirth (%s)",
                                node.label, why)

    def _tick(self) -> None:
        """The clock's part: reorder windows that ran out, devices that never came after their node's birth."""
        now = time.monotonic()
        with self._lock:
            for node in self.nodes.values():
                if node.missing and min(node.missing.values()) <= now:
                    self._lost_messages(node)
                if not node.online:
                    continue
                for d in node.devices.values():
                    if (not d.online and not d.reported_down
                            and now - node.born_at > self.settings.device_birth_timeout_s):
                        d.reported_down = True
                        self._state(device_source(node.group, node.name, d.name), False,
                                    f"Sparkplug device {node.label}/{d.name}: no DBIRTH since its edge node's birth",
                                    d.signals)

    # -- event loop -----------------------------------------------------------------------------------

    def _on_handover(self) -> None:
        if time.monotonic() < self._next_tick:
            return
        self._next_tick = time.monotonic() + TICK_S
        try:
            self._tick()
        except Exception as exc:  # the handover must outlive a bug in the tick
            self._throttle.error("tick", "Sparkplug collector tick failed: %s: %s", type(exc).__name__, exc)


def _wait_published(info: paho.MQTTMessageInfo, timeout_s: float) -> None:
    try:
        info.wait_for_publish(timeout_s)
    except (RuntimeError, ValueError):  # the connection went: the will says "offline" for us
        pass
