-- name: insert_signal
INSERT INTO signals (id, workflow_id, activity_key, event_name, data, created_at)
VALUES (:id, :workflow_id, :activity_key, :event_name, :data, :now);

-- name: workflow_signals
SELECT id, activity_key, event_name, data FROM signals
WHERE workflow_id = :workflow_id ORDER BY created_at, id;

-- name: delete_signal
DELETE FROM signals WHERE id = :id;
