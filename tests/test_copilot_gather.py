"""The copilot gathers an alarm's evidence off the event loop (issue 21): the trends of every signal's window and the
runbook search are ~20 ms of Python per alarm, and the collectors, alarms and publisher share the loop."""

from __future__ import annotations

import asyncio
import threading

from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.copilot import Copilot
from factory_copilot.copilot.runbooks import runbooks_of
from factory_copilot.records import Reading
from tests.support.copilot import alarm_for
from tests.test_store_reads import loop_lag_probe

LINE = load_line(SIMULATED_LINE)


class SlowRunbooks:
    """The line's runbooks, whose search answers only when the test opens the gate."""

    def __init__(self):
        self.library = runbooks_of(LINE)
        self.asked, self.gate = threading.Event(), threading.Event()

    def search(self, *args, **kwargs):
        self.asked.set()
        assert self.gate.wait(5)
        return self.library.search(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.library, name)


async def test_evidence_is_gathered_off_the_event_loop_while_the_window_fills():
    library = SlowRunbooks()
    cop = Copilot(LINE, library=library)
    keys = LINE.signal_keys()
    for i in range(600):
        cop.observe(Reading(1000.0 + i * 0.1, *keys[i % len(keys)].split("."), 1.0 + (i % 7)))
    stop, gaps = asyncio.Event(), []
    probe = asyncio.create_task(loop_lag_probe(stop, gaps))
    gathering = None
    try:
        gathering = asyncio.create_task(cop.gather(alarm_for("air_compressor", "air_leak", 0.9)))
        assert await asyncio.to_thread(library.asked.wait, 5)
        for i in range(600):  # the loop keeps taking readings into the window the evidence was built from
            cop.observe(Reading(1060.0 + i * 0.1, *keys[i % len(keys)].split("."), 2.0))
        seen = len(gaps)
        while len(gaps) < seen + 20:  # and keeps ticking while the evidence waits
            await asyncio.sleep(0)
        assert not gathering.done()
        library.gate.set()
        pack = await asyncio.wait_for(gathering, 10)
        assert pack.alarm_id == "A-1" and pack.passages and pack.signals
        assert cop.pack("A-1") is pack
        stop.set()
        await probe
        assert max(gaps) * 1000 < 250
    finally:
        library.gate.set()
        stop.set()
        if gathering is not None:
            gathering.cancel()
