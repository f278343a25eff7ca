"""Benchmarks: each prints its figures, then one summary line. Run them from a checkout: `python bench/<name>.py`."""

from __future__ import annotations

from factory_copilot.plumbing.broker import MOSQUITTO, EmbeddedBroker, MosquittoBroker, free_port


def start_broker() -> MosquittoBroker | EmbeddedBroker:
    """The project's own broker runner on a free loopback port, its queues sized for a benchmark's floods."""
    if MOSQUITTO is not None:
        return MosquittoBroker("127.0.0.1", free_port(), persistence=False, max_queued=1_000_000).start()
    return EmbeddedBroker("127.0.0.1", free_port()).start()
