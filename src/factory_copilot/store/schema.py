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
