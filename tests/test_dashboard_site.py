"""The site page under Streamlit's AppTest, against a real broker: two lines (the simulated packaging line and
the compressor station of tests/lines), each published by a real publish station (status heartbeat with its
health, retained alarm states from a real alarm engine), and the site's PostgreSQL for the shift's figures."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import streamlit as st
import yaml
from streamlit.testing.v1 import AppTest

from dashboards import site
from dashboards.live import LiveFeed
from factory_copilot.alarms import AlarmEngine, AlarmSettings
from factory_copilot.config import REPO_ROOT, SIMULATED_LINE, MqttConnection, load_line
from factory_copilot.plumbing.broker import free_port
from factory_copilot.plumbing.logins import Logins, hash_password
from factory_copilot.publish import Publisher, payloads
from factory_copilot.publish.topics import Topics
from factory_copilot.records import Alarm, AlarmEvent, AlarmState, Anomaly, OperatorCommand, Priority
from factory_copilot.store.cli import dashboard_command
from factory_copilot.store.store import PostgresStore, line_id
from tests.test_dashboard import Listener
from tests.test_dashboard_login import log_in

COMPRESSOR = REPO_ROOT / "tests" / "lines" / "compressor_station" / "line.yaml"
PASSWORDS = {"ann": "ann-secret-12", "bob": "bob-secret-12"}
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture
def fresh_streamlit():
    st.cache_resource.clear()
    site._figures.clear()
    yield
    st.cache_resource.clear()
    site._figures.clear()
    for feed in list(site.SiteFeed.instances) + list(LiveFeed.instances):
        feed.stop()


def write_line(path: Path, source: Path, site_name: str, line_name: str, **extra) -> Path:
    """A copy of a line file under a site and line of the test's own (the shared database keeps every test's rows)."""
    d = yaml.safe_load(source.read_text())
    knowledge = d.get("knowledge") or {}  # the catalogue and runbooks stay where the original's are
    d["knowledge"] = {k: str((source.parent / v).resolve()) for k, v in knowledge.items()} or None
    d.update(site=site_name, line=line_name, **extra)
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture
def two_lines(tmp_path):
    """The packaging line, ann its operator; the compressor station, bob its operator; one site of the test's own."""
    name = f"works-{uuid.uuid4().hex[:6]}"
    a = write_line(tmp_path / "packaging.yaml", SIMULATED_LINE, name, "packaging-1", roles={"operators": ["ann"]})
    b = write_line(tmp_path / "compressors.yaml", COMPRESSOR, name, "compressor-station-2", roles={"operators": ["bob"]})
    return load_line(a), load_line(b)


def _app(monkeypatch, lines, broker=None, users=None) -> AppTest:
    monkeypatch.setenv("FACTORY_COPILOT_SITE_LINES", ":".join(str(c.path) for c in lines))
    if users:
        monkeypatch.setenv("FACTORY_COPILOT_DASHBOARD_USERS", str(users))
    else:
        monkeypatch.delenv("FACTORY_COPILOT_DASHBOARD_USERS", raising=False)
    if broker:
        monkeypatch.setenv("FACTORY_COPILOT_MQTT_HOST", broker.host)
        monkeypatch.setenv("FACTORY_COPILOT_MQTT_PORT", str(broker.port))
    else:
        monkeypatch.delenv("FACTORY_COPILOT_MQTT_HOST", raising=False)
    return AppTest.from_file(str(REPO_ROOT / "dashboards" / "app.py"), default_timeout=60)


def cards(at) -> dict[str, str]:
    """Each line's card on the page, by site/line."""
    out = {}
    for m in at.markdown:
        if 'class="fc-site-line"' in m.value:
            out[m.value.split('data-line="')[1].split('"')[0]] = m.value
    return out


def _feed() -> site.SiteFeed:
    [feed] = site.SiteFeed.instances
    return feed


async def _publishing(line, broker, tmp_path, every_s=30.0, health=None):
    publisher = Publisher.for_line(line, tmp_path / f"{line.line}-outbox.db",
                                   connection=MqttConnection(host=broker.host, port=broker.port),
                                   status_every_s=every_s)
    publisher.health = health
    await publisher.start()
    halt = asyncio.Event()
    task = asyncio.create_task(publisher.run(halt))
    await asyncio.wait_for(publisher.online.wait(), 10)
    return publisher, halt, task


async def test_each_line_its_health_and_its_alarms_by_priority(two_lines, broker, tmp_path, monkeypatch,
                                                                fresh_streamlit):
    packaging, compressors = two_lines
    engine = AlarmEngine(packaging, tmp_path / "alarms.db", AlarmSettings(on_delay_s=0.0, silence_s=3600.0))
    pub_a, halt_a, task_a = await _publishing(packaging, broker, tmp_path, health=lambda: [])
    pub_b, halt_b, task_b = await _publishing(
        compressors, broker, tmp_path, health=lambda: ["source mqtt down: connection refused"])
    try:
        for _ in range(3):  # the pump's flow far out of its limits: one alarm, rung, nobody acknowledged it
            for ev in engine.ingest(Anomaly(ts=time.time(), asset="product_pump", kind="limit", signal="flow",
                                            value=20.0, score=3.0, threshold=1.0, mode="running")):
                pub_a.alarm_event(ev)
        [alarm] = engine.active()
        await pub_a.wait_idle()

        at = _app(monkeypatch, two_lines, broker).run()
        assert not at.exception, [e.value for e in at.exception]
        a, b = line_id(packaging), line_id(compressors)
        assert await asyncio.to_thread(_feed().wait_for, lambda s: alarm.alarm_id in s.lines[a].alarms
                                       and (s.lines[a].status or {}).get("health") == "ok"
                                       and (s.lines[b].status or {}).get("health") == "degraded", 10)
        at.run()
        shown = cards(at)
        assert set(shown) == {a, b}
        priority = alarm.priority.name.lower()
        assert 'data-health="ok"' in shown[a]
        assert f"Standing: 1 {priority}" in shown[a] and f"Not acknowledged: 1 {priority}" in shown[a]
        assert 'data-health="degraded"' in shown[b] and "source mqtt down: connection refused" in shown[b]
        assert "Standing: none" in shown[b] and "Not acknowledged: none" in shown[b]

        # acknowledged, still active: standing, no longer unacknowledged
        result, events = engine.command(OperatorCommand("acknowledge", alarm.alarm_id, "ann"))
        assert result.ok, result.message
        for ev in events:
            pub_a.alarm_event(ev)
        assert await asyncio.to_thread(_feed().wait_for, lambda s: s.lines[a].alarms[alarm.alarm_id].state
                                       is AlarmState.ACTIVE_ACK, 10)
        at.run()
        assert f"Standing: 1 {priority}" in cards(at)[a] and "Not acknowledged: none" in cards(at)[a]
    finally:
        for halt in (halt_a, halt_b):
            halt.set()
        await asyncio.gather(task_a, task_b, return_exceptions=True)
        await pub_a.stop()
        await pub_b.stop()
        engine.close()

    # each publisher said goodbye: both lines offline, at once (their retained status says so)
    assert await asyncio.to_thread(_feed().wait_for, lambda s: all(
        (x.status or {}).get("state") == "offline" for x in s.lines.values()), 10)
    at.run()
    assert all('data-health="offline"' in c for c in cards(at).values())

    # the click through to a line's operator page: the same app, ?line=SITE/LINE
    at.button(key=f"open:{a}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.query_params["line"] in (a, [a])
    assert any(packaging.line in m.value for m in at.markdown)  # the operator page's sidebar names its line
    assert not cards(at)


def test_a_line_whose_heartbeat_stops_goes_offline(two_lines, broker, monkeypatch, fresh_streamlit):
    packaging, compressors = two_lines
    side = Listener(broker, "unused/#")
    try:  # the packaging line says it is online every hour, the compressor station every 30 s
        for line, every_s in ((packaging, 3600.0), (compressors, 30.0)):
            body = payloads.status("online", line.site, line.line, time.time(), "c", every_s=every_s, reasons=[])
            side.publish(Topics(line.site, line.line).status(), body, retain=True)
        at = _app(monkeypatch, two_lines, broker).run()
        assert await_feed(lambda s: all(x.status for x in s.lines.values()))
        at.run()
        assert all('data-health="ok"' in c for c in cards(at).values())
        # 100 s later, nothing more heard: the compressor station missed three beats, the packaging line none
        monkeypatch.setattr(site, "clock", lambda: time.time() + 100.0)
        at.run()
        shown = cards(at)
        assert 'data-health="ok"' in shown[line_id(packaging)]
        assert 'data-health="offline"' in shown[line_id(compressors)] and "no word since" in shown[line_id(compressors)]
    finally:
        side.stop()


def await_feed(predicate) -> bool:
    return _feed().wait_for(predicate, 10)


@pytest.fixture
def users_file(tmp_path):
    path = tmp_path / "dashboard-users.yaml"
    Logins({n: hash_password(pw) for n, pw in PASSWORDS.items()}).write(path)
    return path


def _login(at: AppTest, user: str) -> AppTest:
    at.run()
    at.text_input(key="login_name").input(user)
    at.text_input(key="login_password").input(PASSWORDS[user])
    return at.button(key="login").click().run()


def test_an_operator_sees_only_the_lines_their_role_covers(two_lines, broker, users_file, monkeypatch,
                                                            fresh_streamlit):
    packaging, compressors = two_lines
    at = _app(monkeypatch, two_lines, broker, users_file).run()
    assert not cards(at) and at.button(key="login")  # nothing before a log-in
    _login(at, "ann")
    assert not at.exception, [e.value for e in at.exception]
    assert set(cards(at)) == {line_id(packaging)}
    assert not [b for b in at.button if b.key == f"open:{line_id(compressors)}"]
    # nor by the address: ?line= of a line her role does not cover shows the site page, saying so
    at.query_params["line"] = line_id(compressors)
    at.run()
    assert set(cards(at)) == {line_id(packaging)}
    assert any("not one of the lines you see" in e.value for e in at.error)

    bob = _app(monkeypatch, two_lines, broker, users_file)
    _login(bob, "bob")
    assert set(cards(bob)) == {line_id(compressors)}


def test_the_shifts_eemua_figures_come_from_the_sites_history(two_lines, tmp_path, pg_url, monkeypatch,
                                                               fresh_streamlit):
    packaging, compressors = two_lines
    path = write_line(tmp_path / "packaging-pg.yaml", SIMULATED_LINE, packaging.site, packaging.line,
                      store={"url": pg_url}, roles={"operators": ["ann"]})
    packaging = load_line(path)
    now = time.time()
    with PostgresStore(pg_url, line_id(packaging)) as store:  # 12 alarms rung in 5 minutes: a flood
        store.add_alarm_events(
            AlarmEvent(f"a{i}", now - 300 + 25 * i, "raised", AlarmState.ACTIVE_UNACK,
                       Alarm(f"a{i}", "filler", f"c{i}", AlarmState.ACTIVE_UNACK, Priority.HIGH, "tank low",
                             now - 300 + 25 * i, now - 300 + 25 * i))
            for i in range(12))
    # a third line whose database does not answer: it costs that line's figures, never the page
    away = load_line(write_line(tmp_path / "away.yaml", COMPRESSOR, packaging.site, "compressor-station-3",
                                store={"url": f"postgresql://nobody@127.0.0.1:{free_port()}/history"}))
    at = _app(monkeypatch, [packaging, compressors, away]).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = cards(at)
    assert "EEMUA 191 figures unavailable" in shown[line_id(away)] and "did not answer (Unavailable)" in shown[line_id(away)]
    figures = shown[line_id(packaging)]
    assert "last 8 h" in figures and "12 alarm(s)" in figures and "at most 12 in 10 min" in figures
    assert "above EEMUA 191" in figures
    assert "stays on its edge box" in shown[line_id(compressors)]  # no store.url: no figures from part of a shift
    assert 'data-health="unknown"' in shown[line_id(compressors)]  # no broker given: nothing known of its health


def test_health_words_from_a_status():
    now = 1_700_000_000.0
    live = site.LineState({"state": "online", "ts": now - 5, "every_s": 30, "health": "ok", "reasons": []}, now - 5)
    assert site.health_of(live, now).kind == "ok"
    stale = site.LineState({**live.status, "ts": now - 91}, now - 91)
    assert site.health_of(stale, now).kind == "offline"
    ahead = site.LineState({**live.status, "ts": now + 3600}, now - 91)  # an edge clock an hour ahead still ages
    assert site.health_of(ahead, now).kind == "offline"
    gone = site.LineState({**live.status, "state": "offline"}, now)
    assert site.health_of(gone, now).kind == "offline"
    assert site.health_of(site.LineState(), now).kind == "unknown"
    counts = site.alarm_counts([
        Alarm("x", "a", "c", AlarmState.ACTIVE_UNACK, Priority.CRITICAL, "m", now, now),
        Alarm("y", "a", "c", AlarmState.ACTIVE_ACK, Priority.LOW, "m", now, now),
        Alarm("z", "a", "c", AlarmState.RTN_UNACK, Priority.LOW, "m", now, now),
        Alarm("f", "a", "c", AlarmState.ACTIVE_UNACK, Priority.HIGH, "m", now, now, suppressed=True),
        Alarm("s", "a", "c", AlarmState.ACTIVE_UNACK, Priority.HIGH, "m", now, now, shelved_until=time.time() + 600),
    ])
    assert site.by_priority(counts.standing) == "1 critical, 1 low"  # neither the folded nor the shelved one
    assert site.by_priority(counts.unacknowledged) == "1 critical, 1 low"
    assert counts.folded == 1 and counts.shelved == 1


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_site_page_in_a_real_browser_and_the_click_through(broker, users_file, tmp_path):
    """Served as `factory-copilot dashboard --site A.yaml B.yaml` serves it: ann logs in, sees her line with its
    alarm under its priority (and not bob's line), clicks through to its operator page in the same session."""
    from playwright.sync_api import sync_playwright

    # the site's own name (this test has a broker and no database of its own): the screenshot docs/ shows
    packaging = load_line(write_line(tmp_path / "p.yaml", SIMULATED_LINE, "north-works", "packaging-1",
                                     roles={"operators": ["ann"]}))
    compressors = load_line(write_line(tmp_path / "c.yaml", COMPRESSOR, "north-works", "compressor-station-2",
                                       roles={"operators": ["bob"]}))
    two_lines = (packaging, compressors)
    topics = Topics(packaging.site, packaging.line)
    side = Listener(broker, "unused/#")
    now = time.time()
    alarm = Alarm("product_pump.flow-limit", "product_pump", "flow:limit", AlarmState.ACTIVE_UNACK, Priority.HIGH,
                  "Product transfer pump: flow high", now, now)
    for line in two_lines:
        side.publish(Topics(line.site, line.line).status(),
                     payloads.status("online", line.site, line.line, now, "c", every_s=30.0, reasons=[]), retain=True)
    side.publish(topics.alarm(alarm.asset, alarm.alarm_id), payloads.alarm_state(alarm, packaging.site, packaging.line),
                 retain=True)
    port = free_port()
    proc = subprocess.Popen(dashboard_command(tmp_path / "none.db", SIMULATED_LINE, broker.host, broker.port, "5", port,
                                              site=[packaging.path, compressors.path]),
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "FACTORY_COPILOT_DASHBOARD_USERS": str(users_file)})
    try:
        for out in proc.stdout:  # the server says when it listens
            if "URL:" in out:
                break
        else:
            pytest.fail("streamlit exited before it listened")
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the pipe drained
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"http://127.0.0.1:{port}")
            log_in(page, "ann", PASSWORDS["ann"])
            page.get_by_text("Standing: 1 high").wait_for(timeout=60_000)
            page.get_by_text("Not acknowledged: 1 high").wait_for(timeout=10_000)
            assert page.get_by_text(compressors.line).count() == 0  # bob's line is not hers
            if os.environ.get("FACTORY_COPILOT_SCREENSHOTS"):
                target = REPO_ROOT / os.environ["FACTORY_COPILOT_SCREENSHOTS"]
                target.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(target / "dashboard-site.png"))
            page.get_by_role("button", name=f"Open the operator page of {packaging.line}").click()
            page.get_by_text("All lines of the site").wait_for(timeout=60_000)
            page.get_by_text("Alarms (1)").wait_for(timeout=60_000)  # her line's operator page, still logged in
            assert "line=" in page.url
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        side.stop()
