-- kflow schema, version 1 (PostgreSQL).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE clients (
    client_id   TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    description TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    disabled_at TIMESTAMPTZ
);

CREATE TABLE definitions (
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    content_hash   TEXT NOT NULL,
    body           JSONB NOT NULL,
    activity_count INTEGER NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX definitions_by_hash ON definitions (name, content_hash);

CREATE TABLE workflows (
    id                 UUID PRIMARY KEY,
    definition_name    TEXT NOT NULL,
    definition_version TEXT NOT NULL,
    status             TEXT NOT NULL,
    input              JSONB NOT NULL,
    unique_key         TEXT,
    error_message      TEXT,
    total_cost_usd     NUMERIC NOT NULL DEFAULT 0,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    completed_at       TIMESTAMPTZ,
    timeout_at         TIMESTAMPTZ
);
CREATE UNIQUE INDEX workflows_unique_key ON workflows (unique_key)
    WHERE unique_key IS NOT NULL AND status <> 'failed';
CREATE INDEX workflows_created ON workflows (created_at);
CREATE INDEX workflows_status_created ON workflows (status, created_at);
CREATE INDEX workflows_timeouts ON workflows (timeout_at)
    WHERE timeout_at IS NOT NULL AND status IN ('created', 'running');

CREATE TABLE activities (
    workflow_id        UUID NOT NULL,
    key                TEXT NOT NULL,
    position           INTEGER NOT NULL,
    queue              TEXT NOT NULL,
    activity_name      TEXT NOT NULL,
    timeout_seconds    INTEGER NOT NULL,
    settings           JSONB NOT NULL,
    output_definitions JSONB,
    status             TEXT NOT NULL,
    iteration          INTEGER NOT NULL DEFAULT 0,
    attempt            INTEGER NOT NULL DEFAULT 0,
    attempt_id         UUID,
    parameters         JSONB,
    available_at       TIMESTAMPTZ,
    wait_signal        TEXT,
    wait_timeout_at    TIMESTAMPTZ,
    signal_data        JSONB,
    worker_id          TEXT,
    claimed_at         TIMESTAMPTZ,
    lease_expires_at   TIMESTAMPTZ,
    heartbeat_details  JSONB,
    outputs            JSONB,
    error              JSONB,
    failure_handled    BOOLEAN NOT NULL DEFAULT FALSE,
    cost_usd           NUMERIC NOT NULL DEFAULT 0,
    started_at         TIMESTAMPTZ,
    completed_at       TIMESTAMPTZ,
    updated_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workflow_id, key)
);
CREATE UNIQUE INDEX activities_attempt ON activities (attempt_id) WHERE attempt_id IS NOT NULL;
CREATE INDEX activities_ready ON activities (queue, available_at) WHERE status = 'pending';
CREATE INDEX activities_leases ON activities (lease_expires_at) WHERE status = 'running';
CREATE INDEX activities_due ON activities (available_at)
    WHERE status = 'waiting' AND wait_signal IS NULL;
CREATE INDEX activities_signal_timeouts ON activities (wait_timeout_at)
    WHERE status = 'waiting' AND wait_signal IS NOT NULL AND wait_timeout_at IS NOT NULL;

CREATE TABLE attempts (
    id           UUID PRIMARY KEY,
    workflow_id  UUID NOT NULL,
    activity_key TEXT NOT NULL,
    iteration    INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    worker_id    TEXT,
    outcome      TEXT NOT NULL,
    error        JSONB,
    cost_usd     NUMERIC NOT NULL DEFAULT 0,
    usage        JSONB,
    started_at   TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX attempts_workflow ON attempts (workflow_id, activity_key);

CREATE TABLE events (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id  UUID NOT NULL,
    type         TEXT NOT NULL,
    activity_key TEXT,
    data         JSONB,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_workflow ON events (workflow_id, id);

CREATE TABLE signals (
    id           UUID PRIMARY KEY,
    workflow_id  UUID NOT NULL,
    activity_key TEXT NOT NULL,
    event_name   TEXT NOT NULL,
    data         JSONB,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX signals_target ON signals (workflow_id, activity_key, event_name);

CREATE TABLE files (
    workflow_id  UUID NOT NULL,
    activity_key TEXT NOT NULL,
    filename     TEXT NOT NULL,
    content_type TEXT,
    size         BIGINT NOT NULL,
    data         BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workflow_id, activity_key, filename)
);

CREATE TABLE workers (
    worker_id    TEXT PRIMARY KEY,
    queue        TEXT NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX workers_queue ON workers (queue, last_seen_at);
