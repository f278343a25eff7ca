"""Property-based fuzzing (Hypothesis) of everything that parses input from outside: it never raises.

Every payload on every topic, with any timestamp, either becomes readings that passed the
gate or is counted as rejected by a named reason; commands and questions either parse or are
rejected with a reason. Nothing raises into a client's network thread.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factory_copilot.collect.gate import REJECT_REASONS
from factory_copilot.collect.mqtt import MqttCollector
from factory_copilot.config import SIMULATED_LINE, load_line, parse_line
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.publish import payloads
from factory_copilot.records import Reading

NOW = 1_800_000_000.0


def _line():
    data = load_line(SIMULATED_LINE).model_dump(mode="json")
    pump = next(a for a in data["assets"] if a["id"] == "product_pump")
    for s in pump["signals"]:  # a gateway topic: a field per signal, some nested
        s["source"]["mqtt"] = {"topic": "gw/pump", "field": f"p.{s['name']}" if s["name"] < "m" else s["name"]}
    return parse_line(data)


LINE = _line()
TOPICS = sorted({s.source.mqtt.topic for a in LINE.assets for s in a.signals if s.source.mqtt}) + [
    "gw/unknown", "", "a/+/#", "plant/hall/product_pump/flow", "\x00\n\x1b[2J"]
FIELDS = ["value", "ts", "quality", "p", "flow", "speed", "vibration", "unit"]

scalars = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**40), max_value=10**40), st.text(max_size=20),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)), max_leaves=12)
timestamps = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([NOW, NOW - 1, NOW + 3, NOW + 6, NOW * 1000, 4102444800, 0, -1, "2026-12-01T00:00:00Z",
                     "2026-12-01T00:00:00", "yesterday"]),
)


def _raw(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


payload_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(_raw, json_values),
    st.builds(lambda d, ts: _raw({**d, "ts": ts}), st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6), timestamps),
    st.builds(lambda n: b"[" * n, st.integers(min_value=0, max_value=3000)),
    st.builds(lambda n: b'{"value": ' + b"9" * n + b"}", st.integers(min_value=1, max_value=6000)),
)


def collector() -> MqttCollector:
    return MqttCollector(LINE, Buffer(100_000), patterns=["plant/+/{asset}/{signal}"], clock=lambda: NOW)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.sampled_from(TOPICS), payload=payload_bytes)
def test_any_payload_on_any_topic_becomes_gated_readings_or_named_rejects(topic, payload):
    c = collector()
    c._on_message(SimpleNamespace(topic=topic, payload=payload))
    readings = [r for r in c._pending if isinstance(r, Reading)]
    rejected = sum(c.gate.rejects.values())
    assert readings or rejected, "a message that went nowhere without a count"
    assert set(c.gate.rejects) <= set(REJECT_REASONS)
    for r in readings:
        assert r.value is None or (type(r.value) is float and math.isfinite(r.value))
        assert NOW - LINE.samples.max_age_s <= r.ts <= NOW + LINE.samples.max_future_s
        assert r.key in LINE.signal_keys(include_mode=True)


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.sampled_from(FIELDS + ["request_id", "command", "alarm_id", "actor", "question",
                                                      "schema", "shelve_s", "comment"]), json_values, max_size=8),
       noise=st.binary(max_size=200))
def test_any_command_or_question_parses_or_is_rejected_with_a_reason(body, noise):
    for raw in (_raw(body), noise, b"[" * 70_000, _raw({**body, "schema": "command/1"})):
        for parse in (payloads.parse_command, payloads.parse_question):
            parsed = parse(raw, "ann")
            if isinstance(parsed, payloads.Rejected):
                assert parsed.reason
            else:
                assert parsed.request_id


def test_the_fuzzer_reaches_both_outcomes():
    """Guard against a fuzz test that only ever rejects: a good gateway message gives eight readings."""
    c = collector()
    body = {"ts": NOW, "p": {}}
    for s in LINE.asset("product_pump").signals:
        if s.name < "m":
            body["p"][s.name] = 1.0
        else:
            body[s.name] = 2.0
    c._on_message(SimpleNamespace(topic="gw/pump", payload=_raw(body)))
    assert len(c._pending) == 8 and not c.gate.rejects
