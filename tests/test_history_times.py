"""Every ``ts`` form docs/history.md promises reads as the same seconds, in train/evaluate and in replay.

Before, under pandas 3 ISO 8601 times were read as microseconds taken for nanoseconds (every time
divided by 1,000: rows dated 1970, evaluate's figures falsified with exit 0) and replay refused
them outright ("could not convert string to float").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from factory_copilot.collect.replay import load_recording
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.detect.evaluate import _row_times
from factory_copilot.plumbing.history import epoch_seconds

T0 = 1581182839.0  # 2020-02-08T17:27:19Z
FORMS = {
    "epoch seconds": lambda t: t,
    "epoch seconds as text": lambda t: f"{t:.1f}",
    "ISO with Z": lambda t: pd.Timestamp(t, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
    "ISO with +00:00": lambda t: pd.Timestamp(t, unit="s", tz="UTC").isoformat(),
    "ISO with +02:00": lambda t: pd.Timestamp(t, unit="s", tz="UTC").tz_convert("+02:00").isoformat(),
    "naive ISO (UTC)": lambda t: pd.Timestamp(t, unit="s").strftime("%Y-%m-%d %H:%M:%S"),
    "naive ISO with T": lambda t: pd.Timestamp(t, unit="s").strftime("%Y-%m-%dT%H:%M:%S"),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_promised_ts_form_reads_as_epoch_seconds(form):
    times = T0 + np.arange(5) * 1.0
    column = pd.Series([FORMS[form](t) for t in times])
    assert epoch_seconds(column) == pytest.approx(times, abs=1e-6)


def test_a_parquet_timestamp_column_reads_as_epoch_seconds():
    stamps = pd.Series(pd.to_datetime([T0, T0 + 1], unit="s"))
    assert epoch_seconds(stamps) == pytest.approx([T0, T0 + 1])
    assert epoch_seconds(stamps.dt.tz_localize("UTC").dt.tz_convert("Europe/Berlin")) == pytest.approx([T0, T0 + 1])


def test_a_ts_that_is_no_time_is_refused_with_the_value():
    with pytest.raises(ValueError, match=r"plant\.csv: 'yesterday' is neither"):
        epoch_seconds(pd.Series(["2020-02-08T17:27:19Z", "yesterday"]), where="plant.csv")


@pytest.mark.parametrize("form", FORMS)
def test_evaluate_and_replay_read_a_recording_s_ts_as_the_same_seconds(form, tmp_path):
    line = load_line(SIMULATED_LINE)
    times = T0 + np.arange(4) * line.sampling_interval_s
    frame = pd.DataFrame({f"{a.id}.{s.name}": 1.0 for a in line.assets for s in a.signals}, index=range(4))
    frame.insert(0, "ts", [FORMS[form](t) for t in times])
    path = tmp_path / "recording.csv"
    frame.to_csv(path, index=False)
    read = pd.read_csv(path)
    assert _row_times(read, line.sampling_interval_s) == pytest.approx(times)
    assert sorted({r.ts for r in load_recording(path, line)}) == pytest.approx(times)


def test_a_recorded_reading_stream_with_iso_times_lays_out_in_the_same_rows(tmp_path):
    from factory_copilot.detect.cli import read_history

    line = load_line(SIMULATED_LINE)
    key = next(f"{a.id}.{s.name}" for a in line.assets for s in a.signals if f"{a.id}.{s.name}" != line.mode_key)
    asset, signal = key.split(".")
    epoch = pd.DataFrame({"ts": T0 + np.arange(6) * line.sampling_interval_s, "asset": asset, "signal": signal,
                          "value": np.arange(6.0)})
    iso = epoch.assign(ts=[FORMS["ISO with +02:00"](t) for t in epoch["ts"]])
    epoch.to_json(tmp_path / "epoch.jsonl", orient="records", lines=True)
    iso.to_json(tmp_path / "iso.jsonl", orient="records", lines=True)
    want = read_history([str(tmp_path / "epoch.jsonl")], line)
    got = read_history([str(tmp_path / "iso.jsonl")], line)
    assert got[key].tolist() == want[key].tolist() == list(np.arange(6.0))
    assert sorted({r.ts for r in load_recording(tmp_path / "iso.jsonl", line)}) == pytest.approx(epoch["ts"].tolist())
