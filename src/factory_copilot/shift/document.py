"""The handover as a document: its sections in order, each sentence with the rows it cites; Markdown out.

The PDF (``pdf.py``) lays out the same sections and sentences, so both say the same thing.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from factory_copilot.records import Handover
from factory_copilot.shift.calendar import zone as tz_of

TITLES = {
    "summary": "Summary (written by the model; every sentence cites its rows)",
    "alarms": "What alarmed, and what it was",
    "actions": "What operators did",
    "standing": "Still standing, shelved or out of service at the end",
    "incidents": "Incidents opened",
    "figures": "Alarm figures of the shift (EEMUA 191)",
    "watch": "What to watch",
}
NONE_SAID = {"alarms": "No alarm was raised in this shift.", "actions": "Nobody acted on an alarm in this shift.",
             "incidents": "No fault was confirmed in this shift."}


def local(ts: float, zone: str, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return dt.datetime.fromtimestamp(ts, tz_of(zone)).strftime(fmt)


def title(h: Handover) -> str:
    b = h.body
    return f"Shift handover: {b['site']} / {b['line']}, {h.shift} shift of {h.date}"


def subtitle(h: Handover) -> str:
    b = h.body
    zone = b["timezone"]
    state = "complete" if b.get("complete", True) else "shift still running: so far"
    return (f"{local(h.start, zone)} – {local(h.end, zone, '%H:%M')} ({zone}); written {local(h.written_at, zone)}; "
            f"{state}")


def cite(refs: list[str]) -> str:
    """``alarm:x`` and ``audit:12`` as a reader finds them: ``alarm x · audit #12``."""
    words = []
    for ref in refs:
        kind, _, key = ref.partition(":")
        words.append(f"audit #{key}" if kind == "audit" else f"{kind} {key}")
    return " · ".join(words)


def sections(h: Handover) -> list[tuple[str, list[dict[str, Any]]]]:
    """(heading, sentences) in reading order; the model's summary first when there is one."""
    by: dict[str, list[dict[str, Any]]] = {}
    for s in h.body.get("sentences", []):
        by.setdefault(s["section"], []).append(s)
    out = []
    summary = h.body.get("summary") or {}
    if summary.get("sentences"):
        out.append((TITLES["summary"], summary["sentences"]))
    for key in ("alarms", "actions", "standing", "incidents", "figures", "watch"):
        found = by.get(key) or ([{"text": NONE_SAID[key], "refs": []}] if key in NONE_SAID else [])
        out.append((TITLES[key], found))
    return out


def acknowledgements(h: Handover) -> list[str]:
    zone = h.body["timezone"]
    return [f"{a['actor']} at {local(a['ts'], zone)}" + (f": {a['comment']}" if a.get("comment") else "")
            for a in h.acknowledged]


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def _md(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def markdown(h: Handover) -> str:
    lines = [f"# {_md(title(h))}", "", f"_{_md(subtitle(h))}_", ""]
    for heading, found in sections(h):
        lines += [f"## {heading}", ""]
        for s in found:
            ref = f" _\\[{_md(cite(s['refs']))}\\]_" if s.get("refs") else ""
            lines.append(f"- {_md(s['text'])}{ref}")
        lines.append("")
    lines += ["## Acknowledged by the incoming shift", ""]
    acks = acknowledgements(h)
    lines += [f"- {_md(a)}" for a in acks] if acks else ["- Not acknowledged yet."]
    return "\n".join(lines) + "\n"
