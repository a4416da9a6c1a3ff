-- name: get_meta
SELECT value FROM meta WHERE key = %(key)s;

-- name: put_meta_if_absent
INSERT INTO meta (key, value) VALUES (%(key)s, %(value)s) ON CONFLICT (key) DO NOTHING;
