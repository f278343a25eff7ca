"""The second line, a compressor station that is not the demo: regimes told by the load, a duty point between
trained ones, a shift warmer than any in the history, its two catalogue faults and one the catalogue lacks."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import yaml

from factory_copilot.catalogue import load_faults
from factory_copilot.config import SIMULATED_FAULTS, SIMULATED_LINE, ServicePaths, load_line
from factory_copilot.detect import UNKNOWN, load_detector
from factory_copilot.detect.evaluate import run_scenario, train_models
from tests.lines.compressor_station import make_history as station

LINE_FILE = station.HERE / "line.yaml"
LINE = load_line(LINE_FILE)
H = 3600


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return pd.read_parquet(station.HISTORY)


@pytest.fixture(scope="module")
def models(history):
    return train_models(LINE, history, progress=False)


def test_line_is_its_own_not_the_demo(history):
    demo = load_line(SIMULATED_LINE)
    demo_ids = {a.id for a in demo.assets} | set(demo.signal_keys(include_mode=True)) | set(load_faults(SIMULATED_FAULTS))
    ours = {a.id for a in LINE.assets} | set(LINE.signal_keys()) | set(load_faults(LINE_FILE.parent / "faults.yaml"))
    assert not ours & demo_ids
    assert set(load_faults(LINE_FILE.parent / "faults.yaml")) == {"oil_cooler_fouling", "inlet_valve_sticking"}
    assert LINE.modes_by_range and LINE.mode_names() == ["night", "day", "peak"]
    assert LINE.service.source == "mqtt" and all(s.source.mqtt and not s.source.opcua for a in LINE.assets for s in a.signals)
    # gateway layout: one topic per asset, a field per signal
    for a in LINE.assets:
        assert {s.source.mqtt.topic for s in a.signals} == {f"plant/north-works/cs2/{a.id}"}
        assert [s.source.mqtt.field for s in a.signals] == [s.name for s in a.signals]
    assert list(history.columns) == ["ts", *LINE.signal_keys(), "fault", "run"]
    assert set(history["fault"]) == {"normal", "oil_cooler_fouling", "inlet_valve_sticking"}


def test_history_covers_the_regimes_and_training_reports_each(models):
    cov = "\n".join(models.metadata["coverage"])
    for regime, span in (("night", "4-8"), ("day", "10-16"), ("peak", "18-24")):
        assert f"regime {regime} (header.flow {span} m3/min): " in cov
    assert "between night and day" in cov and "held out" in cov
    # a day of history cannot show a rate of 1e-4 in any regime, and the report says so
    assert "cannot be held below" in cov
    cal = models.detector.calibration_
    assert set(cal["groups"]) >= {"night", "day", "peak"} and cal["modes"]["all"]["held_out"] > 0.15 * cal["modes"]["all"]["rows"]
    assert set(models.classifier.classes_) == {"normal", "oil_cooler_fouling", "inlet_valve_sticking"}


@pytest.mark.parametrize("flow", [9.0, 17.0])
def test_healthy_running_between_two_trained_regimes_raises_no_alarm(models, history, flow):
    # the history holds the regimes and the ramps between them, never a duty held at 9 or 17 m3/min
    # for ten minutes the way a regime is held (a 10-min spread under 0.5 m3/min)
    steady = history["header.flow"].rolling(600).std() < 0.5
    near = (history["header.flow"].rolling(600).mean() - flow).abs() < 0.7
    assert not (steady & near).any()
    run = station.simulate([(flow, 1.5 * H, 0)], seed=int(flow * 10))
    result = run_scenario(models, LINE, f"steady at {flow}", run)
    assert result.false_alarms_before == 0 and result.fp == 0, result.kinds


def test_a_shift_warmer_than_any_in_the_history_is_followed_not_alarmed(models):
    # a day shift (06:00-14:00) of a hot day: the room warms 1 degC an hour more than the history's day did,
    # and its temperatures leave everything trained
    run = station.simulate([("day", 3 * H, 0), ("peak", 2 * H, 900), ("day", 3 * H, 900)], seed=115,
                           start=station.START + 6 * H, ambient_offset=1.0, ambient_drift_per_h=1.0)
    assert run_scenario(models, LINE, "warm shift", run).false_alarms_before == 0
    # the same detector with its baseline held fixed alarms on the warm shift: the adaptive baseline does the work
    fixed = copy.deepcopy(models)
    fixed.detector.baseline_rows = None
    assert run_scenario(fixed, LINE, "warm shift, fixed baseline", run).false_alarms_before > 0


@pytest.mark.parametrize("fault, regime", [("oil_cooler_fouling", "night"), ("oil_cooler_fouling", 17.0),
                                           ("inlet_valve_sticking", "day")])
def test_the_catalogue_faults_are_detected_and_named(models, fault, regime):
    run = station.simulate([(regime, 1.5 * H, 0)], seed=hash((fault, str(regime))) % 1000,
                           faults=[station.Fault(fault, 20 * 60)])
    result = run_scenario(models, LINE, fault, run)
    assert result.detected and result.false_alarms_before == 0
    assert result.delay_s < 15 * 60  # the fault grows over 40 min
    assert result.named == fault


def test_a_fault_outside_the_catalogue_is_detected_and_called_unknown(models):
    run = station.simulate([("day", 2 * H, 0)], seed=7, faults=[station.Fault("dryer_refrigerant_loss", 20 * 60, 3600)])
    result = run_scenario(models, LINE, "refrigerant", run)
    assert result.detected and result.false_alarms_before == 0
    assert result.named == UNKNOWN


def test_train_writes_where_run_reads_and_evaluate_scores_a_labelled_recording(tmp_path, capsys):
    from factory_copilot.cli import main

    line = yaml.safe_load(LINE_FILE.read_text())
    line["knowledge"] = {"faults": str(LINE_FILE.parent / "faults.yaml")}
    line_file = tmp_path / "cs2.yaml"
    line_file.write_text(yaml.safe_dump(line))
    # --verbose: train is a report (WARNING on stderr by default); the service at start logs at INFO
    assert main(["train", "--verbose", "--line", str(line_file), "--history", str(station.HISTORY)]) == 0
    out = capsys.readouterr().out
    where = ServicePaths.of_line(load_line(line_file), line_file).detector
    assert f"saved {where}" in out and "regime peak (header.flow 18-24 m3/min)" in out and "held out" in out
    load_detector(where, load_line(line_file), line_file)  # what the service does at start: it says which one
    log = capsys.readouterr().err
    assert f"detector {where}: trained " in log and "on 115200 rows (96000 normal); 10 signals" in log

    # a labelled recording: normal running, then fouling; 'fault' 0/1 in a column named as the plant does
    run = station.simulate([("day", 2 * H, 0)], seed=31, faults=[station.Fault("oil_cooler_fouling", 3600)])
    run["state_label"] = (run.pop("fault") != "normal").astype(int)
    run.to_csv(tmp_path / "run.csv", index=False)
    assert main(["evaluate", "--config", str(line_file), "--history", str(tmp_path / "run.csv"),
                 "--labels", "state_label", "--out", str(tmp_path / "eval")]) == 0
    text = capsys.readouterr().out
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["events_detected"] == 1 and res["events"][0]["label"] == "1" and 0 < res["events"][0]["delay_s"] < 900
    assert res["precision"] > 0.95 and 0 < res["recall"] < 1 and res["false_alarms"] == 0
    assert res["missed_alarm_rate"] == pytest.approx(1 - res["recall"])
    assert "events detected 1/1" in text and (tmp_path / "eval" / "recording.png").stat().st_size > 10_000
    # beside the simple methods, fitted on the history train read (the model file records it)
    assert f"fitted on the 96000 healthy rows of {station.HISTORY.resolve()}" in text
    table = text.split("beside the simple methods")[1]
    assert all(name in table for name in ("line detector", "PCA T2+Q", "IsolationForest"))
    for name in ("PCA T2+Q", "IsolationForest"):
        b = res["baselines"][name]
        assert 0 <= b["false_alarm_rate"] <= 1 and b["events"] == 1 and f"{b['f1']:6.3f}" in table
    # without that history: the recording's own healthy rows before its fault, and it says why
    assert main(["evaluate", "--config", str(line_file), "--history", str(tmp_path / "run.csv"), "--labels",
                 "state_label", "--out", str(tmp_path / "eval2"), "--baselines-on", str(tmp_path / "gone.csv")]) == 0
    text = capsys.readouterr().out
    assert f"the recording's 3600 healthy rows before its first fault ({tmp_path / 'gone.csv'} not found" in text
    assert main(["evaluate", "--config", str(line_file), "--history", str(tmp_path / "run.csv"),
                 "--labels", "label"]) == 2
    assert "no label column 'label'" in capsys.readouterr().err
