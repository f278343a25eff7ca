"""``factory-copilot incidents export``: operator-confirmed incidents as chat-format JSON Lines for fine-tuning.

    factory-copilot incidents export --config LINE.yaml [--config LINE2.yaml ...] [--out incidents.jsonl] [--since-hours H]

Each alarm an operator confirmed (or corrected with "another cause") becomes one example: the
system prompt and the evidence block the copilot would send for it (rebuilt from the readings the
store kept before the alarm), and the answer the operator confirmed, in the copilot's own output
form (summary, the cause id with "high" confidence, the steps to do first). Alarms marked false
are left out. The file stays where it is written: nothing leaves the plant unless a person copies
it. The fine-tuning recipe (LoRA on the same Qwen, back to GGUF) is in models/README.md.

Several ``--config`` make one file of several lines (each example's ``metadata.line`` says whose): each line's
incidents come from the store its line file names (the site's PostgreSQL, read through that line's session
views with the line file's own credentials, or its SQLite file), and its evidence from its own signals and
runbooks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from factory_copilot.names import UNKNOWN
from factory_copilot.config import LineConfig, ServicePaths, load_line
from factory_copilot.copilot.diagnosis import SUMMARY_CHARS
from factory_copilot.copilot.prompt import diagnosis_messages
from factory_copilot.copilot.station import Copilot
from factory_copilot.records import Reading
from factory_copilot.store.store import Store, line_id, open_store, store_missing

WINDOW_S = 600.0  # readings before the alarm that make its evidence (the copilot's own window)
VERDICTS = ("confirmed", "other_cause")


def examples(line: LineConfig, store: Store, since: float = 0.0) -> Iterator[dict[str, Any]]:
    """One chat example per confirmed or corrected alarm, oldest first."""
    for marked in store.marked_alarms(VERDICTS, since):
        alarm = store.alarm(marked.alarm_id)
        if alarm is None:
            continue
        feedback = store.feedback(marked.alarm_id)[-1]
        cop = Copilot(line)
        for asset in line.assets:
            frame = store.trend(asset.id, alarm.raised_at - WINDOW_S, alarm.raised_at)
            for ts, signal, value in frame[["ts", "signal", "mean"]].itertuples(index=False):
                if value == value:  # NaN: a bad sample, never data
                    cop.observe(Reading(float(ts), asset.id, str(signal), float(value)))
        pack = cop.evidence(alarm)
        cause = feedback.actual_cause if feedback.actual_cause in cop.faults else UNKNOWN
        diagnosis = store.diagnosis(alarm.alarm_id)
        if (cause != UNKNOWN and diagnosis and diagnosis.origin == "model" and diagnosis.causes
                and diagnosis.causes[0].fault_type == cause):
            summary = diagnosis.summary  # the model's own words, confirmed
        elif cause != UNKNOWN:
            summary = f"{pack.asset_name}: {cop.faults[cause].name.lower()}."
        else:
            summary = f"{pack.asset_name}: no known fault; the operator found: {feedback.actual_cause or 'another cause'}."
        fixed = f" Fixed by: {' '.join(feedback.fix.split())}." if feedback.fix else ""
        base = " ".join(summary.split())
        summary = base[: max(40, SUMMARY_CHARS - len(fixed))].rstrip() + fixed  # the schema's bound; the fix is kept whole
        steps = [int(label) for label, sid in zip(pack.step_labels(), pack.step_ids)
                 if pack.step_faults.get(sid) == cause][:3]
        answer = {"summary": summary[:SUMMARY_CHARS], "causes": [f"{cause}:high"],
                  "steps": steps}
        messages = diagnosis_messages(cop.system, pack)
        messages.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
        yield {"messages": messages,
               "metadata": {"alarm_id": alarm.alarm_id, "asset": alarm.asset, "raised_at": alarm.raised_at,
                            "verdict": feedback.verdict, "actor": feedback.actor, "fix": feedback.fix,
                            "line": line_id(line)}}


def run(args: argparse.Namespace) -> int:
    if args.state_dir and len(args.config) > 1:
        print("error: --state-dir overrides one line file's service.state_dir: give one --config with it",
              file=sys.stderr)
        return 2
    lines = []
    for config in args.config:
        line = load_line(config)
        paths = ServicePaths.of_line(line, config, Path(args.state_dir) if args.state_dir else None)
        if store_missing(line, paths):
            print(f"error: no store at {paths.store} for {config} (the service writes it; --state-dir to point "
                  "elsewhere)", file=sys.stderr)
            return 2
        lines.append((line, paths))
    if len({line_id(line) for line, _ in lines}) < len(lines):
        print("error: two --config name the same site/line", file=sys.stderr)
        return 2
    since = time.time() - args.since_hours * 3600 if args.since_hours else 0.0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with open(out, "w", encoding="utf-8") as f:
        for line, paths in lines:  # read only: an export changes no store
            with open_store(line, paths, read_only=True) as store:
                counts[line_id(line)] = 0
                for example in examples(line, store, since):
                    f.write(json.dumps(example, ensure_ascii=False) + "\n")
                    counts[line_id(line)] += 1
    per_line = f" ({', '.join(f'{k}: {v}' for k, v in counts.items())})" if len(counts) > 1 else ""
    print(f"{out}: {sum(counts.values())} confirmed incident(s) as chat examples{per_line} (alarms marked false left "
          "out); see models/README.md for fine-tuning")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("incidents", help="export operator-confirmed incidents for fine-tuning")
    inner = p.add_subparsers(dest="incidents_command", metavar="ACTION", required=True)
    e = inner.add_parser("export", help="confirmed incidents as chat-format JSON Lines", description=__doc__.splitlines()[0])
    e.add_argument("--config", required=True, type=Path, action="append",
                   help="the line file the service runs; again for each further line of one file (a site's lines "
                        "in one PostgreSQL store: each read with its own line file's store url)")
    e.add_argument("--state-dir", help="override the line file's service.state_dir (the demo's is var/demo)")
    e.add_argument("--out", default="incidents.jsonl", help="file to write (default incidents.jsonl)")
    e.add_argument("--since-hours", type=float, help="only incidents confirmed within this many hours")
    e.set_defaults(func=run)
