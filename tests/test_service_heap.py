"""The service's start-up heap is frozen once a process (``gc.freeze``), so full garbage collections scan only what
came after it: over the whole heap one held the event loop 0.5-2.5 s (issue 21, ``bench/sweep_latency.py``).
That ``run`` does it is checked in tests/test_service_run.py (its log)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from factory_copilot import service
assert gc.get_freeze_count() == 0
service._freeze_start_up_heap()
first = gc.get_freeze_count()
kept = [[i] for i in range(1000)]  # made after start-up: a later service in the process freezes nothing more
service._freeze_start_up_heap()
print(first, gc.get_freeze_count())
"""


def test_start_up_heap_is_frozen_once_a_process():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    first, again = map(int, out.stdout.split())
    assert first > 10_000  # the modules and what they built at import
    assert again == first

