"""Benchmark: is a replay exact? The same recording replayed again and again at 1x, 50x and as fast as possible.

The reference is the recording as the line would have lived it (tests/test_replay.py's ``reference``: every
reading fed to the detect station and the alarm engine on a clock that steps with the data). Each replay runs
the whole service (collect, detect, alarms, store, publish through a real broker) on the recording's time; a
run is a miss when it raises a different set of alarms, or one more than 2 s of data time from the reference.
Run it on a loaded machine too (``yes > /dev/null &`` twice): the data clock must not care.

    .venv/bin/python bench/replay_repeat.py [--repeats 20] [--speeds 50,inf,1] [--repeats-1x 2] [--concurrent-1x]
        [--seconds 600]

Last line: replay: <runs> runs at <speeds>, <misses> missed the reference
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory_copilot.config import SIMULATED_LINE, MqttConnection, ServicePaths, load_line  # noqa: E402
from factory_copilot.detect.evaluate import train_models  # noqa: E402
from factory_copilot.plumbing.broker import free_port  # noqa: E402
from factory_copilot.service import LineService, _stop_after_replay  # noqa: E402
from simulators import FaultScenario, ModeSchedule, simulate_frame  # noqa: E402
from tests.support.brokers import start_broker  # noqa: E402
from tests.test_replay import DAY, reference  # noqa: E402


async def replayed(line, models, path: Path, work: Path, speed: float, seconds: float) -> tuple[dict, float]:
    """As tests/test_replay.py's: the whole service on the recording, with time for a 1x replay to finish."""
    service = LineService(line, models, ServicePaths(work), replay=path, speed=speed, health_port=free_port())
    stop = asyncio.Event()
    started = time.monotonic()
    summary = asyncio.create_task(_stop_after_replay(service, service.collector.finished, stop, settle_s=20))
    await asyncio.wait_for(service.run(stop), (seconds / speed if math.isfinite(speed) else 0) + 120)
    return summary.result(), time.monotonic() - started


def same(summary: dict, expected: list[tuple[str, float]]) -> tuple[bool, str]:
    got: dict[str, list[float]] = {}
    want: dict[str, list[float]] = {}
    for a in summary["alarms_raised"]:
        got.setdefault(a["alarm_id"], []).append(a["raised_at"])
    for alarm, at in expected:
        want.setdefault(alarm, []).append(at)
    if {a: len(t) for a, t in got.items()} != {a: len(t) for a, t in want.items()}:
        return False, f"alarms {sorted((a, len(t)) for a, t in got.items())} vs {sorted((a, len(t)) for a, t in want.items())}"
    worst = max((abs(g - w) for a in want for g, w in zip(sorted(got[a]), sorted(want[a]))), default=0.0)
    return worst <= 2.0, f"worst {worst:.2f} s of data time"


async def main_async(args) -> None:
    line = load_line(SIMULATED_LINE)
    history = simulate_frame(line, seed=3, duration_s=3 * 3600, schedule=ModeSchedule.default())
    models = train_models(line, history, progress=False)
    frame = simulate_frame(line, seed=21, duration_s=args.seconds, schedule=ModeSchedule.running(startup_s=60),
                           scenarios=[FaultScenario("pump_cavitation", start_s=args.seconds / 2, severity=2.0, ramp_s=20)])
    frame["ts"] = time.time() - 2 * DAY + frame.index.to_numpy() * line.sampling_interval_s
    work = Path(tempfile.mkdtemp(prefix="replay-repeat-"))
    path = work / "recording.csv"
    frame.to_csv(path, index=False)
    broker = start_broker()
    brokers = [broker]
    try:
        line = line.model_copy(update={"mqtt": MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)})
        expected = reference(line, models, path)
        print(f"reference: {len(expected)} alarms raised: " + ", ".join(f"{a} at +{t - frame['ts'].iloc[0]:.0f} s" for a, t in expected))
        speeds = [math.inf if s in ("inf", "max") else float(s) for s in args.speeds.split(",")]
        runs = misses = 0
        for speed in speeds:
            n = args.repeats_1x if speed == 1.0 else args.repeats
            walls = []
            if speed == 1.0 and args.concurrent_1x:
                # 1x runs take the recording's length each: run them side by side, each service on a broker of its
                # own (one line may be published by one service per broker), all on this one event loop
                own = [start_broker() for _ in range(n)]
                brokers += own
                lines = [line.model_copy(update={"mqtt": MqttConnection(host=b.host, port=b.port, protocol=b.protocol)})
                         for b in own]
                done = await asyncio.gather(*(replayed(lk, models, path, work / f"run-1-{k}", 1.0, args.seconds)
                                              for k, lk in enumerate(lines)))
            else:
                done = [await replayed(line, models, path, work / f"run-{speed}-{k}", speed, args.seconds)
                        for k in range(n)]
            for k, (summary, wall) in enumerate(done):
                ok, why = same(summary, expected)
                runs, misses = runs + 1, misses + (not ok)
                walls.append(wall)
                if not ok:
                    print(f"  {speed:g}x run {k + 1}: MISS ({why})")
            side = " side by side" if speed == 1.0 and args.concurrent_1x else ""
            print(f"{speed:g}x: {n} runs{side}, wall {min(walls):.1f}-{max(walls):.1f} s each", flush=True)
    finally:
        for b in brokers:
            b.stop()
    print(f"replay: {runs} runs at {args.speeds}, {misses} missed the reference")


def main() -> None:
    logging.disable(logging.WARNING)  # each run's start-up notes (no roles, retained alarms cleared) are not figures
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20, help="runs per speed (default 20)")
    ap.add_argument("--repeats-1x", type=int, default=2, help="runs at 1x (each takes the recording's length)")
    ap.add_argument("--speeds", default="50,inf,1")
    ap.add_argument("--concurrent-1x", action="store_true",
                    help="run the 1x replays side by side (each on a broker of its own) rather than one after another")
    ap.add_argument("--seconds", type=float, default=600.0, help="length of the recording (default 600 s)")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
