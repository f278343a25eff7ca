"""The unseen check: a signal the detector leaves out (a standby pump that never ran in the history) alarms, as its
own kind, when it sits at a value the history never held, and only then."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from factory_copilot.config import LineConfig
from factory_copilot.detect import load_detector, save_detector
from factory_copilot.detect.evaluate import train_models
from factory_copilot.records import Mode

ROWS = 1500


def _signal(name, band, **extra):
    return {"name": name, "unit": "u", "normal": band, "source": {"mqtt": {"topic": "cell/pumps", "field": name}},
            **extra}


LINE = {
    "site": "test-works", "line": "pump-cell", "sampling_interval_s": 1.0,
    "mqtt": {"host": "127.0.0.1", "port": 1883}, "service": {"source": "mqtt", "state_dir": "var"},
    "modes": {"signal": "pumps.mode", "codes": {0: "idle", 2: "running"}, "production": ["running"]},
    "assets": [{"id": "pumps", "name": "Pump house", "signals": [
        _signal("mode", [2, 2], modes={"idle": [0, 0]}),
        _signal("duty_flow", [40, 60]),
        _signal("duty_pressure", [3, 5]),
        _signal("standby_status", [0, 1]),  # the standby pump: never ran in the history
        _signal("standby_current", [0, 30], limits=[0, 40]),  # watched by its limits instead
    ]}],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    line = LineConfig.model_validate(LINE)
    rng = np.random.default_rng(5)
    flow = 50 + rng.normal(0, 1, ROWS)
    history = pd.DataFrame({"pumps.mode": 2.0, "pumps.duty_flow": flow,
                            "pumps.duty_pressure": 4 + 0.02 * (flow - 50) + rng.normal(0, 0.05, ROWS),
                            "pumps.standby_status": 0.0, "pumps.standby_current": 0.0})
    models = train_models(line, history, progress=False)
    # what the service gets: the model file, loaded back
    path = save_detector(tmp_path_factory.mktemp("unseen") / "m.joblib", models)
    return line, models, load_detector(path, line)


def _rows(checks, line, t0, n, mode="running", **values):
    """Feed ``n`` healthy rows from data time ``t0`` with ``values`` overriding the standby signals; the anomalies."""
    rng = np.random.default_rng(int(t0))
    out = []
    for t in range(t0, t0 + n):
        row = {"pumps.mode": 2.0 if mode == "running" else 0.0, "pumps.duty_flow": 50 + rng.normal(0, 1),
               "pumps.duty_pressure": 4 + rng.normal(0, 0.05), "pumps.standby_status": 0.0,
               "pumps.standby_current": 0.0, **{f"pumps.{k}": v for k, v in values.items()}}
        out.append(checks.update(float(t), row, {}, Mode(mode)))
    return out


def test_a_standby_signal_the_detector_leaves_out_is_watched_for_values_its_history_never_held(trained):
    line, models, loaded = trained
    assert "pumps.standby_status" in models.detector.unjudged_
    assert loaded.seen["pumps.standby_status"] == ((0.0, 0.0, ROWS),)
    checks = loaded.checks(line)
    # healthy rows, the standby pump off as it always was: nothing
    assert not [a for r in _rows(checks, line, 0, 60) for a in r if a.kind == "unseen"]
    # it starts: the first rows are a short persistence, then an anomaly of its own kind, every row it stays on
    rows = _rows(checks, line, 60, 10, standby_status=1.0)
    found = [[a for a in r if a.kind == "unseen"] for r in rows]
    assert [bool(f) for f in found] == [False, False] + [True] * 8
    a = found[2][0]
    assert (a.asset, a.signal, a.value) == ("pumps", "standby_status", 1.0)
    assert "pumps.standby_status" in a.message and "at 1" in a.message
    assert f"only ever held 0 ({ROWS:,} rows)" in a.message
    assert a.score > a.threshold
    # back at what it held: quiet again, and a one-row blip is no state
    rows = _rows(checks, line, 70, 5) + _rows(checks, line, 75, 1, standby_status=1.0) + _rows(checks, line, 76, 5)
    assert not [a for r in rows for a in r if a.kind == "unseen"]


def test_the_unseen_check_runs_only_in_production_and_not_while_the_line_settles(trained):
    line, _, loaded = trained
    checks = loaded.checks(line)
    _rows(checks, line, 0, 10)
    # idle: a standby pump is run on purpose (tests, maintenance)
    assert not [a for r in _rows(checks, line, 10, 50, mode="idle", standby_status=1.0) for a in r if a.kind == "unseen"]
    # back to running with it still on: the settling grace first, then the alarm
    rows = _rows(checks, line, 60, int(checks.settle_s) + 10, standby_status=1.0)
    first = next(i for i, r in enumerate(rows) if any(a.kind == "unseen" for a in r))
    assert first >= checks.settle_s


def test_a_signal_with_limits_in_the_line_file_is_left_to_its_limit_check(trained):
    line, models, loaded = trained
    assert "pumps.standby_current" in models.detector.unjudged_ and "pumps.standby_current" not in loaded.seen
    checks = loaded.checks(line)
    out = [a for r in _rows(checks, line, 0, 20, standby_current=25.0) for a in r]
    assert not [a for a in out if a.signal == "standby_current"]  # within its limits: no alarm of any kind
    out = [a for r in _rows(checks, line, 20, 5, standby_current=45.0) for a in r]
    assert {a.kind for a in out if a.signal == "standby_current"} == {"limit"}


def test_a_signal_that_opts_out_of_the_unseen_check_stays_silent(trained):
    _, _, loaded = trained
    signals = [{**s, "checks": {"unseen": False}} if s["name"] == "standby_status" else s
               for s in LINE["assets"][0]["signals"]]
    body = {**LINE, "assets": [{**LINE["assets"][0], "signals": signals}]}
    line = LineConfig.model_validate(body)
    checks = loaded.checks(line)
    assert not [a for r in _rows(checks, line, 0, 10, standby_status=1.0) for a in r if a.kind == "unseen"]


def test_the_station_counts_unseen_anomalies_by_kind(trained):
    from factory_copilot.detect import DetectStation

    line, _, loaded = trained
    st = DetectStation(line, checks=loaded.checks(line), clock=lambda: 1e9)
    for t in range(10):
        st.evaluate(float(t), {"pumps.mode": 2.0, "pumps.duty_flow": 50.0 + t % 2, "pumps.duty_pressure": 4.0 + 0.01 * t,
                               "pumps.standby_status": 1.0, "pumps.standby_current": 0.0}, {})
    assert st.stats()["anomalies_by_kind"]["unseen"] == 8


def test_the_alarm_says_the_value_and_what_the_history_held(trained):
    from factory_copilot.alarms.text import alarm_text

    line, _, loaded = trained
    checks = loaded.checks(line)
    a = next(a for r in _rows(checks, line, 0, 5, standby_status=1.0) for a in r if a.kind == "unseen")
    text = alarm_text(line, {}, a)
    assert text.startswith("Pump house: standby status at a value its history never held")
    assert f"— 1.0 u; its history held only 0 ({ROWS:,} rows)" in text


def test_a_false_unseen_alarm_teaches_the_check_that_value(trained):
    import copy

    from factory_copilot.detect.retune import retune
    from factory_copilot.records import MarkedAlarm

    line, _, loaded = trained
    models = copy.deepcopy(loaded)
    alarms = [a for r in _rows(models.checks(line), line, 0, 6, standby_status=1.0) for a in r if a.kind == "unseen"]
    marked = MarkedAlarm("U1", "pumps", "standby_status:unseen", 2.0, 5.0, 10.0, "false_alarm", "op", alarms)
    report = retune(models, line, [marked])
    assert report.used == ["U1"] and report.seen_added == {"pumps.standby_status": [1.0]}
    checks = models.checks(line)
    assert not [a for r in _rows(checks, line, 0, 10, standby_status=1.0) for a in r if a.kind == "unseen"]
    # a value it still never held alarms as before
    assert [a for r in _rows(checks, line, 10, 10, standby_status=2.0) for a in r if a.kind == "unseen"]


def test_a_model_file_from_before_the_unseen_check_is_refused_with_the_retrain_advice(trained, tmp_path):
    import joblib

    from factory_copilot.detect import ModelMismatchError
    from factory_copilot.detect.persist import FORMAT

    line, models, _ = trained
    old = tmp_path / "old.joblib"
    joblib.dump({"format": FORMAT - 1, "version": "0", "models": models}, old)
    with pytest.raises(ModelMismatchError, match=rf"format {FORMAT - 1} \(this version reads {FORMAT}\).*retrain"):
        load_detector(old, line, "pump.yaml")


def test_a_setpoint_that_never_moved_in_the_history_is_not_watched_a_new_one_is_the_operator_s_decision(tmp_path):
    spec = {**LINE, "assets": [{**LINE["assets"][0], "signals": [*LINE["assets"][0]["signals"],
                                                                 _signal("pressure_setpoint", [3, 5])]}]}
    line = LineConfig.model_validate(spec)
    assert "pumps.pressure_setpoint" in line.context_keys()
    rng = np.random.default_rng(6)
    flow = 50 + rng.normal(0, 1, ROWS)
    history = pd.DataFrame({"pumps.mode": 2.0, "pumps.duty_flow": flow,
                            "pumps.duty_pressure": 4 + 0.02 * (flow - 50) + rng.normal(0, 0.05, ROWS),
                            "pumps.standby_status": 0.0, "pumps.standby_current": 0.0, "pumps.pressure_setpoint": 4.0})
    models = train_models(line, history, progress=False)
    assert {"pumps.pressure_setpoint", "pumps.standby_status"} <= set(models.detector.unjudged_)
    assert "pumps.pressure_setpoint" not in models.seen and "pumps.standby_status" in models.seen
    checks = models.checks(line)
    kinds = [(a.kind, a.signal) for r in _rows(checks, line, 0, 30, pressure_setpoint=4.5) for a in r]
    assert all(kind != "unseen" for kind, _ in kinds)
    assert ("unseen", "standby_status") in [(a.kind, a.signal) for r in _rows(checks, line, 100, 30, standby_status=1.0,
                                                                                     pressure_setpoint=4.5) for a in r]
