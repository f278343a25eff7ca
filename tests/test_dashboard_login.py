"""Logging in to the dashboard in a real Chromium, against the whole secured path.

A Mosquitto configured the `broker init` way (password file, per-user ACL), the alarm engine and the
publish station as the service account, the dashboard served by `streamlit run` with its own MQTT
account and the log-ins broker init wrote. A wrong password is refused; ann logs in, acknowledges a
live alarm, and the engine's audit trail names ann: the name came from her log-in, not from a box.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from factory_copilot.alarms import AlarmEngine, AlarmSettings
from factory_copilot.alarms.station import AlarmStation
from factory_copilot.config import REPO_ROOT, SIMULATED_LINE, MqttConnection, Roles, load_line
from factory_copilot.plumbing.broker import MOSQUITTO, MosquittoBroker, free_port
from factory_copilot.plumbing.broker_site import Account, write_site
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.publish import Publisher
from factory_copilot.records import Anomaly
from factory_copilot.store import Store

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
              pytest.mark.skipif(MOSQUITTO is None, reason="needs Mosquitto")]

PASSWORDS = {"factory-copilot": "service-secret-1", "ann": "ann-secret-12", "dashboard": "dash-secret-12"}
KINDS = {"factory-copilot": "service", "ann": "person", "dashboard": "dashboard"}


def log_in(page, user: str, password: str) -> None:
    """Fill the log-in form as a person does, then press Log in (Enter in a box does too: the browser test's own)."""
    page.get_by_label("User name", exact=True).fill(user)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def serve_dashboard(db: Path, port: int, mqtt_port: int, env: dict[str, str]):
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "dashboards" / "app.py"),
         "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false", "--",
         "--db", str(db), "--line", str(SIMULATED_LINE), "--mqtt-host", "127.0.0.1", "--mqtt-port", str(mqtt_port)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    output = []
    while True:  # the server says when it listens
        try:
            line = lines.get(timeout=90)
        except queue.Empty:
            proc.kill()
            pytest.fail("streamlit did not start within 90 s:\n" + "".join(output))
        output.append(line)
        if "URL:" in line:
            return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.slow
async def test_log_in_acknowledge_and_the_audit_row_names_the_person(tmp_path):
    from playwright.async_api import async_playwright

    site = write_site(tmp_path / "mosquitto", [Account(n, KINDS[n], pw) for n, pw in PASSWORDS.items()],
                      bind="127.0.0.1", port=free_port(), tls=False)
    broker = MosquittoBroker(site=site).start()
    line = load_line(SIMULATED_LINE).model_copy(update={"roles": Roles.model_validate({"operators": ["ann"]})})
    engine = AlarmEngine(line, tmp_path / "alarms.db", AlarmSettings(on_delay_s=0.0, silence_s=3600.0))  # stays active meanwhile
    events, commands, results = Buffer(1000, "events"), Buffer(100, "commands"), Buffer(100, "results")
    station = AlarmStation(engine, Buffer(10, "anomalies"), events, commands, results)
    conn = MqttConnection(host="127.0.0.1", port=site.port, username="factory-copilot",
                          password=PASSWORDS["factory-copilot"])
    publisher = Publisher.for_line(line, tmp_path / "outbox.db", connection=conn, events=events, commands=commands,
                                   results=results)
    await publisher.start()
    halt = asyncio.Event()
    tasks = [asyncio.create_task(publisher.run(halt)), asyncio.create_task(station.run(halt))]
    for _ in range(3):
        for ev in engine.ingest(Anomaly(ts=time.time(), asset="product_pump", kind="limit", signal="flow", value=20.0,
                                        score=3.0, threshold=1.0, mode="running")):
            events.offer(ev)
    [alarm] = engine.active()
    Store(tmp_path / "dash.db").close()
    dashboard = serve_dashboard(tmp_path / "dash.db", free_port(), site.port, {
        "FACTORY_COPILOT_MQTT_USERNAME": "dashboard", "FACTORY_COPILOT_MQTT_PASSWORD": PASSWORDS["dashboard"],
        "FACTORY_COPILOT_DASHBOARD_USERS": str(site.logins)})
    url = dashboard.args[dashboard.args.index("--server.port") + 1]
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = await browser.new_page(viewport={"width": 1400, "height": 1600})
            await page.goto(f"http://127.0.0.1:{url}")
            await page.get_by_role("button", name="Log in").wait_for(timeout=60_000)
            assert await page.get_by_text("Alarms (").count() == 0  # nothing before a log-in

            await _log_in(page, "ann", "ann-wrong-password")
            await page.get_by_text("Wrong user name or password.").wait_for(timeout=30_000)
            assert await page.get_by_text("Alarms (").count() == 0

            await _log_in(page, "ann", PASSWORDS["ann"])
            await page.get_by_text("Logged in as").wait_for(timeout=30_000)
            ack = page.locator("." + "st-key-" + re.sub(r"[^a-zA-Z0-9_-]", "-", f"ack:{alarm.alarm_id}") + " button")
            await ack.wait_for(timeout=60_000)  # the live alarm, from the broker
            await ack.click()
            # the engine's reply and the alarm's new state both say so; either will do
            await page.get_by_text("acknowledged by ann").first.wait_for(timeout=30_000)
            await browser.close()
    finally:
        stop(dashboard)
        halt.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await publisher.stop()
        broker.stop()
    rows = [e for e in engine.audit(alarm.alarm_id) if e.event == "acknowledged"]
    engine.close()
    assert [(r.actor, r.comment) for r in rows] == [("ann", "from the dashboard")]


async def _log_in(page, user: str, password: str) -> None:
    await page.get_by_label("User name", exact=True).fill(user)
    await page.get_by_label("User name", exact=True).press("Enter")
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_label("Password", exact=True).press("Enter")
    await page.get_by_role("button", name="Log in").click()
