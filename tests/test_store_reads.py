"""Store reads never stall the line: the copilot's look-ups run off the event loop, on the store's own read connection.

Issue 21: a retention sweep held the store's one locked connection for half a second and the copilot's
``similar()`` waited for it on the shared event loop, so collectors, detection, alarms and publishing stood still.
"""

from __future__ import annotations

import asyncio
import threading
import time

from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.copilot import Copilot
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.records import AlarmEvent, AlarmState, Feedback
from factory_copilot.store.store import Store
from tests.support.copilot import alarm_for

LINE = load_line(SIMULATED_LINE)
HOLD_S = 1.0  # how long the writer keeps its lock: twice the sweep measured in issue 21


def past_incident(store: Store) -> str:
    """A confirmed bearing-wear alarm on the pump, so ``similar()`` has something to find."""
    old = alarm_for("product_pump", "bearing_wear", 0.8)
    store.add_alarm_event(AlarmEvent(old.alarm_id, old.raised_at, "raised", AlarmState.ACTIVE_UNACK, old))
    store.add_feedback(Feedback(old.alarm_id, "confirmed", fix="regreased DE bearing", ts=old.raised_at + 60))
    return old.alarm_id


class WriterBusy:
    """The store's writer in the middle of a long write: its lock taken, a write transaction open on its
    connection, for ``HOLD_S`` or until the test says it has seen what it waited for."""

    def __init__(self, store: Store):
        self.store = store
        self.holding, self.done, self.released = threading.Event(), threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, name="writer-busy", daemon=True)

    def _hold(self) -> None:
        with self.store._writing() as conn:
            conn.execute("DELETE FROM readings_raw")  # a sweep's write: the database's write lock is taken too
            self.holding.set()
            self.done.wait(HOLD_S)
        self.released.set()

    def __enter__(self) -> "WriterBusy":
        self.thread.start()
        assert self.holding.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(10)


async def loop_lag_probe(stop: asyncio.Event, gaps: list[float], tick_s: float = 0.005) -> None:
    """How long the event loop left this task waiting beyond its tick: the line's collectors wait as long."""
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(tick_s)
        now = time.perf_counter()
        gaps.append(now - last - tick_s)
        last = now


async def test_similar_incidents_do_not_stall_the_loop_while_the_writer_holds_its_lock(make_store):
    store = make_store()
    old_id = past_incident(store)
    alarms, out = Buffer(10, "alarms"), Buffer(10, "diagnoses")
    cop = Copilot(LINE, memory=store, alarms=alarms, diagnoses=out)  # as the service wires it
    stop, gaps = asyncio.Event(), []
    station = asyncio.create_task(cop.run())
    try:
        with WriterBusy(store) as writer:
            probe = asyncio.create_task(loop_lag_probe(stop, gaps))
            while len(gaps) < 3:  # the probe is ticking before the alarm comes in
                await asyncio.sleep(0)
            alarm = alarm_for("product_pump", "bearing_wear", 0.7)
            alarms.offer(AlarmEvent(alarm.alarm_id, alarm.raised_at, "raised", AlarmState.ACTIVE_UNACK, alarm))
            d = await asyncio.wait_for(out.get(), 20)
            # the diagnosis came while the writer still held its lock: the read never waited for it
            assert not writer.released.is_set()
            writer.done.set()
            stop.set()
            await probe
        pack = cop.pack(alarm.alarm_id)
        assert d.alarm_id == alarm.alarm_id and [i.alarm_id for i in pack.incidents] == [old_id]
        assert pack.incidents[0].fix == "regreased DE bearing"
        worst_ms = max(gaps) * 1000
        print(f"loop lag while the store's writer held its lock {HOLD_S:.1f} s: max {worst_ms:.0f} ms")
        assert worst_ms < 250, f"the event loop stood still {worst_ms:.0f} ms while the copilot read the store"
    finally:
        station.cancel()
        store.close()


def test_store_reads_answer_while_a_write_transaction_is_open(make_store):
    store = make_store()
    try:
        old_id = past_incident(store)
        with WriterBusy(store) as writer:
            found = store.similar("product_pump", "bearing_wear", ["product_pump.vibration"])
            assert not writer.released.is_set()  # answered before the writer let go
        assert [i.alarm_id for i in found] == [old_id]
    finally:
        store.close()


class SlowMemory:
    """Incident memory on a disk that is busy: ``similar()`` answers only when the test opens the gate."""

    def __init__(self):
        self.asked, self.gate = threading.Event(), threading.Event()

    def similar(self, asset, fault_type, signals):
        self.asked.set()
        assert self.gate.wait(10)
        return []


async def test_a_slow_incident_look_up_runs_off_the_event_loop():
    memory = SlowMemory()
    alarms, out = Buffer(10, "alarms"), Buffer(10, "diagnoses")
    cop = Copilot(LINE, memory=memory, alarms=alarms, diagnoses=out)
    stop, gaps = asyncio.Event(), []
    station = asyncio.create_task(cop.run())
    probe = asyncio.create_task(loop_lag_probe(stop, gaps))
    try:
        alarm = alarm_for("air_compressor", "air_leak", 0.9)
        alarms.offer(AlarmEvent(alarm.alarm_id, alarm.raised_at, "raised", AlarmState.ACTIVE_UNACK, alarm))
        assert await asyncio.to_thread(memory.asked.wait, 10)
        seen = len(gaps)
        while len(gaps) < seen + 20:  # the loop keeps ticking while the look-up waits for the disk
            await asyncio.sleep(0)
        assert out.qsize() == 0  # the diagnosis waits for its evidence, the loop does not
        memory.gate.set()
        d = await asyncio.wait_for(out.get(), 20)
        assert d.alarm_id == alarm.alarm_id and d.causes[0].fault_type == "air_leak"
        stop.set()
        await probe
        assert max(gaps) * 1000 < 250
    finally:
        memory.gate.set()
        station.cancel()


async def test_a_failing_incident_look_up_is_counted_and_the_diagnosis_still_goes_out(caplog):
    class BrokenMemory:
        def similar(self, asset, fault_type, signals):
            raise OSError("disk I/O error")

    alarms, out = Buffer(10, "alarms"), Buffer(10, "diagnoses")
    cop = Copilot(LINE, memory=BrokenMemory(), alarms=alarms, diagnoses=out)
    station = asyncio.create_task(cop.run())
    try:
        alarm = alarm_for("air_compressor", "air_leak", 0.9)
        alarms.offer(alarm)
        d = await asyncio.wait_for(out.get(), 20)
        assert d.alarm_id == alarm.alarm_id and cop.pack(alarm.alarm_id).incidents == []
        assert cop.stats()["incident_lookups_failed"] == 1
        assert "past incidents could not be looked up (OSError: disk I/O error)" in caplog.text
    finally:
        station.cancel()
