"""The simulated line's OPC UA server is a well-formed server, read by asyncua's own client (issue 25)."""

from __future__ import annotations

import asyncio
import time
from datetime import timezone

import pytest
from asyncua import Client, ua

from factory_copilot.collect.opcua import OpcuaCollector
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.detect.station import DetectStation
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.units import NO_UNIT_ID, UNECE, unece, unit_id
from factory_copilot.records import Reading
from simulators.line import SimulatedLine
from simulators.runner import run_simulation
from simulators.scenarios import ModeSchedule
from tests.support.opcua import drain, line_with_opcua, start_server

LINE = load_line(SIMULATED_LINE)


def test_unece_unit_ids_are_the_codes_ascii_bytes():
    assert unit_id("CEL") == 4408652 and unit_id("BAR") == 4342098 and unit_id("P1") == 20529
    with pytest.raises(ValueError):
        unit_id("TOOLONG")
    # every unit text the simulated line uses has a code
    assert all(unece(s.unit) is not None for a in LINE.assets for s in a.signals), \
        [s.unit for a in LINE.assets for s in a.signals if unece(s.unit) is None]
    assert unece("furlongs/fortnight") is None and UNECE["degC"].unit_id == 4408652


def live_sim(line, dt_s: float) -> SimulatedLine:
    """The line stepped as the demo steps it: stamped from now on, in real time."""
    sim = SimulatedLine(line, seed=5, dt_s=dt_s, schedule=ModeSchedule.running(), start_ts=time.time())
    sim.steps(3)
    sim.start_ts = time.time() - sim.t
    return sim


async def test_every_variable_is_well_formed_for_a_real_client():
    server = await start_server()
    halt = asyncio.Event()
    sim = live_sim(LINE, dt_s=0.2)
    runner = asyncio.create_task(run_simulation(sim, speed=1.0, server=server, stop=halt))
    try:
        async with Client(server.endpoint, timeout=10) as client:
            while server.writes < 3 * len(LINE.signal_keys(include_mode=True)):
                await asyncio.sleep(0.05)
            for asset in LINE.assets:
                for signal in asset.signals:
                    key = f"{asset.id}.{signal.name}"
                    node = client.get_node(signal.source.opcua or f"ns=2;s={key}")
                    props = {(await p.read_browse_name()).Name: p for p in await node.get_properties()}
                    assert {"EURange", "EngineeringUnits"} <= set(props), (key, set(props))
                    eu = await props["EngineeringUnits"].read_value()
                    assert eu.UnitId == UNECE[signal.unit].unit_id and eu.UnitId != NO_UNIT_ID, key
                    assert eu.DisplayName.Text == signal.unit, key
                    rng = await props["EURange"].read_value()
                    assert isinstance(rng, ua.Range) and rng.Low < rng.High, key
                    if key == LINE.mode_key:  # the span of the mode's codes, each named
                        codes = LINE.modes.codes
                        assert (rng.Low, rng.High) == (min(codes), max(codes))
                        named = {e.Value: e.DisplayName.Text for e in await props["EnumValues"].read_value()}
                        assert named == codes
                    else:
                        band = signal.limits or signal.normal
                        assert (rng.Low, rng.High) == (float(band[0]), float(band[1])), key
                    dv = await node.read_data_value()
                    assert dv.ServerTimestamp is not None and dv.SourceTimestamp is not None, key
                    src = dv.SourceTimestamp.replace(tzinfo=dv.SourceTimestamp.tzinfo or timezone.utc)
                    srv = dv.ServerTimestamp.replace(tzinfo=dv.ServerTimestamp.tzinfo or timezone.utc)
                    assert src <= srv, (key, src, srv)
                    want = ua.VariantType.Int32 if key == LINE.mode_key else ua.VariantType.Double
                    assert dv.Value.VariantType == want, key
                    assert await node.read_data_type_as_variant_type() == want, key
            mode = client.get_node(f"ns=2;s={LINE.mode_key}")
            assert isinstance(await mode.read_value(), int)
    finally:
        halt.set()
        await runner
        await server.stop()


async def test_a_collector_counts_no_reading_ahead_of_its_clock():
    server = await start_server()
    line = line_with_opcua(endpoint=server.endpoint, publishing_interval_ms=50, queue_size=50)
    readings: Buffer[Reading] = Buffer(10_000)
    collector = OpcuaCollector(line, readings)
    station = DetectStation(line)
    stop, halt = asyncio.Event(), asyncio.Event()
    collecting = asyncio.create_task(collector.run(stop))
    try:
        await asyncio.wait_for(collector.connected.wait(), 10)
        sim = live_sim(line, dt_s=0.25)
        first = sim.start_ts + sim.t
        runner = asyncio.create_task(run_simulation(sim, speed=1.0, server=server, stop=halt))
        n = len(line.signal_keys(include_mode=True))
        seen: list[Reading] = []

        def fed(rs: list[Reading]) -> bool:
            for r in rs[len(seen):]:
                seen.append(r)
                station.add(r)  # at once, on the clock the detector reads
            return sum(r.ts > first for r in rs) >= 12 * n

        await drain(readings, fed, timeout_s=20)
        halt.set()
        await runner
        assert sum(r.ts > first for r in seen) >= 12 * n
        assert station.counts["ahead_of_clock"] == 0, dict(station.counts)
        assert collector.gate.rejects == {}, collector.gate.rejects
    finally:
        halt.set()
        stop.set()
        await collecting
        await server.stop()
