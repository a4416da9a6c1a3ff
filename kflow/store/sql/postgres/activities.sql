-- name: insert_activities
-- Every activity of a new run in one statement (activities: a JSON array of
-- {key, position, queue, activity_name, timeout_seconds, settings, output_definitions}).
INSERT INTO activities (workflow_id, key, position, queue, activity_name, timeout_seconds,
                        settings, output_definitions, status, updated_at)
SELECT %(workflow_id)s, a.item ->> 'key', (a.item ->> 'position')::integer, a.item ->> 'queue',
       a.item ->> 'activity_name', (a.item ->> 'timeout_seconds')::numeric::integer, a.item -> 'settings',
       NULLIF(a.item -> 'output_definitions', 'null'::jsonb), 'not_scheduled', %(now)s
FROM jsonb_array_elements(%(activities)s) AS a(item);

-- name: insert_workflow_with_activities
-- insert_workflow and insert_activities of a new run in one statement (a
-- data-modifying WITH; the parameters of both, the run's id as id).
WITH run AS (
    INSERT INTO workflows (id, definition_name, definition_version, status, input, unique_key,
                           created_at, updated_at, timeout_at)
    VALUES (%(id)s, %(definition_name)s, %(definition_version)s, 'created', %(input)s,
            %(unique_key)s, %(now)s, %(now)s, %(timeout_at)s))
INSERT INTO activities (workflow_id, key, position, queue, activity_name, timeout_seconds,
                        settings, output_definitions, status, updated_at)
SELECT %(id)s, a.item ->> 'key', (a.item ->> 'position')::integer, a.item ->> 'queue',
       a.item ->> 'activity_name', (a.item ->> 'timeout_seconds')::numeric::integer, a.item -> 'settings',
       NULLIF(a.item -> 'output_definitions', 'null'::jsonb), 'not_scheduled', %(now)s
FROM jsonb_array_elements(%(activities)s) AS a(item);

-- name: workflow_activities
SELECT workflow_id, key, position, queue, activity_name, timeout_seconds, settings,
       output_definitions, status, iteration, attempt, attempt_id, parameters, available_at,
       wait_signal, wait_timeout_at, signal_data, worker_id, claimed_at, lease_expires_at,
       heartbeat_details, outputs, error, failure_handled, cost_usd, started_at,
       completed_at, updated_at, lease_client, reserved_usd, claimed_with
FROM activities WHERE workflow_id = %(workflow_id)s ORDER BY position;

-- name: activities_of_workflows
-- The activities of several runs (ids: a JSON array of run ids), as workflow_activities
-- reads them, run by run.
SELECT workflow_id, key, position, queue, activity_name, timeout_seconds, settings,
       output_definitions, status, iteration, attempt, attempt_id, parameters, available_at,
       wait_signal, wait_timeout_at, signal_data, worker_id, claimed_at, lease_expires_at,
       heartbeat_details, outputs, error, failure_handled, cost_usd, started_at,
       completed_at, updated_at, lease_client, reserved_usd, claimed_with
FROM activities
-- ANY(ARRAY(...)): the planner reckons with a few runs and reads the primary key; a
-- set-returning function counts as 100 rows, for which it would scan the table.
WHERE workflow_id = ANY(ARRAY(SELECT jsonb_array_elements_text(%(ids)s)::uuid))
ORDER BY workflow_id, position;

-- name: activities_of_attempts_runs
-- activities_of_workflows for the runs of several attempts (ids: a JSON array of
-- attempt ids) -- sent right after lock_workflows_of_attempts, in the same round
-- trip, so it reads the runs once they are locked. A run whose activity gave its
-- attempt id up before the lock is missing; the caller reads it by id then.
SELECT workflow_id, key, position, queue, activity_name, timeout_seconds, settings,
       output_definitions, status, iteration, attempt, attempt_id, parameters, available_at,
       wait_signal, wait_timeout_at, signal_data, worker_id, claimed_at, lease_expires_at,
       heartbeat_details, outputs, error, failure_handled, cost_usd, started_at,
       completed_at, updated_at, lease_client, reserved_usd, claimed_with
FROM activities
WHERE workflow_id = ANY(ARRAY(
    SELECT workflow_id FROM activities
    WHERE attempt_id = ANY(ARRAY(SELECT jsonb_array_elements_text(%(ids)s)::uuid))))
ORDER BY workflow_id, position;

-- name: activity_by_key
SELECT workflow_id, key, position, queue, activity_name, timeout_seconds, settings,
       output_definitions, status, iteration, attempt, attempt_id, parameters, available_at,
       wait_signal, wait_timeout_at, signal_data, worker_id, claimed_at, lease_expires_at,
       heartbeat_details, outputs, error, failure_handled, cost_usd, started_at,
       completed_at, updated_at
FROM activities WHERE workflow_id = %(workflow_id)s AND key = %(key)s;

-- name: activity_by_attempt
SELECT workflow_id, key, status, attempt_id, worker_id, lease_client, attempt, iteration,
       timeout_seconds, lease_expires_at, claimed_at, reserved_usd
FROM activities WHERE attempt_id = %(attempt_id)s;

-- name: update_activity
UPDATE activities
SET status = %(status)s,
    iteration = %(iteration)s,
    attempt = %(attempt)s,
    attempt_id = COALESCE(%(new_attempt_id)s, attempt_id),
    parameters = %(parameters)s,
    available_at = %(available_at)s,
    wait_signal = %(wait_signal)s,
    wait_timeout_at = %(wait_timeout_at)s,
    signal_data = %(signal_data)s,
    outputs = %(outputs)s,
    error = %(error)s,
    failure_handled = %(failure_handled)s,
    cost_usd = %(cost_usd)s,
    completed_at = %(completed_at)s,
    worker_id = CASE WHEN %(clear_lease)s THEN NULL ELSE worker_id END,
    lease_client = CASE WHEN %(clear_lease)s THEN NULL ELSE lease_client END,
    claimed_at = CASE WHEN %(clear_lease)s THEN NULL ELSE claimed_at END,
    lease_expires_at = CASE WHEN %(clear_lease)s THEN NULL ELSE lease_expires_at END,
    claimed_with = CASE WHEN %(clear_lease)s THEN NULL ELSE claimed_with END,
    heartbeat_details = CASE WHEN %(clear_details)s THEN NULL ELSE heartbeat_details END,
    started_at = CASE WHEN %(new_attempt_id)s IS NOT NULL THEN NULL ELSE started_at END,
    updated_at = %(now)s
WHERE workflow_id = %(workflow_id)s AND key = %(key)s;

-- name: update_activities_of_runs
-- Several activities, of one run or several, in one statement (activities: a
-- JSON array of the fields update_activity binds, each activity once, with its
-- workflow_id and now); JSON null is no value. The runs' rows are read through
-- the primary key (ANY(ARRAY(...)), as in activities_of_workflows), not by
-- scanning the table to join the array. An item with a "claim" ({worker_id,
-- client_id, now, lease_expires_at, claimed_with}) is the activity the same
-- transaction made pending and claims at once: written running, as
-- claim_known_activities would leave it, in this one row version.
UPDATE activities AS a
SET status = CASE WHEN u.item ? 'claim' THEN 'running' ELSE u.item ->> 'status' END,
    iteration = (u.item ->> 'iteration')::integer,
    attempt = (u.item ->> 'attempt')::integer,
    attempt_id = COALESCE((u.item ->> 'new_attempt_id')::uuid, a.attempt_id),
    parameters = NULLIF(u.item -> 'parameters', 'null'::jsonb),
    available_at = (u.item ->> 'available_at')::timestamptz,
    wait_signal = u.item ->> 'wait_signal',
    wait_timeout_at = (u.item ->> 'wait_timeout_at')::timestamptz,
    signal_data = NULLIF(u.item -> 'signal_data', 'null'::jsonb),
    outputs = NULLIF(u.item -> 'outputs', 'null'::jsonb),
    error = NULLIF(u.item -> 'error', 'null'::jsonb),
    failure_handled = (u.item ->> 'failure_handled')::boolean,
    cost_usd = (u.item ->> 'cost_usd')::numeric,
    completed_at = (u.item ->> 'completed_at')::timestamptz,
    worker_id = CASE WHEN u.item ? 'claim' THEN u.item #>> '{claim,worker_id}'
                     WHEN (u.item ->> 'clear_lease')::boolean THEN NULL ELSE a.worker_id END,
    lease_client = CASE WHEN u.item ? 'claim' THEN u.item #>> '{claim,client_id}'
                        WHEN (u.item ->> 'clear_lease')::boolean THEN NULL ELSE a.lease_client END,
    reserved_usd = CASE WHEN u.item ? 'claim' THEN 0 ELSE a.reserved_usd END,
    claimed_at = CASE WHEN u.item ? 'claim' THEN (u.item #>> '{claim,now}')::timestamptz
                      WHEN (u.item ->> 'clear_lease')::boolean THEN NULL ELSE a.claimed_at END,
    lease_expires_at = CASE WHEN u.item ? 'claim'
                            THEN (u.item #>> '{claim,lease_expires_at}')::timestamptz
                            WHEN (u.item ->> 'clear_lease')::boolean THEN NULL
                            ELSE a.lease_expires_at END,
    claimed_with = CASE WHEN u.item ? 'claim' THEN (u.item #>> '{claim,claimed_with}')::uuid
                        WHEN (u.item ->> 'clear_lease')::boolean THEN NULL ELSE a.claimed_with END,
    heartbeat_details = CASE WHEN (u.item ->> 'clear_details')::boolean THEN NULL
                             ELSE a.heartbeat_details END,
    started_at = CASE WHEN u.item ? 'claim' THEN (u.item #>> '{claim,now}')::timestamptz
                      WHEN u.item ->> 'new_attempt_id' IS NOT NULL THEN NULL ELSE a.started_at END,
    updated_at = (u.item ->> 'now')::timestamptz
FROM jsonb_array_elements(%(activities)s) AS u(item)
WHERE a.workflow_id = ANY(ARRAY(SELECT (jsonb_array_elements(%(activities)s) ->> 'workflow_id')::uuid))
  AND a.workflow_id = (u.item ->> 'workflow_id')::uuid AND a.key = u.item ->> 'key';

-- name: claim_activities
UPDATE activities
SET status = 'running',
    worker_id = %(worker_id)s,
    lease_client = %(client_id)s,
    reserved_usd = 0,
    claimed_at = %(now)s,
    started_at = %(now)s,
    lease_expires_at = %(now)s + make_interval(secs => activities.timeout_seconds)
                       + %(lease_grace_micros)s * interval '1 microsecond',
    claimed_with = NULL,
    updated_at = %(now)s
FROM (
    SELECT workflow_id AS c_workflow_id, key AS c_key FROM activities
    WHERE queue = %(queue)s AND status = 'pending' AND available_at <= %(now)s
    ORDER BY available_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED) AS claimable
WHERE activities.workflow_id = claimable.c_workflow_id AND activities.key = claimable.c_key
RETURNING workflow_id, key, attempt_id, queue, activity_name, timeout_seconds, settings,
          output_definitions, parameters, signal_data, heartbeat_details, attempt, iteration,
          lease_expires_at;

-- name: claim_run_activities
-- claim_activities restricted to one run (the run whose report just committed);
-- the planner picks the primary key (the run's few rows).
-- (EXPLAIN with 36,000 activities, 9,000 of them pending: activities_pkey.)
UPDATE activities
SET status = 'running',
    worker_id = %(worker_id)s,
    lease_client = %(client_id)s,
    reserved_usd = 0,
    claimed_at = %(now)s,
    started_at = %(now)s,
    lease_expires_at = %(now)s + make_interval(secs => activities.timeout_seconds)
                       + %(lease_grace_micros)s * interval '1 microsecond',
    claimed_with = %(claimed_with)s,
    updated_at = %(now)s
FROM (
    SELECT workflow_id AS c_workflow_id, key AS c_key FROM activities
    WHERE workflow_id = %(workflow_id)s AND queue = %(queue)s AND status = 'pending' AND available_at <= %(now)s
    ORDER BY available_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED) AS claimable
WHERE activities.workflow_id = claimable.c_workflow_id AND activities.key = claimable.c_key
RETURNING workflow_id, key, attempt_id, queue, activity_name, timeout_seconds, settings,
          output_definitions, parameters, signal_data, heartbeat_details, attempt, iteration,
          lease_expires_at;

-- name: claim_known_activities
-- Claims decided by the transaction that made the activities pending (claims:
-- a JSON array of {workflow_id, key, attempt_id, worker_id, client_id, now,
-- lease_expires_at, claimed_with}): each row is the one pending attempt of its
-- queue that transaction just wrote under its run's lock, so the claim names it
-- and nobody waits for an answer. Sets what claim_run_activities sets; the
-- rows are found through the primary key.
UPDATE activities AS a
SET status = 'running',
    worker_id = c.worker_id,
    lease_client = c.client_id,
    reserved_usd = 0,
    claimed_at = c.now,
    started_at = c.now,
    lease_expires_at = c.lease_expires_at,
    claimed_with = c.claimed_with,
    updated_at = c.now
FROM jsonb_to_recordset(%(claims)s) AS c(workflow_id uuid, key text, attempt_id uuid,
                                         worker_id text, client_id text, now timestamptz,
                                         lease_expires_at timestamptz, claimed_with uuid)
WHERE a.workflow_id = ANY(ARRAY(SELECT (jsonb_array_elements(%(claims)s) ->> 'workflow_id')::uuid))
  AND a.workflow_id = c.workflow_id AND a.key = c.key AND a.attempt_id = c.attempt_id
  AND a.status = 'pending';

-- name: claim_next_of_runs
-- claim_run_activities for several runs at once, at most one activity each
-- (claims: a JSON array of {workflow_id, queue, worker_id, client_id, now,
-- lease_grace_micros, claimed_with}, each run once). Each run's pending rows
-- are found through the primary key, as claim_run_activities finds them. The
-- choice is made once (MATERIALIZED): a plan that scanned it again per row of
-- the update would, with the rows it updated already skipped, choose again.
WITH c AS MATERIALIZED (
    SELECT w.*, p.key AS c_key
    FROM jsonb_to_recordset(%(claims)s) AS w(workflow_id uuid, queue text, worker_id text,
                                            client_id text, now timestamptz,
                                            lease_grace_micros bigint, claimed_with uuid)
    CROSS JOIN LATERAL (
        SELECT key FROM activities
        WHERE workflow_id = w.workflow_id AND queue = w.queue AND status = 'pending'
          AND available_at <= w.now
        ORDER BY available_at
        LIMIT 1
        FOR UPDATE SKIP LOCKED) AS p)
UPDATE activities
SET status = 'running',
    worker_id = c.worker_id,
    lease_client = c.client_id,
    reserved_usd = 0,
    claimed_at = c.now,
    started_at = c.now,
    lease_expires_at = c.now + make_interval(secs => activities.timeout_seconds)
                       + c.lease_grace_micros * interval '1 microsecond',
    claimed_with = c.claimed_with,
    updated_at = c.now
FROM c
WHERE activities.workflow_id = ANY(ARRAY(SELECT workflow_id FROM c))
  AND activities.workflow_id = c.workflow_id AND activities.key = c.c_key
RETURNING activities.workflow_id, activities.key, activities.attempt_id, activities.queue,
          activities.activity_name, activities.timeout_seconds, activities.settings,
          activities.output_definitions, activities.parameters, activities.signal_data,
          activities.heartbeat_details, activities.attempt, activities.iteration,
          activities.lease_expires_at;

-- name: claim_ready_of_runs
-- Up to limit ready activities of one queue among runs the claiming transaction
-- created or locked (ids: a JSON array of run ids), for one worker: the work that
-- transaction made ready, handed to a parked poll (kflow.server.handoff). The
-- runs' rows are read through the primary key (ANY(ARRAY(...))); the choice is
-- made once (MATERIALIZED), as in claim_next_of_runs.
WITH c AS MATERIALIZED (
    SELECT workflow_id AS c_workflow_id, key AS c_key FROM activities
    WHERE workflow_id = ANY(ARRAY(SELECT jsonb_array_elements_text(%(ids)s)::uuid))
      AND queue = %(queue)s AND status = 'pending' AND available_at <= %(now)s
    ORDER BY available_at, workflow_id, position
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
UPDATE activities
SET status = 'running',
    worker_id = %(worker_id)s,
    lease_client = %(client_id)s,
    reserved_usd = 0,
    claimed_at = %(now)s,
    started_at = %(now)s,
    lease_expires_at = %(now)s + make_interval(secs => activities.timeout_seconds)
                       + %(lease_grace_micros)s * interval '1 microsecond',
    claimed_with = NULL,
    updated_at = %(now)s
FROM c
WHERE activities.workflow_id = c.c_workflow_id AND activities.key = c.c_key
RETURNING activities.workflow_id, activities.key, activities.attempt_id, activities.queue,
          activities.activity_name, activities.timeout_seconds, activities.settings,
          activities.output_definitions, activities.parameters, activities.signal_data,
          activities.heartbeat_details, activities.attempt, activities.iteration,
          activities.lease_expires_at;

-- name: extend_lease
UPDATE activities
SET lease_expires_at = GREATEST(lease_expires_at, %(lease_expires_at)s),
    heartbeat_details = COALESCE(%(details)s, heartbeat_details),
    updated_at = %(now)s
WHERE attempt_id = %(attempt_id)s AND status = 'running' AND worker_id = %(worker_id)s;

-- name: promote_due_activities
UPDATE activities
SET status = 'pending', updated_at = %(now)s
FROM (
    SELECT workflow_id AS c_workflow_id, key AS c_key FROM activities
    WHERE status = 'waiting' AND wait_signal IS NULL AND available_at <= %(now)s
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED) AS due
WHERE activities.workflow_id = due.c_workflow_id AND activities.key = due.c_key
RETURNING workflow_id, key, queue;

-- name: next_due_activity
SELECT MIN(available_at) AS at FROM activities
WHERE status = 'waiting' AND wait_signal IS NULL;

-- name: expired_leases
SELECT workflow_id, key, attempt_id, worker_id, lease_expires_at FROM activities
WHERE status = 'running' AND lease_expires_at <= %(now)s
ORDER BY lease_expires_at LIMIT %(limit)s;

-- name: next_lease_expiry
SELECT MIN(lease_expires_at) AS at FROM activities WHERE status = 'running';

-- name: due_signal_timeouts
SELECT workflow_id, key, attempt_id FROM activities
WHERE status = 'waiting' AND wait_signal IS NOT NULL AND wait_timeout_at IS NOT NULL
  AND wait_timeout_at <= %(now)s
ORDER BY wait_timeout_at LIMIT %(limit)s;

-- name: next_signal_timeout
SELECT MIN(wait_timeout_at) AS at FROM activities
WHERE status = 'waiting' AND wait_signal IS NOT NULL AND wait_timeout_at IS NOT NULL;

-- name: pending_queues
SELECT DISTINCT queue FROM activities WHERE status = 'pending';

-- name: insert_attempt
INSERT INTO attempts (id, workflow_id, activity_key, iteration, attempt, worker_id, outcome,
                      error, cost_usd, usage, started_at, finished_at)
VALUES (%(id)s, %(workflow_id)s, %(activity_key)s, %(iteration)s, %(attempt)s, %(worker_id)s, %(outcome)s,
        %(error)s, %(cost_usd)s, %(usage)s, %(started_at)s, %(now)s)
ON CONFLICT (id) DO NOTHING;

-- name: insert_attempts
-- Several finished attempts in one statement (attempts: a JSON array of the fields
-- insert_attempt binds); each kept once per attempt id.
INSERT INTO attempts (id, workflow_id, activity_key, iteration, attempt, worker_id, outcome,
                      error, cost_usd, usage, started_at, finished_at)
SELECT (a ->> 'id')::uuid, (a ->> 'workflow_id')::uuid, a ->> 'activity_key',
       (a ->> 'iteration')::integer, (a ->> 'attempt')::integer, a ->> 'worker_id',
       a ->> 'outcome', NULLIF(a -> 'error', 'null'::jsonb), (a ->> 'cost_usd')::numeric,
       NULLIF(a -> 'usage', 'null'::jsonb), (a ->> 'started_at')::timestamptz,
       (a ->> 'now')::timestamptz
FROM jsonb_array_elements(%(attempts)s) WITH ORDINALITY AS e(a, n)
ORDER BY e.n
ON CONFLICT (id) DO NOTHING;

-- name: get_attempt
SELECT id, workflow_id, activity_key, iteration, attempt, worker_id, outcome, error,
       cost_usd, finished_at
FROM attempts WHERE id = %(id)s;

-- name: workflow_attempts
SELECT id, activity_key, iteration, attempt, worker_id, outcome, error, cost_usd, usage,
       started_at, finished_at
FROM attempts WHERE workflow_id = %(workflow_id)s ORDER BY finished_at, id;

-- name: release_claim
UPDATE activities
SET status = 'pending', worker_id = NULL, lease_client = NULL, claimed_at = NULL,
    lease_expires_at = NULL,
    started_at = NULL, claimed_with = NULL, updated_at = %(now)s
WHERE attempt_id = %(attempt_id)s AND status = 'running' AND worker_id = %(worker_id)s;

-- name: cancel_open_activities
UPDATE activities
SET status = 'cancelled', completed_at = %(now)s, wait_signal = NULL, wait_timeout_at = NULL,
    updated_at = %(now)s
WHERE workflow_id = %(workflow_id)s
  AND status IN ('not_scheduled', 'waiting', 'pending', 'running');

-- name: count_workflow_activities
SELECT COUNT(*) AS total FROM activities WHERE workflow_id = %(workflow_id)s;

-- name: attempts_finished_between
SELECT a.id, a.workflow_id, a.activity_key, a.cost_usd, a.usage, a.finished_at,
       w.definition_name
FROM attempts a JOIN workflows w ON w.id = a.workflow_id
WHERE a.finished_at >= %(start)s::timestamptz AND a.finished_at < %(end)s::timestamptz
ORDER BY a.finished_at, a.id;

-- name: run_reservations
SELECT attempt_id, reserved_usd FROM activities
WHERE workflow_id = %(workflow_id)s AND status = 'running' AND reserved_usd <> 0;

-- name: set_reservation
UPDATE activities SET reserved_usd = %(amount)s, updated_at = %(now)s
WHERE attempt_id = %(attempt_id)s AND status = 'running';

-- name: insert_appends_of_runs
-- insert_attempts and insert_events_of_runs in one statement (PostgreSQL runs
-- data-modifying WITH queries; SQLite does not, so DeferredWrites sends two there).
-- The two tables do not meet: neither insert needs to see the other's rows.
WITH appending AS (SELECT pg_advisory_xact_lock_shared(7102)),
kept_attempts AS (
    INSERT INTO attempts (id, workflow_id, activity_key, iteration, attempt, worker_id, outcome,
                          error, cost_usd, usage, started_at, finished_at)
    SELECT (a ->> 'id')::uuid, (a ->> 'workflow_id')::uuid, a ->> 'activity_key',
           (a ->> 'iteration')::integer, (a ->> 'attempt')::integer, a ->> 'worker_id',
           a ->> 'outcome', NULLIF(a -> 'error', 'null'::jsonb), (a ->> 'cost_usd')::numeric,
           NULLIF(a -> 'usage', 'null'::jsonb), (a ->> 'started_at')::timestamptz,
           (a ->> 'now')::timestamptz
    FROM jsonb_array_elements(%(attempts)s) WITH ORDINALITY AS e(a, n)
    ORDER BY e.n
    ON CONFLICT (id) DO NOTHING
),
kept_events AS (
    INSERT INTO events (workflow_id, type, activity_key, data, created_at)
    SELECT (e.item ->> 'workflow_id')::uuid, e.item ->> 'type', e.item ->> 'activity_key',
           NULLIF(e.item -> 'data', 'null'::jsonb), (e.item ->> 'now')::timestamptz
    FROM appending, jsonb_array_elements(%(events)s) WITH ORDINALITY AS e(item, n)
    ORDER BY e.n
)
SELECT 1 AS written;  -- data-modifying WITH queries run to completion unread
