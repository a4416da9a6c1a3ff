-- name: get_meta
SELECT value FROM meta WHERE key = %(key)s;

-- name: put_meta_if_absent
INSERT INTO meta (key, value) VALUES (%(key)s, %(value)s) ON CONFLICT (key) DO NOTHING;

-- name: other_listeners
-- Listening connections of other kflow servers on this database (named
-- prefix || instance; see kflow.server.peers). application_name is shown to every role.
SELECT count(*) AS listeners FROM pg_stat_activity
WHERE datname = current_database()
  AND application_name LIKE %(prefix)s
  AND application_name <> %(own)s;
