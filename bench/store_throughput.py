"""How many readings a second the store station writes (the line needs 3,000/s).

Offers N readings for the 34 signals of the simulated line into a Buffer and
times the StoreStation writing them all to a fresh SQLite file.
    .venv/bin/python bench/store_throughput.py [--n 300000]
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


async def main(n: int) -> None:
    keys = [k.split(".", 1) for k in load_line(SIMULATED_LINE).signal_keys()]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
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
        store.close()
        size = sum(p.stat().st_size for p in Path(tmp).glob("bench.db*"))
    print(f"readings written: {n} in {elapsed:.2f} s over {station.batches} batches")
    print(f"rows: raw {counts['readings_raw']}, trend buckets {counts['trend']}; file {size / 1e6:.1f} MB")
    print(f"store readings/s: {n / elapsed:,.0f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300_000)
    asyncio.run(main(p.parse_args().n))
