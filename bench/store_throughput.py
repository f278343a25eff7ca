"""How many readings a second the store station writes (the line needs 3,000/s).

Offers N readings for the 34 signals of the simulated line into a Buffer and
times the StoreStation writing them all to a fresh SQLite file (or, with --url, to a
line of its own in a PostgreSQL database).
    .venv/bin/python bench/store_throughput.py [--n 300000] [--url postgresql://USER@HOST:PORT/DB [--line SITE/LINE]]
(a line's own role, under row-level security, needs --line: the line grant-line bound it to)
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.records import Reading
from factory_copilot.store import Store, StoreStation
from factory_copilot.store.store import PostgresStore


async def main(n: int, url: str | None = None, line: str | None = None) -> None:
    keys = [k.split(".", 1) for k in load_line(SIMULATED_LINE).signal_keys()]
    with tempfile.TemporaryDirectory() as tmp:
        store = PostgresStore(url, line or f"bench/{time.time():.0f}") if url else Store(Path(tmp) / "bench.db")
        buf: Buffer[Reading] = Buffer(n, "readings")
        t0 = time.time()
        for i in range(n):
            asset, signal = keys[i % len(keys)]
            buf.offer(Reading(t0 + i / 3000, asset, signal, float(i % 97)))
        station = StoreStation(store, readings=buf)
        task = asyncio.create_task(station.run())
        start = time.perf_counter()
        await station.wait_written("readings", n)
        elapsed = time.perf_counter() - start
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        counts = store.counts()
        asset, signal = keys[0]
        reads = {"trend (bucket, 60 s)": lambda: store.trend(asset, t0, t0 + 60, resolution="bucket"),
                 "trend_points (whole run, 200 points)": lambda: store.trend_points(asset, signal, t0, t0 + n / 3000,
                                                                                    200),
                 "latest_readings": store.latest_readings, "newest_sample_by_asset": store.newest_sample_by_asset}
        timings = {}
        for name, read in reads.items():
            start = time.perf_counter()
            for _ in range(20):
                read()
            timings[name] = (time.perf_counter() - start) / 20 * 1000
        store.close()
        size = sum(p.stat().st_size for p in Path(tmp).glob("bench.db*"))
    print(f"readings written: {n} in {elapsed:.2f} s over {station.batches} batches")
    print(f"rows: raw {counts['readings_raw']}, trend buckets {counts['trend']}"
          + ("" if url else f"; file {size / 1e6:.1f} MB"))
    for name, ms in timings.items():
        print(f"read {name}: {ms:.1f} ms")
    print(f"store readings/s: {n / elapsed:,.0f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300_000)
    p.add_argument("--url", help="a PostgreSQL database (a line of its own there) instead of a fresh SQLite file")
    p.add_argument("--line", help="with --url: the line to write (default bench/<now>); a line's role needs its own")
    args = p.parse_args()
    asyncio.run(main(args.n, args.url, args.line))
