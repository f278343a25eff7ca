"""`factory-copilot evaluate --copilot`: the runbook-only path and a model side by side, a JSON report and a plot."""

from __future__ import annotations

import json

import pytest

from factory_copilot.cli import main
from factory_copilot.copilot.evaluate import Case, case_line
from tests.support.compressor import readings, write_line
from tests.support.copilot import alarm_for, make_tiny_qwen

pytest.importorskip("llama_cpp")


@pytest.mark.slow
def test_evaluate_copilot_on_the_simulated_faults_with_the_tiny_model(tmp_path, capsys):
    model = make_tiny_qwen(tmp_path / "tiny.gguf")
    out = tmp_path / "eval"
    faults = ["bearing_wear", "air_leak"]  # two of nine: the mechanics, in CI time
    assert main(["evaluate", "--copilot", "--model", str(model), "--threads", "2", "--faults", *faults,
                 "--out", str(out)]) == 0
    report = json.loads((out / "copilot.json").read_text())
    assert report["cases"] == 4 and set(report["paths"]) == {"runbook", "model"}
    runbook, model_path = report["paths"]["runbook"], report["paths"]["model"]
    # the runbook path names the injected fault first for most simulated faults, and says unknown when it is taken away
    assert runbook["top1"] == 1.0 and runbook["top2"] == 1.0 and runbook["valid_citations"] == 1.0
    assert runbook["unknown_recall"] is not None and runbook["schema_valid"] == 1.0
    # the tiny model's answers are noise (its accuracy means nothing); the figures are what its outcomes say
    model_outcomes = [o for o in report["outcomes"] if o["path"] == "model"]
    assert model_path["schema_valid"] == round(sum(o["schema_valid"] for o in model_outcomes) / 4, 3)
    assert model_path["valid_citations"] == round(sum(o["valid_citations"] for o in model_outcomes)
                                                  / sum(o["citations"] for o in model_outcomes), 3)
    assert all(o["valid_citations"] <= o["citations"] for o in model_outcomes)
    said_unknown = [o for o in model_outcomes if o["causes"][:1] == ["unknown"]]
    if said_unknown:
        assert model_path["unknown_precision"] == round(
            sum(o["expected"] == "unknown" for o in said_unknown) / len(said_unknown), 3)
    assert model_path["first_words_s_p50"] > 0 and model_path["complete_s_p50"] >= model_path["first_words_s_p50"]
    assert model_path["tokens_in_p50"] > 100 and model_path["tokens_out_p50"] > 5
    assert len(report["outcomes"]) == 8
    assert (out / "copilot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "top-1 fault accuracy" in text and "runbook" in text and "model" in text and '"unknown" precision' in text


def test_evaluate_copilot_on_another_lines_incidents(tmp_path, capsys):
    line = write_line(tmp_path / "cs2")
    cases = []
    for fault, asset, expected in [("oil_cooler_fouling", "compressor_a", "oil_cooler_fouling"),
                                   ("inlet_valve_sticking", "compressor_a", "inlet_valve_sticking"),
                                   ("dryer_refrigerant_loss", "dryer", "unknown")]:
        cases.append(Case(fault, expected, alarm_for(asset, alarm_id=f"A-{fault}", ts=900.0), readings(fault)))
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(case_line(c)) + "\n" for c in cases))
    out = tmp_path / "eval"
    assert main(["evaluate", "--copilot", "--line", str(line), "--cases", str(path), "--out", str(out)]) == 0
    report = json.loads((out / "copilot.json").read_text())
    assert list(report["paths"]) == ["runbook"] and report["line"] == "north-works/compressor-station-2"
    r = report["paths"]["runbook"]
    assert (r["top1"], r["top2"], r["unknown_precision"], r["unknown_recall"]) == (1.0, 1.0, 1.0, 1.0)
    # a broken case file names the file and line
    path.write_text(path.read_text() + '{"name": "x"}\n')
    with pytest.raises(SystemExit, match=r"cases.jsonl:4: not a case"):
        main(["evaluate", "--copilot", "--line", str(line), "--cases", str(path), "--out", str(out)])
