"""Commissioning on a recording: a replay N times faster than real time alarms as the line would have in real time.

The reference is the recording fed through the detect station and the alarm engine on a clock that
steps with the data, as a live line would have driven them; the replay runs the whole service
(collect, detect, alarms, store, publish) at 50x on the recording's time. Before, the alarm
engine's timers ran on the wall clock while detection ran on data time (a 2 s on-delay became
40 s of data), and the store's retention deleted the replayed readings at once because they were old.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from factory_copilot.alarms.engine import AlarmEngine
from factory_copilot.collect.replay import load_recording
from factory_copilot.config import SIMULATED_LINE, MqttConnection, ServicePaths, load_line
from factory_copilot.detect.station import DetectStation
from factory_copilot.plumbing.broker import free_port
from factory_copilot.service import LineService, _stop_after_replay
from factory_copilot.store import Store
from simulators import FaultScenario, ModeSchedule, simulate_frame

DAY = 86_400.0


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Ten minutes of the line two days ago, pump cavitation from minute five; CSV with a ts column."""
    line = load_line(SIMULATED_LINE)
    frame = simulate_frame(line, seed=21, duration_s=600, schedule=ModeSchedule.running(startup_s=60),
                           scenarios=[FaultScenario("pump_cavitation", start_s=300, severity=2.0, ramp_s=20)])
    frame["ts"] = time.time() - 2 * DAY + frame.index.to_numpy() * line.sampling_interval_s
    path = tmp_path_factory.mktemp("recording") / "pump-cavitation.csv"
    frame.to_csv(path, index=False)
    return path


def reference(line, models, path) -> list[tuple[str, float]]:
    """The recording as the line would have lived it: every reading arrives at its own time."""
    now = [0.0]
    station = DetectStation(line, detector=models.detector, classifier=models.classifier, checks=models.checks(line),
                            clock=lambda: now[0])
    engine = AlarmEngine(line, clock=lambda: now[0])
    raised = []
    readings = load_recording(path, line)
    for i, r in enumerate(readings):
        now[0] = r.ts + 0.1  # a tenth of a second on the wire
        events = [e for a in station.add(r) for e in engine.ingest(a)]
        if i + 1 == len(readings) or readings[i + 1].ts != r.ts:
            events += engine.tick()
        raised += [(e.alarm_id, e.ts) for e in events if e.event == "raised"]
    return raised


async def replayed(line, models, path, tmp_path, speed: float = 50.0) -> tuple[dict, float, LineService]:
    """The whole service on the recording at ``speed``: its summary, the wall seconds it took, the service."""
    service = LineService(line, models, ServicePaths(tmp_path / "replay"), replay=path, speed=speed,
                          health_port=free_port())
    stop = asyncio.Event()
    started = time.monotonic()
    summary_task = asyncio.create_task(_stop_after_replay(service, service.collector.finished, stop, settle_s=20))
    await asyncio.wait_for(service.run(stop), 120)
    return summary_task.result(), time.monotonic() - started, service


def assert_same_alarms(summary, expected) -> None:
    def by_alarm(raised):
        out: dict[str, list[float]] = {}
        for alarm, at in raised:
            out.setdefault(alarm, []).append(at)
        return out

    got, want = by_alarm((a["alarm_id"], a["raised_at"]) for a in summary["alarms_raised"]), by_alarm(expected)
    assert {a: len(t) for a, t in got.items()} == {a: len(t) for a, t in want.items()}
    for alarm, times in want.items():  # two alarms raised in the same second may come in either order
        assert got[alarm] == pytest.approx(times, abs=2.0), f"{alarm} at data time {got[alarm]}, in real time {times}"


async def test_a_replay_at_50x_alarms_as_the_line_would_have_in_real_time(recording, broker, tmp_path, sim_models):
    line = load_line(SIMULATED_LINE)
    line = line.model_copy(update={"mqtt": MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)})
    expected = reference(line, sim_models, recording)
    assert any(a.startswith("product_pump.") for a, _ in expected), "the fault must be alarmed at all"
    summary, wall, _ = await replayed(line, sim_models, recording, tmp_path)
    assert_same_alarms(summary, expected)
    # 600 s of data in well under a minute, and the store kept the two-day-old readings (retention on data time)
    assert wall < 60
    fault = summary["faults"][0]
    assert fault["fault"] == "pump_cavitation" and fault["first_alarm_after_s"] is not None
    with Store(tmp_path / "replay" / "store.db") as store:
        assert store.counts()["readings_raw"] > 0 and store.counts()["trend"] > 0


@pytest.mark.slow
async def test_the_compressor_station_replayed_at_50x_alarms_as_it_lived(broker, tmp_path):
    """The second line, not the demo: its own regimes, signals and catalogue, replayed as fast."""
    import pandas as pd

    from factory_copilot.detect.evaluate import train_models
    from tests.lines.compressor_station import make_history as station

    line = load_line(station.HERE / "line.yaml")
    models = train_models(line, pd.read_parquet(station.HISTORY), progress=False)
    run = station.simulate([("day", 1200, 0)], seed=11, faults=[station.Fault("inlet_valve_sticking", 300)])
    path = tmp_path / "compressor.csv"
    run.to_csv(path, index=False)
    line = line.model_copy(update={"mqtt": MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)})
    expected = reference(line, models, path)
    assert expected, "the fault must be alarmed at all"
    summary, _, service = await replayed(line, models, path, tmp_path)
    assert_same_alarms(summary, expected)
    assert service.detect.stats().get("late_adjusted", 0) == 0


async def test_a_gap_in_the_recording_is_a_lost_source_but_a_busy_machine_is_not(recording, broker, tmp_path, sim_models):
    """The replay holds its time for the pipeline (nothing late, no silence made up), yet silence in the data shows."""
    import pandas as pd

    frame = pd.read_csv(recording)
    gap = frame[(frame.index < 120) | (frame.index >= 180)]  # the recorder lost a minute of every signal
    path = tmp_path / "with-gap.csv"
    gap.to_csv(path, index=False)
    line = load_line(SIMULATED_LINE)
    line = line.model_copy(update={"mqtt": MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)})
    summary, _, service = await replayed(line, sim_models, path, tmp_path)
    raised = {a["alarm_id"]: a["raised_at"] for a in summary["alarms_raised"]}
    lost = [a for a in raised if a.startswith("sources.")]
    assert lost, f"a minute without data must be a lost source: {sorted(raised)}"
    t0 = float(frame["ts"].iloc[0])
    assert 120 <= raised[lost[0]] - t0 < 180  # during the gap, not after the busy stretches of the replay
    assert service.detect.stats().get("late_adjusted", 0) == 0 and service.detect.stats().get("late_dropped", 0) == 0
