-- name: insert_event
INSERT INTO events (workflow_id, type, activity_key, data, created_at)
VALUES (:workflow_id, :type, :activity_key, :data, :now);

-- name: workflow_events
SELECT id, workflow_id, type, activity_key, data, created_at FROM events
WHERE workflow_id = :workflow_id AND id > :after_id
ORDER BY id LIMIT :limit;

-- name: settle_events
-- One writer: there is never a transaction appending concurrently.
SELECT 1 AS settled;

-- name: events_since
SELECT id, workflow_id, type, activity_key, data, created_at FROM events
WHERE id > :after_id AND (:workflow_id IS NULL OR workflow_id = :workflow_id)
  AND (:type IS NULL OR type = :type)
ORDER BY id LIMIT :limit;

-- name: last_event_id
SELECT COALESCE(MAX(id), 0) AS id FROM events;
