"""The site's commands over one PostgreSQL store (issue 22): `alarms list|audit`, `store` and `incidents export`
see every line, each row with its line, `--line` narrows; a bad URL or a server away is one line naming it."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from factory_copilot.cli import main
from factory_copilot.config import SIMULATED_LINE
from factory_copilot.records import AlarmState
from factory_copilot.store.store import PostgresStore
from tests.test_store import T0, alarm_event

_dbs = itertools.count(1)


@pytest.fixture
def site_url(pg_cluster):
    """A database of its own: the site holds only the lines this test writes."""
    return pg_cluster.create_database(f"site_cli_{next(_dbs)}")


def two_lines(url: str) -> None:
    """Line a: A1 raised and acknowledged; line b: A1 (the same id) raised, B2 raised then back to normal."""
    with PostgresStore(url, "site-1/line-a") as a, PostgresStore(url, "site-1/line-b") as b:
        a.add_alarm_events([alarm_event("A1", T0 + 1, "raised", AlarmState.ACTIVE_UNACK),
                            alarm_event("A1", T0 + 5, "acknowledged", AlarmState.ACTIVE_ACK, raised=T0 + 1)])
        b.add_alarm_events([alarm_event("A1", T0 + 2, "raised", AlarmState.ACTIVE_UNACK),
                            alarm_event("B2", T0 + 3, "raised", AlarmState.ACTIVE_UNACK, asset="filler"),
                            alarm_event("B2", T0 + 4, "returned", AlarmState.NORMAL, asset="filler", raised=T0 + 3)])


def test_alarms_list_over_the_site_shows_every_line_and_line_narrows(site_url, capsys):
    two_lines(site_url)
    assert main(["alarms", "--db", site_url, "list"]) == 0
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert rows[-1] == "2 alarm(s) on 2 line(s)"
    assert [r.split()[0] for r in rows[:-1]] == ["site-1/line-a", "site-1/line-b"]
    assert "ACTIVE_ACK" in rows[0].upper() and "every line" in err
    assert main(["alarms", "--db", site_url, "--json", "list", "--all"]) == 0
    listed = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert sorted((x["line"], x["alarm_id"], x["state"]) for x in listed) == [
        ("site-1/line-a", "A1", AlarmState.ACTIVE_ACK.value), ("site-1/line-b", "A1", AlarmState.ACTIVE_UNACK.value),
        ("site-1/line-b", "B2", AlarmState.NORMAL.value)]
    assert main(["alarms", "--db", site_url, "--line", "site-1/line-b", "--json", "list", "--all"]) == 0
    listed = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert {x["line"] for x in listed} == {"site-1/line-b"} and len(listed) == 2


def test_alarms_audit_over_the_site_has_each_lines_events_with_actor(site_url, capsys):
    two_lines(site_url)
    assert main(["alarms", "--db", site_url, "--json", "audit"]) == 0
    events = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert [(e["line"], e["alarm_id"], e["event"]) for e in events] == [
        ("site-1/line-a", "A1", "raised"), ("site-1/line-b", "A1", "raised"), ("site-1/line-b", "B2", "raised"),
        ("site-1/line-b", "B2", "returned"), ("site-1/line-a", "A1", "acknowledged")]
    assert events[-1]["actor"] == "op1"
    assert main(["alarms", "--db", site_url, "--line", "site-1/line-b", "--json", "audit", "--limit", "2"]) == 0
    events = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert [(e["line"], e["alarm_id"], e["event"]) for e in events] == [
        ("site-1/line-b", "B2", "raised"), ("site-1/line-b", "B2", "returned")]  # line b's newest two, oldest first
    assert main(["alarms", "--db", site_url, "--line", "site-1/line-a", "audit", "--limit", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 1 and rows[0].startswith("site-1/line-a  ") and "acknowledged" in rows[0] and "by op1" in rows[0]


def test_a_bad_url_or_a_server_away_is_one_line_naming_host_and_port_not_the_password(capsys):
    from tests.support.postgres import free_port

    port = free_port()
    assert main(["alarms", "--db", f"postgresql://site:s3cret@127.0.0.1:{port}/history", "list"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and f"127.0.0.1:{port}" in err[-1] and "s3cret" not in "".join(err)
    for bad in ("postgresql://site:s3cret@127.0.0.1:notaport/history", f"postgresql://127.0.0.1:{port}/h?pasword=s3cret",
                f"postgresql://site@127.0.0.1:{port}/h?password=s3cret&nope=1"):
        assert main(["alarms", "--db", bad, "list"]) == 2  # no retry helps: the URL is wrong
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: postgresql://") and "s3cret" not in err[0], err


def test_store_stats_of_a_site_per_line_and_one_lines_prune_and_false_alarms(site_url, capsys):
    two_lines(site_url)
    assert main(["store", "--db", site_url, "stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert list(stats) == ["site-1/line-a", "site-1/line-b"]
    assert (stats["site-1/line-a"]["alarms"], stats["site-1/line-b"]["alarms"]) == (1, 2)
    assert stats["site-1/line-b"]["alarm_events"] == 3
    assert main(["store", "--db", site_url, "--line", "site-1/line-b", "stats"]) == 0
    assert json.loads(capsys.readouterr().out)["alarm_events"] == 3
    assert main(["store", "--db", site_url, "prune"]) == 2  # a site's prune would use one line's retention for all
    assert "--line" in capsys.readouterr().err
    # line b's old events and its alarm back to normal go (180 days), line a's stay: a prune through one line's
    # views touches that line only
    assert main(["store", "--db", site_url, "--line", "site-1/line-b", "prune"]) == 0
    assert json.loads(capsys.readouterr().out)["alarm_events"] == 3
    assert main(["store", "--db", site_url, "stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["site-1/line-a"]["alarm_events"] == 2 and stats["site-1/line-a"]["alarms"] == 1
    assert stats["site-1/line-b"]["alarm_events"] == 0 and stats["site-1/line-b"]["alarms"] == 1  # A1 still stands
    assert main(["store", "--db", site_url, "--line", "site-1/line-a", "false-alarms"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_store_on_a_database_without_the_store_tables_creates_none(pg_cluster, capsys):
    url = pg_cluster.create_database(f"not_a_store_{next(_dbs)}")
    assert main(["store", "--db", url, "--line", "site-1/line-a", "prune"]) == 2
    assert "holds no store tables" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="holds no store tables"):
        main(["alarms", "--db", url, "list"])
    assert main(["store", "--db", url, "stats"]) == 2  # nothing was created by the prune
    assert "holds no store tables" in capsys.readouterr().err


def line_file(tmp_path, name: str, url: str):
    """The simulated line as line ``name`` of the site, its history in ``url``."""
    from factory_copilot.config import SIMULATED_LINE

    text = SIMULATED_LINE.read_text().replace("line: packaging-1", f"line: {name}")
    seeds = SIMULATED_LINE.parent.parent
    text = text.replace("knowledge: {faults: ../faults.yaml, runbooks: ../runbooks}",
                        f"knowledge: {{faults: {seeds / 'faults.yaml'}, runbooks: {seeds / 'runbooks'}}}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text + f'\nstore: {{url: "{url}"}}\n')
    return path


def test_incidents_export_of_two_lines_of_one_store_has_each_lines_incidents(site_url, tmp_path, capsys):
    import time

    from factory_copilot.config import load_line
    from factory_copilot.records import AlarmEvent, Feedback
    from factory_copilot.store.store import line_id
    from tests.support.copilot import alarm_for, ramp

    now = time.time()
    files = {}
    for name, fix in (("packaging-1", "regreased the DE bearing"), ("packaging-2", "replaced the DE bearing")):
        files[name] = line_file(tmp_path, name, site_url)
        with PostgresStore(site_url, line_id(load_line(files[name]))) as store:
            store.add_readings(ramp("product_pump.vibration", 2.0, 6.0, t0=now - 700, t1=now - 60))
            alarm = alarm_for("product_pump", alarm_id="A-1", ts=now - 60)  # the same id on both lines
            store.add_alarm_event(AlarmEvent("A-1", now - 60, "raised", AlarmState.ACTIVE_UNACK, alarm))
            store.add_feedback(Feedback("A-1", "confirmed", None, fix, actor="op1", ts=now - 30))
    out = tmp_path / "site.jsonl"
    assert main(["incidents", "export", "--config", str(files["packaging-1"]), "--config", str(files["packaging-2"]),
                 "--out", str(out)]) == 0
    assert "2 confirmed incident(s) as chat examples (demo-plant/packaging-1: 1, demo-plant/packaging-2: 1)" in capsys.readouterr().out
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["metadata"]["line"], r["metadata"]["fix"]) for r in rows] == [
        ("demo-plant/packaging-1", "regreased the DE bearing"), ("demo-plant/packaging-2", "replaced the DE bearing")]
    assert all("vibration" in r["messages"][1]["content"] for r in rows)  # each line's evidence, from its rows
    assert main(["incidents", "export", "--config", str(files["packaging-2"]), "--out", str(out)]) == 0
    assert [json.loads(x)["metadata"]["line"] for x in out.read_text().splitlines()] == ["demo-plant/packaging-2"]


def test_alarms_from_a_line_files_store_are_that_lines_only(site_url, tmp_path, capsys):
    two_lines(site_url)
    path = line_file(tmp_path, "packaging-1", site_url)
    with PostgresStore(site_url, "demo-plant/packaging-1") as store:
        store.add_alarm_events([alarm_event("P1", T0 + 7, "raised", AlarmState.ACTIVE_UNACK)])
    assert main(["alarms", "--config", str(path), "--from-store", "--json", "list"]) == 0
    out, err = capsys.readouterr()
    assert [(x["line"], x["alarm_id"]) for x in map(json.loads, out.splitlines())] == [("demo-plant/packaging-1", "P1")]
    assert "line demo-plant/packaging-1" in err and "s3cret" not in err
    with pytest.raises(SystemExit, match="names no PostgreSQL store"):
        main(["alarms", "--config", str(SIMULATED_LINE), "--from-store", "list"])
    with pytest.raises(SystemExit, match="--line picks a line"):
        main(["alarms", "--db", str(tmp_path / "alarms.db"), "--line", "x/y", "list"])


def test_the_site_reads_with_a_role_that_may_only_select(site_url, capsys):
    """A site reader made by `store grant-reader` (docs/site.md) suffices for the site-wide commands, and it changes
    nothing; a role with SELECT but no membership is told it is no site reader."""
    import psycopg

    two_lines(site_url)
    assert main(["store", "grant-reader", "--db", site_url, "--role", "site_reader"]) == 0
    assert "made role site_reader a member of factory_copilot_site_reader" in capsys.readouterr().out
    reader = re.sub(r"//[^@/]+@", "//site_reader@", site_url)
    assert main(["alarms", "--db", reader, "--json", "list", "--all"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["alarms", "--db", reader, "--line", "site-1/line-a", "audit"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["store", "--db", reader, "stats"]) == 0 and len(json.loads(capsys.readouterr().out)) == 2
    assert main(["store", "--db", reader, "--line", "site-1/line-a", "prune"]) == 2  # a reader acts for no line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "role site_reader is bound to no line" in err[0], err
    with psycopg.connect(site_url, autocommit=True) as conn:  # SELECT on the tables alone: row-level security
        try:                                                  # shows such a role no row
            conn.execute("CREATE ROLE select_only LOGIN")
        except psycopg.errors.DuplicateObject:
            pass  # the cluster's roles outlive a test's database
        conn.execute("GRANT USAGE ON SCHEMA public TO select_only; GRANT SELECT ON ALL TABLES IN SCHEMA public "
                     "TO select_only")
    for argv in (["alarms", "list"], ["store", "stats"]):
        assert main([argv[0], "--db", re.sub(r"//[^@/]+@", "//select_only@", site_url), *argv[1:]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "role select_only is no site reader" in err[-1] and "grant-reader" in err[-1], err


def test_retune_of_one_line_uses_that_lines_false_alarms_only(site_url, tmp_path, sim_models, capsys):
    """Two lines of one store mark the same alarm: line 2's verdict never moves line 1's detector."""
    import time

    from factory_copilot.config import ServicePaths, load_line
    from factory_copilot.detect import save_detector
    from factory_copilot.records import Alarm, AlarmEvent, Anomaly, Feedback, Priority
    from factory_copilot.store.store import line_id
    from simulators import modes

    files = {name: line_file(tmp_path, name, site_url) for name in ("packaging-1", "packaging-2")}
    paths = ServicePaths(tmp_path / "state-1")
    save_detector(paths.detector, sim_models)
    now = time.time()

    def mark_false(name: str) -> None:
        anomalies = [Anomaly(ts=now - 100 + i, asset="heat_tunnel", kind="multivariate", score=1.2, threshold=1.0,
                             mode=modes.RUNNING) for i in range(5)]
        alarm = Alarm("heat_tunnel-fault", "heat_tunnel", "fault", AlarmState.ACTIVE_UNACK, Priority.HIGH, "tunnel",
                      now - 100, now - 100, anomaly=anomalies[0])
        with PostgresStore(site_url, line_id(load_line(files[name]))) as store:
            store.add_anomalies(anomalies)
            store.add_alarm_event(AlarmEvent(alarm.alarm_id, now - 100, "raised", AlarmState.ACTIVE_UNACK, alarm))
            store.add_feedback(Feedback(alarm.alarm_id, "false_alarm", actor="op2", ts=now - 10))

    argv = ["retune", "--config", str(files["packaging-1"]), "--state-dir", str(paths.state_dir), "--dry-run"]
    mark_false("packaging-2")
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["false_alarms"] == 0 and report["changed"] is False
    mark_false("packaging-1")
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["false_alarms"] == 1 and report["used"] == ["heat_tunnel-fault"] and report["changed"] is True
