"""The line file: the simulated line's example loads, and mistakes are named by their path in the file."""

import copy

import pytest
import yaml

from factory_copilot.catalogue import load_faults
from factory_copilot.config import SIMULATED_FAULTS, SIMULATED_LINE, LineConfigError, load_line, parse_line


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
    assert pump_flow.normal_for("idle") != pump_flow.normal_for("running")


def test_every_catalogue_fault_names_signals_of_the_line():
    line = load_line(SIMULATED_LINE)
    for fault in load_faults(SIMULATED_FAULTS).values():
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


def test_one_node_or_topic_field_read_by_two_signals_is_named_with_both_paths(raw):
    bad = copy.deepcopy(raw)
    first, second = bad["assets"][1]["signals"][0], bad["assets"][2]["signals"][1]
    second["source"]["opcua"] = first["source"]["opcua"]
    bad["assets"][3]["signals"][0]["source"]["mqtt"] = dict(bad["assets"][3]["signals"][1]["source"]["mqtt"])
    with pytest.raises(LineConfigError) as err:
        parse_line(bad, "plant.yaml")
    problems = " ".join(err.value.problems)
    assert (f"assets[2].signals[1].source.opcua: node {first['source']['opcua']!r} is already read by "
            "assets[1].signals[0].source.opcua") in problems
    assert "assets[3].signals[1].source.mqtt: topic" in problems and "already read by assets[3].signals[0].source.mqtt" in problems


def test_several_signals_may_share_a_topic_with_their_own_fields(raw):
    data = copy.deepcopy(raw)
    for i, s in enumerate(data["assets"][2]["signals"]):
        s["source"]["mqtt"] = {"topic": "gw/pump", "field": f"data.s{i}"}
    line = parse_line(data)
    assert len({line.signal(f"{data['assets'][2]['id']}.{s['name']}").source.mqtt.topic
                for s in data["assets"][2]["signals"]}) == 1


def test_a_mode_signal_that_is_not_a_signal_is_refused(raw):
    bad = copy.deepcopy(raw)
    bad["modes"]["signal"] = "line.operating_mode"
    with pytest.raises(LineConfigError, match=r"modes.signal: unknown signal 'line.operating_mode'"):
        parse_line(bad, "plant.yaml")
    old = copy.deepcopy(raw)
    old.pop("modes")
    old["mode_signal"] = None  # the key the first line files had, empty: accepted and ignored
    for a in old["assets"]:
        for s in a["signals"]:
            s.pop("modes", None)
    assert parse_line(old).modes is None


def test_sources_serve_each_signal_from_the_first_kind_it_names(raw):
    line = parse_line(raw)
    assert set(line.sources()) == {"opcua"}  # every signal has both; OPC UA first
    mixed = copy.deepcopy(raw)
    for s in mixed["assets"][5]["signals"]:
        del s["source"]["opcua"]
    served = parse_line(mixed).sources()
    assert set(served["mqtt"]) == {f"{mixed['assets'][5]['id']}.{s['name']}" for s in mixed["assets"][5]["signals"]}
    assert not set(served["mqtt"]) & set(served["opcua"])
    mqtt_only = copy.deepcopy(raw)
    del mqtt_only["opcua"]
    for a in mqtt_only["assets"]:
        for s in a["signals"]:
            del s["source"]["opcua"]
    assert set(parse_line(mqtt_only).sources()) == {"mqtt"}
    forced = copy.deepcopy(raw)
    forced["service"] = {"source": "mqtt"}
    assert set(parse_line(forced).sources()) == {"mqtt"}


def test_fingerprint_ignores_where_a_signal_is_read_from(raw):
    a = parse_line(raw)
    moved = copy.deepcopy(raw)
    moved["assets"][2]["signals"][0]["source"] = {"mqtt": {"topic": "gw/7/pump", "field": "data.speed"}}
    moved["assets"][2]["signals"][1]["description"] = "renamed in the HMI"
    assert parse_line(moved).fingerprint() == a.fingerprint()


def test_flow_and_criticality_of_the_simulated_line():
    line = load_line(SIMULATED_LINE)
    assert line.downstream("infeed_conveyor") == {"product_pump", "filler", "heat_tunnel"}
    assert line.downstream("air_compressor") == {"filler", "heat_tunnel"}
    assert line.downstream("heat_tunnel") == set()
    assert line.asset("product_pump").consequence.name == "HIGH"
    assert line.asset("air_compressor").consequence.name == "MEDIUM"


def test_a_bad_flow_entry_is_named_by_its_path(raw):
    bad = copy.deepcopy(raw)
    bad["assets"][2]["feeds"] = ["filler", "fillr", "product_pump", "filler"]
    bad["assets"][1]["criticality"] = "vital"
    with pytest.raises(LineConfigError) as err:
        parse_line(bad, "plant.yaml")
    problems = err.value.problems
    assert any(p.startswith("assets[1].criticality: unknown priority 'vital'") for p in problems)
    bad["assets"][1]["criticality"] = "high"
    with pytest.raises(LineConfigError) as err:
        parse_line(bad, "plant.yaml")
    assert err.value.problems == [
        "assets[2].feeds[1]: no asset 'fillr' on this line (assets: line, infeed_conveyor, product_pump, filler, "
        "heat_tunnel, air_compressor)",
        "assets[2].feeds[2]: asset 'product_pump' cannot feed itself",
        "assets[2].feeds[3]: 'filler' is listed twice",
    ]


def test_criticality_falls_back_to_the_older_priority_and_a_recycle_loop_is_allowed(raw):
    data = copy.deepcopy(raw)
    for asset in data["assets"]:
        asset.pop("criticality", None)
    data["assets"][3]["priority"] = "critical"
    data["assets"][3]["feeds"] = ["product_pump"]  # a return line: filler back to the pump
    line = parse_line(data)
    assert line.asset("filler").consequence.name == "CRITICAL"
    assert line.asset("infeed_conveyor").consequence.name == "MEDIUM"
    assert "product_pump" in line.downstream("product_pump")


def test_alarm_design_does_not_touch_the_trained_model(raw):
    a = parse_line(raw)
    redesigned = copy.deepcopy(raw)
    redesigned["assets"][1]["criticality"] = "critical"
    redesigned["assets"][1]["feeds"] = []
    redesigned["assets"][2]["operator_position"] = "pumps"
    redesigned["assets"][2]["signals"][0]["priority"] = "critical"
    assert parse_line(redesigned).fingerprint() == a.fingerprint()


def test_store_url_must_be_postgresql_and_without_a_password(raw):
    line = parse_line({**raw, "store": {"url": "postgresql://copilot@db.site:5432/history"}})
    assert line.store.url == "postgresql://copilot@db.site:5432/history"
    assert parse_line(raw).store is None  # SQLite under service.state_dir
    with pytest.raises(LineConfigError, match=r"store\.url: 'mysql://db/history' is not a PostgreSQL URL"):
        parse_line({**raw, "store": {"url": "mysql://db/history"}}, "plant.yaml")
    with pytest.raises(LineConfigError, match=r"store\.url: the URL holds a password"):
        parse_line({**raw, "store": {"url": "postgresql://copilot:secret@db/history"}}, "plant.yaml")
    with pytest.raises(LineConfigError, match=r"store\.host: Extra inputs are not permitted"):
        parse_line({**raw, "store": {"url": "postgresql://db/history", "host": "x"}}, "plant.yaml")
