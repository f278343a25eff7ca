"""The ``alarms`` sub-command: read the alarm engine's file — current alarms and the audit trail.

Which file: ``--db FILE`` (or ``FACTORY_COPILOT_ALARMS_DB``); else the state folder of ``--config LINE.yaml``
(its ``service.state_dir``, as ``run`` writes it); else the demo's (``var/demo/alarms.db``, as the demo writes it).
It says on stderr which file it read, and how to point it elsewhere.

A site's PostgreSQL store (``--db postgresql://...``; or ``--config LINE.yaml --from-store``, the line file's
``store.url``) holds another copy: the alarms (each one's newest state) and every alarm event, operator actions
with their actor and comment, as each line's store station wrote them from the engine's events; every line of
the site, each row with its line (``--line`` narrows to one). The engine's own file stays the authority for
its line (what the store has not yet written while the database was away is only there).
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
from factory_copilot.store.site import SiteHistory, is_url
from factory_copilot.store.store import line_id


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("alarms", help="show current alarms or the alarm audit trail from the engine's file, "
                                             "or every line's from the site's PostgreSQL store",
                              description=__doc__.split("\n", 1)[1].strip().replace("``", ""))
    p.add_argument("--config", type=Path, help="the line file: read the alarms of its state folder (service.state_dir)")
    p.add_argument("--state-dir", type=Path, help="with --config: override service.state_dir")
    p.add_argument("--db", help="the alarm engine's SQLite file itself (default: the line's with --config, else "
                                "FACTORY_COPILOT_ALARMS_DB, else the demo's var/demo/alarms.db); or a site's "
                                "PostgreSQL store, postgresql://ROLE@HOST:PORT/DB: the alarms and alarm events every "
                                "line's store station wrote there, each with its line (a role that may read the "
                                "store's tables; the password in ~/.pgpass or PGPASSWORD)")
    p.add_argument("--line", help="with a PostgreSQL --db: only this line's rows (site/line, as its line file names "
                                  "them), through the session views its own store reads")
    p.add_argument("--from-store", action="store_true",
                   help="with --config: read the line's rows in the PostgreSQL store its line file names (store.url) "
                        "instead of its alarm engine file")
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


def _site(args: argparse.Namespace) -> SiteHistory | None:
    """The site's PostgreSQL store when asked for one (``--db URL``, ``--config --from-store``), else None."""
    if args.from_store:
        if args.config is None:
            raise SystemExit("error: --from-store reads the store a line file names: give --config LINE.yaml")
        line = load_line(args.config)
        if line.store is None:
            raise SystemExit(f"error: {args.config}: names no PostgreSQL store (store.url); its alarms are in its "
                             "alarm engine file (drop --from-store)")
        if args.line and args.line != line_id(line):
            raise SystemExit(f"error: --from-store reads {line_id(line)}'s rows (its line file's); another line's "
                             "are read with --db URL --line")
        url, scope = line.store.url, line_id(line)
    elif is_url(args.db):
        url, scope = args.db, args.line
    else:
        if args.line:
            raise SystemExit("error: --line picks a line of a site's PostgreSQL store (--db postgresql://...); "
                             "an alarm engine file holds one line")
        return None
    try:
        history = SiteHistory(url, scope)
    except (FileNotFoundError, RuntimeError) as exc:  # no store tables there, a newer schema, no psycopg
        raise SystemExit(f"error: {exc}") from None
    print(f"alarm history of {history.where} ({f'line {scope}' if scope else 'every line'}; the store stations' "
          "copy of the engines' events)", file=sys.stderr)
    return history


def _open(args: argparse.Namespace) -> Journal | None:
    db, whose = _db(args)
    elsewhere = "--config LINE.yaml reads a line's state folder, --db FILE any file"
    if db != ":memory:" and not Path(db).exists():
        print(f"error: {db} ({whose}): no alarm engine file here; {elsewhere}", file=sys.stderr)
        return None
    print(f"alarms of {db} ({whose}; {elsewhere})", file=sys.stderr)
    return Journal(db)


def _list(args: argparse.Namespace) -> int:
    site = _site(args)
    if site is not None:
        with site:
            # the normal ones only with --all: a site's month holds thousands a line (alarms_standing skips them)
            by_line = [(x.line, x.alarm) for x in site.alarms(site.line, include_normal=args.all)]
    else:
        journal = _open(args)
        if journal is None:
            return 2
        try:
            by_line = [(None, s.alarm) for s in journal.load_alarms()]
        finally:
            journal.close()
    if not args.all:
        by_line = [(ln, a) for ln, a in by_line if a.state is not AlarmState.NORMAL]
    by_line.sort(key=lambda la: (la[0] or "", la[1].priority.value, la[1].state.acknowledged, -la[1].raised_at))
    if args.json:
        for ln, a in by_line:
            print(json.dumps(a.to_dict() if ln is None else {"line": ln, **a.to_dict()}))
        return 0
    folded = 0
    lines = sorted({ln for ln, _ in by_line}, key=lambda ln: ln or "")
    width = max((len(printable(ln)) for ln in lines if ln), default=0)
    for ln in lines:  # one line's alarms fold among themselves: an alarm id names an alarm of its line only
        alarms = [a for other, a in by_line if other == ln]
        column = f"{printable(ln):<{width}}  " if ln else ""
        for situation in fold(alarms):  # each root, then the consequences folded under it
            print(column + _line(situation.root))
            for c in situation.consequences:
                print(column + _line(c, "  └ "))
            folded += len(situation.consequences)
    across = f" on {len([ln for ln in lines if ln])} line(s)" if site is not None else ""
    print(f"{len(by_line)} alarm(s){across}" + (f", {folded} folded under their cause" if folded else ""))
    return 0


def _line(a, indent: str = "") -> str:
    flags = [f for f, on in (("shelved", a.shelved_until), ("suppressed", a.suppressed and not a.parent_id),
                             ("out-of-service", a.out_of_service)) if on]
    extra = f" [{', '.join(flags)}]" if flags else ""
    return (f"{_when(a.raised_at)}  {indent}{a.priority.name:<8} {a.state.value:<24} {printable(a.alarm_id)}  "
            f"{printable(a.message, 500)}{extra}")


def _audit(args: argparse.Namespace) -> int:
    since = None
    if args.since_min is not None:
        since = dt.datetime.now(dt.timezone.utc).timestamp() - 60 * args.since_min
    site = _site(args)
    if site is not None:
        with site:
            events = [(x.line, x.event) for x in site.audit(site.line, args.alarm, since, args.limit)]
    else:
        journal = _open(args)
        if journal is None:
            return 2
        try:
            events = [(None, e) for e in journal.audit(args.alarm, since, args.limit)]
        finally:
            journal.close()
    width = max((len(printable(ln)) for ln, _ in events if ln), default=0)
    for ln, e in events:
        if args.json:
            print(json.dumps(e.to_dict() if ln is None else {"line": ln, **e.to_dict()}))
            continue
        # actor, comment and ids came from outside: printed escaped, so a newline cannot forge a row
        # nor an ANSI escape repaint the reader's terminal (the file keeps them as they came, as data)
        who = f" by {printable(e.actor, 100)}" if e.actor else ""
        note = f" — {printable(e.comment, 1000)}" if e.comment else ""
        column = f"{printable(ln):<{width}}  " if ln else ""
        print(f"{column}{_when(e.ts)}  {printable(e.alarm_id):<40} {printable(e.event):<18} -> {e.state.value}{who}"
              f"{note}")
    return 0
