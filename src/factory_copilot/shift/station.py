"""The shift station: at each change of the line's shifts, writes the handover of the shift that ended.

Built with the store, the alarm journal's file and its buffers: handovers out (to the publish station, which
retains the newest on ``<prefix>/<site>/<line>/handover``), acknowledgements in (the incoming operator's
``handover-ack/1`` from their own ``commands/<user>`` level) and command results out (their reply). It
reads its clock (the service's: data time in a replay) every ``tick_s``; a change it finds past writes that
shift's handover. Shifts that ended while the service was down (or while its clock jumped) are written at
start, oldest first, back to the newest stored handover and at most a day back (older ones: ``shift report``);
a store with no handover yet gets only the newest ended shift's. The handover is stored before it is published, so a restart never loses one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from factory_copilot.alarms.journal import Journal
from factory_copilot.config import LineConfig
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.plumbing.logs import printable
from factory_copilot.plumbing.tasks import run_until
from factory_copilot.records import CommandResult, Handover, HandoverAck
from factory_copilot.shift.calendar import last_completed, previous, shift_at
from factory_copilot.shift.handover import write_handover
from factory_copilot.store.store import Store

log = logging.getLogger(__name__)

MISSED_BACK_S = 24 * 3600.0  # handovers missed longer ago are written on demand by `shift report`


class ShiftStation:
    """A handover at each shift change, published; the incoming operator's acknowledgement taken."""

    # the records it takes off the line's bus and gives onto it (plumbing/bus.py)
    takes = (HandoverAck,)
    gives = (Handover, CommandResult)

    def __init__(
        self,
        line: LineConfig,
        store: Store,
        journal_path: str | Path,
        handovers: Buffer[Handover] | None = None,
        acks: Buffer[HandoverAck] | None = None,
        results: Buffer[CommandResult] | None = None,
        clock: Callable[[], float] = time.time,
        tick_s: float = 1.0,
        catch_up: bool = True,
    ):
        self.line = line
        self.store = store
        self.journal_path = Path(journal_path)
        self.handovers = handovers
        self.acks = acks
        self.results = results
        self.clock = clock
        self.tick_s = tick_s
        self.catch_up = catch_up  # at start, write the newest ended shift if the store has none (not in a replay)
        self.counts = {"written": 0, "acknowledged": 0, "refused": 0, "errors": 0}
        self.last_written: str | None = None
        self.written = asyncio.Event()  # set after each handover is written (tests wait on it)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        jobs = [asyncio.create_task(self._changes())]
        if self.acks is not None:
            jobs.append(asyncio.create_task(self._acknowledgements()))
        await run_until(stop, jobs)

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "last": self.last_written}

    async def write(self, window) -> Handover:
        """Write, store and publish the handover of ``window`` (in a thread: it reads SQLite)."""
        handover = await asyncio.to_thread(self._write, window)
        self.counts["written"] += 1
        self.last_written = handover.handover_id
        if self.handovers is not None:
            self.handovers.offer(handover)
        self.written.set()
        self.written.clear()
        log.info("shift handover %s written: %d sentence(s), %d standing", handover.handover_id,
                 len(handover.body["sentences"]), len(handover.body["standing"]))
        return handover

    def _write(self, window) -> Handover:
        journal = Journal(self.journal_path, read_only=True)
        try:
            handover = write_handover(self.line, window, self.store, journal, now=self.clock())
        finally:
            journal.close()
        self.store.add_handover(handover)
        return self.store.handover(handover.handover_id) or handover

    async def _changes(self) -> None:
        current = shift_at(self.line, self.clock())
        if self.catch_up and self.journal_path.exists():
            for window in await asyncio.to_thread(self._missed, last_completed(self.line, self.clock())):
                await self._try(window)  # the service was not running when that shift ended
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.clock()
            if now < current.start:  # the clock went back (a replay runs on its recording's time): follow it
                current = shift_at(self.line, now)
            elif now >= current.end:
                ended = last_completed(self.line, now)
                skipped = self._between(current, ended)
                if len(skipped) > 1 or skipped[0].start > current.start:
                    log.warning("the clock jumped from shift %s to after %s: writing the handovers of %s "
                                "(older ones on demand: shift report)", current.handover_id, ended.handover_id,
                                ", ".join(w.handover_id for w in skipped))
                current = shift_at(self.line, now)
                for window in skipped:
                    await self._try(window)

    def _back(self, last, written) -> list:
        """``last`` and the shifts before it back to the first that ``written`` says has its handover, at most a
        day back, oldest first."""
        windows = [last]
        while True:
            before = previous(self.line, windows[-1])
            if before.start <= last.start - MISSED_BACK_S or written(before):
                return windows[::-1]
            windows.append(before)

    def _between(self, first, last) -> list:
        """The ended shifts after ``first`` up to ``last``, with ``first`` itself (it ended too)."""
        return self._back(last, lambda w: w.start < first.start)

    def _missed(self, ended) -> list:
        """Ended shifts without a handover, oldest first: back to the newest stored one, at most a day back."""
        if self.store.handover(ended.handover_id) is not None:
            return []
        if not self.store.handovers(0.0, 1):
            return [ended]  # a new store: the newest ended shift only, not a day before the line was watched
        return self._back(ended, lambda w: self.store.handover(w.handover_id) is not None)

    async def _try(self, window) -> None:
        try:
            await self.write(window)
        except FileNotFoundError as exc:
            self.counts["errors"] += 1
            log.warning("shift handover %s not written: %s", window.handover_id, exc)
        except Exception:  # a failed handover must not stop the station: the next change writes again
            self.counts["errors"] += 1
            log.exception("shift handover %s could not be written", window.handover_id)

    async def _acknowledgements(self) -> None:
        assert self.acks is not None
        while True:
            ack = await self.acks.get()
            try:
                handover = await asyncio.to_thread(self.store.acknowledge_handover, ack)
            except Exception as exc:
                self.counts["errors"] += 1
                log.exception("acknowledgement of handover %s by %s failed", printable(ack.handover_id), printable(ack.actor))
                self._reply(CommandResult(ack.request_id, False, f"acknowledging handover {ack.handover_id!r} failed: "
                                                                  f"{exc}"))
                continue
            if handover is None:
                self.counts["refused"] += 1
                self._reply(CommandResult(ack.request_id, False, f"no handover with id {ack.handover_id!r}"))
                continue
            self.counts["acknowledged"] += 1
            log.info("shift handover %s acknowledged by %s", printable(ack.handover_id), printable(ack.actor))
            self._reply(CommandResult(ack.request_id, True, f"handover {ack.handover_id} acknowledged by {ack.actor}"))
            newest = await asyncio.to_thread(self.store.handovers, 0.0, 1)
            if self.handovers is not None and newest and newest[0].handover_id == handover.handover_id:
                self.handovers.offer(handover)  # the retained handover says who has read it

    def _reply(self, result: CommandResult) -> None:
        if self.results is not None:
            self.results.offer(result)
