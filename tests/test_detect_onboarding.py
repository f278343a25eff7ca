"""`train` and `evaluate` on a plant's own history, as a plant engineer onboarding a machine meets them.

A line that is not the demo (an engine with four channels, one of them constant in healthy running, no
modes), a history as public run-to-failure sets come: each file's rows one cycle apart, many units.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from factory_copilot.cli import main
from factory_copilot.config import load_line
from factory_copilot.detect import load_detector
from factory_copilot.records import Mode

ENGINE = {
    "site": "test-works", "line": "engine-cell", "sampling_interval_s": 1.0,
    "mqtt": {"host": "127.0.0.1", "port": 1883}, "service": {"source": "mqtt", "state_dir": "var"},
    "assets": [{"id": "engine", "name": "Engine", "signals": [
        {"name": name, "unit": unit, "normal": band, "source": {"mqtt": {"topic": "cell/engine", "field": name}}}
        for name, unit, band in (("t24", "K", [640, 646]), ("t50", "K", [1380, 1420]), ("p30", "psia", [550, 556]),
                                 ("t2", "K", [518, 519]))]}],
}


def engine_line(tmp_path, **signal_checks) -> str:
    """The engine cell's line file; ``signal_checks`` maps a signal name to its ``checks:`` switches."""
    body = json.loads(json.dumps(ENGINE))
    for s in body["assets"][0]["signals"]:
        if s["name"] in signal_checks:
            s["checks"] = signal_checks[s["name"]]
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def engine_runs(units: int = 12, cycles: int = 200, seed: int = 0, worn_from: int = 170) -> pd.DataFrame:
    """Run-to-failure units: wear grows in three channels; the inlet temperature t2 never changes."""
    rng = np.random.default_rng(seed)
    frames = []
    for unit in range(units):
        wear = np.linspace(0, 1, cycles) ** 3
        frames.append(pd.DataFrame({
            "engine.t24": 643 + rng.normal(0, 0.5, cycles) + 2 * wear,
            "engine.t50": 1400 + rng.normal(0, 5, cycles) + 20 * wear,
            "engine.p30": 553 + rng.normal(0, 0.5, cycles) - 2 * wear,
            "engine.t2": 518.67,
            "run": unit,
            "fault": np.where(np.arange(cycles) >= worn_from, "degraded", "normal"),
        }))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def trained(tmp_path, capsys):
    line = engine_line(tmp_path)
    runs = engine_runs()
    runs[runs["fault"] == "normal"].drop(columns="fault").to_csv(tmp_path / "healthy.csv", index=False)
    runs.to_csv(tmp_path / "run-to-failure.csv", index=False)
    assert main(["train", "--line", line, "--history", str(tmp_path / "healthy.csv"),
                 "--out", str(tmp_path / "m.joblib")]) == 0
    return line, tmp_path, capsys.readouterr()


def test_train_names_a_signal_constant_in_healthy_history_and_the_service_does_not_call_it_stuck(trained):
    line_file, tmp_path, said = trained
    listed = said.out.split("stuck check off for:")[1].splitlines()[0]
    assert "engine.t2" in listed and "engine.t24" not in listed
    assert "unchanged from one healthy sample to the next" in said.out
    line = load_line(line_file)
    models = load_detector(tmp_path / "m.joblib", line)
    # what the service builds from the model file: 60 healthy rows with t2 as it always is
    checks = models.checks(line)
    rng = np.random.default_rng(3)
    fired = []
    for t in range(60):
        row = {"engine.t24": 643 + rng.normal(0, 0.5), "engine.t50": 1400 + rng.normal(0, 5),
               "engine.p30": 553 + rng.normal(0, 0.5), "engine.t2": 518.67}
        fired += checks.update(float(t), row, {}, Mode(line.production_mode))
    assert not [a for a in fired if a.kind == "stuck"]
    # a channel that moved in healthy running and then froze is still stuck
    frozen = []
    for t in range(60, 120):
        row = {"engine.t24": 643.0, "engine.t50": 1400 + rng.normal(0, 5), "engine.p30": 553 + rng.normal(0, 0.5),
               "engine.t2": 518.67}
        frozen += checks.update(float(t), row, {}, Mode(line.production_mode))
    assert {a.signal for a in frozen if a.kind == "stuck"} == {"t24"}


def test_evaluate_on_a_run_to_failure_set_raises_no_stuck_alarm_for_a_constant_channel(trained):
    line_file, tmp_path, _ = trained
    assert main(["evaluate", "--line", line_file, "--history", str(tmp_path / "run-to-failure.csv"),
                 "--models", str(tmp_path / "m.joblib"), "--out", str(tmp_path / "eval")]) == 0
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert "stuck" not in res["kinds"]
    assert res["false_alarm_rate"] < 0.05, res


def test_a_signal_opts_out_of_the_stuck_check_in_the_line_file(tmp_path):
    from factory_copilot.detect.checks import SignalChecks

    line = load_line(engine_line(tmp_path, t24={"stuck": False}, p30={"limit": False}))
    assert not line.signal("engine.t24").checks.stuck and line.signal("engine.t50").checks.stuck
    checks = SignalChecks(line, stuck_samples=10)
    out = []
    for t in range(30):  # every channel frozen, p30 past a limit it has opted out of
        out += checks.update(float(t), {"engine.t24": 643.0, "engine.t50": 1400.0, "engine.p30": 553.0,
                                        "engine.t2": 518.5}, {}, Mode(line.production_mode))
    assert {a.signal for a in out if a.kind == "stuck"} == {"t50", "p30", "t2"}
    # switching a check off is not a new line for the model: a trained detector keeps loading
    assert line.fingerprint() == load_line(engine_line(tmp_path)).fingerprint()
    with pytest.raises(Exception, match="stuk"):
        load_line(engine_line(tmp_path, t24={"stuk": False}))


def test_evaluate_says_which_checks_fired_in_its_text(tmp_path, capsys):
    line = engine_line(tmp_path)
    runs = engine_runs(units=4, worn_from=140)  # 60 worn cycles: longer than the stuck check waits
    runs[runs["fault"] == "normal"].drop(columns="fault").to_csv(tmp_path / "healthy.csv", index=False)
    worn = runs.copy()
    worn.loc[worn["fault"] != "normal", "engine.t24"] = 900.0  # a wire off: far out of its band and flat
    worn.to_csv(tmp_path / "worn.csv", index=False)
    assert main(["train", "--line", line, "--history", str(tmp_path / "healthy.csv"), "--out",
                 str(tmp_path / "m.joblib")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--line", line, "--history", str(tmp_path / "worn.csv"), "--models",
                 str(tmp_path / "m.joblib"), "--out", str(tmp_path / "eval")]) == 0
    text = capsys.readouterr().out
    kinds = json.loads((tmp_path / "eval" / "results.json").read_text())["kinds"]
    assert kinds.get("stuck") and kinds.get("multivariate")
    assert f"stuck {kinds['stuck']}" in text and f"multivariate {kinds['multivariate']}" in text


def test_a_line_whose_rows_are_cycles_is_reported_in_cycles_not_seconds(tmp_path, capsys):
    body = json.loads(json.dumps(ENGINE)) | {"time_unit": "cycle"}
    line = tmp_path / "engine.yaml"
    line.write_text(yaml.safe_dump(body))
    runs = engine_runs()
    runs[runs["fault"] == "normal"].drop(columns="fault").to_csv(tmp_path / "healthy.csv", index=False)
    runs.to_csv(tmp_path / "run-to-failure.csv", index=False)
    assert main(["train", "--line", str(line), "--history", str(tmp_path / "healthy.csv"),
                 "--out", str(tmp_path / "m.joblib")]) == 0
    out = capsys.readouterr().out
    assert "2040 cycles of normal history" in out and " min " not in out and " s of" not in out
    assert main(["evaluate", "--line", str(line), "--history", str(tmp_path / "run-to-failure.csv"),
                 "--models", str(tmp_path / "m.joblib"), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "from (cycle)" in out and "delay cy" in out and "2400 cycles, 360 labelled fault" in out
    assert "per 1000 cycles" in out and "per hour" not in out and "UTC" not in out
    # a unit that is not a word is refused, naming the field
    body["time_unit"] = "Cycles!"
    line.write_text(yaml.safe_dump(body))
    with pytest.raises(Exception, match="time_unit"):
        load_line(line)


def test_train_names_a_signal_whose_other_state_is_too_rare_in_healthy_history(tmp_path, capsys):
    # a standby pump: its flow is 0 in healthy running but for 12 rows, as a water network's pump 6 over a year
    body = json.loads(json.dumps(ENGINE))
    body["assets"][0]["signals"].append({"name": "standby_flow", "unit": "l/s", "normal": [0, 30],
                                         "source": {"mqtt": {"topic": "cell/engine", "field": "standby_flow"}}})
    line = tmp_path / "engine.yaml"
    line.write_text(yaml.safe_dump(body))
    runs = engine_runs()
    healthy = runs[runs["fault"] == "normal"].drop(columns="fault").reset_index(drop=True)
    healthy["engine.standby_flow"] = 0.0
    healthy.loc[1000:1011, "engine.standby_flow"] = 25.0
    healthy.to_csv(tmp_path / "healthy.csv", index=False)
    assert main(["train", "--line", str(line), "--history", str(tmp_path / "healthy.csv"),
                 "--out", str(tmp_path / "m.joblib")]) == 0
    out = capsys.readouterr().out
    said = out.split("too few to learn that state from: ")[1].splitlines()[0]
    assert said.startswith("engine.standby_flow (12 of 2040)") and "engine.t24" not in said
    assert load_detector(tmp_path / "m.joblib", load_line(line)).metadata["rare_states"] == {"engine.standby_flow": 12}
