"""A station's loops run together until the station is told to stop."""

from __future__ import annotations

import asyncio


async def run_until(stop: asyncio.Event | None, tasks: list[asyncio.Task]) -> None:
    """Await ``tasks`` until ``stop`` is set (without one: until they end or this is cancelled); then cancel them."""
    try:
        if stop is None:
            await asyncio.gather(*tasks)
        else:
            await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
