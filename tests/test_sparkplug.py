"""The Sparkplug B host application against Mosquitto, with the simulator (and a raw client) as edge nodes.

The line is not the demo's: a press line whose gateway publishes two devices and a node-level
metric, in several datatypes, with metric names in folders.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from factory_copilot.alarms.engine import AlarmEngine, AlarmSettings
from factory_copilot.collect.sparkplug import SparkplugCollector, device_source, node_source
from factory_copilot.config import LineConfig, parse_line
from factory_copilot.detect.checks import SignalChecks
from factory_copilot.detect.station import DetectStation
from factory_copilot.plumbing import sparkplug as spb
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.records import Quality, Reading, SourceState
from simulators.sparkplug_node import SparkplugPublisher
from tests.support.mqtt import Listener

GROUP, NODE = "plant-b", "gateway-7"
DT = spb.DataType


def press_line(broker, **sparkplug) -> LineConfig:
    def sig(name, unit, device, metric, normal=(-1e6, 1e6)):
        return {"name": name, "unit": unit, "normal": list(normal),
                "source": {"sparkplug": {"group": GROUP, "edge_node": NODE, "device": device, "metric": metric}}}

    return parse_line({
        "site": "plant-b", "line": "press-3", "sampling_interval_s": 0.2, "mode_signal": None,
        "mqtt": {"host": broker.host, "port": broker.port, "protocol": broker.protocol},
        "sparkplug": {"rebirth_min_interval_s": 0.5, "reorder_timeout_s": 0.3, **sparkplug},
        "assets": [
            {"id": "press", "name": "Press 3", "signals": [
                sig("pressure", "bar", "press", "Hydraulics/Pressure"),
                sig("ram_position", "mm", "press", "Ram/Position"),
                sig("oil_temperature", "degC", "press", "Hydraulics/Oil Temperature"),
                sig("strokes", "1", "press", "Counters/Strokes"),
            ]},
            {"id": "pump", "name": "Oil pump", "signals": [
                sig("running", "1", "pump", "Motor/Running"),
                sig("flow", "l/min", "pump", "Flow"),
            ]},
            {"id": "cabinet", "name": "Control cabinet", "signals": [
                sig("temperature", "degC", None, "Cabinet/Temperature"),
            ]},
        ],
    }, "press-line")


DATATYPES = {"press.pressure": DT.Double, "press.ram_position": DT.Float, "press.oil_temperature": DT.Int16,
             "press.strokes": DT.UInt32, "pump.running": DT.Boolean, "pump.flow": DT.Double,
             "cabinet.temperature": DT.Int8}


def values_at(step: int) -> dict[str, float]:
    return {"press.pressure": 150.0 + step * 0.5, "press.ram_position": 12.25, "press.oil_temperature": -7.0,
            "press.strokes": 1000.0 + step, "pump.running": 1.0, "pump.flow": 40.0 + step % 3,
            "cabinet.temperature": -3.0}


def readings_at(line: LineConfig, step: int, ts: float) -> list[Reading]:
    return [Reading(ts, *k.split("."), v) for k, v in values_at(step).items()]


class Plant:
    """The press line's gateway (the simulator as a Sparkplug edge node) and the host application reading it."""

    def __init__(self, broker, **sparkplug):
        self.line = press_line(broker, **sparkplug)
        self.buffer: Buffer[Reading | SourceState] = Buffer(100_000, "sparkplug")
        self.collector = SparkplugCollector(self.line, self.buffer)
        self.edge = SparkplugPublisher(self.line, datatypes=DATATYPES, bd_seq=5)
        self.node = self.edge.node(GROUP, NODE)
        self.step = 0
        self.sent_ts: dict[int, float] = {}
        self._feeder: asyncio.Task | None = None
        self.seen: list[Reading | SourceState] = []

    async def start(self, collector_first: bool = True) -> "Plant":
        if collector_first:
            await self.collector.start()
            await asyncio.wait_for(self.collector.connected.wait(), 10)
        await self.edge.start(wait_s=10)
        if not collector_first:
            await self.collector.start()
            await asyncio.wait_for(self.collector.connected.wait(), 10)
        return self

    def feed(self, every_s: float = 0.05) -> None:
        async def loop() -> None:
            while True:
                self.send_one()
                await asyncio.sleep(every_s)
        self._feeder = asyncio.create_task(loop())

    def send_one(self) -> None:
        ts = round(time.time() - 0.5, 3)  # stamped by the "PLC" half a second before it is sent
        self.sent_ts[self.step] = ts
        self.edge.publish(readings_at(self.line, self.step, ts))
        self.step += 1

    async def until(self, predicate, timeout_s: float = 10.0) -> Reading | SourceState:
        """The next record (reading or source state) that satisfies ``predicate``; everything is kept in ``seen``."""
        deadline = time.monotonic() + timeout_s
        while True:
            item = await asyncio.wait_for(self.buffer.get(), max(0.01, deadline - time.monotonic()))
            self.seen.append(item)
            if predicate(item):
                return item

    async def stop(self) -> None:
        if self._feeder:
            self._feeder.cancel()
        await self.edge.stop()
        await self.collector.stop()


def reading_of(key: str):
    return lambda r: isinstance(r, Reading) and r.key == key


def strokes_from(step: int):
    """A stroke count sent at ``step`` or later: the stream flows again."""
    return lambda r: (isinstance(r, Reading) and r.key == "press.strokes" and r.value is not None
                      and r.value >= 1000 + step)


def state_of(source: str, connected: bool):
    return lambda s: isinstance(s, SourceState) and s.source == source and s.connected is connected


async def eventually(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class RawEdgeNode:
    """A plain paho client speaking Sparkplug by hand: exact payloads, and the NCMDs it is sent."""

    def __init__(self, broker, group: str = GROUP, node: str = NODE):
        self.group, self.node = group, node
        self.commands: list[spb.Payload] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        up = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p=None: (c.subscribe(spb.topic(group, "NCMD", node), 1), up.set())
        self.client.on_message = lambda c, u, m: self.commands.append(spb.decode(m.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert up.wait(10)

    def send(self, kind: str, payload: spb.Payload | bytes, device: str | None = None) -> None:
        raw = payload if isinstance(payload, bytes) else payload.SerializeToString()
        self.client.publish(spb.topic(self.group, kind, self.node, device), raw, qos=1).wait_for_publish(5)

    @property
    def rebirths(self) -> int:
        return sum(spb.is_rebirth_request(p) for p in self.commands)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def payload(seq: int | None, *metrics: tuple, ts_ms: int | None = None) -> spb.Payload:
    """A payload with ``metrics`` as (name or None, alias or None, datatype or None, value)."""
    p = spb.Payload(timestamp=ts_ms or spb.now_ms())
    if seq is not None:
        p.seq = seq
    for name, alias, datatype, value in metrics:
        m = p.metrics.add(timestamp=p.timestamp)
        if name is not None:
            m.name = name
        if alias is not None:
            m.alias = alias
        if datatype is not None:
            m.datatype = datatype
        spb.set_value(m, DT(datatype or DT.Double), value)
    return p


# ---- births, data, datatypes, timestamps ----------------------------------------------------------------


async def test_births_then_data_arrive_as_readings_with_their_datatypes_and_timestamps(broker):
    plant = await Plant(broker).start()
    try:
        await plant.until(state_of(node_source(GROUP, NODE), True))
        plant.feed()
        got: dict[str, Reading] = {}
        while len(got) < len(DATATYPES):
            r = await plant.until(lambda x: isinstance(x, Reading) and x.ts in plant.sent_ts.values())
            got.setdefault(r.key, r)
        step = {ts: s for s, ts in plant.sent_ts.items()}
        for key, r in got.items():
            expected = values_at(step[r.ts])[key]
            assert r.value == pytest.approx(expected, rel=1e-6), key  # Int8/Int16 negatives, Float, UInt32, Boolean
            assert (r.quality, r.source, r.unit) == (Quality.GOOD, "sparkplug", plant.line.signal(key).unit)
        assert got["press.oil_temperature"].value == -7.0 and got["cabinet.temperature"].value == -3.0
        assert got["pump.running"].value == 1.0
        stats = plant.collector.stats()
        assert stats["edge_nodes"][f"{GROUP}/{NODE}"]["online"] and stats["edge_nodes"][f"{GROUP}/{NODE}"]["bd_seq"] == 5
        assert stats["edge_nodes"][f"{GROUP}/{NODE}"]["devices_online"] == 2
        assert stats["rejected"] == 0
    finally:
        await plant.stop()


async def test_the_host_says_online_retained_with_an_offline_will_and_offline_when_it_stops(broker):
    line = press_line(broker, host_id="scada-host-1")
    collector = SparkplugCollector(line, Buffer(1000, "x"))
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    listener = await Listener(broker, ["spBv1.0/STATE/+"]).ready()
    try:
        msg = await listener.until(lambda m: m.topic == "spBv1.0/STATE/scada-host-1")
        assert msg.body["online"] is True and isinstance(msg.body["timestamp"], int)
        late = await Listener(broker, ["spBv1.0/STATE/scada-host-1"]).ready()
        kept = await late.next()
        late.close()
        assert kept.retain and kept.body == msg.body
        # another client says we are offline (an old will, a prank): the host says online again at once
        other = RawEdgeNode(broker)
        other.client.publish("spBv1.0/STATE/scada-host-1", spb.state_payload(False, msg.body["timestamp"]), qos=1,
                             retain=True).wait_for_publish(5)
        await listener.until(lambda m: m.body["online"] is False)
        again = await listener.until(lambda m: m.body["online"] is True)
        assert again.body["timestamp"] == msg.body["timestamp"]
        other.close()
        await collector.stop()
        bye = await listener.until(lambda m: m.body["online"] is False)
        assert bye.body["timestamp"] >= msg.body["timestamp"]
    finally:
        listener.close()
        await collector.stop()


async def test_a_crashed_host_leaves_its_will_offline_on_the_state_topic(broker):
    line = press_line(broker, host_id="scada-host-2")
    collector = SparkplugCollector(line, Buffer(1000, "x"))
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    listener = await Listener(broker, ["spBv1.0/STATE/scada-host-2"]).ready()
    online = await listener.until(lambda m: m.body["online"] is True)
    client = collector.session.client
    client.on_disconnect = None
    await asyncio.to_thread(client.loop_stop)
    client.socket().close()  # gone without a DISCONNECT: the broker publishes the will
    dead = await listener.until(lambda m: m.body["online"] is False)
    assert dead.body["timestamp"] >= online.body["timestamp"]
    listener.close()
    collector.session = None
    await collector.stop()


# ---- seq, Rebirth, bdSeq ---------------------------------------------------------------------------------


async def test_a_lost_message_gets_exactly_one_rebirth_request_and_the_stream_recovers(broker):
    plant = await Plant(broker).start()
    ncmd = await Listener(broker, [spb.topic(GROUP, "NCMD", NODE)]).ready()
    try:
        await plant.until(state_of(node_source(GROUP, NODE), True))
        plant.feed()
        await plant.until(reading_of("press.pressure"))
        await asyncio.sleep(0.6)  # past the rate limit of the Rebirth the host sent when it connected
        while not ncmd.queue.empty():
            ncmd.queue.get_nowait()
        births = plant.node.stats_["rebirths"]
        plant.node.skip_seq(1)  # one DDATA lost on the way
        await ncmd.next(timeout=5)  # the Rebirth, once the reorder window closed
        await eventually(lambda: plant.node.stats_["rebirths"] == births + 1)
        after = plant.step
        await plant.until(strokes_from(after + 3))
        with pytest.raises(asyncio.TimeoutError):
            await ncmd.next(timeout=1.5)  # exactly one
        stats = plant.collector.stats()
        assert stats["seq_gaps"] == 1 and stats["messages_lost"] == 1
    finally:
        ncmd.close()
        await plant.stop()


async def test_a_late_message_within_the_reorder_window_is_no_gap(broker):
    raw = RawEdgeNode(broker)
    line = press_line(broker, reorder_timeout_s=2.0)
    buffer: Buffer = Buffer(1000, "x")
    collector = SparkplugCollector(line, buffer)
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    await eventually(lambda: raw.rebirths == 1)  # the host asks at connect: its subscriptions are in place
    try:
        raw.send("NBIRTH", payload(0, ("bdSeq", None, DT.Int64, 1), ("Cabinet/Temperature", 7, DT.Int8, 20)))
        for seq in (1, 3, 2, 4):  # 2 and 3 swapped on the way
            raw.send("NDATA", payload(seq, (None, 7, None, 20 + seq)))
        await eventually(lambda: collector.readings_in >= 5)
        stats = collector.stats()
        assert stats.get("reordered_messages") == 1 and "messages_lost" not in stats
        assert raw.rebirths == 1  # only the one the host sent when it connected
    finally:
        await collector.stop()
        raw.close()


async def test_an_edge_node_restart_with_a_new_bdseq_is_followed_and_its_old_will_ignored(broker):
    plant = await Plant(broker).start()
    try:
        await plant.until(state_of(node_source(GROUP, NODE), True))
        plant.feed()
        await plant.until(reading_of("pump.flow"))
        # the gateway restarts: a new process, a new MQTT session, bdSeq + 1
        old = plant.edge
        plant.edge = SparkplugPublisher(plant.line, datatypes=DATATYPES, bd_seq=6)
        plant.node = plant.edge.node(GROUP, NODE)
        await old.nodes[0].kill()
        await plant.edge.start(wait_s=10)
        # the will of the old session (bdSeq 5) may come before or after the new birth (bdSeq 6)
        await eventually(lambda: plant.collector.stats()["edge_nodes"][f"{GROUP}/{NODE}"]["bd_seq"] == 6)
        first = plant.step
        await plant.until(strokes_from(first + 2))
        # a late will of the old session: ignored, the node stays online
        old_will = spb.Payload(timestamp=spb.now_ms())
        m = old_will.metrics.add(name="bdSeq", datatype=DT.Int64)
        m.long_value = 5
        raw = RawEdgeNode(broker, node="someone-else")
        raw.client.publish(spb.topic(GROUP, "NDEATH", NODE), old_will.SerializeToString(), qos=1).wait_for_publish(5)
        raw.close()
        await eventually(lambda: plant.collector.stats().get("stale_deaths_ignored", 0) >= 1)
        assert plant.collector.stats()["edge_nodes"][f"{GROUP}/{NODE}"]["online"]
        later = plant.step
        await plant.until(strokes_from(later + 2))
    finally:
        await plant.stop()


async def test_data_before_birth_and_an_unknown_alias_are_counted_and_answered_with_a_rebirth(broker):
    raw = RawEdgeNode(broker)
    line = press_line(broker, rebirth_min_interval_s=0.0)
    collector = SparkplugCollector(line, Buffer(1000, "x"))
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    try:
        await eventually(lambda: raw.rebirths == 1)  # asked when the host connected
        raw.send("DDATA", payload(17, (None, 3, None, 1.5)), device="press")  # data of a node never seen born
        await eventually(lambda: collector.rejects.get("before_birth") == 1 and raw.rebirths == 2)
        raw.send("NBIRTH", payload(0, ("bdSeq", None, DT.Int64, 0), ("Node Control/Rebirth", None, DT.Boolean, False)))
        raw.send("DBIRTH", payload(1, ("Hydraulics/Pressure", 3, DT.Double, 100.0)), device="press")
        raw.send("DDATA", payload(2, (None, 3, None, 101.0), (None, 99, None, 5.0)), device="press")
        await eventually(lambda: collector.rejects.get("unknown_metric") == 1 and raw.rebirths == 3)
        await eventually(lambda: collector.readings_in == 2)  # the birth's value and the known alias: nothing usable lost
    finally:
        await collector.stop()
        raw.close()


async def test_garbage_and_metrics_that_are_not_numbers_are_rejected_and_counted(broker):
    raw = RawEdgeNode(broker)
    line = press_line(broker)
    buffer: Buffer = Buffer(1000, "x")
    collector = SparkplugCollector(line, buffer)
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    await eventually(lambda: raw.rebirths == 1)  # the host asks at connect: its subscriptions are in place
    try:
        raw.send("NBIRTH", payload(0, ("bdSeq", None, DT.Int64, 0), ("Cabinet/Temperature", 7, DT.String, "warm")))
        raw.send("NDATA", b"\xff\xff\xff\xff garbage")
        raw.send("NDATA", json.dumps({"value": 1}).encode())
        raw.send("NDATA", spb.Payload(timestamp=spb.now_ms()).SerializeToString())  # no seq: not Sparkplug
        raw.send("NBIRTH", payload(0, ("bdSeq", None, DT.Int64, 0), ("Cabinet/Temperature", 7, DT.Double, 20.5)))
        raw.send("NDATA", payload(1, (None, 7, None, math.nan)))
        raw.send("NDATA", payload(2, (None, 7, None, 21.0), ts_ms=spb.now_ms() + 3_600_000))
        raw.send("NDATA", payload(3, (None, 7, None, 22.5)))
        await eventually(lambda: collector.readings_in == 2)
        assert collector.rejects == {"not_decodable": 3, "not_a_number": 1, "not_finite": 1, "clock_skew": 1}
        got = [await asyncio.wait_for(_next_reading(buffer), 5) for _ in range(2)]
        assert [(r.key, r.value) for r in got] == [("cabinet.temperature", 20.5), ("cabinet.temperature", 22.5)]
        assert collector.session.stats()["callback_errors"] == 0
    finally:
        await collector.stop()
        raw.close()


async def _next_reading(buffer: Buffer) -> Reading:
    while True:
        item = await buffer.get()
        if isinstance(item, Reading):
            return item


async def test_is_null_and_the_quality_property_become_the_reading_quality(broker):
    raw = RawEdgeNode(broker)
    line = press_line(broker)
    buffer: Buffer = Buffer(1000, "x")
    collector = SparkplugCollector(line, buffer)
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    await eventually(lambda: raw.rebirths == 1)  # the host asks at connect: its subscriptions are in place
    try:
        raw.send("NBIRTH", payload(0, ("bdSeq", None, DT.Int64, 0), ("Cabinet/Temperature", 7, DT.Float, 20.0)))
        null = payload(1, (None, 7, None, None))
        stale = payload(2, (None, 7, None, 21.0))
        stale.metrics[0].properties.keys.append("Quality")
        stale.metrics[0].properties.values.add(type=DT.Int32, int_value=500)
        bad = payload(3, (None, 7, None, 22.0))
        bad.metrics[0].properties.keys.append("Quality")
        bad.metrics[0].properties.values.add(type=DT.Int32, int_value=0)
        for p in (null, stale, bad):
            raw.send("NDATA", p)
        got = [await asyncio.wait_for(_next_reading(buffer), 5) for _ in range(4)]
        assert [(r.value, r.quality) for r in got] == [
            (20.0, Quality.GOOD), (None, Quality.BAD), (21.0, Quality.UNCERTAIN), (None, Quality.BAD)]
    finally:
        await collector.stop()
        raw.close()


# ---- deaths: one source alarm, cleared by the rebirth ------------------------------------------------------


async def test_ndeath_makes_the_signals_stale_raises_one_source_alarm_and_the_rebirth_clears_it(broker, tmp_path):
    plant = await Plant(broker).start()
    anomalies: Buffer = Buffer(10_000, "anomalies")
    readings: Buffer = Buffer(100_000, "readings->detect")
    # the test data are flat on purpose; only lost data may raise alarms here
    detect = DetectStation(plant.line, readings, anomalies, checks=SignalChecks(plant.line, stuck_samples=10**9))
    engine = AlarmEngine(plant.line, tmp_path / "alarms.db", AlarmSettings(on_delay_s=0.5, off_delay_s=0.5))
    stop = asyncio.Event()

    async def pipe() -> None:  # the collector's stream into detect, and detect's anomalies into the alarm engine
        while True:
            item = await plant.buffer.get()
            plant.seen.append(item)
            readings.offer(item)

    async def alarms() -> None:
        while True:
            try:
                engine.ingest(await asyncio.wait_for(anomalies.get(), 0.1))
            except asyncio.TimeoutError:
                engine.tick()

    tasks = [asyncio.create_task(pipe()), asyncio.create_task(alarms()), asyncio.create_task(detect.run(stop))]

    def active_sources() -> list[str]:
        return [a.alarm_id for a in engine.active() if a.condition.endswith(":source") and a.state.active]

    try:
        plant.feed()
        await eventually(lambda: detect.rows > 10 and detect.last_seen.get("press.pressure"))
        assert engine.active() == []
        await plant.node.kill()  # the gateway crashes: the broker delivers its NDEATH will
        await eventually(lambda: len(active_sources()) == 1, 15)
        await asyncio.sleep(2.5)  # the devices' signals stay silent: still one alarm, no quality alarm per signal
        assert len(engine.active()) == 1 and len(active_sources()) == 1
        alarm = engine.active()[0]
        assert "gateway-7" in alarm.message and "7 of 7 signals stale" in alarm.message
        assert any(isinstance(s, SourceState) and s.source == node_source(GROUP, NODE) and not s.connected
                   and "NDEATH" in s.detail for s in plant.seen)
        plant.edge = SparkplugPublisher(plant.line, datatypes=DATATYPES, bd_seq=6)
        plant.node = plant.edge.node(GROUP, NODE)
        await plant.edge.start(wait_s=10)
        await eventually(lambda: not active_sources(), 15)  # returned: the operator acknowledges what happened
        assert [(a.condition, a.state.value) for a in engine.active()] == [
            (f"{node_source(GROUP, NODE)}:source", "returned_unacknowledged")]
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await plant.stop()
        engine.close()


async def test_a_device_death_is_its_own_source_and_its_node_keeps_serving(broker):
    raw = RawEdgeNode(broker)
    line = press_line(broker)
    buffer: Buffer = Buffer(1000, "x")
    collector = SparkplugCollector(line, buffer)
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    await eventually(lambda: raw.rebirths == 1)
    seen: list = []

    async def until(predicate):
        while True:
            item = await asyncio.wait_for(buffer.get(), 5)
            seen.append(item)
            if predicate(item):
                return item
    try:
        raw.send("NBIRTH", payload(0, ("bdSeq", None, DT.Int64, 0), ("Cabinet/Temperature", 7, DT.Double, 20.0)))
        raw.send("DBIRTH", payload(1, ("Flow", 8, DT.Double, 40.0), ("Motor/Running", 9, DT.Boolean, True)), device="pump")
        await until(state_of(device_source(GROUP, NODE, "pump"), True))
        death = payload(2, ts_ms=spb.now_ms() - 1500)
        raw.send("DDEATH", death, device="pump")
        down = await until(state_of(device_source(GROUP, NODE, "pump"), False))
        assert set(down.signals) == {"pump.flow", "pump.running"}
        assert down.ts == pytest.approx(death.timestamp / 1000)  # the edge node's own time of the loss
        raw.send("NDATA", payload(3, (None, 7, None, 21.0)))
        r = await until(reading_of("cabinet.temperature"))
        assert r.value == 21.0
        # press never sent its DBIRTH: after the device birth timeout it is a lost source of its own
    finally:
        await collector.stop()
        raw.close()


async def test_a_mapped_device_that_never_births_is_reported_lost(broker):
    raw = RawEdgeNode(broker)
    line = press_line(broker, device_birth_timeout_s=0.5)
    buffer: Buffer = Buffer(1000, "x")
    collector = SparkplugCollector(line, buffer)
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    await eventually(lambda: raw.rebirths == 1)  # the host asks at connect: its subscriptions are in place
    try:
        raw.send("NBIRTH", payload(0, ("bdSeq", None, DT.Int64, 0), ("Cabinet/Temperature", 7, DT.Double, 20.0)))
        raw.send("DBIRTH", payload(1, ("Flow", 8, DT.Double, 40.0)), device="pump")
        while True:
            item = await asyncio.wait_for(buffer.get(), 5)
            if isinstance(item, SourceState) and not item.connected and item.source == device_source(GROUP, NODE, "press"):
                break
        assert "no DBIRTH" in item.detail and len(item.signals) == 4
    finally:
        await collector.stop()
        raw.close()


# ---- the line file, and detect's view of nested sources -------------------------------------------------


def test_line_file_sparkplug_sources_are_validated_with_their_paths(broker):
    from factory_copilot.config import LineConfigError

    raw = press_line(broker).model_dump(mode="json")
    raw["assets"][0]["signals"][1]["source"]["sparkplug"] = dict(raw["assets"][0]["signals"][0]["source"]["sparkplug"])
    raw["assets"][1]["signals"][0]["source"]["sparkplug"]["device"] = "pump/1"
    raw["sparkplug"]["host_id"] = "host#1"
    with pytest.raises(LineConfigError) as err:
        parse_line(raw, "press.yaml")
    text = str(err.value)
    assert "assets[1].signals[0].source.sparkplug.device" in text and "not a Sparkplug id" in text
    assert "sparkplug.host_id" in text
    raw["assets"][1]["signals"][0]["source"]["sparkplug"]["device"] = "pump"
    raw["sparkplug"]["host_id"] = None
    with pytest.raises(LineConfigError, match=r"assets\[0\].signals\[1\].source.sparkplug: metric 'Hydraulics/Pressure' "
                                              r"of plant-b/gateway-7/press is already read by assets\[0\].signals\[0\]"):
        parse_line(raw, "press.yaml")


def test_sources_pick_sparkplug_and_the_fingerprint_ignores_how_signals_are_reached(broker):
    line = press_line(broker)
    assert list(line.sources()) == ["sparkplug"] and len(line.sources()["sparkplug"]) == 7
    assert line.sparkplug_host_id() == "factory-copilot-plant-b-press-3"
    moved = line.model_dump(mode="json")
    for a in moved["assets"]:
        for s in a["signals"]:
            s["source"] = {"opcua": f"ns=2;s={a['id']}.{s['name']}"}
    assert parse_line(moved).fingerprint() == line.fingerprint()
    assert "sparkplug" not in parse_line(moved).sources()


def test_a_source_silent_under_a_lost_source_above_it_raises_no_alarm_of_its_own(broker):
    line = press_line(broker)
    now = [1000.0]
    detect = DetectStation(line, clock=lambda: now[0], checks=SignalChecks(line, stuck_samples=10**9))
    node, device = node_source(GROUP, NODE), device_source(GROUP, NODE, "pump")
    every = tuple(line.signal_keys())
    detect.add(SourceState(node, now[0], True, "born", every))
    detect.add(SourceState(device, now[0], True, "born", ("pump.flow", "pump.running")))
    for k in every:
        detect.add(Reading(now[0], *k.split("."), 1.0))
    detect.add(SourceState(node, now[0] + 0.1, False, "NDEATH", every))
    out = []
    for i in range(1, 40):  # 8 s of rows: the device's signals have long been silent
        now[0] = 1000.0 + 0.2 * i
        out += detect.close_until(int(now[0] / line.sampling_interval_s))
    sources = {a.signal for a in out if a.kind == "source"}
    assert sources == {node} and not [a for a in out if a.kind != "source"]
    # the device dies on its own while its node lives: then it is its own alarm
    detect.add(SourceState(node, now[0], True, "born", every))
    detect.add(SourceState(device, now[0], False, "DDEATH", ("pump.flow", "pump.running")))
    for k in every:
        if not k.startswith("pump."):
            detect.add(Reading(now[0], *k.split("."), 1.0))
    now[0] += 0.4
    later = detect.close_until(int(now[0] / line.sampling_interval_s))
    assert {a.signal for a in later if a.kind == "source"} == {device}


# ---- browse --sparkplug ----------------------------------------------------------------------------------


async def test_browse_writes_a_line_file_from_the_births_of_a_running_edge_node_and_it_collects(broker, tmp_path):
    from factory_copilot.cli import main

    line = press_line(broker)
    edge = await SparkplugPublisher(line, datatypes=DATATYPES).start(wait_s=10)
    try:
        async def running() -> None:  # born long before the browser came: only a Rebirth shows its metrics
            while True:
                edge.publish(readings_at(line, 0, time.time()))
                await asyncio.sleep(0.1)

        feeder = asyncio.create_task(running())
        out = tmp_path / "browsed.yaml"
        rc = await asyncio.to_thread(main, ["browse", "--sparkplug", f"mqtt://{broker.host}:{broker.port}",
                                            "--group", GROUP, "--wait", "2", "--site", "plant-b", "--line", "press-3",
                                            "-o", str(out)])
        feeder.cancel()
        assert rc == 0 and edge.nodes[0].stats_["rebirths"] == 1
        text = out.read_text()
        assert text.startswith("# Line file browsed from mqtt://") and "TODO: normal running band" in text
        from factory_copilot.config import load_line

        browsed = load_line(out)
        by_asset = {a.id: a for a in browsed.assets}
        assert set(by_asset) == {"press", "pump", "gateway_7"}
        pressure = by_asset["press"].signal("hydraulics_pressure")
        assert pressure.unit == "bar" and pressure.normal == (135.0, 165.0)
        assert pressure.source.sparkplug.model_dump() == {"group": GROUP, "edge_node": NODE, "device": "press",
                                                          "metric": "Hydraulics/Pressure"}
        assert by_asset["gateway_7"].signal("cabinet_temperature").source.sparkplug.device is None
        assert browsed.service.source == "sparkplug" and browsed.mqtt.port == broker.port
        # the browsed file serves as it is
        buffer: Buffer = Buffer(1000, "x")
        collector = SparkplugCollector(browsed, buffer)
        await collector.start()
        try:
            keys: set[str] = set()
            wanted = {"press.hydraulics_pressure", "gateway_7.cabinet_temperature"}
            for _ in range(100):
                edge.publish(readings_at(line, 1, time.time()))
                await asyncio.sleep(0.05)
                keys |= {r.key for r in (buffer.get_nowait() for _ in range(buffer.qsize())) if isinstance(r, Reading)}
                if keys >= wanted:
                    break
            assert keys >= wanted
        finally:
            await collector.stop()
    finally:
        await edge.stop()


def test_browse_says_what_is_missing(broker, capsys):
    from factory_copilot.cli import main

    assert main(["browse", "--sparkplug", f"mqtt://{broker.host}:{broker.port}"]) == 2
    assert "--group" in capsys.readouterr().err
    assert main(["browse", "--sparkplug", f"mqtt://{broker.host}:{broker.port}", "--group", "nobody", "--wait",
                 "0.5"]) == 1
    assert "no Sparkplug birth from group 'nobody'" in capsys.readouterr().err


# ---- the service over Sparkplug --------------------------------------------------------------------------


async def test_the_service_over_sparkplug_stores_readings_and_publishes_one_source_alarm_when_the_node_dies(
        broker, tmp_path):
    from factory_copilot.config import ServicePaths
    from factory_copilot.detect.persist import TrainedDetector
    from factory_copilot.publish import Topics
    from factory_copilot.service import LineService

    line = press_line(broker)
    # no trained detector: the plant checks alone (flat test data: the stuck check is off)
    models = TrainedDetector("press", "plant-b/press-3", detector=None, stuck_exempt=set(line.signal_keys()))
    service = LineService(line, models, ServicePaths(tmp_path / "state"), health_port=None)
    edge = await SparkplugPublisher(line, datatypes=DATATYPES).start(wait_s=10)
    alarms = await Listener(broker, [Topics(line.site, line.line).all_alarms()]).ready()
    stop = asyncio.Event()
    run = asyncio.create_task(service.run(stop))
    step = 0

    async def feed() -> None:
        nonlocal step
        while True:
            edge.publish(readings_at(line, step, time.time()))
            step += 1
            await asyncio.sleep(0.1)

    feeder = asyncio.create_task(feed())
    try:
        await eventually(lambda: service.store_station.written.get("readings", 0) >= 50, 20)
        ok, reasons, _ = service.health()
        assert ok, reasons
        await edge.nodes[0].kill()
        msg = await alarms.until(lambda m: m.payload and m.body["condition"].endswith(":source"), 20)
        assert msg.body["asset"] == "sources" and "gateway-7" in msg.body["message"]
        ok, reasons, _ = service.health()
        assert not ok and any("gateway-7" in r for r in reasons)
        with pytest.raises(asyncio.TimeoutError):  # one alarm for the node, none per signal
            await alarms.until(lambda m: m.payload and not m.body["condition"].endswith(":source"), 3)
        assert service.restarts == {} and not any(service.store_station.failed.values())
    finally:
        feeder.cancel()
        stop.set()
        await asyncio.wait_for(run, 30)
        alarms.close()
        await edge.stop()


async def test_legacy_state_for_2_2_edge_nodes_online_then_offline(broker):
    line = press_line(broker, host_id="scada-22", legacy_state=True)
    collector = SparkplugCollector(line, Buffer(1000, "x"))
    listener = await Listener(broker, ["STATE/scada-22"]).ready()
    await collector.start()
    try:
        msg = await listener.until(lambda m: m.topic == "STATE/scada-22")
        assert msg.payload == b"ONLINE"
        late = await Listener(broker, ["STATE/scada-22"]).ready()
        kept = await late.next()
        late.close()
        assert (kept.payload, kept.retain) == (b"ONLINE", True)
        await collector.stop()
        assert (await listener.next()).payload == b"OFFLINE"
    finally:
        listener.close()
        await collector.stop()


def test_the_compiled_module_matches_the_proto_beside_it():
    """Every field of sparkplug_b.proto has its name and number in the compiled module (regenerate if not)."""
    import re
    from pathlib import Path

    from factory_copilot.plumbing import sparkplug_b_pb2 as pb

    text = (Path(pb.__file__).parent / "sparkplug_b.proto").read_text()
    declared = re.findall(r"^\s*(?:optional|repeated)?\s*[\w.]+\s+(\w+)\s*=\s*(\d+);", text, re.M)
    known: dict[str, set[int]] = {}

    def walk(desc) -> None:
        for f in desc.fields:
            known.setdefault(f.name, set()).add(f.number)
        for nested in desc.nested_types:
            walk(nested)

    walk(pb.Payload.DESCRIPTOR)
    fields = [(n, int(i)) for n, i in declared]
    assert len(fields) > 60
    assert [(n, i) for n, i in fields if i not in known.get(n, set())] == []
    block = text[text.index("enum DataType {"):]
    block = block[:block.index("}")]
    enum = {v.name: v.number for v in pb.DESCRIPTOR.enum_types_by_name["DataType"].values}
    assert {n: int(i) for n, i in re.findall(r"^\s*(\w+)\s*=\s*(\d+);", block, re.M)} == enum
    assert {d.name: d.value for d in spb.DataType} == enum and len(enum) == 35
