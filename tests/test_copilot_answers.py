"""Ask-the-copilot without a model: value questions, "why X rather than Y", what to do, and the rest, from the alarm's own asset."""

from __future__ import annotations

import pytest

from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.copilot import Copilot
from tests.support.copilot import alarm_for, ramp

LINE = load_line(SIMULATED_LINE)
LABEL = "Runbook search (no model): "


@pytest.fixture
def cavitation() -> Copilot:
    """A pump cavitating: suction pressure, flow and discharge pressure falling, vibration rising; the tunnel hot too."""
    cop = Copilot(LINE)
    for r in (ramp("product_pump.suction_pressure", 1.05, 0.45) + ramp("product_pump.flow", 110, 80)
              + ramp("product_pump.discharge_pressure", 3.9, 3.1) + ramp("product_pump.vibration", 2.0, 5.5)
              + ramp("product_pump.filter_dp", 0.12, 0.12) + ramp("heat_tunnel.zone1_temperature", 180, 181)):
        cop.observe(r)
    cop.explain_now(alarm_for("product_pump", alarm_id="A-cav"))
    return cop


async def test_a_value_question_gets_the_value_with_its_band_and_trend(cavitation):
    turn = await cavitation.ask("A-cav", "what is the current suction pressure?")
    assert turn.origin == "runbook" and turn.text.startswith(LABEL)
    assert "product_pump.suction_pressure is 0.45" in turn.text and "bar now, below its normal band 0.8-1.3 bar" in turn.text
    assert "falling by 0.06 bar per minute over the last 10 min" in turn.text
    assert "RB-" not in turn.text  # a value, not a list of causes


async def test_a_value_of_another_asset_is_found_by_asset_and_name(cavitation):
    turn = await cavitation.ask("A-cav", "how hot is heat tunnel zone1 temperature now?")
    assert "heat_tunnel.zone1_temperature is 181" in turn.text


async def test_why_one_cause_rather_than_another_compares_their_evidence(cavitation):
    turn = await cavitation.ask("A-cav", "Why cavitation rather than a clogged filter?")
    text = turn.text
    assert text.startswith(LABEL + "Pump cavitation fits the evidence better.")
    assert "expects product_pump.suction_pressure low and it is 0.45" in text and "bar low, falling" in text
    assert "Clogged pump inlet filter" in text and "product_pump.filter_dp high, which it is not" in text
    # asked the other way round, the evidence still decides
    other = await cavitation.ask("A-cav", "why not clogged filter?")
    assert "Pump cavitation fits the evidence better" in other.text


async def test_what_to_check_comes_from_the_alarms_own_asset_runbook(cavitation):
    turn = await cavitation.ask("A-cav", "what should I check first?")
    assert "From RB-PUMP-002#checks" in turn.text and "RB-TUNNEL" not in turn.text
    fix = await cavitation.ask("A-cav", "how do I fix it?")
    assert "From RB-PUMP-002#actions" in fix.text


async def test_anything_else_says_what_it_can_answer(cavitation):
    turn = await cavitation.ask("A-cav", "tell me a joke")
    assert turn.text.startswith(LABEL + "without the model I can answer about Product transfer pump only")
    assert "current value of a signal" in turn.text and "rather than" in turn.text and "check or do first" in turn.text


async def test_a_rate_unit_reads_per_minute_not_per_min_per_min(cavitation):
    turn = await cavitation.ask("A-cav", "how is the flow doing?")  # "how" asks for the value here, not the steps
    assert "product_pump.flow is 80" in turn.text and "L/min now, below its normal band 95-125 L/min" in turn.text
    assert "falling by 3 L/min per minute" in turn.text and "L/min/min" not in turn.text


async def test_a_word_of_a_signal_name_finds_the_alarms_own_signals(cavitation):
    turn = await cavitation.ask("A-cav", "what is the pressure?")
    assert "product_pump.suction_pressure is 0.45" in turn.text and "product_pump.discharge_pressure is 3.1" in turn.text
    assert "heat_tunnel" not in turn.text


async def test_what_to_check_on_a_named_signal_gets_the_checks_not_the_value(cavitation):
    turn = await cavitation.ask("A-cav", "what should I check on the suction pressure?")
    assert "From RB-PUMP-002#checks" in turn.text
