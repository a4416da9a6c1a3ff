-- name: get_meta
SELECT value FROM meta WHERE key = :key;

-- name: put_meta_if_absent
INSERT INTO meta (key, value) VALUES (:key, :value) ON CONFLICT (key) DO NOTHING;
