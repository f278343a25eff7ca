"""The store: one SQLite file (or a site's PostgreSQL database) holding what the line did and what people said about it.

Readings are kept raw for a few minutes and downsampled into per-signal buckets
(mean/min/max) for trends; anomalies, alarms with their event history,
diagnoses, conversations and operator feedback sit beside them. Writes are
batched in transactions; every table has its own retention. Each subject has its
own module: ``trends.py``, ``alarm_history.py``, ``incidents.py``, ``handovers.py``; ``Store`` is all
of them: writes on one connection, reads on a second (WAL), so a long batch or retention sweep never holds up
a look-up (``Store.reader`` only reads, beside the service that writes). ``PostgresStore`` is the same store in a
PostgreSQL database that every line of a site writes to, each line seeing its own rows; ``open_store`` opens the
one a line file names.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory_copilot.plumbing import postgres
from factory_copilot.plumbing.sqlite import Locked, open_db, open_reader, transaction
from factory_copilot.records import AlarmState
from factory_copilot.store.alarm_history import AlarmHistory
from factory_copilot.store.handovers import Handovers
from factory_copilot.store.incidents import IncidentRecords
from factory_copilot.store.schema import COMPONENT, MIGRATIONS, PG_MIGRATIONS, PG_TABLES
from factory_copilot.store.trends import Trends

if TYPE_CHECKING:
    from factory_copilot.config import LineConfig, ServicePaths

log = logging.getLogger(__name__)

DAY = 86_400.0


@dataclass(slots=True)
class Retention:
    """How long each table keeps rows, in seconds; None keeps them for ever."""

    readings_raw: float | None = 15 * 60.0
    trend: float | None = 14 * DAY
    anomalies: float | None = 30 * DAY
    alarm_events: float | None = 180 * DAY
    alarms: float | None = 180 * DAY  # only alarms back to normal are removed
    diagnoses: float | None = 180 * DAY
    conversations: float | None = 180 * DAY
    feedback: float | None = None  # incident memory: kept unless asked otherwise
    handovers: float | None = 365 * DAY


class Store(Trends, AlarmHistory, IncidentRecords, Handovers):
    """SQLite store; thread-safe (a write connection and a read connection, each under its own lock); open several
    on one file from several processes."""

    def __init__(self, path: str | Path, bucket_s: float = 5.0, retention: Retention | None = None, *,
                 read_only: bool = False):
        self._settings(bucket_s, retention)
        self.path = str(path)
        conn = open_reader(self.path, len(MIGRATIONS), COMPONENT) if read_only else open_db(self.path, MIGRATIONS, COMPONENT)
        self._db = Locked(conn)
        # reads see the last committed state (WAL) without waiting for the writer's lock; one in-memory database
        # cannot be opened twice, and a reader has nothing to wait for
        shared = read_only or self.path == ":memory:"
        self._reads = self._db if shared else Locked(open_reader(self.path, len(MIGRATIONS), COMPONENT))

    def _settings(self, bucket_s: float, retention: Retention | None) -> None:
        if bucket_s <= 0:
            raise ValueError("store bucket_s must be > 0")
        self.bucket_s = float(bucket_s)
        self.max_raw_points = 20_000  # above this many samples in a window, trend(resolution="auto") uses buckets
        self.retention = retention or Retention()

    # SQL that differs between SQLite and PostgreSQL; the rest of the store's SQL is written once
    def _json(self, column: str, key: str, kind: str = "text") -> str:
        """A field of a JSON text column (``kind`` text, number or boolean, for PostgreSQL's cast)."""
        return f"json_extract({column}, '$.{key}')"

    def _json_items(self, column: str) -> str:
        """The elements of a JSON array text column, as a table with one column, ``value`` (for ``FROM``)."""
        return f"json_each({column})"

    def _span_index(self) -> str:
        """Which of the equal spans from ``?`` of width ``?`` a bucket falls in (0, 1, ...)."""
        return "CAST((bucket - ?) / ? AS INTEGER)"

    def _latest_sql(self, where: str) -> str:
        """Newest raw row per asset and signal: asset, signal, ts, value, quality."""
        return f"SELECT asset, signal, max(ts), value, quality FROM readings_raw{where} GROUP BY asset, signal"

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        """The write connection, in one transaction (taken at once: concurrent writers wait their turn)."""
        with self._db as conn, transaction(conn):
            yield conn

    @classmethod
    def reader(cls, path: str | Path, bucket_s: float = 5.0) -> "Store":
        """A store that only reads (its own connection, ``query_only``), beside the service that writes the file."""
        return cls(path, bucket_s, read_only=True)

    def close(self) -> None:
        if self._reads is not self._db:
            with self._reads as conn:
                conn.close()
        with self._db as conn:
            conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_many(self, sql: str, rows: list[tuple]) -> None:
        if not rows:
            return
        with self._writing() as conn:
            conn.executemany(sql, rows)

    def enforce_retention(self, now: float | None = None) -> dict[str, int]:
        """Delete rows older than each table's retention; returns rows deleted per table."""
        now = time.time() if now is None else now
        r = self.retention
        plan = [
            ("readings_raw", "ts", r.readings_raw, ""),
            ("trend", "bucket", r.trend, ""),
            ("anomalies", "ts", r.anomalies, ""),
            ("alarm_events", "ts", r.alarm_events, ""),
            ("alarms", "updated_at", r.alarms, f" AND state = '{AlarmState.NORMAL.value}'"),
            ("diagnoses", "created_at", r.diagnoses, ""),
            ("conversations", "ts", r.conversations, ""),
            ("feedback", "ts", r.feedback, ""),
            ("handovers", '"end"', r.handovers, ""),
        ]
        deleted: dict[str, int] = {}
        with self._db as conn:
            for table, column, keep_s, extra in plan:
                if keep_s is None:
                    continue
                cur = conn.execute(f"DELETE FROM {table} WHERE {column} < ?{extra}", (now - keep_s,))
                deleted[table] = cur.rowcount
        if any(deleted.values()):
            log.info("store retention removed %s", {k: v for k, v in deleted.items() if v})
        return deleted

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._reads as conn:
            return conn.execute(sql, params).fetchall()

    def counts(self) -> dict[str, int]:
        """Rows per table (for status pages and tests)."""
        tables = ["readings_raw", "trend", "anomalies", "alarms", "alarm_events", "diagnoses", "conversations",
                  "feedback", "handovers"]
        return {t: self._rows(f"SELECT count(*) FROM {t}")[0][0] for t in tables}


class PostgresStore(Store):
    """The store in a PostgreSQL database shared by the lines of a site; this one reads and writes ``line``'s rows.

    Each connection (one writes, one reads) gets session views (``pg_temp``, searched first) named like the
    tables: that line's rows only, and a row written through them carries the line. So the store's SQL is
    the SQLite store's, and no query can see or delete another line's rows. A lost server is
    ``plumbing.postgres.Unavailable``; the next call connects again. ``patient``: a server away when the store is
    opened is not an error either (a line's service alarms without its site); the schema is brought up to date by
    the first connection that reaches it.
    """

    def __init__(self, url: str, line: str, bucket_s: float = 5.0, retention: Retention | None = None, *,
                 read_only: bool = False, patient: bool = False):
        self._settings(bucket_s, retention)
        if not line:
            raise ValueError("a PostgreSQL store needs the line its rows belong to")
        self.url, self.line, self.path = url, line, postgres.where(url)
        self._reads_only = read_only
        if read_only:
            conn = self._connection(read_only=True)
            try:
                postgres.check_version(conn, len(PG_MIGRATIONS), COMPONENT)
            except BaseException:
                conn.close()
                raise
        else:
            self._schema_lock = threading.Lock()
            self._schema_ready = False
            conn = self._connection()
            try:
                self._ensure_schema()
                conn.open()  # a role that may not act for this line is refused now, not at the first write
            except postgres.Unavailable as exc:
                if not patient:
                    raise
                log.warning("store: database unavailable at start (%s); the line runs on, and its store writes "
                            "once it is back", exc)
        self._db = Locked(conn)
        # reads on their own connection: MVCC shows them the last commit while a batch is being written
        self._reads = self._db if read_only else Locked(self._connection(read_only=True))

    @classmethod
    def reader(cls, url: str, line: str, bucket_s: float = 5.0) -> "PostgresStore":  # type: ignore[override]
        return cls(url, line, bucket_s, read_only=True)

    def _connection(self, read_only: bool = False) -> postgres.Connection:
        return postgres.Connection(self.url, setup=self._line_views, translate=_pg_sql, read_only=read_only)

    def _ensure_schema(self) -> None:
        """Migrate the tables, once per store (several lines starting at once take turns: ``migrate``'s lock)."""
        with self._schema_lock:
            if self._schema_ready:
                return
            schema = postgres.Connection(self.url)
            try:
                postgres.migrate(schema, PG_MIGRATIONS, COMPONENT)
            finally:
                schema.close()
            self._schema_ready = True

    def _line_views(self, conn: Any) -> None:
        if not getattr(self, "_schema_ready", True):  # opened while the server was away: the tables first
            self._ensure_schema()
        check_role(conn, self.url, self.line, read_only=self._reads_only)
        line_views(conn, self.line)

    def _json(self, column: str, key: str, kind: str = "text") -> str:
        cast = {"text": "", "number": "::double precision", "boolean": "::boolean"}[kind]
        return f"(({column})::jsonb ->> '{key}'){cast}"

    def _json_items(self, column: str) -> str:
        return f"json_array_elements_text(({column})::json) AS items(value)"

    def _span_index(self) -> str:
        return "CAST(floor((bucket - ?) / ?) AS INTEGER)"

    def _latest_sql(self, where: str) -> str:
        return (f"SELECT DISTINCT ON (asset, signal) asset, signal, ts, value, quality FROM readings_raw{where} "
                "ORDER BY asset, signal, ts DESC")

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        with self._db as conn, conn.transaction():
            yield conn


_unrestricted_warned: set[tuple[str, str]] = set()


def check_role(conn: Any, url: str, line: str, read_only: bool = False) -> None:
    """On a psycopg connection: ``postgres.WrongRole`` unless its role may act for ``line`` (``line_roles`` binds
    it to that line; a site reader may read it); a role row-level security does not hold (a superuser, BYPASSRLS)
    passes, with a warning once: only the session views keep its lines apart."""
    from factory_copilot.store.schema import SITE_READER_ROLE

    if conn.execute("SELECT to_regclass('line_roles')").fetchone()[0] is None:
        return  # a schema older than row-level security: the version check says so
    role, unrestricted, bound, reader = conn.execute(
        "SELECT current_user, r.rolsuper OR r.rolbypassrls, (SELECT b.line FROM line_roles b WHERE b.role = "
        "current_user), EXISTS (SELECT FROM pg_roles g WHERE g.rolname = %s AND pg_has_role(current_user, g.oid, "
        "'USAGE')) FROM pg_roles r WHERE r.rolname = current_user", (SITE_READER_ROLE,)).fetchone()
    if bound == line or (read_only and reader):
        return
    where = postgres.where(url)
    if unrestricted:
        if (where, line) not in _unrestricted_warned:
            _unrestricted_warned.add((where, line))
            log.warning("store %s: role %s passes by row-level security (superuser or BYPASSRLS): line %s is kept "
                        "apart from the others by this software only; give it a role of its own (docs/site.md, "
                        "\"Who reads what\")", where, role, line)
        return
    fix = f"the tables' owner binds one: factory-copilot store grant-line --db OWNER_URL --line {line} --role ROLE"
    if bound is None:
        raise postgres.WrongRole(f"{where}: role {role} is bound to no line, so it may not act for line {line}; {fix}")
    raise postgres.WrongRole(f"{where}: role {role} is bound to line {bound}, not to line {line} (the line file's "
                             f"site/line); each line has a role of its own: {fix}")


def check_reader(conn: Any, url: str) -> None:
    """On a psycopg connection: ``postgres.WrongRole`` unless its role reads every line's rows (a member of the site
    reader role, or one that row-level security does not hold): the policies show any other role no line's rows,
    or its own line's only, and a site-wide count of those would mislead."""
    from factory_copilot.store.schema import SITE_READER_ROLE

    if conn.execute("SELECT to_regclass('line_roles')").fetchone()[0] is None:
        return  # a schema older than row-level security: the version check says so
    role, every_line = conn.execute(
        "SELECT current_user, r.rolsuper OR r.rolbypassrls OR EXISTS (SELECT FROM pg_roles g WHERE g.rolname = %s "
        "AND pg_has_role(current_user, g.oid, 'USAGE')) FROM pg_roles r WHERE r.rolname = current_user",
        (SITE_READER_ROLE,)).fetchone()
    if not every_line:
        raise postgres.WrongRole(f"{postgres.where(url)}: role {role} is no site reader, so row-level security "
                                 "shows it no other line's rows; the tables' owner makes it one: factory-copilot "
                                 f"store grant-reader --db OWNER_URL --role {role} (or give --line for one line's)")


def line_views(conn: Any, line: str) -> None:
    """On a psycopg connection: session views named like the tables, showing and writing ``line``'s rows only."""
    from psycopg import sql

    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    literal = sql.Literal(line)
    script = sql.SQL(" ").join(
        sql.SQL("CREATE TEMP VIEW {view} AS SELECT * FROM {schema}.{table} WHERE line = {line} WITH CHECK OPTION; "
                "ALTER VIEW {view} ALTER COLUMN line SET DEFAULT {line};").format(
            view=sql.Identifier(t), schema=sql.Identifier(schema), table=sql.Identifier(t), line=literal)
        for t in PG_TABLES)
    conn.execute(script)


_CONFLICT = re.compile(r"ON CONFLICT\s*\(", re.I)


def _pg_sql(sql: str) -> str:
    """The store's SQL for its PostgreSQL tables: ``%s`` placeholders, and a row's key includes its line."""
    return _CONFLICT.sub("ON CONFLICT(line, ", postgres.placeholders(sql))


def line_id(line: "LineConfig") -> str:
    """What the rows of this line carry in a shared database: site/line, as the line file names them."""
    return f"{line.site}/{line.line}"


def open_store(line: "LineConfig", paths: "ServicePaths", *, read_only: bool = False, patient: bool = False,
               **kwargs: Any) -> Store:
    """The store the line file names: its ``store.url`` (PostgreSQL), else SQLite under its state directory;
    ``patient``: a database server away now is written when it is back (``PostgresStore``)."""
    if line.store is not None:
        return PostgresStore(line.store.url, line_id(line), read_only=read_only, patient=patient, **kwargs)
    return Store(paths.store, read_only=read_only, **kwargs)


def store_missing(line: "LineConfig", paths: "ServicePaths") -> str | None:
    """Why there is no store to read yet (a SQLite file not written), or None; a database says so when opened."""
    if line.store is None and not paths.store.is_file():
        return f"{paths.store}: no store file; the service writes it (check --state-dir)"
    return None
