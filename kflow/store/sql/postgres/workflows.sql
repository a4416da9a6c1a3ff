-- name: insert_workflow
INSERT INTO workflows (id, definition_name, definition_version, status, input, unique_key,
                       created_at, updated_at, timeout_at)
VALUES (%(id)s, %(definition_name)s, %(definition_version)s, 'created', %(input)s, %(unique_key)s,
        %(now)s, %(now)s, %(timeout_at)s);

-- name: get_workflow
SELECT id, definition_name, definition_version, status, input, unique_key, error_message,
       total_cost_usd, created_at, updated_at, completed_at, timeout_at
FROM workflows WHERE id = %(id)s;

-- name: lock_workflow
SELECT id, definition_name, definition_version, status, input, unique_key, error_message,
       total_cost_usd, created_at, updated_at, completed_at, timeout_at
FROM workflows WHERE id = %(id)s
FOR UPDATE;

-- name: lock_workflows
-- Several runs, locked in id order (two claims never wait on each other in a cycle);
-- ids is a JSON array of run ids.
SELECT id, definition_name, definition_version, status, input, unique_key, error_message,
       total_cost_usd, created_at, updated_at, completed_at, timeout_at
FROM workflows
-- ANY(ARRAY(...)) as in activities_of_workflows: the primary key, not a scan.
WHERE id = ANY(ARRAY(SELECT jsonb_array_elements_text(%(ids)s)::uuid))
ORDER BY id
FOR UPDATE;

-- name: lock_workflow_of_attempt
-- The run an attempt belongs to, locked (one statement instead of a lookup and a lock).
SELECT id, definition_name, definition_version, status, input, unique_key, error_message,
       total_cost_usd, created_at, updated_at, completed_at, timeout_at
FROM workflows
WHERE id = (SELECT workflow_id FROM activities WHERE attempt_id = %(attempt_id)s)
FOR UPDATE;

-- name: lock_workflows_of_attempts
-- The runs of several attempts (ids: a JSON array of attempt ids), locked in run id
-- order as lock_workflows locks them; one row per attempt found: the attempt id and
-- its run's row (the columns of lock_workflow_of_attempt).
SELECT a.attempt_id, w.id, w.definition_name, w.definition_version, w.status, w.input, w.unique_key,
       w.error_message, w.total_cost_usd, w.created_at, w.updated_at, w.completed_at,
       w.timeout_at
FROM activities a
JOIN workflows w ON w.id = a.workflow_id
-- ANY(ARRAY(...)) as in activities_of_workflows: the attempt index, not a scan.
WHERE a.attempt_id = ANY(ARRAY(SELECT jsonb_array_elements_text(%(ids)s)::uuid))
ORDER BY w.id, a.attempt_id
FOR UPDATE OF w;

-- name: workflow_by_unique_key
SELECT id, status FROM workflows
WHERE unique_key = %(unique_key)s AND status <> 'failed';

-- name: set_workflow_status
UPDATE workflows
SET status = %(status)s,
    error_message = COALESCE(%(error_message)s, error_message),
    completed_at = CASE WHEN %(finished)s THEN %(now)s ELSE completed_at END,
    updated_at = %(now)s
WHERE id = %(id)s;

-- name: set_workflows_status
-- set_workflow_status for several runs in one statement (statuses: a JSON
-- array of {id, status, error_message, finished, now}, each run once); the
-- runs are read through the primary key (ANY(ARRAY(...))).
UPDATE workflows AS w
SET status = s.status,
    error_message = COALESCE(s.error_message, w.error_message),
    completed_at = CASE WHEN s.finished THEN s.now ELSE w.completed_at END,
    updated_at = s.now
FROM jsonb_to_recordset(%(statuses)s) AS s(id uuid, status text, error_message text,
                                           finished boolean, now timestamptz)
WHERE w.id = ANY(ARRAY(SELECT (jsonb_array_elements(%(statuses)s) ->> 'id')::uuid))
  AND w.id = s.id;

-- name: mark_workflows_running
-- Runs (ids: a JSON array of run ids) whose first activity was just claimed:
-- created -> running, in one statement.
-- (status || ''): the primary key finds the rows; the partial index of created
-- runs, which a backlog of runs waiting to start makes large, is not read.
UPDATE workflows SET status = 'running', updated_at = %(now)s
WHERE id IN (SELECT id FROM workflows
             WHERE id = ANY(ARRAY(SELECT jsonb_array_elements_text(%(ids)s)::uuid))
               AND (status || '') = 'created'
             FOR UPDATE SKIP LOCKED);

-- name: set_workflow_cost
UPDATE workflows SET total_cost_usd = %(total_cost_usd)s, updated_at = %(now)s WHERE id = %(id)s;

-- name: list_workflows
SELECT id, status, definition_name, definition_version, created_at, updated_at,
       completed_at, error_message, total_cost_usd
FROM workflows
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(definition_name)s::text IS NULL OR definition_name = %(definition_name)s::text)
  AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s::timestamptz)
  AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: count_workflows
SELECT COUNT(*) AS total FROM workflows
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(definition_name)s::text IS NULL OR definition_name = %(definition_name)s::text)
  AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s::timestamptz)
  AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz);

-- name: due_workflow_timeouts
SELECT id FROM workflows
WHERE timeout_at IS NOT NULL AND status IN ('created', 'running') AND timeout_at <= %(now)s
ORDER BY timeout_at LIMIT %(limit)s;

-- name: next_workflow_timeout
SELECT MIN(timeout_at) AS at FROM workflows
WHERE timeout_at IS NOT NULL AND status IN ('created', 'running');

-- name: fail_workflow_directly
UPDATE workflows
SET status = 'failed', error_message = %(error_message)s, completed_at = %(now)s, updated_at = %(now)s
WHERE id = %(id)s AND status IN ('created', 'running');

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
WHERE w.id = %(id)s
ORDER BY a.position;
