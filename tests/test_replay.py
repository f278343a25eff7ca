"""Commissioning on a recording: a replay N times faster than real time alarms as the line would have in real time.

The reference is the recording fed through the detect station and the alarm engine on a clock that
steps with the data, as a live line would have driven them; the replay runs the whole service
(collect, detect, alarms, store, publish) at 50x on the recording's time. Before, the alarm
engine's timers ran on the wall clock while detection ran on data time (a 2 s on-delay became
40 s of data), and the store's retention deleted the replayed readings at once because they were old.
"""

from __future__ import annotations

import asyncio
import math
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


# ---- issue 25: replay reads what train and evaluate read, scores as evaluate does ------------------
def _small_recording(tmp_path, labels, name="small.csv", **extra):
    """A few rows of every signal of the simulated line, one row a second, with ``labels`` and ``extra`` columns."""
    import pandas as pd

    line = load_line(SIMULATED_LINE)
    rows = len(labels)
    frame = pd.DataFrame({k: [1.0] * rows for k in line.signal_keys()})
    frame["ts"] = 1_700_000_000.0 + frame.index.to_numpy() * line.sampling_interval_s
    for column, values in extra.items():
        frame[column] = values
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return line, path


def test_a_recording_train_accepts_replays_with_its_extra_columns_named_once(tmp_path, caplog):
    """Before: ValueError 'columns that are no signal of the line file: operator_note' (train ignores them)."""
    line, path = _small_recording(tmp_path, ["normal"] * 4, operator_note=["ok", "ok", "check", "ok"],
                                  fault=["normal"] * 4)
    with caplog.at_level("INFO", logger="factory_copilot.collect.replay"):
        readings = load_recording(path, line)
    assert {r.key for r in readings} == set(line.signal_keys())
    named = [m for m in caplog.messages if "operator_note" in m]
    assert len(named) == 1 and "ignored" in named[0]


def test_replay_reads_healthy_labels_by_evaluates_rule(tmp_path):
    """0, 0.0, '0', 'normal' and empty are healthy, as evaluate scores them; before, 0.0 was a fault."""
    from factory_copilot.plumbing.history import fault_rows

    values = ["0", "0.0", "normal", "", "blocked_nozzle", "blocked_nozzle", "0.0", "1", "1", "0"]
    line, path = _small_recording(tmp_path, values, state=values)
    events: list = []
    load_recording(path, line, events, labels="state")
    import pandas as pd

    truth = fault_rows(pd.read_csv(path)["state"])
    starts = [1_700_000_000.0 + i for i in range(len(values)) if truth[i] and (i == 0 or not truth[i - 1])]
    assert [(e[0], e[2]) for e in events] == [(starts[0], "blocked_nozzle"), (starts[1], "1")]
    # each event ends where its labelled rows end: the first healthy row after it
    assert [e[1] for e in events] == [1_700_000_006.0, 1_700_000_009.0]


def test_replay_without_the_labels_column_says_so(tmp_path):
    line, path = _small_recording(tmp_path, ["normal"] * 3, fault=["normal"] * 3)
    with pytest.raises(ValueError, match="state"):
        load_recording(path, line, [], labels="state")


def test_an_alarm_after_the_event_ended_is_not_its_detection():
    """Before: a 'Data lost' alarm raised after the event ended counted as its first alarm."""
    from factory_copilot.plumbing.history import event_delay

    assert event_delay(100.0, 160.0, [50.0, 170.0]) is None  # before it, and after it ended
    assert event_delay(100.0, 160.0, [50.0, 104.0, 130.0]) == 4.0
    assert event_delay(100.0, 160.0, [160.0]) is None  # the first healthy row is no longer the event


async def test_a_replay_does_not_take_the_lines_health_port(tmp_path, broker, sim_models, monkeypatch):
    """Before: a replay bound service.health_port, so beside the live service it failed with 'address in use'."""
    import socket

    import yaml

    from factory_copilot import service as service_module

    line_file = tmp_path / "line.yaml"
    data = yaml.safe_load(SIMULATED_LINE.read_text())
    with socket.socket() as live:  # the live service's health port
        live.bind(("127.0.0.1", 0))
        live.listen()
        port = live.getsockname()[1]
        data.setdefault("service", {})["health_port"] = port
        data["service"]["state_dir"] = str(tmp_path / "state")
        seeds = SIMULATED_LINE.parent.parent  # the line file's knowledge, found from the copy too
        data["knowledge"] = {"faults": str(seeds / "faults.yaml"), "runbooks": str(seeds / "runbooks")}
        data["mqtt"] = {"host": broker.host, "port": broker.port, "protocol": broker.protocol}
        line_file.write_text(yaml.safe_dump(data))
        monkeypatch.setattr(service_module, "load_detector", lambda *a, **k: sim_models)
        _, path = _small_recording(tmp_path, ["normal"] * 5, fault=["normal"] * 5)
        assert await asyncio.wait_for(service_module.serve(line_file, replay=path, speed=math.inf), 120) == 0


async def test_evaluate_reports_the_alarms_and_delays_a_replay_reports_on_the_same_recording(
        recording, broker, tmp_path, sim_models):
    """Before: evaluate counted an alarm at the 5th consecutive flagged row, the replay at the engine's on-delay in
    data time, so the same recording's event was detected 2-3 s later in evaluate than in the replay."""
    from factory_copilot.detect.cli import read_history
    from factory_copilot.detect.evaluate import evaluate_recording

    line = load_line(SIMULATED_LINE)
    line = line.model_copy(update={"mqtt": MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)})
    res = evaluate_recording(sim_models, line, read_history([str(recording)], line))
    summary, _, _ = await replayed(line, sim_models, recording, tmp_path, speed=math.inf)
    assert [(e["label"], e["start_ts"]) for e in res["events"]] == [(f["fault"], f["start"]) for f in summary["faults"]]
    replay_delays = [f["first_alarm_after_s"] for f in summary["faults"]]
    assert None not in replay_delays, "the fault must be alarmed at all"
    assert [None if e["delay_s"] is None else round(e["delay_s"], 1) for e in res["events"]] == replay_delays
    # the same alarms at the same data times, so the counts per hour agree too
    assert sorted((a["alarm_id"], a["raised_at"]) for a in res["alarms_raised"]) == sorted(
        (a["alarm_id"], a["raised_at"]) for a in summary["alarms_raised"])
    assert res["alarms"] == len(summary["alarms_raised"])


def test_replay_of_a_reading_stream_refuses_labels_it_cannot_read(tmp_path):
    """Before: `run --replay stream.jsonl --labels fault` played the stream and scored no event, saying nothing."""
    import json

    line = load_line(SIMULATED_LINE)
    path = tmp_path / "stream.jsonl"
    path.write_text("".join(json.dumps({"ts": 1_700_000_000.0 + i, "asset": "product_pump", "signal": "flow",
                                        "value": 1.0, "fault": "normal"}) + "\n" for i in range(3)))
    assert load_recording(path, line)  # without --labels a stream replays, as normal running
    with pytest.raises(ValueError, match=r"stream\.jsonl.*JSON lines.*no labels.*CSV or Parquet"):
        load_recording(path, line, [], labels="fault")


def test_replay_labels_name_a_column_not_a_file(tmp_path):
    """A labels file given to --labels: the error says the labels are a column of the recording."""
    line, path = _small_recording(tmp_path, ["normal"] * 3, fault=["normal"] * 3)
    (tmp_path / "labels.jsonl").write_text('{"ts": 1700000000, "fault": "normal"}\n')
    with pytest.raises(ValueError, match=r"small\.csv.*labels\.jsonl'.*a column of the recording, not a file"):
        load_recording(path, line, [], labels=str(tmp_path / "labels.jsonl"))


async def test_run_replay_with_labels_it_cannot_read_fails_naming_the_file(tmp_path, sim_models, monkeypatch, caplog):
    """The whole command: exit 2 and the reason in its log, before anything is replayed."""
    import json

    import yaml

    from factory_copilot import service as service_module

    data = yaml.safe_load(SIMULATED_LINE.read_text())
    data.setdefault("service", {})["state_dir"] = str(tmp_path / "state")
    seeds = SIMULATED_LINE.parent.parent
    data["knowledge"] = {"faults": str(seeds / "faults.yaml"), "runbooks": str(seeds / "runbooks")}
    line_file = tmp_path / "line.yaml"
    line_file.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(service_module, "load_detector", lambda *a, **k: sim_models)
    path = tmp_path / "stream.jsonl"
    path.write_text(json.dumps({"ts": 1_700_000_000.0, "asset": "product_pump", "signal": "flow", "value": 1.0}) + "\n")
    with caplog.at_level("ERROR"):
        rc = await asyncio.wait_for(service_module.serve(line_file, replay=path, speed=math.inf, labels="fault"), 60)
    assert rc == 2
    assert any("stream.jsonl" in m and "no labels" in m for m in caplog.messages), caplog.messages


def test_evaluate_of_a_reading_stream_says_a_stream_has_no_labels(tmp_path, sim_models, capsys):
    """Before: 'no label column 'fault'' listing the stream's own fields, as if a column name were wrong."""
    import json

    from factory_copilot.cli import main
    from factory_copilot.detect.persist import save_detector

    path = tmp_path / "stream.jsonl"
    path.write_text(json.dumps({"ts": 1_700_000_000.0, "asset": "product_pump", "signal": "flow", "value": 1.0}) + "\n")
    models = save_detector(tmp_path / "m.joblib", sim_models)
    assert main(["evaluate", "--line", str(SIMULATED_LINE), "--history", str(path), "--models", str(models),
                 "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert "stream.jsonl" in err and "carries no labels" in err and "CSV or Parquet" in err
