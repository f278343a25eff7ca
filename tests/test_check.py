"""``factory-copilot check`` as a plant engineer runs it before the first start: its own process, a real broker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import yaml

from factory_copilot.config import SIMULATED_LINE, MqttConnection, load_line
from factory_copilot.detect import save_detector
from factory_copilot.plumbing.broker import free_port
from tests.test_never_blind import Gateway


def mqtt_line_file(broker, tmp_path):
    data = load_line(SIMULATED_LINE).model_dump(mode="json")
    data.pop("opcua")
    for a in data["assets"]:
        for s in a["signals"]:
            s["source"].pop("opcua")
    data["mqtt"] = MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol).model_dump(mode="json")
    data["service"] = {**data["service"], "state_dir": "state", "health_port": free_port()}
    data["knowledge"] = {}
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, load_line(path)


async def test_check_names_the_silent_signal_the_stray_topic_and_a_missing_detector(broker, tmp_path, sim_models):
    path, line = mqtt_line_file(broker, tmp_path)
    cmd = [sys.executable, "-m", "factory_copilot.cli", "--log-level", "ERROR", "check", "--config", str(path),
           "--listen", "4"]
    keys = line.signal_keys(include_mode=True)
    silent = "filler.fill_weight"
    gateway = Gateway(broker)
    feeding = asyncio.Event()

    async def feed() -> None:
        while not feeding.is_set():
            for key in keys:
                if key != silent:
                    await asyncio.to_thread(gateway.send, line.signal(key).source.mqtt.topic,
                                            json.dumps({"value": 1.0, "ts": time.time()}))
            # the usual mistake: a topic typed differently in the gateway than in the line file
            await asyncio.to_thread(gateway.send, "factory/demo-plant/packaging-1/filler/fill_wieght",
                                    json.dumps({"value": 500.0}))
            await asyncio.sleep(0.5)

    task = asyncio.create_task(feed())
    try:
        first = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120)
        out = first.stdout
        assert first.returncode == 1, out
        assert "[FAIL] detector:" in out and "run `factory-copilot train` first" in out
        assert f"[FAIL] source mqtt: 1 of {len(keys)} signals sent nothing in 4 s: {silent}" in out
        assert "filler/fill_wieght" in out and "no signal maps" in out
        assert "Traceback" not in first.stderr

        save_detector(path.parent / "state" / "detector.joblib", sim_models)
        data = yaml.safe_load(path.read_text())
        for a in data["assets"]:  # the gateway is right after all: the line file follows it
            for s in a["signals"]:
                if f"{a['id']}.{s['name']}" == silent:
                    s["source"]["mqtt"]["topic"] = "factory/demo-plant/packaging-1/filler/fill_wieght"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        second = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stdout
        assert "[ok  ] detector" in second.stdout and "check: ready to run" in second.stdout
    finally:
        feeding.set()
        await task
        gateway.close()
