-- name: insert_events
-- Several events of one run in one statement, in list order (events: a JSON
-- array of {type, activity_key, data}); json_each keeps each value's text as it is.
INSERT INTO events (workflow_id, type, activity_key, data, created_at)
SELECT :workflow_id, e.value ->> '$.type', e.value ->> '$.activity_key',
       NULLIF(e.value -> '$.data', 'null'), :now
FROM json_each(:events) AS e
ORDER BY e.key;

-- name: insert_events_of_runs
-- Events of several runs in one statement, in list order (events: a JSON array of
-- {workflow_id, type, activity_key, data, now}).
INSERT INTO events (workflow_id, type, activity_key, data, created_at)
SELECT e.value ->> '$.workflow_id', e.value ->> '$.type', e.value ->> '$.activity_key',
       NULLIF(e.value -> '$.data', 'null'), e.value ->> '$.now'
FROM json_each(:events) AS e
ORDER BY e.key;

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
