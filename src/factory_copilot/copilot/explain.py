"""The ``explain`` sub-command: explain one alarm (from a JSON file) or a simulated incident from the command line.

    factory-copilot explain --scenario bearing_wear [--model models/qwen2.5-1.5b-instruct-q4_k_m.gguf]
    factory-copilot explain --alarm-file alarm.json [--openai-url http://127.0.0.1:8080/v1]

The runbook diagnosis prints at once; with a model, its text streams as it is
written and the checked model diagnosis follows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.publish import payloads
from factory_copilot.records import Alarm, Diagnosis, Quality, Reading
from factory_copilot.simulated import simulated_line


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("explain", help="explain an alarm or a simulated incident with the copilot",
                              description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--alarm-file", help="alarm JSON (an Alarm or AlarmEvent as published; optional 'readings' list)")
    src.add_argument("--scenario", help="simulate this catalogue fault and explain the alarm it raises")
    p.add_argument("--line", default=str(SIMULATED_LINE), help="line file (default: the simulated packaging line)")
    p.add_argument("--at", type=float, default=600.0, help="with --scenario: seconds after fault onset (default 600)")
    p.add_argument("--seed", type=int, default=0, help="with --scenario: simulator seed")
    p.add_argument("--model", help="GGUF model file (or FACTORY_COPILOT_MODEL)")
    p.add_argument("--openai-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--openai-model", help="model name for the endpoint")
    p.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores)")
    p.add_argument("--ctx", type=int, help="llama.cpp context size (default 4096)")
    p.add_argument("--gpu-layers", type=int, help="layers to offload to a GPU (default 0)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds the model may take (default 120)")
    p.add_argument("--json", action="store_true", help="print the diagnoses as JSON lines")
    p.set_defaults(func=run)


def load_alarm_file(path: str | Path) -> tuple[Alarm, list[Reading]]:
    """An alarm (or alarm event) JSON file, with optional recent readings; errors name the file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SystemExit(f"error: {path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {path}: not valid JSON: {exc}") from None
    body = data.get("alarm", data) if isinstance(data, dict) else None
    if not isinstance(body, dict):
        raise SystemExit(f"error: {path}: expected a JSON object with the alarm")
    try:
        alarm = Alarm.from_dict(body)
    except (KeyError, TypeError, ValueError) as exc:
        raise SystemExit(f"error: {path}: not an alarm record: {exc}") from None
    readings = []
    for i, r in enumerate(data.get("readings", []) if isinstance(data, dict) else []):
        try:
            readings.append(Reading(float(r["ts"]), r["asset"], r["signal"], r.get("value"),
                                    Quality(r.get("quality", "good")), r.get("source", "file"), r.get("unit", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise SystemExit(f"error: {path}: readings[{i}]: {exc}") from None
    return alarm, readings



def format_diagnosis(d: Diagnosis) -> str:
    head = f"[{d.origin}{' / ' + d.model if d.model else ''}]"
    if d.fallback_reason:
        head += f" (fallback: {d.fallback_reason})"
    lines = [f"{head} {d.summary}", "Causes:"]
    for c in d.causes:
        refs = ", ".join(e.ref for e in c.evidence)
        lines.append(f"  - {c.title} [{c.fault_type}] {c.confidence:.0%} ({c.origin}) <- {refs}")
    lines.append("Steps:")
    for i, s in enumerate(d.steps, 1):
        lines.append(f"  {i}. [{s.kind}] {s.text}" + (f" ({s.runbook_id})" if s.runbook_id else "") + f" ({s.origin})")
    if d.safety:
        lines.append("Safety:")
        lines += [f"  ! {s}" for s in d.safety]
    if d.would_change:
        lines.append("Would change the conclusion:")
        lines += [f"  ? {s}" for s in d.would_change]
    if d.dropped_citations:
        lines.append(f"({d.dropped_citations} citations not in the evidence were dropped)")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    from factory_copilot.copilot.choice import backend_from_settings
    from factory_copilot.copilot.station import Copilot

    line = load_line(args.line)
    if args.alarm_file:
        alarm, readings = load_alarm_file(args.alarm_file)
    else:
        alarm, readings = simulated_line().simulated_incident(line, args.scenario, args.at, args.seed)
    backend = backend_from_settings(args.model, args.openai_url, args.openai_model, args.threads, args.ctx, args.gpu_layers)
    copilot = Copilot(line, backend=backend, timeout_s=args.timeout)
    for r in readings:
        copilot.observe(r)

    def show(d: Diagnosis) -> None:
        # --json prints the diagnosis/1 fields (its "source", not the record's "origin"): what a subscriber reads
        print(json.dumps(payloads.diagnosis_fields(d)) if args.json else format_diagnosis(d) + "\n", flush=True)

    def stream(piece: str) -> None:
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()

    async for d in copilot.explain(alarm, on_token=stream):
        if d.origin == "model" or d.fallback_reason:
            stream("\n\n")
        show(d)
    return 0
