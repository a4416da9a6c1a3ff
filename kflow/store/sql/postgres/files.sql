-- name: put_file
INSERT INTO files (workflow_id, activity_key, filename, content_type, size, data, created_at)
VALUES (%(workflow_id)s, %(activity_key)s, %(filename)s, %(content_type)s, %(size)s, %(data)s, %(now)s)
ON CONFLICT (workflow_id, activity_key, filename) DO UPDATE
SET content_type = excluded.content_type, size = excluded.size, data = excluded.data,
    created_at = excluded.created_at;

-- name: get_file
SELECT workflow_id, activity_key, filename, content_type, size, data, created_at
FROM files WHERE workflow_id = %(workflow_id)s AND activity_key = %(activity_key)s
  AND filename = %(filename)s;

-- name: list_activity_files
SELECT filename, content_type, size, created_at FROM files
WHERE workflow_id = %(workflow_id)s AND activity_key = %(activity_key)s ORDER BY filename;
