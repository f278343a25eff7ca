"""The simulated packaging line: deterministic, inside its bands when healthy, physically coupled, faults as real ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from factory_copilot.catalogue import load_faults
from factory_copilot.config import SIMULATED_FAULTS, SIMULATED_LINE, load_line, parse_line
from factory_copilot.records import Quality
from simulators import modes
from simulators import (
    FaultScenario,
    ModeSchedule,
    SimulatedLine,
    normal_runs,
    read_ground_truth,
    simulate_frame,
    standard_scenarios,
    write_ground_truth,
)

ONSET_S = 1200.0
RUN_S = 2400.0


@pytest.fixture(scope="module")
def line():
    return load_line(SIMULATED_LINE)


@pytest.fixture(scope="module")
def shift(line):
    """Eight fault-free hours of the default shift pattern: every mode, several products."""
    return simulate_frame(line, seed=3, duration_s=8 * 3600, schedule=ModeSchedule.default())


@pytest.fixture(scope="module")
def reference(line):
    """The fault-free run every fault run is compared with (same seed, same schedule)."""
    return simulate_frame(line, seed=11, duration_s=RUN_S, schedule=ModeSchedule.running())


@pytest.fixture(scope="module")
def fault_frames(line):
    return {
        fault: simulate_frame(
            line, seed=11, duration_s=RUN_S, schedule=ModeSchedule.running(),
            scenarios=[FaultScenario(fault, start_s=ONSET_S)],
        )
        for fault in load_faults(SIMULATED_FAULTS)
    }


# -- determinism and the record format ---------------------------------------------------------


def test_same_seed_same_frame_and_different_seed_differs(line):
    a = simulate_frame(line, seed=5, duration_s=900)
    b = simulate_frame(line, seed=5, duration_s=900)
    c = simulate_frame(line, seed=6, duration_s=900)
    pd.testing.assert_frame_equal(a, b)
    keys = line.signal_keys()
    assert not np.allclose(a[keys].to_numpy(), c[keys].to_numpy())


def test_frame_layout(line):
    f = simulate_frame(line, seed=1, duration_s=600, start_ts=1000.0,
                       scenarios=[FaultScenario("air_leak", start_s=300)])
    assert list(f.columns) == line.signal_keys() + ["mode", "fault"]
    assert f.index.name == "ts" and len(f) == 600
    assert f.index[0] == pytest.approx(1001.0) and f.index[-1] == pytest.approx(1600.0)
    assert all(f[k].dtype == float for k in line.signal_keys())
    assert set(f["mode"]) == {"startup", "running"}
    assert (f.loc[f.index < 1300, "fault"] == "normal").all()
    assert (f.loc[f.index >= 1300, "fault"] == "air_leak").all()


def test_step_readings_match_the_frame(line):
    sim = SimulatedLine(line, seed=2, start_ts=5000.0)
    frame = simulate_frame(line, seed=2, duration_s=30, start_ts=5000.0)
    keys = line.signal_keys(include_mode=True)
    for i in range(30):
        readings = sim.step()
        assert [r.key for r in readings] == keys
        assert all(r.quality is Quality.GOOD and r.source == "simulator" for r in readings)
        assert all(r.unit == line.signal(r.key).unit for r in readings)
        assert {r.ts for r in readings} == {5000.0 + i + 1}
        by_key = {r.key: r.value for r in readings}
        row = frame.iloc[i]
        assert modes.from_code(by_key["line.mode"]).value == row["mode"]
        assert [by_key[k] for k in line.signal_keys()] == pytest.approx(row[line.signal_keys()].tolist())
    assert sim.t == pytest.approx(30.0) and sim.mode is modes.STARTUP


def test_a_line_signal_without_physics_is_refused_by_name(line):
    data = line.model_dump(mode="json")
    data["assets"][1]["signals"][0]["name"] = "belt_tension"
    with pytest.raises(ValueError, match="infeed_conveyor.belt_tension"):
        SimulatedLine(parse_line(data))


# -- normal operation inside the line file's bands ----------------------------------------------


def test_every_signal_inside_its_band_in_every_mode(line, shift):
    assert set(shift["mode"]) == {m.value for m in modes.ALL}
    outside = []
    for key in line.signal_keys():
        sig = line.signal(key)
        for mode in modes.ALL:
            values = shift.loc[shift["mode"] == mode.value, key]
            lo, hi = sig.normal_for(mode)
            inside = ((values >= lo) & (values <= hi)).mean()
            if inside < 0.99:
                outside.append(f"{key} {mode.value}: {inside:.3f} inside [{lo}, {hi}]")
    assert not outside, outside


def test_healthy_signals_never_change_faster_than_their_max_rate(line, shift):
    too_fast = {}
    for key in line.signal_keys():
        max_rate = line.signal(key).max_rate
        if max_rate is not None:
            steps = shift[key].diff().abs()
            if (steps > max_rate).any():
                too_fast[key] = (max_rate, round(steps.max(), 3))
    assert not too_fast, too_fast


def test_running_values_do_not_depend_on_the_step_size(line):
    coarse = simulate_frame(line, seed=4, duration_s=1800, schedule=ModeSchedule.running())
    fine = simulate_frame(line, seed=4, duration_s=1800, dt_s=0.5, schedule=ModeSchedule.running())
    late_c, late_f = coarse[coarse.index > 1200], fine[fine.index > 1200]
    for key in ["product_pump.flow", "heat_tunnel.zone1_temperature", "infeed_conveyor.motor_current",
                "air_compressor.load_duty", "filler.tank_level"]:
        band = np.subtract(*line.signal(key).normal[::-1])
        assert late_c[key].mean() == pytest.approx(late_f[key].mean(), abs=0.1 * band), key


# -- physical couplings -------------------------------------------------------------------------


def test_conveyor_current_follows_its_load(shift):
    on = shift[shift["infeed_conveyor.belt_speed"] > 0.05]
    running = shift[shift["mode"] == "running"]
    smooth = running[["infeed_conveyor.motor_current", "infeed_conveyor.throughput"]].rolling(60).mean().dropna()
    assert np.corrcoef(on["infeed_conveyor.motor_current"], on["infeed_conveyor.throughput"])[0, 1] > 0.9
    # within running too: product runs at different speeds carry different loads
    assert np.corrcoef(smooth.iloc[:, 0], smooth.iloc[:, 1])[0, 1] > 0.8


def test_pump_operates_on_its_pump_curve(shift):
    on = shift[shift["product_pump.speed"] > 500]
    head = on["product_pump.discharge_pressure"] - on["product_pump.suction_pressure"]
    n = on["product_pump.speed"] / 2850.0
    q = on["product_pump.flow"]
    # affinity laws: head = H0 n^2 - B Q^2
    x = np.c_[n**2, -(q**2)]
    (h0, b), *_ = np.linalg.lstsq(x, head, rcond=None)
    r2 = 1 - ((head - x @ [h0, b]) ** 2).sum() / ((head - head.mean()) ** 2).sum()
    assert r2 > 0.95 and 3.0 < h0 < 4.2 and b > 0
    running = shift[shift["mode"] == "running"]
    running_head = running["product_pump.discharge_pressure"] - running["product_pump.suction_pressure"]
    # at fixed speed more flow means less head: the curve droops
    assert np.corrcoef(running_head, running["product_pump.flow"])[0, 1] < -0.5


def test_pump_flow_follows_the_filler(shift):
    running = shift[shift["mode"] == "running"][["product_pump.flow", "filler.fill_rate"]].rolling(120).mean().dropna()
    assert np.corrcoef(running.iloc[:, 0], running.iloc[:, 1])[0, 1] > 0.8


def _peak_lag(cause: pd.Series, effect: pd.Series, max_lag: int = 900, step: int = 10) -> int:
    a = ((cause - cause.mean()) / cause.std()).to_numpy()
    b = ((effect - effect.mean()) / effect.std()).to_numpy()
    lags = range(-max_lag, max_lag + 1, step)
    corr = [np.mean(a[: len(a) - k] * b[k:]) if k >= 0 else np.mean(a[-k:] * b[: len(b) + k]) for k in lags]
    return list(lags)[int(np.argmax(corr))]


@pytest.mark.parametrize(
    "power, temperature",
    [
        ("heat_tunnel.heater_power", "heat_tunnel.zone1_temperature"),
        ("infeed_conveyor.motor_current", "infeed_conveyor.motor_temperature"),
        ("product_pump.motor_current", "product_pump.bearing_temperature"),
    ],
)
def test_temperatures_lag_power(shift, power, temperature):
    assert _peak_lag(shift[power], shift[temperature]) > 30


def test_vibration_follows_speed(shift):
    for speed, vib, rated in [("product_pump.speed", "product_pump.vibration", 2850.0),
                              ("infeed_conveyor.motor_speed", "infeed_conveyor.vibration", 1430.0)]:
        assert np.corrcoef(shift[vib], (shift[speed] / rated) ** 2)[0, 1] > 0.9, vib


def test_compressor_loads_with_air_demand(shift):
    smooth = shift[["air_compressor.air_flow", "air_compressor.load_duty"]].rolling(300).mean().dropna()
    assert np.corrcoef(smooth.iloc[:, 0], smooth.iloc[:, 1])[0, 1] > 0.8
    # load/unload: the receiver cycles between cut-in and cut-out instead of sitting still
    current = shift.loc[shift["mode"] == "running", "air_compressor.motor_current"]
    assert (current > 30).mean() > 0.3 and (current < 22).mean() > 0.2


# -- faults -------------------------------------------------------------------------------------

# expected direction of each catalogue signal once the fault has grown: +1 up, -1 down, 0 = noisier
EXPECTED = {
    "bearing_wear": {"product_pump.vibration": 1, "product_pump.bearing_temperature": 1,
                     "product_pump.motor_current": 1},
    "pump_cavitation": {"product_pump.suction_pressure": -1, "product_pump.flow": -1,
                        "product_pump.discharge_pressure": -1, "product_pump.vibration": 1},
    "clogged_filter": {"product_pump.filter_dp": 1, "product_pump.suction_pressure": -1, "product_pump.flow": -1},
    "belt_slip": {"infeed_conveyor.belt_speed": -1, "infeed_conveyor.throughput": -1,
                  "infeed_conveyor.motor_current": -1},
    "heater_degradation": {"heat_tunnel.heater_current": -1, "heat_tunnel.heater_power": -1,
                           "heat_tunnel.heater_duty": 1, "heat_tunnel.zone1_temperature": -1,
                           "heat_tunnel.zone2_temperature": -1},
    "motor_overload": {"infeed_conveyor.motor_current": 1, "infeed_conveyor.motor_temperature": 1,
                       "infeed_conveyor.motor_speed": -1},
    "air_leak": {"air_compressor.air_flow": 1, "air_compressor.load_duty": 1,
                 "air_compressor.header_pressure": -1, "filler.valve_air_pressure": -1},
    "sensor_drift": {"heat_tunnel.zone2_temperature": 1, "heat_tunnel.heater_duty": -1,
                     "heat_tunnel.zone1_temperature": -1},
    "stuck_sensor": {},
}


def test_every_catalogue_fault_has_an_expectation():
    assert set(EXPECTED) == set(load_faults(SIMULATED_FAULTS))


def _windows(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return frame[(frame.index > 600) & (frame.index < ONSET_S)], frame[frame.index > RUN_S - 600]


@pytest.mark.parametrize("fault", list(EXPECTED))
def test_fault_leaves_the_run_untouched_before_onset(fault, fault_frames, reference):
    before = fault_frames[fault].index < ONSET_S
    pd.testing.assert_frame_equal(fault_frames[fault].loc[before].drop(columns="fault"),
                                  reference.loc[before].drop(columns="fault"))
    assert (fault_frames[fault]["fault"] == np.where(before, "normal", fault)).all()


@pytest.mark.parametrize("fault", [f for f in EXPECTED if EXPECTED[f]])
def test_fault_moves_its_signals_the_way_the_real_fault_does(fault, fault_frames, reference):
    before, after = _windows(fault_frames[fault])
    _, healthy_after = _windows(reference)
    for key, direction in EXPECTED[fault].items():
        shift = after[key].mean() - before[key].mean()
        # against the signal's minute-to-minute variability (the compressor's load/unload sawtooth is normal)
        spread = before[key].rolling(60).mean().std()
        assert shift * direction > 3 * spread, f"{key}: {before[key].mean():.3f} -> {after[key].mean():.3f}"
        # and the healthy run did not do the same on its own
        healthy = healthy_after[key].mean() - before[key].mean()
        assert abs(shift) > 3 * abs(healthy), key


@pytest.mark.parametrize("fault", [f for f in EXPECTED if EXPECTED[f] and f != "heater_degradation"])
def test_faults_grow_rather_than_step(fault, fault_frames):
    frame = fault_frames[fault]
    key = next(iter(EXPECTED[fault]))
    before, after = _windows(frame)
    early = frame.loc[(frame.index >= ONSET_S) & (frame.index < ONSET_S + 30), key]
    assert abs(early.mean() - before[key].mean()) < 0.35 * abs(after[key].mean() - before[key].mean())


def test_cavitation_makes_flow_and_discharge_noisy(fault_frames):
    before, after = _windows(fault_frames["pump_cavitation"])
    for key in ["product_pump.flow", "product_pump.discharge_pressure"]:
        assert after[key].std() > 4 * before[key].std(), key


def test_belt_slip_is_intermittent_and_belt_runs_slower_than_the_motor_implies(fault_frames):
    _, after = _windows(fault_frames["belt_slip"])
    before, _ = _windows(fault_frames["belt_slip"])
    ratio = lambda f: f["infeed_conveyor.belt_speed"] / f["infeed_conveyor.motor_speed"]  # noqa: E731
    normal_ratio = ratio(before).median()
    slipping = ratio(after) < normal_ratio * 0.92
    assert 0.05 < slipping.mean() < 0.9  # episodes, not a constant offset
    assert (slipping.astype(int).diff().abs().sum()) > 10  # it starts and stops repeatedly
    # the motor itself keeps its speed
    assert abs(after["infeed_conveyor.motor_speed"].mean() - before["infeed_conveyor.motor_speed"].mean()) < 10


def test_degraded_heater_gives_less_power_at_the_same_duty(fault_frames):
    before, after = _windows(fault_frames["heater_degradation"])
    per_duty = lambda f: (f["heat_tunnel.heater_power"] / f["heat_tunnel.heater_duty"]).mean()  # noqa: E731
    assert per_duty(after) < 0.7 * per_duty(before)
    assert (after["heat_tunnel.heater_duty"] > 99).mean() > 0.9  # the controller saturates


def test_drifting_sensor_disagrees_with_the_physics(fault_frames, reference):
    """The zone-2 reading rises while heater power and zone 1 say the tunnel got cooler."""
    before, after = _windows(fault_frames["sensor_drift"])
    assert after["heat_tunnel.zone2_temperature"].mean() > before["heat_tunnel.zone2_temperature"].mean() + 5
    assert after["heat_tunnel.zone1_temperature"].mean() < before["heat_tunnel.zone1_temperature"].mean() - 5
    assert after["heat_tunnel.heater_power"].mean() < before["heat_tunnel.heater_power"].mean()


def test_stuck_sensor_freezes_with_good_quality(line):
    sim = SimulatedLine(line, seed=8, schedule=ModeSchedule.running(), start_ts=0.0,
                        scenarios=[FaultScenario("stuck_sensor", start_s=400)])
    values, qualities = [], []
    for _ in range(600):
        r = next(r for r in sim.step() if r.key == "filler.fill_weight")
        values.append(r.value)
        qualities.append(r.quality)
    assert len(set(values[300:398])) > 50  # alive before onset
    assert len(set(values[399:])) == 1 and values[399] == values[398]  # frozen at its last value
    assert set(qualities) == {Quality.GOOD}


def test_fault_ends_when_repaired(line):
    f = simulate_frame(line, seed=9, duration_s=2400, schedule=ModeSchedule.running(),
                       scenarios=[FaultScenario("air_leak", start_s=600, end_s=1500)])
    assert f.loc[f.index >= 1500, "fault"].eq("normal").all()
    late = f.loc[f.index > 1900, "air_compressor.air_flow"].mean()
    during = f.loc[(f.index > 1200) & (f.index < 1500), "air_compressor.air_flow"].mean()
    assert late < during - 20 and late < 90


# -- scenarios, schedules and ground truth -------------------------------------------------------


def test_inject_at_run_time_and_ground_truth_round_trip(line, tmp_path):
    sim = SimulatedLine(line, seed=1, start_ts=10_000.0, schedule=ModeSchedule.running())
    for _ in range(100):
        sim.step()
    injected = sim.inject(FaultScenario("pump_cavitation", start_s=10, end_s=70))
    assert injected.start_s == pytest.approx(110.0) and injected.asset == "product_pump"
    sim.step()
    assert sim.active_faults == []
    for _ in range(10):
        sim.step()
    assert [s.fault_type for s in sim.active_faults] == ["pump_cavitation"]
    path = write_ground_truth(tmp_path / "gt.jsonl", sim)
    records = read_ground_truth(path)
    assert records == sim.ground_truth()
    assert records[0]["start_ts"] == pytest.approx(10_110.0) and records[0]["end_ts"] == pytest.approx(10_170.0)
    assert {"fault_type", "asset", "signal", "start_s", "end_s", "start_ts", "end_ts"} <= set(records[0])
    assert FaultScenario.from_dict(records[0]) == injected


def test_ground_truth_of_scenario_lists_names_sensor_signal(tmp_path):
    scenarios = [FaultScenario("sensor_drift", start_s=5), FaultScenario("bearing_wear", start_s=9, end_s=20)]
    records = read_ground_truth(write_ground_truth(tmp_path / "gt.jsonl", scenarios, start_ts=100.0))
    assert records[0]["signal"] == "heat_tunnel.zone2_temperature" and records[0]["asset"] == "heat_tunnel"
    assert records[1]["signal"] is None and records[1]["end_ts"] == pytest.approx(120.0)


def test_bad_ground_truth_line_is_named(tmp_path):
    path = tmp_path / "gt.jsonl"
    path.write_text('{"fault_type": "air_leak"}\nnot json\n')
    with pytest.raises(ValueError, match=r"gt.jsonl:2"):
        read_ground_truth(path)


def test_bad_scenarios_are_refused_with_a_reason(line):
    with pytest.raises(ValueError, match="unknown fault_type 'gearbox'"):
        FaultScenario("gearbox", start_s=0)
    with pytest.raises(ValueError, match="product_pump"):
        FaultScenario("bearing_wear", start_s=0, asset="filler")
    with pytest.raises(ValueError, match="end_s"):
        FaultScenario("air_leak", start_s=100, end_s=50)
    with pytest.raises(ValueError, match="filler.no_such_signal"):
        SimulatedLine(line, scenarios=[FaultScenario("stuck_sensor", start_s=0, signal="filler.no_such_signal")])


def test_sensor_faults_work_on_any_signal(line):
    f = simulate_frame(line, seed=2, duration_s=1500, schedule=ModeSchedule.running(),
                       scenarios=[FaultScenario("stuck_sensor", start_s=900, signal="product_pump.flow")])
    assert f.loc[f.index >= 900, "product_pump.flow"].nunique() == 1
    assert f.loc[(f.index > 600) & (f.index < 900), "product_pump.flow"].nunique() > 100


def test_mode_schedule():
    s = ModeSchedule([(modes.STARTUP, 10), ("running", 100), (modes.CHANGEOVER, 20)], repeat=True)
    assert [s.mode_at(t) for t in (0, 9.9, 10, 109.9, 110, 130, 140)] == [
        modes.STARTUP, modes.STARTUP, modes.RUNNING, modes.RUNNING, modes.CHANGEOVER, modes.STARTUP, modes.RUNNING]
    assert s.product_at(s.segment_at(135).index) == 1 and s.product_at(1) == 0
    once = ModeSchedule.running()
    assert once.mode_at(0) is modes.STARTUP and once.mode_at(1e7) is modes.RUNNING
    default = ModeSchedule.default()
    assert {default.mode_at(t) for t in range(0, 20_000, 60)} == set(modes.ALL)
    with pytest.raises(ValueError, match="duration_s"):
        ModeSchedule([(modes.RUNNING, 0)])


def test_standard_runs_cover_the_catalogue(line):
    runs = standard_scenarios(seed=0)
    assert {r.scenarios[0].fault_type for r in runs} == set(load_faults(SIMULATED_FAULTS))
    assert len({r.seed for r in runs}) == len(runs)
    assert all(len(r.scenarios) == 1 and r.scenarios[0].start_s < r.duration_s for r in runs)
    normal = normal_runs(seed=1, hours=0.5)
    assert normal and all(not r.scenarios for r in normal)
    f = normal[0].frame(line)
    assert len(f) == 1800 and (f["fault"] == "normal").all()
