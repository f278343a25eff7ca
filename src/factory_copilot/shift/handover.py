"""Writes the handover of one shift from what was recorded: deterministic, every sentence citing its rows.

What alarmed and what it was (the copilot's diagnosis, the operators' verdict), what operators did and who
(the alarm journal's audit trail), what still stands at the end, shelved or out of service and until when,
incidents opened (faults operators confirmed), the shift's EEMUA 191 figures (``alarms.kpi``, computed as
``evaluate`` computes them), and what to watch: signals whose last hour drifts toward a limit they would
reach in the next shift (two 10-minute means an hour apart). Each sentence carries ``refs``: ``alarm:<id>``, ``audit:<seq>`` (a row of the alarm
journal, as ``factory-copilot alarms audit`` lists it) or ``trend:<asset.signal>``.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from factory_copilot.alarms.journal import UNCHANGED, Journal
from factory_copilot.alarms.kpi import TARGET_FLOOD_SHARE, TARGET_PEAK_10MIN, TARGET_PER_HOUR, alarm_kpis
from factory_copilot.config import LineConfig
from factory_copilot.names import UNKNOWN
from factory_copilot.plumbing.logs import printable
from factory_copilot.records import Alarm, AlarmEvent, AlarmState, Handover
from factory_copilot.shift.calendar import ShiftWindow, shift_at, zone
from factory_copilot.store.store import Store

SCHEMA = "handover/1"
SECTIONS = ("alarms", "actions", "standing", "incidents", "figures", "watch")
WATCH_MAX = 10
STATE_WORDS = {
    AlarmState.ACTIVE_UNACK: "active, not acknowledged",
    AlarmState.ACTIVE_ACK: "active, acknowledged",
    AlarmState.RTN_UNACK: "back to normal, not acknowledged",
    AlarmState.NORMAL: "normal",
}
ACTION_WORDS = {"acknowledged": "acknowledged", "shelved": "shelved", "unshelved": "unshelved",
                "out_of_service": "took out of service", "return_to_service": "returned to service",
                "returned_to_service": "returned to service", "refused": "was refused on"}
VERDICT_WORDS = {"confirmed": "confirmed by", "false_alarm": "marked a false alarm by",
                 "other_cause": "given another cause by"}
SYSTEM_ACTORS = (None, "", "system")


@dataclass(slots=True)
class _Writer:
    line: LineConfig
    window: ShiftWindow
    zone: dt.tzinfo
    sentences: list[dict[str, Any]]
    until: float  # the end of the shift, or now for a shift still running

    def say(self, section: str, text: str, refs: list[str]) -> None:
        self.sentences.append({"section": section, "text": text, "refs": list(dict.fromkeys(refs))})

    def when(self, ts: float) -> str:
        """Local time; with the date when it is not the shift's own day."""
        local = dt.datetime.fromtimestamp(ts, self.zone)
        return local.strftime("%H:%M") if local.date().isoformat() == self.window.date else local.strftime("%Y-%m-%d %H:%M")

    def asset(self, asset_id: str) -> str:
        try:
            return self.line.asset(asset_id).name
        except KeyError:
            return asset_id


def write_handover(line: LineConfig, window: ShiftWindow, store: Store, journal: Journal,
                   now: float | None = None) -> Handover:
    """The handover of ``window`` from the store and the journal as they are now (same rows, same handover)."""
    now = time.time() if now is None else now
    tz = zone(line.timezone)
    until = min(window.end, now)
    w = _Writer(line, window, tz, [], until)
    period = journal.period(window.start, until, light="kpi")  # the figures' rows: only what they read
    inside = journal.entries(since=window.start, until=until, light=True)
    at_end = journal.standing_at(until, light=True)

    alarms = _alarms(w, inside, at_end, store)
    actions = _actions(w, inside)
    standing = _standing(w, at_end, journal)
    incidents = _incidents(w, store)
    kpis = alarm_kpis([e for _, e in period if e.event not in UNCHANGED], window.start, until)
    _figures(w, kpis)
    watch = _watch(w, store)
    body = {
        "schema": SCHEMA,
        "site": line.site,
        "line": line.line,
        "handover_id": window.handover_id,
        "shift": window.name,
        "date": window.date,
        "start": window.start,
        "end": window.end,
        "timezone": line.timezone,
        "written_at": now,
        "complete": now >= window.end,  # a report of a shift still running says so
        "alarms": alarms,
        "actions": actions,
        "standing": standing,
        "incidents": incidents,
        "figures": {**kpis.to_dict(), "top": [list(t) for t in kpis.top]},
        "watch": watch,
        "sentences": w.sentences,
        "summary": None,
    }
    return Handover(window.handover_id, window.name, window.date, window.start, window.end, now, body)


def _what(w: _Writer, alarm: Alarm) -> str:
    """The alarm as its message says it, led by the asset's name (which the message usually starts with)."""
    name = w.asset(alarm.asset)
    text = printable(alarm.message or alarm.condition, 300)
    return text if text.startswith(name) else f"{name}: {text}"


def _alarms(w: _Writer, inside: list[tuple[int, AlarmEvent]], at_end: dict[str, tuple[int, AlarmEvent]],
            store: Store) -> list[dict[str, Any]]:
    """Every alarm raised (or raised again) in the shift, with what it was and how it ended."""
    first: dict[str, tuple[int, AlarmEvent]] = {}
    again: dict[str, int] = {}
    cleared: dict[str, tuple[int, AlarmEvent]] = {}
    for seq, e in inside:
        if e.event in ("raised", "realarm"):
            if e.alarm_id in first:
                again[e.alarm_id] = again.get(e.alarm_id, 0) + 1
            else:
                first[e.alarm_id] = (seq, e)
        elif e.alarm_id in first and e.state is AlarmState.NORMAL and e.alarm_id not in cleared:
            cleared[e.alarm_id] = (seq, e)
    last = {e.alarm_id: (seq, e) for seq, e in inside}  # raised in the shift: its newest row is how it ended
    out = []
    for alarm_id, (seq, e) in sorted(first.items(), key=lambda kv: kv[1][1].ts):
        alarm = e.alarm
        refs = [f"alarm:{alarm_id}", f"audit:{seq}"]
        parts = [f"{w.when(e.ts)} {alarm.priority.name} {_what(w, alarm)}"]
        if alarm.parent_id:
            parts.append(f"folded under {printable(alarm.parent_id)} as its consequence")
        if again.get(alarm_id):
            parts.append(f"raised again {again[alarm_id]} time(s)")
        diagnosis = store.diagnosis(alarm_id)
        what = None
        if diagnosis is not None and diagnosis.causes:
            top = diagnosis.causes[0]
            # "source" (model or runbook) is the handover/1 field name, kept for its subscribers and stored handovers
            what = {"fault_type": top.fault_type, "title": top.title, "confidence": top.confidence,
                    "source": diagnosis.origin}
            known = top.fault_type not in (None, "", UNKNOWN) and top.confidence > 0
            parts.append(f"diagnosis ({diagnosis.origin}): {printable(top.title, 120)}"
                         + (f" ({top.confidence:.0%})" if known else ""))
        verdicts = store.feedback(alarm_id)
        verdict = None
        if verdicts:
            v = verdicts[-1]
            verdict = {"verdict": v.verdict, "actor": v.actor, "ts": v.ts, "cause": v.actual_cause}
            cause = f" ({printable(v.actual_cause, 120)})" if v.verdict == "other_cause" and v.actual_cause else ""
            parts.append(f"{VERDICT_WORDS.get(v.verdict, v.verdict)} {printable(v.actor or 'someone', 64)} at "
                         f"{w.when(v.ts)}{cause}")
        end_state = at_end.get(alarm_id) or last.get(alarm_id)
        if alarm_id in cleared:
            cseq, ce = cleared[alarm_id]
            parts.append(f"back to normal at {w.when(ce.ts)}")
            refs.append(f"audit:{cseq}")
        elif end_state is not None:
            parts.append(f"at the end of the shift: {STATE_WORDS[end_state[1].alarm.state]}")
            refs.append(f"audit:{end_state[0]}")
        w.say("alarms", "; ".join(parts) + ".", refs)
        out.append({"alarm_id": alarm_id, "asset": alarm.asset, "priority": alarm.priority.name.lower(),
                    "message": alarm.message, "raised_at": e.ts, "parent_id": alarm.parent_id,
                    "raised_again": again.get(alarm_id, 0),
                    "cleared_at": cleared[alarm_id][1].ts if alarm_id in cleared else None,
                    "diagnosis": what, "verdict": verdict, "refs": refs})
    return out


def _actions(w: _Writer, inside: list[tuple[int, AlarmEvent]]) -> list[dict[str, Any]]:
    """What people did to alarms in the shift, from the audit trail: who, what, when (refusals too)."""
    out = []
    said: dict[tuple, list] = {}  # the same person doing the same to the same alarm again: one sentence
    for seq, e in inside:
        if e.actor in SYSTEM_ACTORS or e.event == "feedback":  # verdicts: said from the store, with the alarm
            continue
        out.append({"seq": seq, "ts": e.ts, "actor": e.actor, "event": e.event, "alarm_id": e.alarm_id,
                    "comment": e.comment, "shelved_until": e.alarm.shelved_until if e.event == "shelved" else None})
        key = (e.actor, e.event, e.alarm_id) if e.event == "acknowledged" and not e.comment else (seq,)
        said.setdefault(key, []).append((seq, e))
    for rows in said.values():
        seq, e = rows[0]
        what = ACTION_WORDS.get(e.event, e.event.replace("_", " "))
        text = f"{w.when(e.ts)} {printable(e.actor, 64)} {what} {printable(e.alarm_id)}"
        if len(rows) > 1:
            text += f" {len(rows)} times, the last at {w.when(rows[-1][1].ts)} (it rang again)"
        if e.event == "shelved" and e.alarm.shelved_until:
            text += f" until {w.when(e.alarm.shelved_until)}"
        if e.comment:
            text += f" ({printable(e.comment, 300)})"
        w.say("actions", text + ".", [*(f"audit:{s}" for s, _ in rows), f"alarm:{e.alarm_id}"])
    return out


def _standing(w: _Writer, at_end: dict[str, tuple[int, AlarmEvent]], journal: Journal) -> list[dict[str, Any]]:
    """Alarms not normal at the end, and every shelved or out-of-service one, with until when."""
    end = w.until
    out = []
    rows = sorted(at_end.items(), key=lambda kv: (int(kv[1][1].alarm.priority), kv[1][1].alarm.raised_at))
    for alarm_id, (seq, e) in rows:
        a = e.alarm
        shelved = a.shelved_until is not None and a.shelved_until > end
        if a.state is AlarmState.NORMAL and not shelved and not a.out_of_service:
            continue
        refs = [f"alarm:{alarm_id}", f"audit:{seq}"]
        text = f"{a.priority.name} {_what(w, a)} — {STATE_WORDS[a.state]}"
        if a.state is not AlarmState.NORMAL:
            text += f" since {w.when(a.raised_at)}"
        if a.state is AlarmState.ACTIVE_ACK and a.acked_by:
            text += f" (acknowledged by {printable(a.acked_by, 64)})"
        if a.parent_id:
            text += f"; folded under {printable(a.parent_id)}"
        item = {"alarm_id": alarm_id, "asset": a.asset, "priority": a.priority.name.lower(), "state": a.state.value,
                "message": a.message, "raised_at": a.raised_at, "shelved_until": a.shelved_until if shelved else None,
                "shelved_by": a.shelved_by if shelved else None, "out_of_service": a.out_of_service,
                "out_of_service_since": None, "out_of_service_by": None, "until": None, "refs": refs}
        if shelved:
            text += (f"; shelved by {printable(a.shelved_by or 'someone', 64)} until {w.when(a.shelved_until)} "
                     "(it rings again then if still active)")
            item["until"] = a.shelved_until
        if a.out_of_service:
            taken = next(((s, x) for s, x in reversed(journal.entries(alarm_id, until=end, limit=200, light=True))
                          if x.event == "out_of_service"), None)
            since = f" since {w.when(taken[1].ts)} by {printable(taken[1].actor or 'someone', 64)}" if taken else ""
            text += f"; out of service{since}: not watched until someone returns it to service"
            if taken:
                refs.append(f"audit:{taken[0]}")
                item.update(out_of_service_since=taken[1].ts, out_of_service_by=taken[1].actor)
        w.say("standing", text + ".", refs)
        out.append(item)
    if not out:
        w.say("standing", "Nothing stands: no alarm active, unacknowledged, shelved or out of service at the end "
              "of the shift.", [])
    return out


def _incidents(w: _Writer, store: Store) -> list[dict[str, Any]]:
    """Faults operators confirmed during the shift (the incidents the copilot learns from)."""
    out = []
    for fb in store.feedback(since=w.window.start):
        if fb.ts > w.until or fb.verdict not in ("confirmed", "other_cause"):
            continue
        alarm = store.alarm(fb.alarm_id)
        where = f" on {w.asset(alarm.asset)}" if alarm else ""
        cause = printable(fb.actual_cause or "the diagnosed fault", 120)
        text = f"{w.when(fb.ts)} {printable(fb.actor or 'someone', 64)} confirmed {cause}{where} ({printable(fb.alarm_id)})"
        if fb.fix:
            text += f"; fix: {printable(fb.fix, 300)}"
        w.say("incidents", text + ".", [f"alarm:{fb.alarm_id}"])
        out.append({"alarm_id": fb.alarm_id, "verdict": fb.verdict, "cause": fb.actual_cause, "fix": fb.fix,
                    "actor": fb.actor, "ts": fb.ts})
    return out


def _figures(w: _Writer, k) -> None:
    rates = (k.per_hour <= TARGET_PER_HOUR and k.peak_10min <= TARGET_PEAK_10MIN
             and k.flood_share <= TARGET_FLOOD_SHARE)
    text = (f"{k.alarms} alarm(s) rung in {k.hours:.1f} h: {k.per_hour:.1f} per hour (EEMUA 191: at most "
            f"{TARGET_PER_HOUR:g}), at most {k.peak_10min} in any 10 minutes (at most {TARGET_PEAK_10MIN}), "
            f"{k.flood_share:.1%} of the time in flood (under {TARGET_FLOOD_SHARE:.0%}): "
            f"{'within' if rates else 'above'} EEMUA 191's rate targets")
    w.say("figures", text + ".", [f"alarm:{a}" for a, _ in k.top])
    text = (f"{len(k.standing)} alarm(s) standing and rung at the end (EEMUA 191 wants none once a fault is "
            f"cleared), {len(k.stale)} standing for over 24 h, {len(k.chattering)} chattering, {k.folded} "
            f"consequence(s) folded under their cause: {'manageable' if k.manageable else 'not manageable'} by "
            "EEMUA 191's measure")
    w.say("figures", text + ".", [f"alarm:{a}" for a in k.standing + k.chattering])


def _watch(w: _Writer, store: Store) -> list[dict[str, Any]]:
    """Signals whose last stretch of the shift drifts toward a limit they would reach during the next shift."""
    end, start = w.until, w.window.start
    span = min(3600.0, (end - start) / 4)  # the rate: between two means this far apart ...
    width = min(600.0, span / 3)  # ... each over this long (what is read stays small at any bucket width)
    keys = w.line.signal_keys()
    before = store.signal_means(keys, end - span - width, end - span)
    last = store.signal_means(keys, end - width, end)
    horizon_h = (shift_at(w.line, w.window.end).end - end) / 3600.0  # to the end of the next shift
    found = []
    for key in keys:
        if key not in before or key not in last:
            continue
        signal = w.line.signal(key)
        low, high = signal.limits or signal.normal
        kind = "limit" if signal.limits else "normal band"
        m0, m1 = before[key][0], last[key][0]
        rate_h = (m1 - m0) / span * 3600.0
        if abs(m1 - m0) < 0.02 * max(high - low, 1e-9) or not low < m1 < high:
            continue  # steady, or already beyond (then it is alarmed, not to be watched)
        side, target = ("high", high) if rate_h > 0 else ("low", low)
        hours = (target - m1) / rate_h - width / 2 / 3600.0  # a mean stands for the middle of its stretch
        if hours > horizon_h:
            continue
        found.append((hours, key, signal, m1, rate_h, side, target, kind))
    out = []
    for hours, key, signal, m1, rate_h, side, target, kind in sorted(found, key=lambda f: f[0])[:WATCH_MAX]:
        unit = signal.unit
        text = (f"{key} averaged {m1:.4g} {unit} over the last {width / 60:.0f} min, "
                f"{'rising' if rate_h > 0 else 'falling'} {abs(rate_h):.3g} {unit}/h over the last "
                f"{(span + width) / 60:.0f} min: at this rate it reaches its "
                f"{side} {kind} {target:g} {unit} in about {max(hours, 0):.1f} h, in the next shift")
        w.say("watch", text + ".", [f"trend:{key}"])
        out.append({"signal": key, "unit": unit, "mean": m1, "rate_per_h": rate_h, "side": side, "limit": target,
                    "limit_kind": kind, "hours_to_limit": hours})
    if not out:
        w.say("watch", "No signal drifts toward a limit it would reach in the next shift.", [])
    return out
