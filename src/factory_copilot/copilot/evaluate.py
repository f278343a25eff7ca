"""``factory-copilot evaluate --copilot``: how good the copilot's diagnoses are, runbook-only and model side by side.

    factory-copilot evaluate --copilot [--model GGUF | --openai-url URL] [--line LINE.yaml --cases CASES.jsonl]

Cases: on the simulated line, every catalogued fault as the simulator injects it (the right
answer is its id), and the same incidents with that fault taken out of the catalogue and the
runbooks (an out-of-catalogue incident: the right answer is "unknown"); for any line, a JSON
Lines file of incidents (``{"name", "expected", "alarm", "readings"}``, e.g. confirmed ones).
For each path (runbook-only, and the model when one is given): top-1 and top-2 fault accuracy,
the share of valid citations (signals and runbook passages that exist in the evidence), the share
of schema-valid answers, "unknown" precision and recall, time to first words and to a complete
diagnosis, tokens in and out. Printed as one table, written as ``copilot.json`` and ``copilot.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory_copilot.catalogue import Fault, faults_of
from factory_copilot.config import SIMULATED_LINE, LineConfig, load_line
from factory_copilot.copilot.language_model import LLMBackend
from factory_copilot.copilot.choice import backend_from_settings
from factory_copilot.copilot.runbooks import RunbookLibrary, runbooks_of
from factory_copilot.copilot.station import Copilot
from factory_copilot.names import UNKNOWN
from factory_copilot.records import Alarm, Diagnosis, Quality, Reading
from factory_copilot.simulated import simulated_line

log = logging.getLogger(__name__)


@dataclass
class Case:
    name: str
    expected: str  # a fault id, or "unknown"
    alarm: Alarm
    readings: list[Reading]
    leave_out: str | None = None  # a fault taken out of the knowledge for this case


@dataclass
class Outcome:
    case: str
    path: str  # "runbook" or "model"
    expected: str
    causes: list[str]
    schema_valid: bool
    citations: int
    valid_citations: int
    first_words_s: float | None
    complete_s: float | None
    tokens_in: float | None = None
    tokens_out: float | None = None
    fallback: str | None = None


@dataclass
class Report:
    line: str
    model: str | None
    cases: int
    paths: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcomes: list[dict] = field(default_factory=list)


# ---- cases ----------------------------------------------------------------------------------------------------



def read_cases(path: str | Path) -> list[Case]:
    """Incidents from a JSON Lines file; a bad line names the file and line number."""
    cases = []
    for n, raw in enumerate(Path(path).read_text().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            d = json.loads(raw)
            readings = [Reading(float(r["ts"]), r["asset"], r["signal"], r.get("value"), Quality(r.get("quality", "good")))
                        for r in d.get("readings", [])]
            cases.append(Case(str(d.get("name") or f"case {n}"), str(d["expected"]), Alarm.from_dict(d["alarm"]),
                              readings))
        except (KeyError, TypeError, ValueError) as exc:
            raise SystemExit(f"error: {path}:{n}: not a case ({type(exc).__name__}: {exc})") from None
    return cases


def case_line(case: Case) -> dict:
    """A case as one JSON line (the format ``read_cases`` reads)."""
    return {"name": case.name, "expected": case.expected, "alarm": case.alarm.to_dict(),
            "readings": [r.to_dict() for r in case.readings]}


# ---- scoring --------------------------------------------------------------------------------------------------


def _citations(d: Diagnosis, cop: Copilot, alarm_id: str) -> tuple[int, int]:
    """(all, valid): signal evidence must be a signal of the pack, runbook evidence and steps passages that exist."""
    pack = cop.pack(alarm_id)
    signals = (pack.signal_keys() | set(pack.context)) if pack else set()
    total = valid = 0
    for c in d.causes:
        for e in c.evidence:
            total += 1
            valid += (e.ref in signals) if e.kind == "signal" else (cop.library.passage(e.ref) is not None)
    for s in d.steps:
        if s.runbook_id:
            total += 1
            valid += cop.library.passage(s.runbook_id) is not None
    return total + d.dropped_citations, valid


def _knowledge(line: LineConfig, leave_out: str | None) -> tuple[dict[str, Fault], RunbookLibrary]:
    faults, library = faults_of(line), runbooks_of(line)
    if leave_out:
        faults = {k: v for k, v in faults.items() if k != leave_out}
        library = RunbookLibrary([rb for rb in library.runbooks.values() if leave_out not in rb.faults])
    return faults, library


async def evaluate(line: LineConfig, cases: list[Case], backend: LLMBackend | None, timeout_s: float = 120.0,
                   progress: bool = False) -> Report:
    report = Report(line=f"{line.site}/{line.line}", model=backend.name if backend is not None else None, cases=len(cases))
    outcomes: list[Outcome] = []
    knowledge: dict[str | None, tuple] = {}
    copilots: dict[str | None, Copilot] = {}
    for i, case in enumerate(cases, 1):
        if case.leave_out not in knowledge:
            knowledge[case.leave_out] = _knowledge(line, case.leave_out)
        faults, library = knowledge[case.leave_out]
        # one copilot per knowledge variant, so the model's prompt prefix stays cached across its cases
        cop = copilots.get(case.leave_out)
        if cop is None:
            cop = copilots[case.leave_out] = Copilot(line, library=library, faults=faults, backend=backend,
                                                     timeout_s=timeout_s)
        cop.history = type(cop.history)()
        for r in case.readings:
            cop.observe(r)
        started = time.perf_counter()
        d = cop.explain_now(case.alarm)
        took = time.perf_counter() - started
        total, valid = _citations(d, cop, case.alarm.alarm_id)
        outcomes.append(Outcome(case.name, "runbook", case.expected, [c.fault_type for c in d.causes], True, total,
                                valid, took, took))
        if backend is not None:
            d = await cop._model_diagnosis(case.alarm.alarm_id, None)
            t = cop.last_timing
            total, valid = _citations(d, cop, case.alarm.alarm_id)
            ok = d.origin == "model"
            tokens_out = t.get("completion_chunks")
            tokens_in = t["context_tokens"] - tokens_out if "context_tokens" in t and tokens_out is not None else None
            outcomes.append(Outcome(case.name, "model", case.expected, [c.fault_type for c in d.causes] if ok else [],
                                    ok, total, valid, t.get("first_words_s") if ok else None,
                                    t.get("complete_s") if ok else None, tokens_in, tokens_out, d.fallback_reason))
        if progress:
            print(f"  {i}/{len(cases)} {case.name}", flush=True)
    report.outcomes = [o.__dict__ for o in outcomes]
    for path in dict.fromkeys(o.path for o in outcomes):
        report.paths[path] = summarise([o for o in outcomes if o.path == path])
    return report


def summarise(outcomes: list[Outcome]) -> dict[str, Any]:
    def share(n: int, d: int) -> float | None:
        return round(n / d, 3) if d else None

    def median(xs: list[float | None]) -> float | None:
        xs = [x for x in xs if x is not None]
        return round(statistics.median(xs), 3) if xs else None

    known = [o for o in outcomes if o.expected != UNKNOWN]
    said_unknown = [o for o in outcomes if o.causes[:1] == [UNKNOWN]]
    truly_unknown = [o for o in outcomes if o.expected == UNKNOWN]
    return {
        "cases": len(outcomes),
        "top1": share(sum(o.causes[:1] == [o.expected] for o in known), len(known)),
        "top2": share(sum(o.expected in o.causes[:2] for o in known), len(known)),
        "unknown_precision": share(sum(o.expected == UNKNOWN for o in said_unknown), len(said_unknown)),
        "unknown_recall": share(sum(o.causes[:1] == [UNKNOWN] for o in truly_unknown), len(truly_unknown)),
        "valid_citations": share(sum(o.valid_citations for o in outcomes), sum(o.citations for o in outcomes)),
        "schema_valid": share(sum(o.schema_valid for o in outcomes), len(outcomes)),
        "first_words_s_p50": median([o.first_words_s for o in outcomes]),
        "complete_s_p50": median([o.complete_s for o in outcomes]),
        "tokens_in_p50": median([o.tokens_in for o in outcomes]),
        "tokens_out_p50": median([o.tokens_out for o in outcomes]),
    }


ROWS = [("top-1 fault accuracy", "top1"), ("top-2 fault accuracy", "top2"), ("valid citations", "valid_citations"),
        ("schema-valid answers", "schema_valid"), ('"unknown" precision', "unknown_precision"),
        ('"unknown" recall', "unknown_recall"), ("first words, s (p50)", "first_words_s_p50"),
        ("complete diagnosis, s (p50)", "complete_s_p50"), ("tokens in (p50)", "tokens_in_p50"),
        ("tokens out (p50)", "tokens_out_p50")]


def table(report: Report) -> str:
    paths = list(report.paths)
    head = f"{'':30}" + "".join(f"{p:>14}" for p in paths)
    lines = [f"copilot on {report.line}: {report.cases} cases" + (f", model {report.model}" if report.model else ""), head]
    for label, key in ROWS:
        cells = []
        for p in paths:
            v = report.paths[p].get(key)
            cells.append(f"{'-' if v is None else (f'{v:.0%}' if key in ('top1', 'top2', 'valid_citations', 'schema_valid', 'unknown_precision', 'unknown_recall') else f'{v:g}'):>14}")
        lines.append(f"{label:30}" + "".join(cells))
    return "\n".join(lines)


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("top-1", "top1"), ("top-2", "top2"), ("valid citations", "valid_citations"),
            ("schema-valid", "schema_valid"), ("unknown precision", "unknown_precision"),
            ("unknown recall", "unknown_recall")]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(1, len(report.paths))
    for i, (p, summary) in enumerate(report.paths.items()):
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, [summary.get(k) or 0.0 for _, k in keys], width, label=p)
    ax.set_xticks([j + width * (len(report.paths) - 1) / 2 for j in range(len(keys))], [k for k, _ in keys], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Copilot diagnoses on {report.line} ({report.cases} cases)" + (f": {report.model}" if report.model else ""),
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    line = load_line(args.line)
    cases = read_cases(args.cases) if args.cases else None
    if cases is None:
        if Path(args.line).resolve() != SIMULATED_LINE.resolve():
            raise SystemExit("error: --cases FILE.jsonl is needed for a line other than the simulated one")
        cases = simulated_line().simulated_cases(line, only=args.faults)
    backend = backend_from_settings(args.model, args.openai_url, args.openai_model, args.threads,
                                    state_dir=Path(args.out) / "copilot-state") if (args.model or args.openai_url) else None
    try:
        if backend is not None:
            backend.warm(Copilot(line).system)
        report = asyncio.run(evaluate(line, cases, backend, args.timeout, progress=True))
    finally:
        if backend is not None:
            backend.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "copilot.json").write_text(json.dumps(report.__dict__, indent=2, default=str))
    plot(report, out / "copilot.png")
    print(table(report))
    print(f"report: {out / 'copilot.json'}, plot: {out / 'copilot.png'}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The copilot's options on the ``evaluate`` command (which keeps its own for the detector)."""
    g = parser.add_argument_group("copilot (--copilot)")
    g.add_argument("--copilot", action="store_true", help="score the copilot's diagnoses instead of the detector")
    g.add_argument("--model", dest="model", help="a GGUF file to score beside the runbook-only path")
    g.add_argument("--openai-url", help="or an OpenAI-compatible endpoint")
    g.add_argument("--openai-model", help="model name for the endpoint")
    g.add_argument("--cases", help="incidents as JSON lines (name, expected, alarm, readings); default: simulated")
    g.add_argument("--faults", nargs="+", metavar="FAULT", help="only these simulated faults (default: every one)")
    g.add_argument("--threads", type=int, help="llama.cpp threads")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds the model may take per diagnosis")
    detector = parser.get_default("func")
    parser.set_defaults(func=lambda a: run(a) if a.copilot else detector(a))
