"""The OPC UA collector against a real asyncua server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import pytest_asyncio
import yaml
from asyncua import ua

from factory_copilot.plumbing.broker import free_port
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.collect.browse import browse_line
from factory_copilot.collect.opcua import OpcuaCollector
from factory_copilot.config import parse_line
from factory_copilot.records import SourceState, Quality, Reading
from tests.support.opcua import drain, line_with_opcua, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    s = await start_server()
    yield s
    await s.stop()


def _fresh(since: float):
    return lambda r: r.ts >= since


async def test_readings_arrive_with_asset_signal_unit_and_quality(server):
    line = line_with_opcua(endpoint=server.endpoint, publishing_interval_ms=50)
    buffer: Buffer[Reading] = Buffer(1000)
    collector = OpcuaCollector(line, buffer)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    await asyncio.wait_for(collector.connected.wait(), 10)
    t0 = time.time() - 30  # stamped in the past (the server serves no future stamps): not an initial value
    await server.write(
        [
            Reading(t0, "product_pump", "flow", 41.5),
            Reading(t0, "heat_tunnel", "zone1_temperature", 181.0, Quality.UNCERTAIN),
            Reading(t0, "filler", "fill_weight", None, Quality.BAD),
        ]
    )
    got = await drain(buffer, lambda rs: len([r for r in rs if r.ts == pytest.approx(t0, abs=1e-3)]) >= 3)
    fresh = {r.key: r for r in got if r.ts == pytest.approx(t0, abs=1e-3)}
    pump = fresh["product_pump.flow"]
    assert (pump.value, pump.quality, pump.source) == (41.5, Quality.GOOD, "opcua")
    assert pump.unit == line.signal("product_pump.flow").unit
    tunnel = fresh["heat_tunnel.zone1_temperature"]
    assert (tunnel.value, tunnel.quality, tunnel.unit) == (181.0, Quality.UNCERTAIN, line.signal("heat_tunnel.zone1_temperature").unit)
    assert not tunnel.is_process_value
    filler = fresh["filler.fill_weight"]
    assert (filler.value, filler.quality) == (None, Quality.BAD)
    stats = collector.stats()
    assert stats["by_quality"]["uncertain"] >= 1 and stats["by_quality"]["bad"] >= 1
    assert stats["readings_in"] == len(got) + buffer.qsize()
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_every_signal_of_the_line_is_subscribed(server):
    line = line_with_opcua(endpoint=server.endpoint)
    buffer: Buffer[Reading] = Buffer(1000)
    collector = OpcuaCollector(line, buffer)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    await asyncio.wait_for(collector.connected.wait(), 10)
    keys = line.signal_keys(include_mode=True)
    t0 = time.time() - 30
    await server.write([Reading(t0, *k.split("."), float(i)) for i, k in enumerate(keys)])
    got = await drain(buffer, lambda rs: len({r.key for r in rs if r.ts == pytest.approx(t0, abs=1e-3)}) == len(keys))
    values = {r.key: r.value for r in got if r.ts == pytest.approx(t0, abs=1e-3)}
    assert values == {k: float(i) for i, k in enumerate(keys)}
    assert collector.stats()["rejects"] == {}
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_browse_turns_the_address_space_into_a_line_file(server):
    # a plant-style nesting too: Objects/Utilities/Hall A/Chiller 1 with one variable (no EngineeringUnits)
    ns = 2
    utilities = await server.server.nodes.objects.add_folder(ns, "Utilities")
    hall = await utilities.add_folder(ns, "Hall A")
    chiller = await hall.add_object(ns, "Chiller 1")
    await chiller.add_variable(ua.NodeId("chiller1.supply", ns), "Supply Temp", 6.5)
    text = await browse_line(server.endpoint, site="demo-plant", line="packaging-1")
    data = yaml.safe_load(text)
    assert "TODO" in text  # normal bands are placeholders the engineer must fill in
    assert "# WARNING: the proposed normal bands are +-10 % around the single value" in text
    line = parse_line(data, "browsed")  # what browse prints is a valid line file
    original = line_with_opcua()
    assert [a.id for a in line.assets] == [a.id for a in original.assets] + ["chiller_1"]
    pump = line.signal("product_pump.flow")
    assert pump.unit == original.signal("product_pump.flow").unit
    assert pump.source.opcua == "ns=2;s=product_pump.flow"
    assert [s.name for s in line.asset("product_pump").signals] == [s.name for s in original.asset("product_pump").signals]
    supply = line.signal("chiller_1.supply_temp")
    assert (supply.unit, supply.normal, supply.source.opcua) == ("TODO", (5.85, 7.15), "ns=2;s=chiller1.supply")


async def test_server_restart_is_survived_and_the_gap_shows(caplog):
    caplog.set_level(logging.WARNING, logger="asyncua")  # as a library user would have it: asyncua's own log on
    caplog.set_level(logging.INFO, logger="factory_copilot.collect.opcua")  # (last: it also sets the handler level)
    port = free_port()
    server = await start_server(port=port)
    line = line_with_opcua(endpoint=server.endpoint, publishing_interval_ms=50)
    buffer: Buffer[Reading] = Buffer(10_000)
    collector = OpcuaCollector(line, buffer, reconnect_max_delay_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    await asyncio.wait_for(collector.connected.wait(), 10)

    async def feed(srv, n: int) -> list[float]:
        stamps = []
        for _ in range(n):
            ts = time.time()
            stamps.append(ts)
            await srv.write([Reading(ts, "product_pump", "flow", 40.0)])
            await asyncio.sleep(0.05)
        return stamps

    before = await feed(server, 10)
    await drain(buffer, lambda rs: any(r.ts == pytest.approx(before[-1], abs=1e-3) for r in rs))
    await server.stop()
    down_at = time.time()
    # the watchdog notices within about a second; the collector must say so
    while collector.connected.is_set():
        await asyncio.sleep(0.05)
        assert time.time() - down_at < 15, "the collector never noticed the server went away"
    await asyncio.sleep(1.0)
    server = await start_server(port=port)
    try:
        await asyncio.wait_for(collector.connected.wait(), 20)
        after = []
        got: list[Reading] = []
        states: list[SourceState] = []
        deadline = time.time() + 15
        while not any(r.value == 40.0 and r.ts > down_at for r in got):
            assert time.time() < deadline, "readings did not resume after the server restart"
            after += await feed(server, 2)
            try:
                while True:
                    item = buffer.get_nowait()
                    (states if isinstance(item, SourceState) else got).append(item)
            except asyncio.QueueEmpty:
                pass
        # the re-created subscription still reports every sample, identical values included (trigger on timestamp)
        more = await feed(server, 5)
        got += await drain(buffer, lambda rs: sum(1 for r in rs if any(abs(r.ts - m) < 1e-3 for m in more)) >= 5,
                           states=states)
        # the outage went downstream as a state, in order with the data: lost, then back
        assert [s.connected for s in states][-2:] == [False, True] and "unreachable" in states[-2].detail
        resumed = [r for r in got if r.key == "product_pump.flow" and r.value == 40.0 and r.ts > down_at]
        gap = resumed[0].ts - before[-1]
        assert gap > 1.0, f"expected a visible gap in the data, got {gap:.2f} s"
        assert collector.stats()["reconnects"] == 1 and collector.stats()["outages"] == 1
        outage_lines = [r for r in caplog.records if r.name == "factory_copilot.collect.opcua" and "lost" in r.message]
        assert len(outage_lines) == 1 and outage_lines[0].exc_info is None
        assert not [r for r in caplog.records if r.name.startswith("asyncua") and r.levelno >= logging.ERROR], "stack traces in the log"
        assert any("reconnected" in r.message for r in caplog.records)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await server.stop()


async def test_a_collector_started_before_its_server_waits_for_it(caplog):
    caplog.set_level(logging.WARNING, logger="factory_copilot.collect.opcua")
    port = free_port()
    line = line_with_opcua(endpoint=f"opc.tcp://127.0.0.1:{port}/factory-copilot/", timeout_s=1.0)
    buffer: Buffer[Reading] = Buffer(1000)
    collector = OpcuaCollector(line, buffer)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    for _ in range(200):
        if any("retrying until it answers" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.02)
    assert not collector.connected.is_set() and not task.done()
    server = await start_server(port=port)
    try:
        await asyncio.wait_for(collector.connected.wait(), 20)
        t0 = time.time() - 30
        await server.write([Reading(t0, "product_pump", "speed", 1450.0)])
        got = await drain(buffer, lambda rs: any(r.ts == pytest.approx(t0, abs=1e-3) for r in rs))
        assert got[-1].key == "product_pump.speed"
        waiting = [r for r in caplog.records if "retrying until it answers" in r.getMessage()]
        assert len(waiting) == 1, "the wait for the server is said once, not once per attempt"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await server.stop()
