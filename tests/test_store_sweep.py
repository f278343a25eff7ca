"""The store station's retention sweep runs in a worker thread of its own at a lower priority than the service's, so
on a busy machine the alarm path's threads go first (issue 21: a sweep of 180,000 rows took 0.5-1.3 s of a core)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from factory_copilot.records import Reading
from factory_copilot.store import Retention, Store, StoreStation
from factory_copilot.store.station import SWEEP_NICE

T0 = 1_700_000_000.0


class WatchedStore(Store):
    """A store that notes the thread each sweep runs in, and its priority."""

    swept_in: list[tuple[str, int]]

    def enforce_retention(self, now=None):
        self.swept_in.append((threading.current_thread().name,
                              os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return super().enforce_retention(now)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own priority is Linux's")
async def test_a_retention_sweep_runs_in_its_own_thread_at_a_lower_priority(tmp_path):
    store = WatchedStore(tmp_path / "store.db", retention=Retention(readings_raw=60.0))
    store.swept_in = []
    store.add_readings([Reading(T0, "filler", "bowl_level", 1.0), Reading(T0 + 100, "filler", "bowl_level", 2.0)])
    station = StoreStation(store)
    try:
        assert (await station.sweep(T0 + 120))["readings_raw"] == 1
        assert (await station.sweep(T0 + 200))["readings_raw"] == 1
    finally:
        station._sweeper.shutdown()
        store.close()
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert [name.startswith("store-sweep") for name, _ in store.swept_in] == [True, True]
    assert {nice for _, nice in store.swept_in} == {min(19, mine + SWEEP_NICE)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the loop's thread keeps its own
