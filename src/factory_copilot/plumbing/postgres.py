"""One home for PostgreSQL: connect, bring a component's schema up to date, and speak to it like ``plumbing/sqlite.py``.

A ``Connection`` takes the SQL the SQLite code writes (``?`` placeholders, ``execute``/``executemany``,
``transaction()``), reconnects after the server went away, and turns a lost server into ``Unavailable`` (a
``ConnectionError``) so a caller can keep its batch and try again. psycopg is the optional extra ``site``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from factory_copilot.errors import Transient

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5  # a server that does not answer is unavailable, not a hung station


class Unavailable(Transient, ConnectionError):
    """The database server cannot be reached now (down, restarting, network): the same write may succeed later."""


class WrongRole(PermissionError):
    """The role a URL logs in as may not act for this line (bound to another, or to none): no retry will help."""


class BadUrl(ValueError):
    """A database URL that cannot name a server (a malformed port, an unknown option): no retry will help."""


def check_url(url: str) -> None:
    """``BadUrl`` (naming the URL without its password) unless libpq can read ``url``."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except Exception as exc:  # psycopg.ProgrammingError: libpq's own words on what is wrong
        raise BadUrl(f"{where(url)}: not a PostgreSQL URL libpq can read: {str(exc).strip()}") from None
    port = str(params.get("port") or "")
    if port and not all(p.strip().isdigit() for p in port.split(",")):
        raise BadUrl(f"{where(url)}: port {port!r} is not a number")


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise RuntimeError("a PostgreSQL store needs psycopg: pip install 'factory-copilot[site]'") from None
    return psycopg


def placeholders(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled); the store's SQL has no ``?`` in text."""
    return sql.replace("%", "%%").replace("?", "%s")


class Connection:
    """A psycopg connection used like the store's sqlite3 one; ``setup(conn)`` runs on every (re)connect.

    Not thread-safe on its own: used under ``plumbing.sqlite.Locked`` as the SQLite connections are.
    """

    def __init__(self, url: str, setup: Callable[[Any], None] | None = None,
                 translate: Callable[[str], str] = placeholders, read_only: bool = False):
        self.url = url
        self.setup = setup
        self.translate = translate
        self.read_only = read_only
        self._conn: Any = None
        self._guarded = 0

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            psycopg = _psycopg()
            check_url(self.url)
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                   application_name="factory-copilot")
            try:
                if self.setup:
                    self.setup(conn)
                if self.read_only:  # after setup, which may make session objects (temporary views)
                    conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """A lost server as ``Unavailable`` (the connection dropped: the next call connects again); once per call."""
        if self._guarded:
            yield  # inside a transaction: its guard says what happened
            return
        psycopg = _psycopg()
        self._guarded += 1
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise Unavailable(f"{where(self.url)}: {first}") from exc
        finally:
            self._guarded -= 1

    def open(self) -> "Connection":
        """Connect now (and run ``setup``), rather than at the first statement: a refusal shows at start."""
        with self._guard():
            self._connect()
        return self

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._guard():
            if not params:  # sent as it is: a script of several statements (a migration) goes in one round trip
                return self._connect().execute(self.translate(sql).replace("%%", "%"))
            return self._connect().execute(self.translate(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._guard():
            with self._connect().cursor() as cur:
                cur.executemany(self.translate(sql), rows)

    @contextmanager
    def transaction(self) -> Iterator["Connection"]:
        """One transaction: committed, or rolled back (by the server, when the connection was lost)."""
        with self._guard():
            with self._connect().transaction():
                yield self

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection: nothing left to tell
                pass
            self._conn = None


def where(url: str) -> str:
    """The URL without a password, for messages and logs (nor its query: a misspelt ``password=`` is still one)."""
    base, query, _ = url.partition("?")
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", base) + ("?..." if query else "")


def migrate(conn: Connection, migrations: Sequence[str], component: str) -> int:
    """Apply the not yet applied ``migrations`` of ``component`` (as ``plumbing.sqlite.open_db`` does); its version.

    Several services may start at once against one database: an advisory lock lets one migrate while the others
    wait, then find the work done. A schema already at this version is only read: a role that may not change the
    tables (a line's, under row-level security) opens it all the same.
    """
    found = _version(conn, component)
    if found == len(migrations):
        return len(migrations)
    try:
        _migrate(conn, migrations, component)
    except Exception as exc:
        if type(exc).__name__ != "InsufficientPrivilege":
            raise
        first = str(exc).strip().splitlines()[0]
        has = "no tables" if found is None else f"version {found}"
        raise WrongRole(f"{where(conn.url)}: {component} schema: the database has {has}, this software wants version "
                        f"{len(migrations)}, and this role may not make it so ({first}): the tables' owner does, once "
                        "(factory-copilot store grant-line --db OWNER_URL ... does it)") from None
    return len(migrations)


def _migrate(conn: Connection, migrations: Sequence[str], component: str) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('factory-copilot schema'))")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version WHERE component=?", (component,)).fetchone()
        current = row[0] if row else 0
        if current > len(migrations):
            raise RuntimeError(f"{where(conn.url)}: {component} schema is version {current}, newer than this software "
                               f"knows ({len(migrations)})")
        for version in range(current, len(migrations)):
            conn.execute(migrations[version])  # one script, one round trip; inside this transaction
            conn.execute("INSERT INTO schema_version(component, version) VALUES(?, ?) "
                         "ON CONFLICT(component) DO UPDATE SET version=excluded.version", (component, version + 1))
            log.info("%s: %s schema migrated to version %d", where(conn.url), component, version + 1)


def _version(conn: Connection, component: str) -> int | None:
    """The schema version of ``component`` in the database, or None when it has none."""
    try:
        row = conn.execute("SELECT version FROM schema_version WHERE component=?", (component,)).fetchone()
    except Exception as exc:
        if isinstance(exc, Unavailable) or type(exc).__name__ != "UndefinedTable":
            raise
        return None
    return None if row is None else row[0]


def check_version(conn: Connection, known_versions: int, component: str) -> None:
    """For a connection that only reads: the schema must be there, at the version this software knows."""
    version = _version(conn, component)
    if version is None:
        raise FileNotFoundError(f"{where(conn.url)}: holds no {component} tables (has the service run with this "
                                "store url?)")
    if version != known_versions:
        newer = version > known_versions
        raise RuntimeError(f"{where(conn.url)}: {component} schema is version {version}, "
                           + (f"newer than this software knows ({known_versions})" if newer else
                              f"older than this software's {known_versions}: start the service once, it migrates it"))
