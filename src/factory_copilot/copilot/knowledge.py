"""``factory-copilot knowledge check``: a line's fault catalogue and runbook folder, validated against its line file.

    factory-copilot knowledge check --config LINE.yaml

Checks what the copilot relies on: the catalogue and every runbook parse (errors name the
file and the field), ids are unique, every runbook has the standard sections with numbered
checks and actions, every signal a runbook or fault names exists in the line (front matter,
signature and the `asset.signal` keys quoted in its text), assets exist, runbooks answer
catalogue faults, and every catalogue fault has a runbook. Errors make the command fail;
warnings (a fault without a runbook) do not.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory_copilot.catalogue import faults_of
from factory_copilot.config import LineConfig, LineConfigError, load_line
from factory_copilot.copilot.runbooks import STANDARD_SECTIONS, RunbookError, parse_runbook, runbook_files

_QUOTED_KEY = re.compile(r"`([a-z][a-z0-9_]*\.[a-z][a-z0-9_]*)`")


@dataclass
class KnowledgeReport:
    faults_file: Path | None = None
    runbooks_dir: Path | None = None
    faults: int = 0
    runbooks: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_knowledge(line: LineConfig) -> KnowledgeReport:
    """Validate the line's catalogue and runbooks against the line; every problem names its file (and field)."""
    base = line.path.parent if line.path else None
    faults_file, runbooks_dir = line.knowledge.paths(base)
    report = KnowledgeReport(faults_file, runbooks_dir)
    keys = set(line.signal_keys(include_mode=True))
    assets = {a.id for a in line.assets}

    faults: dict[str, Any] = {}
    if faults_file is not None:
        try:
            faults = faults_of(line)
        except LineConfigError as exc:
            report.errors += [f"{exc.path}: {p}" for p in exc.problems]
        for i, f in enumerate(faults.values()):
            if f.asset not in assets:
                report.errors.append(f"{faults_file}: faults[{i}].asset: {f.asset!r} is not an asset of the line")
            for j, key in enumerate(f.signals):
                if key not in keys:
                    report.errors.append(f"{faults_file}: faults[{i}].signals[{j}]: {key!r} is not a signal of the line")
    report.faults = len(faults)

    if runbooks_dir is None:
        if faults:
            report.warnings.append("the line names no runbook folder (knowledge.runbooks): diagnoses quote no steps")
        return report
    if not runbooks_dir.is_dir():
        report.errors.append(f"{runbooks_dir}: runbook folder not found (knowledge.runbooks in {line.path})")
        return report
    seen: dict[str, str] = {}
    answered: set[str] = set()
    for path in runbook_files(runbooks_dir):
        try:
            rb = parse_runbook(path.read_text(encoding="utf-8"), str(path))
        except (RunbookError, OSError, UnicodeDecodeError) as exc:
            report.errors.append(str(exc))
            continue
        report.runbooks += 1
        if rb.id in seen:
            report.errors.append(f"{path}: id: {rb.id} is already used by {seen[rb.id]}")
        seen[rb.id] = str(path)
        if rb.asset not in assets:
            report.errors.append(f"{path}: asset: {rb.asset!r} is not an asset of the line")
        for i, fid in enumerate(rb.faults):
            if faults_file is not None and fid not in faults:
                report.errors.append(f"{path}: faults[{i}]: {fid!r} is not in the fault catalogue {faults_file}")
            answered.add(fid)
        for i, key in enumerate(rb.signals):
            if key not in keys:
                report.errors.append(f"{path}: signals[{i}]: {key!r} is not a signal of the line")
        for key in rb.signature_signals:
            if key not in keys:
                report.errors.append(f"{path}: signature: {key!r} is not a signal of the line")
        for p in rb.passages.values():
            for key in sorted(set(_QUOTED_KEY.findall(p.text))):
                if key not in keys:
                    report.errors.append(f"{path}: section #{p.anchor}: `{key}` is not a signal of the line")
        missing = [a for a in STANDARD_SECTIONS if a not in rb.passages]
        if missing:
            report.errors.append(f"{path}: sections missing: {', '.join('#' + a for a in missing)}")
        for anchor in ("checks", "actions"):
            p = rb.passages.get(anchor)
            if p is not None and not p.items:
                report.errors.append(f"{path}: section #{anchor} has no numbered steps")
        if rb.faults and not rb.signatures:
            report.warnings.append(f"{path}: no signature: without a model this runbook is found by text search only")
    for fid in faults:
        if fid not in answered:
            report.warnings.append(f"{faults_file}: fault {fid!r} has no runbook in {runbooks_dir}")
    return report


def run(args: argparse.Namespace) -> int:
    line = load_line(args.config)
    report = check_knowledge(line)
    print(f"{args.config}: fault catalogue {report.faults_file or '(none)'} ({report.faults} faults), "
          f"runbooks {report.runbooks_dir or '(none)'} ({report.runbooks} runbooks)")
    for w in report.warnings:
        print(f"warning: {w}")
    for e in report.errors:
        print(f"error: {e}", file=sys.stderr)
    print("ok" if report.ok else f"{len(report.errors)} error(s)")
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knowledge", help="check a line's fault catalogue and runbooks against its line file")
    inner = p.add_subparsers(dest="knowledge_command", metavar="ACTION", required=True)
    c = inner.add_parser("check", help="validate the catalogue and runbook folder the line file names",
                         description=__doc__.splitlines()[0])
    c.add_argument("--config", required=True, type=Path, help="the line file (YAML)")
    c.set_defaults(func=run)
