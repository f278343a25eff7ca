"""The detect station fed hand-made Readings: each single-signal check, mode suppression, settling, the live loop."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.detect import DetectStation, FaultClassifier, LineDetector, SignalChecks
from factory_copilot.records import Anomaly, Quality, Reading
from simulators import modes

LINE = load_line(SIMULATED_LINE)
KEYS = LINE.signal_keys()
MIDDLE = {k: sum(LINE.signal(k).normal) / 2 for k in KEYS}


def row_readings(ts: float, mode: str = modes.RUNNING, override: dict | None = None, rng=None, skip=(), quality=None):
    """One reading per signal at ``ts``: mid-band values with a little noise, plus the mode reading."""
    rng = rng or np.random.default_rng(int(ts))
    out = [Reading(ts, "line", "mode", float(modes.code(mode)))]
    for k in KEYS:
        if k in skip:
            continue
        spec = LINE.signal(k)
        width = spec.normal[1] - spec.normal[0]
        value = MIDDLE[k] + rng.normal(scale=0.002 * width + 1e-6)
        if override and k in override:
            value = override[k]
        q = (quality or {}).get(k, Quality.GOOD)
        asset, _, sig = k.partition(".")
        out.append(Reading(ts, asset, sig, None if q is Quality.BAD else value, q))
    return out


def feed(station: DetectStation, start: int, n: int, **kw) -> list[list[Anomaly]]:
    """Feed n seconds of rows; returns the anomalies of each completed row (row t completes when t+1 arrives)."""
    rows = []
    for t in range(start, start + n):
        got = []
        for r in row_readings(float(t), **{k: (v(t) if callable(v) else v) for k, v in kw.items()}):
            got.extend(station.add(r))
        rows.append(got)
    return rows


def kinds(rows, kind, key=None):
    return [a for r in rows for a in r if a.kind == kind and (key is None or f"{a.asset}.{a.signal}" == key)]


def test_limit_range_and_rate_checks():
    st = DetectStation(LINE)
    rows = feed(st, 0, 20)
    assert not any(rows), "mid-band rows raise nothing"
    rows = feed(st, 20, 3, override={"infeed_conveyor.belt_speed": 1.5})
    limit = kinds(rows, "limit", "infeed_conveyor.belt_speed")
    assert limit and limit[0].value == pytest.approx(1.5) and limit[0].threshold == 1.4 and limit[0].asset == "infeed_conveyor"
    rows = feed(st, 23, 3, override={"infeed_conveyor.belt_speed": 5.0})
    assert kinds(rows, "range", "infeed_conveyor.belt_speed") and not kinds(rows[1:], "limit", "infeed_conveyor.belt_speed")
    feed(st, 26, 3)
    rows = feed(st, 29, 2, override={"infeed_conveyor.belt_speed": 0.2})  # 1.0 -> 0.2 in one second, max_rate 0.5
    rate = kinds(rows, "rate", "infeed_conveyor.belt_speed")
    assert rate and rate[0].score == pytest.approx(0.8, abs=0.05) and rate[0].threshold == 0.5


def test_stuck_sensor_only_while_running():
    checks = SignalChecks(LINE, stuck_samples=30)
    st = DetectStation(LINE, checks=checks)
    feed(st, 0, 10)
    rows = feed(st, 10, 45, override={"filler.fill_weight": 501.234})
    stuck = kinds(rows, "stuck", "filler.fill_weight")
    assert stuck and len(stuck) >= 10 and stuck[0].score >= 30
    assert not kinds(rows, "stuck", "line.speed_setpoint")
    assert all(a.signal == "fill_weight" for a in kinds(rows, "stuck"))
    idle = DetectStation(LINE, checks=SignalChecks(LINE, stuck_samples=30, settle_s=0))
    rows = feed(idle, 0, 60, mode=modes.IDLE, override={"filler.fill_weight": 0.0})
    assert not kinds(rows, "stuck")


def test_quality_bad_and_missing_samples():
    st = DetectStation(LINE, checks=SignalChecks(LINE, gap_intervals=5))
    feed(st, 0, 5)
    rows = feed(st, 5, 2, quality={"product_pump.flow": Quality.BAD})
    bad = kinds(rows, "quality", "product_pump.flow")
    assert bad and "bad" in bad[0].message
    feed(st, 7, 1)
    rows = feed(st, 8, 10, skip=("heat_tunnel.zone1_temperature",))
    gap = kinds(rows, "quality", "heat_tunnel.zone1_temperature")
    # raised once the signal has been silent for more than 5 intervals, then on every row while silent
    assert gap and gap[0].ts > 6 + 5 and len(gap) >= 3
    assert not kinds(rows, "quality", "product_pump.flow")


def test_mode_suppression_and_settling_grace():
    st = DetectStation(LINE, checks=SignalChecks(LINE, settle_s=30))
    feed(st, 0, 5)
    # changeover: flow 45 is below the running limit (60) but inside the changeover band: no alarm, ever
    rows = feed(st, 5, 60, mode=modes.CHANGEOVER, override={"product_pump.flow": 45.0})
    assert not kinds(rows, "limit", "product_pump.flow")
    # back to running with flow still low: quiet during the 30 s grace, then the limit alarm comes
    rows = feed(st, 65, 50, override={"product_pump.flow": 45.0})
    limit = kinds(rows, "limit", "product_pump.flow")
    assert limit and all(a.ts >= 65 + 30 for a in limit) and limit[0].ts <= 65 + 32
    assert limit[0].mode == "running"


def history(n: int, seed: int, shift: dict | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    load = np.cumsum(rng.normal(scale=0.05, size=n)) * 0 + rng.normal(size=n)
    data = {}
    for i, k in enumerate(KEYS):
        spec = LINE.signal(k)
        width = spec.normal[1] - spec.normal[0]
        data[k] = MIDDLE[k] + 0.05 * width * (load if i % 3 == 0 else rng.normal(size=n))
    df = pd.DataFrame(data)
    for k, v in (shift or {}).items():
        df[k] += v
    return df


@pytest.fixture(scope="module")
def models():
    normal = history(3000, 0)
    det = LineDetector(false_alarm_rate=0.001, persistence=2).fit(normal)
    width = {k: LINE.signal(k).normal[1] - LINE.signal(k).normal[0] for k in KEYS}
    cav = history(600, 1, {"product_pump.flow": -0.3 * width["product_pump.flow"]})
    heat = history(600, 2, {"heat_tunnel.zone1_temperature": -0.3 * width["heat_tunnel.zone1_temperature"]})
    X = pd.concat([normal.iloc[:600], cav, heat], ignore_index=True)
    y = ["normal"] * 600 + ["pump_cavitation"] * 600 + ["heater_degradation"] * 600
    return det, FaultClassifier(n_estimators=40).fit(X, y)


async def test_live_loop_emits_multivariate_anomalies_with_contributions_and_fault(models):
    det, clf = models
    readings: Buffer[Reading] = Buffer(100_000, "readings")
    anomalies: Buffer[Anomaly] = Buffer(100_000, "anomalies")
    st = DetectStation(LINE, readings, anomalies, detector=det, classifier=clf)
    X = history(400, 3)
    width = LINE.signal("product_pump.flow").normal[1] - LINE.signal("product_pump.flow").normal[0]
    X.loc[200:, "product_pump.flow"] -= 0.3 * width
    for t, row in enumerate(X.itertuples(index=False)):
        readings.offer(Reading(float(t), "line", "mode", 2.0))
        for k, v in zip(KEYS, row):
            asset, _, sig = k.partition(".")
            readings.offer(Reading(float(t), asset, sig, float(v)))
    readings.offer(Reading(400.0, "line", "mode", 2.0))  # opens the next interval, so row 399 is evaluated
    stop = asyncio.Event()
    task = asyncio.create_task(st.run(stop))
    got = []
    while not got or got[-1].ts < 399:
        got.append(await asyncio.wait_for(anomalies.get(), timeout=30))
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    while anomalies.qsize():
        got.append(anomalies.get_nowait())
    multi = [a for a in got if a.kind == "multivariate"]
    assert multi and min(a.ts for a in multi) >= 200
    assert sum(1 for a in multi if a.ts >= 210) >= 150, "repeated on every row while the departure persists"
    a = multi[-1]
    assert next(iter(a.contributions)) == "product_pump.flow" and a.asset == "product_pump"
    assert list(a.contributions.values()) == sorted(a.contributions.values(), reverse=True)
    assert a.fault_type == "pump_cavitation" and a.fault_probability > 0.5
    assert a.score > a.threshold == 1.0 and a.condition == "fault"


def test_station_ignores_unknown_signals_and_late_samples():
    st = DetectStation(LINE)
    assert st.add(Reading(0.0, "nowhere", "thing", 1.0)) == []
    assert st.ignored["nowhere.thing"] == 1
    feed(st, 1, 3)
    assert st.add(Reading(0.5, "product_pump", "flow", 1e6)) == []  # its row is already evaluated
    assert st.rows == 2
