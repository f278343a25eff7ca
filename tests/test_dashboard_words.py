"""The dashboard's plant words: units as an operator writes them, signals by their line-file names (issue 25)."""

from __future__ import annotations

from dashboards.words import plant_units, signal_label, signal_words
from factory_copilot.config import SIMULATED_LINE, load_line


def test_ascii_units_read_as_the_plant_writes_them_and_nothing_else_changes():
    assert plant_units("mostly discharge temperature (normal 72–92 degC)") == "mostly discharge temperature (normal 72–92 °C)"
    assert plant_units("degC") == "°C" and plant_units("3.2 m3/min, 40 Nm3/h") == "3.2 m³/min, 40 Nm³/h"
    assert plant_units("valve at 45 deg.") == "valve at 45 °."
    # a tag, a word or a unit inside another word stays as it is
    for text in ("heat_tunnel.degC", "degCx", "degree", "m3/minute", "bar", "", "mm/s"):
        assert plant_units(text) == text


def test_a_tag_reads_as_the_line_file_names_its_asset_and_signal():
    line = load_line(SIMULATED_LINE)
    assert signal_label(line, "heat_tunnel.zone2_temperature") == "Shrink heat tunnel · zone2 temperature"
    assert signal_label(line, "nowhere.zone2_temperature") == "nowhere.zone2_temperature"  # unknown: as it came
    assert signal_label(line, "heat_tunnel.nothing") == "heat_tunnel.nothing"
    assert signal_words("mode", "operating mode: 0 idle, 1 start-up") == "operating mode"
    assert signal_words("fill_weight") == "fill weight"
