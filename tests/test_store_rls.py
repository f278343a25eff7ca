"""Each line sees only its rows, by the server's rules (issue 22): a role per line and row-level security. A line's
role, querying the tables themselves with plain psycopg, can neither read, change, delete nor forge another
line's rows; a site reader reads every line and writes none; a line file whose role is bound to another line is
refused at start, naming the role and the line."""

from __future__ import annotations

import itertools
import re

import pytest

from factory_copilot.cli import main
from factory_copilot.plumbing.postgres import WrongRole
from factory_copilot.records import AlarmState, HandoverAck, Turn
from factory_copilot.store.schema import PG_TABLES
from factory_copilot.store.store import PostgresStore
from tests.test_store import T0, alarm_event
from tests.test_store_site import write_a_shift

psycopg = pytest.importorskip("psycopg")

_n = itertools.count(1)
A, B = "site-1/line-a", "site-1/line-b"


def as_role(url: str, role: str) -> str:
    return re.sub(r"//[^@/]+@", f"//{role}@", url)


@pytest.fixture
def site(pg_cluster, capsys):
    """A database of its own, lines a and b bound to roles of their own (roles are the cluster's: named per test),
    each line's shift written through its own role."""
    n = next(_n)
    url = pg_cluster.create_database(f"site_rls_{n}")
    roles = {A: f"rls{n}_line_a", B: f"rls{n}_line_b"}
    for line, role in roles.items():
        assert main(["store", "grant-line", "--db", url, "--line", line, "--role", role]) == 0
    said = capsys.readouterr().out
    assert f"bound role {roles[A]} to line {A}" in said and f"created role {roles[B]}" in said
    for value, (line, role) in enumerate(roles.items(), start=1):
        with PostgresStore(as_role(url, role), line) as store:  # the store's own SQL, under the policies
            write_a_shift(store, float(value))
            store.acknowledge_handover(HandoverAck("2023-11-14-morning", f"op-{value}", T0 + 5))
            for _ in range(2):  # the same answer twice: stored once (ON CONFLICT, under the policies)
                store.add_turns([Turn("A1", "copilot", f"answer {value}", T0 + 6, request_id="q-1")])
    return url, roles


def lines_in(conn, table: str) -> dict[str, int]:
    return dict(conn.execute(f"SELECT line, count(*) FROM {table} GROUP BY line").fetchall())


def test_a_line_role_reads_changes_and_deletes_its_own_rows_only(site):
    url, roles = site
    with psycopg.connect(url) as owner:  # the superuser who made the database sees both lines
        before = {t: lines_in(owner, t) for t in PG_TABLES}
    assert all(set(before[t]) == {A, B} for t in PG_TABLES), before
    with psycopg.connect(as_role(url, roles[A]), autocommit=True) as conn:
        for table in PG_TABLES:  # the tables themselves, no session views: line a's rows only
            assert lines_in(conn, table) == {A: before[table][A]}, table
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE line = %s", (B,)).fetchone()[0] == 0
            assert conn.execute(f"UPDATE {table} SET line = line WHERE line = %s", (B,)).rowcount == 0
        assert conn.execute("UPDATE alarms SET state = 'x'").rowcount == before["alarms"][A]
        assert conn.execute("DELETE FROM alarm_events").rowcount == before["alarm_events"][A]
        assert conn.execute("DELETE FROM readings_raw WHERE line <> %s", (A,)).rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("INSERT INTO alarm_events(line, alarm_id, ts, event, state, alarm) "
                         "VALUES (%s, 'A1', 1, 'acknowledged', 'x', '{}')", (B,))  # a forged row of line b
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("UPDATE alarms SET line = %s", (B,))  # its own rows handed to line b
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("TRUNCATE readings_raw")  # TRUNCATE passes by the policies: the role may not
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER TABLE alarms DISABLE ROW LEVEL SECURITY")
        assert conn.execute("SELECT role, line FROM line_roles WHERE role = current_user").fetchall() == [
            (roles[A], A)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE line_roles SET line = %s", (B,))  # nor may it bind itself to another line
    with psycopg.connect(url) as owner:
        after = {t: lines_in(owner, t) for t in PG_TABLES}
        assert owner.execute("SELECT DISTINCT state FROM alarms WHERE line = %s", (B,)).fetchall() == [
            (AlarmState.ACTIVE_UNACK.value,)]
    assert all(after[t][B] == before[t][B] for t in PG_TABLES)  # line b: every row as it was
    assert A not in after["alarm_events"]


def test_the_site_reader_reads_every_line_and_writes_none(site, capsys):
    url, roles = site
    reader = f"{roles[A].rsplit('_line', 1)[0]}_site"
    assert main(["store", "--db", url, "grant-reader", "--role", reader]) == 0
    assert f"made role {reader} a member of factory_copilot_site_reader" in capsys.readouterr().out
    with psycopg.connect(as_role(url, reader), autocommit=True) as conn:
        for table in PG_TABLES:
            assert set(lines_in(conn, table)) == {A, B}, table
        for statement in ("DELETE FROM alarms", "UPDATE alarms SET state = 'x'", "TRUNCATE alarms",
                          "INSERT INTO readings_raw(line, ts, asset, signal, quality) VALUES ('x', 1, 'a', 's', 'GOOD')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert main(["alarms", "--db", as_role(url, reader), "--json", "list", "--all"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # A1 of each line
    assert main(["alarms", "--db", as_role(url, reader), "--line", B, "--json", "audit"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    # a line's role is no site reader, and a site reader no line's role
    assert main(["store", "--db", url, "grant-reader", "--role", roles[A]]) == 2
    assert f"role {roles[A]} is bound to a line" in capsys.readouterr().err
    assert main(["store", "--db", url, "grant-line", "--line", A, "--role", reader]) == 2
    assert "member of factory_copilot_site_reader" in capsys.readouterr().err


def test_a_role_bound_to_another_line_is_refused_at_start_naming_role_and_line(site, tmp_path, capsys):
    from tests.test_site_cli import line_file

    url, roles = site
    with pytest.raises(WrongRole, match=f"role {roles[A]} is bound to line {A}, not to line {B}"):
        PostgresStore(as_role(url, roles[A]), B)
    with pytest.raises(WrongRole, match=f"role {roles[A]} is bound to line {A}, not to line {B}"):
        PostgresStore.reader(as_role(url, roles[A]), B).counts()
    with psycopg.connect(url, autocommit=True) as owner:  # a role with the grants but bound to no line
        loose = f"{roles[A]}_loose"
        owner.execute(f"CREATE ROLE {loose} LOGIN; GRANT SELECT, INSERT ON alarms TO {loose}")
    with pytest.raises(WrongRole, match=f"role {loose} is bound to no line, so it may not act for line {A}"):
        PostgresStore(as_role(url, loose), A)
    # a line file naming the store with line a's role, for line demo-plant/packaging-1: one line saying so
    path = line_file(tmp_path, "packaging-1", as_role(url, roles[A]))
    assert main(["alarms", "--config", str(path), "--from-store", "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and f"role {roles[A]} is bound to line {A}" in err[-1], err
    assert "not to line demo-plant/packaging-1" in err[-1]
    assert main(["store", "--db", as_role(url, roles[A]), "--line", B, "prune"]) == 2
    assert f"not to line {B}" in capsys.readouterr().err
    assert main(["store", "grant-line", "--db", url, "--line", B, "--role", roles[A]]) == 2  # one line a role
    assert f"bound to line {A} already" in capsys.readouterr().err


def test_a_line_role_may_not_create_the_tables(pg_cluster):
    """The tables' owner makes them (grant-line migrates first); a line's role on a database without them is told so."""
    n = next(_n)
    url = pg_cluster.create_database(f"site_rls_{n}")
    with psycopg.connect(url, autocommit=True) as owner:
        owner.execute(f"CREATE ROLE rls{n}_early LOGIN")
    from factory_copilot.store.schema import PG_MIGRATIONS

    with pytest.raises(WrongRole, match=f"the database has no tables, this software wants version {len(PG_MIGRATIONS)}, "
                                        "and this role may not make it so .*grant-line"):
        PostgresStore(as_role(url, f"rls{n}_early"), A)


def test_the_tables_owner_is_held_too_and_may_not_be_a_lines_role(pg_cluster, capsys):
    """A site's owner who is no superuser (CREATEROLE, owns the database) makes the tables and the lines' roles;
    FORCE holds it to the policies as well: it reads no line's rows unless it is a site reader."""
    n = next(_n)
    owner = f"rls{n}_owner"
    with psycopg.connect(pg_cluster.url(), autocommit=True) as su:
        su.execute(f"CREATE ROLE {owner} LOGIN CREATEROLE")
        su.execute(f"CREATE DATABASE site_rls_{n} OWNER {owner}")
    url = as_role(pg_cluster.url(f"site_rls_{n}"), owner)
    assert main(["store", "grant-line", "--db", url, "--line", A, "--role", f"rls{n}_line_a"]) == 0
    capsys.readouterr()
    with PostgresStore(as_role(url, f"rls{n}_line_a"), A) as store:
        store.add_alarm_events([alarm_event("A1", T0 + 1, "raised", AlarmState.ACTIVE_UNACK)])
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM alarms").fetchone()[0] == 0  # FORCE ROW LEVEL SECURITY
        assert conn.execute("DELETE FROM alarms").rowcount == 0
    with pytest.raises(WrongRole, match=f"role {owner} is bound to no line"):
        PostgresStore(url, A)
    assert main(["store", "grant-line", "--db", url, "--line", B, "--role", owner]) == 2
    assert f"role {owner} is the store tables' owner" in capsys.readouterr().err


def test_the_service_of_a_line_whose_role_is_another_lines_does_not_start(site, tmp_path, sim_models):
    from factory_copilot.config import load_line
    from factory_copilot.service import build_service
    from tests.test_site_cli import line_file

    url, roles = site
    path = line_file(tmp_path, "packaging-1", as_role(url, roles[B]))
    with pytest.raises(WrongRole, match=f"role {roles[B]} is bound to line {B}, not to line demo-plant/packaging-1"):
        build_service(load_line(path), path, models=sim_models, state_dir=tmp_path / "state")


async def test_a_line_started_while_the_server_was_away_holds_its_rows_until_its_role_is_bound(own_pg_cluster):
    """The service starts without its database; when the server is back its role turns out bound to no line: the
    store station holds what it has, says why, and writes it once the owner binds the role (nothing dropped)."""
    import asyncio

    from factory_copilot.plumbing.buffer import Buffer
    from factory_copilot.records import Reading
    from factory_copilot.store import StoreStation

    cluster = own_pg_cluster
    url = cluster.create_database("site_history")
    assert main(["store", "grant-line", "--db", url, "--line", B, "--role", "line_b"]) == 0  # the tables
    with psycopg.connect(url, autocommit=True) as owner:
        owner.execute("CREATE ROLE line_a LOGIN")
    await asyncio.to_thread(cluster.stop)
    store = PostgresStore(as_role(url, "line_a"), A, patient=True)
    readings = Buffer(10_000, "readings")
    station = StoreStation(store, readings=readings, batch_max=100, retry_s=0.02, retry_max_s=0.05)
    task = asyncio.create_task(station.run())
    try:
        for i in range(300):
            readings.offer(Reading(T0 + i, "filler", "bowl_level", float(i)))
        await asyncio.to_thread(cluster.start)
        async with asyncio.timeout(30):
            while "bound to no line" not in (station.stats()["unavailable"] or ""):
                await station.wait_retries(station.write_retries + 1)
        stats = station.stats()
        assert "role line_a is bound to no line, so it may not act for line site-1/line-a" in stats["unavailable"]
        assert stats["written"]["readings"] == 0 and stats["failed"]["readings"] == 0
        assert await asyncio.to_thread(main, ["store", "grant-line", "--db", url, "--line", A, "--role", "line_a"]) == 0
        async with asyncio.timeout(30):
            await station.wait_written("readings", 300)
        assert station.stats()["unavailable"] is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()
    with psycopg.connect(url) as owner:
        assert lines_in(owner, "readings_raw") == {A: 300}


def test_a_site_store_of_version_1_keeps_its_rows_when_the_owner_migrates_it(pg_cluster, capsys):
    """A site that ran before row-level security: the owner's grant-line migrates it, and each line's earlier rows
    are then its role's, and only its."""
    from factory_copilot.plumbing import postgres
    from factory_copilot.store.schema import COMPONENT, PG_MIGRATIONS

    n = next(_n)
    url = pg_cluster.create_database(f"site_rls_{n}")
    conn = postgres.Connection(url)
    try:
        postgres.migrate(conn, PG_MIGRATIONS[:1], COMPONENT)  # the tables as version 1 made them
        for line in (A, B):
            conn.execute("INSERT INTO alarm_events(line, alarm_id, ts, event, state, alarm) "
                         "VALUES (?, 'A1', 1, 'raised', 'x', '{}')", (line,))
    finally:
        conn.close()
    assert main(["store", "grant-line", "--db", url, "--line", B, "--role", f"rls{n}_line_b"]) == 0
    capsys.readouterr()
    with psycopg.connect(as_role(url, f"rls{n}_line_b")) as line_b:
        assert lines_in(line_b, "alarm_events") == {B: 1}
        assert line_b.execute("SELECT version FROM schema_version WHERE component = 'store'").fetchone()[0] == len(PG_MIGRATIONS)
