"""The operator dashboard: its charts and live feed alone, then the whole page under Streamlit's AppTest
against a seeded store and a real broker (commands out, replies and feedback back in)."""

from __future__ import annotations

import json
import queue
import time
import uuid

import paho.mqtt.client as paho
import pytest
import streamlit as st
from paho.mqtt.enums import CallbackAPIVersion
from streamlit.testing.v1 import AppTest

from dashboards import charts, sample
from dashboards.live import LiveFeed
from factory_copilot.config import REPO_ROOT, SIMULATED_LINE, MqttConnection, load_line
from factory_copilot.plumbing.logins import Logins, hash_password
from factory_copilot.records import Alarm, AlarmState, Anomaly, Diagnosis, Priority, Reading
from factory_copilot.publish.topics import Topics
from factory_copilot.store import Store

LINE = load_line(SIMULATED_LINE)
TOPICS = Topics(LINE.site, LINE.line)
T0 = 1_700_000_000.0


class Listener:
    """A plain paho client on the test's side of the broker: records what the dashboard publishes."""

    def __init__(self, broker, topic: str):
        self.messages: queue.Queue = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:6]}")
        subscribed = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.put(True)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        subscribed.get(timeout=10)

    def publish(self, topic: str, body, retain: bool = False) -> None:
        payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def next(self, timeout: float = 10.0):
        return self.messages.get(timeout=timeout)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fresh_streamlit():
    """AppTests in one process share st.cache_resource (and our cached MQTT feed): start and end clean."""
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()
    for feed in list(LiveFeed.instances):
        feed.stop()


@pytest.fixture
def seeded(tmp_path):
    path = tmp_path / "dash.db"
    with Store(path) as store:
        marks = sample.seed(store, LINE, now=time.time(), minutes=12)
    return path, marks


# ------------------------------------------------------------------------------------------- charts


def test_normal_band_follows_the_line_mode(tmp_path):
    with Store(tmp_path / "c.db") as store:
        store.add_readings([Reading(T0 + k, "line", "mode", float(LINE.modes.code_of("changeover" if k < 30 else "running")))
                            for k in range(60)])
        store.add_readings([Reading(T0 + k, "infeed_conveyor", "belt_speed", 0.5 if k < 30 else 1.3)
                            for k in range(60)])
        frame = charts.signal_frame(store, LINE, "infeed_conveyor", T0, T0 + 59, ["belt_speed"])
    early, late = frame[frame["ts"] < T0 + 30], frame[frame["ts"] >= T0 + 30]
    assert set(early["hi"]) == {0.6} and set(late["hi"]) == {1.15}  # changeover band, then running band
    assert not early["out"].any() and late["out"].all()  # 1.3 m/s is only abnormal while running
    assert len(charts.signal_charts(frame)) == 1


def test_anomaly_windows_merge_close_anomalies():
    def a(ts):
        return Anomaly(ts=ts, asset="filler", kind="limit", score=2.0, threshold=1.0, signal="tank_level")

    windows = charts.anomaly_windows([a(T0), a(T0 + 5), a(T0 + 10), a(T0 + 100)], gap_s=15)
    assert list(zip(windows["start_ts"], windows["end_ts"])) == [(T0, T0 + 10), (T0 + 100, T0 + 102)]
    assert windows["what"].iloc[0] == "tank_level limit"


# ------------------------------------------------------------------------------------------- live feed


def _alarm(alarm_id="A1", state=AlarmState.ACTIVE_UNACK, updated=T0):
    return Alarm(alarm_id, "filler", "tank_level:limit", state, Priority.MEDIUM, "tank low", T0, updated)


def test_live_feed_follows_retained_alarms_streams_and_replies(broker, fresh_streamlit):
    feed = LiveFeed(MqttConnection(host=broker.host, port=broker.port), LINE.site, LINE.line).start()
    side = Listener(broker, TOPICS.commands("+"))
    try:
        assert feed.wait_for(lambda s: s.connected, 10)
        side.publish(TOPICS.alarm("filler", "A/1"), {**_alarm("A/1").to_dict(), "schema": "alarm/1"}, retain=True)
        side.publish(TOPICS.alarm("filler", "bad"), b"{not json")  # skipped; the rest keeps flowing
        for seq, token in [(1, "world"), (0, "hello ")]:
            side.publish(TOPICS.diagnosis_stream("filler", "A/1"),
                         {"alarm_id": "A/1", "seq": seq, "token": token, "done": seq == 1})
        assert feed.wait_for(lambda s: "A/1" in s.stream_done and "A/1" in s.alarms, 10)
        snap = feed.snapshot()
        assert snap.stream_text("A/1") == "hello world" and snap.rejected == 1
        side.publish(TOPICS.status(), {"schema": "status/1", "state": "online"}, retain=True)
        assert feed.wait_for(lambda s: s.publisher_status == "online", 10)
        side.publish(TOPICS.alarm("filler", "A/1"), b"", retain=True)  # cleared
        assert feed.wait_for(lambda s: "A/1" in s.cleared and "A/1" not in s.alarms, 10)

        request_id = feed.command("shelve", "A/1", "maria", shelve_s=900)
        topic, payload = side.next()
        body = json.loads(payload)
        assert topic == TOPICS.commands("maria")  # the sender's own level
        assert body == {**body, "schema": "command/1", "request_id": request_id, "command": "shelve",
                        "alarm_id": "A/1", "actor": "maria", "shelve_s": 900}
        side.publish(TOPICS.command_reply(request_id), {"request_id": request_id, "ok": True, "message": "shelved"})
        assert feed.wait_for(lambda s: request_id in s.replies, 10)
        with pytest.raises(ValueError, match="always expires"):
            feed.command("shelve", "A/1", "maria")
    finally:
        side.stop()
        feed.stop()


# ------------------------------------------------------------------------------------------- the page


MARIA_PASSWORD = "maria-secret-7"


@pytest.fixture(scope="module")
def users_file(tmp_path_factory):
    """The dashboard's log-ins: maria, as broker init writes them (an Argon2id hash)."""
    path = tmp_path_factory.mktemp("logins") / "dashboard-users.yaml"
    Logins({"maria": hash_password(MARIA_PASSWORD)}).write(path)
    return path


def _login(at: AppTest, user: str = "maria", password: str = MARIA_PASSWORD) -> AppTest:
    """Run the page and log in the way a person does: the form, then the page as that person."""
    at.run()
    at.text_input(key="login_name").input(user)
    at.text_input(key="login_password").input(password)
    return at.button(key="login").click().run()


def _app(monkeypatch, db, broker=None, users=None) -> AppTest:
    if users:
        monkeypatch.setenv("FACTORY_COPILOT_DASHBOARD_USERS", str(users))
    else:
        monkeypatch.delenv("FACTORY_COPILOT_DASHBOARD_USERS", raising=False)
    monkeypatch.setenv("FACTORY_COPILOT_DB", str(db))
    monkeypatch.setenv("FACTORY_COPILOT_LINE", str(SIMULATED_LINE))
    if broker:
        monkeypatch.setenv("FACTORY_COPILOT_MQTT_HOST", broker.host)
        monkeypatch.setenv("FACTORY_COPILOT_MQTT_PORT", str(broker.port))
    else:
        monkeypatch.delenv("FACTORY_COPILOT_MQTT_HOST", raising=False)
    return AppTest.from_file(str(REPO_ROOT / "dashboards" / "app.py"), default_timeout=60)


def _texts(at) -> str:
    return "\n".join(str(e.value) for e in [*at.markdown, *at.caption, *at.info, *at.success, *at.error,
                                            *at.warning, *at.subheader])


def test_page_renders_overview_alarms_and_diagnosis(seeded, monkeypatch, fresh_streamlit):
    db, _ = seeded
    at = _app(monkeypatch, db).run()
    assert not at.exception, [e.value for e in at.exception]
    tiles = [m.value for m in at.markdown if "border-left:8px" in m.value]
    assert len(tiles) == len(LINE.assets)
    # worst first: the critical heat-tunnel alarm, then the pump's high one, then the compressor's low one
    assert ["Shrink heat tunnel" in tiles[0], "Product transfer pump" in tiles[1], "compressor" in tiles[2]] == [True] * 3
    assert "CRITICAL ALARM" in tiles[0].upper() and charts.PRIORITY_COLOURS[Priority.CRITICAL] in tiles[0]
    assert [s.value for s in at.subheader][:2] == ["Alarms (3)", "Diagnosis"]
    acks = [b for b in at.button if b.key and b.key.startswith("ack:")]
    assert [b.key for b in acks] == [f"ack:{sample.TUNNEL_ID}", f"ack:{sample.CAVITATION_ID}",
                                     f"ack:{sample.COMPRESSOR_ID}"]
    assert acks[0].disabled  # already acknowledged; and without a broker nothing can be sent
    assert "No diagnosis yet" in _texts(at)

    at.button(key=f"select:{sample.CAVITATION_ID}").click().run()
    text = _texts(at)
    assert "most likely cavitating" in text and "From the local model (qwen2.5" in text
    assert "Recommended steps" in text
    assert at.get("progress")[0].proto.text == "1. Pump cavitation (starved suction) — 78%"
    step_labels = [e.label for e in at.expander]
    assert any("RB-PUMP-002#checks" in label for label in step_labels)
    # the runbook passage of a step is rendered inside its expander
    checks = next(e for e in at.expander if "RB-PUMP-002#checks" in e.label)
    assert "suction_pressure" in "\n".join(m.value for m in checks.markdown)
    assert at.selectbox(key="trend_asset").value == "product_pump"
    assert len(at.get("vega_lite_chart")) >= len(LINE.asset("product_pump").signals)
    history = at.dataframe[0].value
    assert set(history["event"]) == {"raised", "acknowledged", "returned"}


def test_feedback_lands_in_the_store(seeded, monkeypatch, fresh_streamlit, users_file):
    db, _ = seeded
    at = _login(_app(monkeypatch, db, users=users_file))
    at.button(key=f"select:{sample.CAVITATION_ID}").click().run()
    at.radio(key="fb_verdict").set_value("other_cause")
    at.selectbox(key="fb_cause").set_value("clogged_filter")
    at.text_area(key="fb_fix").input("replaced the inlet filter element")
    at.button[[b.label for b in at.button].index("Save feedback")].click().run()
    assert not at.exception, [e.value for e in at.exception]
    with Store(db) as store:
        [fb] = store.feedback(sample.CAVITATION_ID)
        assert (fb.verdict, fb.actual_cause, fb.fix, fb.actor) == (
            "other_cause", "clogged_filter", "replaced the inlet filter element", "maria")
        [incident] = store.similar("product_pump", "pump_cavitation", ["product_pump.suction_pressure"])
        assert incident.actual_cause == "clogged_filter"
    assert "Feedback saved" in _texts(at)


def test_acknowledge_publishes_a_command_and_shows_the_reply(seeded, monkeypatch, broker, fresh_streamlit, users_file):
    db, _ = seeded
    side = Listener(broker, TOPICS.commands("+"))
    try:
        at = _login(_app(monkeypatch, db, broker, users=users_file))
        [feed] = LiveFeed.instances
        assert feed.wait_for(lambda s: s.connected, 10)
        at.button(key=f"ack:{sample.CAVITATION_ID}").click().run()
        assert not at.exception, [e.value for e in at.exception]
        topic, payload = side.next()
        body = json.loads(payload)
        assert topic == TOPICS.commands("maria")  # the logged-in person's own level: the actor the engine records
        assert body["schema"] == "command/1" and body["command"] == "acknowledge"
        assert (body["alarm_id"], body["actor"]) == (sample.CAVITATION_ID, "maria") and body["request_id"]
        assert "acknowledge sent; waiting" in _texts(at)

        # the alarm engine replies and publishes the new retained state
        rid = body["request_id"]
        side.publish(TOPICS.command_reply(rid), {"request_id": rid, "ok": True, "message": "acknowledged"})
        with Store(db) as store:
            acked = store.alarm(sample.CAVITATION_ID)
        acked.state, acked.acked_by, acked.updated_at = AlarmState.ACTIVE_ACK, "maria", time.time()
        side.publish(TOPICS.alarm("product_pump", sample.CAVITATION_ID), acked.to_dict(), retain=True)
        assert feed.wait_for(lambda s: rid in s.replies and sample.CAVITATION_ID in s.alarms, 10)
        at.run()
        assert "acknowledge: acknowledged" in [s.value for s in at.success]
        assert at.button(key=f"ack:{sample.CAVITATION_ID}").disabled  # the live state says acknowledged
    finally:
        side.stop()


def test_ask_the_copilot_publishes_the_question_and_keeps_the_answer(seeded, monkeypatch, broker, fresh_streamlit,
                                                                    users_file):
    db, _ = seeded
    side = Listener(broker, TOPICS.ask("maria"))
    try:
        at = _login(_app(monkeypatch, db, broker, users=users_file))
        [feed] = LiveFeed.instances
        assert feed.wait_for(lambda s: s.connected, 10)
        at.button(key=f"select:{sample.CAVITATION_ID}").click().run()
        history = [m.value for m in at.chat_message[0].markdown]
        assert history == ["Can we keep running at reduced speed?"]  # the conversation so far, from the store
        at.chat_input(key="ask").set_value("Is the strainer the likely cause?").run()
        assert not at.exception, [e.value for e in at.exception]
        _, payload = side.next()
        body = json.loads(payload)
        assert (body["schema"], body["alarm_id"], body["question"]) == (
            "ask/1", sample.CAVITATION_ID, "Is the strainer the likely cause?")
        rid = body["request_id"]
        for seq, token in enumerate(["Check filter_dp ", "first."]):
            side.publish(TOPICS.answer(rid), {"request_id": rid, "alarm_id": sample.CAVITATION_ID, "seq": seq,
                                              "token": token, "done": False})
        side.publish(TOPICS.answer(rid), {"request_id": rid, "alarm_id": sample.CAVITATION_ID, "seq": 2, "token": "",
                                          "done": True, "text": "Check filter_dp first."})
        assert feed.wait_for(lambda s: rid in s.answer_done, 10)
        at.run()
        with Store(db) as store:
            turns = store.conversation(sample.CAVITATION_ID)
        assert [(t.role, t.text) for t in turns[-2:]] == [
            ("operator", "Is the strainer the likely cause?"), ("copilot", "Check filter_dp first.")]
        shown = [m.value for msg in at.chat_message for m in msg.markdown]
        assert shown[-1] == "Check filter_dp first."
    finally:
        side.stop()


def test_the_runbook_diagnosis_shows_at_once_and_the_model_replaces_it_labelled(seeded, monkeypatch, broker,
                                                                                 fresh_streamlit):
    from factory_copilot.copilot import Copilot
    from tests.support.copilot import alarm_for

    db, _ = seeded
    alarm = alarm_for("air_compressor", alarm_id=sample.COMPRESSOR_ID, ts=time.time())
    runbook = Copilot(LINE).explain_now(alarm)
    with Store(db) as store:
        store.add_diagnosis(runbook)  # what the copilot sends the moment the alarm is raised
    side = Listener(broker, TOPICS.commands("+"))
    try:
        at = _app(monkeypatch, db, broker).run()
        [feed] = LiveFeed.instances
        assert feed.wait_for(lambda s: s.connected, 10)
        at.button(key=f"select:{sample.COMPRESSOR_ID}").click().run()
        text = _texts(at)
        assert "RUNBOOK</span>" in text and "FALLBACK" not in text and "Rule-based from the line" in text
        assert runbook.summary in text
        # the model starts writing its summary: shown above, labelled, while the runbook diagnosis stands
        for seq, token in enumerate(["Header pressure ", "sagging at full duty"]):
            side.publish(TOPICS.diagnosis_stream("air_compressor", sample.COMPRESSOR_ID),
                         {"alarm_id": sample.COMPRESSOR_ID, "seq": seq, "token": token, "done": False})
        assert feed.wait_for(lambda s: len(s.streams.get(sample.COMPRESSOR_ID, {})) == 2, 10)
        at.run()
        text = _texts(at)
        assert "MODEL · WRITING" in text and "Header pressure sagging at full duty ▌" in text
        assert runbook.summary in text and "the model is writing its own" in text
        # the model's diagnosis arrives: it replaces the runbook's, labelled as the model's
        model = Diagnosis.from_dict({**runbook.to_dict(), "summary": "Header pressure sagging at full duty: a leak.",
                                     "source": "model", "model": "qwen2.5-1.5b", "created_at": time.time() + 1})
        side.publish(TOPICS.diagnosis_stream("air_compressor", sample.COMPRESSOR_ID),
                     {"alarm_id": sample.COMPRESSOR_ID, "seq": 2, "token": "", "done": True})
        side.publish(TOPICS.diagnosis("air_compressor", sample.COMPRESSOR_ID), {**model.to_dict(), "schema": "diagnosis/1"})
        assert feed.wait_for(lambda s: sample.COMPRESSOR_ID in s.diagnoses, 10)
        at.run()
        text = _texts(at)
        assert "MODEL</span>" in text and "From the local model (qwen2.5-1.5b" in text
        assert "Header pressure sagging at full duty: a leak." in text and "MODEL · WRITING" not in text
        assert runbook.summary not in text
    finally:
        side.stop()


def test_nothing_shows_before_a_log_in_and_a_wrong_password_is_refused(seeded, monkeypatch, broker, fresh_streamlit,
                                                                       users_file):
    db, _ = seeded
    at = _app(monkeypatch, db, broker, users=users_file).run()
    assert not [b for b in at.button if b.key and b.key.startswith("ack:")] and not at.dataframe
    for user, password in [("maria", "not-her-password"), ("eve", MARIA_PASSWORD), ("", "")]:
        at = _login(at, user, password)
        assert "Wrong user name or password." in [e.value for e in at.error]
        assert not [b for b in at.button if b.key and b.key.startswith("ack:")]
    at = _login(at)
    assert not at.exception and any(b.key == f"ack:{sample.CAVITATION_ID}" for b in at.button)
    assert "Logged in as **maria**" in [m.value for m in at.sidebar.markdown]
    at.button(key="logout").click().run()
    assert at.text_input(key="login_name") is not None and not [b for b in at.button if b.key and b.key.startswith("ack:")]


def test_without_a_users_file_the_page_is_read_only(seeded, monkeypatch, broker, fresh_streamlit):
    db, _ = seeded
    side = Listener(broker, TOPICS.commands("+"))
    try:
        at = _app(monkeypatch, db, broker).run()
        at.button(key=f"ack:{sample.CAVITATION_ID}").click().run()
        assert "Log in to acknowledge or shelve" in " ".join(e.value for e in at.error)
        with pytest.raises(queue.Empty):
            side.next(timeout=0.5)  # nothing was published (a bounded wait for an absence)
    finally:
        side.stop()
