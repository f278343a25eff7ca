"""Sub-commands ``store`` (look into and prune the store file) and ``dashboard`` (serve the operator page, or the
site page over many lines' files)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from factory_copilot.config import REPO_ROOT, SIMULATED_LINE
from factory_copilot.store.site import is_url

DASHBOARD_APP = REPO_ROOT / "dashboards" / "app.py"


def dashboard_command(db: str | Path, line: str | Path, mqtt_host: str | None, mqtt_port: int = 1883,
                      mqtt_protocol: str = "5", port: int = 8501, address: str = "127.0.0.1",
                      site: list[str | Path] | None = None) -> list[str]:
    """The ``streamlit run`` command line that serves the dashboard on ``address:port`` (with ``site``: the site
    page over those line files, each line's operator page at ``?line=SITE/LINE``)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(DASHBOARD_APP), "--server.headless", "true",
           "--server.port", str(port), "--server.address", address, "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none",  # an operator's page does not reload when a file changes
           "--client.toolbarMode", "viewer",  # an operator's page: no Deploy button, no developer menu
           # no full garbage collection after every fragment rerun (40 % of the server's CPU with two pages open)
           "--runner.postScriptGC", "false", "--",
           "--db", str(db), "--line", str(line)]
    if site:
        cmd += ["--site", *map(str, site)]
    if mqtt_host:
        cmd += ["--mqtt-host", mqtt_host, "--mqtt-port", str(mqtt_port), "--mqtt-protocol", mqtt_protocol]
    return cmd


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="look into the store file (or the site's PostgreSQL store): row counts, "
                                     "retention, false alarms")
    p.add_argument("--db", required=True,
                   help="store file (SQLite), or the site's PostgreSQL store postgresql://ROLE@HOST:PORT/DB (the "
                        "password in ~/.pgpass or PGPASSWORD): stats of every line without --line (a role that may "
                        "read every line's rows), one line's with it")
    p.add_argument("--line", help="with a PostgreSQL --db: this line's rows only (site/line, as its line file names "
                                  "them), through the session views its own store uses; prune and false-alarms need it")
    p.add_argument("action", choices=["stats", "prune", "false-alarms", "grant-line", "grant-reader"],
                   help="stats: rows per table; prune: apply retention now; false-alarms: windows marked false; on a "
                        "site's PostgreSQL store, as the tables' owner: grant-line binds --role to --line (it sees "
                        "and writes that line's rows only), grant-reader makes --role a site reader (reads every "
                        "line, writes none)")
    p.add_argument("--role", help="for grant-line and grant-reader: the PostgreSQL role (made, LOGIN, when missing)")
    p.add_argument("--since-hours", type=float, default=24 * 7, help="for false-alarms (default one week)")
    p.set_defaults(func=run_store)

    d = sub.add_parser("dashboard", help="serve the operator dashboard (Streamlit) on 127.0.0.1, or the site page")
    d.add_argument("--db", help="store file the service writes, or the site's PostgreSQL store (postgresql://...; "
                                "a line file with store.url is read there anyway); optional with --site")
    d.add_argument("--line", default=str(SIMULATED_LINE), help="line file (for names, units and normal bands)")
    d.add_argument("--mqtt-host", help="broker for live alarms and commands (omit: read-only from the store)")
    d.add_argument("--mqtt-port", type=int, default=1883)
    d.add_argument("--mqtt-protocol", default="5", choices=["5", "3.1.1"])
    d.add_argument("--port", type=int, default=8501, help="HTTP port of the page (default 8501)")
    d.add_argument("--site", nargs="+", metavar="LINE.yaml",
                   help="the site page over these line files, --mqtt-host the site broker (docs/site.md)")
    d.set_defaults(func=run_dashboard)


def _site_stats(url: str) -> dict[str, dict[str, int]]:
    """Rows per table of every line in a site's store: ``{line: {table: rows}}``."""
    from factory_copilot.plumbing import postgres
    from factory_copilot.store.schema import COMPONENT, PG_MIGRATIONS
    from factory_copilot.store.store import check_reader

    conn = postgres.Connection(url, setup=lambda c: check_reader(c, url), read_only=True)
    try:
        postgres.check_version(conn, len(PG_MIGRATIONS), COMPONENT)
        out: dict[str, dict[str, int]] = {}
        for table in STATS_TABLES:
            for line, n in conn.execute(f"SELECT line, count(*) FROM {table} GROUP BY line").fetchall():
                out.setdefault(line, dict.fromkeys(STATS_TABLES, 0))[table] = n
        return dict(sorted(out.items()))
    finally:
        conn.close()


STATS_TABLES = ["readings_raw", "trend", "anomalies", "alarms", "alarm_events", "diagnoses", "conversations",
                "feedback", "handovers"]


def _open(args: argparse.Namespace):
    """The store ``--db`` names: a SQLite file, or one line of a site's PostgreSQL store."""
    from factory_copilot.store import Store
    from factory_copilot.store.store import PostgresStore

    if not is_url(args.db):
        return Store(args.db)
    PostgresStore.reader(args.db, args.line).close()  # the schema is there: a prune never creates the tables
    return PostgresStore(args.db, args.line) if args.action == "prune" else PostgresStore.reader(args.db, args.line)


def run_store(args: argparse.Namespace) -> int:
    try:
        return _run_store(args)
    except (FileNotFoundError, RuntimeError) as exc:  # no store tables there, a newer schema, no psycopg
        if not is_url(args.db):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _grant(args: argparse.Namespace) -> int:
    """``grant-line`` / ``grant-reader``: print each step done."""
    from factory_copilot.store.roles import grant_line, grant_reader

    if not is_url(args.db) or args.role is None or (args.action == "grant-line") != (args.line is not None):
        need = "--line SITE/LINE --role ROLE" if args.action == "grant-line" else "--role ROLE (and no --line)"
        print(f"error: store {args.action} acts on a site's PostgreSQL store (--db postgresql://OWNER@...) and needs "
              f"{need}", file=sys.stderr)
        return 2
    try:
        done = grant_line(args.db, args.line, args.role) if args.line else grant_reader(args.db, args.role)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for step in done:
        print(step)
    return 0


def _run_store(args: argparse.Namespace) -> int:
    if args.action.startswith("grant-"):
        return _grant(args)
    if is_url(args.db):
        if args.line is None and args.action == "stats":
            print(json.dumps(_site_stats(args.db), indent=2))
            return 0
        if args.line is None:
            print(f"error: store {args.action} on a site's PostgreSQL store acts on one line: give --line SITE/LINE",
                  file=sys.stderr)
            return 2
    elif args.line is not None:
        print(f"error: --line picks a line of a site's PostgreSQL store; {args.db} is a store file of one line",
              file=sys.stderr)
        return 2
    elif not Path(args.db).exists():
        print(f"error: {args.db}: no such store file", file=sys.stderr)
        return 2
    with _open(args) as store:
        if args.action == "stats":
            out = store.counts()
        elif args.action == "prune":
            out = store.enforce_retention()
        else:
            out = [
                {"alarm_id": f.alarm_id, "asset": f.asset, "condition": f.condition, "start": f.start, "end": f.end,
                 "marked_by": f.actor, "anomalies": len(f.anomalies)}
                for f in store.false_alarms(time.time() - args.since_hours * 3600)
            ]
    print(json.dumps(out, indent=2))
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    if not args.db and not args.site:
        print("error: dashboard: give the store file (--db) of the line, or --site with the site's line files",
              file=sys.stderr)
        return 2
    cmd = dashboard_command(args.db or "data/factory-copilot.db", args.line, args.mqtt_host, args.mqtt_port,
                            args.mqtt_protocol, args.port, site=args.site)
    print(f"Dashboard: http://127.0.0.1:{args.port}", flush=True)
    return subprocess.call(cmd, env=os.environ.copy())
