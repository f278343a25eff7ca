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


async def test_check_logs_in_to_the_broker_alarms_go_to_as_the_service_does(tmp_path, sim_models):
    """Issue 25: with a wrong mqtt.password `check` said "[ok] ... check: ready to run" (exit 0): the line reads OPC UA,
    so the broker its alarms go to was never tried. And its FAIL lines gave no fix, the detector line came twice."""
    import shutil

    import pytest

    from factory_copilot.plumbing.broker import MosquittoBroker
    from factory_copilot.plumbing.broker_site import Account, write_site
    from tests.support.opcua import readings_for, start_server

    if shutil.which("mosquitto") is None:
        pytest.skip("needs Mosquitto (scripts/bootstrap.sh installs it)")
    site = write_site(tmp_path / "mosquitto", [Account("factory-copilot", "service", "service-secret-1")],
                      bind="127.0.0.1", port=free_port(), tls=True, hostnames=["127.0.0.1", "localhost"])
    broker = MosquittoBroker(site=site).start()
    line = load_line(SIMULATED_LINE)
    server = await start_server(line)
    keys = line.signal_keys(include_mode=True)
    feeding = asyncio.Event()

    async def feed() -> None:
        while not feeding.is_set():
            await server.write(readings_for(keys, value=2.0))
            await asyncio.sleep(0.3)

    task = asyncio.create_task(feed())
    try:
        data = line.model_dump(mode="json")
        data["opcua"]["endpoint"] = server.endpoint
        data["mqtt"] = {"host": "127.0.0.1", "port": site.port, "tls": True, "ca_file": str(site.ca_file),
                        "username": "factory-copilot", "password": "not-the-password"}
        data["service"] = {**data["service"], "state_dir": "state", "health_port": free_port(), "source": "opcua"}
        data["knowledge"] = {}
        path = tmp_path / "line.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        save_detector(tmp_path / "state" / "detector.joblib", sim_models)
        cmd = [sys.executable, "-m", "factory_copilot.cli", "check", "--config", str(path), "--seconds", "3"]
        wrong = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120)
        out = wrong.stdout
        assert wrong.returncode == 1, out
        assert "[ok  ] source opcua: connected; all" in out  # the sources are fine ...
        fail = next(ln for ln in out.splitlines() if ln.startswith("[FAIL] alerts broker"))  # ... the alarms' broker is not
        assert f"127.0.0.1:{site.port} (TLS)" in fail and "refused the service's login as 'factory-copilot'" in fail
        assert " — fix: " in fail and "mqtt.password" in fail and "check: FAILED" in out
        assert (out + wrong.stderr).count(sim_models.describe()) == 1, out + wrong.stderr  # the detector line once

        data["mqtt"]["password"] = "service-secret-1"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        right = await asyncio.to_thread(subprocess.run, cmd[:-2] + ["--listen", "3"], capture_output=True, text=True,
                                        timeout=120)
        assert right.returncode == 0, right.stdout
        assert f"[ok  ] alerts broker 127.0.0.1:{site.port} (TLS): logged in as 'factory-copilot'" in right.stdout
        assert "check: ready to run" in right.stdout
    finally:
        feeding.set()
        await task
        await server.stop()
        broker.stop()
