"""The MQTT collector against a real broker (Mosquitto) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from factory_copilot.plumbing import mqtt
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.collect.mqtt import MqttCollector, TopicPattern
from factory_copilot.config import SIMULATED_LINE, MqttConnection, load_line, parse_line
from factory_copilot.records import Quality, Reading
from simulators.mqtt_publisher import ReadingPublisher
from tests.support.opcua import drain

LINE = load_line(SIMULATED_LINE)
# samples from an hour ago: plausible to the gate (older than max_age_s is rejected as clock_skew)
T0 = float(int(time.time()) - 3600)
ISO_T1 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + 60))
TOPIC = "factory/demo-plant/packaging-1/{}/{}"


def conn_for(broker, protocol: str | None = None, **kw) -> MqttConnection:
    return MqttConnection(host=broker.host, port=broker.port, protocol=protocol or broker.protocol, **kw)


class RawPublisher:
    """A plain paho client sending exact payloads with QoS 1 and waiting until the broker has each."""

    def __init__(self, conn: MqttConnection):
        # a plain client, as a plant's gateway would be: none of the project's session logic
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.protocol_of(conn))
        up = threading.Event()
        self.client.on_connect = lambda *a: up.set()
        self.client.connect(conn.host, conn.port)
        self.client.loop_start()
        assert up.wait(10), "test publisher could not connect"

    def send(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def started(collector: MqttCollector) -> MqttCollector:
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    return collector


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_readings_arrive_with_asset_signal_unit_and_quality(broker, protocol):
    if broker.kind == "amqtt" and protocol == "5":
        pytest.skip("amqtt speaks MQTT 3.1.1 only")
    buffer: Buffer[Reading] = Buffer(1000)
    collector = await started(MqttCollector(LINE, buffer, conn_for(broker, protocol)))
    publisher = await ReadingPublisher(LINE, conn_for(broker, protocol)).start(wait_s=10)
    t0 = time.time()
    publisher.publish(
        [
            Reading(t0, "product_pump", "flow", 41.5),
            Reading(t0, "heat_tunnel", "zone1_temperature", 181.0, Quality.UNCERTAIN),
            Reading(t0, "filler", "fill_weight", None, Quality.BAD),
        ]
    )
    got = {r.key: r for r in await drain(buffer, lambda rs: len(rs) >= 3)}
    pump = got["product_pump.flow"]
    assert (pump.ts, pump.value) == (pytest.approx(t0, abs=1e-5), 41.5)
    assert (pump.asset, pump.signal, pump.unit, pump.quality, pump.source) == ("product_pump", "flow", "L/min", Quality.GOOD, "mqtt")
    tunnel = got["heat_tunnel.zone1_temperature"]
    assert (tunnel.quality, tunnel.value, tunnel.unit) == (Quality.UNCERTAIN, 181.0, LINE.signal("heat_tunnel.zone1_temperature").unit)
    filler = got["filler.fill_weight"]
    assert (filler.quality, filler.value) == (Quality.BAD, None)
    stats = collector.stats()
    assert stats["readings_in"] == 3 and stats["by_quality"] == {"good": 1, "uncertain": 1, "bad": 1}
    await publisher.stop()
    await collector.stop()


async def test_wildcard_pattern_maps_topics_to_assets_and_signals(broker):
    buffer: Buffer[Reading] = Buffer(1000)
    collector = await started(MqttCollector(LINE, buffer, conn_for(broker), patterns=["plant/+/{asset}/{signal}"]))
    assert "plant/+/+/+" in collector.subscriptions
    pub = RawPublisher(conn_for(broker))
    pub.send("plant/hall-2/product_pump/discharge_pressure", json.dumps({"ts": T0 + 0.5, "value": 3.2}))
    pub.send("plant/hall-2/product_pump/no_such_signal", json.dumps({"ts": T0 + 0.5, "value": 3.2}))
    pub.send("plant/hall-2/air_compressor/header_pressure", json.dumps({"ts": T0 + 1.0, "value": 6.5}))
    got = await drain(buffer, lambda rs: len(rs) >= 2)
    assert [(r.key, r.value, r.ts, r.unit) for r in got] == [
        ("product_pump.discharge_pressure", 3.2, T0 + 0.5, LINE.signal("product_pump.discharge_pressure").unit),
        ("air_compressor.header_pressure", 6.5, T0 + 1.0, LINE.signal("air_compressor.header_pressure").unit),
    ]
    assert collector.stats()["rejects"] == {"unknown_topic": 1}
    pub.close()
    await collector.stop()


def test_topic_patterns_are_checked():
    with pytest.raises(ValueError, match="needs both"):
        TopicPattern.parse("factory/+/{asset}")
    with pytest.raises(ValueError, match="must be a name"):
        TopicPattern.parse("factory/#/{asset}/{signal}")


async def test_json_field_mapping_from_the_line_file(broker):
    data = LINE.model_dump(mode="json")
    pump = next(a for a in data["assets"] if a["id"] == "product_pump")
    flow = next(s for s in pump["signals"] if s["name"] == "flow")
    flow["source"]["mqtt"] = {"topic": "gw/pump/flow", "field": "v", "timestamp_field": "time", "quality_field": "status"}
    line = parse_line(data)
    buffer: Buffer[Reading] = Buffer(100)
    collector = await started(MqttCollector(line, buffer, conn_for(broker)))
    pub = RawPublisher(conn_for(broker))
    pub.send("gw/pump/flow", json.dumps({"time": int(T0 * 1000) + 250, "v": 12, "status": 0x40920000}))  # ms, UncertainSensorCalibration-ish
    pub.send("gw/pump/flow", json.dumps({"time": ISO_T1, "v": 13, "status": "GOOD"}))
    pub.send("gw/pump/flow", json.dumps({"value": 14}))  # field "v" missing
    got = await drain(buffer, lambda rs: len(rs) >= 2)
    assert [(r.ts, r.value, r.quality) for r in got] == [
        (T0 + 0.25, 12.0, Quality.UNCERTAIN),
        (T0 + 60, 13.0, Quality.GOOD),
    ]
    for _ in range(100):  # the third message is rejected on paho's thread; wait for the count
        if collector.stats()["rejects"]:
            break
        await asyncio.sleep(0.02)
    assert collector.stats()["rejects"] == {"missing_field": 1}
    pub.close()
    await collector.stop()


async def test_fuzzed_bad_payloads_lose_none_of_the_good_ones(broker, caplog):
    caplog.set_level(logging.WARNING, logger="factory_copilot.collect.mqtt")
    conn = conn_for(broker, max_payload_bytes=1024)
    buffer: Buffer[Reading] = Buffer(10_000)
    collector = await started(MqttCollector(LINE, buffer, conn, patterns=["factory/+/+/{asset}/{signal}"]))
    pub = RawPublisher(conn)
    flow = TOPIC.format("product_pump", "flow")
    bad = {
        "not_json": [b"{nope", b"\xff\xfe\x00", b"", b"value=3"],
        "not_an_object": [b"[1, 2]", b"3.5", b'"text"', b"null"],
        "missing_field": [json.dumps({"ts": 1.0e9}), json.dumps({"quality": "good"})],
        "not_a_number": [json.dumps({"value": "3.5"}), json.dumps({"value": [1]}), json.dumps({"value": {"x": 1}})],
        "not_finite": [b'{"value": NaN}', b'{"value": Infinity}', b'{"value": -Infinity}'],
        "oversized": [json.dumps({"value": 1.0, "pad": "x" * 2000})],
        "bad_timestamp": [json.dumps({"value": 1.0, "ts": "yesterday"}), json.dumps({"value": 1.0, "ts": -5})],
        "bad_quality": [json.dumps({"value": 1.0, "quality": "excellent"})],
        "unknown_topic": [],  # sent below on a topic of no signal
    }
    rng = random.Random(7)
    mixed = [(flow, p, reason) for reason, ps in bad.items() for p in ps]
    mixed += [(TOPIC.format("product_pump", "nonexistent"), json.dumps({"value": 1.0}), "unknown_topic")]
    good_n = 200
    sent_good = []
    for i in range(good_n):
        ts = T0 + i
        pub.send(flow, json.dumps({"ts": ts, "value": float(i), "quality": "good", "unit": "L/min"}))
        sent_good.append(float(i))
        for _ in range(rng.randint(0, 2)):
            topic, payload, _reason = rng.choice(mixed)
            pub.send(topic, payload)
    for topic, payload, _reason in mixed:  # every kind at least once
        pub.send(topic, payload)
    got = await drain(buffer, lambda rs: len(rs) >= good_n, timeout_s=30)
    assert [r.value for r in got] == sent_good
    await asyncio.sleep(0.3)
    assert buffer.qsize() == 0, "a bad payload turned into a reading"
    rejects = collector.stats()["rejects"]
    assert set(rejects) == set(bad)
    assert collector.stats()["readings_in"] == good_n
    # the log names the topic, and is rate-limited: one line per reason
    lines = [r.getMessage() for r in caplog.records if r.name == "factory_copilot.collect.mqtt"]
    assert all(flow in line or "nonexistent" in line for line in lines)
    assert len(lines) == len(bad)
    pub.close()
    await collector.stop()


async def test_broker_restart_is_survived_and_the_gap_shows(broker, caplog):
    caplog.set_level(logging.INFO, logger="factory_copilot")
    buffer: Buffer[Reading] = Buffer(10_000)
    collector = await started(MqttCollector(LINE, buffer, conn_for(broker)))
    publisher = await ReadingPublisher(LINE, conn_for(broker)).start(wait_s=10)

    def send() -> float:
        ts = time.time()
        publisher.publish([Reading(ts, "filler", "tank_level", 55.0)])
        return ts

    last_before = send()
    await drain(buffer, lambda rs: any(r.ts == pytest.approx(last_before, abs=1e-5) for r in rs))
    await asyncio.to_thread(broker.stop)
    down_at = time.time()
    while collector.connected.is_set():
        await asyncio.sleep(0.02)
        assert time.time() - down_at < 10
    await asyncio.sleep(1.0)
    await asyncio.to_thread(broker.start)
    await asyncio.wait_for(collector.connected.wait(), 30)
    assert await asyncio.to_thread(publisher.connected.wait, 30)
    got: list[Reading] = []
    deadline = time.time() + 20
    while not any(r.ts > down_at for r in got):
        assert time.time() < deadline, "readings did not resume after the broker restart"
        send()
        try:
            got.append(await asyncio.wait_for(buffer.get(), 0.2))
        except asyncio.TimeoutError:
            pass
    resumed = next(r for r in got if r.ts > down_at)
    assert resumed.ts - last_before > 1.0, "the outage must show as a gap in the timestamps"
    assert collector.stats()["reconnects"] == 1 and collector.stats()["outages"] == 1
    # the collector's own lines and its session's (plumbing/mqtt.py), which says each outage once
    msgs = [r.getMessage() for r in caplog.records if "MQTT collector" in r.getMessage()]
    assert sum("reconnecting" in m for m in msgs) == 1
    assert any("re-subscribed" in m for m in msgs)
    await publisher.stop()
    await collector.stop()


async def test_slow_consumer_never_blocks_the_client_loop(broker):
    buffer: Buffer[Reading] = Buffer(10, name="collect->detect")
    collector = await started(MqttCollector(LINE, buffer, conn_for(broker)))
    publisher = await ReadingPublisher(LINE, conn_for(broker)).start(wait_s=10)
    n = 500
    publisher.publish([Reading(T0 + i, "filler", "tank_level", float(i)) for i in range(n)])
    deadline = time.time() + 20
    offered = n + 2  # and the collector's two source states before them: connecting, connected
    while buffer.offered < offered:  # nobody reads the buffer, yet every message is taken off the network
        assert time.time() < deadline, f"only {buffer.offered} of {offered} offered"
        await asyncio.sleep(0.05)
    assert buffer.qsize() == 10 and buffer.dropped == offered - 10
    newest = [buffer.get_nowait().value for _ in range(10)]
    assert newest == [float(i) for i in range(n - 10, n)]  # the oldest went, the newest stayed
    assert collector.stats()["buffer"]["dropped"] == offered - 10
    await publisher.stop()
    await collector.stop()


async def test_mqtt5_clients_fall_back_to_311_on_an_older_broker(caplog):
    from tests.support.brokers import AmqttBroker

    old = AmqttBroker().start()
    try:
        buffer: Buffer[Reading] = Buffer(100)
        collector = MqttCollector(LINE, buffer, MqttConnection(host=old.host, port=old.port, protocol="5"))
        await collector.start()
        await asyncio.wait_for(collector.connected.wait(), 15)
        assert collector.conn.protocol == "3.1.1"
        assert any("falling back to 3.1.1" in r.getMessage() for r in caplog.records)
        publisher = await ReadingPublisher(LINE, MqttConnection(host=old.host, port=old.port, protocol="5")).start(wait_s=15)
        assert publisher.connected.is_set() and publisher.conn.protocol == "3.1.1"
        publisher.publish([Reading(T0, "filler", "tank_level", 50.0)])
        got = await drain(buffer, lambda rs: len(rs) >= 1)
        assert got[0].key == "filler.tank_level" and got[0].value == 50.0
        await publisher.stop()
        await collector.stop()
    finally:
        await asyncio.to_thread(old.stop)


def test_collector_for_picks_the_source():
    from factory_copilot.collect import OpcuaCollector, collector_for

    assert isinstance(collector_for(LINE, Buffer(10), "mqtt"), MqttCollector)
    assert isinstance(collector_for(LINE, Buffer(10), "opcua"), OpcuaCollector)
    with pytest.raises(ValueError, match="unknown source 'modbus'"):
        collector_for(LINE, Buffer(10), "modbus")
