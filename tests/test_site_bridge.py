"""An edge broker bridged to a site broker, both real Mosquitto processes as ``broker init`` writes them: a line's
alarms reach the site in order while the site is up, wait on the edge while it is down and follow in order, none
lost, when it is back; the site's commands come in on the sender's level only; the bridge's state is on the edge.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import stat

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from factory_copilot.plumbing.broker import MOSQUITTO, MosquittoBroker, free_port
from factory_copilot.plumbing.broker_site import (BRIDGE_IN, BRIDGE_OUT, Account, Bridge, BrokerSiteError,
                                                  bridge_state_topic, write_site)
from factory_copilot.config import MqttConnection
from factory_copilot.publish import Publisher
from factory_copilot.publish.topics import Topics

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs Mosquitto")

WAIT_S = 30.0  # the bridge retries after 2 s, backing off: a restarted site broker is reached within this
BASE = "factory-copilot/plant/line1"
PW = {"factory-copilot": "service-secret-1", "edge-bridge": "bridge-secret-1", "ann": "ann-secret-12",
      "scada": "scada-secret-1"}


class Client:
    """A paho MQTT 5 client with a persistent session, its messages awaited on the test's loop."""

    def __init__(self, host: str, port: int, user: str, ca_file=None, client_id: str | None = None):
        self.loop = asyncio.get_running_loop()
        self.messages: asyncio.Queue = asyncio.Queue()
        self.subscribed = asyncio.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{user}",
                                  protocol=paho.MQTTv5)
        self.client.username_pw_set(user, PW[user])
        if ca_file:
            self.client.tls_set(ca_certs=str(ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_subscribe = lambda *a: self.loop.call_soon_threadsafe(self.subscribed.set)
        self.client.on_message = lambda c, u, m: self.loop.call_soon_threadsafe(
            self.messages.put_nowait, (m.topic, bytes(m.payload), bool(m.retain)))
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(host, port, clean_start=False, properties=props)
        self.client.loop_start()

    async def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        await asyncio.wait_for(self.subscribed.wait(), WAIT_S)

    async def until(self, predicate):
        while True:
            msg = await asyncio.wait_for(self.messages.get(), WAIT_S)
            if predicate(msg):
                return msg

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def site_and_edge(tmp_path):
    site = write_site(tmp_path / "site", [Account("edge-bridge", "bridge", PW["edge-bridge"]),
                                          Account("ann", "person", PW["ann"]), Account("scada", "reader", PW["scada"])],
                      bind="127.0.0.1", port=free_port(), tls=True, hostnames=["127.0.0.1"])
    bridge = Bridge.parse(f"127.0.0.1:{site.port}", "edge-bridge", PW["edge-bridge"], ["plant/line1"],
                          str(site.ca_file))
    edge = write_site(tmp_path / "edge", [Account("factory-copilot", "service", PW["factory-copilot"])],
                      bind="127.0.0.1", port=free_port(), tls=False, bridge=bridge)
    site_broker, edge_broker = MosquittoBroker(site=site).start(), MosquittoBroker(site=edge).start()
    yield site, edge, site_broker, edge_broker
    edge_broker.stop()
    site_broker.stop()


async def link_is(pub: Publisher, up: bool) -> bool:
    """Wait until the service's publisher sees the bridge up (or down); its callbacks run on this loop."""
    while pub.stats()["site_links"].get("site", {}).get("up") is not up:
        pub.site_link_changed.clear()
        await asyncio.wait_for(pub.site_link_changed.wait(), WAIT_S)
    return True


async def test_alarms_reach_the_site_in_order_and_those_of_an_outage_follow_none_lost(site_and_edge, tmp_path):
    site, edge, site_broker, _ = site_and_edge
    conn = MqttConnection(host="127.0.0.1", port=edge.port, username="factory-copilot",
                          password=PW["factory-copilot"], protocol="5", client_id="the-line-service")
    pub = Publisher("plant", "line1", tmp_path / "outbox.db", connection=conn)
    await pub.__aenter__()
    service = Client("127.0.0.1", edge.port, "factory-copilot")
    scada = Client("127.0.0.1", site.port, "scada", site.ca_file)
    ann = Client("127.0.0.1", site.port, "ann", site.ca_file)
    try:
        await service.subscribe(bridge_state_topic("plant"))
        await service.until(lambda m: m[1] == b"1")  # the bridge is up
        await service.subscribe(f"{BASE}/commands/+")
        await scada.subscribe(f"{BASE}/#")

        def publish(n: int) -> None:
            service.client.publish(f"{BASE}/events", json.dumps({"seq": n}), qos=1).wait_for_publish(WAIT_S)

        for n in range(20):
            publish(n)
        got = [json.loads((await scada.until(lambda m: m[0].endswith("/events")))[1])["seq"] for _ in range(20)]
        assert got == list(range(20))

        await link_is(pub, True)  # the service sees the link up (retained)
        site_broker.stop()  # the WAN is down: the line keeps publishing on its own broker
        await service.until(lambda m: m[0] == bridge_state_topic("plant") and m[1] == b"0")
        await link_is(pub, False)  # the service's /health says so
        for n in range(20, 70):
            publish(n)
        site_broker.start()
        await service.until(lambda m: m[0] == bridge_state_topic("plant") and m[1] == b"1")
        await link_is(pub, True)
        seqs = []
        while not set(range(20, 70)) <= set(seqs):
            topic, payload, _ = await scada.until(lambda m: m[0].endswith("/events"))
            seqs.append(json.loads(payload)["seq"])
        assert list(dict.fromkeys(s for s in seqs if s >= 20)) == list(range(20, 70))  # none lost, in order
        # QoS 1 is at least once: only what was in flight when the site went down may come twice (consumers keep
        # one per event id); nothing published during the outage does
        assert [s for s in seqs if s >= 20] == list(range(20, 70))
        assert all(s < 20 for s in seqs[:len(seqs) - 50])

        # a person's command at the site reaches the edge on that person's own level, and only there
        await ann.subscribe(f"{BASE}/commands/reply/#")
        # forged first: one client's messages keep their order, so had it passed it would arrive before the other
        ann.client.publish(f"{BASE}/commands/scada", b'{"cmd": "forged"}', qos=1).wait_for_publish(WAIT_S)
        ann.client.publish(f"{BASE}/commands/ann", b'{"cmd": "ack"}', qos=1).wait_for_publish(WAIT_S)
        topic, payload, _ = await service.until(lambda m: "/commands/" in m[0])
        assert topic == f"{BASE}/commands/ann" and payload == b'{"cmd": "ack"}'
        # the line's service answered it (a command without its fields is refused, saying which): back at the site
        topic, payload, _ = await ann.until(lambda m: "/commands/reply/" in m[0])
        assert "'request_id' is a required property" in json.loads(payload)["message"]
    finally:
        for c in (service, scada, ann):
            c.close()
        await pub.__aexit__(None, None, None)


def test_every_topic_a_line_publishes_is_carried_out_and_every_topic_a_person_writes_is_carried_in():
    t = Topics("plant", "line1")
    out = [t.alarm("pump", "a1"), t.diagnosis("pump", "a1"), t.diagnosis_stream("pump", "a1"),
           t.diagnosis_job("pump", "a1"), t.events(), t.status(), t.handover(), t.command_reply("r1"), t.answer("q1")]
    into = [t.commands("ann"), t.ask("ann")]

    def covered(topic: str, patterns) -> bool:
        rest = topic.removeprefix(t.base + "/").split("/")
        for p in patterns:
            levels = p.split("/")
            if levels[-1] == "#" and len(rest) >= len(levels) - 1 and all(
                    a in ("+", b) for a, b in zip(levels[:-1], rest)):
                return True
            if len(levels) == len(rest) and all(a in ("+", b) for a, b in zip(levels, rest)):
                return True
        return False

    assert [x for x in out if not covered(x, BRIDGE_OUT)] == []
    assert [x for x in into if not covered(x, BRIDGE_IN)] == []
    assert [x for x in out if covered(x, BRIDGE_IN)] == []  # nothing goes both ways: no loop


def test_broker_init_writes_the_bridge_and_refuses_what_cannot_work(tmp_path, monkeypatch, capsys):
    from factory_copilot.cli import main

    users = tmp_path / "users.yaml"
    users.write_text("users: [{name: factory-copilot, kind: service, password: service-secret-1}]\n")

    def init(*args) -> tuple[int, str, str]:
        rc = main(["broker", "init", "--users", str(users), "--out", str(tmp_path / "edge"), "--bind", "127.0.0.1",
                   "--no-tls", *args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    monkeypatch.setenv("FC_BRIDGE_PASSWORD", "bridge-secret-1")
    rc, printed, err = init("--bridge-to", "127.0.0.1:8883", "--bridge-line", "plant/line1", "--bridge-line",
                            "plant/line2")
    assert rc == 0, err
    conf = tmp_path / "edge" / "mosquitto.conf"
    text = conf.read_text()
    assert "connection site" in text and "address 127.0.0.1:8883" in text and "cleansession false" in text
    assert f"topic +/alarms/# out 1 {BASE}/ {BASE}/" in text
    assert "topic commands/+ in 1 factory-copilot/plant/line2/ factory-copilot/plant/line2/" in text
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600  # it holds the bridge's password
    assert "autosave_interval 10" in text
    assert "factory-copilot/plant/bridge/site" in printed

    for args, why in [(["--bridge-to", "site.example:8883"], "--bridge-line SITE/LINE"),
                      (["--bridge-to", "site.example", "--bridge-line", "p/l"], "HOST:PORT"),
                      (["--bridge-to", "site.example:8883", "--bridge-line", "p/+"], "SITE/LINE"),
                      (["--bridge-to", "site.example:8883", "--bridge-line", "p/l", "--bridge-no-tls"], "in clear"),
                      (["--bridge-line", "p/l"], "--bridge-to")]:
        rc, _, err = init(*args)
        assert rc == 2 and why in err, (args, err)
    monkeypatch.delenv("FC_BRIDGE_PASSWORD")
    rc, _, err = init("--bridge-to", "127.0.0.1:8883", "--bridge-line", "plant/line1")
    assert rc == 2 and "FC_BRIDGE_PASSWORD" in err
    with pytest.raises(BrokerSiteError, match="--no-persistence"):
        write_site(tmp_path / "x", [Account("factory-copilot", "service", "service-secret-1")], tls=False,
                   persistence=False, bridge=Bridge.parse("h:1", "edge-bridge", "bridge-secret-1", ["p/l"]))


async def test_only_the_explainers_read_the_sites_explain_jobs_and_they_answer_only_on_reply_levels(tmp_path):
    """The explain jobs carry the lines' prompts: a reader or a person subscribed to the whole prefix, or joining the
    $share/explainers group itself, reads none of them; an explainer account takes every job and may write only on a
    line's explain/reply level (docs/site.md: on Mosquitto 2.0 a reader in the group still costs the jobs the broker
    hands it, which the pool's lease publishes again)."""
    pw = {"factory-copilot": PW["factory-copilot"], "scada": PW["scada"], "ann": PW["ann"], "pool-1": "pool-secret-1"}
    PW.setdefault("pool-1", pw["pool-1"])
    site = write_site(tmp_path / "site", [Account(n, k, pw[n]) for n, k in (
        ("factory-copilot", "service"), ("scada", "reader"), ("ann", "person"), ("pool-1", "explainer"))],
        bind="127.0.0.1", port=free_port(), tls=False)
    broker = MosquittoBroker(site=site).start()
    jobs, shared = "factory-copilot/plant/explain/jobs", "$share/explainers/factory-copilot/plant/explain/jobs"
    clients = {n: Client("127.0.0.1", site.port, n) for n in pw}
    service = clients["factory-copilot"]

    def send(*seqs: int) -> None:
        for n in seqs:
            service.client.publish(jobs, json.dumps({"seq": n}), qos=1).wait_for_publish(WAIT_S)
        service.client.publish(f"{BASE}/events", b"marker", qos=1).wait_for_publish(WAIT_S)

    async def nothing_of_the_jobs(nosy: str) -> None:
        seen = []
        await clients[nosy].until(lambda m: seen.append(m[0]) or m[1] == b"marker")
        assert not [t for t in seen if "/explain/" in t], (nosy, seen)

    try:
        await clients["pool-1"].subscribe(shared)
        for nosy in ("scada", "ann"):
            await clients[nosy].subscribe("factory-copilot/#")
        await service.subscribe("factory-copilot/#")
        send(*range(6))
        taken = [json.loads((await clients["pool-1"].until(lambda m: m[0] == jobs))[1])["seq"] for _ in range(6)]
        assert taken == list(range(6))
        for nosy in ("scada", "ann"):
            await nothing_of_the_jobs(nosy)
        for nosy in ("scada", "ann"):  # joining the explainers' group reads nothing either
            await clients[nosy].subscribe(shared)
        send(*range(6, 12))
        for nosy in ("scada", "ann"):
            await nothing_of_the_jobs(nosy)
        explainer = clients["pool-1"].client
        explainer.publish(f"{BASE}/alarms/high/x", b"forged", qos=1).wait_for_publish(WAIT_S)
        explainer.publish(f"{BASE}/explain/reply/c1", b"answer", qos=1).wait_for_publish(WAIT_S)
        seen = []
        await service.until(lambda m: seen.append(m[0]) or m[1] == b"answer")
        assert f"{BASE}/alarms/high/x" not in seen  # an explainer writes nowhere but on the reply levels
    finally:
        for c in clients.values():
            c.close()
        broker.stop()
