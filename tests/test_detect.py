"""LineDetector and FaultClassifier on hand-made tables: causality, correlation awareness, modes, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from factory_copilot.config import SIMULATED_LINE, load_line, parse_line
from factory_copilot.detect.operating import coverage_report
from factory_copilot.detect import (
    UNKNOWN,
    TrainedDetector,
    FaultClassifier,
    LineDetector,
    ModelMismatchError,
    load_detector,
    save_detector,
)


def correlated(n: int, seed: int = 0) -> pd.DataFrame:
    """Three signals driven by one load (tightly correlated) plus two independent ones, with AR(1) dynamics."""
    rng = np.random.default_rng(seed)
    load = np.zeros(n)
    for t in range(1, n):
        load[t] = 0.9 * load[t - 1] + rng.normal()
    noise = rng.normal(scale=0.2, size=(n, 5))
    X = np.column_stack([load, 2 * load, -load, np.zeros(n), np.zeros(n)]) + noise
    X[:, 3] += rng.normal(size=n)
    X[:, 4] += 50.0
    return pd.DataFrame(X, columns=["pump.flow", "pump.current", "pump.suction", "tunnel.temp", "tunnel.power"])


@pytest.fixture(scope="module")
def detector() -> LineDetector:
    return LineDetector(false_alarm_rate=0.005).fit(correlated(3000))


def test_predictions_are_causal_and_stream_matches_batch(detector):
    X = correlated(600, seed=1)
    X.iloc[300:, 1] += 3.0
    full = detector.flag(X)
    for k in (1, 150, 301, 450):
        assert np.array_equal(detector.flag(X.iloc[:k]), full[:k])
    stream = detector.stream()
    live = np.array([stream.update(row) for row in X.to_numpy()], dtype=object)
    np.testing.assert_allclose(live[:, 0].astype(float), detector.anomaly_score(X), rtol=1e-9, atol=1e-12)
    assert np.array_equal(live[:, 1].astype(bool), full.astype(bool))


def test_broken_correlation_is_flagged_even_inside_each_signals_band(detector):
    X = correlated(400, seed=2)
    normal_rate = detector.flag(X).mean()
    assert normal_rate < 0.03
    # current falls while flow holds: each value stays inside its own normal spread, the relation does not
    broken = X.copy()
    broken.iloc[200:, 1] = broken.iloc[200:, 0] * 0.5
    assert (broken.iloc[200:, 1].abs() < X.iloc[:, 1].abs().max()).all()
    assert detector.flag(broken)[230:].mean() > 0.9
    shares = detector.contributions(broken).iloc[230:].mean()
    assert shares.idxmax() == "pump.current"
    assert np.allclose(detector.contributions(broken).iloc[230:].sum(axis=1), 1.0)


def test_slow_drift_is_caught_by_the_smoothed_statistics(detector):
    X = correlated(1200, seed=3)
    X.iloc[400:, 3] += np.linspace(0, 1.5, 800)  # a creeping bias of ~1.5 sigma
    flags = detector.flag(X)
    assert flags[:400].mean() < 0.03
    assert flags[900:].mean() > 0.5


def test_threshold_is_calibrated_to_the_target_rate():
    loose = LineDetector(false_alarm_rate=0.05).fit(correlated(3000))
    tight = LineDetector(false_alarm_rate=0.001).fit(correlated(3000))
    X = correlated(5000, seed=9)
    assert 0.01 < loose.flag(X).mean() < 0.15
    assert tight.flag(X).mean() < 0.01
    assert tight.models_["all"].threshold > loose.models_["all"].threshold


def test_each_mode_has_its_own_normal_and_a_settling_grace():
    run = correlated(2000, seed=4)
    idle = correlated(2000, seed=5) * 0.1
    idle["tunnel.power"] = 5.0 + idle["tunnel.power"] - 5.0
    train = pd.concat([run.assign(mode="running"), idle.assign(mode="idle")], ignore_index=True)
    det = LineDetector(settle_rows=50, false_alarm_rate=0.005).fit(train)
    assert set(det.models_) == {"running", "idle"}
    test = pd.concat([correlated(300, 6).assign(mode="running"), (correlated(300, 7) * 0.1).assign(mode="idle")],
                     ignore_index=True)
    flags = det.flag(test)
    assert flags.mean() < 0.03
    # the same idle rows judged against running's normal would all be anomalous
    assert det.flag(test.assign(mode="running"))[300:].mean() > 0.9
    # right after a mode change nothing is flagged, even a gross departure
    gross = test.copy()
    gross.iloc[300:, 0] += 100
    flags = det.flag(gross)
    assert flags[300:350].sum() == 0 and flags[360:].mean() > 0.9


def test_detector_refuses_unfitted_and_missing_columns(detector):
    with pytest.raises(RuntimeError, match="not fitted"):
        LineDetector().flag(correlated(10))
    with pytest.raises(ValueError, match="pump.current"):
        detector.flag(correlated(10).drop(columns=["pump.current"]))


def faulty(seed: int, fault: str, n: int = 400) -> pd.DataFrame:
    X = correlated(n, seed)
    if fault == "blockage":
        X.iloc[:, 0] -= 6.0
    elif fault == "heater":
        X.iloc[:, 4] -= 2.0
    elif fault == "oscillation":
        X.iloc[:, 3] += 3 * np.sin(np.arange(n) * 0.8)
    return X


def test_classifier_names_faults_causally_and_says_unknown_for_novel_signatures():
    faults = ["normal", "blockage", "heater", "oscillation"]
    X = pd.concat([faulty(s, f) for s, f in enumerate(faults)], ignore_index=True)
    y = np.repeat(faults, 400)
    clf = FaultClassifier(n_estimators=60).fit(X, y)
    assert set(clf.classes_) == set(faults)
    for s, f in enumerate(faults, start=10):
        pred = clf.predict(faulty(s, f))
        assert np.mean(pred[50:] == f) > 0.9, f
    proba = clf.predict_proba(faulty(20, "heater"))
    assert proba.shape == (400, 4) and np.allclose(proba.sum(axis=1), 1)
    Xt = faulty(21, "blockage")
    assert np.array_equal(clf.predict(Xt.iloc[:120]), clf.predict(Xt)[:120])
    novel = correlated(400, 22)
    novel.iloc[:, 1] += 40.0  # nothing like any training signature
    assert np.mean(clf.predict(novel)[50:] == UNKNOWN) > 0.9
    stream = clf.stream()
    for row in Xt.to_numpy():
        stream.update(row)
    assert stream.classify()[0] == "blockage"


def test_windowed_classifier_reads_the_course_causally_and_the_live_stream_agrees():
    faults = ["normal", "blockage", "heater", "oscillation"]
    X = pd.concat([faulty(s, f) for s, f in enumerate(faults)], ignore_index=True)
    y = np.repeat(faults, 400)
    clf = FaultClassifier(n_estimators=40, lags=(3, 10)).fit(X, y)
    Xt = faulty(31, "heater")
    Xt.iloc[5:8, 2] = np.nan  # a held value, as the live row holds it
    F = clf.features(Xt)
    # the signature plus one block per lag and the rows since each signal departed
    assert F.shape == (400, 6 * X.shape[1])
    # causal: the rows after a row change nothing of its features
    assert np.allclose(clf.features(Xt.iloc[:150]), F[:150])
    stream = clf.stream()
    live = []
    for row in Xt.to_numpy():
        stream.update(row)
        live.append(stream.signature()[0])
    assert np.allclose(np.array(live), F, atol=1e-9)
    assert np.mean(clf.label(F[50:])[0] == "heater") > 0.9
    # an untrained course is still judged by the snapshot's novelty check: a far signature stays unknown
    novel = correlated(400, 22)
    novel.iloc[:, 1] += 40.0
    assert np.mean(clf.predict(novel)[50:] == UNKNOWN) > 0.9


def test_models_round_trip_and_refuse_another_line(tmp_path):
    line = load_line(SIMULATED_LINE)
    keys = line.signal_keys()
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(500, len(keys))), columns=keys)
    det = LineDetector().fit(X)
    path = save_detector(tmp_path / "m.joblib", TrainedDetector(line.fingerprint(), "demo", det))
    loaded = load_detector(path, line)
    np.testing.assert_allclose(loaded.detector.anomaly_score(X), det.anomaly_score(X))
    other = line.model_dump(mode="json")
    other["assets"][1]["signals"][0]["normal"] = [0.5, 1.5]
    with pytest.raises(ModelMismatchError, match="fingerprint.*retrain"):
        load_detector(path, parse_line(other, "other.yaml"), "other.yaml")
    (tmp_path / "junk.joblib").write_bytes(b"not a model")
    with pytest.raises(ModelMismatchError, match="junk.joblib"):
        load_detector(tmp_path / "junk.joblib", line)


def test_train_command_learns_from_a_csv_export_and_names_bad_input(tmp_path, capsys):
    from factory_copilot.cli import main

    line = load_line(SIMULATED_LINE)
    keys = line.signal_keys()
    rng = np.random.default_rng(1)
    X = pd.DataFrame({k: sum(line.signal(k).normal) / 2 + rng.normal(size=1500) for k in keys})
    X["mode"] = "running"
    X.to_csv(tmp_path / "history.csv", index=False)
    out = tmp_path / "models.joblib"
    assert main(["train", "--history", str(tmp_path / "history.csv"), "--out", str(out)]) == 0
    models = load_detector(out, line)
    assert set(models.detector.models_) == {"running"} and models.classifier is None
    assert models.detector.persistence == 3 and models.detector.false_alarm_rate == 1e-4
    X.drop(columns=[keys[3]]).to_csv(tmp_path / "short.csv", index=False)
    assert main(["train", "--history", str(tmp_path / "short.csv"), "--out", str(out)]) == 2
    assert keys[3] in capsys.readouterr().err


def test_recorded_reading_stream_becomes_rows_per_interval():
    from factory_copilot.detect.cli import readings_table

    line = load_line(SIMULATED_LINE)
    recs = [
        {"ts": 10.2, "asset": "line", "signal": "mode", "value": 2, "quality": "good"},
        {"ts": 10.3, "asset": "product_pump", "signal": "flow", "value": 100.0, "quality": "good"},
        {"ts": 10.7, "asset": "product_pump", "signal": "flow", "value": 101.0, "quality": "good"},
        {"ts": 11.5, "asset": "product_pump", "signal": "flow", "value": None, "quality": "bad"},
        {"ts": 12.1, "asset": "product_pump", "signal": "flow", "value": 999.0, "quality": "uncertain"},
        {"ts": 13.0, "asset": "product_pump", "signal": "flow", "value": 103.0, "quality": "good"},
    ]
    table = readings_table(pd.DataFrame(recs), line)
    # latest good value per interval, held through intervals with none; Bad/Uncertain never used as data
    assert table["product_pump.flow"].tolist() == [101.0, 101.0, 101.0, 103.0]
    assert table["mode"].tolist() == ["running"] * 4


# ---- operating point, out-of-sample calibration, adaptive baseline -----------------------------------
def loaded(levels: list[tuple[float, int]], seed: int, drift_per_row: float = 0.0) -> pd.DataFrame:
    """A machine driven by a load: current follows it at once (curved), a temperature with a 200-row lag."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    load = np.concatenate([np.full(n, lv) for lv, n in levels]) + rng.normal(scale=0.3, size=sum(n for _, n in levels))
    load = lfilter([0.05], [1, -0.95], load, zi=[0.95 * load[0]])[0]  # the demand moves smoothly
    n = len(load)
    current = 20 + 3 * load + 0.08 * load**2 + rng.normal(scale=0.4, size=n)
    temp = lfilter([1 / 200], [1, -(1 - 1 / 200)], 40 + 1.5 * load, zi=[(1 - 1 / 200) * (40 + 1.5 * load[0])])[0]
    temp = temp + rng.normal(scale=0.15, size=n) + drift_per_row * np.arange(n)
    other = rng.normal(size=n)
    return pd.DataFrame({"fan.load": load, "fan.current": current, "fan.temperature": temp, "fan.vibration": other})


def test_a_duty_point_between_trained_ones_is_normal_when_judged_by_the_load():
    train = loaded([(5, 3000), (15, 3000), (5, 3000), (15, 3000)], seed=0)
    between = loaded([(10, 2500)], seed=1)
    by_load = LineDetector(context=("fan.load",), context_degree=2, context_lags=(30, 200), false_alarm_rate=1e-3,
                           persistence=3).fit(train)
    assert by_load.context_lags_ == (30, 200)  # the load moves while the mode holds: its lags are learnt
    assert by_load.flag(between).mean() < 0.01  # about the target rate
    blind = LineDetector(context=(), false_alarm_rate=1e-3, persistence=3).fit(train)
    assert blind.flag(between).mean() > 0.5  # judged by the two trained points alone, 10 is neither
    # a broken relation at that duty point is still caught
    broken = between.copy()
    broken.loc[1000:, "fan.current"] += 4.0
    assert by_load.flag(broken)[1100:].mean() > 0.9
    # batch and stream agree with the operating-point features
    stream = by_load.stream()
    live = np.array([stream.update(r)[0] for r in broken.to_numpy()])
    np.testing.assert_allclose(live, by_load.anomaly_score(broken), rtol=1e-7, atol=1e-9)


def test_held_out_check_widens_a_threshold_the_future_does_not_keep_and_says_so():
    steady = correlated(6000, seed=12)
    det = LineDetector(false_alarm_rate=1e-3, persistence=3).fit(steady)
    m = det.calibration_["modes"]["all"]
    assert m["held_out"] == 1200 and m["flagged"] == 0 and m["factor"] == 1.0 and not m["missed"]
    assert m["shown_below"] == pytest.approx(3 / 1200) and not m["estimable"]
    # the last part of the history runs rougher than the first: calibration in-sample would not hold there
    rough = correlated(6000, seed=12)
    rough.iloc[4500:, :3] += np.random.default_rng(3).normal(scale=0.6, size=(1500, 3))
    det = LineDetector(false_alarm_rate=1e-3, persistence=3).fit(rough)
    m = det.calibration_["modes"]["all"]
    assert m["missed"] and m["rate"] > 1e-2 and m["factor"] > 1.0 and m["rate_after"] <= 1e-3
    assert det.models_["all"].widened == m["factor"]
    plain = LineDetector(false_alarm_rate=1e-3, persistence=3, holdout=0).fit(rough)
    assert det.models_["all"].threshold == pytest.approx(plain.models_["all"].threshold * m["factor"])
    # held-out rates are reported by any grouping of the rows (regimes)
    groups = np.where(np.arange(6000) < 3000, "early", "late")
    det = LineDetector(false_alarm_rate=1e-3, persistence=3).fit(rough, groups=groups)
    assert set(det.calibration_["groups"]) == {"early", "late"}
    assert det.calibration_["groups"]["early"]["held_out"] == 0 and det.calibration_["groups"]["late"]["held_out"] == 1200


def test_adaptive_baseline_follows_slow_drift_but_not_a_growing_fault():
    train = loaded([(5, 3000), (15, 3000)] * 2, seed=2)
    params = dict(context=("fan.load",), context_degree=2, context_lags=(30, 200), false_alarm_rate=1e-3, persistence=3)
    fixed = LineDetector(**params).fit(train)
    adaptive = LineDetector(**params, baseline_rows=150, baseline_every=10, baseline_hold=50).fit(train)
    drifting = loaded([(10, 12000)], seed=3, drift_per_row=1.0 / 12000)  # 1 degC (7 sd) over the run, slowly
    assert fixed.flag(drifting)[6000:].mean() > 0.5
    assert adaptive.flag(drifting).mean() <= 1e-3  # the target rate
    # a fault growing 18 times faster than that drift is flagged all the same, and the baseline freezes
    fault = loaded([(10, 6000)], seed=4)
    fault.loc[2000:, "fan.temperature"] += np.linspace(0, 6, 4000)
    flags = adaptive.flag(fault)
    first = int(np.argmax(flags))
    assert 2000 < first < 3000 and flags[first:].mean() > 0.95
    stream = adaptive.stream()
    live = np.array([stream.update(r) for r in fault.to_numpy()], dtype=object)
    np.testing.assert_allclose(live[:, 0].astype(float), adaptive.anomaly_score(fault), rtol=1e-7, atol=1e-9)
    assert np.array_equal(live[:, 1].astype(bool), flags.astype(bool))
    frozen = stream.baseline.baseline["all"].copy()
    for r in fault.iloc[-500:].to_numpy():
        stream.update(r)
    np.testing.assert_array_equal(stream.baseline.baseline["all"], frozen)


def test_an_hourly_line_keeps_a_fixed_normal_and_flags_an_offset_a_two_row_baseline_would_learn_away():
    from types import SimpleNamespace

    from factory_copilot.detect.evaluate import line_detector_params

    def line(interval_s: float) -> SimpleNamespace:
        return SimpleNamespace(sampling_interval_s=interval_s, context_keys=lambda: [], production_modes=lambda: ["running"])

    assert line_detector_params(line(1.0))["baseline_rows"] == 7200.0  # a second-sampled line follows its drift
    hourly = line_detector_params(line(3600.0))
    assert hourly["baseline_rows"] is None
    detector = LineDetector(**hourly).fit(correlated(3000, seed=5))
    test = correlated(600, seed=6)
    test.loc[200:259, "pump.current"] += 0.8  # 60 hours off its correlation with the flow (a 2-row baseline: never flagged)
    flags = detector.flag(test)
    assert flags[:200].sum() == 0 and flags[200:260].mean() > 0.5
    assert flags[308:].sum() == 0  # nothing was learnt: the flags end with the offset (and the slow average's memory)



def warming(n: int, seed: int) -> pd.DataFrame:
    """Three steady signals and a thermocouple warming 0.4 degC per 400 rows against a 0.05 degC spread (a rig
    warming up, as SKAB's)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    X[:, 3] = 0.05 * X[:, 3] + 0.001 * np.arange(n)
    return pd.DataFrame(X, columns=["pump.flow", "pump.current", "pump.pressure", "rig.thermocouple"])


def test_a_signal_a_short_history_cannot_pin_the_level_of_is_judged_on_its_recent_level():
    frame = warming(1600, seed=5)
    history, later = frame.iloc[:400].reset_index(drop=True), frame.iloc[400:].reset_index(drop=True)
    params = dict(false_alarm_rate=1e-3, persistence=3, holdout=0.5)
    on_level = LineDetector(**params).fit(history)
    recent = LineDetector(**params, min_effective_rows=50, level_rows=60).fit(history)
    assert list(recent.drifting_) == ["rig.thermocouple"] and recent.drifting_["rig.thermocouple"] < 50
    assert recent.calibration_["drifting"] == recent.drifting_
    # judged on its level, the warming thermocouple rings once it has warmed past what the widened limit allows;
    # judged on its recent level, it does not in the 1,200 rows after the history
    assert on_level.flag(later)[-300:].mean() > 0.5
    assert recent.flag(later).mean() < 0.01
    assert any("rig.thermocouple: moves slowly" in r for r in coverage_report(load_line(SIMULATED_LINE), recent.calibration_, {"all": 400}))
    # a step in it is flagged from its first rows, and a fault in a steady signal as before
    step = later.copy()
    step.loc[300:, "rig.thermocouple"] += 0.5
    flags = recent.flag(step)
    assert flags[300:310].any() and flags[:300].mean() < 0.02
    assert recent.contributions(step).iloc[300:310].mean().idxmax() == "rig.thermocouple"
    broken = later.copy()
    broken.loc[300:, "pump.current"] += 5.0
    assert recent.flag(broken)[305:].mean() > 0.95
    # live, one row at a time, as in batch
    stream = recent.stream()
    live = np.array([stream.update(r) for r in step.to_numpy()], dtype=object)
    np.testing.assert_allclose(live[:, 0].astype(float), recent.anomaly_score(step), rtol=1e-7, atol=1e-9)
    assert np.array_equal(live[:, 1].astype(bool), flags.astype(bool))
    # a long history of the same signals pins every level: none is judged on its recent level
    assert LineDetector(**params, min_effective_rows=50, level_rows=60).fit(warming(20000, seed=6).diff().iloc[1:]).drifting_ == {}


def test_a_short_history_is_not_judged_on_an_average_slower_than_it_can_calibrate():
    history = correlated(400, seed=31)
    params = dict(false_alarm_rate=1e-3, persistence=3, holdout=0.5)
    short = LineDetector(**params, min_smoothed_samples=10).fit(history)
    # 200 rows fit (half held out): a 20-row average would rest on 5 independent values; raised until there are 10
    floor = 2 * 10 / (200 + 10)
    np.testing.assert_allclose(short.lams_, [1.0, 0.3, floor])
    assert 200 * floor / (2 - floor) == pytest.approx(10)
    assert short.calibration_["smoothing"] == pytest.approx([1.0, 0.3, floor]) and short.calibration_["fit_rows"] == 200
    report = coverage_report(load_line(SIMULATED_LINE), short.calibration_, {"all": 400})
    assert any(r.startswith("the slowest average is over 10 s, not 20 s: 200 rows") for r in report)
    # a long history keeps every weight as asked, and says nothing of it
    long = LineDetector(**params, min_smoothed_samples=10).fit(correlated(6000, seed=32))
    np.testing.assert_allclose(long.lams_, LineDetector().smoothing)
    assert not any("slowest average" in r for r in coverage_report(load_line(SIMULATED_LINE), long.calibration_, {"all": 6000}))
    # a small drift is still caught, and live one row at a time as in batch
    later = correlated(800, seed=33)
    later.loc[300:, "pump.current"] += np.linspace(0.0, 1.5, 500)
    flags = short.flag(later)
    assert flags[:300].mean() < 0.02 and flags[700:].mean() > 0.9
    stream = short.stream()
    live = np.array([stream.update(r) for r in later.to_numpy()], dtype=object)
    np.testing.assert_allclose(live[:, 0].astype(float), short.anomaly_score(later), rtol=1e-7, atol=1e-9)
    assert np.array_equal(live[:, 1].astype(bool), flags.astype(bool))


@pytest.mark.parametrize("baseline_rows", [None, 600.0])
def test_the_slowest_average_forgets_an_excursion_that_has_passed_but_not_a_drift(baseline_rows):
    history = correlated(3000, seed=41)
    params = dict(false_alarm_rate=1e-3, persistence=3, baseline_rows=baseline_rows, baseline_every=20, baseline_hold=100)
    keeps = LineDetector(**params).fit(history)
    forgets = LineDetector(**params, restart_after=0.5).fit(history)
    later = correlated(1200, seed=42)
    later.loc[300:339, "pump.current"] += 3.0  # a 40-row excursion, then normal running
    later.loc[700:, "tunnel.temp"] += np.linspace(0.0, 0.8, 500)  # a drift only the slow average sees at first
    kept, forgot = keeps.flag(later), forgets.flag(later)
    assert forgot[:300].sum() == kept[:300].sum() == 0
    assert forgot[300:340].mean() == kept[300:340].mean() > 0.9
    # the 20-row average holds the excursion for 40 rows after it; restarted once it alone flags and has fallen
    # for 10 rows, it lets normal running go within the persistence of that
    assert kept[340:440].sum() >= 35 and forgot[340:440].sum() <= kept[340:440].sum() - 15
    assert forgot[340:440].sum() <= 10 + 3 + 5
    # a drift is held by the faster averages too: restarting from them keeps it
    assert np.array_equal(forgot[700:], kept[700:]) and forgot[1100:].mean() > 0.8
    stream = forgets.stream()
    live = np.array([stream.update(r) for r in later.to_numpy()], dtype=object)
    np.testing.assert_allclose(live[:, 0].astype(float), forgets.anomaly_score(later), rtol=1e-7, atol=1e-9)
    assert np.array_equal(live[:, 1].astype(bool), forgot.astype(bool))


def test_a_standby_pump_that_hardly_ran_in_the_history_is_left_out_and_the_threshold_is_not_set_by_it():
    rng = np.random.default_rng(8)
    frame = warming(3000, seed=8).drop(columns="rig.thermocouple")
    frame["standby.running"] = 0.0
    frame.loc[1200:1203, "standby.running"] = 1.0  # four rows of a year's test run
    detector = LineDetector(false_alarm_rate=1e-3, persistence=3).fit(frame)
    assert detector.unjudged_ == ("standby.running",) and detector.calibration_["unjudged"] == ["standby.running"]
    later = frame.iloc[:800].reset_index(drop=True).copy()
    later.loc[:, ["pump.flow", "pump.current", "pump.pressure"]] = rng.normal(size=(800, 3))
    later.loc[100:300, "standby.running"] = 1.0
    # the pump running changes nothing: the detector judges as one that never had the signal
    without = LineDetector(false_alarm_rate=1e-3, persistence=3).fit(frame.drop(columns="standby.running"))
    assert np.array_equal(detector.flag(later), without.flag(later.drop(columns="standby.running")))
    assert detector.flag(later).mean() < 0.03
    later.loc[500:, "pump.current"] += 5.0
    assert detector.flag(later)[505:].mean() > 0.95  # and the threshold was not set by its rare rows
    assert any("standby.running: off its usual value" in r
               for r in coverage_report(load_line(SIMULATED_LINE), detector.calibration_, {"all": 3000}))


def test_holding_out_half_the_history_sees_a_drift_the_last_fifth_hides_and_widens_for_it():
    # a rig warming up: one signal's level wanders slowly through its short history and on after it
    frame = correlated(1200, seed=21)
    frame["tunnel.temp"] += np.cumsum(np.random.default_rng(121).normal(scale=0.05, size=1200))
    history, later = frame.iloc[:400].reset_index(drop=True), frame.iloc[400:800].reset_index(drop=True)
    half = LineDetector(false_alarm_rate=1e-3, persistence=3, holdout=0.5).fit(history)
    fifth = LineDetector(false_alarm_rate=1e-3, persistence=3, holdout=0.2).fit(history)
    m = half.calibration_["modes"]["all"]
    assert m["held_out"] == 200 and m["missed"] and m["factor"] > 1.0
    assert fifth.calibration_["modes"]["all"]["factor"] < m["factor"]
    assert half.flag(later).mean() < fifth.flag(later).mean()
    # a fault is still caught on the drifting machine
    broken = later.copy()
    broken.loc[200:, "pump.current"] += 4.0
    assert half.flag(broken)[220:].mean() > 0.9
