"""Conditions and timing: how long a condition has been abnormal or normal, in data time, and when silence counts.

One alarm per condition (``asset`` + ``Anomaly.condition``); what the engine follows between its anomalies is a
``Condition``. The rules, each a pure step on it (times passed in: the engine reads its clock once per step):

* a piece of evidence heard (``hear``) never moves the condition back in data time (the anomalies' ``ts``);
* a condition is *abnormal* while its level on its check's scale is >= 1 (``design.ratio``: score / threshold,
  or how far past the limit crossed); once its alarm is active it stays abnormal until the level falls below
  ``1 - deadband``, or no anomaly arrives for ``silence_s`` of the clock (``silent``; the detect station emits an
  Anomaly for every evaluation while a condition is abnormal, so silence means normal);
* a fault alarm of an asset is also kept abnormal by the line detector's departures attributed to another asset,
  while its own signals' share of the score is still past the threshold (a pump fault that empties the filler's
  tank still is a pump fault): the engine hands such evidence to ``abnormal`` too;
* on-delay: raised only after being abnormal continuously for its kind's on-delay (``abnormal_for``); off-delay:
  returns only after being normal continuously for its off-delay (``normal``) - for a consequence folded under an
  active root at least the root's, for a chattering alarm what it earned (``hold_s``, ``states.realarm``);
* lost data is a state, not a value (``StaleData``): an anomaly names the signals whose data is lost; while a
  signal is stale every alarm on it keeps its state - it never returns on silence - and counts its silence again
  from when data flows (``hold``);
* taken out of (or returned to) service, what it heard before counts for nothing (``reset``);
* the line detector's continuous departure (``Episode``): its fault alarms are one situation.

Silence, and everything an operator sees, is on the engine's clock; how long a condition has been abnormal or
normal is in data time, so a replay faster than real time behaves as live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from factory_copilot.alarms import design


@dataclass(slots=True)
class Condition:
    """What the engine follows between anomalies of one condition (kept in memory only)."""

    asset: str
    condition: str
    kind: str
    position: str
    alarm_id: str | None = None
    # data time (the anomalies' ts)
    pending_since: float | None = None  # start of the current continuous abnormal stretch
    last_abnormal: float | None = None
    normal_since: float | None = None  # first below-deadband level after the last abnormal one
    last_ts: float | None = None  # newest evidence; a late anomaly never moves the condition back in time
    trend: design.LevelSlope = field(default_factory=lambda: design.LevelSlope(0.0))  # level of recent abnormal evidence
    level: float | None = None
    # the engine's clock
    heard_at: float | None = None  # any evidence last arrived
    returned_at: float | None = None
    # the engine's, from the parts' answers (naming, priorities and situations keep their own, by alarm id)
    mode_suppressed: bool = False  # designed suppression in the line's mode (states.mode_suppression)
    signals: frozenset[str] = frozenset()  # the signal keys it is judged on (for lost data)
    hold_s: float = 0.0  # the off-delay a chattering alarm has earned (states.realarm; 0: its kind's)


def hear(cond: Condition, ts: float, now: float) -> float:
    """Evidence of data time ``ts`` arrived at ``now``; returns the condition's data time (never back in time)."""
    t = ts if cond.last_ts is None else max(ts, cond.last_ts)
    cond.last_ts, cond.heard_at = t, now
    return t


def abnormal(cond: Condition, t: float, level: float | None, silence_s: float) -> None:
    """One more piece of abnormal evidence at data time ``t`` (a gap longer than ``silence_s`` breaks the stretch)."""
    broken = (
        cond.pending_since is None
        or cond.normal_since is not None
        or (cond.last_abnormal is not None and t - cond.last_abnormal > silence_s)
    )
    if broken:
        cond.pending_since = t
    cond.last_abnormal, cond.normal_since = t, None
    if level is not None and math.isfinite(level):  # a share or value that is not a number judges nothing
        cond.level = level
        cond.trend.add(t, level)


def abnormal_for(cond: Condition, t: float) -> float:
    """How long (data time) the condition has been abnormal without a break, as of ``t``: what the on-delay reads."""
    return t - cond.pending_since


def normal(cond: Condition, t: float) -> float:
    """One piece of normal evidence at data time ``t``; returns how long it has been normal: what the off-delay reads."""
    cond.pending_since = None
    if cond.normal_since is None:
        cond.normal_since = t
    return t - cond.normal_since


def silent(cond: Condition, now: float, silence_s: float, off_delay_s: float) -> bool:
    """No evidence at all for silence + off-delay on the clock: the condition has returned."""
    if cond.heard_at is None:
        cond.heard_at = now  # no evidence either way yet: start the silence period now
        return False
    return now - cond.heard_at >= silence_s + off_delay_s


def quiet(cond: Condition, now: float, data_now: float, silence_s: float) -> bool:
    """Quiet on the clock and in the data (the newest evidence of any condition is ``data_now``): evaluations that
    lag the clock (a replay many times faster than real time, a busy machine) must not break one episode up."""
    return (cond.heard_at is not None and now - cond.heard_at > silence_s
            and data_now - (cond.last_ts or -math.inf) > silence_s)


def hold(cond: Condition, now: float) -> None:
    """Its data is lost: no data is not normal data, so its silence counts again from ``now``."""
    cond.heard_at, cond.normal_since = now, None


def returned(cond: Condition, now: float) -> None:
    """Its alarm returned at ``now``: the next abnormal stretch starts afresh."""
    cond.returned_at = now
    cond.pending_since = cond.last_abnormal = cond.normal_since = None
    cond.trend.clear()


def reset(cond: Condition) -> None:
    """Taken out of (or returned to) service: what it heard before counts for nothing."""
    cond.pending_since = cond.last_abnormal = cond.normal_since = cond.heard_at = None
    cond.trend.clear()


class StaleData:
    """The signals whose data is lost (a lost source, a silent signal), each until a time on the engine's clock."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}  # signal key -> until when its data counts as lost

    def mark(self, keys, until: float) -> None:
        for key in keys:
            self._until[key] = until

    def frozen(self, signals: frozenset[str], now: float) -> bool:
        """Whether any of ``signals`` has lost its data at ``now``."""
        if not self._until:
            return False
        for key in [k for k, until in self._until.items() if until <= now]:
            del self._until[key]
        return any(k in self._until for k in signals)


class Episode:
    """The line detector's current continuous departure (data time): its fault alarms are one situation."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.last: float | None = None

    def follow(self, t: float, gap_s: float) -> None:
        """The detector departed at data time ``t``; a pause longer than ``gap_s`` starts another departure."""
        if self.last is None or t - self.last > gap_s:
            self.start = t
        self.last = t if self.last is None else max(t, self.last)

    def holds(self, *conds: Condition | None) -> bool:
        """Whether every one of ``conds`` has evidence in the current departure."""
        return self.start is not None and all(
            c is not None and c.last_ts is not None and c.last_ts >= self.start for c in conds)
