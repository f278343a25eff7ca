"""A plant's own operating modes: declared in the line file, checked at load, used by checks, station, alarms, records."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml

from factory_copilot.alarms.design import mode_suppressed
from factory_copilot.config import SIMULATED_LINE, LineConfigError, load_line, parse_line
from factory_copilot.detect import DetectStation, SignalChecks
from factory_copilot.detect.operating import row_modes
from factory_copilot.records import Anomaly, Reading

# a mixing tank that names its own modes: a coded state signal, two production states, CIP cleaning
TANK = {
    "site": "south", "line": "mix-1", "sampling_interval_s": 1.0,
    "modes": {"signal": "tank.state", "codes": {0: "stopped", 1: "filling", 2: "mixing", 5: "cip"}},
    "assets": [{
        "id": "tank", "name": "Mixing tank", "signals": [
            {"name": "state", "unit": "code", "normal": [1, 2], "modes": {"stopped": [0, 0], "cip": [5, 5]},
             "source": {"opcua": "ns=2;s=tank.state"}},
            {"name": "level", "unit": "%", "normal": [20, 90], "limits": [5, 95], "modes": {"stopped": [0, 100], "cip": [0, 30]},
             "source": {"opcua": "ns=2;s=tank.level"}},
            {"name": "temperature", "unit": "degC", "normal": [40, 60], "limits": [30, 70],
             "modes": {"cip": [60, 85]}, "source": {"opcua": "ns=2;s=tank.temperature"}},
            {"name": "agitator_current", "unit": "A", "normal": [5, 9], "source": {"opcua": "ns=2;s=tank.agitator_current"}},
        ],
    }],
}


def tank(**changes) -> dict:
    d = copy.deepcopy(TANK)
    d.update(changes)
    return d


def test_plant_modes_load_with_production_derived_from_the_bands():
    line = parse_line(tank())
    assert line.mode_names() == ["stopped", "filling", "mixing", "cip"]
    # filling and mixing keep every signal's normal band: that is where the tank produces
    assert line.production_modes() == ["filling", "mixing"] and line.production_mode == "filling"
    assert line.mode_of(5) == "cip" and line.mode_of(2.0) == "mixing" and line.mode_of(3) is None and line.mode_of(1.5) is None
    assert "tank.state" not in line.signal_keys()  # a coded mode signal is no process signal
    assert parse_line(tank(modes={**TANK["modes"], "production": ["mixing"]})).production_modes() == ["mixing"]


def test_demo_line_declares_its_four_modes_and_running_as_production():
    line = load_line(SIMULATED_LINE)
    assert line.mode_names() == ["idle", "startup", "running", "changeover"] and line.production_modes() == ["running"]
    assert line.mode_key == "line.mode" and line.mode_of(3) == "changeover"


@pytest.mark.parametrize("change, path", [
    (lambda d: d["assets"][0]["signals"][1]["modes"].update({"clean": [0, 10]}),
     "assets[0].signals[1].modes.clean: unknown mode 'clean'; declared: stopped, filling, mixing, cip"),
    (lambda d: d["modes"].update({"signal": "tank.status"}), "modes.signal: unknown signal 'tank.status'"),
    (lambda d: d.update({"operating_point": ["tank.level", "tank.speed"]}), "operating_point[1]: unknown signal 'tank.speed'"),
    (lambda d: d["modes"].update({"production": ["running"]}), "modes.production: unknown mode 'running'"),
    (lambda d: d["modes"].update({"codes": {0: "stopped", 1: "stopped"}}), "mode 'stopped' has two codes"),
    (lambda d: d["modes"].update({"ranges": {"low": [0, 5]}}), "give either codes"),
    (lambda d: d.update({"mode_signal": {"asset": "tank", "signal": "state"}}), "mode_signal: replaced by 'modes:"),
    (lambda d: d.pop("modes"), "assets[0].signals[0].modes.stopped: unknown mode 'stopped'; the line declares no modes"),
])
def test_a_line_file_naming_an_unknown_mode_or_signal_is_refused_with_its_path(tmp_path, change, path):
    bad = tank()
    change(bad)
    f = tmp_path / "tank.yaml"
    f.write_text(yaml.safe_dump(bad))
    with pytest.raises(LineConfigError) as err:
        load_line(f)
    assert str(err.value).startswith(str(f)) and path in str(err.value)


def test_no_production_left_is_refused():
    bad = tank()
    for s in bad["assets"][0]["signals"][1:3]:
        s["modes"].update({"filling": [0, 100], "mixing": [0, 100]})
    with pytest.raises(LineConfigError, match="modes.production: no mode left where the line produces"):
        parse_line(bad)


def test_ranges_of_a_load_signal_tell_regimes_with_hysteresis_between_them():
    line = parse_line(tank(modes={"signal": "tank.level", "ranges": {"low": [20, 40], "high": [60, 90]}},
                           assets=[_no_bands()]))
    assert line.modes_by_range and line.production_modes() == ["low", "high"]
    assert line.context_keys() == ["tank.level"] and "tank.level" in line.signal_keys()
    assert line.mode_of(30) == "low" and line.mode_of(45) == "low" and line.mode_of(55) == "high"
    # from low, a level of 52 is still nearer low's reach (the midpoint plus 10 % of the gap)
    assert line.mode_of(51, "low") == "low" and line.mode_of(53, "low") == "high" and line.mode_of(49, "high") == "high"
    assert line.modes.regime_of(50) == "between low and high" and line.modes.regime_of(95) == "above high"
    with pytest.raises(LineConfigError, match="low and high overlap"):
        parse_line(tank(modes={"signal": "tank.level", "ranges": {"low": [20, 70], "high": [60, 90]}}, assets=[_no_bands()]))


def test_history_modes_read_by_name_code_or_mode_signal_and_unknown_ones_named():
    line = parse_line(tank())
    assert list(row_modes(line, pd.DataFrame({"mode": [1, 2, 5, "mixing"]}))) == ["filling", "mixing", "cip", "mixing"]
    assert list(row_modes(line, pd.DataFrame({"tank.state": [0.0, 1.0, 7.0, 2.0]}))) == ["stopped", "filling", "filling", "mixing"]
    with pytest.raises(ValueError, match=r"column 'mode', row 2: 'washing' is not a mode of the line"):
        row_modes(line, pd.DataFrame({"mode": ["mixing", "mixing", "washing"]}))
    with pytest.raises(ValueError, match="neither a 'mode' column nor the mode signal 'tank.state'"):
        row_modes(line, pd.DataFrame({"tank.level": [50.0]}))
    assert row_modes(parse_line(tank(modes=None, assets=[_no_bands()])), pd.DataFrame({"x": [1]})) is None


def _no_bands() -> dict:
    asset = copy.deepcopy(TANK["assets"][0])
    for s in asset["signals"]:
        s.pop("modes", None)
    return asset


def readings(ts: float, state: int, level: float, temperature: float = 50.0) -> list[Reading]:
    return [Reading(ts, "tank", "state", float(state)), Reading(ts, "tank", "level", level),
            Reading(ts, "tank", "temperature", temperature), Reading(ts, "tank", "agitator_current", 7.0)]


def test_station_and_checks_use_the_plant_modes(caplog):
    line = parse_line(tank())
    st = DetectStation(line, checks=SignalChecks(line, stuck_samples=20, settle_s=0))
    assert st.mode == "filling"  # before the first state reading: the first production mode
    out = []
    for t in range(60):  # cleaning: the tank is near empty and hot, the agitator current flat: all by design
        out += st.add(Reading(float(t), "tank", "state", 5.0))
        out += [a for r in readings(float(t), 5, 2.0, 80.0)[1:] for a in st.add(r)]
    assert st.mode == "cip"
    assert not [a for a in out if a.kind in ("limit", "stuck")], out[:3]
    out = []
    for t in range(60, 100):  # mixing: the flat agitator current is stuck now, the level limit applies
        out += [a for r in readings(float(t), 2, 2.0) for a in st.add(r)]
    stuck = [a for a in out if a.kind == "stuck"]
    assert stuck and stuck[0].mode == "mixing" and "in mixing" in stuck[0].message
    assert [a for a in out if a.kind == "limit" and a.signal == "level"]
    with caplog.at_level("WARNING"):
        st.add(Reading(100.0, "tank", "state", 9.0))
    assert st.mode == "mixing" and "tank.state=9.0 names none of the line's modes" in caplog.text


def test_alarm_suppression_follows_the_declared_production_modes():
    line = parse_line(tank())
    level_low = dict(ts=0.0, asset="tank", kind="limit", signal="level", value=2.0, score=2.0, threshold=5.0)
    assert mode_suppressed(line, Anomaly(**level_low, mode="cip"))  # the level has a band of its own in cip
    assert not mode_suppressed(line, Anomaly(**level_low, mode="mixing"))  # production: every limit applies
    temp = dict(ts=0.0, asset="tank", kind="limit", signal="agitator_current", value=12.0, score=12.0, threshold=9.0)
    assert not mode_suppressed(line, Anomaly(**temp, mode="cip"))  # no band of its own: never suppressed


def test_anomaly_mode_is_a_plain_name_through_json():
    a = Anomaly(ts=1.0, asset="tank", kind="multivariate", score=2.0, threshold=1.0, mode="cip")
    d = a.to_dict()
    assert d["mode"] == "cip" and type(d["mode"]) is str
    back = Anomaly.from_dict(d)
    assert back.mode == "cip" and back.mode.value == "cip"
    assert Anomaly.from_dict({**d, "mode": None}).mode == "running"  # records from before modes were named


def test_checks_learn_noise_from_production_rows_only():
    line = parse_line(tank())
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"tank.level": 50 + rng.normal(size=400), "tank.temperature": 50 + rng.normal(size=400),
                      "tank.agitator_current": np.r_[np.full(200, 0.0), 7 + rng.normal(size=200)],
                      "mode": ["stopped"] * 200 + ["mixing"] * 200})
    checks = SignalChecks(line).learn_noise(X)
    # flat while stopped is no reason to exempt the agitator from the stuck check
    assert "tank.agitator_current" not in checks.stuck_exempt


def test_an_alarm_in_a_plant_mode_is_a_valid_mqtt_payload():
    from factory_copilot.publish import payloads
    from factory_copilot.records import Alarm, AlarmState, Priority

    anomaly = Anomaly(ts=1.0, asset="tank", kind="multivariate", score=2.0, threshold=1.0, mode="cip")
    alarm = Alarm("tank.fault", "tank", "fault", AlarmState.ACTIVE_UNACK, Priority.HIGH, "departure", 1.0, 1.0, anomaly)
    body = payloads.alarm_state(alarm, "south", "mix-1")
    assert payloads.problems(body) == [] and body["anomaly"]["mode"] == "cip"
    body["anomaly"]["mode"] = ""
    assert payloads.problems(body)  # a mode has a name
