"""The ``alarms`` sub-command: read the alarm engine's file — current alarms and the audit trail.

Which file: ``--db FILE`` (or ``FACTORY_COPILOT_ALARMS_DB``); else the state folder of ``--config LINE.yaml``
(its ``service.state_dir``, as ``run`` writes it); else the demo's (``var/demo/alarms.db``, as the demo writes it).
It says on stderr which file it read, and how to point it elsewhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from factory_copilot.alarms.grouping import fold
from factory_copilot.alarms.journal import Journal
from factory_copilot.config import ServicePaths, demo_state_dir, load_line
from factory_copilot.plumbing.logs import printable
from factory_copilot.records import AlarmState


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("alarms", help="show current alarms or the alarm audit trail from the engine's file")
    p.add_argument("--config", type=Path, help="the line file: read the alarms of its state folder (service.state_dir)")
    p.add_argument("--state-dir", type=Path, help="with --config: override service.state_dir")
    p.add_argument("--db", help="the alarm engine's SQLite file itself (default: the line's with --config, else "
                                "FACTORY_COPILOT_ALARMS_DB, else the demo's var/demo/alarms.db)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    sub = p.add_subparsers(dest="alarms_command", metavar="WHAT", required=True)
    ls = sub.add_parser("list", help="alarms not normal, worst priority first (--all: every alarm)")
    ls.add_argument("--all", action="store_true")
    ls.set_defaults(func=_list)
    au = sub.add_parser("audit", help="every alarm event and operator action, oldest first")
    au.add_argument("--alarm", help="only this alarm id")
    au.add_argument("--since-min", type=float, help="only the last N minutes")
    au.add_argument("--limit", type=int, default=200, help="at most the newest N entries (default 200)")
    au.set_defaults(func=_audit)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _db(args: argparse.Namespace) -> tuple[str, str]:
    """The file to read and whose it is."""
    if args.db:
        return args.db, "--db"
    if args.config is not None:
        line = load_line(args.config)
        return str(ServicePaths.of_line(line, args.config, args.state_dir).alarms), f"{line.site}/{line.line}'s"
    if os.environ.get("FACTORY_COPILOT_ALARMS_DB"):
        return os.environ["FACTORY_COPILOT_ALARMS_DB"], "FACTORY_COPILOT_ALARMS_DB's"
    return str(demo_state_dir() / "alarms.db"), "the demo's"


def _open(args: argparse.Namespace) -> Journal | None:
    db, whose = _db(args)
    elsewhere = "--config LINE.yaml reads a line's state folder, --db FILE any file"
    if db != ":memory:" and not Path(db).exists():
        print(f"error: {db} ({whose}): no alarm engine file here; {elsewhere}", file=sys.stderr)
        return None
    print(f"alarms of {db} ({whose}; {elsewhere})", file=sys.stderr)
    return Journal(db)


def _list(args: argparse.Namespace) -> int:
    journal = _open(args)
    if journal is None:
        return 2
    try:
        alarms = [s.alarm for s in journal.load_alarms()]
    finally:
        journal.close()
    if not args.all:
        alarms = [a for a in alarms if a.state is not AlarmState.NORMAL]
    alarms.sort(key=lambda a: (a.priority.value, a.state.acknowledged, -a.raised_at))
    if args.json:
        for a in alarms:
            print(json.dumps(a.to_dict()))
        return 0
    folded = 0
    for situation in fold(alarms):  # each root, then the consequences folded under it
        print(_line(situation.root))
        for c in situation.consequences:
            print(_line(c, "  └ "))
        folded += len(situation.consequences)
    print(f"{len(alarms)} alarm(s)" + (f", {folded} folded under their cause" if folded else ""))
    return 0


def _line(a, indent: str = "") -> str:
    flags = [f for f, on in (("shelved", a.shelved_until), ("suppressed", a.suppressed and not a.parent_id),
                             ("out-of-service", a.out_of_service)) if on]
    extra = f" [{', '.join(flags)}]" if flags else ""
    return (f"{_when(a.raised_at)}  {indent}{a.priority.name:<8} {a.state.value:<24} {printable(a.alarm_id)}  "
            f"{printable(a.message, 500)}{extra}")


def _audit(args: argparse.Namespace) -> int:
    journal = _open(args)
    if journal is None:
        return 2
    try:
        since = None
        if args.since_min is not None:
            since = dt.datetime.now(dt.timezone.utc).timestamp() - 60 * args.since_min
        events = journal.audit(args.alarm, since, args.limit)
    finally:
        journal.close()
    for e in events:
        if args.json:
            print(json.dumps(e.to_dict()))
            continue
        # actor, comment and ids came from outside: printed escaped, so a newline cannot forge a row
        # nor an ANSI escape repaint the reader's terminal (the file keeps them as they came, as data)
        who = f" by {printable(e.actor, 100)}" if e.actor else ""
        note = f" — {printable(e.comment, 1000)}" if e.comment else ""
        print(f"{_when(e.ts)}  {printable(e.alarm_id):<40} {printable(e.event):<18} -> {e.state.value}{who}{note}")
    return 0
