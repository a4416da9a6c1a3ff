"""kflow's exception tree: one root, meanings carried by the type.

Everything kflow raises on purpose derives from :class:`KflowError`. Where a
builtin already carries the meaning (a bad value, a missing thing) the kflow
error subclasses it too, so ``except ValueError`` keeps working for callers
who do not know kflow. Third-party exceptions are translated at the boundary
and chained with ``raise ... from exc``.

::

    KflowError
    ├── ConfigError(ValueError)          bad setting, flag or environment value
    ├── InvalidInputError(ValueError)    a request or file that cannot be accepted
    │   ├── ValidationFailed             parsed, but broke rules (field_errors)
    │   │   └── DefinitionError          invalid workflow definition
    │   └── TemplateError                template syntax, undefined name, sandbox violation
    ├── NotFoundError(LookupError)       no such workflow, definition, activity, file
    ├── ConflictError                    state forbids it: lease held elsewhere, duplicate key
    ├── AuthError
    │   ├── UnauthorizedError            missing, expired or wrong credentials
    │   └── ForbiddenError               authenticated, but the scope does not allow it
    ├── PayloadTooLargeError             body above the configured limit
    ├── StoreError                       the database failed (retry is the caller's choice)
    │   └── StoreUnavailableError        cannot reach the database right now (retryable)
    ├── ApiError                         a kflow HTTP API answered with an error envelope
    └── ActivityError                    raised inside an activity: code + retryable
        └── ActivityCancelled            the server withdrew the lease or cancelled the run

Validation errors carry ``field_errors``: a mapping from a path such as
``activities[0].key`` to a list of messages, which the server returns as
``details.field_errors`` in its 422 envelope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class KflowError(Exception):
    """Root of every exception kflow raises on purpose."""

    #: Wire code used in the error envelope when this error reaches the API.
    code: str = "INTERNAL_ERROR"

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})


class ConfigError(KflowError, ValueError):
    """A setting, flag or environment value is invalid."""

    code = "BAD_REQUEST"


class InvalidInputError(KflowError, ValueError):
    """Input that cannot be accepted (a request body, a file, a parameter)."""

    code = "BAD_REQUEST"


class ValidationFailed(InvalidInputError):
    """Input parsed but broke rules; ``field_errors`` says where and why."""

    code = "VALIDATION_ERROR"

    def __init__(
        self,
        message: str,
        field_errors: Mapping[str, Sequence[str]],
        *,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        merged = dict(details or {})
        merged["field_errors"] = {k: list(v) for k, v in field_errors.items()}
        super().__init__(message, details=merged)
        self.field_errors: dict[str, list[str]] = merged["field_errors"]


class DefinitionError(ValidationFailed):
    """A workflow definition is malformed or breaks a rule (see ``field_errors``)."""


class TemplateError(InvalidInputError):
    """A template failed to parse or render: syntax, undefined name, or sandbox."""

    code = "TEMPLATE_ERROR"


class NotFoundError(KflowError, LookupError):
    """The named thing does not exist."""

    code = "NOT_FOUND"


class ConflictError(KflowError):
    """The current state forbids the request (lease held elsewhere, key taken)."""

    code = "CONFLICT"


class AuthError(KflowError):
    """Authentication or authorization failed."""


class UnauthorizedError(AuthError):
    """Credentials are missing, malformed, expired or wrong."""

    code = "UNAUTHORIZED"


class ForbiddenError(AuthError):
    """The caller is known but its scopes do not allow the request."""

    code = "FORBIDDEN"


class PayloadTooLargeError(KflowError):
    """A request body exceeds the configured limit."""

    code = "PAYLOAD_TOO_LARGE"


class StoreError(KflowError):
    """The database failed in a way the caller may report or retry."""

    code = "INTERNAL_ERROR"


class StaleReadError(StoreError):
    """Something the transaction took from a cache instead of reading it had
    changed in the database; the transaction was rolled back (nothing of it
    stays) and runs again after the cache is refreshed."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached right now; retrying later may succeed."""

    code = "SERVICE_UNAVAILABLE"


class ApiError(KflowError):
    """A kflow (or Kruxia Flow) HTTP API answered with an error.

    ``status`` is the HTTP status, ``code`` the envelope's code when there was
    one (``HTTP_<status>`` otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.status = status
        self.code = code or f"HTTP_{status}"


class ActivityError(KflowError):
    """Raised by activity code to fail the attempt with a code.

    ``retryable=False`` tells the engine not to try again whatever the retry
    policy says (Temporal's non_retryable, carried by the error).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "EXECUTION_ERROR",
        retryable: bool = True,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.code = code
        self.retryable = retryable


class ActivityCancelled(ActivityError):
    """The server withdrew this attempt's lease or the workflow was cancelled."""

    def __init__(self, message: str = "activity cancelled by the server") -> None:
        super().__init__(message, code="CANCELLED", retryable=False)


__all__ = [
    "ActivityCancelled",
    "ActivityError",
    "ApiError",
    "AuthError",
    "ConfigError",
    "ConflictError",
    "DefinitionError",
    "ForbiddenError",
    "InvalidInputError",
    "KflowError",
    "NotFoundError",
    "PayloadTooLargeError",
    "StoreError",
    "StoreUnavailableError",
    "TemplateError",
    "UnauthorizedError",
    "ValidationFailed",
]
