"""The alarms served as OPC UA Alarms & Conditions: asyncua's own client subscribes, acknowledges, is refused.

A real alarm engine and alarm station, the OPC UA alarm server on a free 127.0.0.1 port, asyncua's Client
logged in with the users file ``broker init`` writes; every wait is on an event the client receives.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from factory_copilot.alarms import AlarmEngine, AlarmSettings, AlarmStation
from factory_copilot.config import SIMULATED_LINE, LineConfigError, OpcuaAlarmServer, Roles, load_line, parse_line
from factory_copilot.plumbing.broker import free_port
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.logins import Logins, hash_password
from factory_copilot.plumbing.opcua import priority_of, severity_of
from factory_copilot.publish.opcua_server import AlarmServer
from factory_copilot.records import AlarmState, Anomaly, Diagnosis, Priority

PASSWORDS = {"ann": "ann-secret-1", "sam": "sam-secret-2"}
ACK = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
TIMED_SHELVE = ua.NodeId(ua.ObjectIds.ShelvedStateMachineType_TimedShelve)
TIMED_SHELVED = ua.NodeId(ua.ObjectIds.ShelvedStateMachineType_TimedShelved)


class Rig:
    """Engine, alarm station and alarm server joined as the service joins them."""

    def __init__(self, tmp_path, security: str = "none"):
        users = tmp_path / "dashboard-users.yaml"
        Logins({name: hash_password(pw) for name, pw in PASSWORDS.items()}).write(users)
        line = load_line(SIMULATED_LINE)
        # operators acknowledge but may not shelve: supervisors only
        roles = Roles.model_validate({"operators": {"users": ["ann"], "shelve_max_s": 0}, "supervisors": ["sam"]})
        self.endpoint = f"opc.tcp://127.0.0.1:{free_port()}/factory-copilot/alarms/"
        served = OpcuaAlarmServer(endpoint=self.endpoint, security=security, users=str(users))
        self.line = line.model_copy(update={"roles": roles, "service": line.service.model_copy(
            update={"opcua_server": served})})
        self.engine = AlarmEngine(self.line, tmp_path / "alarms.db",
                                  AlarmSettings(on_delay_s=0, off_delay_s=3600, silence_s=3600))
        self.anomalies = Buffer(100, "anomalies")
        self.to_server = events = Buffer(100, "alarm events -> opcua-server")
        self.diagnoses = Buffer(100, "diagnoses->opcua")
        self.alarms = AlarmStation(self.engine, self.anomalies, events, tick_s=0.05)
        self.server = AlarmServer(self.line, served, self.to_server, self.alarms.execute, tmp_path / "alarms.db",
                                  pki_dir=tmp_path / "pki", max_shelve_s=self.engine.settings.max_shelve_s,
                                  diagnoses=self.diagnoses)
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(self.alarms.run(self.stop)), asyncio.create_task(self.server.run(self.stop))]

    def raise_alarm(self, asset="product_pump", signal="flow", ts=None):
        self.anomalies.offer(Anomaly(ts or time.time(), asset, "limit", 2.0, 1.0, signal=signal, value=40.0,
                                     message=f"{asset} {signal} beyond its limit"))

    async def close(self):
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 10)
        self.engine.close()


class Events:
    """asyncua's subscription handler: every event notification, in order."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()

    def event_notification(self, event):
        self.queue.put_nowait(event)

    async def next(self, until=lambda e: True, timeout_s: float = 10.0):
        async def wait():
            while True:
                e = await self.queue.get()
                if until(e):
                    return e
        return await asyncio.wait_for(wait(), timeout_s)


def field(event, name):
    return getattr(event, name)


async def watch(client: Client) -> tuple[Events, object]:
    events = Events()
    sub = await client.create_subscription(20, events)
    await sub.subscribe_events(client.nodes.server, client.get_node(ua.ObjectIds.AlarmConditionType))
    return events, sub


def logged_in(endpoint: str, user: str | None) -> Client:
    client = Client(endpoint, timeout=10)
    if user:
        client.set_user(user)
        client.set_password(PASSWORDS[user])
    return client


@pytest.fixture
async def rig(tmp_path):
    r = Rig(tmp_path)
    await asyncio.wait_for(r.server.serving.wait(), 20)
    yield r
    await r.close()


async def test_a_raised_alarm_is_an_alarm_condition_event_with_its_fields(rig):
    async with logged_in(rig.endpoint, "ann") as client:
        events, _ = await watch(client)
        rig.raise_alarm()
        ev = await events.next()
        alarm = rig.engine.get("product_pump.flow-limit")
        assert alarm is not None and alarm.state is AlarmState.ACTIVE_UNACK
        assert ev.EventType == ua.NodeId(ua.ObjectIds.AlarmConditionType)
        assert ev.Message.Text == alarm.message
        assert ev.Severity == severity_of(alarm.priority)
        assert (field(ev, "ActiveState/Id"), field(ev, "AckedState/Id"), ev.Retain) == (True, False, True)
        assert field(ev, "ActiveState").Text == "Active" and field(ev, "AckedState").Text == "Unacknowledged"
        assert isinstance(ev.EventId, bytes) and len(ev.EventId) >= 16
        assert ev.SourceName == "product_pump" and ev.ConditionName == alarm.condition
        assert field(ev, "ShelvingState/CurrentState/Id") == ua.NodeId(ua.ObjectIds.ShelvedStateMachineType_Unshelved)
        # the condition is a node of the address space: its instance shows the same state
        cond = client.get_node(ev.NodeId)
        assert await (await cond.get_child("0:ActiveState")).get_child("0:Id") is not None
        assert await (await (await cond.get_child("0:ActiveState")).get_child("0:Id")).read_value() is True
        assert await (await cond.get_child("0:Severity")).read_value() == ev.Severity


async def test_an_operator_acknowledges_over_opc_ua_and_the_audit_trail_names_her(rig):
    async with logged_in(rig.endpoint, "ann") as client:
        events, _ = await watch(client)
        rig.raise_alarm()
        raised = await events.next()
        cond = client.get_node(raised.NodeId)
        with pytest.raises(UaStatusCodeError) as unknown:  # an EventId the server never sent
            await cond.call_method(ACK, ua.Variant(b"no such event id", ua.VariantType.ByteString),
                                   ua.LocalizedText("seen"))
        assert unknown.value.code == ua.StatusCodes.BadEventIdUnknown
        await cond.call_method(ACK, ua.Variant(raised.EventId, ua.VariantType.ByteString),
                               ua.LocalizedText("pump checked"))
        acked = await events.next(lambda e: field(e, "AckedState/Id"))
        assert (field(acked, "ActiveState/Id"), acked.Retain, acked.ClientUserId) == (True, True, "ann")
        assert acked.Comment.Text == "pump checked" and acked.EventId != raised.EventId
        alarm = rig.engine.get("product_pump.flow-limit")
        assert alarm.state is AlarmState.ACTIVE_ACK and alarm.acked_by == "ann"
        trail = [(e.event, e.actor, e.comment) for e in rig.engine.audit("product_pump.flow-limit")]
        assert ("acknowledged", "ann", "pump checked") in trail
        with pytest.raises(UaStatusCodeError) as again:  # the engine says it is acknowledged already
            await cond.call_method(ACK, ua.Variant(acked.EventId, ua.VariantType.ByteString), ua.LocalizedText(""))
        assert again.value.code == ua.StatusCodes.BadConditionBranchAlreadyAcked


async def test_the_copilots_diagnosis_is_the_conditions_comment_until_another_comment_comes(rig):
    async with logged_in(rig.endpoint, "ann") as client:
        events, _ = await watch(client)
        rig.raise_alarm()
        raised = await events.next()
        rig.diagnoses.offer(Diagnosis("product_pump.flow-limit", "Suction side starved: check the inlet filter.",
                                      [], [], [], [], "runbook"))
        told = await events.next(lambda e: "inlet filter" in e.Comment.Text)
        assert told.ClientUserId == "copilot" and told.Comment.Text.startswith("copilot (runbook): ")
        assert field(told, "AckedState/Id") is False and told.Retain is True and told.EventId != raised.EventId
        await client.get_node(told.NodeId).call_method(ACK, ua.Variant(told.EventId, ua.VariantType.ByteString),
                                                       ua.LocalizedText(""))
        acked = await events.next(lambda e: field(e, "AckedState/Id"))
        assert acked.ClientUserId == "ann" and "inlet filter" in acked.Comment.Text  # no comment of hers: kept


async def test_an_operator_may_not_shelve_where_supervisors_only_may_and_a_supervisor_may(rig):
    async with logged_in(rig.endpoint, "ann") as ann:
        events, _ = await watch(ann)
        rig.raise_alarm()
        raised = await events.next()
        shelving = await ann.get_node(raised.NodeId).get_child("0:ShelvingState")
        with pytest.raises(UaStatusCodeError) as refused:
            await shelving.call_method(TIMED_SHELVE, ua.Variant(60_000.0, ua.VariantType.Double))
        assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
        alarm = rig.engine.get("product_pump.flow-limit")
        assert alarm.shelved_until is None
        refusals = [e for e in rig.engine.audit(alarm.alarm_id) if e.event == "refused"]
        assert [(e.actor, "may not shelve" in e.comment) for e in refusals] == [("ann", True)]

        async with logged_in(rig.endpoint, "sam") as sam:  # a supervisor, by the instance's own method
            shelving_sam = await sam.get_node(raised.NodeId).get_child("0:ShelvingState")
            await shelving_sam.call_method("0:TimedShelve", ua.Variant(60_000.0, ua.VariantType.Double))
        shelved = await events.next(lambda e: field(e, "ShelvingState/CurrentState/Id") == TIMED_SHELVED)
        assert shelved.ClientUserId == "sam" and shelved.SuppressedOrShelved is True
        assert 0 < field(shelved, "ShelvingState/UnshelveTime") <= 60_000
        assert rig.engine.get(alarm.alarm_id).shelved_by == "sam"


async def test_an_anonymous_session_sees_the_alarms_after_a_condition_refresh_and_changes_nothing(rig):
    async with logged_in(rig.endpoint, "ann") as ann:  # the alarm is served before the anonymous client comes
        first, _ = await watch(ann)
        rig.raise_alarm()
        await first.next()
    async with logged_in(rig.endpoint, None) as anonymous:
        events, sub = await watch(anonymous)
        await anonymous.get_node(ua.ObjectIds.ConditionType).call_method(
            ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
            ua.Variant(sub.subscription_id, ua.VariantType.UInt32))
        refreshed = await events.next(lambda e: e.EventType == ua.NodeId(ua.ObjectIds.AlarmConditionType))
        assert field(refreshed, "ActiveState/Id") is True and refreshed.Retain is True
        with pytest.raises(UaStatusCodeError) as refused:
            await anonymous.get_node(refreshed.NodeId).call_method(
                ACK, ua.Variant(refreshed.EventId, ua.VariantType.ByteString), ua.LocalizedText(""))
        assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
    assert rig.engine.get("product_pump.flow-limit").state is AlarmState.ACTIVE_UNACK


async def test_signed_and_encrypted_by_default_with_a_certificate_made_on_first_use(tmp_path):
    from factory_copilot.plumbing.opcua import ensure_certificate

    assert OpcuaAlarmServer().security == "basic256sha256_sign_encrypt"
    rig = Rig(tmp_path, security=OpcuaAlarmServer().security)
    try:
        await asyncio.wait_for(rig.server.serving.wait(), 30)
        assert (tmp_path / "pki" / "opcua-alarm-server_cert.der").exists()
        plain = logged_in(rig.endpoint, "sam")
        with pytest.raises(UaError, match="No matching endpoints"):  # none without security: no password in clear
            await plain.connect()
        plain.disconnect_socket()
        cert, key = await ensure_certificate(tmp_path / "client-pki", "scada", "urn:test:scada", server=False)
        client = logged_in(rig.endpoint, "sam")
        await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
        async with client:
            events, _ = await watch(client)
            rig.raise_alarm()
            raised = await events.next()
            shelving = await client.get_node(raised.NodeId).get_child("0:ShelvingState")
            await shelving.call_method(TIMED_SHELVE, ua.Variant(30_000.0, ua.VariantType.Double))
            shelved = await events.next(lambda e: field(e, "ShelvingState/CurrentState/Id") == TIMED_SHELVED)
            assert shelved.ClientUserId == "sam"
    finally:
        await rig.close()


async def test_a_restarted_server_serves_the_alarms_that_stand_and_a_refresh_finds_them(tmp_path):
    first = Rig(tmp_path)
    try:
        await asyncio.wait_for(first.server.serving.wait(), 20)
        async with logged_in(first.endpoint, "ann") as client:
            events, _ = await watch(client)
            first.raise_alarm()
            raised = await events.next()
    finally:
        await first.close()
    again = Rig(tmp_path)  # the same state folder: the engine resumes the alarm, the server serves it
    try:
        await asyncio.wait_for(again.server.serving.wait(), 20)
        async with logged_in(again.endpoint, "ann") as client:
            events, sub = await watch(client)
            await client.get_node(ua.ObjectIds.ConditionType).call_method(
                ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
                ua.Variant(sub.subscription_id, ua.VariantType.UInt32))
            refreshed = await events.next(lambda e: e.EventType == ua.NodeId(ua.ObjectIds.AlarmConditionType))
            assert (refreshed.NodeId, refreshed.Message.Text) == (raised.NodeId, raised.Message.Text)
            assert field(refreshed, "ActiveState/Id") is True and field(refreshed, "AckedState/Id") is False
            await client.get_node(refreshed.NodeId).call_method(  # its EventId is one this server sent
                ACK, ua.Variant(refreshed.EventId, ua.VariantType.ByteString), ua.LocalizedText(""))
            await events.next(lambda e: field(e, "AckedState/Id"))
        assert again.engine.get("product_pump.flow-limit").acked_by == "ann"
    finally:
        await again.close()


async def test_a_wrong_password_is_refused_at_log_in(rig):
    client = Client(rig.endpoint, timeout=10)
    client.set_user("ann")
    client.set_password("not her password")
    with pytest.raises(UaStatusCodeError) as refused:
        await client.connect()
    assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
    client.disconnect_socket()


def test_severity_bands_round_trip_and_the_line_file_names_a_bad_endpoint():
    assert [severity_of(p) for p in Priority] == [900, 700, 500, 300]
    assert all(priority_of(severity_of(p)) is p for p in Priority)
    assert (priority_of(1000), priority_of(801), priority_of(800), priority_of(1)) == (
        Priority.CRITICAL, Priority.CRITICAL, Priority.HIGH, Priority.LOW)
    data = load_line(SIMULATED_LINE).model_dump(mode="json")
    data["service"]["opcua_server"] = {"endpoint": "http://0.0.0.0:4841/"}
    with pytest.raises(LineConfigError) as bad:
        parse_line(data, "line.yaml")
    assert "line.yaml: service.opcua_server.endpoint:" in str(bad.value)
    data["service"]["opcua_server"] = {"certificate": "server.der"}
    with pytest.raises(LineConfigError) as half:
        parse_line(data, "line.yaml")
    assert "service.opcua_server.certificate:" in str(half.value)


async def test_the_service_serves_its_alarms_when_the_line_file_says_so_and_an_operator_acknowledges(tmp_path):
    """The real service (plant checks, broker init's Mosquitto): a value past its limit is a condition on the
    service's OPC UA server; its Acknowledge, as the broker's person ann, is the engine's, audited as hers."""
    from factory_copilot.config import ServicePaths
    from factory_copilot.detect.persist import TrainedDetector
    from factory_copilot.service import LineService
    from tests.support.agents import PASSWORDS as BROKER_PASSWORDS, Gateway, start_site, write_line

    site, broker = start_site(tmp_path)
    path = write_line(tmp_path, site, free_port())
    data = yaml.safe_load(path.read_text())
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/factory-copilot/alarms/"
    # the users file relative to the line file, as a plant writes it next to its broker's configuration
    data["service"]["opcua_server"] = {"endpoint": endpoint, "security": "none",
                                       "users": str(site.logins.relative_to(tmp_path))}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    line = load_line(path)
    service = LineService(line, TrainedDetector(line.fingerprint(), line.line, detector=None),
                          ServicePaths.of_line(line, path), health_port=None)
    gateway, stop = Gateway(line), asyncio.Event()
    tasks = [asyncio.create_task(service.run(stop)), asyncio.create_task(gateway.run())]
    try:
        assert service.opcua_server is not None
        await asyncio.wait_for(service.opcua_server.serving.wait(), 30)
        client = Client(endpoint, timeout=10)
        client.set_user("ann")
        client.set_password(BROKER_PASSWORDS["ann"])
        async with client:
            events, _ = await watch(client)
            gateway.values["rinser.water_pressure"] = 6.0  # past its limit of 5 bar
            raised = await events.next(lambda e: e.SourceName == "rinser" and field(e, "ActiveState/Id"), 60)
            assert raised.Severity == severity_of(service.engine.get(
                next(a.alarm_id for a in service.engine.active() if a.asset == "rinser")).priority)
            await client.get_node(raised.NodeId).call_method(
                ACK, ua.Variant(raised.EventId, ua.VariantType.ByteString), ua.LocalizedText("nozzles checked"))
            acked = await events.next(lambda e: e.NodeId == raised.NodeId and field(e, "AckedState/Id"))
            assert acked.ClientUserId == "ann"
        alarm_id = raised.NodeId.Identifier
        assert service.engine.get(alarm_id).acked_by == "ann"
        assert ("acknowledged", "ann") in [(e.event, e.actor) for e in service.engine.audit(alarm_id)]
        assert service.stats()["opcua_server"]["commands"] == 1
    finally:
        gateway.stop.set()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        broker.stop()
