"""Diagnoses from an evidence pack: the deterministic one from the runbooks, and checking the model's against the pack.

``runbook_diagnosis`` ranks the catalogued faults by how well the pack's signals
match each runbook's signature (plus the classifier's vote) and quotes the top
runbook's checks, actions and safety notes: no model needed, always available.
``model_diagnosis`` parses the model's JSON leniently and keeps only citations
that exist in the pack; everything else is dropped and counted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from factory_copilot.catalogue import Fault, load_faults
from factory_copilot.copilot.evidence import DEVIATION_NORMAL, EvidencePack, SignalEvidence, deviation
from factory_copilot.copilot.runbooks import Runbook, RunbookLibrary
from factory_copilot.records import Cause, Diagnosis, Evidence, Step

CONFIDENCE = {"high": 0.8, "medium": 0.5, "low": 0.2}


def diagnosis_schema(
    faults: list[str] | None = None,
    signals: list[str] | None = None,
    refs: list[str] | None = None,
    text_chars: int = 160,
    max_causes: int = 3,
    max_steps: int = 5,
    max_refs: int = 4,
    max_notes: int = 2,
) -> dict:
    """The JSON schema the model's output is constrained to (by grammar) and then checked against the pack.

    ``faults``, ``signals`` and ``refs`` (the plant's fault ids, line signal keys and runbook
    passage ids) become enums, so the grammar lets the model name only things the plant has;
    whether they are in *this* alarm's pack is checked afterwards. They are fixed per plant, so
    the schema (which goes in the cached prompt prefix) does not change from alarm to alarm.
    The bounds keep a diagnosis short enough to read on a panel and bound the generation time
    (llama.cpp's grammar sampling slows down with long bounded strings, so keep them modest).
    """

    def text(n: int = text_chars, required: bool = False) -> dict:
        return {"type": "string", "maxLength": n, **({"minLength": 1} if required else {})}

    def one_of(values: list[str] | None, n: int) -> dict:
        return {"type": "string", "enum": sorted(values)} if values else text(n)

    return {
        "type": "object",
        "properties": {
            "summary": text(int(text_chars * 1.5), required=True),
            "causes": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_causes,
                "items": {
                    "type": "object",
                    "properties": {
                        "fault_type": one_of(faults, 32),
                        "title": text(min(80, text_chars), required=True),
                        # words, not digits: a small model's "0.87" is false precision, and the grammar stays short
                        "confidence": {"type": "string", "enum": list(CONFIDENCE)},
                        "signals": {"type": "array", "maxItems": max_refs, "items": one_of(signals, 48)},
                        "runbook": {"type": "array", "maxItems": 2, "items": one_of(refs, 24)},
                    },
                    "required": ["fault_type", "title", "confidence", "signals", "runbook"],
                },
            },
            "steps": {
                "type": "array",
                "maxItems": max_steps,
                "items": {
                    "type": "object",
                    "properties": {
                        "text": text(required=True),
                        "kind": {"type": "string", "enum": ["check", "action"]},
                        "runbook": one_of(refs, 24),
                    },
                    "required": ["text", "kind", "runbook"],
                },
            },
            "safety": {"type": "array", "maxItems": max_notes, "items": text()},
            "would_change": {"type": "array", "maxItems": max_notes, "items": text()},
        },
        "required": ["summary", "causes", "steps", "safety", "would_change"],
    }


DIAGNOSIS_SCHEMA = diagnosis_schema()


class InvalidModelOutput(ValueError):
    """The model's text is not a usable diagnosis (not JSON, wrong shape, or nothing left after validation)."""


# ---------------------------------------------------------------- deterministic ranking


def _match(direction: str, s: SignalEvidence | None) -> float:
    """How strongly one signal shows the expected direction, 0..1.

    Two views, the stronger counts: against the normal band (band edge ≈ 0.33, twice out ≈ 1;
    the extreme of the recent window at 70 %, so intermittent belt-slip episodes still show),
    and against the signal's own recent past (a move of 3 noise widths ≈ 0.25, 6 ≈ 1), which
    shows a fault that is still growing inside the band when the detector raises the alarm early.
    """
    if s is None or s.value is None:
        return 0.0
    if direction == "flat":
        return 1.0 if s.trend and s.trend.flat else 0.0
    d = s.deviation
    lo_d = hi_d = d
    if s.trend:
        lo_d, hi_d = deviation(s.trend.minimum, s.normal), deviation(s.trend.maximum, s.normal)
    band = {
        "up": max(d, 0.7 * hi_d),
        "down": max(-d, -0.7 * lo_d),
        "any": max(abs(d), 0.7 * max(abs(lo_d), abs(hi_d))),
    }[direction]
    z = s.change
    move = {"up": z, "down": -z, "any": abs(z)}[direction]
    return min(1.0, max(0.0, (band - 0.5) / 1.5, (move - 2.0) / 4.0))


def _agreement(direction: str, s: SignalEvidence | None) -> float:
    """Does the signal move the way the signature says? 1 yes, 0.5 no clear direction yet, 0 the other way."""
    if s is None:
        return 0.0
    if direction == "flat":
        return 1.0 if s.trend and s.trend.flat else 0.0
    if direction == "any":
        return 1.0
    if abs(s.change) >= 1.0:
        lean = s.change
    elif abs(s.deviation) >= DEVIATION_NORMAL:
        lean = s.deviation
    else:
        return 0.5  # an intermittent fault (belt slip) can look normal at the alarm instant
    return 1.0 if (lean > 0) == (direction == "up") else 0.0


_WORDS = {"up": "rose above its band", "down": "fell below its band", "any": "left its band", "flat": "flat-lined"}


@dataclass(slots=True)
class Candidate:
    fault: str
    runbook: Runbook
    score: float
    matched: list[str]  # signal keys that show the signature


def rank_faults(pack: EvidencePack, library: RunbookLibrary) -> list[Candidate]:
    """Every fault with a runbook signature, scored against the pack; best first.

    Score = how well the signals fit the signature (mean match over its signals)
          + the detector's share of the anomaly on signature signals moving the right way
          + the classifier's probability if it named this fault.
    """
    signals = pack.context or {s.key: s for s in pack.signals}
    out = []
    for rb in library.runbooks.values():
        best: tuple[float, dict[str, float]] = (-1.0, {})
        for sig in rb.signatures:
            matches = {k: _match(d, signals.get(k)) for k, d in sig.items()}
            shares = {k: signals[k].contribution * _agreement(d, signals[k]) for k, d in sig.items() if k in signals}
            fit = sum(matches.values()) / len(matches) + 0.5 * min(1.0, sum(shares.values()))
            if fit > best[0]:
                # a signal is evidence if it shows the signature or carries a real share of the anomaly the right way
                best = (fit, {k: max(m, shares.get(k, 0.0) if shares.get(k, 0.0) >= 0.05 else 0.0)
                              for k, m in matches.items()})
        fit, evidence = best
        if fit < 0:
            continue
        matched = [k for k, m in sorted(evidence.items(), key=lambda km: -km[1]) if m > 0]
        for fault in rb.faults:
            vote = pack.fault_probability if pack.fault_type == fault else 0.0
            score = fit + vote + (0.05 if rb.asset == pack.asset else 0.0)
            out.append(Candidate(fault, rb, score, matched))
    out.sort(key=lambda c: -c.score)
    return out


def _signal_evidence(s: SignalEvidence) -> Evidence:
    lo, hi = s.normal
    detail = f"{_fmt(s.value)} {s.unit}, {s.direction} (normal {_fmt(lo)}-{_fmt(hi)} {s.unit})"
    if s.trend and s.trend.n >= 2 and not s.trend.flat:
        detail += f", trend {s.trend.slope_per_min:+.3g} {s.unit}/min"
    return Evidence("signal", s.key, detail, s.value)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def runbook_diagnosis(pack: EvidencePack, library: RunbookLibrary, reason: str | None = None,
                      faults: dict[str, Fault] | None = None) -> Diagnosis:
    """The explanation built from the evidence pack and the runbooks alone (no model)."""
    faults = faults if faults is not None else load_faults()
    ranked = [c for c in rank_faults(pack, library) if c.score > 0.1][:3]
    total = sum(c.score for c in ranked) or 1.0
    causes = []
    for c in ranked:
        ev = [_signal_evidence(s) for k in c.matched if (s := pack.signal(k) or pack.context.get(k))]
        ev.append(Evidence("runbook", f"{c.runbook.id}#symptoms", c.runbook.title))
        name = faults[c.fault].name if c.fault in faults else c.runbook.title
        causes.append(Cause(c.fault, name, round(c.score / total, 3), ev, origin="runbook"))
    if not causes and pack.fault_type:
        causes.append(Cause(pack.fault_type, pack.fault_name or pack.fault_type, pack.fault_probability, [], "runbook"))

    top = ranked[0].runbook if ranked else library.for_fault(pack.fault_type)
    steps: list[Step] = []
    safety: list[str] = []
    if top:
        for anchor, kind, limit in (("checks", "check", 4), ("actions", "action", 5)):
            p = top.passage(anchor)
            steps += [Step(item, kind, p.id, "runbook") for item in (p.items[:limit] if p else [])]
        if (p := top.passage("safety")):
            safety = [f"{item} ({p.id})" for item in p.items]

    out_of_band = [s for s in pack.signals if s.direction != "in band"]
    if causes:
        lead = causes[0]
        facts = ", ".join(f"{s.key} {_fmt(s.value)} {s.unit} {s.direction}" for s in out_of_band[:3]) or "no signal outside its band yet"
        summary = f"{pack.asset_name}: most likely {lead.title.lower()} ({lead.confidence:.0%}); {facts}."
        if top:
            summary += f" Follow {top.id}."
    else:
        summary = f"{pack.asset_name}: {pack.message or pack.condition}; no runbook signature matches the evidence."

    would_change = []
    if len(ranked) > 1:
        alt = ranked[1]
        sig = alt.runbook.signatures[0]
        missing = [k for k in sig if k not in ranked[0].matched][:2]
        if missing:
            dirs = ", ".join(f"{k} {_WORDS[sig[k]]}" for k in missing)
            would_change.append(f"If {dirs}, {faults[alt.fault].name if alt.fault in faults else alt.fault} becomes more likely.")
    if out_of_band:
        s = out_of_band[0]
        would_change.append(
            f"If {s.key} returns to {_fmt(s.normal[0])}-{_fmt(s.normal[1])} {s.unit} without intervention, "
            "suspect a transient or a measurement problem instead."
        )
    return Diagnosis(
        alarm_id=pack.alarm_id, summary=summary, causes=causes, steps=steps, safety=safety,
        would_change=would_change, source="runbook", fallback_reason=reason,
    )


# ---------------------------------------------------------------- the model's diagnosis, checked

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def parse_json_leniently(text: str) -> dict:
    """The first JSON object in ``text``; raw control characters inside strings are tolerated."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise InvalidModelOutput("no JSON object in the model output")
    try:
        data = json.loads(text[start : end + 1], strict=False)
    except json.JSONDecodeError as exc:
        raise InvalidModelOutput(f"model output is not valid JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(data, dict):
        raise InvalidModelOutput("model output is not a JSON object")
    return data


def _clean(value: object, limit: int = 400) -> str:
    text = _CONTROL.sub("", str(value if value is not None else "")).strip()
    return text[:limit]


def model_diagnosis(text: str, pack: EvidencePack, library: RunbookLibrary, model: str | None = None,
                    faults: dict[str, Fault] | None = None) -> Diagnosis:
    """Turn the model's JSON into a Diagnosis, keeping only citations that exist in the pack (the rest counted)."""
    faults = faults if faults is not None else load_faults()
    data = parse_json_leniently(text)
    signal_keys, passage_ids, runbook_ids = pack.signal_keys(), pack.passage_ids(), pack.runbook_ids()
    dropped = 0

    def runbook_ref(ref: str) -> str | None:
        ref = _clean(ref, 60)
        return ref if ref in passage_ids or ref in runbook_ids else None

    causes = []
    for c in data.get("causes") or []:
        if not isinstance(c, dict):
            dropped += 1
            continue
        fault = _clean(c.get("fault_type"), 40)
        if fault not in faults:
            dropped += 1  # a fault the plant does not know is an invented citation
            continue
        evidence = []
        for key in c.get("signals") or []:
            key = _clean(key, 60)
            if key in signal_keys:
                evidence.append(_signal_evidence(pack.signal(key)))  # values from the pack, never from the model
            else:
                dropped += 1
        for ref in c.get("runbook") or []:
            if (ok := runbook_ref(ref)):
                evidence.append(Evidence("runbook", ok, ""))
            else:
                dropped += 1
        raw_conf = c.get("confidence", "low")
        try:
            confidence = CONFIDENCE.get(str(raw_conf).strip().lower()) or min(1.0, max(0.0, float(raw_conf)))
        except (TypeError, ValueError):
            confidence = CONFIDENCE["low"]
        causes.append(Cause(fault, _clean(c.get("title"), 120) or faults[fault].name, confidence, evidence, "model"))

    steps = []
    for s in data.get("steps") or []:
        if not isinstance(s, dict) or not _clean(s.get("text")):
            continue
        ref = s.get("runbook")
        rid = runbook_ref(ref) if ref else None
        if ref and _clean(ref) and rid is None:
            dropped += 1
        kind = "check" if s.get("kind") == "check" else "action"
        steps.append(Step(_clean(s.get("text"), 240), kind, rid, "model"))

    summary = _clean(data.get("summary"), 400)
    if not summary or not causes:
        raise InvalidModelOutput(
            f"model diagnosis unusable: {'no summary' if not summary else 'no cause left after validation'}"
            f" ({dropped} citations dropped)"
        )
    safety = [t for x in data.get("safety") or [] if (t := _clean(x, 240))]
    would_change = [t for x in data.get("would_change") or [] if (t := _clean(x, 240))]

    # the runbook's safety notes are never left to the model: they are always shown, marked with their passage
    reference = runbook_diagnosis(pack, library, faults=faults)
    if not steps:
        steps = reference.steps
    safety = reference.safety + [f"{t} (copilot)" for t in safety]
    return Diagnosis(
        alarm_id=pack.alarm_id, summary=summary, causes=causes, steps=steps, safety=safety,
        would_change=would_change or reference.would_change, source="model", model=model, dropped_citations=dropped,
    )
