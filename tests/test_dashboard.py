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
from factory_copilot.records import Alarm, AlarmEvent, AlarmState, Anomaly, Diagnosis, Feedback, Priority, Reading
from factory_copilot.publish import payloads
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
    assert windows["what"].iloc[0] == "tank level limit"  # the signal in words, not its id


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


def _order(at) -> list[str]:
    """The alarm ids of the list as shown, top to bottom (roots and their folded consequences)."""
    return [b.key.partition(":")[2] for b in at.button if b.key and b.key.startswith("ack:")]


def test_page_reads_at_a_glance_overview_alarms_and_diagnosis(seeded, monkeypatch, fresh_streamlit):
    db, _ = seeded
    at = _app(monkeypatch, db).run()
    assert not at.exception, [e.value for e in at.exception]
    cards = [m.value for m in at.markdown if 'class="fc-asset"' in m.value]
    # the assets in the line's own order, whatever their state
    assert len(cards) == len(LINE.assets)
    for card, asset in zip(cards, LINE.assets):
        assert asset.name in card
    tunnel = next(c for c in cards if "Shrink heat tunnel" in c)
    assert "CRITICAL ALARM" in tunnel.upper() and charts.PRIORITY_COLOURS[Priority.CRITICAL] in tunnel
    assert "+1 folded" in next(c for c in cards if "Rotary filler" in c)  # its alarm is the pump's consequence
    # the list: most urgent first, then newest; the pump's consequences folded under it, not rung
    assert _order(at) == [sample.TUNNEL_ID, sample.CAVITATION_ID, sample.FLOW_ID, sample.TANK_ID, sample.COMPRESSOR_ID]
    assert "Alarms (3)" in _texts(at) and "+ 2 folded under their cause" in _texts(at)
    folded = next(e for e in at.expander if e.label.startswith("2 consequences"))
    assert [b.key for b in folded.button if b.key.startswith("ack:")] == [f"ack:{sample.FLOW_ID}", f"ack:{sample.TANK_ID}"]
    acks = {b.key: b for b in at.button if b.key and b.key.startswith("ack:")}
    assert acks[f"ack:{sample.TUNNEL_ID}"].disabled  # already acknowledged; and without a broker nothing can be sent
    # plain words, not scores: severity and since when
    rows = [m.value for m in at.markdown if "since " in m.value]
    pump = next(r for r in rows if "cavitation suspected" in r)
    assert "severe · since " in pump and "new, not acknowledged" in pump
    assert "acknowledged by maria, still active" in next(r for r in rows if "Heat tunnel" in r)
    # plant words: units as the plant writes them, buttons that say what they do, no file names (issue 25)
    tunnel_row = next(r for r in rows if "Heat tunnel" in r)
    assert "193.4 °C" in tunnel_row and "degC" not in _texts(at)
    assert at.button(key=f"select:{sample.CAVITATION_ID}").label == "Details"
    assert not any("store.db" in c.value or c.value.startswith("Store:") for c in at.sidebar.caption)
    assert not any(word in _texts(at) for word in ("score", "threshold", "×"))
    assert [t.label for t in at.tabs][:4] == ["Diagnosis", "Trends", "Ask the copilot", "Feedback"]
    assert "No diagnosis yet" in _texts(at)

    at.button(key=f"select:{sample.CAVITATION_ID}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    diagnosis = at.tabs[0]
    flat = [str(getattr(e, "value", "")) for e in diagnosis]  # the tab's elements, top to bottom
    text = "\n".join(flat)
    assert "most likely cavitating" in text and "From the local model (qwen2.5" in text
    # safety notes first, then what to check first; the rest folded
    safety = "Lock out the pump and isolate suction"
    assert flat.index(next(x for x in flat if safety in x)) < flat.index(next(x for x in flat if "most likely cavitating" in x))
    assert flat.index(next(x for x in flat if "most likely cavitating" in x)) < flat.index("**Check first**")
    labels = [e.label for e in diagnosis.expander]
    assert labels[:2] == ["Check the supply tank level against the suction pressure  ·  RB-PUMP-002#checks",
                          "Check the filter differential pressure  ·  RB-PUMP-003#checks"]
    assert {"Likely causes (3)", "Recommended steps (4)", "Evidence"} <= set(labels)
    assert not any(e.proto.expanded for e in diagnosis.expander)  # folded until the operator opens them
    # the runbook passage of a check is inside its expander
    assert "suction_pressure" in "\n".join(m.value for m in diagnosis.expander[0].markdown)
    assert at.get("progress")[0].proto.text == "1. Pump cavitation (starved suction) — 78%"
    assert at.button(key=f"select:{sample.CAVITATION_ID}").label == "Shown below"
    cited = "\n".join(c.value for c in diagnosis.expander[labels.index("Likely causes (3)")].caption)
    # evidence by the line file's names, not the raw tag
    assert "Product transfer pump · suction pressure" in cited and "`product_pump.suction_pressure`" not in cited
    assert at.selectbox(key=f"trend_asset:{sample.CAVITATION_ID}").value == "product_pump"  # trends follow the alarm
    assert len(at.get("vega_lite_chart")) >= len(LINE.asset("product_pump").signals)


def test_alarm_kpis_and_the_history_table_are_shown(seeded, monkeypatch, fresh_streamlit):
    db, _ = seeded
    at = _app(monkeypatch, db).run()
    metrics = {m.label: m.value for m in at.metric}
    # three alarms rung in the sample's last half hour (the two consequences are folded, not counted)
    assert metrics["Alarms per hour"] == "3.0" and metrics["Most in 10 min"] == "2"
    assert metrics["Standing"] == "2" and metrics["Chattering"] == "0" and metrics["Time in flood"] == "0%"
    assert "within EEMUA 191's targets" in _texts(at) and "2 consequence(s) folded" in _texts(at)
    history = next(d.value for d in at.dataframe if "event" in d.value.columns)
    assert list(history.columns) == ["time (UTC)", "asset", "alarm", "priority", "event", "state", "by"]
    assert set(history["event"]) == {"raised", "acknowledged", "returned"}
    assert "Product transfer pump" in set(history["asset"])


def test_mode_trend_reads_as_the_lines_own_mode_names(tmp_path):
    with Store(tmp_path / "m.db") as store:
        store.add_readings([Reading(T0 + k, "line", "mode", float(LINE.modes.code_of("changeover" if k < 30 else "running")))
                            for k in range(60)])
        frame = charts.signal_frame(store, LINE, "line", T0, T0 + 59, ["mode"])
    assert set(frame["state"]) == {"changeover", "running"}
    [chart] = charts.signal_charts(frame, modes=LINE.mode_names())
    spec = json.dumps(chart.to_dict())
    assert '"field": "state"' in spec and '"running"' in spec and "operating mode" in spec
    assert '"field": "mean"' not in spec  # no code like 2.000000 on the axis


def test_trend_tooltips_carry_the_signals_unit(tmp_path):
    with Store(tmp_path / "u.db") as store:
        store.add_readings([Reading(T0 + k, "product_pump", "flow", 110.0) for k in range(30)])
        frame = charts.signal_frame(store, LINE, "product_pump", T0, T0 + 29, ["flow"])
    [chart] = charts.signal_charts(frame)
    spec = json.dumps(chart.to_dict())
    assert "flow [L/min]" in spec and "normal from [L/min]" in spec
    assert "L/min/s" not in spec and "score/threshold" not in spec


def _give_feedback(at: AppTest) -> AppTest:
    at.button(key=f"select:{sample.CAVITATION_ID}").click().run()
    at.radio(key="fb_verdict").set_value("other_cause")
    at.selectbox(key="fb_cause").set_value("clogged_filter")
    at.text_area(key="fb_fix").input("replaced the inlet filter element")
    return at.button[[b.label for b in at.button].index("Save feedback")].click().run()


def test_feedback_goes_over_mqtt_as_the_person_logged_in_and_is_read_back_from_the_store(
        seeded, monkeypatch, broker, fresh_streamlit, users_file):
    db, _ = seeded
    side = Listener(broker, TOPICS.commands("+"))
    try:
        at = _login(_app(monkeypatch, db, broker, users=users_file))
        [feed] = LiveFeed.instances
        assert feed.wait_for(lambda s: s.connected, 10)
        _give_feedback(at)
        assert not at.exception, [e.value for e in at.exception]
        topic, payload = side.next()
        body = json.loads(payload)
        assert topic == TOPICS.commands("maria")  # her own level: the name the service records is the broker's
        assert (body["schema"], body["alarm_id"], body["verdict"], body["actual_cause"], body["fix"]) == (
            "feedback/1", sample.CAVITATION_ID, "other_cause", "clogged_filter", "replaced the inlet filter element")
        with Store(db) as store:
            assert store.feedback(sample.CAVITATION_ID) == []  # the dashboard writes nothing itself
        assert "feedback sent; waiting" in _texts(at)
        # the service (tests/test_feedback.py runs the real one) stores it and replies
        rid = body["request_id"]
        with Store(db) as store:
            store.add_feedback(Feedback(sample.CAVITATION_ID, "other_cause", "clogged_filter",
                                        "replaced the inlet filter element", "maria"))
        side.publish(TOPICS.command_reply(rid), {"request_id": rid, "ok": True, "message": "feedback recorded"})
        assert feed.wait_for(lambda s: rid in s.replies, 10)
        at.run()
        text = _texts(at)
        assert "✓ feedback: feedback recorded" in text and "Feedback saved" in text
        assert "maria: another cause — clogged_filter · fix: replaced the inlet filter element" in text
    finally:
        side.stop()


def test_feedback_says_so_when_the_broker_is_unavailable_and_sends_nothing(seeded, monkeypatch, fresh_streamlit,
                                                                           users_file):
    from factory_copilot.plumbing.broker import free_port

    db, _ = seeded
    down = type("Down", (), {"host": "127.0.0.1", "port": free_port()})()  # nothing listens there
    at = _give_feedback(_login(_app(monkeypatch, db, down, users=users_file)))
    assert not at.exception, [e.value for e in at.exception]
    assert f"The broker 127.0.0.1:{down.port} is unavailable: the feedback was not sent" in _texts(at)
    assert "feedback_sent" not in at.session_state
    with Store(db) as store:
        assert store.feedback(sample.CAVITATION_ID) == []
    # without a broker at all the form says why it cannot be used
    st.cache_resource.clear()
    at = _login(_app(monkeypatch, db, users=users_file))
    at.button(key=f"select:{sample.CAVITATION_ID}").click().run()
    assert "Feedback goes to the service over the broker" in _texts(at)
    assert at.button[[b.label for b in at.button].index("Save feedback")].disabled


def test_acknowledge_publishes_a_command_and_shows_the_reply(seeded, monkeypatch, broker, fresh_streamlit, users_file):
    db, _ = seeded
    side = Listener(broker, TOPICS.commands("+"))
    try:
        # another HIGH alarm, older and unacknowledged: sorting by acknowledgement would move the pump's below it
        older = Alarm("air_compressor.vibration-limit", "air_compressor", "vibration-limit", AlarmState.ACTIVE_UNACK,
                      Priority.HIGH, "Compressor vibration high", time.time() - 1500, time.time() - 1500)
        side.publish(TOPICS.alarm("air_compressor", older.alarm_id), {**older.to_dict(), "schema": "alarm/1"}, retain=True)
        at = _login(_app(monkeypatch, db, broker, users=users_file))
        [feed] = LiveFeed.instances
        assert feed.wait_for(lambda s: s.connected and older.alarm_id in s.alarms, 10)
        at.run()
        before = _order(at)
        assert before.index(sample.CAVITATION_ID) + 3 == before.index(older.alarm_id)  # its 2 consequences between
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
        assert "✓ acknowledge: acknowledged" in [c.value for c in at.caption]
        assert at.button(key=f"ack:{sample.CAVITATION_ID}").disabled  # the live state says acknowledged
        assert _order(at) == before  # acknowledged, it stays where it was: the cursor stays on it
    finally:
        side.publish(TOPICS.alarm("air_compressor", "air_compressor.vibration-limit"), b"", retain=True)
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
                                     "origin": "model", "model": "qwen2.5-1.5b", "created_at": time.time() + 1})
        side.publish(TOPICS.diagnosis_stream("air_compressor", sample.COMPRESSOR_ID),
                     {"alarm_id": sample.COMPRESSOR_ID, "seq": 2, "token": "", "done": True})
        side.publish(TOPICS.diagnosis("air_compressor", sample.COMPRESSOR_ID), {**payloads.diagnosis_fields(model), "schema": "diagnosis/1"})
        assert feed.wait_for(lambda s: sample.COMPRESSOR_ID in s.diagnoses, 10)
        at.run()
        text = _texts(at)
        assert "MODEL</span>" in text and "From the local model (qwen2.5-1.5b" in text
        assert "Header pressure sagging at full duty: a leak." in text and "MODEL · WRITING" not in text
        assert runbook.summary not in text
    finally:
        side.stop()


def test_an_alarm_the_engine_does_not_hold_is_dropped_from_the_list(seeded, monkeypatch, broker, fresh_streamlit,
                                                                     users_file):
    db, _ = seeded
    ghost = Alarm("filler.fill_weight-limit", "filler", "fill_weight-limit", AlarmState.ACTIVE_UNACK, Priority.HIGH,
                  "Fill weight low", time.time() - 3600, time.time() - 3600)
    side = Listener(broker, TOPICS.commands("+"))
    try:
        # a retained alarm of an earlier run, still on the broker
        side.publish(TOPICS.alarm("filler", ghost.alarm_id), {**ghost.to_dict(), "schema": "alarm/1"}, retain=True)
        at = _login(_app(monkeypatch, db, broker, users=users_file))
        [feed] = LiveFeed.instances
        assert feed.wait_for(lambda s: ghost.alarm_id in s.alarms, 10)
        at.run()
        assert ghost.alarm_id in _order(at)
        at.button(key=f"ack:{ghost.alarm_id}").click().run()
        _, payload = side.next()
        rid = json.loads(payload)["request_id"]
        side.publish(TOPICS.command_reply(rid), {"request_id": rid, "ok": False,
                                                 "message": f"no alarm with id {ghost.alarm_id!r}"})
        assert feed.wait_for(lambda s: rid in s.replies, 10)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert ghost.alarm_id not in _order(at)
        assert sample.CAVITATION_ID in _order(at)  # the rest stays
        assert f"Removed {ghost.alarm_id}: the alarm engine does not hold it" in _texts(at)
        # later the engine raises that very alarm for real: it is shown again
        ghost.raised_at = ghost.updated_at = time.time() + 1
        side.publish(TOPICS.alarm("filler", ghost.alarm_id), {**ghost.to_dict(), "schema": "alarm/1"}, retain=True)
        assert feed.wait_for(lambda s: s.alarms.get(ghost.alarm_id) and s.alarms[ghost.alarm_id].updated_at
                             == ghost.updated_at, 10)
        at.run()
        assert ghost.alarm_id in _order(at)
    finally:
        side.publish(TOPICS.alarm("filler", ghost.alarm_id), b"", retain=True)
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


# ------------------------------------------------------------------------------------------- shelving (issue 25)


def _line_with_roles(tmp_path, roles: dict):
    """The simulated line with a ``roles:`` section: the line file a site writes, its knowledge paths kept."""
    import yaml

    body = yaml.safe_load(SIMULATED_LINE.read_text())
    body["knowledge"] = {k: str((SIMULATED_LINE.parent / v).resolve()) for k, v in body["knowledge"].items()}
    body["roles"] = roles
    path = tmp_path / "line-with-roles.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    load_line(path)  # a valid line file
    return path


def test_the_sidebar_offers_only_the_shelving_the_role_allows(seeded, monkeypatch, tmp_path, fresh_streamlit,
                                                             users_file):
    db, _ = seeded
    at = _app(monkeypatch, db, users=users_file)
    monkeypatch.setenv("FACTORY_COPILOT_LINE", str(_line_with_roles(tmp_path, {"operators": ["maria"]})))
    at = _login(at)
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="shelve_for").options == ["15 min", "30 min"]  # an operator: at most 30 min
    assert at.button(key=f"shelve:{sample.CAVITATION_ID}").label == "Shelve 30 min"


def test_a_supervisor_is_offered_a_shift_and_nobody_in_a_role_no_shelving(seeded, monkeypatch, tmp_path,
                                                                         fresh_streamlit, users_file):
    db, _ = seeded
    at = _app(monkeypatch, db, users=users_file)
    line = _line_with_roles(tmp_path, {"supervisors": ["maria"]})
    monkeypatch.setenv("FACTORY_COPILOT_LINE", str(line))
    at = _login(at)
    assert at.selectbox(key="shelve_for").options == ["15 min", "30 min", "1 h", "4 h", "8 h (shift)"]
    assert at.button(key=f"shelve:{sample.CAVITATION_ID}").label == "Shelve 1 h"

    st.cache_resource.clear()
    at = _app(monkeypatch, db, users=users_file)
    monkeypatch.setenv("FACTORY_COPILOT_LINE", str(_line_with_roles(tmp_path, {"operators": ["ann"]})))
    at = _login(at)
    assert not [b for b in at.button if b.key and b.key.startswith("shelve:")]
    assert "Your role may not shelve alarms on this line." in [c.value for c in at.sidebar.caption]


def test_a_refused_shelve_reads_once(seeded, monkeypatch, broker, fresh_streamlit, users_file):
    db, _ = seeded
    side = Listener(broker, TOPICS.commands("+"))
    try:
        at = _login(_app(monkeypatch, db, broker, users=users_file))
        [feed] = LiveFeed.instances
        assert feed.wait_for(lambda s: s.connected, 10)
        at.button(key=f"shelve:{sample.CAVITATION_ID}").click().run()
        _, payload = side.next()
        rid = json.loads(payload)["request_id"]
        # what the alarm engine answers (alarms/engine.py: "refused: " + the role's reason)
        side.publish(TOPICS.command_reply(rid), {"request_id": rid, "ok": False, "message":
                                                 "refused: maria may shelve for at most 1800 s, asked for 3600 s"})
        assert feed.wait_for(lambda s: rid in s.replies, 10)
        at.run()
        errors = [e.value for e in at.error]
        assert errors == ["Shelve refused: maria may shelve for at most 1800 s, asked for 3600 s"]
    finally:
        side.stop()


def test_a_shelved_alarm_shows_shelved_until_when_not_its_alarm_colour(seeded, monkeypatch, fresh_streamlit):
    db, _ = seeded
    until = time.time() + 1800
    with Store(db) as store:
        cav = store.alarm(sample.CAVITATION_ID)
        cav.shelved_until, cav.shelved_by, cav.updated_at = until, "maria", time.time()
        store.add_alarm_event(AlarmEvent(cav.alarm_id, time.time(), "shelved", cav.state, cav, actor="maria"))
    at = _app(monkeypatch, db).run()
    assert not at.exception, [e.value for e in at.exception]
    hhmm = time.strftime("%H:%M", time.gmtime(until))
    row = next(m.value for m in at.markdown if "cavitation suspected" in m.value and "since " in m.value)
    assert f"SHELVED UNTIL {hhmm}" in row and f"shelved until {hhmm} by maria" in row
    assert charts.PRIORITY_COLOURS[Priority.HIGH] not in row  # not in the colour that calls for the operator
    pump = next(m.value for m in at.markdown if 'class="fc-asset"' in m.value and "Product transfer pump" in m.value)
    assert "HIGH ALARM" not in pump.upper() and f"1 shelved until {hhmm}" in pump


# ------------------------------------------------------------------------------------------- waits for the model (issue 25)


def _job(state: str, position: int = 0, estimate: float | None = 41.0, alarm_id: str = sample.COMPRESSOR_ID,
         request_id: str | None = None, detail: str | None = None, since: float | None = None) -> dict:
    """A model-job/1 message as the publisher sends it (publish/payloads.py model_job)."""
    now = time.time()
    return {"schema": "model-job/1", "site": LINE.site, "line": LINE.line, "job": "answer" if request_id else "diagnosis",
            "alarm_id": alarm_id, "request_id": request_id, "state": state, "position": position, "waiting": 3,
            "estimate_s": estimate, "since": now - 5 if since is None else since, "ts": now, "detail": detail}


def test_wait_words_say_the_place_the_estimate_and_when_the_copilot_went_quiet():
    from dashboards.waits import wait_words

    now = time.time()
    job = {**_job("queued", 1, 41.0, since=now - 65), "received": now}
    assert wait_words(job, now) == ("waiting", "Model diagnosis coming: 2nd in queue, about 40 s (waiting 1 min 5 s)")
    assert wait_words({**job, "position": 10}, now)[1].startswith("Model diagnosis coming: 11th in queue")
    assert wait_words({**job, "received": now - 6}, now)[1].startswith("Model diagnosis coming: 2nd in queue, about 35 s")
    assert "no time estimate yet" in wait_words({**job, "estimate_s": None}, now)[1]
    assert wait_words({**job, "state": "running", "position": 0, "estimate_s": 8.4}, now, "model answer")[1] == (
        "Model answer coming: the model is writing it, about 8 s (waiting 1 min 5 s)")
    assert wait_words({**job, "estimate_s": 3.0, "received": now - 10}, now)[1].startswith(
        "Model diagnosis coming: 2nd in queue, any moment now")
    kind, words = wait_words({**job, "received": now - 40}, now)
    assert kind == "quiet" and "40 s ago; no word from the copilot since" in words
    assert wait_words({**job, "state": "dropped", "detail": "model queue full"}, now) == (
        "dropped", "No model diagnosis: model queue full; the runbook's stands.")
    assert wait_words({**job, "state": "done"}, now) is None and wait_words(None, now) is None


def _waits(at) -> list[str]:
    return [m.value for m in at.markdown if "fc-model-wait" in m.value]


def test_the_diagnosis_card_says_a_model_diagnosis_is_coming_its_place_and_about_when(seeded, monkeypatch, broker,
                                                                                    fresh_streamlit):
    """Issue 25: on a loaded box the model's diagnosis reached the page 143 s after the alarm, nothing saying one
    was coming. The copilot's model-job/1 states show on the card: queued (place, estimate), writing, dropped."""
    from factory_copilot.copilot import Copilot
    from tests.support.copilot import alarm_for

    db, _ = seeded
    alarm = alarm_for("air_compressor", alarm_id=sample.COMPRESSOR_ID, ts=time.time())
    runbook = Copilot(LINE).explain_now(alarm)
    with Store(db) as store:
        store.add_diagnosis(runbook)
    side = Listener(broker, TOPICS.commands("+"))
    topic = TOPICS.diagnosis_job("air_compressor", sample.COMPRESSOR_ID)
    try:
        at = _app(monkeypatch, db, broker).run()
        [feed] = LiveFeed.instances
        assert feed.wait_for(lambda s: s.connected, 10)
        at.button(key=f"select:{sample.COMPRESSOR_ID}").click().run()
        assert _waits(at) == []  # no job heard of: nothing promised

        side.publish(topic, _job("queued", 1, 41.0))
        assert feed.wait_for(lambda s: sample.COMPRESSOR_ID in s.diagnosis_jobs, 10)
        at.run()
        [wait] = _waits(at)
        assert "Model diagnosis coming: 2nd in queue, about 40 s (waiting 5 s)" in wait
        assert runbook.summary in _texts(at)  # the runbook's diagnosis stands meanwhile

        side.publish(topic, _job("running", 0, 61.0))
        assert feed.wait_for(lambda s: s.diagnosis_jobs[sample.COMPRESSOR_ID]["state"] == "running", 10)
        at.run()
        assert "Model diagnosis coming: the model is writing it, about 60 s" in _waits(at)[0]

        model = Diagnosis.from_dict({**runbook.to_dict(), "summary": "A leak downstream of the receiver.",
                                     "origin": "model", "model": "qwen2.5-1.5b", "created_at": time.time()})
        side.publish(TOPICS.diagnosis("air_compressor", sample.COMPRESSOR_ID), {**payloads.diagnosis_fields(model), "schema": "diagnosis/1"})
        assert feed.wait_for(lambda s: sample.COMPRESSOR_ID in s.diagnoses, 10)
        at.run()
        assert _waits(at) == [] and "A leak downstream of the receiver." in _texts(at)  # it came: no wait left
    finally:
        side.stop()


def test_a_dropped_model_diagnosis_says_why_and_that_the_runbook_stands(seeded, monkeypatch, broker, fresh_streamlit):
    db, _ = seeded
    side = Listener(broker, TOPICS.commands("+"))
    try:
        at = _app(monkeypatch, db, broker).run()
        [feed] = LiveFeed.instances
        assert feed.wait_for(lambda s: s.connected, 10)
        at.button(key=f"select:{sample.COMPRESSOR_ID}").click().run()
        side.publish(TOPICS.diagnosis_job("air_compressor", sample.COMPRESSOR_ID),
                     _job("dropped", detail="model queue full (16 diagnoses waiting): the runbook diagnosis stands"))
        assert feed.wait_for(lambda s: sample.COMPRESSOR_ID in s.diagnosis_jobs, 10)
        at.run()
        [wait] = _waits(at)
        assert "No model diagnosis: model queue full (16 diagnoses waiting)" in wait
        assert "No diagnosis yet" not in _texts(at)
    finally:
        side.stop()


def test_a_question_shows_the_runbook_answer_at_once_and_its_place_in_the_models_queue(seeded, monkeypatch, broker,
                                                                                      fresh_streamlit, users_file):
    """Issue 25: a question showed "thinking…" for 120 s with no queue position, and the runbook's answer (sent at
    once) appeared only after a reload, once the model's was done."""
    db, _ = seeded
    side = Listener(broker, TOPICS.ask("maria"))
    try:
        at = _login(_app(monkeypatch, db, broker, users=users_file))
        [feed] = LiveFeed.instances
        assert feed.wait_for(lambda s: s.connected, 10)
        at.button(key=f"select:{sample.CAVITATION_ID}").click().run()
        at.chat_input(key="ask").set_value("Is the strainer the likely cause?").run()
        rid = json.loads(side.next()[1])["request_id"]
        assert "_sent; waiting for the copilot…_" in [m.value for msg in at.chat_message for m in msg.markdown]
        reply = TOPICS.answer(rid)
        side.publish(reply, {"schema": "answer/1", "request_id": rid, "alarm_id": sample.CAVITATION_ID, "seq": 0,
                             "token": "", "done": False, "source": "runbook",
                             "text": "Runbook search (no model): Check the strainer's differential pressure."})
        side.publish(reply, _job("queued", 1, 41.0, alarm_id=sample.CAVITATION_ID, request_id=rid))
        assert feed.wait_for(lambda s: rid in s.answer_first and rid in s.answer_jobs, 10)
        at.run()
        pending = [m.value for m in at.chat_message[-1].markdown]
        assert "Check the strainer's differential pressure." in pending
        assert any("RUNBOOK SEARCH · NO MODEL" in m for m in pending)
        assert any("Model answer coming: 2nd in queue, about 40 s" in m for m in pending)

        side.publish(reply, _job("running", 0, 61.0, alarm_id=sample.CAVITATION_ID, request_id=rid))
        side.publish(reply, {"schema": "answer/1", "request_id": rid, "alarm_id": sample.CAVITATION_ID, "seq": 1,
                             "token": "The strainer ", "done": False})
        assert feed.wait_for(lambda s: s.answer_tokens(rid) == "The strainer ", 10)
        at.run()
        pending = [m.value for m in at.chat_message[-1].markdown]
        assert "The strainer  ▌" in pending and any("the model is writing it, about 60 s" in m for m in pending)

        side.publish(reply, {"schema": "answer/1", "request_id": rid, "alarm_id": sample.CAVITATION_ID, "seq": 2,
                             "token": "", "done": True, "source": "model", "text": "The strainer is the likely cause."})
        assert feed.wait_for(lambda s: rid in s.answer_done, 10)
        at.run()
        shown = [m.value for msg in at.chat_message for m in msg.markdown]
        assert shown[-1] == "The strainer is the likely cause." and not _waits(at)
    finally:
        side.stop()


def test_the_dashboard_server_runs_no_full_garbage_collection_after_every_rerun():
    """Before: Streamlit's default gc.collect(2) after every fragment rerun was ~40 % of the server's CPU with two
    pages open (bench/dashboard_cpu.py: 52.8 % -> 27.0 % of one core); both ways of serving it turn it off."""
    import tomllib

    from factory_copilot.config import REPO_ROOT
    from factory_copilot.store.cli import dashboard_command

    cmd = dashboard_command("store.db", "line.yaml", None)
    flags = cmd[: cmd.index("--")]
    assert flags[flags.index("--runner.postScriptGC") + 1] == "false"
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False  # `streamlit run dashboards/app.py` from the repository
