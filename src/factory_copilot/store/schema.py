"""The store's tables, as versioned migrations applied by ``open_db`` (component ``store``).

Append a new script to MIGRATIONS to change the schema; never edit one that has shipped.
"""

from __future__ import annotations

COMPONENT = "store"

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE readings_raw (
        ts REAL NOT NULL,
        asset TEXT NOT NULL,
        signal TEXT NOT NULL,
        value REAL,
        quality TEXT NOT NULL
    );
    CREATE INDEX readings_raw_asset_ts ON readings_raw(asset, ts);
    CREATE INDEX readings_raw_ts ON readings_raw(ts);

    -- per signal per bucket: count, sum, min, max of GOOD values, and how many samples were not GOOD
    CREATE TABLE trend (
        asset TEXT NOT NULL,
        signal TEXT NOT NULL,
        bucket REAL NOT NULL,
        n INTEGER NOT NULL,
        total REAL NOT NULL,
        vmin REAL,
        vmax REAL,
        not_good INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (asset, signal, bucket)
    ) WITHOUT ROWID;
    CREATE INDEX trend_bucket ON trend(bucket);

    CREATE TABLE anomalies (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        asset TEXT NOT NULL,
        kind TEXT NOT NULL,
        signal TEXT,
        condition TEXT NOT NULL,
        score REAL NOT NULL,
        threshold REAL NOT NULL,
        fault_type TEXT,
        body TEXT NOT NULL
    );
    CREATE INDEX anomalies_asset_ts ON anomalies(asset, ts);
    CREATE INDEX anomalies_ts ON anomalies(ts);

    -- the latest state of every alarm (from its newest event)
    CREATE TABLE alarms (
        alarm_id TEXT PRIMARY KEY,
        asset TEXT NOT NULL,
        condition TEXT NOT NULL,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL,
        raised_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX alarms_state ON alarms(state);

    CREATE TABLE alarm_events (
        id INTEGER PRIMARY KEY,
        alarm_id TEXT NOT NULL,
        ts REAL NOT NULL,
        event TEXT NOT NULL,
        state TEXT NOT NULL,
        actor TEXT,
        comment TEXT,
        alarm TEXT NOT NULL
    );
    CREATE INDEX alarm_events_alarm ON alarm_events(alarm_id, ts);
    CREATE INDEX alarm_events_ts ON alarm_events(ts);

    CREATE TABLE diagnoses (
        id INTEGER PRIMARY KEY,
        alarm_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        source TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX diagnoses_alarm ON diagnoses(alarm_id, created_at);

    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        alarm_id TEXT NOT NULL,
        ts REAL NOT NULL,
        role TEXT NOT NULL,
        text TEXT NOT NULL,
        actor TEXT,
        request_id TEXT,
        source TEXT
    );
    CREATE INDEX conversations_alarm ON conversations(alarm_id, ts);

    -- asset, condition, fault type and signals are copied from the alarm when feedback is given,
    -- so incident memory outlives the alarm's own retention
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY,
        alarm_id TEXT NOT NULL,
        ts REAL NOT NULL,
        verdict TEXT NOT NULL,
        actual_cause TEXT,
        fix TEXT,
        actor TEXT,
        asset TEXT,
        condition TEXT,
        fault_type TEXT,
        signals TEXT NOT NULL DEFAULT '[]',
        raised_at REAL,
        cleared_at REAL
    );
    CREATE INDEX feedback_alarm ON feedback(alarm_id);
    CREATE INDEX feedback_asset ON feedback(asset, fault_type);
    """,
    # version 2: a copilot answer (or a question) is stored once even if two writers see it
    """
    CREATE UNIQUE INDEX conversations_request_role ON conversations(request_id, role) WHERE request_id IS NOT NULL;
    """,
    # version 3: alarms by when they last changed (recent alarms for agents); shift handovers and their audit trail
    """
    CREATE INDEX alarms_updated ON alarms(updated_at);

    CREATE TABLE handovers (
        handover_id TEXT PRIMARY KEY,
        shift TEXT NOT NULL,
        date TEXT NOT NULL,
        start REAL NOT NULL,
        "end" REAL NOT NULL,
        written_at REAL NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX handovers_end ON handovers("end");

    -- append-only: who acknowledged a handover, when, with what comment
    CREATE TABLE handover_events (
        id INTEGER PRIMARY KEY,
        handover_id TEXT NOT NULL,
        ts REAL NOT NULL,
        event TEXT NOT NULL,
        actor TEXT,
        comment TEXT
    );
    CREATE INDEX handover_events_handover ON handover_events(handover_id, ts);
    """,
]


# The same tables in PostgreSQL, where the lines of a site share one database: every row carries its line, every
# key and index leads with it. Applied by ``plumbing.postgres.migrate`` (component ``store``); append, never edit.
PG_TABLES = ["readings_raw", "trend", "anomalies", "alarms", "alarm_events", "diagnoses", "conversations", "feedback",
             "handovers", "handover_events"]

PG_MIGRATIONS: list[str] = [
    # version 1: what SQLite's versions 1-3 hold
    """
    CREATE TABLE readings_raw (
        line TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        asset TEXT NOT NULL,
        signal TEXT NOT NULL,
        value DOUBLE PRECISION,
        quality TEXT NOT NULL
    );
    CREATE INDEX readings_raw_asset_ts ON readings_raw(line, asset, ts);
    CREATE INDEX readings_raw_ts ON readings_raw(line, ts);

    CREATE TABLE trend (
        line TEXT NOT NULL,
        asset TEXT NOT NULL,
        signal TEXT NOT NULL,
        bucket DOUBLE PRECISION NOT NULL,
        n INTEGER NOT NULL,
        total DOUBLE PRECISION NOT NULL,
        vmin DOUBLE PRECISION,
        vmax DOUBLE PRECISION,
        not_good INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (line, asset, signal, bucket)
    );
    CREATE INDEX trend_bucket ON trend(line, bucket);

    CREATE TABLE anomalies (
        line TEXT NOT NULL,
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        asset TEXT NOT NULL,
        kind TEXT NOT NULL,
        signal TEXT,
        condition TEXT NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        threshold DOUBLE PRECISION NOT NULL,
        fault_type TEXT,
        body TEXT NOT NULL
    );
    CREATE INDEX anomalies_asset_ts ON anomalies(line, asset, ts);
    CREATE INDEX anomalies_ts ON anomalies(line, ts);

    CREATE TABLE alarms (
        line TEXT NOT NULL,
        alarm_id TEXT NOT NULL,
        asset TEXT NOT NULL,
        condition TEXT NOT NULL,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL,
        raised_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (line, alarm_id)
    );
    CREATE INDEX alarms_state ON alarms(line, state);
    CREATE INDEX alarms_updated ON alarms(line, updated_at);

    CREATE TABLE alarm_events (
        line TEXT NOT NULL,
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        alarm_id TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        event TEXT NOT NULL,
        state TEXT NOT NULL,
        actor TEXT,
        comment TEXT,
        alarm TEXT NOT NULL
    );
    CREATE INDEX alarm_events_alarm ON alarm_events(line, alarm_id, ts);
    CREATE INDEX alarm_events_ts ON alarm_events(line, ts);

    CREATE TABLE diagnoses (
        line TEXT NOT NULL,
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        alarm_id TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX diagnoses_alarm ON diagnoses(line, alarm_id, created_at);

    CREATE TABLE conversations (
        line TEXT NOT NULL,
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        alarm_id TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        role TEXT NOT NULL,
        text TEXT NOT NULL,
        actor TEXT,
        request_id TEXT,
        source TEXT
    );
    CREATE INDEX conversations_alarm ON conversations(line, alarm_id, ts);
    CREATE UNIQUE INDEX conversations_request_role ON conversations(line, request_id, role)
        WHERE request_id IS NOT NULL;

    CREATE TABLE feedback (
        line TEXT NOT NULL,
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        alarm_id TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        verdict TEXT NOT NULL,
        actual_cause TEXT,
        fix TEXT,
        actor TEXT,
        asset TEXT,
        condition TEXT,
        fault_type TEXT,
        signals TEXT NOT NULL DEFAULT '[]',
        raised_at DOUBLE PRECISION,
        cleared_at DOUBLE PRECISION
    );
    CREATE INDEX feedback_alarm ON feedback(line, alarm_id);
    CREATE INDEX feedback_asset ON feedback(line, asset, fault_type);

    CREATE TABLE handovers (
        line TEXT NOT NULL,
        handover_id TEXT NOT NULL,
        shift TEXT NOT NULL,
        date TEXT NOT NULL,
        start DOUBLE PRECISION NOT NULL,
        "end" DOUBLE PRECISION NOT NULL,
        written_at DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (line, handover_id)
    );
    CREATE INDEX handovers_end ON handovers(line, "end");

    CREATE TABLE handover_events (
        line TEXT NOT NULL,
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        handover_id TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        event TEXT NOT NULL,
        actor TEXT,
        comment TEXT
    );
    CREATE INDEX handover_events_handover ON handover_events(line, handover_id, ts);
    """,
]


# The role whose members read every line's rows (and write none): the site's commands connect as one of them.
SITE_READER_ROLE = "factory_copilot_site_reader"


def _row_security(tables: tuple[str, ...]) -> str:
    """Row-level security on ``tables`` (each with a ``line`` column): a role sees and writes only the rows of the
    line ``line_roles`` binds it to; members of the site reader role may read every row. FORCE holds the tables'
    owner to the same rules (only superusers and BYPASSRLS roles pass by)."""
    bound = "line = (SELECT r.line FROM line_roles r WHERE r.role = current_user)"
    # looked up by name at run time, so the policy needs no such role to exist (roles are the cluster's, made by
    # `store grant-reader`, not by a migration that may run as a role without CREATEROLE)
    reader = (f"EXISTS (SELECT FROM pg_roles g WHERE g.rolname = '{SITE_READER_ROLE}' "
              "AND pg_has_role(current_user, g.oid, 'USAGE'))")
    return "\n".join(
        f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;\n"
        f"ALTER TABLE {t} FORCE ROW LEVEL SECURITY;\n"
        f"CREATE POLICY line_rows ON {t} USING ({bound}) WITH CHECK ({bound});\n"
        f"CREATE POLICY site_reader ON {t} FOR SELECT USING ({reader});"
        for t in tables)


PG_MIGRATIONS.append(
    # version 2: each line's rows kept apart by the server (issue 22): a role per line, bound in line_roles, and
    # row-level security on every table; the tables as version 1 made them (a later table brings its own policies)
    """
    CREATE TABLE line_roles (
        role NAME PRIMARY KEY,
        line TEXT NOT NULL
    );
    GRANT SELECT ON line_roles TO PUBLIC;
    GRANT SELECT ON schema_version TO PUBLIC;
    """ + _row_security(("readings_raw", "trend", "anomalies", "alarms", "alarm_events", "diagnoses", "conversations",
                         "feedback", "handovers", "handover_events")))


PG_MIGRATIONS.append(
    # version 3: the site's two reads across lines (bench/site_history.py, a month of 200 lines: ~200,000 alarms,
    # 200 MB of bodies, ~1,000 standing; ~600,000 alarm events). `alarms list --db` wants the standing alarms (not
    # normal), each line's worst first, without reading the normal ones; `alarms audit --db` the newest events of
    # every line, which alarm_events_ts (line first) cannot give without sorting them all. PostgreSQL only: the
    # SQLite store holds one line, its alarm_events_ts is (ts) already, and its alarms query binds the state as a
    # parameter, which SQLite's partial indexes cannot match.
    """
    CREATE INDEX alarms_standing ON alarms(line, priority, raised_at DESC) WHERE state <> 'normal';
    CREATE INDEX alarm_events_site_ts ON alarm_events(ts, id);
    """)
