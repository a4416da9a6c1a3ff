-- name: touch_worker
INSERT INTO workers (worker_id, queue, last_seen_at) VALUES (%(worker_id)s, %(queue)s, %(now)s)
ON CONFLICT (worker_id) DO UPDATE SET queue = excluded.queue, last_seen_at = excluded.last_seen_at;

-- name: queue_last_seen
SELECT MAX(last_seen_at) AS at FROM workers WHERE queue = %(queue)s;

-- name: list_workers
SELECT worker_id, queue, last_seen_at FROM workers WHERE last_seen_at >= %(since)s
ORDER BY queue, worker_id;
