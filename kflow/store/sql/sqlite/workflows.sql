-- name: insert_workflow
INSERT INTO workflows (id, definition_name, definition_version, status, input, unique_key,
                       created_at, updated_at, timeout_at)
VALUES (:id, :definition_name, :definition_version, 'created', :input, :unique_key,
        :now, :now, :timeout_at);

-- name: get_workflow
SELECT id, definition_name, definition_version, status, input, unique_key, error_message,
       total_cost_usd, created_at, updated_at, completed_at, timeout_at
FROM workflows WHERE id = :id;

-- name: lock_workflow
SELECT id, definition_name, definition_version, status, input, unique_key, error_message,
       total_cost_usd, created_at, updated_at, completed_at, timeout_at
FROM workflows WHERE id = :id;

-- name: lock_workflows
-- Several runs (ids: a JSON array of run ids); SQLite's write lock covers them all.
SELECT id, definition_name, definition_version, status, input, unique_key, error_message,
       total_cost_usd, created_at, updated_at, completed_at, timeout_at
FROM workflows
WHERE id IN (SELECT value FROM json_each(:ids))
ORDER BY id;

-- name: lock_workflow_of_attempt
-- The run an attempt belongs to, locked (one statement instead of a lookup and a lock).
SELECT id, definition_name, definition_version, status, input, unique_key, error_message,
       total_cost_usd, created_at, updated_at, completed_at, timeout_at
FROM workflows
WHERE id = (SELECT workflow_id FROM activities WHERE attempt_id = :attempt_id);

-- name: lock_workflows_of_attempts
-- The runs of several attempts (ids: a JSON array of attempt ids), in run id order;
-- SQLite's write lock covers them all. One row per attempt found: the attempt id and
-- its run's row (the columns of lock_workflow_of_attempt).
SELECT a.attempt_id, w.id, w.definition_name, w.definition_version, w.status, w.input, w.unique_key,
       w.error_message, w.total_cost_usd, w.created_at, w.updated_at, w.completed_at,
       w.timeout_at
FROM activities a
JOIN workflows w ON w.id = a.workflow_id
WHERE a.attempt_id IN (SELECT value FROM json_each(:ids))
ORDER BY w.id, a.attempt_id;

-- name: workflow_by_unique_key
SELECT id, status FROM workflows
WHERE unique_key = :unique_key AND status <> 'failed';

-- name: set_workflow_status
UPDATE workflows
SET status = :status,
    error_message = COALESCE(:error_message, error_message),
    completed_at = CASE WHEN :finished THEN :now ELSE completed_at END,
    updated_at = :now
WHERE id = :id;

-- name: set_workflows_status
-- set_workflow_status for several runs in one statement (statuses: a JSON
-- array of {id, status, error_message, finished, now}, each run once).
UPDATE workflows
SET status = s.value ->> '$.status',
    error_message = COALESCE(s.value ->> '$.error_message', error_message),
    completed_at = CASE WHEN s.value ->> '$.finished' THEN s.value ->> '$.now'
                        ELSE completed_at END,
    updated_at = s.value ->> '$.now'
FROM json_each(:statuses) AS s
WHERE workflows.id = s.value ->> '$.id';

-- name: mark_workflows_running
-- Runs (ids: a JSON array of run ids) whose first activity was just claimed:
-- created -> running, in one statement.
UPDATE workflows SET status = 'running', updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND +status = 'created';  -- +: the primary key, not the index of created runs

-- name: set_workflow_cost
UPDATE workflows SET total_cost_usd = :total_cost_usd, updated_at = :now WHERE id = :id;

-- name: list_workflows
SELECT id, status, definition_name, definition_version, created_at, updated_at,
       completed_at, error_message, total_cost_usd
FROM workflows
WHERE (:status IS NULL OR status = :status)
  AND (:definition_name IS NULL OR definition_name = :definition_name)
  AND (:created_after IS NULL OR created_at >= :created_after)
  AND (:created_before IS NULL OR created_at < :created_before)
ORDER BY created_at DESC, id DESC
LIMIT :limit OFFSET :offset;

-- name: count_workflows
SELECT COUNT(*) AS total FROM workflows
WHERE (:status IS NULL OR status = :status)
  AND (:definition_name IS NULL OR definition_name = :definition_name)
  AND (:created_after IS NULL OR created_at >= :created_after)
  AND (:created_before IS NULL OR created_at < :created_before);

-- name: due_workflow_timeouts
SELECT id FROM workflows
WHERE timeout_at IS NOT NULL AND status IN ('created', 'running') AND timeout_at <= :now
ORDER BY timeout_at LIMIT :limit;

-- name: next_workflow_timeout
SELECT MIN(timeout_at) AS at FROM workflows
WHERE timeout_at IS NOT NULL AND status IN ('created', 'running');

-- name: fail_workflow_directly
UPDATE workflows
SET status = 'failed', error_message = :error_message, completed_at = :now, updated_at = :now
WHERE id = :id AND status IN ('created', 'running');

-- name: workflow_detail
-- A run and its activities in one statement (one snapshot): a row per activity in
-- position order, or one row with NULL activity columns when it has none. The
-- run's columns are named run_*; its input, which may be large, comes on the first row only.
SELECT w.id AS run_id, w.definition_name AS run_definition_name,
       w.definition_version AS run_definition_version, w.status AS run_status,
       CASE WHEN row_number() OVER (ORDER BY a.position) = 1 THEN w.input END AS run_input,
       w.unique_key AS run_unique_key, w.error_message AS run_error_message,
       w.total_cost_usd AS run_total_cost_usd, w.created_at AS run_created_at,
       w.updated_at AS run_updated_at, w.completed_at AS run_completed_at,
       w.timeout_at AS run_timeout_at,
       a.key, a.activity_name, a.queue, a.status, a.outputs, a.output_definitions, a.error,
       a.iteration, a.attempt, a.cost_usd, a.available_at, a.wait_signal, a.worker_id,
       a.started_at, a.completed_at
FROM workflows AS w LEFT JOIN activities AS a ON a.workflow_id = w.id
WHERE w.id = :id
ORDER BY a.position;
