"""Alarm system performance as EEMUA 191 (and ISA-18.2 section 16) measure it, from a list of alarm events.

Pure: give it events from wherever they are kept — ``engine.audit()``, the store's
``alarm_history()`` (any order), event payloads from MQTT (dicts) — and a period:

    kpis = alarm_kpis(engine.audit(since=t0), start=t0, end=t1)
    kpis.per_hour, kpis.peak_10min, kpis.flood_share, kpis.top, kpis.standing, kpis.chattering

What counts as an alarm is what an operator is *shown*: an event that leaves its
alarm active, unacknowledged and annunciated when it was not before (raised,
realarm, a consequence released, a shelve ended, a priority rise after an
acknowledgement). Consequences folded under their cause, shelved and suppressed
alarms are recorded but not counted: they are not presented. Measure one
operator position at a time (filter the events by asset first).

Targets (EEMUA 191 "manageable"): at most 6 alarms per hour on average, at most 10
in any 10 minutes, no standing alarms once a fault is cleared; below 1 % of the
time in flood; no chattering alarms. Chattering counts every alarm that came on (raised or re-alarmed) 3 times
within 60 s, or that the engine named chattering, rung or folded: a consequence blinking under its root is
a nuisance to fix in the alarm design even though nobody is shown it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from factory_copilot.records import Alarm, AlarmEvent, AlarmState

TARGET_PER_HOUR = 6.0
TARGET_PEAK_10MIN = 10
TARGET_FLOOD_SHARE = 0.01
WINDOW_S = 600.0
FLOOD_COUNT = 10  # a flood: more than this many alarms within WINDOW_S
STALE_AFTER_S = 24 * 3600.0
CHATTER_COUNT = 3  # chattering: this many presentations of one alarm ...
CHATTER_WINDOW_S = 60.0  # ... within this long


@dataclass
class AlarmKpis:
    start: float
    end: float
    hours: float
    alarms: int  # presented to the operator
    per_hour: float
    peak_10min: int  # most alarms within any 10 minutes
    flood_share: float  # share of the period with more than 10 alarms in the 10 minutes before
    top: list[tuple[str, int]] = field(default_factory=list)  # the 10 most frequent alarms, with their counts
    top_share: float = 0.0  # share of all alarms the top 10 make
    standing: list[str] = field(default_factory=list)  # active and annunciated at the end
    stale: list[str] = field(default_factory=list)  # standing, and active for more than 24 h
    chattering: list[str] = field(default_factory=list)  # came on 3 times or more within 60 s (rung or folded)
    by_priority: dict[str, int] = field(default_factory=dict)
    folded: int = 0  # consequences raised under their cause: recorded, not presented
    events: int = 0

    @property
    def manageable(self) -> bool:
        """EEMUA 191's targets: average and 10-minute peak rates, no standing alarms, hardly any flood."""
        return (self.per_hour <= TARGET_PER_HOUR and self.peak_10min <= TARGET_PEAK_10MIN and not self.standing
                and self.flood_share <= TARGET_FLOOD_SHARE)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "manageable": self.manageable}


def alarm_kpis(
    events: Iterable[AlarmEvent | Mapping[str, Any]],
    start: float | None = None,
    end: float | None = None,
    *,
    window_s: float = WINDOW_S,
    flood_count: int = FLOOD_COUNT,
    stale_after_s: float = STALE_AFTER_S,
    chatter_count: int = CHATTER_COUNT,
    chatter_window_s: float = CHATTER_WINDOW_S,
) -> AlarmKpis:
    """The KPIs of the events between ``start`` and ``end`` (default: the first and last event).

    Events before ``start`` are used only to know each alarm's state when the period begins.
    """
    evs = sorted((_event(e) for e in events), key=lambda e: e.ts)  # stable: same-time events keep their order
    if start is None:
        start = evs[0].ts if evs else 0.0
    if end is None:
        end = evs[-1].ts if evs else start
    end = max(end, start)
    shown: dict[str, bool] = {}  # alarm id -> active, unacknowledged and annunciated after its last event
    active_since: dict[str, float] = {}
    last: dict[str, Alarm] = {}
    presented: list[tuple[float, str]] = []
    priorities: Counter = Counter()
    came_on: dict[str, list[float]] = defaultdict(list)  # raised or re-alarmed, rung or not: what chatters
    named: set[str] = set()  # the engine said chattering
    folded = counted = 0
    for e in evs:
        if e.ts > end:
            break
        alarm = e.alarm
        ringing = e.state is AlarmState.ACTIVE_UNACK and _annunciated(alarm)
        before = shown.get(e.alarm_id)
        # without history, only an event that starts an alarm can be its presentation
        new = (not before) if before is not None else e.event in ("raised", "realarm")
        if e.ts >= start:
            counted += 1
            if ringing and new:
                presented.append((e.ts, e.alarm_id))
                priorities[alarm.priority.name.lower()] += 1
            elif e.event == "raised" and alarm.parent_id is not None:
                folded += 1
            if e.event in ("raised", "realarm"):
                came_on[e.alarm_id].append(e.ts)
            elif e.event == "chattering":
                named.add(e.alarm_id)
        shown[e.alarm_id] = ringing
        if e.state.active:
            active_since.setdefault(e.alarm_id, e.ts)
        else:
            active_since.pop(e.alarm_id, None)
        last[e.alarm_id] = alarm
    hours = (end - start) / 3600.0
    times = [t for t, _ in presented]
    counts = Counter(a for _, a in presented)
    top = counts.most_common(10)
    standing = sorted(a for a, alarm in last.items() if alarm.state.active and _annunciated(alarm))
    per_alarm: dict[str, list[float]] = defaultdict(list)
    for t, a in presented:
        per_alarm[a].append(t)
    return AlarmKpis(
        start=start,
        end=end,
        hours=hours,
        alarms=len(presented),
        per_hour=len(presented) / hours if hours > 0 else float(len(presented)),
        peak_10min=_peak(times, window_s),
        flood_share=_flood_time(times, window_s, flood_count, start, end) / (end - start) if end > start else 0.0,
        top=top,
        top_share=sum(n for _, n in top) / len(presented) if presented else 0.0,
        standing=standing,
        stale=[a for a in standing if end - active_since.get(a, end) > stale_after_s],
        chattering=sorted(named | {a for series in (per_alarm, came_on) for a, ts in series.items()
                                   if _peak(ts, chatter_window_s) >= chatter_count}),
        by_priority=dict(priorities),
        folded=folded,
        events=counted,
    )


def _annunciated(alarm: Alarm) -> bool:
    return alarm.shelved_until is None and not alarm.suppressed and not alarm.out_of_service


def _peak(times: list[float], window_s: float) -> int:
    """Most of the (sorted) times within any window of ``window_s`` (start included, end excluded)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _flood_time(times: list[float], window_s: float, count: int, start: float, end: float) -> float:
    """How long, within [start, end], more than ``count`` alarms were in the trailing window."""
    spans = []
    for k in range(count, len(times)):
        first = times[k - count]
        if times[k] - first < window_s:
            spans.append((max(times[k], start), min(first + window_s, end)))
    total, reach = 0.0, start
    for a, b in sorted(spans):
        a = max(a, reach)
        if b > a:
            total += b - a
            reach = b
    return total


def _event(e: AlarmEvent | Mapping[str, Any]) -> AlarmEvent:
    if isinstance(e, AlarmEvent):
        return e
    body = e.get("alarm") or {}
    return AlarmEvent(
        alarm_id=e["alarm_id"], ts=float(e["ts"]), event=e["event"], state=AlarmState(e["state"]),
        alarm=Alarm.from_dict(body), actor=e.get("actor"), comment=e.get("comment"),
    )
