-- Recurring schedules (PROTOCOL §6). Exactly one of cron and interval_seconds.
-- next_fire_at is NULL while a schedule is disabled; firing advances it with a
-- compare-and-set, so one server fires each period.
CREATE TABLE schedules (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    definition_name    TEXT NOT NULL,
    definition_version TEXT,
    input              TEXT NOT NULL,
    cron               TEXT,
    interval_seconds   REAL,
    timezone           TEXT NOT NULL,
    overlap_policy     TEXT NOT NULL CHECK (overlap_policy IN ('skip', 'allow')),
    enabled            INTEGER NOT NULL,
    next_fire_at       INTEGER,
    last_fired_at      INTEGER,
    last_skipped_at    INTEGER,
    last_run_id        TEXT,
    missed_count       INTEGER NOT NULL DEFAULT 0,
    skipped_count      INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    CHECK ((cron IS NULL) <> (interval_seconds IS NULL))
);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE next_fire_at IS NOT NULL;
