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
