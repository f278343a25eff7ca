"""One site history (issue 22): the lines of a site write to one PostgreSQL database, each line's store sees only
its own rows, and a database server that goes away for a while loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from factory_copilot.config import SIMULATED_LINE, ServicePaths, StoreSettings, load_line
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.records import AlarmState, Diagnosis, Feedback, Handover, HandoverAck, Reading
from factory_copilot.store import Retention, Store, StoreStation
from factory_copilot.store.store import PostgresStore, line_id, open_store
from tests.test_store import T0, alarm_event, anomaly


def write_a_shift(store: PostgresStore, value: float) -> None:
    """The same asset, alarm, diagnosis and handover names every line of a packaging site would use."""
    store.add_readings([Reading(T0 + i, "filler", "bowl_level", value) for i in range(10)])
    store.add_anomalies([anomaly(T0 + 1)])
    store.add_alarm_events([alarm_event("A1", T0 + 1, "raised", AlarmState.ACTIVE_UNACK)])
    store.add_diagnosis(Diagnosis("A1", f"diagnosis {value}", [], [], [], [], "runbook", created_at=T0 + 2))
    store.add_feedback(Feedback("A1", "confirmed", fix=f"fix {value}", ts=T0 + 3))
    store.add_handover(Handover("2023-11-14-morning", "morning", "2023-11-14", T0 - 3600, T0, T0, {"value": value}))


def test_two_lines_share_one_database_and_each_sees_its_own_rows(pg_url):
    line_a = PostgresStore(pg_url, "site-1/line-a", retention=Retention(readings_raw=None))
    line_b = PostgresStore(pg_url, "site-1/line-b", retention=Retention(readings_raw=5.0))
    try:
        write_a_shift(line_a, 1.0)
        write_a_shift(line_b, 2.0)
        assert line_a.counts() == line_b.counts()
        assert line_a.counts()["readings_raw"] == 10 and line_a.counts()["alarms"] == 1
        line_b.add_alarm_event(alarm_event("A1", T0 + 9, "returned", AlarmState.NORMAL, raised=T0 + 1))
        line_b.acknowledge_handover(HandoverAck("2023-11-14-morning", "op-b", T0 + 5))
        # the same alarm id on two lines: two alarms, each with its own state and history
        assert line_a.alarm("A1").state is AlarmState.ACTIVE_UNACK and line_b.alarm("A1").state is AlarmState.NORMAL
        assert len(line_a.alarm_history("A1")) == 1 and len(line_b.alarm_history("A1")) == 2
        assert [a.alarm_id for a in line_a.active_alarms()] == ["A1"] and line_b.active_alarms() == []
        assert set(line_a.trend("filler", T0, T0 + 10, resolution="bucket")["mean"]) == {1.0}
        assert set(line_b.trend("filler", T0, T0 + 10, resolution="raw")["mean"]) == {2.0}
        assert line_a.latest_readings()["filler.bowl_level"][1] == 1.0
        assert line_a.diagnosis("A1").summary == "diagnosis 1.0" and line_b.diagnosis("A1").summary == "diagnosis 2.0"
        assert [i.fix for i in line_a.similar("product_pump", "pump_cavitation")] == ["fix 1.0"]
        assert line_a.handover("2023-11-14-morning").body == {"value": 1.0}
        assert line_a.handover("2023-11-14-morning").acknowledged == []
        assert [a["actor"] for a in line_b.handover("2023-11-14-morning").acknowledged] == ["op-b"]
        # one line's retention sweep removes that line's rows only
        deleted = line_b.enforce_retention(now=T0 + 60)
        assert deleted["readings_raw"] == 10 and line_a.counts()["readings_raw"] == 10
        # every row carries its line, so the database holds both lines
        with line_a._reads as conn:
            lines = conn.execute("SELECT line, count(*) FROM public.alarms WHERE line LIKE 'site-1/%' "
                                 "GROUP BY line ORDER BY line").fetchall()
        assert [tuple(r) for r in lines] == [("site-1/line-a", 1), ("site-1/line-b", 1)]
    finally:
        line_a.close()
        line_b.close()


def test_a_line_file_with_a_store_url_opens_the_sites_database(pg_url, tmp_path):
    line = load_line(SIMULATED_LINE)
    paths = ServicePaths(tmp_path)
    with open_store(line, paths) as embedded:
        assert type(embedded) is Store and embedded.path == str(tmp_path / "store.db")
    site = line.model_copy(update={"store": StoreSettings(url=pg_url)})
    with open_store(site, paths) as shared:
        assert isinstance(shared, PostgresStore) and shared.line == line_id(line) == f"{line.site}/{line.line}"
        shared.add_readings([Reading(T0, "filler", "bowl_level", 1.0)])
    with open_store(site, paths, read_only=True) as reader:
        assert reader.counts()["readings_raw"] == 1
        with pytest.raises(Exception, match="read-only"):
            reader.add_readings([Reading(T0 + 1, "filler", "bowl_level", 1.0)])


def test_a_reader_of_a_database_without_the_store_says_so(pg_cluster):
    url = pg_cluster.create_database("empty_history")
    with pytest.raises(FileNotFoundError, match="holds no store tables"):
        PostgresStore.reader(url, "site-1/line-a")


async def test_a_database_away_for_a_while_loses_and_duplicates_nothing(own_pg_cluster, caplog):
    cluster = own_pg_cluster
    url = cluster.create_database("site_history")
    store = PostgresStore(url, "site-1/line-a")
    readings, events = Buffer(100_000, "readings"), Buffer(1000, "events")
    station = StoreStation(store, readings=readings, events=events, batch_max=500, retry_s=0.02, retry_max_s=0.05,
                           retention_every_s=0.05, clock=lambda: T0 + 40)  # sweeps often, deleting nothing
    task = asyncio.create_task(station.run())
    try:
        for i in range(1000):
            readings.offer(Reading(T0 + i / 100, "filler", "bowl_level", float(i)))
        async with asyncio.timeout(30):
            await station.wait_written("readings", 1000)
        await asyncio.to_thread(cluster.stop)
        caplog.set_level(logging.WARNING, logger="factory_copilot.store.station")
        for i in range(1000, 4000):
            readings.offer(Reading(T0 + i / 100, "filler", "bowl_level", float(i)))
        events.offer(alarm_event("A1", T0 + 30, "raised", AlarmState.ACTIVE_UNACK))
        async with asyncio.timeout(30):
            await station.wait_retries(10)
        stats = station.stats()
        assert stats["unavailable"] and stats["unavailable_since"] is not None
        assert stats["held"]["readings"] + readings.qsize() == 3000 and stats["held"]["events"] == 1
        assert stats["written"]["readings"] == 1000 and stats["failed"] == {"readings": 0, "events": 0}
        assert sum(r.message.count("database unavailable") for r in caplog.records) == 1  # rate-limited, not 10
        async with asyncio.timeout(30):  # a retention sweep meanwhile: one line, no traceback (bench/site.py)
            while not any("retention skipped" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.02)
        assert not [r.getMessage() for r in caplog.records if r.exc_info]
        await asyncio.to_thread(cluster.start)
        async with asyncio.timeout(60):
            await station.wait_written("readings", 4000)
            await station.wait_written("events", 1)
        stats = station.stats()
        assert stats["unavailable"] is None and stats["held"] == {"readings": 0, "events": 0}
        with PostgresStore.reader(url, "site-1/line-a") as check:
            assert check.counts()["readings_raw"] == 4000  # none lost, none twice
            assert check.trend("filler", T0, T0 + 40, resolution="bucket")["n"].sum() == 4000
            assert check.alarm("A1").state is AlarmState.ACTIVE_UNACK
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()


@pytest.mark.slow
async def test_the_service_says_in_health_that_its_database_is_away_and_catches_up(broker, tmp_path, sim_models,
                                                                                   own_pg_cluster):
    from tests.support.plant import Plant, condition

    url = own_pg_cluster.create_database("site_history")
    plant = Plant(broker, tmp_path, sim_models)
    plant.line = plant.line.model_copy(update={"store": StoreSettings(url=url)})
    await plant.start()
    try:
        service = plant.service
        assert isinstance(service.store, PostgresStore) and service.store.line == line_id(plant.line)
        await condition(lambda: service.store_station.written["readings"] > 0, 30)
        await asyncio.to_thread(own_pg_cluster.stop)
        await condition(lambda: any(r.startswith("store unavailable since") for r in service.health()[1]), 30)
        held = service.store_station.stats()["held"]["readings"]
        await condition(lambda: service.store_station.stats()["held"]["readings"] > held, 30)  # the line goes on
        await asyncio.to_thread(own_pg_cluster.start)
        await condition(lambda: service.store_station.stats()["unavailable"] is None, 60)
        await condition(lambda: service.health()[0], 30)
        await plant.stop_service_now()  # drains what is queued
        stats = service.store_station.stats()
        to_store = service.store_station._lanes[0][1].stats()  # the readings subscription
        assert to_store["dropped"] == 0 and stats["failed"]["readings"] == 0
        with PostgresStore.reader(url, line_id(plant.line)) as check:
            stored = check.counts()["readings_raw"]
            assert stored == stats["written"]["readings"] == to_store["offered"], (stored, stats, to_store)
    finally:
        await plant.close()


@pytest.mark.slow
async def test_the_service_starts_alarming_with_its_database_away_and_stores_once_it_is_up(broker, tmp_path,
                                                                                          sim_models, own_pg_cluster):
    """The edge's work never waits for the site: with PostgreSQL down at start the line alarms at once, /health
    names the store, and what was held is written (tables created first) when the server comes up."""
    from tests.support.plant import Plant, condition

    url = own_pg_cluster.create_database("site_history")
    await asyncio.to_thread(own_pg_cluster.stop)
    plant = Plant(broker, tmp_path, sim_models)
    plant.line = plant.line.model_copy(update={"store": StoreSettings(url=url)})
    await plant.start()
    try:
        service = plant.service
        await condition(lambda: any(r.startswith("store unavailable since") for r in service.health()[1]), 30)
        assert service.store_station.written["readings"] == 0
        injected = time.time()
        plant.inject("pump_cavitation", severity=3.0, ramp_s=5.0)
        await condition(lambda: any(a.asset == "product_pump" and a.raised_at > injected
                                    for a in service.engine.active()), 90)
        raised = [a.alarm_id for a in service.engine.active() if a.raised_at > injected]
        assert service.store_station.stats()["held"]["events"] > 0 and service.stopped == {}
        await asyncio.to_thread(own_pg_cluster.start)
        await condition(lambda: service.store_station.stats()["unavailable"] is None, 60)
        await condition(lambda: service.store_station.written["readings"] > 0, 30)  # each lane retries on its own
        await condition(lambda: service.store_station.stats()["held"]["events"] == 0, 30)
        with PostgresStore.reader(url, line_id(plant.line)) as check:
            assert all(check.alarm(alarm_id) is not None for alarm_id in raised)
            assert check.counts()["readings_raw"] > 0
    finally:
        await plant.close()


def test_a_site_store_of_version_2_gains_the_standing_alarms_index_and_keeps_its_alarms(pg_cluster):
    """Migration 3 on a database that already holds alarms: the rows stay, the site's `alarms list` query (standing
    ones only) can be answered from alarms_standing, without the normal ones' bodies, and `alarms audit`'s newest
    events across lines from alarm_events_site_ts, without sorting them all."""
    import json

    import psycopg

    from factory_copilot.plumbing import postgres
    from factory_copilot.store.schema import COMPONENT, PG_MIGRATIONS
    from factory_copilot.store.site import SiteHistory

    url = pg_cluster.create_database("site_v2_standing")
    conn = postgres.Connection(url)
    try:
        postgres.migrate(conn, PG_MIGRATIONS[:2], COMPONENT)  # a site store as it was before version 3
        for n, state in enumerate([AlarmState.NORMAL, AlarmState.ACTIVE_UNACK, AlarmState.NORMAL]):
            a = alarm_event(f"A{n}", T0 + n, "raised", state).alarm
            conn.execute("INSERT INTO alarms(line, alarm_id, asset, condition, state, priority, raised_at, updated_at, "
                         "body) VALUES (?,?,?,?,?,?,?,?,?)", ("site-1/line-a", a.alarm_id, a.asset, a.condition,
                                                              state.value, int(a.priority), a.raised_at, a.updated_at,
                                                              json.dumps(a.to_dict())))
    finally:
        conn.close()
    PostgresStore(url, "site-1/line-a").close()  # the line's store opens it: migrates it
    with SiteHistory(url) as site:
        assert [x.alarm.alarm_id for x in site.alarms()] == ["A1"]
        assert sorted(x.alarm.alarm_id for x in site.alarms(include_normal=True)) == ["A0", "A1", "A2"]
    with psycopg.connect(url) as check:
        assert check.execute("SELECT version FROM schema_version WHERE component = 'store'").fetchone()[0] == 3
        check.execute("SET enable_seqscan = off")  # three rows: only a forbidden seq scan shows the index is usable
        plan = " ".join(r[0] for r in check.execute(
            "EXPLAIN SELECT line, body FROM alarms WHERE TRUE AND state != %s ORDER BY line, priority, raised_at DESC",
            ("normal",)).fetchall())
        assert "alarms_standing" in plan, plan
        plan = " ".join(r[0] for r in check.execute(  # the site's newest events across lines (SiteHistory.audit)
            "EXPLAIN SELECT line, alarm_id, ts, event, state, actor, comment, alarm, id FROM alarm_events WHERE TRUE "
            "ORDER BY ts DESC, id DESC LIMIT %s", (200,)).fetchall())
        assert "alarm_events_site_ts" in plan, plan
