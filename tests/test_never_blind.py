"""Never blind without saying so: the data path under bad input, bad clocks and lost sources.

Each test first reproduces a failure found from outside (a hostile plant IT tester on the
running service), then shows what the service does now.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

import pytest

from factory_copilot.alarms.engine import AlarmEngine
from factory_copilot.collect.mqtt import MqttCollector
from factory_copilot.config import SIMULATED_LINE, MqttConnection, load_line, parse_line
from factory_copilot.detect.station import SOURCES_ASSET, DetectStation
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.publish import payloads
from factory_copilot.publish.publisher import InstanceConflict, Publisher
from factory_copilot.records import AlarmState, Anomaly, Reading, SourceState
from tests.support.opcua import drain
from tests.support.plant import Plant, condition

LINE = load_line(SIMULATED_LINE)
YEAR_2100 = 4102444800.0


def conn_for(broker, **kw) -> MqttConnection:
    return MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol, **kw)


class Gateway:
    """A plain paho client, as a plant's gateway (or an attacker) would publish: no project code involved."""

    def __init__(self, broker):
        import threading

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5 if broker.protocol == "5" else paho.MQTTv311)
        up = threading.Event()
        self.client.on_connect = lambda *a: up.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert up.wait(10)

    def send(self, topic: str, payload: bytes | str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---- bad clocks --------------------------------------------------------------------------------------------------


def rows_of(station: DetectStation, now: list[float], seconds: int, value: float = 50.0) -> None:
    """Feed ``seconds`` intervals of every signal, stamped just before the clock."""
    keys = LINE.signal_keys(include_mode=True)
    for _ in range(seconds):
        now[0] += 1.0
        for k in keys:
            asset, _, signal = k.partition(".")
            station.add(Reading(now[0] - 0.2, asset, signal, 2.0 if k == "line.mode" else value))


def test_a_sample_stamped_in_the_future_cannot_run_the_rows_ahead():
    now = [1_800_000_000.5]
    station = DetectStation(LINE, clock=lambda: now[0])
    rows_of(station, now, 5)
    rows = station.rows
    # before: one sample from the year 2100 made the station evaluate thousands of empty rows at once,
    # and every later reading was dropped as late
    station.add(Reading(YEAR_2100, "product_pump", "flow", 60.0))
    assert station.rows == rows and station.counts["ahead_of_clock"] == 1
    rows_of(station, now, 3)
    assert station.rows == rows + 3 and station.counts.get("late_dropped", 0) == 0


def test_a_lagging_source_clock_still_counts_and_a_stale_sample_is_dropped_and_counted(caplog):
    now = [1_800_000_000.5]
    station = DetectStation(LINE, clock=lambda: now[0])
    rows_of(station, now, 5)
    station.add(Reading(now[0] - 3.0, "product_pump", "flow", 61.0))  # a PLC whose clock is 3 s behind
    assert station.counts["late_adjusted"] == 1 and station._values["product_pump.flow"] == 61.0
    with caplog.at_level(logging.WARNING, logger="factory_copilot.detect.station"):
        station.add(Reading(now[0] - 60.0, "product_pump", "flow", 62.0))
    assert station.counts["late_dropped"] == 1 and station._values["product_pump.flow"] == 61.0
    assert any("product_pump.flow is 60.0 s late" in r.getMessage() for r in caplog.records)


# ---- bad payloads ------------------------------------------------------------------------------------------------


async def test_hostile_payloads_are_counted_and_the_next_good_reading_still_arrives(broker, caplog):
    buffer: Buffer = Buffer(1000)
    collector = MqttCollector(LINE, buffer, conn_for(broker))
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    gw = Gateway(broker)
    flow = LINE.signal("product_pump.flow").source.mqtt.topic
    try:
        # before: the 5,000-digit integer raised inside the parser, ended paho's thread, and the collector was deaf
        gw.send(flow, b'{"value": ' + b"9" * 5000 + b"}")
        gw.send(flow, b"[" * 60_000)  # nested 60,000 deep: RecursionError in json.loads before
        gw.send(flow, b'{"value": ' + b"[" * 10_000 + b"]" * 10_000 + b"}")  # well-formed, and as deep
        gw.send(flow, b'{"value": 1, "pad": "' + b"x" * 70_000 + b'"}')  # beyond max_payload_bytes
        gw.send(flow, json.dumps({"value": 60, "ts": YEAR_2100}))  # a PLC whose clock jumped
        gw.send(flow, json.dumps({"value": True}))
        good_ts = time.time()
        gw.send(flow, json.dumps({"value": 41.5, "ts": good_ts}))
        got = await drain(buffer, lambda rs: len(rs) >= 1)
        assert [(r.key, r.value, r.ts) for r in got] == [("product_pump.flow", 41.5, pytest.approx(good_ts))]
        stats = collector.stats()
        assert stats["rejects"] == {"not_finite": 1, "too_deep": 2, "oversized": 1, "clock_skew": 1, "not_a_number": 1}
        assert stats["connected"] and stats["callback_errors"] == 0
        skew = [r.getMessage() for r in caplog.records if "clock_skew" in r.getMessage()]
        assert len(skew) == 1 and flow in skew[0] and "ahead of the clock" in skew[0]
    finally:
        gw.close()
        await collector.stop()


def test_a_command_nested_60000_deep_is_rejected_not_raised():
    parsed = payloads.parse_command(b"[" * 60_000, "ann")
    assert isinstance(parsed, payloads.Rejected) and "too_deep" in parsed.reason
    parsed = payloads.parse_question(b'{"question": ' + b"1" * 5000 + b"}", "ann")
    assert isinstance(parsed, payloads.Rejected) and "not_finite" in parsed.reason


async def test_a_gateway_topic_with_eight_fields_delivers_eight_signals(broker):
    data = LINE.model_dump(mode="json")
    pump = next(a for a in data["assets"] if a["id"] == "product_pump")
    assert len(pump["signals"]) == 8
    for s in pump["signals"]:
        s["source"]["mqtt"] = {"topic": "plant/gw-7/pump", "field": f"pump.{s['name']}", "timestamp_field": "time"}
    line = parse_line(data)
    buffer: Buffer = Buffer(1000)
    collector = MqttCollector(line, buffer, conn_for(broker))
    await collector.start()
    await asyncio.wait_for(collector.connected.wait(), 10)
    gw = Gateway(broker)
    try:
        ts = time.time()
        body = {"time": ts, "pump": {s["name"]: 10.0 + i for i, s in enumerate(pump["signals"])}}
        gw.send("plant/gw-7/pump", json.dumps(body))
        got = await drain(buffer, lambda rs: len(rs) >= 8)
        assert {r.signal: r.value for r in got} == body["pump"] and [r.ts for r in got] == [pytest.approx(ts)] * 8
        # one field that is not a number costs that signal only
        body["pump"]["flow"] = "n/a"
        gw.send("plant/gw-7/pump", json.dumps(body))
        got = await drain(buffer, lambda rs: len(rs) >= 7)
        assert "flow" not in {r.signal for r in got} and len(got) == 7
        assert collector.stats()["rejects"] == {"not_a_number": 1}
    finally:
        gw.close()
        await collector.stop()


# ---- lost sources --------------------------------------------------------------------------------------------------


def test_a_lost_source_is_one_alarm_and_alarms_on_its_signals_never_return_on_silence():
    """Engine and detect station together, on a fake clock: the failure was a limit alarm 'returned' 9 s after the server died."""
    now = [1_800_000_000.5]
    clock = lambda: now[0]  # noqa: E731
    station = DetectStation(LINE, clock=clock)
    engine = AlarmEngine(LINE, clock=clock)
    signals = tuple(LINE.signal_keys(include_mode=True))
    station.add(SourceState("opcua", now[0], True, "connected", signals))
    events = []

    def step(seconds: int, vibration: float | None) -> None:
        for i in range(seconds):
            now[0] += 1.0
            if vibration is not None:
                for k in signals:
                    asset, _, signal = k.partition(".")
                    lo, hi = LINE.signal(k).normal
                    value = lo + (hi - lo) * (0.4 + 0.02 * (i % 5))  # mid-band, never flat
                    value = vibration if k == "product_pump.vibration" else (2.0 if k == "line.mode" else value)
                    for a in station.add(Reading(now[0] - 0.2, asset, signal, value)):
                        events.extend(engine.ingest(a))
            else:  # nothing arrives: the clock closes the rows (as the station's loop does)
                for a in station.close_until(int(now[0] // 1) - 1):
                    events.extend(engine.ingest(a))
            events.extend(engine.tick())

    step(200, 5.0)  # past the settling time after start-up
    step(5, 9.5 + 0.1)  # beyond the 7.1 mm/s limit
    limit = next(a for a in engine.active() if a.condition == "vibration:limit")
    assert limit.asset == "product_pump"
    # the server dies
    station.add(SourceState("opcua", now[0], False, "OPC UA server opc.tcp://plc-7:4840 unreachable", signals))
    before = len(events)
    step(60, None)
    active = {a.alarm_id: a for a in engine.active()}
    assert active[limit.alarm_id].state is AlarmState.ACTIVE_UNACK, "no data is not normal data"
    lost = [a for a in active.values() if a.asset == SOURCES_ASSET]
    assert len(lost) == 1 and "unreachable" in lost[0].message and f"{len(signals)} of {len(signals)} signals stale" in lost[0].message
    raised = [e for e in events[before:] if e.event == "raised"]
    assert [e.alarm.asset for e in raised] == [SOURCES_ASSET], "one alarm, not one per signal"
    assert not [e for e in events[before:] if e.event in ("returned", "cleared")]
    # back: the source alarm returns on its own, the limit alarm follows its data again
    station.add(SourceState("opcua", now[0], True, "connected", signals))
    step(30, 5.0)
    states = {e.alarm_id: e.state for e in events}
    assert not states[lost[0].alarm_id].active
    assert not states[limit.alarm_id].active  # the vibration is back within limits: now it may return


async def test_an_opcua_server_killed_during_a_limit_alarm(broker, tmp_path, sim_models):
    """The running service: the limit alarm stays active while the server is away, one source alarm is raised
    (no per-signal quality alarms), /health says 503 with the reason, and it all clears after the restart."""
    plant = await Plant(broker, tmp_path, sim_models).start()
    try:
        engine = plant.service.engine
        plant.inject("pump_cavitation", severity=3.0, ramp_s=5.0)
        await condition(lambda: any(a.condition.endswith(":limit") for a in engine.active()), 120)
        limits = [a.alarm_id for a in engine.active() if a.condition.endswith(":limit")]
        before = {a.alarm_id for a in engine.alarms()}
        killed_at = time.time()
        await plant.kill_opcua()
        await condition(lambda: any(a.asset == SOURCES_ASSET and a.state.active for a in engine.active()), 30)
        ok, reasons, _ = plant.service.health()
        assert not ok and any(r.startswith("source opcua down") for r in reasons)
        await asyncio.sleep(8)  # longer than the 5 s after which the limit alarm used to 'return'
        new = [a for a in engine.alarms() if a.alarm_id not in before]
        assert [a.asset for a in new] == [SOURCES_ASSET], "one source alarm, no per-signal quality alarms"
        active = {a.alarm_id for a in engine.active()}
        assert set(limits) <= active
        returned = [e for e in engine.audit(since=killed_at) if e.alarm_id in limits and e.event in ("returned", "cleared")]
        assert returned == []
        await plant.restart_opcua()
        lost_id = new[0].alarm_id
        await condition(lambda: not engine.get(lost_id).state.active, 60)
        await condition(lambda: plant.service.health()[0], 30)
    finally:
        await plant.close()


async def test_a_future_dated_opcua_sample_then_a_fault_still_raises_the_alarm(broker, tmp_path, sim_models):
    plant = await Plant(broker, tmp_path, sim_models).start()
    try:
        # before: one SourceTimestamp in 2100 blinded the detector; a pump fault raised no alarm in 75 s
        await plant.server.write([Reading(YEAR_2100, "product_pump", "flow", 60.0)])
        collect = plant.service.collector
        await condition(lambda: collect.stats()["sources"]["opcua"]["rejects"].get("clock_skew", 0) >= 1)
        injected_at = time.time()
        plant.inject("pump_cavitation")
        engine = plant.service.engine
        await condition(lambda: any(a.asset == "product_pump" and a.raised_at > injected_at for a in engine.active()), 60)
        assert plant.service.detect.stats().get("late_dropped", 0) == 0
    finally:
        await plant.close()


# ---- stations, instances and health ------------------------------------------------------------------------------


async def test_a_second_publisher_for_the_same_line_is_refused_with_a_message(broker, tmp_path):
    first = Publisher("north", "line-9", tmp_path / "a.db", connection=conn_for(broker))
    await first.start()
    await asyncio.wait_for(first.online.wait(), 10)
    second = Publisher("north", "line-9", tmp_path / "b.db", connection=conn_for(broker, keepalive_s=2))
    try:
        with pytest.raises(InstanceConflict, match=r"another factory-copilot instance .* is publishing north/line-9"):
            await second.start()
        assert first.online.is_set(), "the first one keeps its client id"
    finally:
        await first.stop()
    # once the first one said goodbye, a new one starts
    third = Publisher("north", "line-9", tmp_path / "c.db", connection=conn_for(broker))
    await third.start()
    await asyncio.wait_for(third.online.wait(), 10)
    await third.stop()


async def test_two_clients_with_one_client_id_end_in_a_conflict_not_a_takeover_loop(broker, tmp_path, caplog):
    first = Publisher("north", "line-9", tmp_path / "a.db", connection=conn_for(broker))
    await first.start(check_instance=False)
    await asyncio.wait_for(first.online.wait(), 10)
    # a second instance that skips the start-up check (say, the same client id configured by hand elsewhere)
    intruder = Publisher("north", "line-9", tmp_path / "b.db", connection=conn_for(broker))
    await intruder.start(check_instance=False)
    try:
        await condition(lambda: first.stats()["conflict"] or intruder.stats()["conflict"], 30)
        loser, winner = (first, intruder) if first.stats()["conflict"] else (intruder, first)
        assert "another instance with the same id is running" in loser.stats()["conflict"]
        await asyncio.wait_for(winner.online.wait(), 15)
        drops = winner.stats().get("disconnects", 0)
        await asyncio.sleep(4)  # the loop has ended: the winner stays connected
        assert winner.online.is_set() and winner.stats().get("disconnects", 0) == drops
        assert sum("this session stops" in r.getMessage() for r in caplog.records) == 1
    finally:
        await intruder.stop()
        await first.stop()


async def test_a_station_that_dies_is_restarted_and_health_says_so_meanwhile(broker, tmp_path, sim_models):
    plant = await Plant(broker, tmp_path, sim_models).start()
    try:
        service = plant.service
        detect = service.detect

        buffer, failing = detect.readings, {"left": 1}
        real_get, real_get_nowait = buffer.get, buffer.get_nowait

        def fail_once() -> None:  # the station's input failing once, as a bug in the station would
            if failing["left"]:
                failing["left"] -= 1
                raise ZeroDivisionError("a bug in a station")

        async def get():
            fail_once()
            return await real_get()

        def get_nowait():
            fail_once()
            return real_get_nowait()

        buffer.get, buffer.get_nowait = get, get_nowait
        rows = detect.rows
        await condition(lambda: service.restarts.get("detect") == 1, 30)
        ok, reasons, _ = service.health()
        assert not ok and any("station detect stopped: ZeroDivisionError: a bug in a station" in r for r in reasons)
        await condition(lambda: detect.rows > rows + 2 and "detect" not in service.stopped, 30)
        await condition(lambda: service.health()[0], 30)
    finally:
        await plant.close()


def test_detect_stats_name_the_signals_that_never_delivered_and_each_sources_age():
    now = [1_800_000_000.5]
    station = DetectStation(LINE, clock=lambda: now[0])
    keys = tuple(LINE.signal_keys(include_mode=True))
    station.add(SourceState("opcua", now[0], True, "connected", keys))
    for _ in range(3):
        now[0] += 1
        for k in keys:
            if k != "filler.fill_weight":
                asset, _, signal = k.partition(".")
                station.add(Reading(now[0] - 0.1, asset, signal, 2.0))
    stats = station.stats()
    assert stats["never_delivered"] == ["filler.fill_weight"]
    assert stats["sources"]["opcua"]["connected"] and 0 <= stats["sources"]["opcua"]["newest_sample_age_s"] < 1.5
    now[0] += 30
    station._close_by_clock()
    stats = station.stats()
    assert stats["sources"]["opcua"]["down"] and stats["sources"]["opcua"]["stale_signals"] == len(keys)


def test_stale_marks_hold_alarms_only_while_they_are_refreshed():
    now = [1000.0]
    engine = AlarmEngine(LINE, clock=lambda: now[0])
    limit = Anomaly(now[0], "product_pump", "limit", 9.0, 7.1, signal="vibration", value=9.0, mode="running")
    for _ in range(4):  # one evaluation per row, stamped with its time: the on-delay is measured in data time
        engine.ingest(dataclasses.replace(limit, ts=now[0]))
        now[0] += 1
    alarm = engine.active()[0]
    stale = Anomaly(now[0], "product_pump", "quality", 10, 5, signal="vibration", stale=("product_pump.vibration",))
    for _ in range(30):  # the signal is silent: a quality anomaly naming it stale every interval
        engine.ingest(stale)
        engine.tick()
        now[0] += 1
    assert engine.get(alarm.alarm_id).state is AlarmState.ACTIVE_UNACK
    for _ in range(30):  # data again, normal: nothing more arrives for either condition
        engine.tick()
        now[0] += 1
    assert engine.get(alarm.alarm_id).state is AlarmState.RTN_UNACK


def test_a_report_by_exception_source_is_lost_only_when_its_connection_is():
    """A source that sends a value only when it changes: silence is not lost data, a lost connection is."""
    line = LINE.model_copy(update={"samples": LINE.samples.model_copy(update={"stale_after_intervals": None})})
    now = [1_800_000_000.5]
    station = DetectStation(line, clock=lambda: now[0])
    keys = tuple(line.signal_keys(include_mode=True))
    station.add(SourceState("opcua", now[0], True, "connected", keys))
    for k in keys:
        asset, _, signal = k.partition(".")
        station.add(Reading(now[0], asset, signal, 2.0))
    now[0] += 120
    quiet = station.close_until(int(now[0]))
    assert not [a for a in quiet if a.kind in ("source", "quality")]
    station.add(SourceState("opcua", now[0], False, "OPC UA server unreachable", keys))
    now[0] += 3
    lost = station.close_until(int(now[0]))
    assert [a.kind for a in lost if a.kind in ("source", "quality")] == ["source"] * 3
