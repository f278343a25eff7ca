"""Shared fixtures: real brokers and servers on 127.0.0.1, stopped when the test ends."""

from __future__ import annotations

import pytest

from tests.support.brokers import start_broker


@pytest.fixture
def broker():
    """A real MQTT broker (Mosquitto when installed) on a free loopback port, for one test."""
    b = start_broker()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def sim_models():
    """A detector trained on three hours of simulated normal running (all modes), once per test session."""
    from factory_copilot.config import SIMULATED_LINE, load_line
    from factory_copilot.detect.evaluate import train_models
    from simulators import ModeSchedule, simulate_frame

    line = load_line(SIMULATED_LINE)
    history = simulate_frame(line, seed=3, duration_s=3 * 3600, schedule=ModeSchedule.default())
    return train_models(line, history, progress=False)
