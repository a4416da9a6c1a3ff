"""Starts that arrive together, applied in one transaction.

Each start of a run is a transaction of its own: read the definition, insert
the run and its activities, decide ``WorkflowStarted``, commit. Under load
(a hundred clients starting runs at once) that is a hundred commits, each
waited for. :class:`StartGroups` applies them the way a database applies
commits in a group: a start that finds no group at work runs at once, alone
or with whatever is waiting; starts that arrive while a group is at work
wait for it and then go together in the next one. A quiet server answers a
start as soon as it did before; a busy one writes many starts per
transaction — one ``BEGIN`` and ``COMMIT``, one notification, the
definitions read once per name, the first activities' updates and the
runs' events merged (:class:`~kflow.server.deferred_writes.DeferredWrites`).

Nothing is answered before the group commits, so an answer still means
"durably started". If any start of a group raises (no such definition, a
``unique_key`` taken — also by an earlier start of the same group — or a
database error), nothing of the group is kept and each start runs again on
its own, with its own answer or error, exactly as without a group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs
import structlog
import trio

from kflow.server.deferred_writes import DeferredWrites
from kflow.server.transitions import Effects
from kflow.store.base import Row, Tx

if TYPE_CHECKING:
    from kflow.server.transitions import TransitionEngine

log = structlog.get_logger("kflow.engine")

T = TypeVar("T")

#: A start's unit of work, as :meth:`TransitionEngine.write` takes it.
StartUnit = Callable[[Tx, Effects], T]

#: At most this many starts share a transaction.
MAX_GROUP = 100
#: At most this many groups are at work at once; a start that finds them all
#: busy waits to go with the next.
LANES = 2


@attrs.define(eq=False)  # compared by identity: the queue holds each start once
class _Pending(Generic[T]):
    unit: StartUnit[T]
    done: bool = False
    result: T | None = None
    #: What the start raised when it ran alone inside the group runner.
    error: Exception | None = None
    #: Set when the group it was in broke: it runs again alone, by its caller.
    alone: bool = False


class _SameTransactionReads(DeferredWrites):
    """The group's transaction: what :class:`DeferredWrites` keeps, plus the newest
    version of each definition read — or checked, when the server knew it — once
    (no deploy happens inside it)."""

    def __init__(self, tx: Tx) -> None:
        super().__init__(tx)
        self._latest: dict[str, Row | None] = {}
        self._expected: set[tuple[str, str]] = set()

    def send(self, query: str, /, **params: Any) -> None:
        if query == "expect_latest_definition":  # one check per definition will do
            key = (str(params["name"]), str(params["version"]))
            if key in self._expected:
                return
            self._expected.add(key)
        super().send(query, **params)

    def one(self, query: str, /, **params: Any) -> Row | None:
        if query != "latest_definition":
            return super().one(query, **params)
        name = str(params["name"])
        if name not in self._latest:
            self._latest[name] = super().one(query, **params)
        return self._latest[name]


class StartGroups:
    """Applies starts in groups (see the module docstring)."""

    def __init__(self, engine: TransitionEngine) -> None:
        self._engine = engine
        self._waiting: list[_Pending[Any]] = []
        self._running = 0
        self._group_done = trio.Event()

    async def start(self, unit: StartUnit[T]) -> T:
        """Apply ``unit`` with the starts around it; its result once committed.

        Raises:
            Exception: whatever ``unit`` or the store raise when it runs alone.
        """
        pending: _Pending[T] = _Pending(unit)
        self._waiting.append(pending)
        try:
            while not pending.done and not pending.alone:
                if self._running >= LANES or pending not in self._waiting:
                    await self._group_done.wait()
                else:
                    await self._run_group()
        except BaseException:
            if pending in self._waiting:  # cancelled before its group began
                self._waiting.remove(pending)
            raise
        if pending.alone:
            result: T = await self._engine.write(unit)
            return result
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    async def _run_group(self) -> None:
        """Apply the starts waiting now in one transaction (one start: its own)."""
        group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
        self._running += 1
        try:
            # The group's starts belong to other callers too: a cancelled caller
            # does not take their transaction with it (the store would finish
            # a started unit anyway).
            with trio.CancelScope(shield=True):
                await self._apply_group(group)
        finally:
            self._running -= 1
            done, self._group_done = self._group_done, trio.Event()
            done.set()

    async def _apply_group(self, group: list[_Pending[Any]]) -> None:
        if len(group) == 1:
            [only] = group
            try:
                only.result = await self._engine.write(only.unit)
            except Exception as exc:  # its caller raises it
                only.error = exc
            only.done = True
            return
        try:
            results = await self._engine.write(lambda tx, effects: _apply(tx, effects, group))
        except Exception as exc:  # each start runs again alone, with its own handling
            log.info(
                "engine.start_group_split",
                starts=len(group),
                reason=f"{type(exc).__name__}: {exc}"[:300],
            )
            for pending in group:
                pending.alone = True
            return
        for pending, result in zip(group, results, strict=True):
            pending.result = result
            pending.done = True


def _apply(tx: Tx, effects: Effects, group: list[_Pending[Any]]) -> list[Any]:
    """Every start of ``group`` in ``tx``, in arrival order; each keeps its own
    effects until all have run (merged after, as a report group does)."""
    grouped = _SameTransactionReads(tx)
    results = []
    own_effects = []
    for pending in group:
        own_effects.append(own := Effects())
        results.append(pending.unit(grouped, own))
    grouped.flush()
    for own in own_effects:
        effects.merge(own)
    return results
