-- kflow schema, version 1 (SQLite).
-- Timestamps are INTEGER microseconds since the Unix epoch (UTC); JSON is TEXT;
-- money is TEXT holding a decimal string.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE clients (
    client_id   TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    description TEXT,
    created_at  INTEGER NOT NULL,
    disabled_at INTEGER
);

CREATE TABLE definitions (
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    content_hash   TEXT NOT NULL,
    body           TEXT NOT NULL,
    activity_count INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX definitions_by_hash ON definitions (name, content_hash);

CREATE TABLE workflows (
    id                 TEXT PRIMARY KEY,
    definition_name    TEXT NOT NULL,
    definition_version TEXT NOT NULL,
    status             TEXT NOT NULL,
    input              TEXT NOT NULL,
    unique_key         TEXT,
    error_message      TEXT,
    total_cost_usd     TEXT NOT NULL DEFAULT '0',
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    completed_at       INTEGER,
    timeout_at         INTEGER
);
CREATE UNIQUE INDEX workflows_unique_key ON workflows (unique_key)
    WHERE unique_key IS NOT NULL AND status <> 'failed';
CREATE INDEX workflows_created ON workflows (created_at);
CREATE INDEX workflows_status_created ON workflows (status, created_at);
CREATE INDEX workflows_timeouts ON workflows (timeout_at)
    WHERE timeout_at IS NOT NULL AND status IN ('created', 'running');

-- One row per activity of a run: its current state and, while it is queued
-- or running, its current attempt (attempt_id is the wire's activity_id).
CREATE TABLE activities (
    workflow_id        TEXT NOT NULL,
    key                TEXT NOT NULL,
    position           INTEGER NOT NULL,
    queue              TEXT NOT NULL,
    activity_name      TEXT NOT NULL,
    timeout_seconds    INTEGER NOT NULL,
    settings           TEXT NOT NULL,
    output_definitions TEXT,
    status             TEXT NOT NULL,
    iteration          INTEGER NOT NULL DEFAULT 0,
    attempt            INTEGER NOT NULL DEFAULT 0,
    attempt_id         TEXT,
    parameters         TEXT,
    available_at       INTEGER,
    wait_signal        TEXT,
    wait_timeout_at    INTEGER,
    signal_data        TEXT,
    worker_id          TEXT,
    claimed_at         INTEGER,
    lease_expires_at   INTEGER,
    heartbeat_details  TEXT,
    outputs            TEXT,
    error              TEXT,
    failure_handled    INTEGER NOT NULL DEFAULT 0,
    cost_usd           TEXT NOT NULL DEFAULT '0',
    started_at         INTEGER,
    completed_at       INTEGER,
    updated_at         INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, key)
);
CREATE UNIQUE INDEX activities_attempt ON activities (attempt_id) WHERE attempt_id IS NOT NULL;
CREATE INDEX activities_ready ON activities (queue, available_at) WHERE status = 'pending';
CREATE INDEX activities_leases ON activities (lease_expires_at) WHERE status = 'running';
CREATE INDEX activities_due ON activities (available_at)
    WHERE status = 'waiting' AND wait_signal IS NULL;
CREATE INDEX activities_signal_timeouts ON activities (wait_timeout_at)
    WHERE status = 'waiting' AND wait_signal IS NOT NULL AND wait_timeout_at IS NOT NULL;

-- Every finished attempt: the audit trail of who ran what and what it cost.
CREATE TABLE attempts (
    id           TEXT PRIMARY KEY,
    workflow_id  TEXT NOT NULL,
    activity_key TEXT NOT NULL,
    iteration    INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    worker_id    TEXT,
    outcome      TEXT NOT NULL,
    error        TEXT,
    cost_usd     TEXT NOT NULL DEFAULT '0',
    usage        TEXT,
    started_at   INTEGER,
    finished_at  INTEGER NOT NULL
);
CREATE INDEX attempts_workflow ON attempts (workflow_id, activity_key);

-- Append-only history, written in the same transaction as each transition.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id  TEXT NOT NULL,
    type         TEXT NOT NULL,
    activity_key TEXT,
    data         TEXT,
    created_at   INTEGER NOT NULL
);
CREATE INDEX events_workflow ON events (workflow_id, id);

-- Signals that arrived before their activity started waiting.
CREATE TABLE signals (
    id           TEXT PRIMARY KEY,
    workflow_id  TEXT NOT NULL,
    activity_key TEXT NOT NULL,
    event_name   TEXT NOT NULL,
    data         TEXT,
    created_at   INTEGER NOT NULL
);
CREATE INDEX signals_target ON signals (workflow_id, activity_key, event_name);

CREATE TABLE files (
    workflow_id  TEXT NOT NULL,
    activity_key TEXT NOT NULL,
    filename     TEXT NOT NULL,
    content_type TEXT,
    size         INTEGER NOT NULL,
    data         BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, activity_key, filename)
);

-- Last time a worker polled a queue (written at most every few seconds per
-- worker); lets a timed-out workflow say "no worker polls queue X".
CREATE TABLE workers (
    worker_id    TEXT PRIMARY KEY,
    queue        TEXT NOT NULL,
    last_seen_at INTEGER NOT NULL
);
CREATE INDEX workers_queue ON workers (queue, last_seen_at);
