"""The demo's command-line options that need no demo run: its OPC UA port, a fresh start's broker (issue 25)."""

from __future__ import annotations

import socket
import subprocess
import sys

import asyncio
import json
from types import SimpleNamespace

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from factory_copilot.cli import build_parser
from factory_copilot.plumbing.broker import MOSQUITTO, free_port
from factory_copilot.publish import Topics
from simulators.demo import demo_broker, demo_opcua_port, demo_user, forget_last_run
from tests.support.mqtt import Listener


def test_the_demo_serves_opcua_on_the_port_asked_for():
    args = build_parser().parse_args(["demo", "--opcua-port", "4841"])
    assert args.opcua_port == 4841
    assert build_parser().parse_args(["demo"]).opcua_port is None
    port = free_port()
    assert demo_opcua_port(port) == port
    assert 1024 <= demo_opcua_port(None) <= 65535


def test_a_taken_opcua_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"--opcua-port {port}: 127.0.0.1:{port} is taken"):
            demo_opcua_port(port)
        run = subprocess.run([sys.executable, "-m", "factory_copilot.cli", "demo", "--headless", "--no-model",
                              "--opcua-port", str(port), "--state-dir", str(tmp_path / "demo")],
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert f"--opcua-port {port}" in run.stderr and "is taken" in run.stderr
    assert not (tmp_path / "demo").exists(), "nothing started, nothing written"



# ---- a fresh demo starts without the last run's alarms ---------------------------------------------------------------


async def _retain(port: int, login, messages: list[tuple[str, dict]]) -> None:
    """Publish retained, QoS 1, as the demo's service does; returns once the broker has acknowledged each."""
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.username_pw_set(*login)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for topic, body in messages:
            info = c.publish(topic, json.dumps(body), qos=1, retain=True)
            await asyncio.to_thread(info.wait_for_publish, 10)  # the PUBACK: the broker holds it
            assert info.is_published(), topic
    finally:
        c.disconnect()
        c.loop_stop()


async def _active_alarms_on_subscribing(port: int, login, topics: Topics) -> list[str]:
    """The alarm topics a subscriber is handed as active, with the retained status as barrier.

    The broker answers one connection's subscriptions in order: once the status arrives, every retained alarm has too.
    """
    probe = await Listener(SimpleNamespace(host="127.0.0.1", port=port, protocol="5"),
                           [topics.alarm("+", "+")], login=login).ready()
    probe.client.subscribe(topics.status(), 1)
    seen = []
    try:
        while (msg := await probe.next()).topic != topics.status():
            seen.append(msg)
    finally:
        probe.close()
    return [m.topic for m in seen if m.payload]  # an empty retained payload is a cleared alarm


async def test_a_fresh_demo_hands_no_subscriber_the_last_runs_alarms(tmp_path):
    """Issue 25: every demo after the first began by clearing the last run's retained alarms, seen for ~2 s."""
    if MOSQUITTO is None:
        pytest.skip("the demo's broker keeps retained messages only with Mosquitto")
    state = tmp_path / "demo"
    state.mkdir()
    topics = Topics("demo-plant", "packaging-1")
    alarm = topics.alarm("product_pump", "product_pump.flow-rate")
    status = (topics.status(), {"state": "running"})

    async def demo_run(fresh: bool, retain: list[tuple[str, dict]]) -> list[str]:
        """One demo start as run_demo does it; the service's retained messages; what a viewer then sees as active."""
        if fresh:
            forget_last_run(state)
        broker, port, site = demo_broker(free_port(), state)
        try:
            await _retain(port, demo_user(site, "factory-copilot"), retain)
            return await _active_alarms_on_subscribing(port, demo_user(site, "viewer"), topics)
        finally:
            broker.stop()  # Mosquitto writes its persistence on SIGTERM

    high = (alarm, {"state": "active_unacknowledged", "severity": "HIGH"})
    assert await demo_run(fresh=True, retain=[high, status]) == [alarm]
    # --keep-state keeps the broker's retained alarm (the service's own start then reconciles it)
    assert await demo_run(fresh=False, retain=[status]) == [alarm]
    # a fresh run's broker starts without the last run's alarm
    assert await demo_run(fresh=True, retain=[status]) == []
