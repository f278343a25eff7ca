"""Diagnoses from an evidence pack: the deterministic one from the runbooks, and the model's choices rendered.

``runbook_diagnosis`` ranks the line's catalogued faults by how well the pack's
signals match each runbook's signature (plus the classifier's vote; evidence against a
signature lowers it) and quotes the top runbook's checks, actions and safety notes: no
model needed, always available. Its confidences are shares among the candidates and
"none of them" (``UNKNOWN_WEIGHT``), so a lone fit is never certain; a lead with less than
``SUPPORT_MIN`` of support behind it gives way to "unknown" with the evidence ("No known fault fits
well ..."), and when nothing matches it says so ("No known fault matches; the evidence
points at ..."). An alarm about the data itself (lost, stale, bad quality, out of the
sensor's range) gets a data-source diagnosis (``DATA_SOURCE``): what to check on the
source, never a process fault fitted to what the lost data left behind.
``model_diagnosis`` reads the model's short JSON (summary, fault ids with confidence
words, step ids) and renders everything else from the plant's catalogue and runbooks;
ids that are not the plant's or not offered for this alarm are dropped and counted.
"""

from __future__ import annotations

import json
import re

from factory_copilot.alarms.design import DATA_KINDS
from factory_copilot.catalogue import Fault
from factory_copilot.copilot.evidence import MATCH_MIN, Candidate, EvidencePack, SignalEvidence, rank_faults
from factory_copilot.copilot.runbooks import Runbook, RunbookLibrary
from factory_copilot.names import UNKNOWN
from factory_copilot.records import Cause, Diagnosis, Evidence, Step
from factory_copilot.errors import FactoryCopilotError

CONFIDENCE = {"high": 0.8, "medium": 0.5, "low": 0.2}
# "none of the catalogued faults" weighs one full signature's worth against the candidates' scores
UNKNOWN_WEIGHT = 1.0
# a lead cause needs this much support (its score: more than half its signature shown, or a classifier's vote
# not contradicted), or "unknown" leads with the evidence; two faults that both fit split the confidence, and
# the better one still leads
SUPPORT_MIN = 0.6
DATA_SOURCE = "data_source"  # the cause of a data-quality alarm: the data, not the process
# the data, not the process, is wrong (a stuck sensor keeps its runbook: a flat line needs telling from a process at rest)
DATA_SOURCE_KINDS = DATA_KINDS - {"stuck"}


SUMMARY_CHARS = 120  # one short sentence: the operator reads it first, and every token of it is a forward pass


def diagnosis_schema(faults: list[str] | None = None, steps: list[str] | None = None, summary_chars: int = SUMMARY_CHARS,
                     max_causes: int = 2, max_steps: int = 3) -> dict:
    """The JSON schema of the model's answer: a short summary first (streamed to the operator), then choices.

    The model writes only what needs a model: one short sentence, which known fault (or
    ``unknown``) with a confidence word, and which of the retrieved runbook steps to do first.
    Faults are an enum over the plant's own catalogue; steps an enum over this alarm's offered
    steps (their numbers in the data block, a token each; ``Copilot`` sets them per alarm, the
    grammar is built per call and the prompt prefix does not depend on it). Titles, step texts,
    evidence and safety notes are rendered by the code from the runbooks, never written by the
    model. That keeps a diagnosis to about 50 generated tokens and leaves nothing to invent.
    """
    step_ids = list(dict.fromkeys(steps or []))
    # "fault:confidence" in one enum string: every token costs a forward pass, forced by the grammar or not
    choices = [f"{f}:{c}" for f in list(dict.fromkeys(faults or [])) + [UNKNOWN] for c in CONFIDENCE]
    return {
        "type": "object",
        "properties": {
            "summary": {"type": "string", "minLength": 1, "maxLength": summary_chars},
            "causes": {"type": "array", "minItems": 1, "maxItems": max_causes,
                       "items": {"type": "string", "enum": choices}},
            "steps": ({"type": "array", "maxItems": max_steps, "items": {"enum": step_ids}}
                      if step_ids else {"type": "array", "maxItems": 0}),
        },
        "required": ["summary", "causes", "steps"],
    }


DIAGNOSIS_SCHEMA = diagnosis_schema()  # the form only; the station builds one over its plant's ids


def with_steps(schema: dict, labels: list[str], max_steps: int = 3) -> dict:
    """A copy of a diagnosis ``schema`` whose steps are one alarm's offered ones: their numbers (``labels``), at most
    ``max_steps``; none offered, none allowed."""
    schema = json.loads(json.dumps(schema))
    steps = schema["properties"]["steps"]
    if labels:
        steps["items"] = {"enum": [int(x) for x in labels]}
        steps["maxItems"] = min(max_steps, len(labels))
    else:
        steps.pop("items", None)
        steps["maxItems"] = 0
    return schema


class InvalidModelOutput(FactoryCopilotError, ValueError):
    """The model's text is not a usable diagnosis (not JSON, wrong shape, or nothing left after validation)."""


_WORDS = {"up": "rose above its band", "down": "fell below its band", "any": "left its band", "flat": "flat-lined"}


def _signal_evidence(s: SignalEvidence) -> Evidence:
    lo, hi = s.normal
    detail = f"{_fmt(s.value)} {s.unit}, {s.direction} (normal {_fmt(lo)}-{_fmt(hi)} {s.unit})"
    if s.trend and s.trend.n >= 2 and not s.trend.flat:
        detail += f", trend {s.trend.slope_per_min:+.3g} {s.unit}/min"
    return Evidence("signal", s.key, detail, s.value)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _unknown_cause(pack: EvidencePack, confidence: float, origin: str) -> Cause:
    """'No known fault matches', with the signals that stand out as its evidence."""
    return Cause(UNKNOWN, "No known fault matches", confidence, [_signal_evidence(s) for s in _standouts(pack)[:4]],
                 origin=origin)


def _standouts(pack: EvidencePack) -> list[SignalEvidence]:
    """The pack's signals that stand out (out of band, flat, moving, or a share of the anomaly), most telling first."""
    out = [s for s in pack.signals if s.value is not None and
           (s.direction != "in band" or abs(s.change) >= 3.0 or s.contribution >= 0.1)]
    return sorted(out, key=lambda s: -(s.strength + abs(s.change) / 3.0 + s.contribution))


def _facts(signals: list[SignalEvidence]) -> str:
    parts = []
    for s in signals:
        text = f"{s.key} {_fmt(s.value)} {s.unit}".strip()
        if s.direction != "in band":
            text += f" {s.direction} (normal {_fmt(s.normal[0])}-{_fmt(s.normal[1])})"
        if s.trend and s.trend.n >= 2 and not s.trend.flat and abs(s.change) >= 1.0:
            text += f", {'rising' if s.change > 0 else 'falling'} {s.trend.slope_per_min:+.2g} {s.unit}/min"
        parts.append(text)
    return "; ".join(parts)


def runbook_diagnosis(pack: EvidencePack, library: RunbookLibrary, faults: dict[str, Fault],
                      reason: str | None = None) -> Diagnosis:
    """The explanation built from the evidence pack and the line's own runbooks and catalogue alone (no model).

    When no runbook signature fits (or the line has none), it says so plainly and names what the
    evidence points at: the cause is ``unknown``, with the signals that stand out as evidence.
    """
    if pack.anomaly_kind in DATA_SOURCE_KINDS:
        return data_source_diagnosis(pack, reason)
    ranked = [c for c in rank_faults(pack, library) if c.score > MATCH_MIN and c.fault in faults][:3]
    total = sum(c.score for c in ranked) + UNKNOWN_WEIGHT
    causes = []
    for c in ranked:
        ev = [_signal_evidence(s) for k in c.matched if (s := pack.signal(k) or pack.context.get(k))]
        ev.append(Evidence("runbook", f"{c.runbook.id}#symptoms", c.runbook.title))
        causes.append(Cause(c.fault, faults[c.fault].name, round(c.score / total, 3), ev, origin="runbook"))
    if not causes and pack.fault_type in faults:  # the classifier named a known fault no runbook signature shows
        p = pack.fault_probability
        causes.append(Cause(pack.fault_type, faults[pack.fault_type].name, round(p / (p + UNKNOWN_WEIGHT), 3), [],
                            "runbook"))

    standouts = _standouts(pack)
    facts = _facts(standouts[:3]) or "no signal outside its band yet"
    weak = bool(ranked) and ranked[0].score < SUPPORT_MIN
    if causes and not weak:
        top = library.for_fault(causes[0].fault_type)
        steps, safety = runbook_steps(top)
        lead = causes[0]
        summary = f"{pack.asset_name}: most likely {lead.title.lower()} ({lead.confidence:.0%}); {facts}."
        if top:
            summary += f" Follow {top.id}."
    elif weak:
        # the best fit is too thin to lead: unknown leads with the evidence; the candidate's checks may rule it in or out
        best = ranked[0]
        top = best.runbook
        steps, safety = runbook_steps(top)
        steps = [s for s in steps if s.kind == "check"]
        contrary = ", ".join(f"{k} {_motion(pack.signal(k) or pack.context.get(k))}" for k in best.contrary[:2])
        causes = [_unknown_cause(pack, round(UNKNOWN_WEIGHT / total, 3), "runbook"), *causes]
        summary = (f"{pack.asset_name}: No known fault fits well (best: {faults[best.fault].name.lower()}, "
                   f"{causes[1].confidence:.0%}" + (f"; against it: {contrary}" if contrary else "")
                   + f"); the evidence points at {facts}. Checks in {top.id} may rule it in or out.")
    else:
        steps, safety = [], []
        causes = [_unknown_cause(pack, 0.5 if standouts else 0.0, "runbook")]
        covered = "no runbook covers it" if len(library) else "this line has no runbooks"
        summary = (f"{pack.asset_name}: No known fault matches ({covered}); the evidence points at {facts}."
                   if standouts else f"{pack.asset_name}: {pack.message or pack.condition}; No known fault matches "
                   f"({covered}) and no signal stands out yet.")

    return Diagnosis(
        alarm_id=pack.alarm_id, asset=pack.asset, summary=summary, causes=causes, steps=steps, safety=safety,
        would_change=_would_change(pack, ranked, faults), origin="runbook", fallback_reason=reason,
    )


def _motion(s: SignalEvidence | None) -> str:
    if s is None:
        return "not seen"
    if s.direction in ("high", "low"):
        return s.direction
    return "falling" if s.change < 0 else "rising" if s.change > 0 else "in band"


def data_source_diagnosis(pack: EvidencePack, reason: str | None = None) -> Diagnosis:
    """What an alarm about the data itself calls for: check the source or the instrument, not the process.

    Lost data leaves signals held or gapped, and a bad sensor reads what the process is not doing: a process
    fault fitted to them would send the technician to the wrong machine."""
    message = pack.message.removeprefix("Data lost: ")
    keys = pack.stale or [s.key for s in pack.signals if s.key.startswith(pack.asset + ".")][:1]
    signal = next((s for s in pack.signals if s.key in keys), None)
    name = keys[0] if keys else pack.asset
    if pack.anomaly_kind == "source":
        what = f"the data stopped coming ({message})"
        steps = [Step(f"Check that the source is up and reachable from this machine: {message}.", "check", None),
                 Step("Check the way to it: network, switch, the gateway or PLC, the broker's log for refused or "
                      "dropped connections.", "check", None),
                 Step("GET /health shows which source is down and since when (collect.sources); `factory-copilot "
                      "check --config LINE.yaml` tries every source with the service's settings.", "check", None),
                 Step("Restore the connection (restart a hung gateway or server); the alarms on its signals hold their "
                      "state until data flows again.", "action", None)]
    else:
        if pack.anomaly_kind == "range":
            what = f"{name} reads what its sensor cannot measure ({message.partition(' — ')[2] or message})"
            first = (f"Check {name} at the instrument: wiring (open or short circuit), scaling in the PLC or gateway, "
                     "the transmitter's own diagnostics.")
        else:
            what = f"{name} gives no good value ({message})"
            first = (f"Check {name} at the instrument: transmitter powered, wiring and connector intact, its status "
                     "in the PLC or SCADA.")
        steps = [Step(first, "check", None),
                 Step(f"Compare with a local gauge or a neighbouring sensor before acting on the process.", "check", None),
                 Step(f"Repair or replace the instrument; until then treat {name} as unknown, not as its last value.",
                      "action", None)]
    evidence = [Evidence("signal", k, "no good data", None) for k in keys[:5]] or (
        [_signal_evidence(signal)] if signal else [])
    cause = Cause(DATA_SOURCE, "Data source or instrument problem, not a process fault", 0.9, evidence, "runbook")
    summary = (f"{pack.asset_name}: {what}; a data problem, not a process fault: check the data source first. No process "
               "diagnosis is made on data that is lost or wrong.")
    would_change = ["Once good data flows again, an alarm that still stands is diagnosed on that data."]
    return Diagnosis(alarm_id=pack.alarm_id, asset=pack.asset, summary=summary, causes=[cause], steps=steps, safety=[],
                     would_change=would_change, origin="runbook", fallback_reason=reason)


def runbook_steps(runbook: Runbook | None, step_ids: list[str] | None = None,
                  library: RunbookLibrary | None = None) -> tuple[list[Step], list[str]]:
    """Steps (the chosen step ids, else the runbook's checks then actions) and its safety notes, quoted."""
    steps: list[Step] = []
    if step_ids and library is not None:
        for sid in step_ids:
            if (found := library.step(sid)):
                p, text = found
                steps.append(Step(text, "check" if p.anchor == "checks" else "action", p.id, "model"))
    elif runbook:
        for anchor, kind, limit in (("checks", "check", 4), ("actions", "action", 5)):
            p = runbook.passage(anchor)
            steps += [Step(item, kind, p.id, "runbook") for item in (p.items[:limit] if p else [])]
    safety = []
    if runbook and (p := runbook.passage("safety")):
        safety = [f"{item} ({p.id})" for item in p.items]
    return steps, safety


def _would_change(pack: EvidencePack, ranked: list[Candidate], faults: dict[str, Fault]) -> list[str]:
    would_change = []
    if len(ranked) > 1:
        alt = ranked[1]
        sig = alt.runbook.signatures[0]
        missing = [k for k in sig if k not in ranked[0].matched][:2]
        if missing:
            dirs = ", ".join(f"{k} {_WORDS[sig[k]]}" for k in missing)
            would_change.append(f"If {dirs}, {faults[alt.fault].name} becomes more likely.")
    out_of_band = [s for s in pack.signals if s.direction != "in band"]
    if out_of_band:
        s = out_of_band[0]
        would_change.append(
            f"If {s.key} returns to {_fmt(s.normal[0])}-{_fmt(s.normal[1])} {s.unit} without intervention, "
            "suspect a transient or a measurement problem instead."
        )
    return would_change


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


def model_diagnosis(text: str, pack: EvidencePack, library: RunbookLibrary, faults: dict[str, Fault],
                    model: str | None = None) -> Diagnosis:
    """Turn the model's JSON choices into a Diagnosis: titles, evidence, steps and safety come from the plant's data.

    Fault ids outside the catalogue and step ids not offered in this alarm's pack are dropped and
    counted (a grammar-constrained model cannot write them; a free one or a remote server can).
    """
    data = parse_json_leniently(text)
    dropped = 0
    summary = " ".join(_clean(data.get("summary"), 400).split())  # one line, as it streamed to the operator
    ranked = {c.fault: c for c in rank_faults(pack, library)}
    causes: list[Cause] = []
    raw_causes = data.get("causes") if isinstance(data.get("causes"), list) else []
    for c in raw_causes:
        if isinstance(c, str):  # "fault:confidence", the schema's form
            fault, _, word = _clean(c, 80).partition(":")
        elif isinstance(c, dict):  # {"fault": ..., "confidence": ...}, as a free model or a remote server may write
            fault, word = _clean(c.get("fault", c.get("fault_type")), 60), _clean(c.get("confidence"), 10)
        else:
            dropped += 1
            continue
        confidence = CONFIDENCE.get(word.strip().lower(), CONFIDENCE["low"])
        if fault == UNKNOWN:
            if not any(x.fault_type == UNKNOWN for x in causes):
                causes.append(_unknown_cause(pack, confidence, "model"))
            continue
        if any(x.fault_type == fault for x in causes):
            continue  # said twice (with another confidence word): the first stands
        if fault not in faults:
            dropped += 1  # a fault the plant does not know is an invented citation
            continue
        evidence = []
        cand = ranked.get(fault)
        keys = cand.matched if cand else [k for k in faults[fault].signals if pack.signal(k)]
        evidence += [_signal_evidence(s) for k in keys if (s := pack.signal(k) or pack.context.get(k))]
        rb = library.for_fault(fault)
        if rb is not None:
            evidence.append(Evidence("runbook", f"{rb.id}#symptoms", rb.title))
        causes.append(Cause(fault, faults[fault].name, confidence, evidence, "model"))

    chosen = []
    for label in data.get("steps") if isinstance(data.get("steps"), list) else []:
        sid = pack.step_for(_clean(label, 80)) if isinstance(label, (str, int)) and not isinstance(label, bool) else None
        if sid is None:
            dropped += 1  # a step that was not offered for this alarm
        elif sid not in chosen:
            chosen.append(sid)
    if not summary or not causes:
        raise InvalidModelOutput(
            f"model diagnosis unusable: {'no summary' if not summary else 'no cause left after validation'}"
            f" ({dropped} citations dropped)"
        )
    top = next((library.for_fault(c.fault_type) for c in causes if c.fault_type != UNKNOWN), None)
    steps, safety = runbook_steps(top, chosen, library)
    if not steps:
        steps, _ = runbook_steps(top)
    # every runbook a step comes from brings its safety notes, whatever cause the model named
    for book in dict.fromkeys(s.runbook_id.partition("#")[0] for s in steps if s.runbook_id):
        rb = library.get(book)
        if rb is not None and rb is not top:
            safety += runbook_steps(rb)[1]
    # the runbook's safety notes are never left to the model: they are always shown, marked with their passage
    ranked_list = [ranked[c.fault_type] for c in causes if c.fault_type in ranked]
    return Diagnosis(
        alarm_id=pack.alarm_id, asset=pack.asset, summary=summary, causes=causes, steps=steps, safety=safety,
        would_change=_would_change(pack, ranked_list, faults), origin="model", model=model, dropped_citations=dropped,
    )
