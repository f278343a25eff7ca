"""How fast the dashboard's reads are on a store fed 3,000 readings/s for the raw window (15 min).

    .venv/bin/python bench/store_reads.py [--rate 3000] [--minutes 15]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas  # noqa: F401  (imported up front so the first trend() is not charged for it)

from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.records import Reading
from factory_copilot.store import Store
from dashboards.overview import line_health


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def main(rate: int, minutes: float) -> None:
    line = load_line(SIMULATED_LINE)
    keys = [k.split(".", 1) for k in line.signal_keys()]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "reads.db")
        now = time.time()
        n = int(rate * minutes * 60)
        span = minutes * 60
        batch = []
        for i in range(n):
            asset, signal = keys[i % len(keys)]
            batch.append(Reading(now - span + i / rate, asset, signal, float(i % 89)))
            if len(batch) == 50_000:
                store.add_readings(batch)
                batch = []
        store.add_readings(batch)
        health, t_health = timed(lambda: line_health(store, line, now=now))
        long, t_long = timed(lambda: store.trend("product_pump", now - 1800, now))
        short, t_short = timed(lambda: store.trend("product_pump", now - 300, now))
        deleted, t_prune = timed(lambda: store.enforce_retention(now + 60))
        store.close()
    print(f"store holds {n:,} raw readings ({rate}/s for {minutes:g} min)")
    print(f"line_health: {t_health:.1f} ms for {len(health)} assets")
    print(f"trend 30 min (buckets): {t_long:.1f} ms, {len(long)} points")
    print(f"trend 5 min (auto): {t_short:.1f} ms, {len(short)} points")
    print(f"retention pass: {t_prune:.0f} ms, {deleted['readings_raw']:,} raw rows removed")
    print(f"dashboard refresh reads (health + 30 min trend): {t_health + t_long:.1f} ms")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=15)
    a = p.parse_args()
    main(a.rate, a.minutes)
