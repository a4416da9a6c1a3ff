"""``ActivityRegistry``: which activity implementation serves which (worker, name)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from kflow.worker.activity import Activity

_IDENTIFIER = re.compile(r"^[A-Za-z0-9_-]+$")


def check_identifier(value: str, *, what: str) -> str:
    """Return ``value`` if it matches ``^[A-Za-z0-9_-]+$``.

    Raises:
        ValueError: it does not (the message names ``what``).
    """
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ValueError(f"{what} {value!r} must match ^[A-Za-z0-9_-]+$")
    return value


class ActivityRegistry:
    """Activities by worker (queue) name and activity name.

    ``register(act)`` uses the registry's default worker; pass ``worker=`` to
    serve the same implementation on another queue.
    """

    def __init__(self, default_worker: str = "py-std") -> None:
        self.default_worker = check_identifier(default_worker, what="worker name")
        self._by_key: dict[tuple[str, str], Activity] = {}

    def register(self, activity: Activity, worker: str | None = None) -> Activity:
        """Add ``activity`` for ``worker`` (default: the registry's worker).

        Returns the activity, so it can be used as a decorator's last step.

        Raises:
            ValueError: bad names, or that (worker, name) is already taken by
                another implementation.
        """
        queue = check_identifier(worker or self.default_worker, what="worker name")
        name = check_identifier(getattr(activity, "name", ""), what="activity name")
        existing = self._by_key.get((queue, name))
        if existing is not None and existing is not activity:
            raise ValueError(f"activity {name!r} is already registered for worker {queue!r}")
        self._by_key[(queue, name)] = activity
        return activity

    def get(self, worker: str, name: str) -> Activity | None:
        """The implementation for (worker, name), or None."""
        return self._by_key.get((worker, name))

    def workers(self) -> list[str]:
        """Worker (queue) names that have at least one activity, sorted."""
        return sorted({w for w, _ in self._by_key})

    def names(self, worker: str) -> list[str]:
        """Activity names registered for ``worker``, sorted."""
        return sorted(n for w, n in self._by_key if w == worker)

    def activity_types(self) -> list[str]:
        """``worker.name`` strings, sorted (the reference SDK's listing)."""
        return sorted(f"{w}.{n}" for w, n in self._by_key)

    def merge(self, other: ActivityRegistry) -> ActivityRegistry:
        """Add every entry of ``other`` to this registry; returns self.

        Raises:
            ValueError: a (worker, name) is served by different implementations.
        """
        for (worker, _), act in other._by_key.items():
            self.register(act, worker)
        return self

    def __iter__(self) -> Iterator[tuple[str, str, Activity]]:
        for (worker, name), act in sorted(self._by_key.items()):
            yield worker, name, act

    def __len__(self) -> int:
        return len(self._by_key)
