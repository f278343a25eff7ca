"""The bounded buffer between stations: never blocks the producer, counts and logs what overflows."""

import asyncio
import logging
import threading

from factory_copilot.plumbing.buffer import Buffer


async def test_overflow_drops_oldest_counts_and_logs(caplog):
    buf: Buffer[int] = Buffer(maxsize=3, name="readings")
    with caplog.at_level(logging.WARNING):
        results = [buf.offer(i) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert buf.stats() == {"offered": 5, "dropped": 2, "queued": 3, "maxsize": 3}
    assert [buf.get_nowait() for _ in range(3)] == [2, 3, 4]
    assert "readings full" in caplog.text and "2 in total" not in caplog.text  # rate-limited: one line for the burst


async def test_offer_from_a_foreign_thread_arrives_in_order():
    buf: Buffer[int] = Buffer(maxsize=1000)
    loop = asyncio.get_running_loop()
    t = threading.Thread(target=lambda: [buf.offer_threadsafe(loop, i) for i in range(100)])
    t.start()
    got = [await asyncio.wait_for(buf.get(), 5) for _ in range(100)]
    t.join()
    assert got == list(range(100))
