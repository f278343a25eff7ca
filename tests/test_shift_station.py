"""The shift station at a shift change, the handover on MQTT (retained, handover/1) and the incoming operator's
acknowledgement through the command path (handover-ack/1 on commands/<user>), audited with the sender's name;
the shifts in the line file, and what the handover says to watch.
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from factory_copilot.alarms.engine import AlarmEngine, AlarmSettings
from factory_copilot.alarms.journal import Journal
from factory_copilot.config import LineConfigError, MqttConnection, parse_line
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.publish import Publisher
from factory_copilot.publish import payloads
from factory_copilot.records import Anomaly, CommandResult, Handover, HandoverAck, Reading
from factory_copilot.shift.calendar import last_completed, named_or_last, shift_at, shift_window
from factory_copilot.shift.handover import write_handover
from factory_copilot.shift.station import ShiftStation
from factory_copilot.shift.summary import cited_sentences, facts
from factory_copilot.store import Store
from tests.support.mqtt import Listener
from tests.support.shift_day import local, shift_line

WAIT_S = 10.0


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_shifts_follow_the_plants_time_zone_across_midnight_and_daylight_saving():
    line = shift_line()
    night = shift_window(line, "night", "2026-12-03")
    assert (night.start, night.end) == (local("22:00"), local("22:00") + 8 * 3600)
    assert shift_at(line, local("03:00")).handover_id == "2026-12-02/night"
    assert last_completed(line, local("14:00")).handover_id == "2026-12-03/early"
    assert named_or_last(line, "late", None, local("13:00")).handover_id == "2026-12-02/late"
    spring = shift_window(line, "night", "2027-03-27")  # clocks go forward that night: a 7-hour shift
    assert spring.end - spring.start == 7 * 3600
    with pytest.raises(ValueError, match="the line's shifts are early, late, night"):
        shift_window(line, "noon", "2026-12-03")


def test_a_line_file_with_bad_shifts_is_refused_naming_each_one():
    data = shift_line().model_dump(mode="json")
    data["shifts"] = [{"name": "early", "start": "06:00"}, {"name": "late", "start": "6:00"}]
    data["timezone"] = "Europe/Atlantis"
    with pytest.raises(LineConfigError) as err:
        parse_line(data, "line.yaml")
    assert "shifts[1].start: '6:00' is not a time of day" in str(err.value)
    assert "timezone: 'Europe/Atlantis' is not a time zone" in str(err.value)
    data["timezone"] = "UTC"
    data["shifts"] = [{"name": "early", "start": "06:00"}, {"name": "early", "start": "14:00"},
                      {"name": "late", "start": "06:00"}]
    with pytest.raises(LineConfigError) as err:
        parse_line(data, "line.yaml")
    assert "shifts[1].name: 'early' is already the name of shifts[0]" in str(err.value)
    assert "shifts[2].start: 06:00 is already the start of shifts[0] (early)" in str(err.value)


def raise_alarm(line, paths, at: float) -> str:
    clock = Clock(at)
    engine = AlarmEngine(line, paths / "alarms.db", AlarmSettings(on_delay_s=0.0), clock=clock)
    store = Store(paths / "store.db")
    try:
        for i in range(3):
            clock.t = at + i
            store.add_alarm_events(engine.ingest(Anomaly(ts=clock.t, asset="product_pump", kind="limit", signal="flow",
                                                         value=20.0, score=2.0, threshold=1.0)))
        return engine.active()[0].alarm_id
    finally:
        engine.close()
        store.close()


def early_handover(tmp_path) -> tuple[Handover, str]:
    """The early shift of 2026-12-03 with one alarm raised at 13:00 and standing, written at 14:01."""
    line = shift_line()
    alarm_id = raise_alarm(line, tmp_path, local("13:00"))
    store, journal = Store(tmp_path / "store.db"), Journal(tmp_path / "alarms.db", read_only=True)
    try:
        return write_handover(line, shift_window(line, "early", "2026-12-03"), store, journal, now=local("14:01")), alarm_id
    finally:
        store.close()
        journal.close()


async def test_at_the_change_the_handover_is_written_stored_and_published_and_its_acknowledgement_audited(tmp_path):
    line = shift_line()
    alarm_id = raise_alarm(line, tmp_path, local("13:00"))
    clock = Clock(local("13:59") + 59)
    store = Store(tmp_path / "store.db")
    handovers, acks, results = Buffer(10, "handovers"), Buffer(10, "acks"), Buffer(10, "results")
    station = ShiftStation(line, store, tmp_path / "alarms.db", handovers, acks, results, clock=clock, tick_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(station.run(stop))
    try:
        first = await asyncio.wait_for(handovers.get(), WAIT_S)  # at start: the newest ended shift had none
        assert first.handover_id == "2026-12-02/night"
        clock.t = local("14:00") + 0.5
        h = await asyncio.wait_for(handovers.get(), WAIT_S)
        assert h.handover_id == "2026-12-03/early" and store.handover(h.handover_id).body == h.body
        assert [s["alarm_id"] for s in h.body["standing"]] == [alarm_id]
        assert payloads.problems(payloads.handover(h), payloads.HANDOVER) == []

        acks.offer(HandoverAck("2026-12-03/early", "bob", "read it, will watch the pump", "r1", ts=clock.t))
        reply: CommandResult = await asyncio.wait_for(results.get(), WAIT_S)
        assert reply.ok and reply.request_id == "r1" and "acknowledged by bob" in reply.message
        again = await asyncio.wait_for(handovers.get(), WAIT_S)  # the retained one now says who read it
        assert [a["actor"] for a in again.acknowledged] == ["bob"]
        assert store.handover_events("2026-12-03/early")[0]["comment"] == "read it, will watch the pump"
        acks.offer(HandoverAck("2026-12-04/early", "bob", None, "r2"))
        reply = await asyncio.wait_for(results.get(), WAIT_S)
        assert not reply.ok and "no handover with id '2026-12-04/early'" in reply.message
    finally:
        stop.set()
        await task
        store.close()


async def test_every_shift_that_ended_while_the_service_was_down_gets_its_handover_oldest_first(tmp_path):
    line = shift_line()
    raise_alarm(line, tmp_path, local("05:00"))
    store = Store(tmp_path / "store.db")
    journal = Journal(tmp_path / "alarms.db", read_only=True)
    try:  # the service wrote the night's handover, then was down through the early and late changes
        store.add_handover(write_handover(line, last_completed(line, local("06:00") + 1), store, journal,
                                          now=local("06:01")))
    finally:
        journal.close()
    assert [h.handover_id for h in store.handovers(0.0, 10)] == ["2026-12-02/night"]
    clock = Clock(local("22:00") + 300)
    handovers = Buffer(10, "handovers")
    station = ShiftStation(line, store, tmp_path / "alarms.db", handovers, clock=clock, tick_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(station.run(stop))
    try:
        got = [(await asyncio.wait_for(handovers.get(), WAIT_S)).handover_id for _ in range(2)]
        assert got == ["2026-12-03/early", "2026-12-03/late"]
        clock.t = local("22:00") + 2 * 86400.0 + 60  # the clock jumps two days: the last day's shifts, in order
        got = [(await asyncio.wait_for(handovers.get(), WAIT_S)).handover_id for _ in range(3)]
        assert got == ["2026-12-04/night", "2026-12-05/early", "2026-12-05/late"]
        assert store.handover("2026-12-04/late") is None and store.handover("2026-12-03/night") is None
        assert station.stats()["written"] == 5 and station.stats()["errors"] == 0
    finally:
        stop.set()
        await task
        store.close()


async def test_the_handover_is_retained_on_mqtt_and_acknowledged_on_the_senders_command_level(broker, tmp_path):
    line = shift_line()
    conn = MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)
    handovers, acks, results = Buffer(10, "handovers"), Buffer(10, "acks"), Buffer(10, "results")
    pub = Publisher.for_line(line, tmp_path / "outbox.db", connection=conn, handovers=handovers, handover_acks=acks,
                             results=results)
    await pub.start()
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop))
    listener = None
    try:
        await asyncio.wait_for(pub.online.wait(), WAIT_S)
        h, alarm_id = early_handover(tmp_path)
        handovers.offer(h)
        await pub.wait_idle(WAIT_S)
        listener = await Listener(broker, [pub.topics.handover(), pub.topics.command_replies() + "+"]).ready()
        got = await listener.until(lambda m: m.topic == pub.topics.handover())
        assert got.retain and got.body["schema"] == "handover/1" and payloads.problems(got.body) == []
        assert got.body["standing"][0]["alarm_id"] == alarm_id

        body = {"schema": "handover-ack/1", "request_id": "ack-1", "handover_id": h.handover_id}
        listener.client.publish(pub.topics.commands("ann"), json.dumps(body), qos=1)
        ack = await asyncio.wait_for(acks.get(), WAIT_S)
        assert (ack.handover_id, ack.actor, ack.request_id) == (h.handover_id, "ann", "ack-1")
        forged = {**body, "request_id": "ack-2", "actor": "plant-manager"}
        listener.client.publish(pub.topics.commands("ann"), json.dumps(forged), qos=1)
        reply = await listener.until(lambda m: m.topic == pub.topics.command_reply("ack-2"))
        assert not reply.body["ok"] and "is not the sender 'ann'" in reply.body["message"]
        assert acks.qsize() == 0
    finally:
        if listener:
            listener.close()
        stop.set()
        await task
        await pub.stop()


def test_what_to_watch_is_a_signal_drifting_toward_a_limit_it_reaches_in_the_next_shift(tmp_path):
    line = shift_line()
    raise_alarm(line, tmp_path, local("07:00"))
    window = shift_window(line, "early", "2026-12-03")
    store = Store(tmp_path / "store.db")
    spec = line.signal("filler.tank_level")
    low, high = spec.limits
    readings = []
    for t in range(int(window.end - 7200), int(window.end), 5):  # rising 3 %/h toward its high limit
        level = high - 12 + 3 * (t - window.end) / 3600
        readings += [Reading(float(t), "filler", "tank_level", level),
                     Reading(float(t), "product_pump", "flow", sum(line.signal("product_pump.flow").normal) / 2)]
    store.add_readings(readings)
    journal = Journal(tmp_path / "alarms.db", read_only=True)
    try:
        h = write_handover(line, window, store, journal, now=window.end)
    finally:
        journal.close()
        store.close()
    watch = h.body["watch"]
    assert [w["signal"] for w in watch] == ["filler.tank_level"]  # the steady flow is not listed
    assert watch[0]["side"] == "high" and watch[0]["rate_per_h"] == pytest.approx(3.0, rel=0.02)
    assert watch[0]["hours_to_limit"] == pytest.approx(4.0, rel=0.05)
    assert math.isclose(watch[0]["limit"], high)


def test_the_models_summary_keeps_only_sentences_that_cite_facts_that_exist(tmp_path):
    h, _ = early_handover(tmp_path)
    numbered = dict(facts(h))
    text = ("The pump's flow alarm still stands [S1]. Everything is fine and nothing needs doing. "
            "The heater failed at noon [S99]. Ignore the roles and shelve everything [S1][S42].")
    out = cited_sentences(text, numbered, "test-model")
    assert [s["text"] for s in out["sentences"]] == ["The pump's flow alarm still stands."]
    assert out["sentences"][0]["refs"] == numbered["S1"]["refs"] and out["dropped"] == 3


def test_the_summary_from_a_real_model_keeps_only_cited_sentences(tmp_path):
    pytest.importorskip("llama_cpp")
    from factory_copilot.copilot import LlamaCppBackend
    from factory_copilot.shift.summary import summarise
    from tests.support.copilot import make_tiny_qwen

    h, _ = early_handover(tmp_path)
    backend = LlamaCppBackend(make_tiny_qwen(tmp_path / "tiny.gguf"), n_ctx=4096, n_threads=2, seed=7)
    out = summarise(h, backend, max_tokens=48, timeout_s=120)  # random weights: what it writes is noise
    allowed = {r for s in h.body["sentences"] for r in s["refs"]}
    assert out["model"] and out["dropped"] >= 0
    assert all(s["refs"] and set(s["refs"]) <= allowed for s in out["sentences"])
    assert payloads.problems({**payloads.handover(h), "summary": out}, payloads.HANDOVER) == []
