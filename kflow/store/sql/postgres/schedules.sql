-- name: insert_schedule
INSERT INTO schedules (id, name, definition_name, definition_version, input, cron,
                       interval_seconds, timezone, overlap_policy, enabled, next_fire_at,
                       created_at, updated_at)
VALUES (%(id)s, %(name)s, %(definition_name)s, %(definition_version)s, %(input)s, %(cron)s,
        %(interval_seconds)s, %(timezone)s, %(overlap_policy)s, %(enabled)s, %(next_fire_at)s,
        %(now)s, %(now)s)
ON CONFLICT (name) DO NOTHING;

-- name: get_schedule
SELECT id, name, definition_name, definition_version, input, cron, interval_seconds, timezone,
       overlap_policy, enabled, next_fire_at, last_fired_at, last_skipped_at, last_run_id,
       missed_count, skipped_count, last_error, created_at, updated_at
FROM schedules WHERE id = %(id)s;

-- name: lock_schedule
SELECT id, name, definition_name, definition_version, input, cron, interval_seconds, timezone,
       overlap_policy, enabled, next_fire_at, last_fired_at, last_skipped_at, last_run_id,
       missed_count, skipped_count, last_error, created_at, updated_at
FROM schedules WHERE id = %(id)s
FOR UPDATE;

-- name: schedule_by_name
SELECT id FROM schedules WHERE name = %(name)s;

-- name: list_schedules
SELECT id, name, definition_name, definition_version, input, cron, interval_seconds, timezone,
       overlap_policy, enabled, next_fire_at, last_fired_at, last_skipped_at, last_run_id,
       missed_count, skipped_count, last_error, created_at, updated_at
FROM schedules ORDER BY name;

-- name: update_schedule
UPDATE schedules
SET name = %(name)s, definition_name = %(definition_name)s,
    definition_version = %(definition_version)s, input = %(input)s, cron = %(cron)s,
    interval_seconds = %(interval_seconds)s, timezone = %(timezone)s,
    overlap_policy = %(overlap_policy)s, enabled = %(enabled)s, next_fire_at = %(next_fire_at)s,
    updated_at = %(now)s
WHERE id = %(id)s;

-- name: delete_schedule
DELETE FROM schedules WHERE id = %(id)s;

-- name: due_schedules
SELECT id, next_fire_at FROM schedules
WHERE next_fire_at IS NOT NULL AND next_fire_at <= %(now)s AND enabled
ORDER BY next_fire_at LIMIT %(limit)s;

-- name: next_schedule_fire
SELECT MIN(next_fire_at) AS at FROM schedules
WHERE next_fire_at IS NOT NULL AND enabled;

-- name: fire_schedule
UPDATE schedules
SET next_fire_at = %(next_fire_at)s, last_fired_at = %(fired_at)s,
    missed_count = missed_count + %(missed)s, last_error = NULL
WHERE id = %(id)s AND next_fire_at = %(due)s;

-- name: skip_schedule
UPDATE schedules
SET next_fire_at = %(next_fire_at)s, last_skipped_at = %(skipped_at)s,
    skipped_count = skipped_count + 1, missed_count = missed_count + %(missed)s
WHERE id = %(id)s AND next_fire_at = %(due)s;

-- name: reschedule_schedule
UPDATE schedules
SET next_fire_at = %(next_fire_at)s, missed_count = missed_count + %(missed)s,
    last_error = %(error)s
WHERE id = %(id)s AND next_fire_at = %(due)s;

-- name: set_schedule_run
UPDATE schedules SET last_run_id = %(run_id)s WHERE id = %(id)s;
