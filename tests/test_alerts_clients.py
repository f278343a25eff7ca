"""The project's own alarm clients, as docs/mqtt.md says a consumer should behave: `alerts tail` and the Node-RED flow.

Neither rings a consequence folded under its root (``parent_id``, ``suppressed: true``): tail shows one line per
situation as the dashboard does (the folded ones counted, ``--folded`` shows them indented under the root), in time
order whatever order the broker hands retained messages over in; the shipped flow routes folded alarms away from its
ringing nodes.
"""

from __future__ import annotations

import io
import json
import re
import threading

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from factory_copilot.config import SEEDS_DIR, MqttConnection
from factory_copilot.publish import payloads
from factory_copilot.publish.tail import Tail, follow
from factory_copilot.publish.topics import Topics
from factory_copilot.records import Alarm, AlarmState, Diagnosis, Priority
from tests.support.node_red import route

SITE, LINE = "demo-plant", "packaging-1"
T = Topics(SITE, LINE)
T0 = 1_800_000_000.0


def alarm(alarm_id: str, asset: str, at: float, priority=Priority.HIGH, parent: str | None = None,
          state=AlarmState.ACTIVE_UNACK) -> Alarm:
    return Alarm(alarm_id, asset, alarm_id.partition(".")[2], state, priority, f"{asset}: text of {alarm_id}",
                 at, at, suppressed=parent is not None, parent_id=parent)


def message(a: Alarm) -> tuple[str, bytes]:
    return T.alarm(a.asset, a.alarm_id), payloads.encode(payloads.alarm_state(a, SITE, LINE))


ROOT = alarm("product_pump.fault", "product_pump", T0)
FOLDED = alarm("product_pump.vibration-limit", "product_pump", T0 + 30, parent=ROOT.alarm_id)
LATER = alarm("air_compressor.fault", "air_compressor", T0 + 60, Priority.MEDIUM)
# as the broker may hand them over: by topic, here the reverse of the times they happened
RETAINED = [message(LATER), message(FOLDED), message(ROOT)]


def test_tail_prints_the_retained_alarms_in_time_order_one_line_per_situation():
    tail = Tail()
    assert all(tail.take(topic, raw, retained=True) == [] for topic, raw in RETAINED)  # held back: the burst
    lines = tail.flush()
    assert [ln for ln in lines if "(" in ln][:2] == [ln for ln in lines if "fault" in ln]
    assert ROOT.alarm_id in lines[0] and "(+1 folded)" in lines[0] and LATER.alarm_id in lines[1]
    assert not any(FOLDED.alarm_id in ln for ln in lines)  # recorded, not rung: counted on its root's line
    assert lines[-1] == "-- 2 alarm(s) on the broker, 1 folded under their cause (--folded shows them)"
    # live: another consequence is counted, not printed; a root is printed with its count
    again = alarm("filler.tank_level-limit", "filler", T0 + 90, parent=ROOT.alarm_id)
    assert tail.take(*message(again), retained=False) == []
    assert "(+2 folded)" in tail.take(*message(ROOT), retained=False)[0]


def test_tail_folded_shows_each_consequence_under_its_root_with_its_diagnosis():
    tail = Tail(folded=True)
    d = Diagnosis(FOLDED.alarm_id, "Vibration follows the cavitation", [], [], [], [], "runbook", created_at=T0 + 31)
    for topic, raw in [*RETAINED, (T.diagnosis("product_pump", FOLDED.alarm_id),
                                   payloads.encode(payloads.diagnosis(d, "product_pump", SITE, LINE)))]:
        tail.take(topic, raw, retained=True)
    lines = tail.flush()
    assert ROOT.alarm_id in lines[0] and "folded" not in lines[0]
    assert "└ HIGH" in lines[1] and FOLDED.alarm_id in lines[1] and f"folded under {ROOT.alarm_id}" in lines[1]
    assert "└ DIAGNOSE" in lines[2] and "follows the cavitation" in lines[2]
    assert LATER.alarm_id in lines[3] and lines[-1] == "-- 2 alarm(s) on the broker, 1 folded under their cause"


def test_alerts_tail_on_a_broker_in_time_order_and_without_the_folded_consequence(broker):
    """Issue 25: tail printed 5 alarms where the dashboard showed 1, out of time order."""
    pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5 if broker.protocol == "5" else paho.MQTTv311)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    try:
        for topic, raw in RETAINED:
            pub.publish(topic, raw, qos=1, retain=True).wait_for_publish(5)
        out = io.StringIO()
        done = threading.Event()
        conn = MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)
        worker = threading.Thread(target=lambda: (follow(conn, Topics("+", "+"), out, count=3), done.set()), daemon=True)
        worker.start()
        # the snapshot counts 2 lines; a live root alarm's state is the third
        while "-- 2 alarm(s)" not in out.getvalue():
            assert worker.is_alive(), out.getvalue()
            done.wait(0.05)
        pub.publish(*message(alarm("filler.fault", "filler", T0 + 120, parent=ROOT.alarm_id)), qos=1, retain=True)
        pub.publish(*message(alarm("infeed_conveyor.fault", "infeed_conveyor", T0 + 130)), qos=1, retain=True)
        assert done.wait(20), out.getvalue()
    finally:
        for topic, _ in RETAINED:
            pub.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
    lines = out.getvalue().splitlines()
    printed = [ln for ln in lines if not ln.startswith("-- ")]
    assert [re.findall(r"\(([a-z_]+\.[a-z_-]+)\)", ln)[-1] for ln in printed] == [
        ROOT.alarm_id, LATER.alarm_id, "infeed_conveyor.fault"], lines
    assert "(+1 folded)" in printed[0] and not any("filler.fault" in ln for ln in lines)


# -- the shipped Node-RED flow --------------------------------------------------------------------------------------

FLOW = json.loads((SEEDS_DIR / "node-red-flow.json").read_text())


@pytest.mark.parametrize("case, expected", [
    (ROOT, "HIGH alarm"),
    (LATER, "medium / low alarm"),
    (FOLDED, "not rung"),
    (alarm("filler.fault", "filler", T0, Priority.CRITICAL, parent=ROOT.alarm_id), "not rung"),
    (Alarm("filler.fault", "filler", "fault", AlarmState.ACTIVE_UNACK, Priority.HIGH, "m", T0, T0,
           shelved_until=T0 + 60, shelved_by="ann"), "not rung"),
    (Alarm("filler.fault", "filler", "fault", AlarmState.NORMAL, Priority.HIGH, "m", T0, T0, out_of_service=True),
     "not rung"),
])
def test_the_node_red_flow_rings_only_what_an_operator_is_shown(case, expected):
    """Issue 25: the flow routed a folded consequence (HIGH, parent_id set, suppressed) to its "HIGH alarm" node."""
    topic, raw = message(case)
    reached = route(FLOW, "fc_alarms_in", topic, raw)
    names = [n["name"] for n in reached]
    assert len(names) == 1 and names[0].startswith(expected), names


def test_the_node_red_flow_still_spots_a_cleared_alarm():
    reached = route(FLOW, "fc_alarms_in", T.alarm("filler", "filler.fault"), b"")
    assert [n["name"] for n in reached] == ["alarm cleared (normal + acknowledged)"]
