-- name: put_file
INSERT INTO files (workflow_id, activity_key, filename, content_type, size, data, created_at)
VALUES (:workflow_id, :activity_key, :filename, :content_type, :size, :data, :now)
ON CONFLICT (workflow_id, activity_key, filename) DO UPDATE
SET content_type = excluded.content_type, size = excluded.size, data = excluded.data,
    created_at = excluded.created_at;

-- name: get_file
SELECT workflow_id, activity_key, filename, content_type, size, data, created_at
FROM files WHERE workflow_id = :workflow_id AND activity_key = :activity_key
  AND filename = :filename;

-- name: list_activity_files
SELECT filename, content_type, size, created_at FROM files
WHERE workflow_id = :workflow_id AND activity_key = :activity_key ORDER BY filename;
