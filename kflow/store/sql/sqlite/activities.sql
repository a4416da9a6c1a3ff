-- name: insert_activities
-- Every activity of a new run in one statement (activities: a JSON array of
-- {key, position, queue, activity_name, timeout_seconds, settings, output_definitions}).
INSERT INTO activities (workflow_id, key, position, queue, activity_name, timeout_seconds,
                        settings, output_definitions, status, updated_at)
SELECT :workflow_id, a.value ->> '$.key', a.value ->> '$.position', a.value ->> '$.queue',
       a.value ->> '$.activity_name', a.value ->> '$.timeout_seconds', a.value -> '$.settings',
       NULLIF(a.value -> '$.output_definitions', 'null'), 'not_scheduled', :now
FROM json_each(:activities) AS a;

-- name: workflow_activities
SELECT workflow_id, key, position, queue, activity_name, timeout_seconds, settings,
       output_definitions, status, iteration, attempt, attempt_id, parameters, available_at,
       wait_signal, wait_timeout_at, signal_data, worker_id, claimed_at, lease_expires_at,
       heartbeat_details, outputs, error, failure_handled, cost_usd, started_at,
       completed_at, updated_at, lease_client, reserved_usd, claimed_with
FROM activities WHERE workflow_id = :workflow_id ORDER BY position;

-- name: activities_of_workflows
-- The activities of several runs (ids: a JSON array of run ids), as workflow_activities
-- reads them, run by run.
SELECT workflow_id, key, position, queue, activity_name, timeout_seconds, settings,
       output_definitions, status, iteration, attempt, attempt_id, parameters, available_at,
       wait_signal, wait_timeout_at, signal_data, worker_id, claimed_at, lease_expires_at,
       heartbeat_details, outputs, error, failure_handled, cost_usd, started_at,
       completed_at, updated_at, lease_client, reserved_usd, claimed_with
FROM activities WHERE workflow_id IN (SELECT value FROM json_each(:ids))
ORDER BY workflow_id, position;

-- name: activities_of_attempts_runs
-- activities_of_workflows for the runs of several attempts (ids: a JSON array of
-- attempt ids); on SQLite the write lock is held already. A run whose activity gave
-- its attempt id up is missing; the caller reads it by id then.
SELECT workflow_id, key, position, queue, activity_name, timeout_seconds, settings,
       output_definitions, status, iteration, attempt, attempt_id, parameters, available_at,
       wait_signal, wait_timeout_at, signal_data, worker_id, claimed_at, lease_expires_at,
       heartbeat_details, outputs, error, failure_handled, cost_usd, started_at,
       completed_at, updated_at, lease_client, reserved_usd, claimed_with
FROM activities
WHERE workflow_id IN (
    SELECT workflow_id FROM activities WHERE attempt_id IN (SELECT value FROM json_each(:ids)))
ORDER BY workflow_id, position;

-- name: activity_by_key
SELECT workflow_id, key, position, queue, activity_name, timeout_seconds, settings,
       output_definitions, status, iteration, attempt, attempt_id, parameters, available_at,
       wait_signal, wait_timeout_at, signal_data, worker_id, claimed_at, lease_expires_at,
       heartbeat_details, outputs, error, failure_handled, cost_usd, started_at,
       completed_at, updated_at
FROM activities WHERE workflow_id = :workflow_id AND key = :key;

-- name: activity_by_attempt
SELECT workflow_id, key, status, attempt_id, worker_id, lease_client, attempt, iteration,
       timeout_seconds, lease_expires_at, claimed_at, reserved_usd
FROM activities WHERE attempt_id = :attempt_id;

-- name: update_activity
UPDATE activities
SET status = :status,
    iteration = :iteration,
    attempt = :attempt,
    attempt_id = COALESCE(:new_attempt_id, attempt_id),
    parameters = :parameters,
    available_at = :available_at,
    wait_signal = :wait_signal,
    wait_timeout_at = :wait_timeout_at,
    signal_data = :signal_data,
    outputs = :outputs,
    error = :error,
    failure_handled = :failure_handled,
    cost_usd = :cost_usd,
    completed_at = :completed_at,
    worker_id = CASE WHEN :clear_lease THEN NULL ELSE worker_id END,
    lease_client = CASE WHEN :clear_lease THEN NULL ELSE lease_client END,
    claimed_at = CASE WHEN :clear_lease THEN NULL ELSE claimed_at END,
    lease_expires_at = CASE WHEN :clear_lease THEN NULL ELSE lease_expires_at END,
    claimed_with = CASE WHEN :clear_lease THEN NULL ELSE claimed_with END,
    heartbeat_details = CASE WHEN :clear_details THEN NULL ELSE heartbeat_details END,
    started_at = CASE WHEN :new_attempt_id IS NOT NULL THEN NULL ELSE started_at END,
    updated_at = :now
WHERE workflow_id = :workflow_id AND key = :key;

-- name: update_activities_of_runs
-- Several activities, of one run or several, in one statement (activities: a
-- JSON array of the fields update_activity binds, each activity once, with its
-- workflow_id and now); JSON null is no value; found through the primary key.
UPDATE activities
SET status = u.value ->> '$.status',
    iteration = u.value ->> '$.iteration',
    attempt = u.value ->> '$.attempt',
    attempt_id = COALESCE(u.value ->> '$.new_attempt_id', attempt_id),
    parameters = NULLIF(u.value -> '$.parameters', 'null'),
    available_at = u.value ->> '$.available_at',
    wait_signal = u.value ->> '$.wait_signal',
    wait_timeout_at = u.value ->> '$.wait_timeout_at',
    signal_data = NULLIF(u.value -> '$.signal_data', 'null'),
    outputs = NULLIF(u.value -> '$.outputs', 'null'),
    error = NULLIF(u.value -> '$.error', 'null'),
    failure_handled = u.value ->> '$.failure_handled',
    cost_usd = u.value ->> '$.cost_usd',
    completed_at = u.value ->> '$.completed_at',
    worker_id = CASE WHEN u.value ->> '$.clear_lease' THEN NULL ELSE worker_id END,
    lease_client = CASE WHEN u.value ->> '$.clear_lease' THEN NULL ELSE lease_client END,
    claimed_at = CASE WHEN u.value ->> '$.clear_lease' THEN NULL ELSE claimed_at END,
    lease_expires_at = CASE WHEN u.value ->> '$.clear_lease' THEN NULL ELSE lease_expires_at END,
    claimed_with = CASE WHEN u.value ->> '$.clear_lease' THEN NULL ELSE claimed_with END,
    heartbeat_details = CASE WHEN u.value ->> '$.clear_details' THEN NULL
                             ELSE heartbeat_details END,
    started_at = CASE WHEN u.value ->> '$.new_attempt_id' IS NOT NULL THEN NULL
                      ELSE started_at END,
    updated_at = u.value ->> '$.now'
FROM json_each(:activities) AS u
WHERE activities.workflow_id = u.value ->> '$.workflow_id'
  AND activities.key = u.value ->> '$.key';

-- name: claim_activities
UPDATE activities
SET status = 'running',
    worker_id = :worker_id,
    lease_client = :client_id,
    reserved_usd = '0',
    claimed_at = :now,
    started_at = :now,
    lease_expires_at = :now + timeout_seconds * 1000000 + :lease_grace_micros,
    claimed_with = NULL,
    updated_at = :now
WHERE rowid IN (
    SELECT rowid FROM activities
    WHERE queue = :queue AND status = 'pending' AND available_at <= :now
    ORDER BY available_at
    LIMIT :limit)
RETURNING workflow_id, key, attempt_id, queue, activity_name, timeout_seconds, settings,
          output_definitions, parameters, signal_data, heartbeat_details, attempt, iteration,
          lease_expires_at;

-- name: claim_run_activities
-- claim_activities restricted to one run (the run whose report just committed).
-- The unary + keeps SQLite on the primary key (the run's few rows) instead of
-- the queue's ready index, which would visit every pending activity of the queue.
UPDATE activities
SET status = 'running',
    worker_id = :worker_id,
    lease_client = :client_id,
    reserved_usd = '0',
    claimed_at = :now,
    started_at = :now,
    lease_expires_at = :now + timeout_seconds * 1000000 + :lease_grace_micros,
    claimed_with = :claimed_with,
    updated_at = :now
WHERE rowid IN (
    SELECT rowid FROM activities
    WHERE workflow_id = :workflow_id AND +queue = :queue AND +status = 'pending'
      AND +available_at <= :now
    ORDER BY available_at
    LIMIT :limit)
RETURNING workflow_id, key, attempt_id, queue, activity_name, timeout_seconds, settings,
          output_definitions, parameters, signal_data, heartbeat_details, attempt, iteration,
          lease_expires_at;

-- name: claim_next_of_runs
-- claim_run_activities for several runs at once, at most one activity each
-- (claims: a JSON array of {workflow_id, queue, worker_id, client_id, now,
-- lease_grace_micros, claimed_with}, each run once); each run's rows are
-- found through the primary key, as claim_run_activities finds them.
UPDATE activities
SET status = 'running',
    worker_id = c.value ->> '$.worker_id',
    lease_client = c.value ->> '$.client_id',
    reserved_usd = '0',
    claimed_at = c.value ->> '$.now',
    started_at = c.value ->> '$.now',
    lease_expires_at = (c.value ->> '$.now') + timeout_seconds * 1000000
                       + (c.value ->> '$.lease_grace_micros'),
    claimed_with = c.value ->> '$.claimed_with',
    updated_at = c.value ->> '$.now'
FROM json_each(:claims) AS c
WHERE activities.workflow_id = c.value ->> '$.workflow_id'
  AND activities.rowid = (
    SELECT p.rowid FROM activities AS p
    WHERE p.workflow_id = c.value ->> '$.workflow_id' AND +p.queue = c.value ->> '$.queue'
      AND +p.status = 'pending' AND +p.available_at <= c.value ->> '$.now'
    ORDER BY p.available_at
    LIMIT 1)
RETURNING workflow_id, key, attempt_id, queue, activity_name, timeout_seconds, settings,
          output_definitions, parameters, signal_data, heartbeat_details, attempt, iteration,
          lease_expires_at;

-- name: claim_ready_of_runs
-- Up to limit ready activities of one queue among runs the claiming transaction
-- created or locked (ids: a JSON array of run ids), for one worker: the work that
-- transaction made ready, handed to a parked poll (kflow.server.handoff). The
-- unary + keeps SQLite on the primary key, as in claim_run_activities.
UPDATE activities
SET status = 'running',
    worker_id = :worker_id,
    lease_client = :client_id,
    reserved_usd = '0',
    claimed_at = :now,
    started_at = :now,
    lease_expires_at = :now + timeout_seconds * 1000000 + :lease_grace_micros,
    claimed_with = NULL,
    updated_at = :now
WHERE rowid IN (
    SELECT rowid FROM activities
    WHERE workflow_id IN (SELECT value FROM json_each(:ids)) AND +queue = :queue
      AND +status = 'pending' AND +available_at <= :now
    ORDER BY available_at, workflow_id, position
    LIMIT :limit)
RETURNING workflow_id, key, attempt_id, queue, activity_name, timeout_seconds, settings,
          output_definitions, parameters, signal_data, heartbeat_details, attempt, iteration,
          lease_expires_at;

-- name: extend_lease
UPDATE activities
SET lease_expires_at = MAX(lease_expires_at, :lease_expires_at),
    heartbeat_details = COALESCE(:details, heartbeat_details),
    updated_at = :now
WHERE attempt_id = :attempt_id AND status = 'running' AND worker_id = :worker_id;

-- name: promote_due_activities
UPDATE activities
SET status = 'pending', updated_at = :now
WHERE rowid IN (
    SELECT rowid FROM activities
    WHERE status = 'waiting' AND wait_signal IS NULL AND available_at <= :now
    LIMIT :limit)
RETURNING workflow_id, key, queue;

-- name: next_due_activity
SELECT MIN(available_at) AS at FROM activities
WHERE status = 'waiting' AND wait_signal IS NULL;

-- name: expired_leases
SELECT workflow_id, key, attempt_id, worker_id, lease_expires_at FROM activities
WHERE status = 'running' AND lease_expires_at <= :now
ORDER BY lease_expires_at LIMIT :limit;

-- name: next_lease_expiry
SELECT MIN(lease_expires_at) AS at FROM activities WHERE status = 'running';

-- name: due_signal_timeouts
SELECT workflow_id, key, attempt_id FROM activities
WHERE status = 'waiting' AND wait_signal IS NOT NULL AND wait_timeout_at IS NOT NULL
  AND wait_timeout_at <= :now
ORDER BY wait_timeout_at LIMIT :limit;

-- name: next_signal_timeout
SELECT MIN(wait_timeout_at) AS at FROM activities
WHERE status = 'waiting' AND wait_signal IS NOT NULL AND wait_timeout_at IS NOT NULL;

-- name: pending_queues
SELECT DISTINCT queue FROM activities WHERE status = 'pending';

-- name: insert_attempt
INSERT INTO attempts (id, workflow_id, activity_key, iteration, attempt, worker_id, outcome,
                      error, cost_usd, usage, started_at, finished_at)
VALUES (:id, :workflow_id, :activity_key, :iteration, :attempt, :worker_id, :outcome,
        :error, :cost_usd, :usage, :started_at, :now)
ON CONFLICT (id) DO NOTHING;

-- name: insert_attempts
-- Several finished attempts in one statement (attempts: a JSON array of the fields
-- insert_attempt binds); each kept once per attempt id.
INSERT INTO attempts (id, workflow_id, activity_key, iteration, attempt, worker_id, outcome,
                      error, cost_usd, usage, started_at, finished_at)
SELECT e.value ->> '$.id', e.value ->> '$.workflow_id', e.value ->> '$.activity_key',
       e.value ->> '$.iteration', e.value ->> '$.attempt', e.value ->> '$.worker_id',
       e.value ->> '$.outcome', NULLIF(e.value -> '$.error', 'null'), e.value ->> '$.cost_usd',
       NULLIF(e.value -> '$.usage', 'null'), e.value ->> '$.started_at', e.value ->> '$.now'
FROM json_each(:attempts) AS e
WHERE true
ORDER BY e.key
ON CONFLICT (id) DO NOTHING;

-- name: get_attempt
SELECT id, workflow_id, activity_key, iteration, attempt, worker_id, outcome, error,
       cost_usd, finished_at
FROM attempts WHERE id = :id;

-- name: workflow_attempts
SELECT id, activity_key, iteration, attempt, worker_id, outcome, error, cost_usd, usage,
       started_at, finished_at
FROM attempts WHERE workflow_id = :workflow_id ORDER BY finished_at, id;

-- name: release_claim
UPDATE activities
SET status = 'pending', worker_id = NULL, lease_client = NULL, claimed_at = NULL,
    lease_expires_at = NULL,
    started_at = NULL, claimed_with = NULL, updated_at = :now
WHERE attempt_id = :attempt_id AND status = 'running' AND worker_id = :worker_id;

-- name: cancel_open_activities
UPDATE activities
SET status = 'cancelled', completed_at = :now, wait_signal = NULL, wait_timeout_at = NULL,
    updated_at = :now
WHERE workflow_id = :workflow_id
  AND status IN ('not_scheduled', 'waiting', 'pending', 'running');

-- name: count_workflow_activities
SELECT COUNT(*) AS total FROM activities WHERE workflow_id = :workflow_id;

-- name: attempts_finished_between
SELECT a.id, a.workflow_id, a.activity_key, a.cost_usd, a.usage, a.finished_at,
       w.definition_name
FROM attempts a JOIN workflows w ON w.id = a.workflow_id
WHERE a.finished_at >= :start AND a.finished_at < :end
ORDER BY a.finished_at, a.id;

-- name: run_reservations
SELECT attempt_id, reserved_usd FROM activities
WHERE workflow_id = :workflow_id AND status = 'running' AND reserved_usd <> '0';

-- name: set_reservation
UPDATE activities SET reserved_usd = :amount, updated_at = :now
WHERE attempt_id = :attempt_id AND status = 'running';
