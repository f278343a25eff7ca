"""The ``shift`` sub-command: ``shift report`` writes the handover of any past shift, from the line's state files."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from factory_copilot.alarms.journal import Journal
from factory_copilot.config import ServicePaths, load_line
from factory_copilot.publish.payloads import handover as payload
from factory_copilot.records import Handover
from factory_copilot.shift.calendar import NoShifts, named_or_last
from factory_copilot.shift.document import markdown
from factory_copilot.shift.handover import write_handover
from factory_copilot.store.store import open_store

FORMATS = ("markdown", "pdf", "json")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shift", help="shift handovers: write the report of any past shift")
    what = p.add_subparsers(dest="shift_command", metavar="WHAT", required=True)
    r = what.add_parser("report", help="the handover of a shift (default: the newest that has ended)")
    r.add_argument("--config", required=True, type=Path, help="the line file (YAML), with its shifts")
    r.add_argument("--shift", help="shift name as the line file names it (default: the newest ended shift)")
    r.add_argument("--date", help="local date the shift started on, YYYY-MM-DD (default: its newest ended one)")
    r.add_argument("--format", choices=FORMATS, default="markdown")
    r.add_argument("--out", type=Path, help="file to write (default: stdout for markdown and json; "
                                            "handover-<date>-<shift>.pdf for pdf)")
    r.add_argument("--state-dir", type=Path, help="override service.state_dir")
    r.add_argument("--summary", action="store_true",
                   help="add the summary paragraph written by the line's model (service.copilot; each sentence cites "
                        "its rows, the others are dropped)")
    r.set_defaults(func=run_report)


def report(line_path: Path, shift: str | None = None, date: str | None = None, state_dir: Path | None = None,
           summary: bool = False, now: float | None = None) -> Handover:
    line = load_line(line_path)
    now = time.time() if now is None else now
    window = named_or_last(line, shift, date, now)
    paths = ServicePaths.of_line(line, line_path, state_dir)
    store = open_store(line, paths, read_only=True)
    journal = Journal(paths.alarms, read_only=True)
    try:
        handover = write_handover(line, window, store, journal, now=now)
        stored = store.handover(window.handover_id)
        if stored is not None:
            handover.acknowledged = stored.acknowledged
    finally:
        journal.close()
        store.close()
    if summary:
        from factory_copilot.copilot.choice import backend_from_settings
        from factory_copilot.shift.summary import summarise

        c = line.service.copilot
        backend = backend_from_settings(c.model_path, c.openai_url, c.openai_model, c.n_threads, c.n_ctx,
                                        c.n_gpu_layers, line=line)
        if backend is None:
            raise ValueError("--summary: the line file configures no model (service.copilot.model_path, "
                             "openai_url or pool), and no FACTORY_COPILOT_MODEL is set")
        handover.body["summary"] = summarise(handover, backend, timeout_s=c.timeout_s)
    return handover


def run_report(args: argparse.Namespace) -> int:
    try:
        handover = report(args.config, args.shift, args.date, args.state_dir, args.summary)
    except (NoShifts, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "pdf":
        from factory_copilot.shift.pdf import handover_pdf  # fpdf2 only for a PDF

        out = args.out or Path(f"handover-{handover.date}-{handover.shift}.pdf")
        out.write_bytes(handover_pdf(handover))
        print(f"wrote {out}")
        return 0
    text = markdown(handover) if args.format == "markdown" else json.dumps(payload(handover), indent=2)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0

