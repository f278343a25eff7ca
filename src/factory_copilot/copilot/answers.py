"""Ask-the-copilot without a model: answers from the alarm's own asset, evidence and runbooks only (runbook search).

Three kinds of question get a real answer:
- a value ("what is the current suction pressure?"): the value with its normal band and trend;
- a comparison ("why cavitation rather than a clogged filter?"): the two candidates' evidence side by side;
- what to check or do: the steps of the alarm's own runbook, or the passage of its asset's runbooks that fits.
Anything else gets a plain list of what can be answered. Every answer starts with "Runbook search (no model)",
so nobody mistakes it for the model's words.
"""

from __future__ import annotations

import re

from factory_copilot.catalogue import Fault
from factory_copilot.copilot.evidence import Candidate, agreement, match, rank_faults
from factory_copilot.copilot.evidence import EvidencePack, SignalEvidence
from factory_copilot.copilot.runbooks import RunbookLibrary

LABEL = "Runbook search (no model): "
_COMPARE = re.compile(r"\b(rather than|instead of|and not|not|vs\.?|versus|over)\b")
_TODO = re.compile(r"\b(check|do|fix|repair|action|steps?|first|how|procedure|safe|safety)\b")
_TODO_ONLY = re.compile(r"\b(check|do|fix|repair|action|steps?|procedure|safe|safety)\b")
_VALUE_ONLY = re.compile(r"\b(current|currently|value|reading|how (high|low|much|hot|fast)|now|level)\b")


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9.]+", " ", text.lower().replace("_", " ")) + " "


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def mentioned_signals(pack: EvidencePack, question: str) -> list[SignalEvidence]:
    """Signals the question names (by key, or by name in words), the alarm's own asset first."""
    q = _words(question)
    signals = dict(pack.context)
    signals.update({s.key: s for s in pack.signals if s.key not in signals})
    hits: list[tuple[int, SignalEvidence]] = []
    for key, s in signals.items():
        asset, _, name = key.partition(".")
        if _words(key).strip() in q or f" {_words(name).strip()} " in q:
            # a name shared by several assets ("pressure") counts for the alarm's asset, or the asset named
            named_asset = f" {_words(asset).strip()} " in q
            hits.append((0 if asset == pack.asset else 1 if named_asset else 2, s))
    if not hits:
        return _partly_named(pack, signals, q)
    best = min(rank for rank, _ in hits)
    return [s for rank, s in sorted(hits, key=lambda h: (h[0], -len(h[1].key))) if rank == best or rank < 2][:3]


_COMMON = set(" what which where when current currently value reading level about there their this that with from "
               "have does doing going right still".split())


def _partly_named(pack: EvidencePack, signals: dict[str, SignalEvidence], q: str) -> list[SignalEvidence]:
    """The alarm's own signals a word of the question names part of ("the pressure": suction and discharge)."""
    words = {w for w in q.split() if len(w) >= 4 and w not in _COMMON}
    found = [s for key, s in sorted(signals.items())
             if key.startswith(pack.asset + ".") and words & set(_words(key.partition(".")[2]).split())]
    return found[:3]


def value_answer(s: SignalEvidence) -> str:
    lo, hi = s.normal
    where = {"high": "above", "low": "below", "in band": "inside", "flat": "flat-lined, inside" if lo <= (s.value or 0) <= hi else "flat-lined, outside"}[s.direction]
    text = f"{s.key} is {_num(s.value)} {s.unit} now, {where} its normal band {_num(lo)}-{_num(hi)} {s.unit}"
    if s.trend and s.trend.n >= 2:
        minutes = s.trend.window_s / 60.0
        if s.trend.flat:
            text += f"; it has not changed over the last {minutes:.0f} min"
        else:
            # "per minute" in words: a unit that is already a rate ("L/min") must not read "L/min/min"
            way = "rising" if s.trend.slope_per_min > 0 else "falling"
            text += (f"; {way} by {abs(s.trend.slope_per_min):.3g} {s.unit} per minute over the last {minutes:.0f} min "
                     f"(range {_num(s.trend.minimum)}-{_num(s.trend.maximum)} {s.unit})")
    return text + "."


def mentioned_faults(question: str, faults: dict[str, Fault]) -> list[str]:
    """Catalogue faults the question names (by id or by the words of their name), in the order named."""
    q = _words(question)
    found: list[tuple[int, str]] = []
    for fid, f in faults.items():
        names = [_words(fid).strip(), _words(f.name).strip()]
        # "cavitation" alone names pump_cavitation: the distinctive last word of the id or name will do
        names += [n.split()[-1] for n in names if len(n.split()[-1]) > 4]
        pos = [q.find(f" {n} ") for n in names if f" {n} " in q]
        if pos:
            found.append((min(pos), fid))
    return [fid for _, fid in sorted(found)]


_EXPECT = {"up": "high", "down": "low", "any": "out of its band or swinging", "flat": "flat-lined"}


def _state(s: SignalEvidence | None) -> str:
    if s is None or s.value is None:
        return "no value"
    text = f"{_num(s.value)} {s.unit} {s.direction}".replace("  ", " ")
    if abs(s.change) >= 1.0:
        text += ", rising" if s.change > 0 else ", falling"
    return text


def compare_answer(pack: EvidencePack, a: str, b: str, library: RunbookLibrary, faults: dict[str, Fault]) -> str:
    ranked = {c.fault: c for c in rank_faults(pack, library)}
    signals = pack.context or {s.key: s for s in pack.signals}

    def account(fid: str) -> tuple[float, str]:
        c: Candidate | None = ranked.get(fid)
        if c is None:
            return 0.0, f"{faults[fid].name}: no runbook signature to compare"
        sig = max(c.runbook.signatures, key=lambda sg: sum(match(d, signals.get(k)) for k, d in sg.items()))
        shows = [k for k, d in sig.items() if match(d, signals.get(k)) > 0 and agreement(d, signals.get(k)) > 0]
        lacks = [k for k in sig if k not in shows]
        text = f"{faults[fid].name} (fit {c.score:.2f})"
        if shows:
            text += ": expects " + ", ".join(f"{k} {_EXPECT[sig[k]]} and it is {_state(signals[k])}" for k in shows)
        if lacks:
            text += ("; but " if shows else ": ") + "expects " + ", ".join(
                f"{k} {_EXPECT[sig[k]]}, which it is not ({_state(signals.get(k))})" for k in lacks)
        return c.score, text

    (sa, ta), (sb, tb) = account(a), account(b)
    lead = f"{faults[a].name} fits the evidence better" if sa > sb else (
        f"{faults[b].name} actually fits the evidence better" if sb > sa else "Both fit the evidence equally")
    return f"{lead}. {ta}. {tb}."


def runbook_answer(pack: EvidencePack, question: str, library: RunbookLibrary, faults: dict[str, Fault]) -> str:
    """The answer to an operator's question without a model; see the module docstring."""
    q = question.lower()
    signals = mentioned_signals(pack, question)
    named = mentioned_faults(question, faults)
    if ("why" in q or _COMPARE.search(q)) and named:
        current = pack.candidates[0][0] if pack.candidates else pack.fault_type
        if len(named) >= 2:
            a, b = named[0], named[1]
        elif current and current != named[0]:
            a, b = (current, named[0]) if "not" in q or "rather" in q or "instead" in q else (named[0], current)
        else:
            a, b = named[0], next((f for f, _ in pack.candidates if f != named[0]), None) or ""
        if b and a in faults and b in faults:
            return LABEL + compare_answer(pack, a, b, library, faults)
    # a named signal gets its value unless the question asks what to do ("how is the flow?" is a value question,
    # "what should I check on the suction pressure?" is not)
    if signals and (_VALUE_ONLY.search(q) or not _TODO_ONLY.search(q)):
        return LABEL + " ".join(value_answer(s) for s in signals)
    if _TODO.search(q):
        lead = pack.candidates[0][0] if pack.candidates else pack.fault_type
        book = library.for_fault(lead) if lead else None
        if book is None or book.asset != pack.asset:
            hits = library.search(question + " " + pack.asset, k=3, asset=pack.asset)
            if hits:
                p = hits[0][0]
                return LABEL + f"From {p.id} ({p.title}): " + " ".join((p.items[:3] or [p.text[:300]]))
        if book is not None:
            anchor = "safety" if "safe" in q else "actions" if re.search(r"\b(fix|repair|do|action)\b", q) else "checks"
            p = book.passage(anchor) or book.passage("checks")
            if p is not None:
                items = " ".join(f"{i}. {t}" for i, t in enumerate(p.items[:4], 1)) or p.text[:300]
                return LABEL + f"From {p.id} ({book.title}): {items}"
    examples = [s.key for s in pack.signals[:2]]
    cands = [faults[f].name for f, _ in pack.candidates[:2] if f in faults]
    what = [f"the current value of a signal with its band and trend (e.g. \"what is {examples[0]} now?\")" if examples
            else "the current value of a signal with its band and trend"]
    if len(cands) == 2:
        what.append(f"why one cause rather than another (e.g. \"why {cands[0].lower()} rather than {cands[1].lower()}?\")")
    else:
        what.append("why one known fault rather than another")
    what.append("what to check or do first, from this asset's runbooks")
    return LABEL + f"without the model I can answer about {pack.asset_name} only: " + "; ".join(what) + "."
