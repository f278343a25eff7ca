"""The alarm station: runs the alarm engine between the detect station's anomalies and the alarm consumers.

Consumes ``Buffer[Anomaly]`` and ``Buffer[OperatorCommand]``, ticks the engine a
few times a second (delays, shelve expiry, flood end) and offers every
``AlarmEvent`` to ``Buffer[AlarmEvent]`` and every command's ``CommandResult`` to
``Buffer[CommandResult]`` (the publish station answers the operator with it).
At start it offers the alarms the engine holds (``HeldAlarms``) to ``Buffer[HeldAlarms]``,
before any event, so the publish station can clear retained ghosts of an earlier run;
in-process callers ``await station.execute(cmd)`` instead. All engine calls happen
on the event loop thread, one at a time. A PLC's own alarms (``PlcCondition``, from the OPC UA collector)
come in on ``Buffer[PlcCondition]`` and become the line's alarms as the PLC states them; an operator's
acknowledgement of one goes back to the PLC as a ``PlcAcknowledge`` on ``plc_acks``. An operator's verdict on an
alarm (``OperatorFeedback``, from their own command level) is authorised and audited by the engine like a command,
and given on as the ``Feedback`` the store writes, with its ``CommandResult``.
"""

from __future__ import annotations

import asyncio
import logging

from factory_copilot.alarms.engine import PLC_PREFIX, AlarmEngine
from factory_copilot.plumbing.buffer import Buffer
from factory_copilot.records import (AlarmEvent, Anomaly, CommandKind, CommandResult, Feedback, HeldAlarms,
                                    OperatorCommand, OperatorFeedback, PlcAcknowledge, PlcCondition)
from factory_copilot.plumbing.tasks import run_until

log = logging.getLogger(__name__)


class AlarmStation:
    """The alarm engine as a station: anomalies, commands and the PLC's conditions in; alarm events out."""

    # the records it takes off the line's bus and gives onto it (plumbing/bus.py)
    takes = (Anomaly, OperatorCommand, OperatorFeedback, PlcCondition)
    gives = (AlarmEvent, CommandResult, HeldAlarms, PlcAcknowledge, Feedback)

    def __init__(
        self,
        engine: AlarmEngine,
        anomalies: Buffer[Anomaly],
        events: Buffer[AlarmEvent],
        commands: Buffer[OperatorCommand] | None = None,
        results: Buffer[CommandResult] | None = None,
        tick_s: float | None = 0.25,
        held: Buffer[HeldAlarms] | None = None,
        plc: Buffer[PlcCondition] | None = None,
        plc_acks: Buffer[PlcAcknowledge] | None = None,
        feedback_in: Buffer[OperatorFeedback] | None = None,
        feedback_out: Buffer[Feedback] | None = None,
    ):
        self.engine = engine
        self.anomalies = anomalies
        self.events = events
        self.commands = commands
        self.results = results
        self.tick_s = tick_s
        self.held = held
        self.plc = plc
        self.plc_acks = plc_acks
        self.feedback_in, self.feedback_out = feedback_in, feedback_out
        self.counts = {"plc_conditions": 0, "anomalies": 0, "commands": 0, "rejected": 0, "events": 0, "errors": 0,
                       "feedback": 0, "feedback_refused": 0}
        self.ticked = asyncio.Event()  # set after every tick; lets a caller wait for time-driven events

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (or the task is cancelled)."""
        if self.held is not None:  # before any event of this run, so nothing raised now is taken for a ghost
            self.held.offer(HeldAlarms({a.alarm_id: a.asset for a in self.engine.active()}))
        jobs = [self._anomaly_loop()]
        if self.tick_s is not None:  # None: whoever drives the time calls tick() (a replay, once per step of data)
            jobs.append(self._tick_loop())
        if self.commands is not None:
            jobs.append(self._command_loop())
        if self.plc is not None:
            jobs.append(self._plc_loop())
        if self.feedback_in is not None:
            jobs.append(self._feedback_loop())
        tasks = [asyncio.create_task(job) for job in jobs]
        await run_until(stop, tasks)

    async def execute(self, cmd: OperatorCommand) -> CommandResult:
        """Execute one operator command now and return its result (the events go out as usual)."""
        self.counts["commands"] += 1
        try:
            result, events = self.engine.command(cmd)
        except Exception as exc:  # a broken command must not stop the alarms
            log.exception("command %s on %r failed", cmd.command, cmd.alarm_id)
            self.counts["errors"] += 1
            return CommandResult(cmd.request_id, False, f"{cmd.command} of {cmd.alarm_id!r} failed: {exc}")
        if not result.ok:
            self.counts["rejected"] += 1
        elif cmd.command == CommandKind.ACKNOWLEDGE and self.plc_acks is not None and result.alarm is not None:
            self._tell_plc(cmd, result.alarm.alarm_id, result.alarm.condition)
        self._offer(events)
        return result

    def _tell_plc(self, cmd: OperatorCommand, alarm_id: str, condition: str) -> None:
        """A PLC's alarm acknowledged here is acknowledged on the PLC too, naming the user."""
        event_id = self.engine.plc_event_id(alarm_id)
        if not condition.startswith(PLC_PREFIX) or not event_id or self.plc_acks is None:
            return
        comment = f"acknowledged by {cmd.actor} on factory-copilot" + (f": {cmd.comment}" if cmd.comment else "")
        self.plc_acks.offer(PlcAcknowledge(condition[len(PLC_PREFIX):], event_id, cmd.actor, comment))

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    async def _anomaly_loop(self) -> None:
        while True:
            anomaly = await self.anomalies.get()
            self.counts["anomalies"] += 1
            try:
                self._offer(self.engine.ingest(anomaly))
            except Exception:
                self.counts["errors"] += 1
                log.exception("anomaly for %s %s could not be processed", getattr(anomaly, "asset", "?"),
                              getattr(anomaly, "kind", "?"))

    async def _plc_loop(self) -> None:
        assert self.plc is not None
        while True:
            plc = await self.plc.get()
            self.counts["plc_conditions"] += 1
            try:
                self._offer(self.engine.follow_plc(plc))
            except Exception:  # one malformed PLC event must not stop the alarms
                self.counts["errors"] += 1
                log.exception("PLC condition %s could not be processed", plc.condition_id)

    async def _command_loop(self) -> None:
        assert self.commands is not None
        while True:
            cmd = await self.commands.get()
            result = await self.execute(cmd)
            if self.results is not None:
                self.results.offer(result)

    async def give_feedback(self, fb: OperatorFeedback) -> CommandResult:
        """Authorise, audit and pass on one operator's verdict now; the ``Feedback`` goes to the store's lane."""
        try:
            result, feedback = self.engine.feedback(fb)
        except Exception as exc:  # a broken verdict must not stop the alarms
            log.exception("feedback on %r failed", fb.alarm_id)
            self.counts["errors"] += 1
            return CommandResult(fb.request_id, False, f"feedback on {fb.alarm_id!r} failed: {exc}")
        if feedback is None:
            self.counts["feedback_refused"] += 1
        else:
            self.counts["feedback"] += 1
            if self.feedback_out is not None:
                self.feedback_out.offer(feedback)
        return result

    async def _feedback_loop(self) -> None:
        assert self.feedback_in is not None
        while True:
            result = await self.give_feedback(await self.feedback_in.get())
            if self.results is not None:
                self.results.offer(result)

    def tick(self) -> None:
        """Let the engine's time pass now: delays, shelve expiry, flood end; the events go out as usual."""
        try:
            self._offer(self.engine.tick())
        except Exception:
            self.counts["errors"] += 1
            log.exception("alarm engine tick failed")
        self.ticked.set()
        self.ticked.clear()

    async def _tick_loop(self) -> None:
        assert self.tick_s is not None
        while True:
            self.tick()
            await asyncio.sleep(self.tick_s)

    def _offer(self, events: list[AlarmEvent]) -> None:
        for ev in events:
            self.events.offer(ev)
        self.counts["events"] += len(events)
