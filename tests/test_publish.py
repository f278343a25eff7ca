"""The publish station against a real broker: schemas on the wire, retained alarms, commands, questions, outages, last will."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from factory_copilot.plumbing.broker import free_port
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.config import MqttConnection
from factory_copilot.records import (
    DiagnosisChunk,
    Handover,
    Alarm,
    AlarmEvent,
    AlarmState,
    Cause,
    CommandResult,
    Diagnosis,
    Evidence,
    ModelJob,
    OperatorCommand,
    Priority,
    Question,
    Step,
)
from factory_copilot.publish import Publisher, Topics, payloads
from tests.support.brokers import AmqttBroker
from tests.support.mqtt import Listener, Received, persistent_broker, retained_now

SITE, LINE = "demo-plant", "packaging-1"
T = Topics(SITE, LINE)
WAIT_S = 10


def make_alarm(alarm_id="a1", asset="product_pump", state=AlarmState.ACTIVE_UNACK, priority=Priority.HIGH, message="flow low"):
    now = time.time()
    return Alarm(alarm_id, asset, "flow:limit", state, priority, message, now, now)


def event(alarm: Alarm, name: str, state: AlarmState | None = None, actor=None) -> AlarmEvent:
    state = state or alarm.state
    alarm.state = state
    alarm.updated_at = time.time()
    return AlarmEvent(alarm.alarm_id, alarm.updated_at, name, state, alarm, actor=actor)


def diagnosis(alarm_id="a1") -> Diagnosis:
    return Diagnosis(
        alarm_id,
        "Suction pressure low and flow unsteady: cavitation.",
        [Cause("pump_cavitation", "Pump cavitation", 0.8, [Evidence("signal", "product_pump.suction_pressure", "low", 0.2)])],
        [Step("Check the suction strainer", "check", "RB-PUMP-002")],
        ["Lock out the pump before opening the strainer"],
        ["Suction pressure back to normal"],
        "runbook",
    )


def publisher(broker, tmp_path, name="outbox.db", **kwargs) -> Publisher:
    conn = kwargs.pop("connection", None) or MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)
    return Publisher(SITE, LINE, tmp_path / name, connection=conn, **kwargs)


class Engine:
    """Stands in for the alarm station: takes the publisher's commands, gives back results (``answer(cmd)``)."""

    def __init__(self, answer):
        self.answer = answer
        self.commands: Buffer[OperatorCommand] = Buffer(100, "commands")
        self.results: Buffer[CommandResult] = Buffer(100, "command results")

    def wire(self) -> dict:
        return {"commands": self.commands, "results": self.results}

    async def serve(self, pub: Publisher) -> None:
        sending = asyncio.create_task(pub.run())
        try:
            while True:
                cmd = await self.commands.get()
                result = self.answer(cmd)
                self.results.offer(await result if asyncio.iscoroutine(result) else result)
        finally:
            sending.cancel()


def command(**fields) -> bytes:
    return json.dumps({"schema": "command/1", **fields}).encode()


def handover() -> Handover:
    """The smallest handover/1 a shift with nothing in it gives (shift/handover.py writes the real ones)."""
    body = {"schema": "handover/1", "site": SITE, "line": LINE, "handover_id": "2026-12-03/early", "shift": "early",
            "date": "2026-12-03", "start": 1.0, "end": 2.0, "timezone": "UTC", "written_at": 2.0, "alarms": [],
            "actions": [], "standing": [], "incidents": [], "figures": {}, "watch": [], "sentences": []}
    return Handover("2026-12-03/early", "early", "2026-12-03", 1.0, 2.0, 2.0, body)


async def test_every_published_payload_is_valid_and_carries_mqtt5_properties(broker, tmp_path):
    listen = await Listener(broker, [T.everything()]).ready()
    questions: Buffer[Question] = Buffer(10)
    engine = Engine(lambda cmd: CommandResult(cmd.request_id, True, "ok"))
    async with publisher(broker, tmp_path, questions=questions, **engine.wire()) as pub:
        serving = asyncio.create_task(engine.serve(pub))
        await asyncio.wait_for(pub.online.wait(), WAIT_S)
        alarm = make_alarm()
        pub.alarm_event(event(alarm, "raised"))
        pub.diagnosis(diagnosis())
        for i, token in enumerate(["Suction ", "pressure ", "low."]):
            pub.diagnosis_token("a1", token, done=i == 2)
        listen.client.publish(T.commands("ann"), command(request_id="c1", command="acknowledge", alarm_id="a1", actor="ann"), qos=1)
        listen.client.publish(
            T.ask("ann"), json.dumps({"schema": "ask/1", "request_id": "q1", "alarm_id": "a1", "question": "why?", "actor": "ann"}), qos=1
        )
        question = await asyncio.wait_for(questions.get(), WAIT_S)
        # where the model's jobs stand: a diagnosis on its alarm's job topic, an answer beside its chunks
        now = time.time()
        pub.model_job(ModelJob("diagnosis", "a1", "queued", 2, 3, 41.5, now - 3, now))
        pub.answer_chunk(question.request_id, question.alarm_id, "", False, text="Runbook search (no model): ...",
                         origin="runbook")
        pub.model_job(ModelJob("answer", "a1", "queued", 1, 3, 12.0, now, now, request_id=question.request_id))
        pub.answer_chunk(question.request_id, question.alarm_id, "Because ", False)
        pub.answer_chunk(question.request_id, question.alarm_id, "cavitation.", True, text="Because cavitation.",
                         origin="model")
        pub.handover(handover())
        listen.client.publish(T.commands("ann"), json.dumps({"schema": "handover-ack/1", "request_id": "h1",
                                                             "handover_id": "2026-12-03/early"}), qos=1)
        listen.client.publish(T.commands("ann"), json.dumps(payloads.feedback("a1", "false_alarm", "f1")), qos=1)
        kinds: dict[str, list[Received]] = {}

        def complete():
            return (set(kinds) == set(payloads.KINDS) and len(kinds["diagnosis-stream/1"]) == 3
                    and len(kinds["answer/1"]) == 3 and len(kinds["model-job/1"]) == 2)

        while not complete():
            msg = await listen.next()
            if not msg.payload:
                continue
            assert payloads.problems(msg.body) == [], (msg.topic, msg.payload)
            kinds.setdefault(msg.body["schema"], []).append(msg)
        serving.cancel()
    listen.close()
    assert kinds["answer/1"][-1].body["done"] and kinds["answer/1"][-1].body["text"] == "Because cavitation."
    assert [(m.body["done"], m.body.get("source")) for m in kinds["answer/1"]] == [
        (False, "runbook"), (False, None), (True, "model")]
    jobs = {m.body["job"]: m for m in kinds["model-job/1"]}
    assert jobs["diagnosis"].topic == T.diagnosis_job("product_pump", "a1") and not jobs["diagnosis"].retain
    assert (jobs["diagnosis"].body["position"], jobs["diagnosis"].body["estimate_s"]) == (2, 41.5)
    assert jobs["answer"].topic == T.answer("q1") and jobs["answer"].body["request_id"] == "q1"
    assert T.parse(jobs["diagnosis"].topic).kind == "diagnosis_job"
    assert kinds["command-reply/1"][0].topic == T.command_reply("c1") and kinds["command-reply/1"][0].body["ok"]
    assert [m.body["seq"] for m in kinds["diagnosis-stream/1"]] == [0, 1, 2] and kinds["diagnosis-stream/1"][-1].body["done"]
    assert kinds["alarm/1"][0].topic == T.alarm("product_pump", "a1")
    assert kinds["diagnosis/1"][0].topic == T.diagnosis("product_pump", "a1")
    assert kinds["diagnosis-stream/1"][0].topic == T.diagnosis_stream("product_pump", "a1")
    if broker.protocol == "5":
        for kind, group in kinds.items():
            if kind in ("command/1", "ask/1", "handover-ack/1", "feedback/1"):
                continue  # sent by this test, not by the publisher
            for msg in group:
                assert msg.properties.ContentType == "application/json"
                assert ("schema", msg.body["schema"]) in msg.properties.UserProperty
        assert all(0 < m.properties.MessageExpiryInterval <= 120 for m in kinds["diagnosis-stream/1"])
        assert not hasattr(kinds["alarm/1"][0].properties, "MessageExpiryInterval")


async def test_run_publishes_what_the_stations_put_in_their_buffers(broker, tmp_path):
    events, diagnoses, tokens, results = Buffer(10, "events"), Buffer(10, "diagnoses"), Buffer(10, "tokens"), Buffer(10, "results")
    listen = await Listener(broker, [T.events(), T.all_diagnoses(), T.all_streams(), f"{T.command_replies()}+"]).ready()
    async with publisher(broker, tmp_path, events=events, diagnoses=diagnoses, chunks=tokens, results=results) as pub:
        runner = asyncio.create_task(pub.run())
        events.offer(event(make_alarm(), "raised"))
        diagnoses.offer(diagnosis("a1"))
        tokens.offer(DiagnosisChunk("a1", "Suction "))
        tokens.offer(DiagnosisChunk("a1", "low.", True))
        results.offer(CommandResult("r1", False, "no such alarm"))
        got = sorted([(await listen.next()).body["schema"] for _ in range(5)])
        runner.cancel()
    listen.close()
    assert got == sorted(["event/1", "diagnosis/1", "diagnosis-stream/1", "diagnosis-stream/1", "command-reply/1"])


async def test_late_subscriber_sees_active_alarm_and_diagnosis_until_normal_and_acknowledged(broker, tmp_path):
    async with publisher(broker, tmp_path) as pub:
        await asyncio.wait_for(pub.online.wait(), WAIT_S)
        pump, filler = make_alarm("a1"), make_alarm("a2", asset="filler", priority=Priority.CRITICAL, message="level high")
        pub.alarm_event(event(pump, "raised"))
        pub.alarm_event(event(filler, "raised"))
        pub.diagnosis(diagnosis("a1"))
        await pub.wait_idle()
        late = await retained_now(broker, f"{T.base}/+/+/+", T.status())
        assert sorted((m.topic, m.body["state"] if "state" in m.body else m.body["schema"]) for m in late) == sorted([
            (T.alarm("product_pump", "a1"), "active_unacknowledged"),
            (T.alarm("filler", "a2"), "active_unacknowledged"),
            (T.diagnosis("product_pump", "a1"), "diagnosis/1"),
        ])
        assert all(m.retain for m in late)

        # returned but not acknowledged: still retained, in its new state
        pub.alarm_event(event(pump, "returned", AlarmState.RTN_UNACK))
        await pub.wait_idle()
        late = {m.topic: m.body for m in await retained_now(broker, f"{T.base}/+/alarms/+", T.status())}
        assert late[T.alarm("product_pump", "a1")]["state"] == "returned_unacknowledged"

        # acknowledged while returned: normal, so the alarm and its diagnosis leave the retained store
        pub.alarm_event(event(pump, "acknowledged", AlarmState.NORMAL, actor="ann"))
        await pub.wait_idle()
        late = await retained_now(broker, f"{T.base}/+/+/+", T.status())
        assert [(m.topic, m.body["alarm_id"]) for m in late] == [(T.alarm("filler", "a2"), "a2")]
        # a diagnosis that arrives after its alarm cleared is not retained
        pub.diagnosis(diagnosis("a1"))
        await pub.wait_idle()
        assert [m.topic for m in await retained_now(broker, f"{T.base}/+/+/+", T.status())] == [T.alarm("filler", "a2")]


async def test_commands_reach_the_engine_only_when_valid_and_every_one_gets_a_reply(broker, tmp_path):
    commands: Buffer[OperatorCommand] = Buffer(10)
    replies = await Listener(broker, [f"{T.command_replies()}+"]).ready()
    async with publisher(broker, tmp_path, commands=commands) as pub:
        await asyncio.wait_for(pub.online.wait(), WAIT_S)
        send = lambda raw: replies.client.publish(T.commands("ann"), raw, qos=1)  # noqa: E731
        send(command(request_id="ok-1", command="acknowledge", alarm_id="a1", actor="ann", comment="seen"))
        cmd = await asyncio.wait_for(commands.get(), WAIT_S)
        assert (cmd.command, cmd.alarm_id, cmd.actor, cmd.comment, cmd.request_id) == ("acknowledge", "a1", "ann", "seen", "ok-1")
        alarm = make_alarm(state=AlarmState.ACTIVE_ACK)
        pub.command_reply(CommandResult("ok-1", True, "acknowledged", alarm))
        reply = await replies.next()
        assert reply.topic == T.command_reply("ok-1") and payloads.problems(reply.body) == []
        assert reply.body["ok"] and reply.body["alarm"]["state"] == "active_acknowledged"

        bad = [
            (b"{oops", "unknown", "not JSON"),
            (command(request_id="bad-1", command="reboot", alarm_id="a1", actor="ann"), "bad-1", "command: 'reboot' is not one of"),
            (command(request_id="bad-2", command="acknowledge", actor="ann"), "bad-2", "'alarm_id' is a required property"),
            (command(request_id="bad-3", command="shelve", alarm_id="a1", actor="ann"), "bad-3", "'shelve_s' is a required property"),
            # the actor is the sender (the topic's user): a payload naming someone else is refused
            (command(request_id="bad-4", command="acknowledge", alarm_id="a1", actor="plant-manager"), "bad-4",
             "'plant-manager' is not the sender 'ann'"),
        ]
        for raw, rid, reason in bad:
            send(raw)
            reply = await replies.next()
            assert reply.topic == T.command_reply(rid)
            assert payloads.problems(reply.body) == [] and reply.body["ok"] is False and reason in reply.body["message"]
        assert commands.qsize() == 0 and commands.offered == 1
        assert pub.stats()["commands_rejected"] == 5
    replies.close()


async def test_mqtt5_response_topic_is_honoured_under_the_reply_prefix_only(broker, tmp_path):
    if broker.protocol != "5":
        pytest.skip("response topics are MQTT 5")
    seen: list[OperatorCommand] = []

    async def engine(cmd: OperatorCommand) -> CommandResult:
        seen.append(cmd)
        return CommandResult(cmd.request_id, True, f"{cmd.command} done")

    mine = f"{T.command_replies()}hmi-7/session-3"
    replies = await Listener(broker, [f"{T.command_replies()}#", "hmi/#"]).ready()
    station = Engine(engine)
    async with publisher(broker, tmp_path, **station.wire()) as pub:
        serving = asyncio.create_task(station.serve(pub))
        await asyncio.wait_for(pub.online.wait(), WAIT_S)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic, props.CorrelationData = mine, b"corr-7"
        replies.client.publish(
            T.commands("bob"), command(request_id="r7", command="unshelve", alarm_id="a1"), qos=1, properties=props
        )
        reply = await replies.next()
        assert reply.topic == mine and reply.properties.CorrelationData == b"corr-7"
        assert reply.body["ok"] and reply.body["message"] == "unshelve done" and [c.request_id for c in seen] == ["r7"]
        # a response topic elsewhere (another client's topic, the service's own status) gets nothing: the
        # command is refused on the scheme's reply topic, counted, and never reaches the engine
        for i, foreign in enumerate(["hmi/replies/7", T.status(), f"{T.command_replies()}#"]):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = foreign
            replies.client.publish(T.commands("bob"), command(request_id=f"f{i}", command="unshelve", alarm_id="a1"),
                                   qos=1, properties=props)
            reply = await replies.next()
            assert reply.topic == T.command_reply(f"f{i}"), reply.topic
            assert not reply.body["ok"] and "outside" in reply.body["message"]
        assert pub.stats()["foreign_response_topics"] == 3 and [c.request_id for c in seen] == ["r7"]
        serving.cancel()
    replies.close()


async def test_questions_become_records_and_bad_ones_get_an_error_answer(broker, tmp_path):
    questions: Buffer[Question] = Buffer(10)
    answers = await Listener(broker, [f"{T.answers()}+"]).ready()
    async with publisher(broker, tmp_path, questions=questions) as pub:
        await asyncio.wait_for(pub.online.wait(), WAIT_S)
        answers.client.publish(T.ask("ann"), json.dumps({"schema": "ask/1", "request_id": "q1", "question": "why?", "actor": "ann"}), qos=1)
        reply = await answers.next()
        assert reply.topic == T.answer("q1") and reply.body["done"] and "'alarm_id' is a required property" in reply.body["error"]
        assert questions.qsize() == 0
        answers.client.publish(
            T.ask("ann"), json.dumps({"schema": "ask/1", "request_id": "q2", "alarm_id": "a1", "question": "why?", "actor": "ann"}), qos=1
        )
        q = await asyncio.wait_for(questions.get(), WAIT_S)
        for i, token in enumerate(["It ", "cavitates."]):
            pub.answer_chunk(q.request_id, q.alarm_id, token, done=i == 1, text="It cavitates." if i == 1 else None)
        chunks = [await answers.next(), await answers.next()]
        assert [(c.topic, c.body["seq"], c.body["token"], c.body["done"]) for c in chunks] == [
            (T.answer("q2"), 0, "It ", False), (T.answer("q2"), 1, "cavitates.", True),
        ]
        assert chunks[1].body["text"] == "It cavitates." and all(payloads.problems(c.body) == [] for c in chunks)
    answers.close()


async def test_broker_outage_every_alert_delivered_once_in_order(broker, tmp_path):
    persistent_broker(broker, tmp_path)
    listen = await Listener(broker, [T.events()], client_id="scada-events", persistent=True).ready()
    async with publisher(broker, tmp_path) as pub:
        await asyncio.wait_for(pub.online.wait(), WAIT_S)
        alarms = [make_alarm(f"a{i}", message=f"alarm {i}") for i in range(25)]
        for a in alarms[:5]:
            pub.alarm_event(event(a, "raised"))
        got = [(await listen.next()).body["alarm_id"] for _ in range(5)]  # delivered before the broker goes away

        await listen.synced()  # acknowledged to the broker: a persistent broker must not send them again
        broker.stop()
        await asyncio.wait_for(pub.offline.wait(), WAIT_S)
        pub.diagnosis(diagnosis("a0"))  # a diagnosis waiting with the alarms must go out after them
        for a in alarms[5:]:
            pub.alarm_event(event(a, "raised"))
        assert pub.outbox.pending_by_lane() == {0: 40, 1: 1}

        broker.start()
        await asyncio.wait_for(pub.online.wait(), WAIT_S)
        await pub.wait_idle(WAIT_S)
        pub.alarm_event(event(make_alarm("last"), "raised"))  # a marker: anything before it has arrived once it does
        while got[-1] != "last":
            got.append((await listen.next()).body["alarm_id"])
        await pub.wait_idle()
        assert pub.outbox.pending() == 0
    listen.close()
    assert got == [a.alarm_id for a in alarms] + ["last"]  # exactly once each, in order
    assert pub.counts["disconnects"] >= 1 and pub.counts["connects"] == 2


async def test_outbox_on_disk_survives_a_process_restart_and_alarms_go_before_diagnoses(broker, tmp_path):
    listen = await Listener(broker, [T.events(), T.all_diagnoses()]).ready()
    nowhere = MqttConnection(host="127.0.0.1", port=free_port(), protocol=broker.protocol)
    first = publisher(broker, tmp_path, connection=nowhere, client_id="pub-first")
    await first.start()
    first.diagnosis(diagnosis("a0"), asset="product_pump")
    for i in range(10):
        first.alarm_event(event(make_alarm(f"a{i}"), "raised"))
    await first.stop()
    assert listen.queue.empty()

    second = publisher(broker, tmp_path, client_id="pub-second")
    assert second.outbox.pending() == 21
    async with second:
        await second.wait_idle()
        second.alarm_event(event(make_alarm("last"), "raised"))
        got = []
        while not got or got[-1] != ("event/1", "last"):
            msg = await listen.next()
            got.append((msg.body["schema"], msg.body["alarm_id"]))
    listen.close()
    assert got == [("event/1", f"a{i}") for i in range(10)] + [("diagnosis/1", "a0"), ("event/1", "last")]


async def test_last_will_says_offline_when_the_connection_dies(broker, tmp_path):
    status = await Listener(broker, [T.status()]).ready()
    async with publisher(broker, tmp_path) as pub:
        await asyncio.wait_for(pub.online.wait(), WAIT_S)
        online = await status.until(lambda m: m.body["state"] == "online")
        assert online.body["version"] and online.body["started_at"] == pub.started_at
        pub.client.socket().shutdown(socket.SHUT_RDWR)  # no DISCONNECT packet: the broker sends the will
        will = await status.until(lambda m: True)
        assert will.body["state"] == "offline" and payloads.problems(will.body) == []
        back = await status.until(lambda m: True)
        assert back.body["state"] == "online"  # paho reconnects and the birth replaces the will
    bye = await status.until(lambda m: True)
    assert bye.body["state"] == "offline"  # a clean stop says offline itself
    status.close()
    late = await Listener(broker, [T.status()]).ready()
    retained = await late.next()
    assert retained.retain and retained.body["state"] == "offline"
    late.close()


@pytest.mark.parametrize("configured", ["3.1.1", "5"])
async def test_mqtt311_broker_gets_the_same_payloads_without_properties(tmp_path, configured):
    amqtt = AmqttBroker().start()
    try:
        conn = MqttConnection(host=amqtt.host, port=amqtt.port, protocol=configured)
        async with publisher(amqtt, tmp_path, connection=conn) as pub:
            await asyncio.wait_for(pub.online.wait(), WAIT_S)
            assert pub.v5 is False  # configured MQTT 5 falls back: amqtt only speaks 3.1.1
            pub.alarm_event(event(make_alarm(), "raised"))
            await pub.wait_idle()
            late = await Listener(amqtt, [T.all_alarms()], protocol="3.1.1").ready()
            # amqtt 0.12 also hands a new subscriber retained messages its filter does not match (the status)
            msg = await late.until(lambda m: m.topic != T.status())
            assert msg.topic == T.alarm("product_pump", "a1") and msg.retain and payloads.problems(msg.body) == []
            late.close()
    finally:
        amqtt.stop()


def test_alerts_tail_prints_active_alarms_and_diagnoses(broker, tmp_path):
    async def publish():
        async with publisher(broker, tmp_path) as pub:
            await asyncio.wait_for(pub.online.wait(), WAIT_S)
            pub.alarm_event(event(make_alarm(message="flow below 40 l/min"), "raised"))
            pub.diagnosis(diagnosis("a1"))
            await pub.wait_idle()

    asyncio.run(publish())
    out = subprocess.run(
        [sys.executable, "-m", "factory_copilot.cli", "alerts", "tail", "--host", broker.host, "--port", str(broker.port),
         "--protocol", broker.protocol, "--count", "3"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = sorted(ln for ln in out.stdout.splitlines() if not ln.startswith("-- "))
    assert len(lines) == 3
    assert any("HIGH" in l and "active_unacknowledged" in l and "product_pump" in l and "flow below 40 l/min" in l for l in lines)
    assert any("Suction pressure low and flow unsteady: cavitation." in l for l in lines)
    assert any("publisher offline" in l for l in lines)


async def test_alarms_go_before_replies_diagnoses_and_streamed_text(broker, tmp_path):
    persistent_broker(broker, tmp_path)
    listen = await Listener(broker, [f"{T.base}/#"], client_id="scada-all", persistent=True).ready()
    broker.stop()
    async with publisher(broker, tmp_path) as pub:
        for token in ("Suction ", "pressure ", "low."):
            pub.diagnosis_token("a0", token, asset="product_pump")
        pub.diagnosis(diagnosis("a0"), asset="product_pump")
        pub.command_reply(CommandResult("r1", True, "acknowledged"))
        for i in range(2):
            pub.alarm_event(event(make_alarm(f"a{i}"), "raised"))
        broker.start()
        await asyncio.wait_for(pub.online.wait(), WAIT_S)
        got = []
        while len(got) < 9:
            msg = await listen.next()
            if msg.topic != T.status():
                got.append(msg.body["schema"])
    listen.close()
    assert got == ["alarm/1", "event/1"] * 2 + ["command-reply/1", "diagnosis/1"] + ["diagnosis-stream/1"] * 3


async def test_a_diagnosis_goes_out_under_its_own_asset_when_its_alarm_event_was_never_seen(broker, tmp_path):
    # issue 21: the publisher guessed the asset from earlier alarm events and fell back to the level "unknown"
    listen = await Listener(broker, [T.all_diagnoses()]).ready()
    async with publisher(broker, tmp_path) as pub:
        await asyncio.wait_for(pub.online.wait(), WAIT_S)
        d = diagnosis("a9")
        d.asset = "filler"
        pub.diagnosis(d)  # no alarm event for a9 came before it (a restart, a dropped event)
        got = await asyncio.wait_for(listen.next(), WAIT_S)
        assert got.topic == T.diagnosis("filler", "a9") and got.body["asset"] == "filler"
        assert "unknown" not in got.topic.split("/")
    listen.close()
