"""The topic scheme and payload schemas of the publish station, without a broker."""

from __future__ import annotations

import json
import time

import pytest

from factory_copilot.records import Alarm, AlarmEvent, AlarmState, CommandResult, Diagnosis, OperatorCommand, Priority, Question
from factory_copilot.publish import payloads
from factory_copilot.publish.payloads import Rejected
from factory_copilot.publish.tail import describe
from factory_copilot.publish.topics import Topics, parse


def test_every_topic_parses_back_to_what_built_it_even_with_reserved_characters():
    t = Topics("demo-plant", "packaging-1", prefix="acme/fc")
    odd = "filler/level+#%x"  # '/', '+', '#' would break the topic tree or act as wildcards
    cases = {
        t.alarm("product_pump", odd): ("alarm", "product_pump", odd, None),
        t.diagnosis("filler", "a-1"): ("diagnosis", "filler", "a-1", None),
        t.diagnosis_stream("filler", odd): ("stream", "filler", odd, None),
        t.events(): ("events", None, None, None),
        t.status(): ("status", None, None, None),
        t.commands("ann"): ("commands", None, None, None),
        t.command_reply("r/1"): ("command_reply", None, None, "r/1"),
        t.ask("o.d@x"): ("ask", None, None, None),
        t.answer("q+1"): ("answer", None, None, "q+1"),
    }
    for topic, (kind, asset, alarm_id, request_id) in cases.items():
        assert "#" not in topic and "+" not in topic
        parts = t.parse(topic)
        assert (parts.kind, parts.site, parts.line, parts.asset, parts.alarm_id, parts.request_id) == (
            kind, "demo-plant", "packaging-1", asset, alarm_id, request_id,
        ), topic
    assert t.alarm("product_pump", odd).count("/") == t.alarm("product_pump", "a").count("/")
    # the sender of a command or question is its topic level
    assert t.parse(t.commands("ann")).user == "ann" and t.parse(t.ask("o.d@x")).user == "o.d@x"
    assert t.parse(t.commands("ann")).request_id is None
    # the reply levels are never a user's: a client cannot pose as "reply"
    assert t.parse(t.command_replies()[:-1]) is None and t.parse(t.answers()[:-1]) is None
    assert t.parse(f"{t.base}/commands") is None  # the old shared topic names nobody: nothing is read from it
    assert t.commands("+") == f"{t.base}/commands/+"


def test_foreign_topics_and_bad_prefixes():
    assert parse("factory/demo-plant/packaging-1/filler/level") is None
    assert parse("factory-copilot/demo-plant/packaging-1/filler/alarms") is None
    assert parse("factory-copilot/demo-plant/packaging-1/filler/diagnosis/a1/other") is None
    with pytest.raises(ValueError, match="prefix"):
        Topics("s", "l", prefix="bad/#")
    wild = Topics("+", "+")
    assert wild.all_alarms() == "factory-copilot/+/+/+/alarms/+"
    assert wild.status() == "factory-copilot/+/+/status"


def test_schemas_are_versioned_and_carry_their_id():
    for kind in payloads.KINDS:
        body = payloads.load_schema(kind)
        assert body["$id"] == f"https://factory-copilot.org/schemas/{kind}.json"
        assert body["properties"]["schema"] == {"const": kind, "description": "payload kind and version"}


def _alarm(state=AlarmState.ACTIVE_UNACK) -> Alarm:
    now = time.time()
    return Alarm("a1", "product_pump", "flow:limit", state, Priority.HIGH, "flow below 40 l/min", now, now)


def test_payload_builders_match_their_schemas_and_wrong_payloads_do_not():
    alarm = _alarm()
    d = Diagnosis("a1", "cavitation", [], [], [], [], "runbook")
    built = [
        payloads.alarm_state(alarm, "s", "l"),
        payloads.event(AlarmEvent("a1", time.time(), "raised", alarm.state, alarm), "s", "l"),
        payloads.diagnosis(d, "product_pump", "s", "l"),
        payloads.stream_chunk("a1", "product_pump", 0, "The", False),
        payloads.status("online", "s", "l", time.time(), "cid"),
        payloads.command_reply(CommandResult("r1", True, "acknowledged", alarm)),
        payloads.answer("r1", "a1", 3, "", True, "full text"),
    ]
    for body in built:
        assert payloads.problems(json.loads(payloads.encode(body))) == [], body["schema"]
    broken = payloads.alarm_state(alarm, "s", "l")
    broken["priority"] = "urgent"
    del broken["asset"]
    found = payloads.problems(broken)
    assert any(p.startswith("priority:") for p in found) and any("'asset' is a required property" in p for p in found)
    assert payloads.problems({"schema": "alarm/9"}) and payloads.problems([1, 2])


@pytest.mark.parametrize(
    "raw, request_id, reason",
    [
        (b"{not json", None, "not JSON"),
        (b"[1,2]", None, "must be a JSON object"),
        (b'{"schema":"command/1","request_id":"r1","command":"delete","alarm_id":"a1","actor":"ann"}', "r1", "command: 'delete'"),
        (b'{"schema":"command/1","request_id":"r2","command":"acknowledge","actor":"ann"}', "r2", "'alarm_id' is a required"),
        (b'{"schema":"command/1","request_id":"r3","command":"shelve","alarm_id":"a1","actor":"ann"}', "r3", "'shelve_s' is a required"),
        (b'{"request_id":"r4","command":"acknowledge","alarm_id":"a1","actor":"ann"}', "r4", "'schema' is a required"),
    ],
)
def test_bad_commands_are_rejected_with_a_reason(raw, request_id, reason):
    parsed = payloads.parse_command(raw, "ann")
    assert isinstance(parsed, Rejected)
    assert parsed.request_id == request_id
    assert reason in parsed.reason


def test_good_command_and_question_become_records():
    cmd = payloads.parse_command(
        b'{"schema":"command/1","request_id":"r1","command":"shelve","alarm_id":"a1","actor":"ann","shelve_s":600,"comment":"pump swap"}',
        "ann",
    )
    assert isinstance(cmd, OperatorCommand)
    assert (cmd.command, cmd.alarm_id, cmd.actor, cmd.shelve_s, cmd.comment, cmd.request_id) == (
        "shelve", "a1", "ann", 600, "pump swap", "r1",
    )
    q = payloads.parse_question(b'{"schema":"ask/1","request_id":"q1","alarm_id":"a1","question":"why?","actor":"ann"}', "ann")
    assert isinstance(q, Question) and (q.request_id, q.alarm_id, q.question, q.actor) == ("q1", "a1", "why?", "ann")
    assert isinstance(payloads.parse_question(b'{"schema":"ask/1","request_id":"q1","alarm_id":"a1","actor":"ann"}', "ann"), Rejected)
    # the actor is the sender, whether the payload names it or not
    bare = payloads.parse_command(b'{"schema":"command/1","request_id":"r2","command":"acknowledge","alarm_id":"a1"}', "bob")
    assert isinstance(bare, OperatorCommand) and bare.actor == "bob"


def test_an_actor_that_is_not_the_sender_is_rejected_and_the_reason_is_bounded():
    forged = payloads.parse_command(
        b'{"schema":"command/1","request_id":"r1","command":"acknowledge","alarm_id":"a1","actor":"plant-manager"}', "eve")
    assert isinstance(forged, Rejected) and forged.request_id == "r1"
    assert "'plant-manager' is not the sender 'eve'" in forged.reason
    q = payloads.parse_question(b'{"schema":"ask/1","request_id":"q1","alarm_id":null,"question":"?","actor":"ann"}', "eve")
    assert isinstance(q, Rejected) and "not the sender" in q.reason
    # documented field limits; the refusal quotes a long value only in part
    long_comment = json.dumps({"schema": "command/1", "request_id": "r3", "command": "acknowledge", "alarm_id": "a1",
                               "comment": "x" * 5000}).encode()
    parsed = payloads.parse_command(long_comment, "ann")
    assert isinstance(parsed, Rejected) and "comment" in parsed.reason and len(parsed.reason) < 400
    assert isinstance(payloads.parse_command(long_comment.replace(b"x" * 5000, b"x" * 1000), "ann"), OperatorCommand)
    assert isinstance(payloads.parse_command(b" " * (payloads.MAX_INCOMING_BYTES + 1), "ann"), Rejected)


def test_tail_describes_alarms_diagnoses_status_and_clears():
    t = Topics("demo-plant", "packaging-1")
    alarm = _alarm()
    line = describe(t.alarm("product_pump", "a1"), payloads.encode(payloads.alarm_state(alarm, "demo-plant", "packaging-1")))
    assert "HIGH" in line and "active_unacknowledged" in line and "product_pump" in line and "flow below 40 l/min" in line
    d = Diagnosis("a1", "Suction side starved: cavitation", [], [], [], [], "runbook")
    line = describe(t.diagnosis("product_pump", "a1"), payloads.encode(payloads.diagnosis(d, "product_pump", "demo-plant", "packaging-1")))
    assert "Suction side starved: cavitation" in line
    assert "cleared" in describe(t.alarm("product_pump", "a1"), b"")
    assert "INVALID" in describe(t.alarm("product_pump", "a1"), b'{"schema":"alarm/1"}')
    assert describe(t.events(), b"{}") is None and describe(t.diagnosis_stream("product_pump", "a1"), b"{}") is None


def test_node_red_flow_is_a_wired_export_on_our_topics():
    from factory_copilot.config import SEEDS_DIR

    flow = json.loads((SEEDS_DIR / "node-red-flow.json").read_text())
    nodes = {n["id"]: n for n in flow}
    assert len(nodes) == len(flow)
    brokers = [n for n in flow if n["type"] == "mqtt-broker"]
    tabs = {n["id"] for n in flow if n["type"] == "tab"}
    assert len(brokers) == 1 and len(tabs) == 1
    for n in flow:
        if n["type"] in ("tab", "mqtt-broker"):
            continue
        assert n["z"] in tabs, n["id"]
        assert all(target in nodes for output in n["wires"] for target in output), n["id"]
        if n["type"].startswith("mqtt"):
            assert n["broker"] == brokers[0]["id"]
        if n["type"] == "switch":
            assert len(n["wires"]) == n["outputs"] == len(n["rules"])
    wild = Topics("+", "+")
    subscribed = {n["topic"] for n in flow if n["type"] == "mqtt in"}
    assert {wild.all_alarms(), wild.all_diagnoses(), wild.status()} <= subscribed
    by_priority = next(n for n in flow if n["type"] == "switch" and n["property"] == "payload.priority")
    assert [r["v"] for r in by_priority["rules"]] == ["critical", "high", "medium", "low"]
    inject = next(n for n in flow if n["type"] == "inject")
    assert payloads.problems(json.loads(inject["payload"]), "command/1") == []
    out = next(n for n in flow if n["type"] == "mqtt out")
    assert parse(out["topic"]).kind == "commands" and parse(out["topic"]).user == "node-red"  # its MQTT user
