"""A PLC's own alarms in: a real asyncua server raises and clears conditions the way a PLC does, the OPC UA
collector reads them as A&C events and the alarm station makes them the line's alarms.

The PLC here is an asyncua Server on a free 127.0.0.1 port with an off-normal alarm (Pump1, severity 750) and
a limit alarm (Tank1, severity 450), Part 9 states set as a PLC sets them; every wait is on an event.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from asyncua import Server, ua
from asyncua.common.methods import uamethod

from factory_copilot.alarms import AlarmEngine, AlarmSettings, AlarmStation
from factory_copilot.collect.opcua import OpcuaCollector
from factory_copilot.config import SIMULATED_LINE, LineConfigError, OpcuaConnection, PlcAlarms, load_line, parse_line
from factory_copilot.plumbing.broker import free_port
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.records import AlarmState, OperatorCommand, Priority


class Plc:
    """A PLC's A&C server: conditions on source objects, events fired on every change, ConditionRefresh."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.server: Server | None = None
        self.conditions: dict[str, tuple] = {}

    async def start(self) -> None:
        server = Server()
        server.iserver.bind_condition_methods = True  # asyncua's ConditionRefresh
        await server.init()
        server.set_endpoint(self.endpoint)
        self.ns = await server.register_namespace("urn:test:plc")
        self.sources = {}
        for name in ("Pump1", "Tank1"):
            node = await server.nodes.objects.add_object(ua.NodeId(name, self.ns), name)
            await node.set_event_notifier([ua.EventNotifier.SubscribeToEvents])
            self.sources[name] = node
        server.iserver.isession.add_method_callback(
            ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge), self._acknowledge)
        await server.start()
        self.server = server
        self.conditions = {}
        self.acks: asyncio.Queue = asyncio.Queue()
        self.states: dict[str, dict] = {}

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop()
        self.server = None

    async def set(self, name: str, source: str, etype: int, *, active: bool, acked: bool, severity: int,
                  message: str, retain: bool | None = None, user: str = "", shelved_s: float = 0.0) -> None:
        """Bring condition ``name`` to a state and fire its event, as the PLC's alarm block does."""
        assert self.server is not None
        if name not in self.conditions:
            gen = await self.server.get_event_generator(etype, ua.ObjectIds.Server)
            # the condition's node, so an Acknowledge can be called on it
            await self.sources[source].add_object(ua.NodeId(f"{source}.{name}", self.ns), name)
            self.conditions[name] = (gen,)
        self.states[f"{source}.{name}"] = dict(name=name, source=source, etype=etype, active=active, severity=severity,
                                               message=message)
        gen = self.conditions[name][0]
        ev = gen.event
        ev.add_property("NodeId", ua.NodeId(f"{source}.{name}", self.ns), ua.VariantType.NodeId)
        ev.SourceNode = self.sources[source].nodeid
        ev.SourceName = source
        ev.Severity = severity
        ev.add_property("ActiveState/Id", active, ua.VariantType.Boolean)
        ev.add_property("AckedState/Id", acked, ua.VariantType.Boolean)
        ev.add_property("ConfirmedState/Id", acked, ua.VariantType.Boolean)
        ev.Retain = (active or not acked) if retain is None else retain
        ev.add_property("ClientUserId", user, ua.VariantType.String)
        shelving = ua.ObjectIds.ShelvedStateMachineType_TimedShelved if shelved_s else ua.ObjectIds.ShelvedStateMachineType_Unshelved
        ev.add_property("ShelvingState/CurrentState/Id", ua.NodeId(shelving), ua.VariantType.NodeId)
        ev.add_property("ShelvingState/UnshelveTime", shelved_s * 1000.0, ua.VariantType.Double)
        await gen.trigger(message=message)


    @uamethod
    async def _acknowledge(self, parent, event_id, comment):
        """The condition's Acknowledge: the EventId must be its newest, then it is acked as the PLC does it."""
        state = self.states.get(parent.Identifier)
        if state is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        newest = self.conditions[state["name"]][0].event.EventId
        if event_id != (newest.Value if isinstance(newest, ua.Variant) else newest):
            return ua.StatusCode(ua.StatusCodes.BadEventIdUnknown)
        self.acks.put_nowait((parent.Identifier, event_id, comment.Text))
        await self.set(state["name"], state["source"], state["etype"], active=state["active"], acked=True,
                       severity=state["severity"], message=state["message"])
        return None


class Rig:
    def __init__(self, tmp_path, endpoint: str):
        line = load_line(SIMULATED_LINE)
        plc = PlcAlarms.model_validate({"map": [{"source": "ns=2;s=Pump1", "asset": "product_pump", "signal": "flow"}]})
        self.line = line.model_copy(update={
            "opcua": OpcuaConnection(endpoint=endpoint, timeout_s=2),
            "service": line.service.model_copy(update={"plc_alarms": plc})})
        self.engine = AlarmEngine(self.line, tmp_path / "alarms.db", AlarmSettings(on_delay_s=0))
        self.readings, self.plc, self.events = Buffer(1000, "readings"), Buffer(1000, "plc"), Buffer(1000, "events")
        self.acks = Buffer(100, "plc acks")
        self.collector = OpcuaCollector(self.line, self.readings, signals=[], plc=self.plc, reconnect_max_delay_s=0.5,
                                        pki_dir=tmp_path / "pki", plc_acks=self.acks)
        self.station = AlarmStation(self.engine, Buffer(10, "anomalies"), self.events, tick_s=0.1, plc=self.plc,
                                    plc_acks=self.acks)
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(self.collector.run(self.stop)), asyncio.create_task(self.station.run(self.stop))]
        self.seen: list = []

    async def event(self, until, timeout_s: float = 15.0):
        """The next alarm event ``until`` accepts (every event on the way kept in ``seen``)."""
        async def wait():
            while True:
                ev = await self.events.get()
                self.seen.append(ev)
                if until(ev):
                    return ev
        return await asyncio.wait_for(wait(), timeout_s)

    async def close(self):
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)
        self.engine.close()


OFF_NORMAL, LIMIT = ua.ObjectIds.OffNormalAlarmType, ua.ObjectIds.ExclusiveLimitAlarmType


async def test_plc_alarms_followed_through_a_server_restart(tmp_path):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/plc/"
    plc = Plc(endpoint)
    await plc.start()
    # standing before the copilot connects: only ConditionRefresh can tell it
    await plc.set("Overload", "Pump1", OFF_NORMAL, active=True, acked=False, severity=750, message="Pump1 motor overload")
    rig = Rig(tmp_path, endpoint)
    try:
        pump = await rig.event(lambda e: e.event == "raised" and e.alarm.asset == "product_pump")
        assert pump.state is AlarmState.ACTIVE_UNACK and pump.alarm.priority is Priority.HIGH
        assert pump.alarm.message == "Pump1 motor overload" and pump.actor == "plc"
        assert rig.engine.plc_event_id(pump.alarm_id) and "EventId" in pump.comment
        first_event_id = rig.engine.plc_event_id(pump.alarm_id)

        # a limit alarm raised live; the source not in the map keeps the PLC's SourceName as the asset
        await plc.set("HighLevel", "Tank1", LIMIT, active=True, acked=False, severity=450, message="Tank1 level high")
        tank = await rig.event(lambda e: e.event == "raised" and e.alarm.asset == "Tank1")
        assert tank.alarm.priority is Priority.MEDIUM

        # acknowledged on the HMI: the same alarm's state change, audited as the PLC's
        await plc.set("Overload", "Pump1", OFF_NORMAL, active=True, acked=True, severity=750, message="Pump1 motor overload",
                      user="hmi-panel-3")
        acked = await rig.event(lambda e: e.alarm_id == pump.alarm_id and e.event == "acknowledged")
        assert acked.state is AlarmState.ACTIVE_ACK and acked.actor == "plc"
        assert acked.comment.startswith(f"PLC {endpoint} EventId ") and acked.comment.endswith(", user hmi-panel-3")
        assert rig.engine.plc_event_id(pump.alarm_id) != first_event_id  # the newest EventId is kept

        # the PLC restarts; meanwhile the tank's alarm went away for good
        await plc.stop()
        await plc.start()
        await plc.set("Overload", "Pump1", OFF_NORMAL, active=True, acked=True, severity=750, message="Pump1 motor overload")
        gone = await rig.event(lambda e: e.alarm_id == tank.alarm_id and e.event == "cleared")
        assert gone.state is AlarmState.NORMAL
        assert rig.collector.refreshes >= 2

        # the pump's alarm came again in the refresh: the same one, not raised again
        await plc.set("Overload", "Pump1", OFF_NORMAL, active=False, acked=True, severity=750,
                      message="Pump1 motor overload")
        cleared = await rig.event(lambda e: e.alarm_id == pump.alarm_id and e.event == "cleared")
        assert cleared.state is AlarmState.NORMAL
        raised = [e for e in rig.seen if e.event == "raised"]
        assert [e.alarm_id for e in raised] == [pump.alarm_id, tank.alarm_id]
        assert len([a for a in rig.engine.alarms() if a.condition.startswith("plc:")]) == 2
        assert not rig.engine.active()
        trail = [(e.event, e.actor) for e in rig.engine.audit(pump.alarm_id)]
        assert trail == [("raised", "plc"), ("acknowledged", "plc"), ("cleared", "plc")]
    finally:
        await rig.close()
        if plc.server is not None:
            await plc.stop()


async def test_return_unacknowledged_then_acknowledged(tmp_path):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/plc/"
    plc = Plc(endpoint)
    await plc.start()
    rig = Rig(tmp_path, endpoint)
    try:
        await asyncio.wait_for(rig.collector.connected.wait(), 10)
        await plc.set("Dry", "Pump1", OFF_NORMAL, active=True, acked=False, severity=900, message="Pump1 dry run")
        raised = await rig.event(lambda e: e.event == "raised")
        assert raised.alarm.priority is Priority.CRITICAL and raised.alarm.asset == "product_pump"
        await plc.set("Dry", "Pump1", OFF_NORMAL, active=False, acked=False, severity=900, message="Pump1 dry run")
        back = await rig.event(lambda e: e.event == "returned")
        assert back.state is AlarmState.RTN_UNACK
        await plc.set("Dry", "Pump1", OFF_NORMAL, active=False, acked=True, severity=900, message="Pump1 dry run")
        done = await rig.event(lambda e: e.event == "cleared")
        assert done.state is AlarmState.NORMAL and done.alarm.acked_by == "plc"
    finally:
        await rig.close()
        await plc.stop()


def test_line_file_names_the_field_of_a_wrong_plc_mapping(tmp_path):
    line = tmp_path / "line.yaml"
    text = open(SIMULATED_LINE).read()
    assert "\nservice:" not in text or True
    import yaml
    data = yaml.safe_load(text)
    data.setdefault("service", {})["plc_alarms"] = {"map": [{"source": "Pump1", "asset": "nowhere"}]}
    line.write_text(yaml.safe_dump(data))
    with pytest.raises(LineConfigError) as err:
        load_line(line)
    assert "service.plc_alarms.map.0.source" in str(err.value) or "plc_alarms.map[0].source" in str(err.value)
    data["service"]["plc_alarms"] = {"map": [{"source": "ns=2;s=Pump1", "asset": "nowhere"}]}
    line.write_text(yaml.safe_dump(data))
    with pytest.raises(LineConfigError) as err:
        load_line(line)
    assert "service.plc_alarms.map[0].asset: unknown asset 'nowhere'" in str(err.value)
    assert str(line) in str(err.value)


def test_the_collect_station_reads_plc_alarms_even_without_opcua_signals():
    from factory_copilot.collect.station import collectors_for

    line = load_line(SIMULATED_LINE)
    line = line.model_copy(update={
        "opcua": OpcuaConnection(endpoint="opc.tcp://127.0.0.1:4840/"),
        "service": line.service.model_copy(update={"source": "mqtt", "plc_alarms": PlcAlarms()})})
    plc = Buffer(10, "plc")
    found = collectors_for(line, Buffer(10, "readings"), plc=plc)
    assert set(found) == {"mqtt", "opcua"}
    assert found["opcua"].plc is plc and found["opcua"].signals == {}
    assert found["opcua"].plc_notifiers == [ua.NodeId(ua.ObjectIds.Server)]
    without = line.model_copy(update={"service": line.service.model_copy(update={"plc_alarms": None})})
    assert set(collectors_for(without, Buffer(10, "readings"), plc=plc)) == {"mqtt"}


async def test_an_operator_acknowledgement_goes_to_the_plc_with_the_event_id_and_the_user(tmp_path):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/plc/"
    plc = Plc(endpoint)
    await plc.start()
    rig = Rig(tmp_path, endpoint)
    try:
        await asyncio.wait_for(rig.collector.connected.wait(), 10)
        await plc.set("Overload", "Pump1", OFF_NORMAL, active=True, acked=False, severity=750, message="Pump1 overload")
        raised = await rig.event(lambda e: e.event == "raised")
        event_id = rig.engine.plc_event_id(raised.alarm_id)
        result = await rig.station.execute(OperatorCommand("acknowledge", raised.alarm_id, "ann", comment="seen"))
        assert result.ok
        condition, told_id, comment = await asyncio.wait_for(plc.acks.get(), 10)
        assert condition == "Pump1.Overload" and told_id.hex() == event_id
        assert comment == "acknowledged by ann on factory-copilot: seen"
        # the PLC's acked event comes back: the alarm already stands acknowledged, so nothing is told twice
        await plc.set("Overload", "Pump1", OFF_NORMAL, active=False, acked=True, severity=750, message="Pump1 overload")
        await rig.event(lambda e: e.event == "cleared")
        trail = [(e.event, e.actor) for e in rig.engine.audit(raised.alarm_id)]
        assert trail == [("raised", "plc"), ("acknowledged", "ann"), ("cleared", "plc")]
        assert rig.collector.acks_sent == 1 and rig.collector.acks_refused == 0
    finally:
        await rig.close()
        await plc.stop()


async def test_a_plc_alarm_shelved_on_the_hmi_is_shelved_here_and_the_copilots_own_alarm_folds_under_it(tmp_path):
    """The PLC's shelving (TimedShelved, UnshelveTime) read from its events; the copilot's alarm of the same pump
    is folded under the PLC's alarm when it rings (tests/test_alarms_situations.py has the rules)."""
    from factory_copilot.records import Anomaly
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/plc/"
    plc = Plc(endpoint)
    await plc.start()
    rig = Rig(tmp_path, endpoint)
    try:
        await asyncio.wait_for(rig.collector.connected.wait(), 10)
        now = time.time()
        for i in range(3):  # the copilot's own limit alarm on the pump's vibration (no on-delay in this rig)
            rig.engine.ingest(Anomaly(ts=now + i, asset="product_pump", kind="limit", score=9.0, threshold=7.1,
                                      signal="vibration", value=9.0))
        own = next(a for a in rig.engine.active() if not a.condition.startswith("plc:"))
        await plc.set("Cavitation", "Pump1", OFF_NORMAL, active=True, acked=False, severity=750,
                      message="Pump1 cavitation")
        raised = await rig.event(lambda e: e.event == "raised" and e.alarm.condition.startswith("plc:"))
        grouped = await rig.event(lambda e: e.event == "grouped" and e.alarm_id == own.alarm_id)
        assert grouped.alarm.parent_id == raised.alarm_id
        await plc.set("Cavitation", "Pump1", OFF_NORMAL, active=True, acked=False, severity=750,
                      message="Pump1 cavitation", shelved_s=1800, user="hmi-panel-3")
        shelved = await rig.event(lambda e: e.event == "shelved" and e.alarm_id == raised.alarm_id)
        assert shelved.actor == "plc" and shelved.comment.startswith(f"PLC {endpoint} EventId ")
        assert shelved.alarm.shelved_until == pytest.approx(time.time() + 1800, abs=30)
        await plc.set("Cavitation", "Pump1", OFF_NORMAL, active=True, acked=False, severity=750,
                      message="Pump1 cavitation")
        back = await rig.event(lambda e: e.event == "unshelved" and e.alarm_id == raised.alarm_id)
        assert back.alarm.shelved_until is None and back.state is AlarmState.ACTIVE_UNACK
    finally:
        await rig.close()
        await plc.stop()
