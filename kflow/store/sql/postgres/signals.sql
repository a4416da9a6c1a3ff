-- name: insert_signal
INSERT INTO signals (id, workflow_id, activity_key, event_name, data, created_at)
VALUES (%(id)s, %(workflow_id)s, %(activity_key)s, %(event_name)s, %(data)s, %(now)s);

-- name: workflow_signals
SELECT id, activity_key, event_name, data FROM signals
WHERE workflow_id = %(workflow_id)s ORDER BY created_at, id;

-- name: delete_signal
DELETE FROM signals WHERE id = %(id)s;
