"""An operator's feedback on an alarm goes over MQTT like a command, against a real Mosquitto configured the way
`broker init` configures a site's: the sender is the topic's MQTT user, the line's roles say who may give it,
the alarm engine audits it, and the store station's feedback lane writes it, fed by the line's bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from dataclasses import dataclass

import pytest

from factory_copilot.alarms import AlarmEngine, AlarmSettings
from factory_copilot.alarms.station import AlarmStation
from factory_copilot.config import LineConfig, MqttConnection
from factory_copilot.plumbing.broker import MosquittoBroker, free_port
from factory_copilot.plumbing.broker_site import Account, write_site
from factory_copilot.plumbing.bus import Bus
from factory_copilot.publish import Publisher, Topics
from factory_copilot.publish import payloads
from factory_copilot.records import AlarmEvent, Anomaly, CommandResult, Feedback, OperatorCommand, OperatorFeedback
from factory_copilot.shift.calendar import ShiftWindow
from factory_copilot.shift.handover import write_handover
from factory_copilot.store import Store
from factory_copilot.store.station import StoreStation
from tests.test_auth import PASSWORDS, WAIT_S, Client, roles_line

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs Mosquitto")

SCADA_PASSWORD = "scada-secret-12"


@pytest.fixture
def site(tmp_path):
    """ann (operator), sam (supervisor), eve (a person in no role of the line) and scada (a reader account)."""
    accounts = [Account(name, "service" if name == "factory-copilot" else "person", pw)
                for name, pw in PASSWORDS.items()]
    accounts.append(Account("scada", "reader", SCADA_PASSWORD))
    files = write_site(tmp_path / "mosquitto", accounts, bind="127.0.0.1", port=free_port(), tls=True,
                       hostnames=["127.0.0.1", "localhost"])
    broker = MosquittoBroker(site=files).start()
    yield files
    broker.stop()


@dataclass
class Line:
    engine: AlarmEngine
    alarms: AlarmStation
    publisher: Publisher
    store: Store
    store_station: StoreStation
    topics: Topics
    alarm_id: str


@contextlib.asynccontextmanager
async def line_service(site, tmp_path):
    """The alarm engine (one alarm raised) and the alarm, publish and store stations joined on a line's bus, the
    publish station logged in as the service account over TLS, as `factory-copilot run` wires them."""
    line = roles_line()
    t = [1_800_000_000.0]
    engine = AlarmEngine(line, tmp_path / "alarms.db", AlarmSettings(on_delay_s=0.0, off_delay_s=5.0),
                         clock=lambda: t[0])
    events: list[AlarmEvent] = []
    for _ in range(3):
        events += engine.ingest(Anomaly(ts=t[0], asset="product_pump", kind="limit", signal="flow", value=40.0,
                                        score=2.0, threshold=1.0, mode="running"))
        t[0] += 1
    [raised] = [e for e in events if e.event == "raised"]
    store = Store(tmp_path / "store.db")
    store.add_alarm_events(events)  # what the store station's events lane wrote while the alarm rang
    bus = Bus(1000)
    alarms = AlarmStation(engine, bus.subscribe("alarms", Anomaly), bus.outlet("alarms", AlarmEvent),
                          bus.subscribe("alarms", OperatorCommand), bus.outlet("alarms", CommandResult),
                          feedback_in=bus.subscribe("alarms", OperatorFeedback),
                          feedback_out=bus.outlet("alarms", Feedback))
    conn = MqttConnection(host="127.0.0.1", port=site.port, username="factory-copilot",
                          password=PASSWORDS["factory-copilot"], tls=True, ca_file=str(site.ca_file))
    publisher = Publisher.for_line(line, tmp_path / "outbox.db", connection=conn,
                                   commands=bus.outlet("publish", OperatorCommand),
                                   feedback=bus.outlet("publish", OperatorFeedback),
                                   results=bus.subscribe("publish", CommandResult))
    store_station = StoreStation(store, feedback=bus.subscribe("store", Feedback))
    bus.check({"alarms": alarms, "publish": publisher, "store": store_station})
    await publisher.start()
    await asyncio.wait_for(publisher.online.wait(), WAIT_S)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in (publisher, alarms, store_station)]
    try:
        yield Line(engine, alarms, publisher, store, store_station, publisher.topics, raised.alarm_id)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await publisher.stop()
        engine.close()
        store.close()


async def send(client: Client, svc: Line, user: str, body: dict | bytes, rid: str):
    """Publish ``body`` on ``user``'s command level as ``client`` and return the service's reply to ``rid``."""
    assert not (await client.publish(svc.topics.commands(user), body)).is_failure
    while True:
        topic, reply, _ = await client.next()
        if topic == svc.topics.command_reply(rid):
            return reply


def feedback(alarm_id: str, verdict: str = "other_cause", **kw) -> dict:
    rid = uuid.uuid4().hex[:8]
    cause = kw.pop("actual_cause", "clogged_filter" if verdict == "other_cause" else None)
    return payloads.feedback(alarm_id, verdict, rid, actual_cause=cause, **kw)


async def test_an_operators_feedback_lands_in_the_store_with_her_name_and_in_the_audit_trail(site, tmp_path):
    async with line_service(site, tmp_path) as svc:
        ann = await Client(site, "ann").up(f"{svc.topics.command_replies()}#")
        body = feedback(svc.alarm_id, fix="replaced the inlet filter element")
        reply = await send(ann, svc, "ann", body, body["request_id"])
        assert reply["ok"] and "recorded" in reply["message"] and "by ann" in reply["message"], reply
        await asyncio.wait_for(svc.store_station.wait_written("feedback", 1), WAIT_S)
        [fb] = svc.store.feedback(svc.alarm_id)
        assert (fb.verdict, fb.actual_cause, fb.fix, fb.actor) == (
            "other_cause", "clogged_filter", "replaced the inlet filter element", "ann")
        [incident] = svc.store.similar("product_pump", None, [])  # the alarm's asset copied: incident memory
        assert incident.alarm_id == svc.alarm_id and incident.actual_cause == "clogged_filter"
        [row] = [e for e in svc.engine.audit(svc.alarm_id) if e.event == "feedback"]
        assert (row.actor, row.comment) == ("ann", "other cause; cause: clogged_filter; "
                                                   "fix: replaced the inlet filter element")
        assert svc.alarms.stats()["feedback"] == 1 and svc.publisher.stats()["feedback"] == 1
        # the shift handover says the verdict from the store, not a second time from its audit row
        window = ShiftWindow("early", "2027-01-15", fb.ts - 3600, fb.ts + 3600)
        shifts = LineConfig.model_validate({**svc.engine.line.model_dump(), "shifts": [
            {"name": "early", "start": "06:00"}, {"name": "late", "start": "18:00"}]})
        handover = write_handover(shifts, window, svc.store, svc.engine.journal, now=fb.ts + 3600)
        assert [a["event"] for a in handover.body["actions"]] == []
        assert [i["actor"] for i in handover.body["incidents"]] == ["ann"]
        ann.close()


async def test_feedback_from_a_user_in_no_role_is_refused_counted_and_audited_and_a_reader_cannot_send_it(
        site, tmp_path):
    async with line_service(site, tmp_path) as svc:
        eve = await Client(site, "eve").up(f"{svc.topics.command_replies()}#")
        body = feedback(svc.alarm_id, "false_alarm")
        reply = await send(eve, svc, "eve", body, body["request_id"])
        assert not reply["ok"] and "eve is in no role of this line" in reply["message"], reply
        assert svc.alarms.stats()["feedback_refused"] == 1 and svc.alarms.stats()["feedback"] == 0
        assert [(e.event, e.actor) for e in svc.engine.audit(svc.alarm_id) if e.actor] == [("refused", "eve")]
        # a reader account may not even publish on its own level: the broker refuses it before the service sees it
        scada = await Client(site, "scada", SCADA_PASSWORD).up()
        puback = await scada.publish(svc.topics.commands("scada"), feedback(svc.alarm_id, "false_alarm"))
        assert puback.is_failure and "authori" in str(puback).lower()
        # sam (a supervisor) may, and by then eve's would have been written had it been let through
        sam = await Client(site, "sam").up(f"{svc.topics.command_replies()}#")
        ok = feedback(svc.alarm_id, "confirmed")
        assert (await send(sam, svc, "sam", ok, ok["request_id"]))["ok"]
        await asyncio.wait_for(svc.store_station.wait_written("feedback", 1), WAIT_S)
        assert [(f.actor, f.verdict) for f in svc.store.feedback(svc.alarm_id)] == [("sam", "confirmed")]
        for c in (eve, scada, sam):
            c.close()


async def test_a_forged_actor_never_reaches_the_store_or_the_audit_trail(site, tmp_path):
    async with line_service(site, tmp_path) as svc:
        ann = await Client(site, "ann").up(f"{svc.topics.command_replies()}#")
        forged = feedback(svc.alarm_id, "false_alarm", actor="plant-manager")
        reply = await send(ann, svc, "ann", forged, forged["request_id"])
        assert not reply["ok"] and "'plant-manager' is not the sender 'ann'" in reply["message"], reply
        # eve cannot write on ann's level to pass as her: the broker's ACL
        eve = await Client(site, "eve").up()
        assert (await eve.publish(svc.topics.commands("ann"), feedback(svc.alarm_id, "false_alarm"))).is_failure
        # the name recorded is the level's user, whatever the payload says when it agrees
        own = feedback(svc.alarm_id, "false_alarm", actor="ann")
        assert (await send(ann, svc, "ann", own, own["request_id"]))["ok"]
        await asyncio.wait_for(svc.store_station.wait_written("feedback", 1), WAIT_S)
        assert [f.actor for f in svc.store.feedback(svc.alarm_id)] == ["ann"]
        assert {e.actor for e in svc.engine.audit(svc.alarm_id) if e.actor} == {"ann"}
        assert svc.alarms.stats()["feedback"] == 1
        ann.close()
        eve.close()


async def test_a_malformed_feedback_is_counted_and_named_and_the_service_keeps_running(site, tmp_path, caplog):
    caplog.set_level(logging.WARNING, "factory_copilot.publish.inbound")
    async with line_service(site, tmp_path) as svc:
        ann = await Client(site, "ann").up(f"{svc.topics.command_replies()}#")
        bad = {**feedback(svc.alarm_id), "verdict": "maybe"}
        reply = await send(ann, svc, "ann", bad, bad["request_id"])
        assert not reply["ok"] and "verdict: 'maybe' is not one of" in reply["message"], reply
        nameless = feedback(svc.alarm_id)  # another cause, but which?
        nameless["actual_cause"] = None
        reply = await send(ann, svc, "ann", nameless, nameless["request_id"])
        assert not reply["ok"] and "actual_cause" in reply["message"], reply
        stats = svc.publisher.stats()
        assert stats["feedback_rejected"] == 2 and stats.get("commands_rejected", 0) == 0
        logged = [r.getMessage() for r in caplog.records if "rejected feedback" in r.getMessage()]
        assert logged and svc.topics.commands("ann") in logged[0] and "verdict" in logged[0]
        assert svc.alarms.stats()["feedback"] == 0 and svc.store.feedback(svc.alarm_id) == []
        good = feedback(svc.alarm_id, "confirmed")
        assert (await send(ann, svc, "ann", good, good["request_id"]))["ok"]  # still serving
        await asyncio.wait_for(svc.store_station.wait_written("feedback", 1), WAIT_S)
        assert [f.verdict for f in svc.store.feedback(svc.alarm_id)] == ["confirmed"]
        ann.close()
