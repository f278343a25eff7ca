"""Runs the simulated line in (scaled) real time and hands every step to the OPC UA server and the MQTT publisher.

The loop yields to the event loop on every step (asyncua clients and the
server's own tasks have a 1 s watchdog), keeps to its schedule without
bursting when it falls behind, and writes the ground truth of injected faults.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from simulators.mqtt_publisher import ReadingPublisher
from simulators.opcua_server import LineServer

log = logging.getLogger(__name__)

# further behind schedule than this, the runner skips ahead instead of bursting to catch up
MAX_LAG_S = 1.0


@dataclass
class RunStats:
    steps: int = 0
    readings: int = 0
    lag_resets: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict:
        wall = time.monotonic() - self.started
        return {"steps": self.steps, "readings": self.readings, "lag_resets": self.lag_resets, "wall_s": round(wall, 3)}


async def run_simulation(
    sim,
    *,
    speed: float = 1.0,
    duration_s: float | None = None,
    server: LineServer | None = None,
    publisher: ReadingPublisher | None = None,
    stop: asyncio.Event | None = None,
    ground_truth: str | Path | None = None,
    stats: RunStats | None = None,
) -> RunStats:
    """Step ``sim`` (a SimulatedLine) until ``duration_s`` simulated seconds have passed or ``stop`` is set.

    ``speed`` is simulated seconds per wall second (10: ten times real time); 0 runs as fast as the
    server and publisher take it, still yielding on every step.
    """
    from simulators.scenarios import write_ground_truth  # the physics package owns the ground-truth format

    stop = stop or asyncio.Event()
    stats = stats or RunStats()
    if ground_truth:
        write_ground_truth(ground_truth, sim)
    step_wall = sim.dt_s / speed if speed > 0 else 0.0
    next_due = time.monotonic()
    try:
        while not stop.is_set() and (duration_s is None or sim.t < duration_s):
            # a step is written once its time has come, as a sensor reports what it has measured: at speed 1 a
            # line stamped from now on (the demo) is never served ahead of the clock
            next_due += step_wall
            delay = next_due - time.monotonic()
            if delay < -MAX_LAG_S:
                stats.lag_resets += 1
                if stats.lag_resets == 1 or stats.lag_resets % 100 == 0:
                    log.warning(
                        "simulator is %.1f s behind at speed %g (%d times so far); skipping ahead, lower --speed",
                        -delay,
                        speed,
                        stats.lag_resets,
                    )
                next_due = time.monotonic()
                delay = 0.0
            await asyncio.sleep(max(delay, 0.0))  # always yield, even when behind
            if stop.is_set():
                break
            readings = sim.step()
            if server is not None:
                await server.write(readings)
            if publisher is not None:
                publisher.publish(readings)
            stats.steps += 1
            stats.readings += len(readings)
    finally:
        if ground_truth:
            write_ground_truth(ground_truth, sim)
    return stats
