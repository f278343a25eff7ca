"""Who may silence an alarm, against a real Mosquitto started with the configuration `broker init` writes.

The broker (TLS, password file, per-user ACL) decides who a sender is; the service takes the actor
from the topic level, checks the line's roles, refuses and audits what a role does not allow, answers
only under its own reply prefix and refuses oversized text before reading it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import shutil
import ssl
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as paho
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from factory_copilot.alarms import AlarmEngine, AlarmSettings
from factory_copilot.alarms import cli as alarms_cli
from factory_copilot.alarms.station import AlarmStation
from factory_copilot.config import SIMULATED_LINE, MqttConnection, Roles, load_line
from factory_copilot.plumbing.broker import MosquittoBroker, free_port
from factory_copilot.plumbing.broker_site import Account, BrokerSiteError, load_accounts, write_site
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.publish import Publisher, Topics
from factory_copilot.records import AlarmEvent, Anomaly, CommandResult, OperatorCommand
from tests.support.big_command import send_big_command

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs Mosquitto")

WAIT_S = 10.0
PASSWORDS = {"factory-copilot": "service-secret-1", "ann": "ann-secret-12", "sam": "sam-secret-12",
             "eve": "eve-secret-12"}
KINDS = {"factory-copilot": "service"}


@pytest.fixture
def site(tmp_path):
    accounts = [Account(name, KINDS.get(name, "person"), pw) for name, pw in PASSWORDS.items()]
    files = write_site(tmp_path / "mosquitto", accounts, bind="127.0.0.1", port=free_port(), tls=True,
                       hostnames=["127.0.0.1", "localhost"], log_packets=True)
    broker = MosquittoBroker(site=files).start()
    yield files
    broker.stop()


def roles_line():
    line = load_line(SIMULATED_LINE)
    roles = Roles.model_validate({"operators": {"users": ["ann"], "shelve_max_s": 1800}, "supervisors": ["sam"]})
    return line.model_copy(update={"roles": roles})


@dataclass
class Client:
    """A paho MQTT 5 client logged in as one user over TLS; replies and PUBACK reason codes awaited on the test's loop."""

    site: object
    user: str | None
    password: str | None = None
    tls: bool = True
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def __post_init__(self):
        self.connack: asyncio.Future = self.loop.create_future()
        self.subscribed = asyncio.Event()
        self.messages: asyncio.Queue = asyncio.Queue()
        self.pubacks: dict[int, asyncio.Future] = {}
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.user}-{uuid.uuid4().hex[:6]}",
                             protocol=paho.MQTTv5)
        if self.user:
            self.c.username_pw_set(self.user, self.password or PASSWORDS[self.user])
        if self.tls:
            self.c.tls_set(ca_certs=str(self.site.ca_file), cert_reqs=ssl.CERT_REQUIRED)
        self.c.on_connect = lambda c, u, f, rc, p=None: self._set(self.connack, rc)
        self.c.on_subscribe = lambda *a: self.loop.call_soon_threadsafe(self.subscribed.set)
        self.c.on_message = lambda c, u, m: self.loop.call_soon_threadsafe(
            self.messages.put_nowait, (m.topic, bytes(m.payload), m.properties))
        self.c.on_publish = lambda c, u, mid, rc, p=None: self._set(self.pubacks.setdefault(mid, self.loop.create_future()), rc)
        self.c.on_connect_fail = lambda c, u: self._set(self.connack, "connect failed")
        self.c.on_disconnect = lambda c, u, f, rc, p=None: self._set(self.connack, "connect failed")
        self.c.connect_async("127.0.0.1", self.site.port)
        self.c.loop_start()

    def _set(self, fut: asyncio.Future, value) -> None:
        self.loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(value))

    async def up(self, *topics: str) -> "Client":
        rc = await asyncio.wait_for(self.connack, WAIT_S)
        assert not rc.is_failure, f"{self.user} refused: {rc}"
        if topics:
            self.c.subscribe([(t, 1) for t in topics])
            await asyncio.wait_for(self.subscribed.wait(), WAIT_S)
        return self

    async def publish(self, topic: str, body: dict | bytes, props: Properties | None = None):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        info = self.c.publish(topic, raw, qos=1, properties=props)
        fut = self.pubacks.setdefault(info.mid, self.loop.create_future())
        return await asyncio.wait_for(fut, WAIT_S)

    async def next(self, timeout: float = WAIT_S):
        topic, raw, props = await asyncio.wait_for(self.messages.get(), timeout)
        return topic, (json.loads(raw) if raw else None), props

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@dataclass
class Service:
    engine: AlarmEngine
    station: AlarmStation
    publisher: Publisher
    commands: Buffer
    topics: Topics
    alarm_id: str
    tasks: list


@contextlib.asynccontextmanager
async def service(site, tmp_path, line=None, commands_max: int = 100, run_station: bool = True):
    """The alarm engine (one HIGH alarm raised), its station and the publish station, as the service account over TLS."""
    line = line or roles_line()
    t = [1_800_000_000.0]
    engine = AlarmEngine(line, tmp_path / "alarms.db", AlarmSettings(on_delay_s=0.0, off_delay_s=5.0), clock=lambda: t[0])
    events: list[AlarmEvent] = []
    for _ in range(3):
        events += engine.ingest(Anomaly(ts=t[0], asset="product_pump", kind="limit", signal="flow", value=40.0,
                                        score=2.0, threshold=1.0, mode="running"))
        t[0] += 1
    raised = [e for e in events if e.event == "raised"]
    assert raised, events
    commands: Buffer[OperatorCommand] = Buffer(commands_max, "commands")
    results: Buffer[CommandResult] = Buffer(1000, "results")
    station = AlarmStation(engine, Buffer(10, "anomalies"), Buffer(1000, "events"), commands, results)
    conn = MqttConnection(host="127.0.0.1", port=site.port, username="factory-copilot",
                          password=PASSWORDS["factory-copilot"], tls=True, ca_file=str(site.ca_file))
    pub = Publisher.for_line(line, tmp_path / "outbox.db", connection=conn, commands=commands, results=results)
    await pub.start()
    await asyncio.wait_for(pub.online.wait(), WAIT_S)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(pub.run(stop))]
    if run_station:
        tasks.append(asyncio.create_task(station.run(stop)))
    svc = Service(engine, station, pub, commands, pub.topics, raised[0].alarm_id, tasks)
    try:
        yield svc
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pub.stop()
        engine.close()


def cmd(command: str, alarm_id: str, rid: str | None = None, **kw) -> dict:
    return {"schema": "command/1", "request_id": rid or uuid.uuid4().hex[:8], "command": command, "alarm_id": alarm_id,
            **kw}


async def ask_engine(client: Client, svc: Service, user: str, body: dict, rid: str | None = None):
    """Send ``body`` as ``user`` on its own command topic and return the reply to it (on ``rid``'s reply topic)."""
    assert not (await client.publish(svc.topics.commands(user), body)).is_failure
    while True:
        topic, reply, _ = await client.next()
        if topic == svc.topics.command_reply(rid or body["request_id"]):
            return reply


def audit_rows(svc: Service, event: str | None = None):
    return [e for e in svc.engine.audit(svc.alarm_id) if event is None or e.event == event]


def print_audit(db) -> str:
    """What `factory-copilot alarms audit` prints for this file."""
    out = io.StringIO()
    args = argparse.Namespace(db=str(db), alarm=None, since_min=None, limit=200, json=False, config=None, state_dir=None,
                              from_store=False, line=None)  # the options `alarms audit` has (cli.py reads them all)
    with contextlib.redirect_stdout(out):
        assert alarms_cli._audit(args) == 0
    return out.getvalue()


# ---- the broker: who may connect, who may publish where --------------------------------------------------------


async def test_anonymous_and_wrong_password_and_plain_text_cannot_connect(site):
    for client in (Client(site, None), Client(site, "ann", "not-her-password")):
        rc = await asyncio.wait_for(client.connack, WAIT_S)
        assert rc.is_failure and "authori" in str(rc).lower(), rc
        client.close()
    plain = Client(site, "ann", tls=False)  # TLS only: the password never crosses the wire in clear
    rc = await asyncio.wait_for(plain.connack, WAIT_S)
    plain.close()
    assert rc == "connect failed" or rc.is_failure
    assert "not authorised" in site.log_file.read_text()


async def test_ann_acknowledges_as_herself_and_the_audit_row_names_her(site, tmp_path):
    async with service(site, tmp_path) as svc:
        ann = await Client(site, "ann").up(f"{svc.topics.command_replies()}#")
        reply = await ask_engine(ann, svc, "ann", cmd("acknowledge", svc.alarm_id, comment="seen"))
        assert reply["ok"], reply
        assert reply["alarm"]["acked_by"] == "ann" and "acknowledged by ann" in reply["message"]
        [row] = audit_rows(svc, "acknowledged")
        assert (row.actor, row.comment) == ("ann", "seen")
        ann.close()


async def test_eve_cannot_publish_on_anns_topic_and_the_broker_logs_the_refusal(site, tmp_path):
    async with service(site, tmp_path) as svc:
        eve = await Client(site, "eve").up(f"{svc.topics.command_replies()}#")
        topic = svc.topics.commands("ann")
        puback = await eve.publish(topic, cmd("acknowledge", svc.alarm_id, rid="forged", actor="ann"))
        assert puback.is_failure and "authori" in str(puback).lower()  # MQTT 5: the broker says so
        # eve's own level works, and by then the forged one would have arrived had the broker let it through
        reply = await ask_engine(eve, svc, "eve", cmd("acknowledge", svc.alarm_id, rid="as-eve"))
        assert not reply["ok"] and "eve is in no role" in reply["message"]
        assert svc.publisher.stats()["commands"] == 1  # only eve's own command reached the service
        assert svc.engine.get(svc.alarm_id).acked_by is None
        assert [(r.event, r.actor) for r in audit_rows(svc) if r.actor] == [("refused", "eve")]
        assert "Denied PUBLISH from eve" in site.log_file.read_text() and topic in site.log_file.read_text()
        eve.close()


async def test_roles_limit_shelving_and_out_of_service_and_refusals_are_audited(site, tmp_path):
    async with service(site, tmp_path) as svc:
        ann = await Client(site, "ann").up(f"{svc.topics.command_replies()}#")
        sam = await Client(site, "sam").up()
        too_long = await ask_engine(ann, svc, "ann", cmd("shelve", svc.alarm_id, shelve_s=8 * 3600))
        assert not too_long["ok"] and "ann may shelve for at most 1800 s" in too_long["message"]
        assert svc.engine.get(svc.alarm_id).shelved_until is None
        oos = await ask_engine(ann, svc, "ann", cmd("out_of_service", svc.alarm_id))
        assert not oos["ok"] and "supervisors may" in oos["message"]
        refused = audit_rows(svc, "refused")
        assert [(r.actor, r.comment.split(":")[0]) for r in refused] == [
            ("ann", "shelve for 28800 s refused"), ("ann", "out_of_service refused")]
        ok = await ask_engine(ann, svc, "ann", cmd("shelve", svc.alarm_id, shelve_s=600))
        assert ok["ok"] and ok["alarm"]["shelved_by"] == "ann"
        # the supervisor may do what ann may not; the reply goes to the reply topic, which ann follows too
        assert not (await sam.publish(svc.topics.commands("sam"), cmd("out_of_service", svc.alarm_id, rid="s1"))).is_failure
        while True:
            topic, reply, _ = await ann.next()
            if topic == svc.topics.command_reply("s1"):
                break
        assert reply["ok"] and reply["alarm"]["out_of_service"] is True
        assert [(r.event, r.actor) for r in audit_rows(svc) if r.actor] == [
            ("refused", "ann"), ("refused", "ann"), ("shelved", "ann"), ("out_of_service", "sam")]
        ann.close()
        sam.close()


async def test_a_payload_actor_that_is_not_the_sender_is_rejected(site, tmp_path):
    async with service(site, tmp_path) as svc:
        ann = await Client(site, "ann").up(f"{svc.topics.command_replies()}#")
        reply = await ask_engine(ann, svc, "ann", cmd("acknowledge", svc.alarm_id, actor="plant-manager"))
        assert not reply["ok"] and "'plant-manager' is not the sender 'ann'" in reply["message"]
        assert svc.engine.get(svc.alarm_id).acked_by is None and svc.station.stats()["commands"] == 0
        ann.close()


async def test_a_response_topic_outside_the_reply_prefix_gets_nothing(site, tmp_path):
    async with service(site, tmp_path) as svc:
        spy = await Client(site, "factory-copilot").up("#")  # the service account may read everything
        ann = await Client(site, "ann").up()
        await asyncio.sleep(0)
        while not spy.messages.empty():  # retained status and alarm states
            spy.messages.get_nowait()
        for i, foreign in enumerate([svc.topics.status(), f"{svc.topics.base}/product_pump/alarms/x", "hmi/inbox"]):
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic, props.CorrelationData = foreign, b"c"
            await ann.publish(svc.topics.commands("ann"), cmd("acknowledge", svc.alarm_id, rid=f"f{i}"), props)
            on_foreign = []  # the service's own status may be published on its status topic at any time: a reply
            while True:      # is told by its request id or the correlation data, not by the topic alone
                topic, body, props = await spy.next()
                if topic == foreign:
                    on_foreign.append((body, getattr(props, "CorrelationData", None)))
                if topic == svc.topics.command_reply(f"f{i}"):
                    break
            assert not body["ok"] and "outside" in body["message"]
            assert not [b for b, corr in on_foreign
                        if corr == b"c" or (isinstance(b, dict) and b.get("request_id") == f"f{i}")], on_foreign
        assert svc.publisher.stats()["foreign_response_topics"] == 3
        assert svc.engine.get(svc.alarm_id).acked_by is None
        spy.close()
        ann.close()


async def test_control_characters_are_stored_as_data_and_printed_escaped(site, tmp_path, caplog):
    forged = "seen\n2026-12-01 13:33:46  product_pump:flow:limit  cleared  by supervisor\x1b[2J\x1b]0;owned\x07"
    async with service(site, tmp_path) as svc:
        ann = await Client(site, "ann").up(f"{svc.topics.command_replies()}#")
        with caplog.at_level(logging.INFO):
            reply = await ask_engine(ann, svc, "ann", cmd("acknowledge", svc.alarm_id, comment=forged))
        assert reply["ok"]
        [row] = audit_rows(svc, "acknowledged")
        assert row.comment == forged  # kept exactly, as data
        # an actor from a broker that allows any user name: refused by the roles, logged and audited escaped
        svc.engine.command(OperatorCommand("acknowledge", svc.alarm_id, "eve\nok by sam\x1b[2J", "x"))
        ann.close()
    printed = print_audit(tmp_path / "alarms.db")
    assert "\x1b" not in printed and "\x07" not in printed
    assert "\\x1b[2J" in printed and "seen\\x0a2026-12-01" in printed and "eve\\x0aok by sam" in printed
    # one printed line per audit row (raised, acknowledged, refused): the forged line is no line of its own
    assert len(printed.splitlines()) == 3
    assert all(not line.startswith("2026-12-01 13:33:46") for line in printed.splitlines())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "\x1b" not in logged and "eve\\x0aok by sam" in logged


async def test_a_20_mb_command_is_refused_without_growing_the_service(site, tmp_path):
    async with service(site, tmp_path) as svc:
        ann = await Client(site, "ann").up(f"{svc.topics.command_replies()}#")
        # warm up: one command through the whole path, so the measurement sees no first-use allocations
        assert (await ask_engine(ann, svc, "ann", cmd("shelve", svc.alarm_id, shelve_s=60)))["ok"]
        me = psutil.Process()
        before = me.memory_info().rss
        # sent from another process, so only the service's own memory is in the measurement
        sent = await asyncio.to_thread(send_big_command, site.port, "ann", PASSWORDS["ann"],
                                       svc.topics.commands("ann"), svc.alarm_id, str(site.ca_file), 30)
        # the broker closed the sender's connection: a packet beyond its limit is never forwarded
        assert sent.returncode == 0 and sent.stdout.strip() == "disconnected", sent.stdout + sent.stderr
        # a 100 KB one passes the broker's limit (256 KiB) and is refused by the service before it is parsed
        # (so its request id is not read: the reply goes to .../commands/reply/unknown)
        mid = cmd("unshelve", svc.alarm_id, rid="mid", comment="y" * 100_000)
        reply = await ask_engine(ann, svc, "ann", mid, rid="unknown")
        assert not reply["ok"] and "over the limit of 65536" in reply["message"] and len(json.dumps(reply)) < 2000
        after = me.memory_info().rss
        assert after - before < 4 * 1024 * 1024, f"RSS grew {(after - before) / 2**20:.1f} MiB"
        # the service goes on serving, and the big one changed nothing
        assert svc.engine.get(svc.alarm_id).shelved_until is not None
        assert (await ask_engine(ann, svc, "ann", cmd("unshelve", svc.alarm_id)))["ok"]
        assert svc.publisher.stats()["oversized"] == 1
        ann.close()


async def test_a_full_engine_queue_answers_busy_retry_and_every_command_gets_a_reply(site, tmp_path):
    async with service(site, tmp_path, commands_max=3, run_station=False) as svc:
        ann = await Client(site, "ann").up(f"{svc.topics.command_replies()}#")
        rids = [f"b{i}" for i in range(20)]
        for rid in rids:
            await ann.publish(svc.topics.commands("ann"), cmd("unshelve", svc.alarm_id, rid=rid))
        replies = {}
        while len(replies) < 17:  # the engine is stalled: all but the 3 queued are refused at once
            topic, body, _ = await ann.next()
            replies[body["request_id"]] = body
        assert all(not r["ok"] and r["message"].startswith("busy, retry") for r in replies.values())
        assert svc.publisher.stats()["commands_busy"] == 17 and svc.commands.stats()["dropped"] == 0
        stop = asyncio.Event()
        running = asyncio.create_task(svc.station.run(stop))  # the engine catches up: the 3 queued get answers
        while len(replies) < 20:
            topic, body, _ = await ann.next()
            replies[body["request_id"]] = body
        stop.set()
        await running
        assert set(replies) == set(rids)
        ann.close()


# ---- the users file ---------------------------------------------------------------------------------------------


def test_users_file_errors_name_the_file_and_entry(tmp_path, monkeypatch):
    path = tmp_path / "users.yaml"
    path.write_text("users:\n  - {name: ann}\n  - {name: 'ev/e'}\n")
    with pytest.raises(BrokerSiteError, match=r"users\.yaml: users\[1\]: user name 'ev/e'"):
        load_accounts(path)
    path.write_text("users:\n  - {name: reply}\n")
    with pytest.raises(BrokerSiteError, match="reserved"):
        load_accounts(path)
    path.write_text("users:\n  - {name: ann, password_env: ANN_PW}\n  - {name: scada, kind: reader}\n")
    with pytest.raises(BrokerSiteError, match="ANN_PW is not set"):
        load_accounts(path)
    monkeypatch.setenv("ANN_PW", "from-the-environment")
    ann, scada = load_accounts(path)
    assert (ann.password, ann.generated) == ("from-the-environment", False)
    assert scada.kind == "reader" and scada.generated and len(scada.password) >= 16
    files = write_site(tmp_path / "out", [ann, scada], bind="127.0.0.1", tls=False)
    assert files.credentials is not None and oct(files.credentials.stat().st_mode)[-3:] == "600"
    assert "from-the-environment" not in (tmp_path / "out" / "passwd").read_text()
    assert scada.password in files.credentials.read_text() and ann.password not in files.credentials.read_text()


async def test_the_service_takes_no_20_mb_packet_even_from_a_broker_without_a_limit(broker, tmp_path):
    """MQTT 5 Maximum Packet Size: the broker must not forward a packet beyond the service's limit."""
    if broker.protocol != "5":
        pytest.skip("Maximum Packet Size is MQTT 5")
    line = roles_line()
    commands: Buffer[OperatorCommand] = Buffer(10, "commands")
    pub = Publisher.for_line(line, tmp_path / "outbox.db", connection=MqttConnection(host=broker.host, port=broker.port),
                             commands=commands)
    await pub.start()
    await asyncio.wait_for(pub.online.wait(), WAIT_S)
    me = psutil.Process()
    before = me.memory_info().rss
    sent = await asyncio.to_thread(send_big_command, broker.port, None, None, pub.topics.commands("ann"), "a1", None, 30)
    assert sent.stdout.strip() == "acknowledged", sent.stdout + sent.stderr  # this broker took it ...
    small = Client(type("S", (), {"port": broker.port})(), None, tls=False)
    await small.up()
    await small.publish(pub.topics.commands("ann"), cmd("acknowledge", "a1", rid="small"))
    got = await asyncio.wait_for(commands.get(), WAIT_S)  # ... but only the small one that followed arrived
    assert got.request_id == "small" and commands.qsize() == 0 and pub.stats()["commands"] == 1
    assert me.memory_info().rss - before < 4 * 1024 * 1024
    small.close()
    await pub.stop()


# ---- broker init and the demo use one mechanism -------------------------------------------------------------------


async def test_broker_init_writes_a_site_that_mosquitto_runs(tmp_path, monkeypatch, capsys):
    from factory_copilot.cli import main

    users = tmp_path / "users.yaml"
    users.write_text("users:\n  - {name: ann, password_env: ANN_PW}\n  - {name: factory-copilot, kind: service}\n"
                     "  - {name: scada, kind: reader}\n")
    monkeypatch.setenv("ANN_PW", PASSWORDS["ann"])
    out, port = tmp_path / "site", free_port()
    assert main(["broker", "init", "--users", str(users), "--out", str(out), "--bind", "0.0.0.0", "--no-tls"]) == 2
    assert "--no-tls sends passwords in clear" in capsys.readouterr().err
    assert main(["broker", "init", "--users", str(users), "--out", str(out), "--bind", "127.0.0.1", "--port",
                 str(port), "--hostname", "127.0.0.1"]) == 0
    printed = capsys.readouterr().out
    assert f"listener 127.0.0.1:{port} TLS" in printed and "credentials.yaml" in printed
    conf = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "persistence true" in conf and f"listener {port} 127.0.0.1" in conf
    assert "pattern write factory-copilot/+/+/commands/%u" in (out / "acl").read_text()
    assert PASSWORDS["ann"] not in (out / "passwd").read_text()
    assert oct((out / "certs" / "server.key").stat().st_mode)[-3:] == "600"
    from factory_copilot.plumbing.broker_site import SiteFiles

    site = SiteFiles(out, out / "mosquitto.conf", out / "mosquitto.log", "127.0.0.1", port, True,
                     out / "certs" / "ca.crt", out / "credentials.yaml")
    broker = MosquittoBroker(site=site).start()
    try:
        ann = await Client(site, "ann").up()  # the password from the environment, over TLS with the site CA
        ann.close()
        generated = {u["name"]: u["password"] for u in
                     __import__("yaml").safe_load((out / "credentials.yaml").read_text())["users"]}
        assert set(generated) == {"factory-copilot", "scada"}
        scada = await Client(site, "scada", generated["scada"]).up()
        assert (await scada.publish("factory-copilot/s/l/commands/scada", {"x": 1})).is_failure  # a reader only reads
        scada.close()
    finally:
        broker.stop()


async def test_the_demo_runs_its_broker_the_broker_init_way(tmp_path):
    from simulators.demo import DEMO_ROLES, demo_broker, demo_user

    broker, port, site = demo_broker(free_port(), tmp_path)
    try:
        assert site is not None and not site.tls and site.host == "127.0.0.1"
        anonymous = Client(site, None, tls=False)
        assert (await asyncio.wait_for(anonymous.connack, WAIT_S)).is_failure
        anonymous.close()
        name, password = demo_user(site, "ann")
        assert "ann" in DEMO_ROLES.operators.users and "sam" in DEMO_ROLES.supervisors.users
        ann = await Client(site, name, password, tls=False).up()
        assert not (await ann.publish("factory-copilot/demo-plant/packaging-1/commands/ann", {"x": 1})).is_failure
        assert (await ann.publish("factory-copilot/demo-plant/packaging-1/commands/sam", {"x": 1})).is_failure
        ann.close()
        from factory_copilot.plumbing.logins import Logins

        logins = Logins.load(site.logins)
        assert set(logins.hashes) == {"ann", "sam", "node-red"} and logins.check("ann", password)
    finally:
        broker.stop()


# ---- roles in the line file ---------------------------------------------------------------------------------------


def test_roles_in_the_line_file_keep_their_defaults_and_bad_names_are_refused_with_their_path():
    import yaml as _yaml

    from factory_copilot.config import LineConfigError, parse_line

    data = _yaml.safe_load(SIMULATED_LINE.read_text())
    data["roles"] = {"operators": {"users": ["ann"]}, "supervisors": ["sam"]}
    roles = parse_line(data).roles
    assert (roles.operators.shelve_max_s, roles.operators.out_of_service) == (1800, False)
    assert (roles.supervisors.shelve_max_s, roles.supervisors.out_of_service) == (8 * 3600, True)
    assert roles.refusal("ann", "acknowledge") is None and roles.refusal("sam", "return_to_service") is None
    assert "in no role" in roles.refusal("eve", "unshelve")
    data["roles"] = {"operators": {"users": ["ann/+"]}, "admins": ["x"]}
    with pytest.raises(LineConfigError) as err:
        parse_line(data, "plant.yaml")
    assert "plant.yaml" in str(err.value) and "roles.operators.users" in str(err.value) and "roles.admins" in str(err.value)
