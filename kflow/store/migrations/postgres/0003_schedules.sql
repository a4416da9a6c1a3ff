-- Recurring schedules (PROTOCOL §6). Exactly one of cron and interval_seconds.
-- next_fire_at is NULL while a schedule is disabled; firing advances it with a
-- compare-and-set, so one server fires each period.
CREATE TABLE schedules (
    id                 UUID PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    definition_name    TEXT NOT NULL,
    definition_version TEXT,
    input              JSONB NOT NULL,
    cron               TEXT,
    interval_seconds   DOUBLE PRECISION,
    timezone           TEXT NOT NULL,
    overlap_policy     TEXT NOT NULL CHECK (overlap_policy IN ('skip', 'allow')),
    enabled            BOOLEAN NOT NULL,
    next_fire_at       TIMESTAMPTZ,
    last_fired_at      TIMESTAMPTZ,
    last_skipped_at    TIMESTAMPTZ,
    last_run_id        UUID,
    missed_count       BIGINT NOT NULL DEFAULT 0,
    skipped_count      BIGINT NOT NULL DEFAULT 0,
    last_error         TEXT,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL,
    CHECK ((cron IS NULL) <> (interval_seconds IS NULL))
);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE next_fire_at IS NOT NULL;
