"""A second line that is not the demo (the compressor station): the copilot uses its knowledge and nothing of the demo's.

Its diagnoses, prompts and schemas never name a demo asset, signal, fault or runbook; an
out-of-catalogue fault (dryer refrigerant loss) is explained as unknown with its evidence;
a line without any knowledge gets evidence-only diagnoses; `knowledge check` passes on it
and names the file and field of every mistake.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from factory_copilot.alarms.engine import AlarmEngine
from factory_copilot.alarms.text import alarm_text
from factory_copilot.catalogue import faults_of
from factory_copilot.cli import main
from factory_copilot.config import load_line
from factory_copilot.copilot import Copilot, LLMBackend, Reply
from factory_copilot.copilot.knowledge import check_knowledge
from factory_copilot.copilot.prompt import diagnosis_messages, question_messages
from factory_copilot.records import Anomaly
from tests.support.compressor import RUNBOOKS, compressor_line, demo_ids, readings, write_line
from tests.support.copilot import alarm_for

DEMO = demo_ids()


def leaks(text: str) -> list[str]:
    """Demo ids found in ``text`` (whole identifiers, not parts of longer ones)."""
    found = []
    for kind, ids in DEMO.items():
        for i in ids:
            if re.search(rf"(?<![A-Za-z0-9_.-]){re.escape(i)}(?![A-Za-z0-9_-])", text):
                found.append(f"{kind} {i}")
    return found


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    return compressor_line(tmp_path_factory.mktemp("cs2"))


def copilot_for(line, fault: str | None, backend=None, **kw) -> Copilot:
    cop = Copilot(line, backend=backend, **kw)
    for r in readings(fault):
        cop.observe(r)
    return cop


def test_the_line_knows_its_own_faults_and_runbooks_only(line):
    cop = Copilot(line)
    assert set(cop.faults) == {"oil_cooler_fouling", "inlet_valve_sticking"}
    assert set(cop.library.runbooks) == {"RB-CSA-001", "RB-CSA-002"}
    report = check_knowledge(line)
    assert report.ok, report.errors
    assert report.faults == 2 and report.runbooks == 2 and not report.warnings


@pytest.mark.parametrize("fault", ["oil_cooler_fouling", "inlet_valve_sticking", "dryer_refrigerant_loss", None])
def test_no_demo_id_in_diagnoses_prompts_or_schemas(line, fault):
    cop = copilot_for(line, fault)
    alarm = alarm_for("dryer" if fault == "dryer_refrigerant_loss" else "compressor_a", ts=900.0,
                      message="compressor_a: multivariate anomaly")
    d = cop.explain_now(alarm)
    pack = cop.pack(alarm.alarm_id)
    texts = {
        "system prompt": cop.system,
        "diagnosis prompt": json.dumps(diagnosis_messages(cop.system, pack)),
        "question prompt": json.dumps(question_messages(cop.system, pack, "what now?", [])),
        "schema": json.dumps(cop.schema_for(pack)),
        "diagnosis": json.dumps(d.to_dict()),
    }
    for what, text in texts.items():
        assert not leaks(text), f"{what} names demo ids: {leaks(text)}"
    assert "packaging" not in cop.system.lower() and "north-works" in cop.system
    enum = cop.schema["properties"]["causes"]["items"]["enum"]
    assert {c.partition(":")[0] for c in enum} == {"inlet_valve_sticking", "oil_cooler_fouling", "unknown"}
    labels = cop.schema_for(pack)["properties"]["steps"].get("items", {}).get("enum", [])
    assert [str(x) for x in labels] == pack.step_labels() and all(pack.step_for(str(x)).startswith("RB-CSA-") for x in labels)


def test_a_catalogued_fault_is_named_with_its_own_runbook(line):
    cop = copilot_for(line, "oil_cooler_fouling")
    d = cop.explain_now(alarm_for("compressor_a", ts=900.0))
    assert d.causes[0].fault_type == "oil_cooler_fouling" and d.causes[0].title == "Oil cooler fouling"
    refs = {e.ref for e in d.causes[0].evidence}
    assert {"compressor_a.oil_temperature", "RB-CSA-001#symptoms"} <= refs
    assert all(s.runbook_id.startswith("RB-CSA-001#") for s in d.steps) and len(d.steps) >= 4
    assert any("RB-CSA-001#safety" in s and "lock out" in s.lower() for s in d.safety)


def test_an_out_of_catalogue_fault_is_explained_as_unknown_with_evidence(line):
    cop = copilot_for(line, "dryer_refrigerant_loss")
    d = cop.explain_now(alarm_for("dryer", ts=900.0, message="dryer: multivariate anomaly"))
    assert [c.fault_type for c in d.causes] == ["unknown"]
    assert "No known fault matches" in d.summary and "no runbook covers it" in d.summary
    assert "the evidence points at dryer.dew_point" in d.summary
    ev = d.causes[0].evidence
    assert ev and ev[0].kind == "signal" and ev[0].ref == "dryer.dew_point" and ev[0].value > 10
    assert not d.steps  # no runbook covers it: no steps are invented


class Replies(LLMBackend):
    name = "scripted"

    def __init__(self, reply: dict):
        self.reply = json.dumps(reply)

    def chat(self, messages, schema=None, max_tokens=512, on_token=None, timeout_s=None):
        for i in range(0, len(self.reply), 8):
            on_token and on_token(self.reply[i:i + 8])
        return Reply(self.reply)


async def test_the_model_may_say_unknown_and_the_code_shows_the_evidence(line):
    reply = {"summary": "Dew point rising at steady load: not a catalogued fault.",
             "causes": ["unknown:medium"], "steps": []}
    cop = copilot_for(line, "dryer_refrigerant_loss", backend=Replies(reply))
    d = await cop.diagnose(alarm_for("dryer", ts=900.0))
    assert d.origin == "model" and d.causes[0].fault_type == "unknown"
    assert d.causes[0].evidence[0].ref == "dryer.dew_point" and not leaks(json.dumps(d.to_dict()))


async def test_a_model_naming_a_demo_fault_on_this_line_is_refused(line):
    reply = {"summary": "Cavitation.", "causes": ["pump_cavitation:high", {"fault": "pump_cavitation"}],
             "steps": ["RB-PUMP-002#checks.1"]}
    cop = copilot_for(line, "oil_cooler_fouling", backend=Replies(reply))
    d = await cop.diagnose(alarm_for("compressor_a", ts=900.0))
    assert d.origin == "runbook" and "invalid output" in d.fallback_reason  # nothing left after validation
    assert d.causes[0].fault_type == "oil_cooler_fouling"


def test_a_line_without_knowledge_gets_evidence_only_diagnoses(tmp_path):
    line = load_line(write_line(tmp_path / "bare", knowledge=False))
    cop = copilot_for(line, "oil_cooler_fouling")
    assert cop.faults == {} and len(cop.library) == 0
    d = cop.explain_now(alarm_for("compressor_a", ts=900.0))
    assert [c.fault_type for c in d.causes] == ["unknown"]
    assert "No known fault matches (this line has no runbooks)" in d.summary
    assert "compressor_a.oil_temperature" in d.summary and not d.steps and not leaks(json.dumps(d.to_dict()))
    assert cop.schema["properties"]["causes"]["items"]["enum"] == ["unknown:high", "unknown:medium", "unknown:low"]
    assert "(none catalogued)" in cop.system


def test_the_alarm_engine_names_faults_from_the_line_catalogue(line, tmp_path):
    engine = AlarmEngine(line, tmp_path / "alarms.db")
    try:
        assert set(engine.faults) == set(faults_of(line))  # not the demo's catalogue
        text = alarm_text(line, engine.faults, Anomaly(ts=100.0, asset="compressor_a", kind="multivariate", score=9.0,
                                                       threshold=1.0, fault_type="oil_cooler_fouling",
                                                       fault_probability=0.9))
        assert "oil cooler fouling" in text.lower() and not leaks(text)
    finally:
        engine.close()


def test_knowledge_check_names_file_and_field(tmp_path, capsys):
    folder = tmp_path / "broken"
    path = write_line(folder)
    books = folder / "runbooks"
    shutil.copytree(RUNBOOKS, books)
    data = yaml.safe_load(path.read_text())
    data["knowledge"]["runbooks"] = "runbooks"  # relative to the line file
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    first = books / "RB-CSA-001-oil-cooler-fouling.md"
    text = first.read_text()
    first.write_text(text.replace("signals: [compressor_a.oil_temperature", "signals: [compressor_a.oil_temp")
                     .replace("## Safety {#safety}", "## Safe {#safe}"))
    (books / "RB-CSA-009-copy.md").write_text((books / "RB-CSA-002-inlet-valve-sticking.md").read_text())
    (books / "RB-CSA-010-typo.md").write_text("---\nid: RB-CSA-010\ntitle: t\nasset: dryer\nsigals: []\n---\n## A {#a}\nx\n")
    faults = yaml.safe_load((folder / "faults.yaml").read_text())
    faults["faults"][1]["asset"] = "compressor_b"
    (folder / "faults.yaml").write_text(yaml.safe_dump(faults))
    assert main(["knowledge", "check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{folder / 'faults.yaml'}: faults[1].asset: 'compressor_b' is not an asset of the line" in err
    assert f"{first}: signals[0]: 'compressor_a.oil_temp' is not a signal of the line" in err
    assert f"{first}: sections missing: #safety" in err
    assert "id: RB-CSA-002 is already used by" in err
    assert "RB-CSA-010-typo.md: front matter sigals: Extra inputs are not permitted" in err
    # the good line passes
    assert main(["knowledge", "check", "--config", str(write_line(tmp_path / "good"))]) == 0
