"""Retuning the detector from false alarms: thresholds rise just enough, confirmed faults still alarm, nothing counts twice."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.detect import TrainedDetector, LineDetector, load_detector, save_detector
from factory_copilot.detect.retune import retune
from factory_copilot.records import AlarmEvent, AlarmState, Anomaly, Feedback, MarkedAlarm
from simulators import modes
from tests.test_detect import correlated

RUNNING, IDLE = modes.RUNNING.value, modes.IDLE.value  # the detector knows modes by name
SIGNALS = ["pump.flow", "pump.current", "pump.suction", "tunnel.temp", "tunnel.power"]


def with_mode(X: pd.DataFrame, code: str) -> pd.DataFrame:
    return X.assign(mode=code)


@pytest.fixture
def models() -> TrainedDetector:
    history = pd.concat([with_mode(correlated(3000, seed=0), RUNNING), with_mode(correlated(3000, seed=5), IDLE)],
                        ignore_index=True).assign(run=lambda d: d["mode"])
    detector = LineDetector(false_alarm_rate=0.005).fit(history.drop(columns="run"))
    return TrainedDetector(fingerprint="test", line="test", detector=detector)


def drifted(shift: float, seed: int = 1) -> pd.DataFrame:
    """Running rows where the independent tunnel temperature (sd ~1) sits ``shift`` higher from row 200 on."""
    X = with_mode(correlated(500, seed=seed), RUNNING)
    X.loc[200:, "tunnel.temp"] += shift
    return X


def marked(alarm_id: str, verdict: str, models: TrainedDetector, X: pd.DataFrame, mode: str = modes.RUNNING,
           t0: float = 1000.0) -> MarkedAlarm:
    """The alarm the live station would have raised on ``X``: one multivariate anomaly per flagged row."""
    scores = models.detector.anomaly_score(X)
    flagged = np.flatnonzero(models.detector.flag(X))
    assert len(flagged), "the premise: this table raises an alarm"
    anomalies = [Anomaly(ts=t0 + i, asset="tunnel", kind="multivariate", score=float(scores[i]), threshold=1.0,
                         mode=mode) for i in flagged]
    return MarkedAlarm(alarm_id, "tunnel", "fault", t0 + flagged[0], t0 + flagged[-1], t0 + 600, verdict, "op",
                       anomalies)


def alarmed_share(models: TrainedDetector, X: pd.DataFrame) -> float:
    return float(models.detector.flag(X)[250:].mean())


def test_a_false_alarm_stops_alarming_while_a_confirmed_fault_still_does(models):
    line = load_line(SIMULATED_LINE)
    mild, fault = drifted(0.2, seed=8), drifted(3.0, seed=2)
    false_alarm = marked("FA1", "false_alarm", models, mild)
    confirmed = marked("C1", "confirmed", models, fault)
    peak = max(a.score for a in false_alarm.anomalies)
    assert 1.0 < peak < 1.4, f"premise: a mild departure, peak {peak:.2f}"
    idle_before = models.detector.models_["idle"].threshold
    running_before = models.detector.models_["running"].threshold

    report = retune(models, line, [false_alarm], [confirmed], margin=1.05, max_raise=1.5, actor="eng")

    [change] = report.thresholds
    assert (change.mode, change.bound_by, change.alarms) == ("running", "false alarms", ["FA1"])
    assert change.factor == pytest.approx(peak * 1.05)
    assert models.detector.models_["running"].threshold == pytest.approx(running_before * peak * 1.05)
    assert models.detector.models_["idle"].threshold == idle_before  # the false alarm said nothing about idle
    assert models.detector.flag(mild).sum() == 0
    assert alarmed_share(models, fault) > 0.9
    assert models.metadata["retuned_alarms"] == ["FA1"] and models.metadata["retunes"][0]["by"] == "eng"

    # the same false alarm again, and one recorded before the retune with the same scores: nothing more to raise
    earlier = MarkedAlarm("FA2", "tunnel", "fault", 1000.0, 1500.0, 1600.0, "false_alarm", "op",
                          [Anomaly(ts=a.ts, asset=a.asset, kind=a.kind, score=a.score, threshold=1.0, mode=a.mode)
                           for a in false_alarm.anomalies])
    again = retune(models, line, [false_alarm, earlier], [confirmed], now=2000.0)
    assert again.already_used == ["FA1"] and again.used == ["FA2"]
    assert again.thresholds == [] and "at the threshold already" in again.advice[0]
    assert models.detector.models_["running"].threshold == pytest.approx(running_before * peak * 1.05)


def test_a_confirmed_fault_bounds_the_raise(models):
    line = load_line(SIMULATED_LINE)
    big_false = marked("FA1", "false_alarm", models, drifted(2.0, seed=3))
    weak_fault = marked("C1", "confirmed", models, drifted(0.5, seed=4))
    scores = sorted(a.score for a in weak_fault.anomalies)
    before = models.detector.models_["running"].threshold

    report = retune(models, line, [big_false], [weak_fault], margin=1.05, max_raise=100.0)
    [change] = report.thresholds
    assert change.bound_by == "confirmed fault C1" and change.needed > change.factor
    assert change.factor == pytest.approx(float(np.median(scores)) / 1.05)
    assert models.detector.models_["running"].threshold == pytest.approx(before * change.factor)
    assert alarmed_share(models, drifted(0.5, seed=4)) > 0.0, "the confirmed fault still alarms"



def test_max_raise_caps_a_retune_and_a_gross_departure_changes_nothing(models):
    line = load_line(SIMULATED_LINE)
    before = models.detector.models_["running"].threshold
    gross = retune(models, line, [marked("FA1", "false_alarm", models, drifted(3.0, seed=6))], [], max_raise=1.2)
    assert gross.thresholds == [] and "far past what a retune absorbs" in gross.advice[0]
    assert models.detector.models_["running"].threshold == before and gross.used == ["FA1"]

    mild = marked("FA2", "false_alarm", models, drifted(0.2, seed=2))
    assert 1.2 < max(a.score for a in mild.anomalies) * 1.05 < 1.44, "premise: needs more than one step of 1.2"
    capped = retune(models, line, [mild], [], max_raise=1.2)
    assert [(c.factor, c.bound_by) for c in capped.thresholds] == [(1.2, "max_raise")]
    assert models.detector.models_["running"].threshold == pytest.approx(before * 1.2)


def test_single_signal_false_alarms_exempt_stuck_signals_and_point_at_the_line_file(models):
    line = load_line(SIMULATED_LINE)
    limit = MarkedAlarm("L1", "product_pump", "flow:limit", 0.0, 10.0, 20.0, "false_alarm", "op",
                        [Anomaly(ts=1.0, asset="product_pump", kind="limit", score=131.0, threshold=130.0,
                                 signal="flow", value=131.0)])
    stuck = MarkedAlarm("S1", "filler", "bowl_level:stuck", 0.0, 10.0, 20.0, "false_alarm", "op", [])
    comms = MarkedAlarm("Q1", "filler", "bowl_level:quality", 0.0, 10.0, 20.0, "false_alarm", "op", [])
    before = {m: mm.threshold for m, mm in models.detector.models_.items()}

    report = retune(models, line, [limit, stuck, comms])

    assert report.stuck_exempted == ["filler.bowl_level"] and "filler.bowl_level" in models.stuck_exempt
    asset = [a.id for a in line.assets].index("product_pump")
    sig = [s.name for s in line.asset("product_pump").signals].index("flow")
    assert f"assets[{asset}].signals[{sig}].limits" in report.advice[0] and "131" in report.advice[0]
    assert "instrument" in report.advice[1]
    assert report.used == ["L1", "S1"]  # a quality alarm moves nothing, so it stays unused
    assert {m: mm.threshold for m, mm in models.detector.models_.items()} == before
    assert "filler.bowl_level" in models.checks(line).stuck_exempt  # what the live station gets


def test_retune_command_reads_the_store_and_rewrites_the_model_file(tmp_path, capsys):
    from factory_copilot.cli import main
    from factory_copilot.config import ServicePaths
    from factory_copilot.detect.evaluate import train_models
    from factory_copilot.records import Alarm, Priority
    from factory_copilot.store import Store
    from simulators import ModeSchedule, simulate_frame

    line = load_line(SIMULATED_LINE)
    history = simulate_frame(line, seed=3, duration_s=2 * 3600, schedule=ModeSchedule.running(startup_s=300))
    models = train_models(line, history, progress=False)
    paths = ServicePaths(tmp_path / "state")
    save_detector(paths.detector, models)
    running = models.detector.models_["running"].threshold

    now = __import__("time").time()
    anomalies = [Anomaly(ts=now - 100 + i, asset="heat_tunnel", kind="multivariate", score=1.2, threshold=1.0,
                         mode=modes.RUNNING) for i in range(5)]
    alarm = Alarm("heat_tunnel-fault", "heat_tunnel", "fault", AlarmState.ACTIVE_UNACK, Priority.HIGH, "tunnel",
                  now - 100, now - 100, anomaly=anomalies[0])
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    with Store(paths.store) as store:
        store.add_anomalies(anomalies)
        store.add_alarm_event(AlarmEvent(alarm.alarm_id, now - 100, "raised", AlarmState.ACTIVE_UNACK, alarm))
        store.add_feedback(Feedback(alarm.alarm_id, "false_alarm", actor="op2", ts=now - 10))

    argv = ["retune", "--config", str(SIMULATED_LINE), "--state-dir", str(paths.state_dir), "--actor", "eng"]
    assert main(argv + ["--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["thresholds"][0]["factor"] == pytest.approx(1.26) and "backup" not in dry
    assert load_detector(paths.detector, line).detector.models_["running"].threshold == running

    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["used"] == ["heat_tunnel-fault"] and out["false_alarms"] == 1
    reloaded = load_detector(paths.detector, line)
    assert reloaded.detector.models_["running"].threshold == pytest.approx(running * 1.26)
    assert load_detector(out["backup"], line).detector.models_["running"].threshold == running

    assert main(argv) == 0  # run again: the false alarm was used already
    assert json.loads(capsys.readouterr().out)["changed"] is False
    assert main(["retune", "--config", str(SIMULATED_LINE), "--state-dir", str(tmp_path / "none")]) == 2
    assert "no store file" in capsys.readouterr().err
