"""How fast the alarm engine takes anomalies, and how long a transition takes with its SQLite write.

Two workloads on the simulated line with a fake clock (no sleeps) and a fresh file:
  * steady: 34 limit conditions stay active, one anomaly per condition per second
    (what the detect station sends during a long upset): each one re-assesses its
    alarm's severity, trend and priority (and its situation's), rarely a transition;
  * churn: conditions raise, return, get acknowledged in turn — every step is a
    transition written to SQLite in its own transaction (the worst case); grouping
    is off here so that every condition is an alarm of its own that needs an ack.
    .venv/bin/python bench/alarm_engine.py [--seconds 3000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from factory_copilot.alarms import AlarmEngine, AlarmSettings
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.records import Anomaly, OperatorCommand


class Clock:
    t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def main(seconds: int) -> None:
    line = load_line(SIMULATED_LINE)
    keys = [k.split(".", 1) for k in line.signal_keys()]
    anomalies = [Anomaly(0, a, "limit", 2.0, 1.0, signal=s, value=1.0) for a, s in keys]
    settings = AlarmSettings(on_delay_s=0, off_delay_s=0, silence_s=2.5, flood_count=10_000)
    churn_settings = AlarmSettings(on_delay_s=0, off_delay_s=0, silence_s=2.5, flood_count=10_000,
                                   group_consequences=False)
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        engine = AlarmEngine(line, Path(tmp) / "steady.db", settings, clock=clock)
        for an in anomalies:
            an.ts = clock.t  # stamped with the time it was evaluated, as the detect station does
            engine.ingest(an)
        t0 = time.perf_counter()
        for _ in range(seconds):
            clock.t += 1
            for an in anomalies:
                an.ts = clock.t
                engine.ingest(an)
            engine.tick()
        steady = seconds * len(anomalies) / (time.perf_counter() - t0)
        engine.close()

        clock = Clock()
        engine = AlarmEngine(line, Path(tmp) / "churn.db", churn_settings, clock=clock)
        n_transitions, t0 = 0, time.perf_counter()
        rounds = max(1, seconds // 30)
        for _ in range(rounds):
            for an in anomalies:
                an.ts = clock.t
                n_transitions += len(engine.ingest(an))  # raised / realarm
            clock.t += 3
            n_transitions += len(engine.tick())  # returned
            for alarm in engine.active():
                n_transitions += len(engine.command(OperatorCommand("acknowledge", alarm.alarm_id, "bench"))[1])
            clock.t += 120  # past the chatter window: the next round raises afresh
        churn = n_transitions / (time.perf_counter() - t0)
        audit_rows = len(engine.audit())
        engine.close()

    print(f"steady: {seconds * len(anomalies)} anomalies on {len(anomalies)} active alarms: {steady:,.0f} anomalies/s")
    print(f"churn: {n_transitions} transitions ({audit_rows} audit rows), each written to SQLite: {churn:,.0f} transitions/s")
    print(f"alarm engine: {steady:,.0f} anomalies/s steady, {churn:,.0f} transitions/s with SQLite")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=3000, help="simulated seconds of the steady workload")
    main(ap.parse_args().seconds)
