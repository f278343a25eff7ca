"""The line file: the simulated line's example loads, and mistakes are named by their path in the file."""

import copy

import pytest
import yaml

from factory_copilot.catalogue import load_faults
from factory_copilot.config import SIMULATED_LINE, LineConfigError, load_line, parse_line
from factory_copilot.records import Mode


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(SIMULATED_LINE.read_text())


def test_simulated_line_loads_with_its_assets_and_signals():
    line = load_line(SIMULATED_LINE)
    assert len(line.assets) >= 5
    assert len(line.signal_keys()) >= 30
    assert "line.mode" not in line.signal_keys()
    pump_flow = line.signal("product_pump.flow")
    assert pump_flow.unit == "L/min"
    assert pump_flow.normal_for(Mode.IDLE) != pump_flow.normal_for(Mode.RUNNING)


def test_every_catalogue_fault_names_signals_of_the_line():
    line = load_line(SIMULATED_LINE)
    for fault in load_faults().values():
        line.asset(fault.asset)
        for key in fault.signals:
            line.signal(key)


def test_missing_field_is_reported_with_its_path(raw):
    bad = copy.deepcopy(raw)
    del bad["assets"][2]["signals"][0]["unit"]
    with pytest.raises(LineConfigError) as err:
        parse_line(bad, "plant.yaml")
    assert "assets[2].signals[0].unit: Field required" in str(err.value)
    assert str(err.value).startswith("plant.yaml")


def test_every_mistake_is_reported_not_only_the_first(raw):
    bad = copy.deepcopy(raw)
    bad["assets"][1]["signals"][1]["normal"] = [5, 1]
    bad["assets"][3]["signals"][2]["source"] = {}
    bad["assets"][0]["priority"] = "urgentish"
    with pytest.raises(LineConfigError) as err:
        parse_line(bad, "plant.yaml")
    problems = err.value.problems
    assert any(p.startswith("assets[1].signals[1].normal: low 5.0 is above high 1.0") for p in problems)
    assert any(p.startswith("assets[3].signals[2].source") for p in problems)
    assert any(p.startswith("assets[0].priority") for p in problems)


def test_duplicate_signal_and_unreadable_files_are_named(raw, tmp_path):
    bad = copy.deepcopy(raw)
    bad["assets"][1]["signals"].append(copy.deepcopy(bad["assets"][1]["signals"][0]))
    with pytest.raises(LineConfigError, match="appears twice"):
        parse_line(bad)
    with pytest.raises(LineConfigError, match="cannot read"):
        load_line(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("site: [unclosed\n")
    with pytest.raises(LineConfigError, match="broken.yaml: not valid YAML"):
        load_line(broken)


def test_fingerprint_follows_signals_not_connection(raw):
    a = parse_line(raw)
    moved = copy.deepcopy(raw)
    moved["opcua"]["endpoint"] = "opc.tcp://10.0.0.5:4840/"
    assert parse_line(moved).fingerprint() == a.fingerprint()
    changed = copy.deepcopy(raw)
    changed["assets"][1]["signals"][0]["normal"] = [0.5, 1.5]
    assert parse_line(changed).fingerprint() != a.fingerprint()
