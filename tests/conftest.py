"""Shared fixtures: real brokers and servers on 127.0.0.1, stopped when the test ends."""

from __future__ import annotations

import itertools

import pytest

from tests.support.brokers import start_broker


@pytest.fixture
def broker():
    """A real MQTT broker (Mosquitto when installed) on a free loopback port, for one test."""
    b = start_broker()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def sim_models():
    """A detector trained on three hours of simulated normal running (all modes), once per test session."""
    from factory_copilot.config import SIMULATED_LINE, load_line
    from factory_copilot.detect.evaluate import train_models
    from simulators import ModeSchedule, simulate_frame

    line = load_line(SIMULATED_LINE)
    history = simulate_frame(line, seed=3, duration_s=3 * 3600, schedule=ModeSchedule.default())
    return train_models(line, history, progress=False)


def _postgres_or_skip():
    from tests.support.postgres import Cluster, pg_bin

    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; bash scripts/bootstrap.sh test "
                    "installs Debian's postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[dev]')")
    return Cluster(bindir)


@pytest.fixture(scope="session")
def pg_cluster():
    """A real PostgreSQL server on a free loopback port for the whole session, removed at the end."""
    cluster = _postgres_or_skip()
    cluster.start()
    yield cluster
    cluster.remove()


@pytest.fixture(scope="session")
def pg_url(pg_cluster):
    """One database the tests share, as a site's lines do: each test's store writes a line of its own."""
    return pg_cluster.create_database("site_history")


@pytest.fixture
def own_pg_cluster():
    """A PostgreSQL server for one test, which may stop and start it."""
    cluster = _postgres_or_skip()
    cluster.start()
    yield cluster
    cluster.remove()


_lines = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgres"])
def store_backend(request, tmp_path):
    """Where a test's stores live: a SQLite file, or a line of its own in the session's PostgreSQL database, reached
    as that line's own role (bound to it: row-level security holds every query of the store)."""
    if request.param == "sqlite":
        return ("sqlite", str(tmp_path / "store.db"))
    import re

    from factory_copilot.store.roles import grant_line

    n, url = next(_lines), request.getfixturevalue("pg_url")
    grant_line(url, f"test-site/line-{n}", f"test_line_{n}")  # by the superuser who made the database
    return ("postgres", re.sub(r"//[^@/]+@", f"//test_line_{n}@", url), f"test-site/line-{n}")


@pytest.fixture
def make_store(store_backend):
    """``make_store(**kwargs)``: a store on the test's backend (closed when the test ends)."""
    from tests.support.postgres import open_backend

    opened = []

    def make(**kwargs):
        opened.append(open_backend(store_backend, **kwargs))
        return opened[-1]

    yield make
    for s in opened:
        s.close()
