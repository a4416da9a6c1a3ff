-- name: insert_event
INSERT INTO events (workflow_id, type, activity_key, data, created_at)
VALUES (%(workflow_id)s, %(type)s, %(activity_key)s, %(data)s, %(now)s);

-- name: workflow_events
SELECT id, workflow_id, type, activity_key, data, created_at FROM events
WHERE workflow_id = %(workflow_id)s AND id > %(after_id)s
ORDER BY id LIMIT %(limit)s;

-- name: events_since
SELECT id, workflow_id, type, activity_key, data, created_at FROM events
WHERE id > %(after_id)s
  AND (%(workflow_id)s::uuid IS NULL OR workflow_id = %(workflow_id)s::uuid)
  AND (%(type)s::text IS NULL OR type = %(type)s::text)
ORDER BY id LIMIT %(limit)s;

-- name: last_event_id
SELECT COALESCE(MAX(id), 0) AS id FROM events;
