"""Who may report on a leased attempt, and what a repeated report gets.

A claim leases an attempt to the polling worker of an authenticated client;
only that worker may heartbeat, complete or fail it. Reports are idempotent
for the worker that made them: a repeat of what it already reported is
accepted, anything else about a finished attempt is refused.
"""

from __future__ import annotations

import uuid

from kflow.errors import ConflictError, NotFoundError
from kflow.store.base import Row, Tx


def holds_lease(row: Row, worker_id: str, client_id: str) -> bool:
    """Whether ``worker_id`` of ``client_id`` holds the lease recorded in ``row``."""
    return row["worker_id"] == worker_id and row["lease_client"] in (None, client_id)


def finished_attempt(tx: Tx, attempt_id: uuid.UUID, worker_id: str, action: str) -> Row:
    """Accept a repeat of what this worker already reported (returns the recorded
    attempt); refuse anything else.

    Raises:
        NotFoundError: the attempt never existed.
        ConflictError: it finished otherwise or belonged to another worker.
    """
    past = tx.one("get_attempt", id=str(attempt_id))
    if past is None:
        current = tx.one("activity_by_attempt", attempt_id=str(attempt_id))
        if current is None:
            raise NotFoundError(f"activity {attempt_id} not found")
        raise ConflictError(
            f"activity {attempt_id} is {current['status']}, not running",
            details={"status": current["status"]},
        )
    same_worker = past["worker_id"] == worker_id
    if same_worker and (
        past["outcome"] == action
        or (action == "heartbeat" and past["outcome"] in ("completed", "failed"))
    ):
        return past
    if past["outcome"] == "lease_expired":
        raise ConflictError(
            f"the lease of activity {attempt_id} expired and the work was "
            "handed to another attempt",
            details={"outcome": "lease_expired"},
        )
    raise ConflictError(
        f"activity {attempt_id} already finished as {past['outcome']}",
        details={"outcome": past["outcome"]},
    )
