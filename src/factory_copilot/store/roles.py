"""Who may read and write which line's rows in a site's PostgreSQL store: a role per line, and the site's readers.

Run by the tables' owner. ``grant_line`` binds a role to one line (``line_roles``; row-level security, schema
version 2, then shows it that line's rows only) and grants it the tables; ``grant_reader`` makes a role a member
of the site reader role, which reads every line's rows and writes none. Each returns what it did, one sentence a
step, for the command to print.
"""

from __future__ import annotations

import re

from factory_copilot.plumbing import postgres
from factory_copilot.store.schema import COMPONENT, PG_MIGRATIONS, PG_TABLES, SITE_READER_ROLE

_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # a plain identifier: never quoted into something else


def _check_name(role: str) -> None:
    if not _ROLE.fullmatch(role):
        raise ValueError(f"role {role!r}: give a PostgreSQL name of lower-case letters, digits and _ (at most 63)")


def _role(conn: postgres.Connection, role: str) -> tuple | None:
    """(superuser or BYPASSRLS, owns or inherits the tables' owner, inherits the site reader) of ``role``, or None."""
    return conn.execute(
        "SELECT r.rolsuper OR r.rolbypassrls, pg_has_role(r.oid, c.relowner, 'USAGE'), EXISTS (SELECT FROM pg_roles g "
        "WHERE g.rolname = ? AND pg_has_role(r.oid, g.oid, 'USAGE')) FROM pg_roles r, pg_class c "
        "WHERE r.rolname = ? AND c.oid = 'alarms'::regclass", (SITE_READER_ROLE, role)).fetchone()


def _create_login(conn: postgres.Connection, role: str, done: list[str]) -> None:
    conn.execute(f'CREATE ROLE "{role}" LOGIN')
    done.append(f"created role {role} (LOGIN, no password yet: the owner sets one, ALTER ROLE {role} PASSWORD "
                "'...', or \\password in psql; the line's host keeps it in ~/.pgpass)")


def _grant_tables(conn: postgres.Connection, grantee: str, privileges: str) -> None:
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    tables = ", ".join(f'"{schema}"."{t}"' for t in PG_TABLES)
    conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{grantee}"; GRANT {privileges} ON {tables} TO "{grantee}"')


def grant_line(url: str, line: str, role: str) -> list[str]:
    """Bind ``role`` (made a LOGIN role when there is none) to ``line`` and let it read and write that line's rows."""
    _check_name(role)
    if not line or "/" not in line:
        raise ValueError(f"line {line!r}: give SITE/LINE, the site and line its line file names")
    conn = postgres.Connection(url)
    done: list[str] = []
    try:
        postgres.migrate(conn, PG_MIGRATIONS, COMPONENT)  # the owner's connection: the tables, with their policies
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('factory-copilot roles'))")
            found = _role(conn, role)
            if found is None:
                _create_login(conn, role, done)
            else:
                unrestricted, owner, reader = found
                if unrestricted or owner:
                    what = "a superuser or BYPASSRLS" if unrestricted else "the store tables' owner (or a member of it)"
                    raise postgres.WrongRole(f"role {role} is {what}: row-level security cannot hold it to one line; "
                                             "give the line a role of its own")
                if reader:
                    raise postgres.WrongRole(f"role {role} is a member of {SITE_READER_ROLE}, which reads every "
                                             "line: give the line a role of its own")
            row = conn.execute("SELECT line FROM line_roles WHERE role = ?", (role,)).fetchone()
            if row is not None and row[0] != line:
                raise postgres.WrongRole(f"role {role} is bound to line {row[0]} already; give line {line} a role "
                                         "of its own")
            _grant_tables(conn, role, "SELECT, INSERT, UPDATE, DELETE")
            done.append(f"granted role {role} SELECT, INSERT, UPDATE, DELETE on the store's tables "
                        f"({', '.join(PG_TABLES)})")
            if row is None:
                conn.execute("INSERT INTO line_roles(role, line) VALUES (?, ?)", (role, line))
                done.append(f"bound role {role} to line {line}: row-level security shows it that line's rows only")
            else:
                done.append(f"role {role} was bound to line {line} already")
    finally:
        conn.close()
    return done


def grant_reader(url: str, role: str) -> list[str]:
    """Make ``role`` (a LOGIN role when there is none) a site reader: every line's rows to read, none to write."""
    _check_name(role)
    conn = postgres.Connection(url)
    done: list[str] = []
    try:
        postgres.migrate(conn, PG_MIGRATIONS, COMPONENT)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('factory-copilot roles'))")
            if conn.execute("SELECT FROM pg_roles WHERE rolname = ?", (SITE_READER_ROLE,)).fetchone() is None:
                conn.execute(f'CREATE ROLE "{SITE_READER_ROLE}" NOLOGIN')
                done.append(f"created role {SITE_READER_ROLE} (NOLOGIN): its members read every line's rows")
            _grant_tables(conn, SITE_READER_ROLE, "SELECT")
            done.append(f"granted {SITE_READER_ROLE} SELECT on the store's tables, and nothing else")
            if conn.execute("SELECT line FROM line_roles WHERE role = ?", (role,)).fetchone() is not None:
                raise postgres.WrongRole(f"role {role} is bound to a line: a line's role reads that line only; give "
                                         "the site reader a role of its own")
            if _role(conn, role) is None:
                _create_login(conn, role, done)
            conn.execute(f'GRANT "{SITE_READER_ROLE}" TO "{role}"')
            done.append(f"made role {role} a member of {SITE_READER_ROLE}")
    finally:
        conn.close()
    return done
