"""`factory-copilot run --config LINE.yaml` as a plant runs it: its own process, a real OPC UA server and broker,
JSON log lines, GET /health, the retained status topic, a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from factory_copilot.plumbing.broker import free_port
from factory_copilot.config import SIMULATED_LINE, MqttConnection, load_line
from factory_copilot.detect import save_detector
from factory_copilot.detect.evaluate import train_models
from factory_copilot.publish import Topics, payloads
from factory_copilot.records import Quality, Reading
from simulators import ModeSchedule, simulate_frame
from tests.support.mqtt import Listener
from tests.support.opcua import endpoint_on, start_server


def health(port: int) -> tuple[int, dict] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None  # not listening yet


async def until_healthy(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> dict:
    """Poll /health (another process: there is no event to await) until it says 200."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, "the service exited"
        answer = await asyncio.to_thread(health, port)
        if answer and answer[0] == 200:
            return answer[1]
        assert time.monotonic() < deadline, f"not healthy in time: {answer}"
        await asyncio.sleep(0.2)


@pytest.fixture
def line_file(broker, tmp_path):
    base, opcua_port = load_line(SIMULATED_LINE), free_port()
    line = base.model_copy(update={
        "opcua": base.opcua.model_copy(update={"endpoint": endpoint_on(opcua_port)}),
        "mqtt": MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol),
        "service": base.service.model_copy(update={"state_dir": "state", "health_port": free_port()}),
    })
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(line.model_dump(mode="json"), sort_keys=False))
    return path, load_line(path), opcua_port


async def test_run_serves_the_line_file_with_json_logs_health_and_status(broker, line_file, tmp_path):
    path, line, opcua_port = line_file
    cmd = [sys.executable, "-m", "factory_copilot.cli", "--log-json", "run", "--config", str(path)]

    # no trained detector yet: one clear error, not a traceback
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 2
    assert "no model file; run `factory-copilot train` first" in first.stderr and "Traceback" not in first.stderr

    history = simulate_frame(line, seed=3, duration_s=1800, schedule=ModeSchedule.running(startup_s=300))
    save_detector(path.parent / "state" / "detector.joblib", train_models(line, history, progress=False))
    server = await start_server(line, port=opcua_port)

    async def plant() -> None:
        """The line runs: its last healthy row, stamped now, twice a second (a server that only ever served its
        initial values went stale after a minute, and the test then raced the staleness to see one healthy answer)."""
        row = history.iloc[-1]
        values = {key: float(row[key]) for key in server.signal_keys if key in row.index}
        values[line.mode_key] = float(line.modes.code_of(row["mode"]))  # the mode signal serves its code
        assert set(values) == set(server.signal_keys)  # every node served: one stale node is a degraded source
        while True:
            now = time.time()
            await server.write([Reading(now, *key.split(".", 1), v, Quality.GOOD) for key, v in values.items()])
            await asyncio.sleep(0.5)

    feed = asyncio.create_task(plant())
    topics = Topics(line.site, line.line)
    status = await Listener(broker, [topics.status()]).ready()
    log_path = tmp_path / "service.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stderr=log, stdout=subprocess.DEVNULL)
    try:
        online = await status.until(lambda m: m.payload and m.body["state"] == "online", timeout=60)
        assert payloads.problems(online.body) == []
        # at once and every 30 s the status again, with the service's /health reasons: what a site page shows
        beat = await status.until(lambda m: m.payload and "health" in m.body, timeout=30)
        assert payloads.problems(beat.body) == [] and beat.body["every_s"] == 30
        assert beat.body["health"] in ("ok", "degraded") and isinstance(beat.body["reasons"], list)
        body = await until_healthy(line.service.health_port, proc)
        assert (body["site"], body["line"]) == (line.site, line.line)
        assert body["collect"]["connected"] and body["publish"]["online"]

        # a second service for the same line on the same broker: one clear line, not a takeover loop
        second = await asyncio.to_thread(subprocess.run, cmd[:-2] + ["--config", str(path), "--health-port",
                                         str(free_port())], capture_output=True, text=True, timeout=90)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is publishing {line.site}/{line.line}" in second.stderr
        still = await asyncio.to_thread(health, line.service.health_port)
        assert proc.poll() is None and still[1]["publish"]["online"], "the first one serves on"
        assert still[0] == 200, still[1].get("reasons")  # and its line is still healthy
        # and one whose health port is taken says so
        third = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=90)
        assert third.returncode == 2 and "Traceback" not in third.stderr
        assert f"cannot serve /health on 127.0.0.1:{line.service.health_port}" in third.stderr

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        offline = await status.until(lambda m: m.payload and m.body["state"] == "offline", timeout=10)
        assert payloads.problems(offline.body) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        status.close()
        feed.cancel()
        await server.stop()

    lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any(r["msg"].startswith(f"serving {line.site}/{line.line} from opcua") for r in records)
    assert any("health on http://127.0.0.1" in r["msg"] for r in records)
    assert any(r["msg"].startswith("start-up heap frozen: ") for r in records)  # full collections skip it (issue 21)
