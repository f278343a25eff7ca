"""No ghosts: at start the publish station clears retained alarm and diagnosis messages of alarms the engine
does not hold (an earlier run's), keeps those it holds, and never touches another line's topics.

Against a real broker: first the publish station alone, then the whole service restarted on a broker that still
holds a stale alarm from a run whose state is gone.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from factory_copilot.alarms import AlarmEngine, AlarmSettings
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.publish import Publisher, Topics, payloads
from factory_copilot.records import Alarm, AlarmEvent, AlarmState, Anomaly, HeldAlarms, Priority
from tests.support.mqtt import Listener, retained_now

SITE, LINE = "demo-plant", "packaging-1"
T = Topics(SITE, LINE)
OTHER = Topics(SITE, "packaging-2")  # another line on the same broker: not ours to clear


def alarm(alarm_id: str, asset: str = "product_pump") -> Alarm:
    now = time.time()
    return Alarm(alarm_id, asset, "flow-limit", AlarmState.ACTIVE_UNACK, Priority.HIGH, "flow low", now - 60, now - 60)


def alarm_body(a: Alarm, topics: Topics = T) -> dict:
    return payloads.alarm_state(a, topics.site, topics.line)


def diagnosis_body(alarm_id: str, asset: str = "product_pump") -> dict:
    return {"schema": "diagnosis/1", "site": SITE, "line": LINE, "asset": asset, "alarm_id": alarm_id,
            "summary": "cavitation", "causes": [], "steps": [], "safety": [], "source": "runbook",
            "created_at": time.time()}


async def put_retained(broker, messages: dict[str, dict]) -> None:
    side = await Listener(broker, ["unused/#"]).ready()
    for topic, body in messages.items():
        side.client.publish(topic, json.dumps(body), qos=1, retain=True).wait_for_publish(10)
    side.close()


async def test_the_publisher_clears_ghosts_keeps_what_the_engine_holds_and_what_it_raised_since(broker, tmp_path):
    held_alarm, ghost, fresh = alarm("product_pump.flow-limit"), alarm("filler.fault", "filler"), alarm("capper.fault", "capper")
    elsewhere = alarm("filler.fault", "filler")
    await put_retained(broker, {
        T.alarm("product_pump", held_alarm.alarm_id): alarm_body(held_alarm),
        T.diagnosis("product_pump", held_alarm.alarm_id): diagnosis_body(held_alarm.alarm_id),
        T.alarm("filler", ghost.alarm_id): alarm_body(ghost),
        T.diagnosis("filler", ghost.alarm_id): diagnosis_body(ghost.alarm_id, "filler"),
        # the engine holds this id, but under another asset: the retained copy under the wrong asset is a ghost
        T.alarm("capper", held_alarm.alarm_id): alarm_body(held_alarm),
        OTHER.alarm("filler", elsewhere.alarm_id): alarm_body(elsewhere, OTHER),
    })
    held: Buffer[HeldAlarms] = Buffer(10, "held")
    events: Buffer[AlarmEvent] = Buffer(10, "events")
    conn = broker_connection(broker).model_copy(update={"client_id": "plant-publisher"})  # a fixed id, as plants set
    pub = Publisher(SITE, LINE, tmp_path / "outbox.db", connection=conn, held=held, events=events)
    await pub.start()
    stop = asyncio.Event()
    task = asyncio.create_task(pub.run(stop))
    try:
        # raised by this run before the engine's word arrives: published, so never taken for a ghost
        events.offer(AlarmEvent(fresh.alarm_id, time.time(), "raised", fresh.state, fresh))
        await asyncio.wait_for(pub.online.wait(), 10)
        held.offer(HeldAlarms({held_alarm.alarm_id: "product_pump"}))
        await asyncio.wait_for(pub.reconciled.wait(), 20)
        await pub.wait_idle(10)
        kept = {m.topic for m in await retained_now(broker, f"{T.prefix}/+/+/+/+/+", T.status())}
        stats = pub.stats()
    finally:
        stop.set()
        await task
        await pub.stop()
    assert T.alarm("product_pump", held_alarm.alarm_id) in kept
    assert T.diagnosis("product_pump", held_alarm.alarm_id) in kept
    assert T.alarm("capper", fresh.alarm_id) in kept
    assert OTHER.alarm("filler", elsewhere.alarm_id) in kept, "another line's alarm was touched"
    assert T.alarm("filler", ghost.alarm_id) not in kept
    assert T.diagnosis("filler", ghost.alarm_id) not in kept
    assert T.alarm("capper", held_alarm.alarm_id) not in kept
    assert stats["ghosts_cleared"] == 3
    # reading the broker back took a connection of its own: the publisher was never thrown off
    assert stats.get("disconnects", 0) == 0 and stats["connects"] == 1 and stats["online"]


def broker_connection(broker):
    from factory_copilot.config import MqttConnection

    return MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)


@pytest.fixture
def plant_with_history(broker, tmp_path, sim_models):
    """The simulated plant, not yet started, whose alarm engine already holds one active alarm from its last run."""
    from tests.support.plant import Plant

    plant = Plant(broker, tmp_path, sim_models)
    plant.paths.state_dir.mkdir(parents=True, exist_ok=True)
    t = [time.time() - 30]
    engine = AlarmEngine(plant.line, plant.paths.alarms, AlarmSettings(on_delay_s=2.0), clock=lambda: t[0])
    raised = []
    for _ in range(4):
        raised += engine.ingest(Anomaly(ts=t[0], asset="product_pump", kind="limit", signal="flow", value=60.0,
                                        score=3.0, threshold=1.0, mode="running"))
        t[0] += 1
    engine.close()
    owned = next(e.alarm for e in raised if e.event == "raised")
    return plant, owned


async def test_a_restarted_service_clears_a_stale_retained_alarm_and_keeps_its_own(broker, plant_with_history):
    if broker.kind != "mosquitto":
        pytest.skip("the restart test runs against a real Mosquitto")
    plant, owned = plant_with_history
    topics = plant.topics
    stale = alarm("filler.tank_level-limit", "filler")  # left by a run whose state directory is gone
    await put_retained(broker, {
        topics.alarm(owned.asset, owned.alarm_id): alarm_body(owned),
        topics.alarm("filler", stale.alarm_id): alarm_body(stale),
        topics.diagnosis("filler", stale.alarm_id): diagnosis_body(stale.alarm_id, "filler"),
    })
    watch = await Listener(broker, [topics.all_alarms(), topics.all_diagnoses()]).ready()
    await plant.start()
    try:
        await asyncio.wait_for(plant.service.publisher.reconciled.wait(), 60)
        # the clearing is an empty retained message on the stale topics, seen by any subscriber
        cleared = set()
        while cleared != {topics.alarm("filler", stale.alarm_id), topics.diagnosis("filler", stale.alarm_id)}:
            m = await watch.next(timeout=30)
            if not m.payload:
                cleared.add(m.topic)
        late = {m.topic: m.body for m in await retained_now(broker, f"{topics.base}/+/alarms/+", topics.status())}
        assert topics.alarm("filler", stale.alarm_id) not in late
        assert late[topics.alarm(owned.asset, owned.alarm_id)]["alarm_id"] == owned.alarm_id
        assert owned.alarm_id in {a.alarm_id for a in plant.service.engine.active()}
        assert plant.service.stats()["publish"]["ghosts_cleared"] == 2
    finally:
        watch.close()
        await plant.close()
