"""End to end over a real broker and a real OPC UA server: the simulated line, the service, a subscriber.

An injected fault becomes a retained alarm message, then a diagnosis message, both
schema-valid; acknowledge over MQTT changes the state; a broker stopped and restarted
during a fault loses no alert; a restart of the service keeps the active alarms.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from factory_copilot.publish import payloads
from factory_copilot.records import AlarmState, OperatorCommand
from tests.support.mqtt import Listener, persistent_broker, retained_now
from tests.support.plant import Plant, condition

ALARM_WAIT_S = 120  # fault onset to alarm: the fault grows over FAULT_RAMP_S, detection follows


@pytest.fixture
async def plant(broker, tmp_path, sim_models):
    p = await Plant(broker, tmp_path, sim_models).start()
    yield p
    await p.close()


async def test_fault_to_retained_alarm_then_diagnosis_ack_over_mqtt_and_restart(broker, plant):
    T = plant.topics
    listen = await Listener(broker, [f"{T.base}/#"]).ready()
    plant.inject()

    # the pump's fault is the root of the situation (its limit alarms fold under it), and once its priority is
    # the pump's highest it cannot rise again (a rise after an acknowledgement would ask for another one)
    alarm_msg = await listen.until(lambda m: m.payload and m.topic == T.alarm("product_pump", "product_pump.fault")
                                   and m.body["priority"] == "high", timeout=ALARM_WAIT_S)
    alarm = alarm_msg.body
    alarm_id = alarm["alarm_id"]
    assert payloads.problems(alarm) == [] and alarm["state"] == "active_unacknowledged"
    assert alarm["asset"] == "product_pump"

    # the diagnosis follows the raise, so it may have gone out before the priority rose
    diag_msg = await listen.since_start(lambda m: m.topic == T.diagnosis("product_pump", alarm_id) and m.payload)
    diagnosis = diag_msg.body
    assert payloads.problems(diagnosis) == []
    assert diagnosis["causes"] and diagnosis["steps"], "a diagnosis names causes and steps"
    cited = {e["ref"] for c in diagnosis["causes"] for e in c["evidence"] if e["kind"] == "signal"}
    assert cited <= set(plant.line.signal_keys()), "every cited signal exists"

    # a subscriber that connects late still sees the active alarm: it is retained
    late = {m.topic: m.body for m in await retained_now(broker, f"{T.base}/+/alarms/+", T.status())}
    assert late[T.alarm("product_pump", alarm_id)]["state"] == "active_unacknowledged"

    request_id = uuid.uuid4().hex
    replies = await Listener(broker, [T.command_reply(request_id)]).ready()
    cmd = {"schema": "command/1", "request_id": request_id, "command": "acknowledge", "alarm_id": alarm_id,
           "actor": "ann", "comment": "checking the pump"}
    assert payloads.problems(cmd) == []
    listen.client.publish(T.commands("ann"), json.dumps(cmd), qos=1)
    reply = (await replies.next()).body
    assert reply["ok"] is True and payloads.problems(reply) == []
    acked = await listen.until(lambda m: m.topic == T.alarm("product_pump", alarm_id) and m.payload
                               and m.body["state"] == "active_acknowledged")
    assert acked.body["acked_by"] == "ann"
    assert any(e.event == "acknowledged" and e.actor == "ann" for e in plant.service.engine.audit(alarm_id))

    # the service restarts (same state directory): the same alarm, still acknowledged, is served again
    await plant.stop_service_now()
    service = await plant.start_service()
    resumed = {a.alarm_id: a for a in service.engine.active()}
    assert resumed[alarm_id].state is AlarmState.ACTIVE_ACK and resumed[alarm_id].acked_by == "ann"
    late = {m.topic: m.body for m in await retained_now(broker, f"{T.base}/+/alarms/+", T.status())}
    assert late[T.alarm("product_pump", alarm_id)]["state"] == "active_acknowledged"
    listen.close()
    replies.close()


@pytest.fixture
def persistent_mosquitto(broker, tmp_path):
    """Mosquitto with persistence, so a subscriber's QoS 1 session survives the broker restart (before the plant starts)."""
    persistent_broker(broker, tmp_path)
    return broker


async def test_broker_restart_during_a_fault_loses_no_alert(persistent_mosquitto, plant):
    broker = persistent_mosquitto
    await asyncio.wait_for(plant.service.publisher.online.wait(), 30)
    T = plant.topics
    scada = await Listener(broker, [T.events()], client_id="scada-events", persistent=True).ready()
    subscribed_at = time.time()
    plant.inject()
    received: list[tuple] = []
    while not any(event == "raised" for _, event, _ in received):
        m = await scada.next(timeout=ALARM_WAIT_S)
        received.append((m.body["alarm_id"], m.body["event"], m.body["ts"]))
    alarm_id = next(a for a, event, _ in received if event == "raised")

    await scada.synced()  # its PUBACKs reached the broker: a persistent broker must not send them again
    broker.stop()
    await asyncio.wait_for(plant.service.publisher.offline.wait(), 30)
    # while the broker is away the alarm is acknowledged from the dashboard: alerts pile up in the outbox
    result = await plant.service.alarms.execute(OperatorCommand("acknowledge", alarm_id, "operator-3"))
    assert result.ok, result.message
    await condition(lambda: plant.service.publisher.outbox.pending() >= 2)  # acknowledged state + event wait there
    broker.start()
    await plant.service.publisher.wait_idle(60)

    published = [(e.alarm_id, e.event, e.ts) for e in plant.service.engine.audit() if e.ts >= subscribed_at]
    assert (alarm_id, "acknowledged") in {(a, event) for a, event, _ in published}
    while len(received) < len(published):
        m = await scada.next(timeout=30)
        received.append((m.body["alarm_id"], m.body["event"], m.body["ts"]))
    assert [(a, e, round(t, 6)) for a, e, t in received] == [(a, e, round(t, 6)) for a, e, t in published], \
        "every alert arrives once, in order"
    # and nothing twice (a later event of the growing fault may come: it must be new, not a repeat)
    try:
        extra = await scada.next(timeout=1.0)
    except asyncio.TimeoutError:
        extra = None
    if extra is not None:
        late = (extra.body["alarm_id"], extra.body["event"], round(extra.body["ts"], 6))
        assert late not in [(a, e, round(t, 6)) for a, e, t in received], f"{late} arrived twice"
        assert late in [(e.alarm_id, e.event, round(e.ts, 6)) for e in plant.service.engine.audit()]
    scada.close()
