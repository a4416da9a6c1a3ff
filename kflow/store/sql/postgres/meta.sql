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

-- name: table_upkeep_stats
-- What PostgreSQL's statistics say about each of kflow's tables in this schema:
-- rows as the planner last estimated them (-1: never vacuumed or analyzed),
-- live and dead row versions now, and rows changed since the last ANALYZE
-- (see kflow.server.table_upkeep). The counters trail commits by up to a few seconds.
SELECT s.relname AS table_name,
       c.reltuples::bigint AS planner_rows,
       s.n_live_tup AS live_rows,
       s.n_dead_tup AS dead_rows,
       s.n_mod_since_analyze AS changed_since_analyze
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema()
  AND s.relname = ANY(%(tables)s)
ORDER BY s.relname;

-- name: analyze_table
-- A template: {table} is filled with a quoted identifier from kflow's own list.
ANALYZE (SKIP_LOCKED) {table};

-- name: vacuum_analyze_table
-- A template, as analyze_table. VACUUM cannot run inside a transaction block.
-- TRUNCATE false: giving empty pages at the table's end back would take a lock
-- that reads and writes wait for; a hot table fills them again anyway.
VACUUM (ANALYZE, SKIP_LOCKED, TRUNCATE false) {table};
