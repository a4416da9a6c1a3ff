-- name: insert_events
-- Several events of one run in one statement, in list order (events: a JSON
-- array of {type, activity_key, data}); the same shared lock as insert_event.
INSERT INTO events (workflow_id, type, activity_key, data, created_at)
SELECT %(workflow_id)s, e.item ->> 'type', e.item ->> 'activity_key',
       NULLIF(e.item -> 'data', 'null'::jsonb), %(now)s
FROM (SELECT pg_advisory_xact_lock_shared(7102)) AS appending,
     jsonb_array_elements(%(events)s) WITH ORDINALITY AS e(item, n)
ORDER BY e.n;

-- name: insert_events_of_runs
-- Events of several runs in one statement, in list order (events: a JSON array of
-- {workflow_id, type, activity_key, data, now}); the same shared lock as insert_event.
INSERT INTO events (workflow_id, type, activity_key, data, created_at)
SELECT (e.item ->> 'workflow_id')::uuid, e.item ->> 'type', e.item ->> 'activity_key',
       NULLIF(e.item -> 'data', 'null'::jsonb), (e.item ->> 'now')::timestamptz
FROM (SELECT pg_advisory_xact_lock_shared(7102)) AS appending,
     jsonb_array_elements(%(events)s) WITH ORDINALITY AS e(item, n)
ORDER BY e.n;

-- name: insert_event
-- Appenders hold a shared advisory lock until they commit; a reader of every
-- run's history first takes it exclusively (settle_events), so the events it
-- then reads are a prefix of the ids that will ever commit: no late commit is
-- skipped. (One run's history needs no lock: it is appended only under the
-- run's row lock, so it commits in id order.)
INSERT INTO events (workflow_id, type, activity_key, data, created_at)
SELECT %(workflow_id)s, %(type)s, %(activity_key)s, %(data)s, %(now)s
FROM (SELECT pg_advisory_xact_lock_shared(7102)) AS appending;

-- name: workflow_events
SELECT id, workflow_id, type, activity_key, data, created_at FROM events
WHERE workflow_id = %(workflow_id)s AND id > %(after_id)s
ORDER BY id LIMIT %(limit)s;

-- name: settle_events
-- Wait until no transaction is appending events (see insert_event); run it as its
-- own statement, before reading, so the read's snapshot is taken afterwards.
SELECT pg_advisory_xact_lock(7102) AS settled;

-- name: events_since
SELECT id, workflow_id, type, activity_key, data, created_at FROM events
WHERE id > %(after_id)s
  AND (%(workflow_id)s::uuid IS NULL OR workflow_id = %(workflow_id)s::uuid)
  AND (%(type)s::text IS NULL OR type = %(type)s::text)
ORDER BY id LIMIT %(limit)s;

-- name: last_event_id
SELECT COALESCE(MAX(id), 0) AS id FROM events;
