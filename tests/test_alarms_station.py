"""The async alarm station: buffers in, events out, commands answered; driven by a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from factory_copilot.alarms import AlarmEngine, AlarmSettings, AlarmStation
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.records import AlarmEvent, AlarmState, Anomaly, CommandResult, OperatorCommand


class Clock:
    t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


async def next_event(events: Buffer[AlarmEvent]) -> AlarmEvent:
    return await asyncio.wait_for(events.get(), timeout=5)


@pytest.fixture
async def station(tmp_path):
    clock = Clock()
    engine = AlarmEngine(load_line(SIMULATED_LINE), tmp_path / "alarms.db",
                         AlarmSettings(on_delay_s=0, off_delay_s=2, silence_s=2), clock=clock)
    replies: Buffer[CommandResult] = Buffer(10, "command results")
    st = AlarmStation(engine, Buffer(100, "anomalies"), Buffer(100, "alarm events"), Buffer(10, "commands"),
                      results=replies, tick_s=0.01)
    st.clock, st.replies = clock, replies  # type: ignore[attr-defined]
    task = asyncio.create_task(st.run())
    yield st
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    engine.close()


async def test_station_raises_answers_commands_and_ticks(station):
    anomaly = Anomaly(0, "product_pump", "limit", 2.0, 1.0, signal="flow", value=40.0)
    station.anomalies.offer(None)  # garbage from a broken producer must not stop the station
    station.anomalies.offer(anomaly)
    raised = await next_event(station.events)
    assert (raised.event, raised.alarm_id) == ("raised", "product_pump.flow-limit")
    assert station.stats()["errors"] == 1

    station.commands.offer(OperatorCommand("acknowledge", raised.alarm_id, "op.anna", request_id="r-7"))
    reply = await asyncio.wait_for(station.replies.get(), timeout=5)
    assert reply.ok and reply.request_id == "r-7" and reply.alarm.state is AlarmState.ACTIVE_ACK
    assert (await next_event(station.events)).event == "acknowledged"

    refused = await station.execute(OperatorCommand("shelve", raised.alarm_id, "op.anna"))
    assert not refused.ok and "duration" in refused.message
    assert station.events.qsize() == 0

    station.clock.t += 10  # silence past silence_s + off-delay: the tick loop clears the alarm
    cleared = await next_event(station.events)
    assert (cleared.event, cleared.state) == ("cleared", AlarmState.NORMAL)
    assert station.stats()["rejected"] == 1 and station.stats()["commands"] == 2
