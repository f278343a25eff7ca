"""`factory-copilot incidents export`: confirmed incidents from the store as chat examples in the copilot's own form."""

from __future__ import annotations

import json
import time

import jsonschema

from factory_copilot.cli import main
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.copilot import Copilot
from factory_copilot.copilot.diagnosis import diagnosis_schema
from factory_copilot.copilot.prompt import DATA_OPEN
from factory_copilot.records import AlarmEvent, AlarmState, Feedback
from factory_copilot.store.store import Store
from tests.support.copilot import alarm_for, ramp

LINE = load_line(SIMULATED_LINE)


def test_confirmed_incidents_export_as_chat_examples(tmp_path, capsys):
    now = time.time()
    store = Store(tmp_path / "store.db")
    t0 = now - 700
    store.add_readings(ramp("product_pump.vibration", 2.0, 6.0, t0=t0, t1=now - 60)
                       + ramp("product_pump.bearing_temperature", 55, 80, t0=t0, t1=now - 60))
    cases = {"A-conf": ("confirmed", None, "regreased the DE bearing"),
             "A-other": ("other_cause", "loose motor mount", "tightened the mount bolts"),
             "A-false": ("false_alarm", None, None)}
    cop = Copilot(LINE)
    for r in ramp("product_pump.vibration", 2.0, 6.0, t0=t0, t1=now - 60):
        cop.observe(r)
    for alarm_id, (verdict, cause, fix) in cases.items():
        alarm = alarm_for("product_pump", alarm_id=alarm_id, ts=now - 60)
        store.add_alarm_event(AlarmEvent(alarm_id, now - 60, "raised", AlarmState.ACTIVE_UNACK, alarm))
        store.add_diagnosis(cop.explain_now(alarm))
        store.add_feedback(Feedback(alarm_id, verdict, cause, fix, actor="op1", ts=now - 30))
    store.close()
    out = tmp_path / "sft" / "incidents.jsonl"
    assert main(["incidents", "export", "--config", str(SIMULATED_LINE), "--state-dir", str(tmp_path),
                 "--out", str(out)]) == 0
    assert "2 confirmed incident(s)" in capsys.readouterr().out
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["metadata"]["alarm_id"] for r in rows] == ["A-conf", "A-other"]  # the false alarm is left out
    schema = diagnosis_schema(faults=list(cop.faults), steps=[1, 2, 3, 4])
    for r in rows:
        system, user, answer = r["messages"]
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert system["content"] == cop.system  # the same fixed prefix the copilot serves
        assert user["content"].startswith(DATA_OPEN) and "vibration 6 mm/s above 3.5" in user["content"]  # rebuilt evidence
        jsonschema.validate(json.loads(answer["content"]), schema)  # the copilot's own output form
    confirmed, other = (json.loads(r["messages"][2]["content"]) for r in rows)
    assert confirmed["causes"] == ["bearing_wear:high"] and confirmed["steps"]
    assert confirmed["summary"].endswith("Fixed by: regreased the DE bearing.")
    assert other["causes"] == ["unknown:high"] and "loose motor mount" in other["summary"] and not other["steps"]
    assert rows[1]["metadata"]["fix"] == "tightened the mount bolts" and rows[1]["metadata"]["actor"] == "op1"


def test_export_without_a_store_says_where_it_looked(tmp_path, capsys):
    assert main(["incidents", "export", "--config", str(SIMULATED_LINE), "--state-dir", str(tmp_path / "none"),
                 "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no store at" in capsys.readouterr().err
