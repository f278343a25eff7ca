"""The store: trends downsampled right, alarms keep their newest state, retention, concurrent writers,
incident memory, false alarms, line health, and the station keeping up with its buffers."""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import threading

import pytest

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.records import (
    Alarm,
    AlarmEvent,
    AlarmState,
    Anomaly,
    Cause,
    Diagnosis,
    Feedback,
    Priority,
    Quality,
    Reading,
    Step,
    Turn,
)
from factory_copilot.store import Retention, Store, StoreStation
from tests.support.postgres import open_backend
from dashboards.overview import line_health

T0 = 1_700_000_000.0  # a bucket boundary for 5 s buckets


def anomaly(ts, asset="product_pump", kind="multivariate", fault="pump_cavitation", signal=None, score=3.0):
    return Anomaly(ts=ts, asset=asset, kind=kind, score=score, threshold=1.0, signal=signal, fault_type=fault,
                   contributions={"product_pump.discharge_pressure": 0.6, "product_pump.flow": 0.3})


def alarm_event(alarm_id, ts, event, state, asset="product_pump", priority=Priority.HIGH, raised=None, an=None):
    raised = ts if raised is None else raised
    an = an or anomaly(raised, asset=asset)
    alarm = Alarm(alarm_id, asset, an.condition, state, priority, f"{asset} {an.condition}", raised, ts, anomaly=an)
    return AlarmEvent(alarm_id, ts, event, state, alarm, actor="op1" if event == "acknowledged" else None)


@pytest.fixture
def store(make_store):
    return make_store()


def test_trend_buckets_hold_mean_min_max_and_skip_bad_values(store):
    rs = [Reading(T0 + i, "filler", "bowl_level", float(v)) for i, v in enumerate([1, 5, 3, 2, 4])]
    rs.append(Reading(T0 + 2.5, "filler", "bowl_level", 999.0, Quality.BAD))
    # two batches into the same bucket must merge, not overwrite
    store.add_readings(rs[:2])
    store.add_readings(rs[2:])
    store.add_readings([Reading(T0 + 6, "filler", "bowl_level", 10.0)])
    frame = store.trend("filler", T0, T0 + 10, resolution="bucket")
    assert list(frame["ts"]) == [T0, T0 + 5]
    first = frame.iloc[0]
    assert (first["mean"], first["min"], first["max"], first["n"]) == (3.0, 1.0, 5.0, 5)
    assert frame.iloc[1]["mean"] == 10.0
    raw = store.trend("filler", T0, T0 + 10, resolution="raw")
    assert len(raw) == 7
    assert math.isnan(raw[raw["ts"] == T0 + 2.5]["mean"].iloc[0])  # bad sample marked, not plotted


def test_trend_auto_uses_raw_for_short_recent_windows(store):
    store.add_readings([Reading(T0 + i * 0.5, "filler", "bowl_level", float(i)) for i in range(40)])
    assert len(store.trend("filler", T0, T0 + 20)) == 40  # raw
    store.max_raw_points = 39
    assert len(store.trend("filler", T0, T0 + 20)) == 4  # too many samples to draw: buckets
    store.max_raw_points = 20_000
    store.retention.readings_raw = 5.0
    assert len(store.trend("filler", T0, T0 + 20)) == 4  # window longer than raw retention: buckets


def test_alarm_keeps_newest_state_and_full_history(store):
    raised = alarm_event("A1", T0, "raised", AlarmState.ACTIVE_UNACK)
    acked = alarm_event("A1", T0 + 5, "acknowledged", AlarmState.ACTIVE_ACK, raised=T0)
    store.add_alarm_events([raised, acked])
    store.add_alarm_event(raised)  # a late duplicate must not roll the state back
    assert store.alarm("A1").state is AlarmState.ACTIVE_ACK
    history = store.alarm_history("A1")
    assert [e.event for e in history] == ["acknowledged", "raised", "raised"]  # newest first
    assert history[0].alarm.anomaly.fault_type == "pump_cavitation"
    store.add_alarm_event(alarm_event("A1", T0 + 9, "returned", AlarmState.NORMAL, raised=T0))
    assert store.active_alarms() == []


def test_active_alarms_sorted_by_priority(store):
    store.add_alarm_events([
        alarm_event("low", T0, "raised", AlarmState.ACTIVE_UNACK, asset="air_compressor", priority=Priority.LOW),
        alarm_event("crit", T0, "raised", AlarmState.ACTIVE_UNACK, asset="heat_tunnel", priority=Priority.CRITICAL),
        alarm_event("rtn", T0, "returned", AlarmState.RTN_UNACK, priority=Priority.MEDIUM),
    ])
    assert [a.alarm_id for a in store.active_alarms()] == ["crit", "rtn", "low"]
    assert [a.alarm_id for a in store.active_alarms(asset="heat_tunnel")] == ["crit"]


def test_diagnosis_conversation_feedback_roundtrip(store):
    store.add_alarm_event(alarm_event("A1", T0, "raised", AlarmState.ACTIVE_UNACK))
    d1 = Diagnosis("A1", "old", [], [], [], [], "runbook", created_at=T0)
    d2 = Diagnosis("A1", "Cavitation", [Cause("pump_cavitation", "Cavitation", 0.8)],
                   [Step("Check suction strainer", "check", "RB-PUMP-002")], ["Lock out"], [], "model", created_at=T0 + 1)
    store.add_diagnoses([d2, d1])
    got = store.diagnosis("A1")
    assert got.summary == "Cavitation" and got.steps[0].runbook_id == "RB-PUMP-002"
    store.add_turns([Turn("A1", "operator", "why?", T0 + 2), Turn("A1", "copilot", "because", T0 + 3, origin="model")])
    assert [t.role for t in store.conversation("A1")] == ["operator", "copilot"]
    store.add_feedback(Feedback("A1", "confirmed", fix="cleaned strainer", actor="op1", ts=T0 + 10))
    [fb] = store.feedback("A1")
    assert fb.actual_cause == "pump_cavitation" and fb.fix == "cleaned strainer"


def test_similar_incidents_are_past_verdicts_on_the_same_asset(store):
    store.add_alarm_event(alarm_event("same", T0, "raised", AlarmState.ACTIVE_UNACK))
    store.add_alarm_event(alarm_event(
        "other_fault", T0, "raised", AlarmState.ACTIVE_UNACK, an=anomaly(T0, fault="bearing_wear")))
    store.add_alarm_event(alarm_event(
        "other_asset", T0, "raised", AlarmState.ACTIVE_UNACK, asset="filler",
        an=anomaly(T0, asset="filler", fault="pump_cavitation")))
    store.add_alarm_event(alarm_event("no_feedback", T0, "raised", AlarmState.ACTIVE_UNACK))
    store.add_diagnosis(Diagnosis("same", "air in the suction line", [], [], [], [], "model", created_at=T0 + 1))
    store.add_feedback(Feedback("same", "other_cause", actual_cause="air in suction line", fix="bled line", ts=T0 + 1))
    store.add_feedback(Feedback("other_fault", "false_alarm", ts=T0 + 3))
    store.add_feedback(Feedback("other_asset", "confirmed", ts=T0 + 2))
    found = store.similar("product_pump", "pump_cavitation", ["product_pump.discharge_pressure", "product_pump.flow"])
    assert [i.alarm_id for i in found] == ["same", "other_fault"]  # same fault first; another asset says nothing
    assert found[0].actual_cause == "air in suction line" and found[0].fix == "bled line"
    assert found[0].diagnosis_summary == "air in the suction line"
    assert found[0].similarity > found[1].similarity
    assert found[0].signals == ["product_pump.discharge_pressure", "product_pump.flow"]
    assert store.similar("heat_tunnel", "heater_degradation", ["heat_tunnel.zone1_temperature"]) == []


def test_false_alarms_give_the_anomaly_window(store):
    other_condition = anomaly(T0 + 2, kind="limit", signal="flow", fault=None)
    store.add_anomalies([anomaly(T0 - 100), anomaly(T0 + 1), anomaly(T0 + 3), other_condition])
    store.add_alarm_events([
        alarm_event("A1", T0 + 1, "raised", AlarmState.ACTIVE_UNACK),
        alarm_event("A1", T0 + 4, "returned", AlarmState.RTN_UNACK, raised=T0 + 1),
    ])
    store.add_feedback(Feedback("A1", "false_alarm", actor="op2", ts=T0 + 60))
    [fa] = store.false_alarms(since=T0)
    assert (fa.asset, fa.start, fa.end, fa.actor) == ("product_pump", T0 + 1, T0 + 4, "op2")
    assert [a.ts for a in fa.anomalies] == [T0 + 1, T0 + 3]
    assert store.false_alarms(since=T0 + 61) == []
    # the operator changes their mind: the latest verdict counts, so it is no longer a false alarm
    store.add_feedback(Feedback("A1", "confirmed", actor="op3", ts=T0 + 90))
    assert store.false_alarms(since=T0) == []
    [real] = store.marked_alarms(("confirmed", "other_cause"))
    assert (real.alarm_id, real.verdict, real.actor, len(real.anomalies)) == ("A1", "confirmed", "op3", 2)


def test_retention_per_table(make_store):
    store = make_store(retention=Retention(readings_raw=60, trend=3600, anomalies=None))
    store.add_readings([Reading(T0 - 120, "filler", "bowl_level", 1.0), Reading(T0, "filler", "bowl_level", 2.0)])
    store.add_anomalies([anomaly(T0 - 10 * 86400)])
    store.add_alarm_events([alarm_event("old", T0 - 400 * 86400, "returned", AlarmState.NORMAL),
                            alarm_event("open", T0 - 400 * 86400, "raised", AlarmState.ACTIVE_UNACK)])
    deleted = store.enforce_retention(now=T0)
    counts = store.counts()
    assert deleted["readings_raw"] == 1 and counts["readings_raw"] == 1
    assert counts["trend"] == 2  # both buckets are within an hour
    assert counts["anomalies"] == 1  # kept for ever
    assert [a.alarm_id for a in store.active_alarms()] == ["open"]  # a standing alarm is never aged out
    assert store.alarm("old") is None
    store.close()


def test_line_health_worst_first(store):
    line = load_line(SIMULATED_LINE)
    now = T0 + 100
    store.add_readings([Reading(now - 1, a.id, a.signals[0].name, 1.0) for a in line.assets if a.id != "filler"])
    store.add_readings([Reading(now - 200, "filler", "bowl_level", 1.0)])
    store.add_alarm_event(alarm_event("A1", now - 5, "raised", AlarmState.ACTIVE_UNACK, priority=Priority.HIGH))
    store.add_alarm_event(alarm_event("A2", now - 5, "raised", AlarmState.ACTIVE_ACK, asset="heat_tunnel",
                                      priority=Priority.CRITICAL, an=anomaly(now - 5, asset="heat_tunnel")))
    store.add_anomalies([anomaly(now - 3, asset="air_compressor", kind="limit", signal="pressure", fault=None)])
    health = line_health(store, line, now=now)
    assert [h.asset for h in health[:4]] == ["heat_tunnel", "product_pump", "air_compressor", "filler"]
    assert [h.status for h in health[:4]] == ["alarm", "alarm", "warning", "stale"]
    assert health[1].unacknowledged == 1 and health[0].worst_priority is Priority.CRITICAL
    assert {h.status for h in health[4:]} == {"ok"}
    assert len(health) == len(line.assets)


def _write_from_process(spec, asset, n):
    s = open_backend(spec)
    for i in range(0, n, 100):
        s.add_readings([Reading(T0 + i + j, asset, "x", float(j)) for j in range(100)])
        s.add_anomalies([anomaly(T0 + i, asset=asset)])
    s.close()


def test_two_processes_and_two_threads_write_concurrently(store_backend):
    path = store_backend
    open_backend(path).close()  # migrate once up front
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_from_process, args=(path, f"p{k}", 2000)) for k in range(2)]
    for p in procs:
        p.start()
    threads = [threading.Thread(target=_write_from_process, args=(path, f"t{k}", 2000)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = open_backend(path)
    assert s.counts()["readings_raw"] == 8000 and s.counts()["anomalies"] == 80
    s.close()


async def test_station_drains_buffers_in_batches(store):
    readings, events, feedback = Buffer(100_000, "r"), Buffer(100, "e"), Buffer(100, "f")
    station = StoreStation(store, readings=readings, events=events, feedback=feedback)
    task = asyncio.create_task(station.run())
    for i in range(30_000):
        readings.offer(Reading(T0 + i / 3000, "filler", "bowl_level", float(i % 7)))
    events.offer(alarm_event("A1", T0, "raised", AlarmState.ACTIVE_UNACK))
    async with asyncio.timeout(30):
        await station.wait_written("readings", 30_000)
        await station.wait_written("events", 1)
    feedback.offer(Feedback("A1", "false_alarm", ts=T0 + 1))
    async with asyncio.timeout(10):
        await station.wait_written("feedback", 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert station.batches < 30_000 / 10  # batched, not one transaction per reading
    assert store.counts()["readings_raw"] == 30_000
    assert store.false_alarms()[0].alarm_id == "A1"


async def test_station_survives_a_bad_batch(store):
    turns = Buffer(10, "turns")
    station = StoreStation(store, turns=turns)
    turns.offer("not a turn")  # type: ignore[arg-type]
    await station.drain()
    turns.offer(Turn("A1", "operator", "hello", T0))
    await station.drain()
    assert station.failed["turns"] == 1 and [t.text for t in store.conversation("A1")] == ["hello"]


def test_origin_keeps_the_source_columns_of_existing_databases(store):
    """A record's ``origin`` (model or runbook) is stored under the name "source": rows an earlier version wrote
    (columns and a diagnosis body's key) read back, and new rows are written the same way."""
    old = {**Diagnosis("A1", "Cavitation", [], [], [], [], "model", created_at=T0).to_dict(), "source": "model"}
    del old["origin"]
    store._write_many("INSERT INTO diagnoses(alarm_id, created_at, source, body) VALUES(?,?,?,?)",
                      [("A1", T0, "model", json.dumps(old))])
    assert store.diagnosis("A1").origin == "model"
    store.add_diagnosis(Diagnosis("A1", "Runbook", [], [], [], [], "runbook", created_at=T0 + 1))
    rows = store._rows("SELECT source, body FROM diagnoses ORDER BY created_at")
    assert [(r[0], json.loads(r[1]).get("source"), "origin" in json.loads(r[1])) for r in rows] == [
        ("model", "model", False), ("runbook", "runbook", False)]
    assert [d.origin for d in store.diagnoses_since(T0)] == ["model", "runbook"]
    store.add_turn(Turn("A1", "copilot", "check the strainer", T0, origin="model"))
    assert [tuple(r) for r in store._rows("SELECT source FROM conversations")] == [("model",)]
    assert [t.origin for t in store.conversation("A1")] == ["model"]


def test_a_turn_with_a_request_id_is_stored_once(store):
    answer = Turn("A1", "copilot", "check the strainer", T0, request_id="r1", origin="model")
    store.add_turns([Turn("A1", "operator", "what now?", T0, request_id="r1"), answer])
    store.add_turn(answer)  # the dashboard and the copilot may both record the same answer
    assert [t.role for t in store.conversation("A1")] == ["operator", "copilot"]


def test_newer_schema_is_refused(tmp_path):
    from factory_copilot.plumbing.sqlite import open_db

    path = tmp_path / "s.db"
    Store(path).close()
    conn = open_db(path, [], "other")
    conn.execute("UPDATE schema_version SET version=99 WHERE component='store'")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this software"):
        Store(path)


def test_store_command_prunes_and_lists_false_alarms(tmp_path, capsys):
    import json as _json
    import time as _time

    from factory_copilot.cli import main

    path = tmp_path / "cli.db"
    now = _time.time()
    with Store(path) as s:
        s.add_readings([Reading(now - 3600, "filler", "bowl_level", 1.0), Reading(now, "filler", "bowl_level", 2.0)])
        s.add_alarm_event(alarm_event("A1", now - 60, "raised", AlarmState.ACTIVE_UNACK))
        s.add_feedback(Feedback("A1", "false_alarm", actor="op2", ts=now - 30))
    assert main(["store", "--db", str(path), "prune"]) == 0
    assert _json.loads(capsys.readouterr().out)["readings_raw"] == 1  # older than the 15 min raw retention
    assert main(["store", "--db", str(path), "false-alarms"]) == 0
    [listed] = _json.loads(capsys.readouterr().out)
    assert (listed["alarm_id"], listed["marked_by"]) == ("A1", "op2")
    assert main(["store", "--db", str(tmp_path / "missing.db"), "stats"]) == 2
    assert "no such store file" in capsys.readouterr().err


async def test_a_batch_being_written_when_the_station_stops_is_counted_once_and_not_written_again(tmp_path):
    store = Store(tmp_path / "store.db")
    writing, gate = threading.Event(), threading.Event()
    add_readings = store.add_readings

    def slow_disk(batch):
        writing.set()
        assert gate.wait(10)
        return add_readings(batch)

    store.add_readings = slow_disk
    readings = Buffer(100, "readings")
    station = StoreStation(store, readings=readings)
    stop = asyncio.Event()
    task = asyncio.create_task(station.run(stop))
    for i in range(5):
        readings.offer(Reading(T0 + i, "filler", "bowl_level", float(i)))
    assert await asyncio.to_thread(writing.wait, 10)
    stop.set()  # the service stopping: its lanes are cancelled while the thread is in the transaction
    asyncio.get_running_loop().call_later(0.1, gate.set)  # the disk answers after the lane was told to stop
    await asyncio.wait_for(task, 10)
    await station.drain()
    assert store.counts()["readings_raw"] == station.written["readings"] == 5
    store.close()


async def test_drain_beside_the_running_lanes_writes_each_batch_once(store):
    """A replay's summary drains the store while its lanes still run: before, both wrote the lane's oldest held batch
    (stored twice) and the second to settle it found nothing to settle (IndexError)."""
    readings = Buffer(100_000, "r")
    station = StoreStation(store, readings=readings)
    writing, release = threading.Event(), threading.Event()
    real = store.add_readings

    def slow(batch):  # the lane's write is under way in its thread when drain() comes
        writing.set()
        release.wait(10)
        return real(batch)

    station._lanes = [(name, buf, slow if name == "readings" else w) for name, buf, w in station._lanes]
    task = asyncio.create_task(station.run())
    try:
        for i in range(500):
            readings.offer(Reading(T0 + i, "filler", "bowl_level", 1.0))
        assert await asyncio.to_thread(writing.wait, 10)
        drained = asyncio.create_task(station.drain())
        for _ in range(20):  # a few turns of the loop: drain() reaches its write of the lane's oldest batch
            await asyncio.sleep(0)
        release.set()
        async with asyncio.timeout(20):
            await drained
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert store.counts()["readings_raw"] == 500 and station.written["readings"] == 500
