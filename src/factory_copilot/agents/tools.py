"""What each of the line's MCP tools returns, read from the store and the alarm journal beside the running service.

Every answer is bounded (at most ``LIMITS`` of anything) and says when it was cut and how to ask for the rest;
a question that cannot be answered raises ``ToolError`` saying what was wrong (an unknown alarm, signal,
asset or shift names what there is). Text from outside is quoted as data (``quoting.py``). Times are ISO 8601
in UTC, with the line's local time beside them where people read them (shifts).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from factory_copilot.agents.quoting import escape, quoted
from factory_copilot.alarms.journal import UNCHANGED, Journal
from factory_copilot.alarms.kpi import TARGET_FLOOD_SHARE, TARGET_PEAK_10MIN, TARGET_PER_HOUR, alarm_kpis
from factory_copilot.config import LineConfig, ServicePaths
from factory_copilot.copilot.runbooks import runbooks_of
from factory_copilot.records import Alarm, AlarmEvent
from factory_copilot.shift.calendar import NoShifts, named_or_last, shift_at
from factory_copilot.shift.document import markdown
from factory_copilot.shift.handover import write_handover
from factory_copilot.store.store import Store, open_store
from factory_copilot.errors import FactoryCopilotError

LIMITS = {
    "alarms": 200,  # per list
    "hours": 720.0,  # alarm lists and figures look back at most 30 days
    "trend_hours": 168.0,  # one trend request covers at most 7 days ...
    "trend_points": 500,  # ... in at most this many points
    "audit_rows": 100,  # the newest rows of one alarm's audit trail
    "contributions": 8,
    "runbook_passages": 10,
    "passage_chars": 1500,
    "incidents": 10,
}


class ToolError(FactoryCopilotError, ValueError):
    """A tool call that cannot be answered; the message says what was wrong and what would be right."""


def iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def parse_time(text: str | None, name: str, default: float) -> float:
    if text is None or text == "":
        return default
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ToolError(f"{name} {text!r} is not an ISO 8601 time (e.g. 2026-12-03T06:00:00Z)") from None
    if when.tzinfo is None:
        raise ToolError(f"{name} {text!r} has no time zone: add Z for UTC or an offset like +01:00")
    return when.timestamp()


class LineRecords:
    """The line's records as agents read them: one read-only connection each to the store and the journal."""

    def __init__(self, line: LineConfig, paths: ServicePaths, clock: Callable[[], float] = time.time,
                 health_timeout_s: float = 1.0):
        self.line = line
        self.paths = paths
        self.clock = clock
        self.health_timeout_s = health_timeout_s
        self.runbooks = runbooks_of(line)
        self._store: Store | None = None
        self._journal: Journal | None = None
        self._lock = threading.Lock()  # the journal's connection is used by one thread at a time
        self._figures_rows: dict = {}  # audit rows never change: the health tool's figures parse each once

    # ---- the files, opened when first needed (the service may start after the MCP server) -------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            try:
                self._store = open_store(self.line, self.paths, read_only=True)
            except (FileNotFoundError, RuntimeError, ConnectionError) as exc:
                raise ToolError(f"the line's store cannot be read: {exc}") from None
        return self._store

    def _journal_do(self, read: Callable[[Journal], Any]) -> Any:
        with self._lock:
            if self._journal is None:
                try:
                    self._journal = Journal(self.paths.alarms, read_only=True)
                except (FileNotFoundError, RuntimeError) as exc:
                    raise ToolError(f"the line's alarm journal cannot be read: {exc}") from None
            return read(self._journal)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._journal is not None:
            self._journal.close()

    # ---- helpers -----------------------------------------------------------------------------------------------

    def _asset(self, asset: str | None) -> str | None:
        if asset is None or asset == "":
            return None
        ids = [a.id for a in self.line.assets]
        if asset not in ids:
            raise ToolError(f"no asset {asset!r} on this line; its assets are {', '.join(ids)}")
        return asset

    def _asset_name(self, asset: str) -> str:
        try:
            return self.line.asset(asset).name
        except KeyError:
            return asset

    @staticmethod
    def _cut(asked: float, most: float, what: str, cuts: list[str]) -> float:
        if asked > most:
            cuts.append(f"{what}: asked for {asked:g}, served at most {most:g}")
            return most
        return asked

    def brief(self, a: Alarm) -> dict[str, Any]:
        """One alarm as a list shows it: state, priority, what it says (quoted), who did what to it."""
        return {
            "alarm_id": a.alarm_id,
            "asset": a.asset,
            "asset_name": self._asset_name(a.asset),
            "condition": a.condition,
            "state": a.state.value,
            "priority": a.priority.name.lower(),
            "severity": a.severity,
            "message": quoted(a.message, f"alarm {a.alarm_id}", 500),
            "raised_at": iso(a.raised_at),
            "updated_at": iso(a.updated_at),
            "acknowledged_by": a.acked_by,
            "shelved_until": iso(a.shelved_until),
            "shelved_by": a.shelved_by,
            "out_of_service": a.out_of_service,
            "folded_under": a.parent_id,
            "realarms": a.realarm_count,
        }

    # ---- the tools -------------------------------------------------------------------------------------------

    def list_alarms(self, which: str = "active", hours: float = 24.0, asset: str | None = None,
                    limit: int = 50) -> dict[str, Any]:
        now = self.clock()
        asset = self._asset(asset)
        cuts: list[str] = []
        limit = int(self._cut(limit, LIMITS["alarms"], "limit", cuts))
        if which == "active":
            found = self.store.standing_alarms(now, asset)
            window = None
        elif which == "recent":
            hours = self._cut(hours, LIMITS["hours"], "hours", cuts)
            found = self.store.recent_alarms(now - hours * 3600, asset, limit + 1)
            window = {"from": iso(now - hours * 3600), "to": iso(now)}
        else:
            raise ToolError(f"which {which!r}: use 'active' (standing now) or 'recent' (changed within hours)")
        more = len(found) > limit
        if more:
            cuts.append(f"more than {limit} alarms: the first {limit} are listed"
                        + (" (most urgent first)" if which == "active" else " (latest change first)")
                        + "; narrow by asset or ask with a larger limit (at most 200)")
        return {"line": f"{self.line.site}/{self.line.line}", "which": which, "window": window,
                "count": min(len(found), limit), "alarms": [self.brief(a) for a in found[:limit]],
                "cut": cuts or None}

    def get_alarm(self, alarm_id: str) -> dict[str, Any]:
        alarm = self.store.alarm(alarm_id)
        if alarm is None:
            raise ToolError(f"no alarm with id {alarm_id!r} in the store; list_alarms gives the ids")
        out = self.brief(alarm)
        out["evidence"] = self._evidence(alarm)
        out["diagnosis"] = self._diagnosis(alarm_id)
        out["consequences"] = [self.brief(c) for c in self.store.consequences(alarm_id)]
        rows = self._journal_do(lambda j: j.entries(alarm_id, limit=LIMITS["audit_rows"] + 1, light=True))
        cut = len(rows) > LIMITS["audit_rows"]
        out["audit_trail"] = [self._audit_row(seq, e) for seq, e in rows[-LIMITS["audit_rows"]:]]
        out["audit_trail_cut"] = (f"only the newest {LIMITS['audit_rows']} rows; `factory-copilot alarms audit "
                                  f"--alarm {alarm_id}` lists them all") if cut else None
        out["verdicts"] = [{"verdict": f.verdict, "actor": f.actor, "at": iso(f.ts),
                            "cause": quoted(f.actual_cause, "operator feedback", 300),
                            "fix": quoted(f.fix, "operator feedback", 500)} for f in self.store.feedback(alarm_id)]
        return out

    def _audit_row(self, seq: int, e: AlarmEvent) -> dict[str, Any]:
        return {"seq": seq, "at": iso(e.ts), "event": e.event, "state": e.state.value,
                "actor": escape(e.actor) if e.actor else None,
                "comment": quoted(e.comment, f"audit #{seq}", 500)}

    def _evidence(self, alarm: Alarm) -> dict[str, Any] | None:
        a = alarm.anomaly
        if a is None:
            return None
        shares = sorted(a.contributions.items(), key=lambda kv: -kv[1])
        contributions = []
        for key, share in shares[:LIMITS["contributions"]]:
            entry: dict[str, Any] = {"signal": key, "share": round(share, 4)}
            try:
                s = self.line.signal(key)
                entry.update(unit=s.unit, normal=list(s.normal), limits=list(s.limits) if s.limits else None)
            except KeyError:
                pass
            contributions.append(entry)
        return {"found_by": a.kind, "at": iso(a.ts), "signal": a.signal, "value": a.value, "score": a.score,
                "threshold": a.threshold, "mode": str(a.mode), "fault_type": a.fault_type,
                "fault_probability": a.fault_probability, "contributions": contributions,
                "contributions_cut": len(shares) > LIMITS["contributions"] or None,
                "signals_without_data": list(a.stale), "detail": quoted(a.message, "detector", 500)}

    def _diagnosis(self, alarm_id: str) -> dict[str, Any] | None:
        d = self.store.diagnosis(alarm_id)
        if d is None:
            return None
        src = f"diagnosis of {alarm_id} ({d.origin})"
        return {  # "source" (model or runbook): the tool's field name, kept for agents and docs/agents.md
            "source": d.origin, "model": d.model, "at": iso(d.created_at),
            "summary": quoted(d.summary, src, 1000),
            "causes": [{"fault_type": c.fault_type, "title": quoted(c.title, src, 200), "confidence": c.confidence,
                        "evidence": [{"kind": e.kind, "ref": e.ref, "value": e.value} for e in c.evidence]}
                       for c in d.causes],
            "steps": [{"kind": s.kind, "text": quoted(s.text, s.runbook_id or src, 500), "runbook": s.runbook_id}
                      for s in d.steps],
            "safety": [quoted(t, src, 500) for t in d.safety],
        }

    def signal_trend(self, signal: str, hours: float = 1.0, until: str | None = None,
                     points: int = 120) -> dict[str, Any]:
        asset, _, name = signal.partition(".")
        try:
            meta = self.line.signal(signal)
        except KeyError:
            self._asset(asset)
            names = [s.name for s in self.line.asset(asset).signals]
            raise ToolError(f"no signal {signal!r}: signals are named asset.signal; {asset}'s are "
                            f"{', '.join(names)}") from None
        now = self.clock()
        end = min(parse_time(until, "until", now), now)
        cuts: list[str] = []
        if hours > LIMITS["trend_hours"]:
            cuts.append(f"asked for {hours:g} h; one request covers at most {LIMITS['trend_hours']:g} h: this is the "
                        f"{LIMITS['trend_hours']:g} h up to {iso(end)}; ask again with an earlier 'until' for "
                        "older data")
            hours = LIMITS["trend_hours"]
        points = int(self._cut(points, LIMITS["trend_points"], "points", cuts))
        since = end - hours * 3600
        rows = self.store.trend_points(asset, name, since, end, points)
        kept = self.store.retention.trend
        if kept is not None and since < now - kept:
            cuts.append(f"the store keeps trends for {kept / 86400:g} days: nothing before {iso(now - kept)}")
        return {
            "signal": signal, "unit": meta.unit, "normal": list(meta.normal),
            "limits": list(meta.limits) if meta.limits else None,
            "description": quoted(meta.description, f"line file: {signal}", 500) if meta.description else None,
            "from": iso(since), "to": iso(end), "points": len(rows),
            "span_s": (rows[1][0] - rows[0][0]) if len(rows) > 1 else None,
            "columns": ["start", "mean", "min", "max", "samples"],
            "trend": [[iso(ts), mean, lo, hi, n] for ts, mean, lo, hi, n in rows],
            "cut": cuts or None,
        }

    def search_runbooks(self, query: str, asset: str | None = None, k: int = 4) -> dict[str, Any]:
        asset = self._asset(asset)
        if not query.strip():
            raise ToolError("query is empty: say what to look for (a fault, a symptom, a part)")
        if not len(self.runbooks):
            raise ToolError("this line has no runbooks (the line file's knowledge.runbooks names none)")
        cuts: list[str] = []
        k = int(self._cut(k, LIMITS["runbook_passages"], "k", cuts))
        found = []
        for p, score in self.runbooks.search(query, k=k, asset=asset):
            rb = self.runbooks.get(p.runbook_id)
            found.append({"cite_as": p.id, "runbook": p.runbook_id, "title": quoted(rb.title if rb else "", p.runbook_id, 200),
                          "section": p.title, "asset": rb.asset if rb else None, "faults": rb.faults if rb else [],
                          "score": round(score, 4),
                          "text": quoted(p.text, f"runbook {p.id}", LIMITS["passage_chars"])})
        return {"query": escape(query), "passages": found, "cut": cuts or None,
                "note": None if found else "no passage matches; try the fault's or the part's name"}

    def similar_incidents(self, alarm_id: str | None = None, asset: str | None = None,
                          fault_type: str | None = None, limit: int = 3) -> dict[str, Any]:
        signals: list[str] = []
        if alarm_id:
            alarm = self.store.alarm(alarm_id)
            if alarm is None:
                raise ToolError(f"no alarm with id {alarm_id!r} in the store; list_alarms gives the ids")
            asset = alarm.asset
            a = alarm.anomaly
            fault_type = fault_type or (a.fault_type if a else None)
            if a is not None:
                signals = [k for k, _ in sorted(a.contributions.items(), key=lambda kv: -kv[1])][:5] or (
                    [f"{a.asset}.{a.signal}"] if a.signal else [])
        elif not asset:
            raise ToolError("give an alarm_id, or an asset (and a fault_type) to compare with")
        asset = self._asset(asset)
        cuts: list[str] = []
        limit = int(self._cut(limit, LIMITS["incidents"], "limit", cuts))
        found = self.store.similar(asset, fault_type, signals, limit)
        return {"asset": asset, "fault_type": fault_type, "signals": signals, "cut": cuts or None, "incidents": [
            {"alarm_id": i.alarm_id, "similarity": i.similarity, "verdict": i.verdict, "at": iso(i.ts),
             "fault_type": i.fault_type, "actor": i.actor, "cause": quoted(i.actual_cause, "operator feedback", 300),
             "fix": quoted(i.fix, "operator feedback", 500),
             "diagnosis": quoted(i.diagnosis_summary, f"diagnosis of {i.alarm_id}", 500)} for i in found]}

    def line_health(self, hours: float = 24.0) -> dict[str, Any]:
        now = self.clock()
        cuts: list[str] = []
        hours = self._cut(hours, LIMITS["hours"], "hours", cuts)
        start = now - hours * 3600
        if len(self._figures_rows) > 50_000:  # bounded: a few MB
            self._figures_rows.clear()
        period = self._journal_do(lambda j: j.period(start, now, light="kpi", cache=self._figures_rows))
        k = alarm_kpis([e for _, e in period if e.event not in UNCHANGED], start, now)
        ages = {asset: round(now - ts, 1) for asset, ts in self.store.newest_sample_by_asset().items()}
        return {
            "line": f"{self.line.site}/{self.line.line}",
            "service": self._service_health(),
            # None: no sample within the store's raw window (15 min by default)
            "data": {a.id: {"newest_sample_age_s": ages.get(a.id), "name": a.name} for a in self.line.assets},
            "alarm_figures": {
                "from": iso(start), "to": iso(now), "alarms_rung": k.alarms, "per_hour": round(k.per_hour, 3),
                "peak_10min": k.peak_10min, "flood_share": round(k.flood_share, 4), "standing": k.standing,
                "stale": k.stale, "chattering": k.chattering, "by_priority": k.by_priority, "folded": k.folded,
                "top": [{"alarm_id": a, "times": n} for a, n in k.top], "manageable": k.manageable,
                "targets": {"per_hour": TARGET_PER_HOUR, "peak_10min": TARGET_PEAK_10MIN,
                            "flood_share": TARGET_FLOOD_SHARE, "standing": 0},
            },
            "cut": cuts or None,
        }

    def _service_health(self) -> dict[str, Any]:
        port = self.line.service.health_port
        if port is None:
            return {"status": "unknown", "why": "the line file's service.health_port is null: no /health to ask"}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=self.health_timeout_s) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:  # 503: degraded, with its reasons
            try:
                body = json.loads(exc.read())
            except ValueError:
                return {"status": "unknown", "why": f"/health answered {exc.code} without JSON"}
        except (OSError, ValueError) as exc:
            return {"status": "unreachable", "why": f"http://127.0.0.1:{port}/health: {exc}"}
        return {"status": body.get("status"), "uptime_s": body.get("uptime_s"),
                "reasons": [quoted(r, "service health", 300) for r in body.get("reasons", [])[:20]],
                "active_alarms": (body.get("alarms") or {}).get("active")}

    def shift_report(self, shift: str | None = None, date: str | None = None) -> dict[str, Any]:
        now = self.clock()
        try:
            if shift is None and date is None and self.line.shifts:
                window = shift_at(self.line, now)  # the shift running now, so far
            else:
                window = named_or_last(self.line, shift, date, now)
        except NoShifts as exc:
            raise ToolError(str(exc)) from None
        except ValueError as exc:
            raise ToolError(str(exc)) from None
        if window.start > now:
            raise ToolError(f"shift {window.handover_id} has not begun yet")
        handover = self.store.handover(window.handover_id) if window.end <= now else None
        if handover is None:
            handover = self._journal_do(lambda j: write_handover(self.line, window, self.store, j, now=now))
        b = handover.body
        return {
            "handover_id": handover.handover_id, "shift": handover.shift, "date": handover.date,
            "from": iso(handover.start), "to": iso(handover.end), "timezone": b["timezone"],
            "complete": b.get("complete", True),
            "acknowledged_by": [{"actor": a["actor"], "at": iso(a["ts"])} for a in handover.acknowledged],
            "standing": [{"alarm_id": s["alarm_id"], "state": s["state"], "priority": s["priority"],
                          "shelved_until": iso(s.get("shelved_until")), "out_of_service": s["out_of_service"]}
                         for s in b["standing"]],
            "figures": {k: b["figures"][k] for k in ("alarms", "per_hour", "peak_10min", "flood_share", "standing",
                                                       "chattering", "manageable")},
            "report": quoted(markdown(handover), f"handover {handover.handover_id}", 20_000),
        }
