-- name: insert_schedule
INSERT INTO schedules (id, name, definition_name, definition_version, input, cron,
                       interval_seconds, timezone, overlap_policy, enabled, next_fire_at,
                       created_at, updated_at)
VALUES (:id, :name, :definition_name, :definition_version, :input, :cron,
        :interval_seconds, :timezone, :overlap_policy, :enabled, :next_fire_at, :now, :now)
ON CONFLICT (name) DO NOTHING;

-- name: get_schedule
SELECT id, name, definition_name, definition_version, input, cron, interval_seconds, timezone,
       overlap_policy, enabled, next_fire_at, last_fired_at, last_skipped_at, last_run_id,
       missed_count, skipped_count, last_error, created_at, updated_at
FROM schedules WHERE id = :id;

-- name: lock_schedule
SELECT id, name, definition_name, definition_version, input, cron, interval_seconds, timezone,
       overlap_policy, enabled, next_fire_at, last_fired_at, last_skipped_at, last_run_id,
       missed_count, skipped_count, last_error, created_at, updated_at
FROM schedules WHERE id = :id;

-- name: schedule_by_name
SELECT id FROM schedules WHERE name = :name;

-- name: list_schedules
SELECT id, name, definition_name, definition_version, input, cron, interval_seconds, timezone,
       overlap_policy, enabled, next_fire_at, last_fired_at, last_skipped_at, last_run_id,
       missed_count, skipped_count, last_error, created_at, updated_at
FROM schedules ORDER BY name;

-- name: update_schedule
UPDATE schedules
SET name = :name, definition_name = :definition_name, definition_version = :definition_version,
    input = :input, cron = :cron, interval_seconds = :interval_seconds, timezone = :timezone,
    overlap_policy = :overlap_policy, enabled = :enabled, next_fire_at = :next_fire_at,
    updated_at = :now
WHERE id = :id;

-- name: delete_schedule
DELETE FROM schedules WHERE id = :id;

-- name: due_schedules
SELECT id, next_fire_at FROM schedules
WHERE next_fire_at IS NOT NULL AND next_fire_at <= :now AND enabled = 1
ORDER BY next_fire_at LIMIT :limit;

-- name: next_schedule_fire
SELECT MIN(next_fire_at) AS at FROM schedules
WHERE next_fire_at IS NOT NULL AND enabled = 1;

-- name: fire_schedule
UPDATE schedules
SET next_fire_at = :next_fire_at, last_fired_at = :fired_at,
    missed_count = missed_count + :missed, last_error = NULL
WHERE id = :id AND next_fire_at = :due;

-- name: skip_schedule
UPDATE schedules
SET next_fire_at = :next_fire_at, last_skipped_at = :skipped_at,
    skipped_count = skipped_count + 1, missed_count = missed_count + :missed
WHERE id = :id AND next_fire_at = :due;

-- name: reschedule_schedule
UPDATE schedules
SET next_fire_at = :next_fire_at, missed_count = missed_count + :missed,
    last_error = :error
WHERE id = :id AND next_fire_at = :due;

-- name: set_schedule_run
UPDATE schedules SET last_run_id = :run_id WHERE id = :id;
