"""The dashboard in a real headless Chromium: served by `streamlit run`, an operator opens the cavitation
alarm, acknowledges it, the command reaches the broker, the reply shows, and a screenshot is saved.

Set FACTORY_COPILOT_SCREENSHOT=docs/dashboard.png to refresh the README's picture as well.
"""

from __future__ import annotations

import json
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

from dashboards import sample
from factory_copilot.plumbing.broker import free_port
from factory_copilot.config import REPO_ROOT, SIMULATED_LINE
from factory_copilot.store import Store
from factory_copilot.plumbing.logins import Logins, hash_password
from tests.test_dashboard import LINE, MARIA_PASSWORD, TOPICS, Listener
from tests.test_dashboard_login import log_in

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")


def key_class(key: str) -> str:
    """The CSS class Streamlit gives the element of a widget key."""
    return "st-key-" + re.sub(r"[^a-zA-Z0-9_-]", "-", key)


def click(page, key: str) -> None:
    """Click a widget once Streamlit has finished re-rendering (a rerun briefly keeps the stale copy)."""
    selector = f".{key_class(key)} button"
    page.wait_for_function(f"document.querySelectorAll({selector!r}).length === 1", timeout=30_000)
    page.locator(selector).click()


@pytest.fixture
def served(tmp_path, broker):
    """`streamlit run dashboards/app.py` on a free loopback port, on a freshly seeded store."""
    db = tmp_path / "browser.db"
    users = tmp_path / "dashboard-users.yaml"
    Logins({"maria": hash_password(MARIA_PASSWORD)}).write(users)
    with Store(db) as store:
        sample.seed(store, LINE, now=time.time())
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "dashboards" / "app.py"),
         "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false", "--",
         "--db", str(db), "--line", str(SIMULATED_LINE), "--mqtt-host", broker.host, "--mqtt-port", str(broker.port)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "FACTORY_COPILOT_DASHBOARD_USERS": str(users)},
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    output = []
    try:
        while True:  # the server says when it listens
            try:
                line = lines.get(timeout=90)
            except queue.Empty:
                pytest.fail("streamlit did not start within 90 s:\n" + "".join(output))
            output.append(line)
            if "URL:" in line:
                break
        yield f"http://127.0.0.1:{port}", db
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_acknowledge_in_a_real_browser(served, broker, tmp_path):
    from playwright.sync_api import sync_playwright

    url, db = served
    side = Listener(broker, TOPICS.commands("maria"))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1500, "height": 2300})
            page.goto(url)
            log_in(page, "maria", MARIA_PASSWORD)
            page.get_by_text("Alarms (3)").wait_for(timeout=60_000)
            click(page, "select:" + sample.CAVITATION_ID)
            page.get_by_text("Recommended steps").wait_for(timeout=30_000)
            page.get_by_text("From the local model (qwen2.5").wait_for(timeout=30_000)

            click(page, "ack:" + sample.CAVITATION_ID)
            topic, payload = side.next(timeout=30)
            body = json.loads(payload)
            assert (body["schema"], body["command"], body["alarm_id"]) == (
                "command/1", "acknowledge", sample.CAVITATION_ID)
            rid = body["request_id"]
            side.publish(TOPICS.command_reply(rid), {"request_id": rid, "ok": True, "message": "acknowledged"})
            page.get_by_text("acknowledge: acknowledged").wait_for(timeout=30_000)
            # the pump's trends and the evidence charts have drawn (Vega renders SVG marks)
            page.wait_for_function("document.querySelectorAll('svg.marks').length >= 8", timeout=30_000)
            # between the live fragment's reruns nothing is greyed out as stale: the picture a person sees
            page.wait_for_function("document.querySelectorAll('[data-stale=\"true\"]').length === 0",
                                   timeout=30_000, polling=50)
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        assert shot.stat().st_size > 50_000
        if os.environ.get("FACTORY_COPILOT_SCREENSHOT"):
            target = REPO_ROOT / os.environ["FACTORY_COPILOT_SCREENSHOT"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, target)
    finally:
        side.stop()
