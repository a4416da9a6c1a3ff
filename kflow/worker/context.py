"""``ActivityContext``: what one attempt knows about itself and can ask of the server.

The worker runtime builds one context per attempt. Activities read ids and
the attempt number, log through ``ctx.logger`` (already bound to
``workflow_id``, ``activity_key`` and ``attempt``), report progress with
``await ctx.heartbeat(details)``, move files with ``upload_file`` /
``download_file``, and run blocking code with ``await ctx.run_sync(fn, ...)``.
"""

from __future__ import annotations

import decimal
import mimetypes
import pathlib
import re
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import structlog
import trio

from kflow._serde import to_decimal
from kflow.errors import ActivityError

if TYPE_CHECKING:
    from kflow.worker.activity import Usage

T = TypeVar("T")

_FILE_REF = re.compile(
    r"^(?:postgres|kflow)://(?P<wf>[0-9a-fA-F-]{36})/(?P<key>[A-Za-z0-9_-]+)/(?P<name>[^/]+)$"
)


class ActivityApi(Protocol):
    """The calls a context makes on the server; the worker runtime provides them."""

    async def heartbeat(
        self, activity_id: uuid.UUID, worker_id: str, details: Any | None
    ) -> object:
        """Extend the lease (any return value is ignored by the context).

        Raises ActivityCancelled when the server says stop.
        """
        ...

    async def upload_file(
        self,
        workflow_id: uuid.UUID,
        activity_key: str,
        filename: str,
        data: bytes,
        content_type: str | None,
    ) -> Mapping[str, Any]:
        """Store a file under the run; returns the server's metadata."""
        ...

    async def download_file(
        self, workflow_id: uuid.UUID, activity_key: str, filename: str
    ) -> bytes:
        """Fetch a stored file. Raises kflow.errors.NotFoundError if absent."""
        ...

    async def reserve_budget(
        self, activity_id: uuid.UUID, worker_id: str, amount: decimal.Decimal
    ) -> Mapping[str, Any]:
        """Reserve part of the run's budget; the server's answer (granted, remaining)."""
        ...


def file_reference(workflow_id: uuid.UUID | str, activity_key: str, filename: str) -> str:
    """The reference string handed between activities (PROTOCOL §3, Files)."""
    return f"postgres://{workflow_id}/{activity_key}/{filename}"


def parse_file_reference(reference: str) -> tuple[uuid.UUID, str, str]:
    """Split ``postgres://{workflow_id}/{activity_key}/{filename}``.

    Raises:
        ValueError: not a file reference.
    """
    match = _FILE_REF.match(reference.strip())
    if not match:
        raise ValueError(
            f"not a file reference: {reference!r} "
            "(expected postgres://<workflow_id>/<activity_key>/<filename>)"
        )
    return uuid.UUID(match["wf"]), match["key"], match["name"]


@attrs.frozen
class BudgetReservation:
    """The server's answer to :meth:`ActivityContext.reserve_budget`.

    ``remaining_usd`` is what the run has left for others (None: no run budget).
    """

    granted: bool
    reserved_usd: decimal.Decimal
    remaining_usd: decimal.Decimal | None


class ActivityContext:
    """Context of one activity attempt. Built by the worker runtime (or a test)."""

    def __init__(
        self,
        *,
        workflow_id: uuid.UUID,
        activity_id: uuid.UUID,
        activity_key: str,
        activity_name: str = "",
        worker: str = "",
        worker_id: str = "",
        attempt: int = 1,
        timeout_seconds: float | None = None,
        settings: Mapping[str, Any] | None = None,
        signal: Mapping[str, Any] | None = None,
        heartbeat_details: Any | None = None,
        budget_remaining_usd: decimal.Decimal | None = None,
        workdir: pathlib.Path | Callable[[], pathlib.Path] | None = None,
        api: ActivityApi | None = None,
        thread_limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.activity_id = activity_id
        self.activity_key = activity_key
        self.activity_name = activity_name
        self.worker = worker
        self.worker_id = worker_id
        self.attempt = attempt
        self.timeout_seconds = timeout_seconds
        self.settings: Mapping[str, Any] = settings or {}
        #: Data of the signal this activity waited for (``wait_for_signal``), if any.
        self.signal: Mapping[str, Any] | None = signal
        #: Details of the last heartbeat of the previous attempt (a resumable checkpoint).
        self.heartbeat_details = heartbeat_details
        self.budget_remaining_usd = budget_remaining_usd
        #: Usage and bare cost recorded during the attempt (see :meth:`record_usage`).
        self.recorded_usage: list[Usage] = []
        self.recorded_cost = decimal.Decimal(0)
        self._workdir = workdir
        self._workdir_ready: pathlib.Path | None = None
        self._api = api
        self._thread_limiter = thread_limiter
        self._logger: Any = None

    @property
    def logger(self) -> Any:
        """A structlog logger bound to the run, the activity key and the attempt
        (made on first use: most attempts never log through it)."""
        if self._logger is None:
            self._logger = structlog.get_logger("kflow.activity").bind(
                workflow_id=str(self.workflow_id),
                activity_key=self.activity_key,
                attempt=self.attempt,
            )
        return self._logger

    @logger.setter
    def logger(self, value: Any) -> None:
        self._logger = value

    @property
    def workdir(self) -> pathlib.Path:
        """A private temporary directory for this attempt (removed afterwards).

        The directory is created on first use (the runtime may even choose its
        name then), so attempts that never ask for it cost no file-system work.

        Raises:
            ActivityError: the runtime gave this context no directory.
            OSError: the directory cannot be created.
        """
        if self._workdir_ready is not None:
            return self._workdir_ready
        if self._workdir is None:
            raise ActivityError(
                "this context has no working directory", code="NO_WORKDIR", retryable=False
            )
        path = self._workdir if isinstance(self._workdir, pathlib.Path) else self._workdir()
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._workdir_ready = path
        return path

    @property
    def workdir_created(self) -> pathlib.Path | None:
        """The working directory if :attr:`workdir` created it (for the runtime to remove)."""
        return self._workdir_ready

    def record_usage(self, *usage: Usage) -> None:
        """Record model calls this attempt made (tokens and, when known, cost).

        They reach the server with the attempt's report whatever its outcome:
        a call that was paid for before the activity failed still counts.
        """
        self.recorded_usage.extend(usage)

    def record_cost(self, cost_usd: decimal.Decimal | str | float | int) -> None:
        """Add a cost in USD that no usage entry covers (an API priced per call, say).

        Raises:
            ValueError: not a finite, non-negative amount.
        """
        amount = to_decimal(cost_usd)
        if amount < 0:
            raise ValueError(f"a cost must not be negative, got {amount}")
        self.recorded_cost += amount

    async def reserve_budget(self, amount_usd: decimal.Decimal) -> BudgetReservation:
        """Set aside ``amount_usd`` of the run's budget before spending it.

        Granted only if it fits what the run has left net of the reservations
        of its other running activities; a new call replaces this attempt's
        previous reservation. The reservation ends when the attempt does, its
        real cost counted instead. Without a server connection (tests) or a
        run budget every amount is granted.

        Raises:
            kflow.errors.ConflictError: the attempt is no longer running here.
        """
        if self._api is None:
            return BudgetReservation(granted=True, reserved_usd=amount_usd, remaining_usd=None)
        answer = await self._api.reserve_budget(self.activity_id, self.worker_id, amount_usd)
        remaining = answer.get("budget_remaining_usd")
        reservation = BudgetReservation(
            granted=bool(answer.get("granted")),
            reserved_usd=to_decimal(answer.get("reserved_usd") or 0),
            remaining_usd=None if remaining is None else to_decimal(remaining),
        )
        if reservation.remaining_usd is not None:
            self.budget_remaining_usd = reservation.remaining_usd + reservation.reserved_usd
        return reservation

    async def heartbeat(self, details: Any | None = None) -> None:
        """Tell the server the attempt is alive; ``details`` is kept as a checkpoint.

        Raises:
            kflow.errors.ActivityCancelled: the lease was lost or the run was
                cancelled; the runtime also cancels the attempt's scope.
        """
        if self._api is None:
            return
        await self._api.heartbeat(self.activity_id, self.worker_id, details)

    async def upload_file(
        self,
        local_path: str | pathlib.Path,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """Store a local file under this activity; returns its reference.

        Raises:
            ActivityError: no server connection in this context.
            FileNotFoundError: ``local_path`` does not exist.
        """
        api = self._require_api()
        path = pathlib.Path(local_path)
        name = filename or path.name
        data = await trio.Path(path).read_bytes()
        ctype = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        await api.upload_file(self.workflow_id, self.activity_key, name, data, ctype)
        return file_reference(self.workflow_id, self.activity_key, name)

    async def download_file(
        self, reference: str, dest: str | pathlib.Path | None = None
    ) -> pathlib.Path:
        """Fetch a stored file by reference into ``dest`` (default: the workdir).

        Raises:
            ValueError: ``reference`` is not a file reference.
            kflow.errors.NotFoundError: no such file.
        """
        api = self._require_api()
        wf, key, name = parse_file_reference(reference)
        data = await api.download_file(wf, key, name)
        target = pathlib.Path(dest) if dest is not None else self.workdir / name
        await trio.Path(target).write_bytes(data)
        return target

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` in a worker thread and await its result.

        Cancellation (timeout, lost lease) abandons the thread: its result is
        discarded, the thread itself runs to completion in the background.
        """
        return await trio.to_thread.run_sync(
            fn, *args, abandon_on_cancel=True, limiter=self._thread_limiter
        )

    def _require_api(self) -> ActivityApi:
        if self._api is None:
            raise ActivityError(
                "file operations need a server connection", code="NO_SERVER", retryable=False
            )
        return self._api
