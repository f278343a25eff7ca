"""The 'explain' sub-command: a simulated incident or an alarm file, explained on the command line."""

from __future__ import annotations

import json

import pytest

from factory_copilot.cli import main
from tests.support.copilot import alarm_for


def test_explain_a_simulated_incident_without_a_model(capsys, monkeypatch):
    monkeypatch.delenv("FACTORY_COPILOT_MODEL", raising=False)
    monkeypatch.delenv("FACTORY_COPILOT_OPENAI_URL", raising=False)
    assert main(["explain", "--scenario", "air_leak", "--at", "300"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[runbook]") and "[air_leak]" in out and "RB-AIR-001#checks" in out and "Safety:" in out


def test_explain_an_alarm_file_as_json_lines(tmp_path, capsys):
    alarm = alarm_for("filler", "stuck_sensor", 0.9, signal="filler.fill_weight", kind="stuck")
    readings = [{"ts": 900.0 + i, "asset": "filler", "signal": "fill_weight", "value": 501.0} for i in range(30)]
    path = tmp_path / "alarm.json"
    path.write_text(json.dumps({"alarm": alarm.to_dict(), "readings": readings}))
    assert main(["explain", "--alarm-file", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert d["source"] == "runbook" and d["causes"][0]["fault_type"] == "stuck_sensor"


def test_a_bad_alarm_file_is_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"alarm": {"asset": "filler"}}')
    with pytest.raises(SystemExit, match="bad.json: not an alarm record"):
        main(["explain", "--alarm-file", str(path)])
