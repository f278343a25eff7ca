"""The one-command demo as a user runs it: its own Mosquitto, the line as a Sparkplug B edge node, 120 s headless.

Beside it, `factory-copilot alerts tail` as docs/mqtt.md shows it, and an MQTT 5 client set up
exactly as the shipped Node-RED flow's broker and `mqtt in` nodes (seeds/node-red-flow.json),
both receive the demo's alarm; the demo's console shows no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from factory_copilot.config import SEEDS_DIR
from factory_copilot.plumbing.broker import MOSQUITTO, broker_reachable, free_port
from tests.support.node_red import route
from tests.support.output import Lines

FLOW = json.loads((SEEDS_DIR / "node-red-flow.json").read_text())
CLI = [sys.executable, "-m", "factory_copilot.cli"]


class NodeRedFlowClient:
    """The shipped flow's MQTT side: its broker node's settings, its `mqtt in` nodes' topics and QoS, its routing."""

    def __init__(self, port: int, user: tuple[str, str]):
        broker = next(n for n in FLOW if n["type"] == "mqtt-broker")
        self.inputs = [n for n in FLOW if n["type"] == "mqtt in" and n["broker"] == broker["id"]]
        assert broker["protocolVersion"] == "5"
        self.alarms: list[dict] = []
        self.connack: list = []
        self.got = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=broker["clientid"] or "", protocol=paho.MQTTv5)
        self.client.username_pw_set(*user)  # what the flow's broker node's Security tab holds
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        self.client.connect(broker["broker"] if port is None else "127.0.0.1", port, keepalive=int(broker["keepalive"]),
                            clean_start=bool(broker["cleansession"]), properties=props)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties=None) -> None:
        self.connack.append(reason)
        client.subscribe([(n["topic"], int(n["qos"])) for n in self.inputs])

    def _on_message(self, client, userdata, msg) -> None:
        node = next(n for n in self.inputs if paho.topic_matches_sub(n["topic"], msg.topic))
        # the flow's own routing: what reaches one of its ringing nodes (one debug node per priority)
        reached = route(FLOW, node["id"], msg.topic, bytes(msg.payload))
        if node["id"] == "fc_alarms_in" and any(n["name"].endswith(" alarm") for n in reached):
            self.alarms.append(json.loads(msg.payload))
            self.got.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.slow
@pytest.mark.skipif(MOSQUITTO is None, reason="the demo's broker is Mosquitto (scripts/bootstrap.sh installs it)")
def test_headless_demo_on_sparkplug_for_120_s_alerts_tail_and_the_node_red_flow_get_its_alarm(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen(
        CLI + ["demo", "--headless", "--duration", "120", "--source", "sparkplug", "--mqtt-port", str(port),
               "--state-dir", str(tmp_path / "demo"), "--train-hours", "1", "--health-port", str(free_port()),
               "--no-model"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    console = Lines(demo)
    tail = flow = None
    try:
        announced = console.wait_for(f"MQTT broker: 127.0.0.1:{port} (mosquitto)", 60)
        assert broker_reachable("127.0.0.1", port)
        # the demo's broker is configured as broker init configures a site's: nobody gets in without a password
        assert "allow_anonymous false" in (tmp_path / "demo" / "mosquitto" / "mosquitto.conf").read_text()
        users = {u["name"]: u["password"] for u in
                 yaml.safe_load((tmp_path / "demo" / "mosquitto" / "credentials.yaml").read_text())["users"]}
        # as the demo prints it (on this demo's port, as its reader account)
        tail_cmd = announced[announced.index("factory-copilot alerts tail") + len("factory-copilot "):].split()
        assert tail_cmd[-4:] == ["--username", "viewer", "--password", users["viewer"]]
        tail_proc = subprocess.Popen(CLI + tail_cmd + ["--host", "127.0.0.1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        tail = Lines(tail_proc)
        flow = NodeRedFlowClient(port, ("node-red", users["node-red"]))
        injected = console.wait_for("Injected", 150)
        assert "pump" in injected or "on " in injected
        assert flow.got.wait(120), "the Node-RED flow's alarm input got no alarm"
        assert not flow.connack[0].is_failure  # MQTT 5 accepted: the flow connects as shipped
        alarm = flow.alarms[0]
        assert alarm["schema"] == "alarm/1" and alarm["state"] == "active_unacknowledged"
        line = tail.wait_for(alarm["alarm_id"], 30)
        assert alarm["priority"].upper() in line and "INVALID" not in "\n".join(tail.lines)
        demo.wait(240)
    finally:
        for proc in (demo, tail.proc if tail else None):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        if flow:
            flow.close()
    output = "\n".join(console.lines)
    assert demo.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[output.index("Traceback") - 500:][:4000]
    summary = json.loads(output[output.index("{\n"):])
    assert summary["readings"] >= 36 * 100 and summary["alarms_raised"]  # 36 signals at 1 Hz for 120 s
    assert summary["published"]["acked"] >= 1
    # the broker was the demo's own and is gone with it; its persistence sits in the demo's state folder
    assert not broker_reachable("127.0.0.1", port)
    assert (tmp_path / "demo" / "mosquitto" / "mosquitto.conf").exists()
    assert any(Path(tmp_path / "demo" / "mosquitto").rglob("*.db"))  # persistence in data/, as broker init writes it
