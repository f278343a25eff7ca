"""Situations in time: which standing alarm is the root of a new one, which roots a new root takes in, and when
a consequence rings on its own again.

One alarm per abnormal situation. ``grouping.py`` says whether one alarm explains another; this module adds the
engine's window on its clock and the rules:

* an alarm that an active (or lately returned, within ``window_s``) root alarm explains is raised as its
  consequence: ``parent_id`` set, suppressed (recorded, not annunciated) (``cause_for``, ``may_explain``);
* a new root that explains earlier roots of the grouping window takes them as consequences, event ``grouped``
  (``adoptable``);
* a consequence still active ``release_after_s`` after its root returned (or at once when the root is taken out
  of service) is annunciated on its own, event ``ungrouped`` (``orphaned``); so is a folded fault alarm the
  classifier names otherwise for ``distinct_after_s`` of data time (``distinct``);
* a PLC's own alarm (``plc.py``) is the root of the copilot's alarms of its situation (``grouping.plc_explains``):
  those standing when it rings are folded under it (``under_plc``), those raised while it stands are raised
  folded; the PLC's alarm is never folded under the copilot's;
* a consequence folded under an active root returns only once it was normal for its root's off-delay (at least):
  a fault's consequences come and go as the fault grows, and that is one situation (the engine's off-delay).

It changes no alarm: the engine folds, releases and emits. The alarms and their conditions are passed in.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Mapping

from factory_copilot.alarms import grouping
from factory_copilot.alarms.timing import Condition, Episode
from factory_copilot.catalogue import Fault
from factory_copilot.config import LineConfig
from factory_copilot.records import Alarm

CondOf = Callable[[Alarm], "Condition | None"]


def same_episode(episode: Episode, a: Alarm, b: Alarm, cond_of: CondOf) -> bool:
    """Both are fault alarms with evidence in the line detector's current continuous departure."""
    return grouping.is_fault_alarm(a) and grouping.is_fault_alarm(b) and episode.holds(cond_of(a), cond_of(b))


class Situations:
    """The grouping rules of one line, with the engine's windows (``on``: off, every alarm rings on its own)."""

    def __init__(self, line: LineConfig, faults: Mapping[str, Fault], on: bool, window_s: float,
                 release_after_s: float, distinct_after_s: float):
        self.line, self.faults, self.on = line, faults, on
        self.window_s, self.release_after_s, self.distinct_after_s = window_s, release_after_s, distinct_after_s
        self._distinct_since: dict[str, float] = {}  # alarm id -> data time since it is named unlike its root

    def cause_for(self, alarm: Alarm, alarms: Iterable[Alarm], cond_of: CondOf,
                  same: Callable[[Alarm, Alarm], bool], now: float) -> Alarm | None:
        """The root alarm that explains ``alarm`` now, if any: a PLC's alarm of its situation first (the plant's own
        name for it, on the HMI already), else the copilot's root that grouping.rank picks among several."""
        if not self.on or grouping.is_plc_alarm(alarm):
            return None
        alarms = list(alarms)
        plcs = [c for c in alarms if self.plc_stands(c, now) and grouping.plc_explains(self.line, c, alarm)]
        if plcs:
            return min(plcs, key=lambda c: (c.asset != alarm.asset, c.raised_at))
        causes = [c for c in alarms if self.may_explain(c, cond_of, now)
                  and grouping.explains(self.line, self.faults, c, alarm, same(c, alarm))]
        return min(causes, key=lambda c: grouping.rank(self.line, c, alarm), default=None)

    def may_explain(self, cause: Alarm, cond_of: CondOf, now: float) -> bool:
        """A root in service, not suppressed by mode, active or returned within the grouping window."""
        if cause.parent_id is not None or cause.out_of_service or cause.anomaly is None:
            return False
        cond = cond_of(cause)
        if cond is None or cond.mode_suppressed:
            return False
        if cause.state.active:
            return True
        return cond.returned_at is not None and now - cond.returned_at <= self.window_s

    def plc_stands(self, alarm: Alarm, now: float) -> bool:
        """A PLC's alarm in service that is active, or returned within the grouping window."""
        if not grouping.is_plc_alarm(alarm) or alarm.out_of_service or alarm.parent_id is not None:
            return False
        return alarm.state.active or now - alarm.updated_at <= self.window_s

    def under_plc(self, plc: Alarm, alarms: Iterable[Alarm]) -> Iterator[Alarm]:
        """The copilot's standing roots of the PLC's alarm's situation, to fold under it (lazily: each is folded
        before the next is judged)."""
        if not self.on:
            return
        for other in alarms:
            if (other is plc or other.parent_id is not None or not other.state.active or other.out_of_service
                    or not grouping.plc_explains(self.line, plc, other)):
                continue
            yield other

    def adoptable(self, root: Alarm, alarms: Iterable[Alarm], same: Callable[[Alarm, Alarm], bool]) -> Iterator[Alarm]:
        """The earlier standing roots of ``root``'s window that it explains and that do not explain it (lazily)."""
        if not self.on:
            return
        for other in alarms:
            if (other is root or other.parent_id is not None or not other.state.active or other.out_of_service
                    or other.raised_at < root.raised_at - self.window_s):
                continue
            together = same(root, other)
            if not grouping.explains(self.line, self.faults, root, other, together):
                continue
            if grouping.explains(self.line, self.faults, other, root, together):
                continue
            yield other

    def orphaned(self, alarm: Alarm, root: Alarm | None, root_cond: Condition | None, now: float) -> str | None:
        """Why a consequence rings on its own now (None: it stays folded): its root is not watched, or returned
        ``release_after_s`` ago while the consequence is still active."""
        if root is None or root.out_of_service:
            return f"its cause {alarm.parent_id} is not watched"
        if root.state.active:
            return None
        returned = root_cond.returned_at if root_cond and root_cond.returned_at is not None else root.updated_at
        if now - returned >= self.release_after_s:
            return f"still active {now - returned:.0f} s after its cause {root.alarm_id} returned"
        return None

    def distinct(self, alarm: Alarm, root: Alarm | None, own: str | None, t: float) -> str | None:
        """A folded fault alarm that the classifier keeps naming as a fault of its own asset (``own``), unlike its
        root's, is a situation of its own: why, once the name held for ``distinct_after_s`` (data time ``t``)."""
        if root is not None and grouping.is_plc_alarm(root):
            return None  # the PLC names the situation, the classifier its cause: no contradiction to let go on
        theirs = grouping.fault_name(self.line, self.faults, root.anomaly) if root else None
        if own is None:
            return None  # an evaluation naming nothing neither makes nor breaks the case
        if own == theirs:
            self._distinct_since.pop(alarm.alarm_id, None)
            return None
        since = self._distinct_since.get(alarm.alarm_id)
        if since is None:
            self._distinct_since[alarm.alarm_id] = t
        elif t - since >= self.distinct_after_s:
            del self._distinct_since[alarm.alarm_id]
            return (f"the classifier names {own} for {alarm.asset} for {self.distinct_after_s:g} s, "
                    f"not {theirs or 'unknown'}")
        return None
