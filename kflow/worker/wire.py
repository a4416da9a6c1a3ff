"""Wire objects of the worker protocol: claimed activities, result reports, error answers.

:class:`ClaimedActivity` is one item of a poll answer (PROTOCOL §3), parsed
leniently (unknown fields ignored) but strictly where a worker depends on a
field. :class:`Report` is a complete/fail call ready to send — the unit the
outbox stores. :func:`error_from_response` turns an error answer into an
:class:`~kflow.errors.ApiError`; :func:`is_transient` and :func:`retrying` decide
which failures are retried and how long to wait between tries.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs
import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential,
    wait_random,
)

from kflow._serde import dumps, format_decimal, loads, parse_datetime, to_decimal
from kflow.errors import ApiError, InvalidInputError
from kflow.worker.activity import ActivityResult, Failure, Usage
from kflow.worker.registry import check_identifier

ReportKind = Literal["complete", "fail"]

log = structlog.get_logger("kflow.worker.api")


class ReportOutcome(enum.StrEnum):
    """What became of a complete/fail report."""

    ACKNOWLEDGED = "acknowledged"  # 2xx
    LEASE_LOST = "lease_lost"  # 409: another worker holds the lease, or it finished otherwise
    UNKNOWN_ACTIVITY = "unknown_activity"  # 404
    REJECTED = "rejected"  # another 4xx (or our credentials were refused)
    PENDING = "pending"  # not answered yet; kept in the outbox


@attrs.frozen(kw_only=True)
class ClaimedActivity:
    """One activity claimed by a poll: what to run, with which parameters, for how long.

    The first six fields are required on the wire; the rest are optional
    (``attempt``, ``lease_expires_at``, ``budget_remaining_usd`` and
    ``heartbeat_details`` are kflow extensions).
    """

    activity_id: uuid.UUID
    workflow_id: uuid.UUID
    activity_key: str
    worker: str
    activity_name: str
    parameters: Mapping[str, Any]
    settings: Mapping[str, Any] = attrs.field(factory=dict)
    timeout_seconds: float | None = None
    output_definitions: tuple[Mapping[str, Any], ...] | None = None
    signal_data: Mapping[str, Any] | None = None
    attempt: int | None = None
    lease_expires_at: dt.datetime | None = None
    budget_remaining_usd: decimal.Decimal | None = None
    heartbeat_details: Any = None

    @classmethod
    def from_wire(cls, item: Any) -> ClaimedActivity:
        """Parse one poll item. Unknown fields are ignored; a malformed extension
        field (``attempt``, ``lease_expires_at``, ``budget_remaining_usd``) is dropped.

        Raises:
            TypeError, ValueError: a required field is missing or malformed (the
                message names it).
        """
        if not isinstance(item, Mapping):
            raise TypeError(f"poll item must be an object, got {type(item).__name__}")
        params = item.get("parameters", _MISSING)
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise TypeError("parameters must be an object")
        settings = item.get("settings") or {}
        if not isinstance(settings, Mapping):
            raise TypeError("settings must be an object")
        timeout = item.get("timeout_seconds", settings.get("timeout_seconds"))
        if timeout is not None and (not _is_number(timeout) or timeout <= 0):
            raise ValueError(f"timeout_seconds must be a positive number, got {timeout!r}")
        outputs = item.get("output_definitions")
        if outputs is not None and not isinstance(outputs, list):
            raise TypeError("output_definitions must be an array")
        signal = item.get("signal_data")
        if signal is not None and not isinstance(signal, Mapping):
            raise TypeError("signal_data must be an object")
        return cls(
            activity_id=_uuid(item, "activity_id"),
            workflow_id=_uuid(item, "workflow_id"),
            activity_key=_identifier(item, "activity_key"),
            worker=_identifier(item, "worker"),
            activity_name=_identifier(item, "activity_name"),
            parameters=dict(params),
            settings=dict(settings),
            timeout_seconds=None if timeout is None else float(timeout),
            output_definitions=None if outputs is None else tuple(outputs),
            signal_data=signal,
            attempt=_lenient(item.get("attempt"), _attempt),
            lease_expires_at=_lenient(item.get("lease_expires_at"), parse_datetime),
            budget_remaining_usd=_lenient(item.get("budget_remaining_usd"), to_decimal),
            heartbeat_details=item.get("heartbeat_details"),
        )


_MISSING: Any = object()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _uuid(item: Mapping[str, Any], name: str) -> uuid.UUID:
    value = item.get(name)
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"{name} must be a UUID string, got {value!r}") from None


def _identifier(item: Mapping[str, Any], name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {value!r}")
    return check_identifier(value, what=name)


def _attempt(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError("attempt must be an integer >= 1")
    return value


def _lenient(value: Any, parse: Any) -> Any:
    if value is None:
        return None
    try:
        return parse(value)
    except (TypeError, ValueError):
        return None


@attrs.frozen(kw_only=True)
class Report:
    """A complete or fail call ready to send: the unit the outbox keeps.

    ``worker_id`` is the worker that held the lease when the result was made;
    it is inside ``body`` too, so a report sent later still speaks for it.
    """

    activity_id: uuid.UUID
    worker_id: str
    kind: ReportKind
    body: bytes
    created_at: dt.datetime = attrs.field(factory=lambda: dt.datetime.now(dt.UTC))
    #: Row id once the report is stored in an outbox.
    outbox_id: int | None = None

    @property
    def path(self) -> str:
        """The route under ``/api/v1``."""
        return f"/activities/{self.activity_id}/{self.kind}"

    @classmethod
    def complete(
        cls,
        activity_id: uuid.UUID,
        worker_id: str,
        output: Mapping[str, Any],
        cost_usd: Any = None,
        usage: Iterable[Usage] = (),
    ) -> Report:
        """A complete call carrying ``output`` (name → value).

        Raises:
            TypeError: an output value has no JSON form.
        """
        body: dict[str, Any] = {"worker_id": worker_id, "output": dict(output)}
        return cls(
            activity_id=activity_id,
            worker_id=worker_id,
            kind="complete",
            body=dumps(_with_cost(body, cost_usd, usage)),
        )

    @classmethod
    def fail(
        cls,
        activity_id: uuid.UUID,
        worker_id: str,
        failure: Failure,
        cost_usd: Any = None,
        usage: Iterable[Usage] = (),
    ) -> Report:
        """A fail call carrying ``failure``'s code, message and retry flag."""
        error = {"code": failure.code, "message": failure.message, "retryable": failure.retryable}
        body: dict[str, Any] = {"worker_id": worker_id, "error": error}
        return cls(
            activity_id=activity_id,
            worker_id=worker_id,
            kind="fail",
            body=dumps(_with_cost(body, cost_usd, usage)),
        )

    @classmethod
    def from_result(cls, activity_id: uuid.UUID, worker_id: str, result: ActivityResult) -> Report:
        """The report of an :class:`ActivityResult` (complete, or fail if it is an error).

        Raises:
            TypeError: an output value has no JSON form.
        """
        if result.failure is not None:
            return cls.fail(activity_id, worker_id, result.failure, result.cost_usd, result.usage)
        return cls.complete(
            activity_id, worker_id, result.to_output_dict(), result.cost_usd, result.usage
        )


def usage_to_wire(usage: Usage) -> dict[str, Any]:
    """One ``usage`` entry of a complete/fail body (``cost_usd`` only when known)."""
    entry: dict[str, Any] = {
        "provider": usage.provider,
        "model": usage.model,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_creation_tokens": usage.cache_creation_tokens,
    }
    if usage.reasoning_tokens:
        entry["reasoning_tokens"] = usage.reasoning_tokens
    if usage.budget_event:
        entry["budget_event"] = usage.budget_event
    if usage.cost_usd is not None:
        entry["cost_usd"] = format_decimal(usage.cost_usd)
    return entry


def _with_cost(body: dict[str, Any], cost_usd: Any, usage: Iterable[Usage]) -> dict[str, Any]:
    if cost_usd is not None:
        body["cost_usd"] = format_decimal(to_decimal(cost_usd))
    entries = [usage_to_wire(u) for u in usage]
    if entries:
        body["usage"] = entries
    return body


def error_from_response(response: httpx.Response) -> ApiError:
    """An :class:`ApiError` from a non-2xx answer: the envelope's code, message and
    details, or the body text as message when the answer is no envelope."""
    status = response.status_code
    code: str | None = None
    details: Mapping[str, Any] | None = None
    try:
        data = loads(response.content)
    except InvalidInputError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = str(error.get("message") or "")
        details = error.get("details") if isinstance(error.get("details"), dict) else None
    elif isinstance(error, str):
        message = error
    else:
        message = response.text.strip()[:500]
    return ApiError(
        message or response.reason_phrase or f"HTTP {status}",
        status=status,
        code=code,
        details=details,
    )


# -- which failures are transient, and how to wait them out -----------------------

#: Upper bound of one backoff pause for polls and for reports (seconds).
POLL_BACKOFF_CAP = 8.0
REPORT_BACKOFF_CAP = 10.0


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: network errors and 408/429/5xx answers."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, ApiError) and (exc.status >= 500 or exc.status in (408, 429))


def retrying(
    *,
    cap: float,
    attempts: int | None = None,
    what: str = "request",
    when: Callable[[BaseException], bool] = is_transient,
) -> AsyncRetrying:
    """A tenacity policy: exponential backoff (0.5 s doubling up to ``cap``) plus jitter.

    Retries failures for which ``when`` is true (default :func:`is_transient`);
    ``attempts=None`` retries forever. The last exception is re-raised unchanged;
    cancellation is never retried.
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "worker.api.retry",
            what=what,
            attempt=state.attempt_number,
            sleep_s=round(state.upcoming_sleep, 3),
            error=describe(exc),
        )

    return AsyncRetrying(
        retry=retry_if_exception(when),
        wait=wait_exponential(multiplier=0.5, max=cap) + wait_random(0, 0.5),
        stop=stop_never if attempts is None else stop_after_attempt(attempts),
        reraise=True,
        before_sleep=before_sleep,
    )


def describe(exc: BaseException | None) -> str:
    """A one-line description of a failure for logs (no traceback)."""
    if isinstance(exc, ApiError):
        return f"{exc.status} {exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}" if exc is not None else ""
