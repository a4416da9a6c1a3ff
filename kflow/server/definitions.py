"""Deployed workflow definitions: versioning by content and an in-memory cache.

A definition is identified by the hash of its normalized form. Deploying
content identical to the newest version of that name changes nothing;
anything else becomes a new version named by its UTC insert time
(``YYYYmmdd.HHMMSS.ffffff``), so versions sort in deploy order.

Deployed versions never change, so parsed definitions (with their graph) are
cached per (name, version) for the life of the process.
"""

from __future__ import annotations

import collections
import contextvars
import datetime as dt
import threading
from typing import Any

import attrs

from kflow.errors import NotFoundError
from kflow.model.definition import WorkflowDefinition
from kflow.model.graph import DefinitionGraph
from kflow.model.loader import load_definition
from kflow.model.normalize import content_hash, normalized_dict
from kflow.store.base import Row, Tx
from kflow.store.codec import load_json, load_time


@attrs.frozen(kw_only=True)
class LoadedDefinition:
    """A deployed version, parsed, with its graph."""

    name: str
    version: str
    content_hash: str
    definition: WorkflowDefinition
    graph: DefinitionGraph
    created_at: dt.datetime
    waits_for_signals: bool

    @classmethod
    def build(
        cls, definition: WorkflowDefinition, *, version: str, digest: str, created_at: dt.datetime
    ) -> LoadedDefinition:
        return cls(
            name=definition.name,
            version=version,
            content_hash=digest,
            definition=definition,
            graph=DefinitionGraph(definition),
            created_at=created_at,
            waits_for_signals=any(a.settings.wait_for_signal for a in definition.activities),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "activity_count": len(self.definition.activities),
            "created_at": self.created_at,
        }


def version_for(now: dt.datetime, latest: str | None) -> str:
    """A version string for ``now`` that sorts after ``latest``."""
    stamp = now.astimezone(dt.UTC)
    version = stamp.strftime("%Y%m%d.%H%M%S.%f")
    while latest is not None and version <= latest:
        stamp += dt.timedelta(microseconds=1)
        version = stamp.strftime("%Y%m%d.%H%M%S.%f")
    return version


#: Set while a transaction runs again because a newest version it took from the
#: cache was stale: it reads every newest version (another unit may have noted the
#: stale one again meanwhile). Units copy the context of the task that runs them.
READ_LATEST: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "kflow_read_latest_definitions", default=False
)


class DefinitionCache:
    """Parsed definitions by (name, version); safe to use from store threads."""

    def __init__(self, maxsize: int = 512) -> None:
        self._items: collections.OrderedDict[tuple[str, str], LoadedDefinition] = (
            collections.OrderedDict()
        )
        self._maxsize = maxsize
        self._lock = threading.Lock()
        #: The newest version of each name as this server last read or deployed it.
        self._latest: dict[str, str] = {}

    def remember(self, loaded: LoadedDefinition) -> LoadedDefinition:
        with self._lock:
            self._items[(loaded.name, loaded.version)] = loaded
            self._items.move_to_end((loaded.name, loaded.version))
            while len(self._items) > self._maxsize:
                self._items.popitem(last=False)
        return loaded

    def cached(self, name: str, version: str) -> LoadedDefinition | None:
        with self._lock:
            found = self._items.get((name, version))
            if found is not None:
                self._items.move_to_end((name, version))
            return found

    def from_row(self, row: Row) -> LoadedDefinition:
        """The parsed form of a definitions row (cached)."""
        hit = self.cached(row["name"], row["version"])
        if hit is not None:
            return hit
        definition = load_definition(load_json(row["body"]))
        return self.remember(
            LoadedDefinition.build(
                definition,
                version=row["version"],
                digest=row["content_hash"],
                created_at=load_time(row["created_at"]) or dt.datetime.now(dt.UTC),
            )
        )

    def load(
        self, tx: Tx, name: str, version: str | None = None, *, expect_latest: bool = False
    ) -> LoadedDefinition:
        """The named version (the newest when ``version`` is None).

        ``expect_latest`` (PostgreSQL write units that go through
        :meth:`~kflow.server.transitions.TransitionEngine.write`): the newest
        version known to this server is taken without reading it, and a check
        travels with the transaction's writes instead; if another version is
        the newest by then, the transaction fails with
        :class:`~kflow.errors.StaleReadError` (the engine forgets what it knew
        and runs it again).

        Raises:
            NotFoundError: no such definition or version.
        """
        if version is not None:
            hit = self.cached(name, version)
            if hit is not None:
                return hit
            row = tx.one("get_definition", name=name, version=version)
        else:
            trusted = expect_latest and tx.dialect == "postgres" and not READ_LATEST.get()
            known = self.latest_known(name) if trusted else None
            if known is not None:
                tx.send("expect_latest_definition", name=name, version=known.version)
                return known
            row = tx.one("latest_definition", name=name)
        if row is None:
            what = f"workflow definition {name!r}" + (f" version {version!r}" if version else "")
            raise NotFoundError(f"{what} not found")
        loaded = self.from_row(row)
        if version is None:
            self.note_latest(loaded)
        return loaded

    def note_latest(self, loaded: LoadedDefinition) -> None:
        """``loaded`` is the newest version of its name (read or deployed just now)."""
        with self._lock:
            self._latest[loaded.name] = loaded.version

    def latest_known(self, name: str) -> LoadedDefinition | None:
        """The newest version of ``name`` as this server last saw it, if still cached."""
        with self._lock:
            version = self._latest.get(name)
        return None if version is None else self.cached(name, version)

    def forget_latest(self) -> None:
        """Forget every newest version seen (one turned out stale)."""
        with self._lock:
            self._latest.clear()


def deploy_in_tx(
    tx: Tx, cache: DefinitionCache, definition: WorkflowDefinition, now: dt.datetime
) -> tuple[LoadedDefinition, bool]:
    """Store ``definition`` unless the newest version has the same content.

    Returns the stored (or existing) version and whether it is new.
    """
    digest = content_hash(definition)
    latest = tx.one("latest_definition", name=definition.name)
    if latest is not None and latest["content_hash"] == digest:
        return cache.from_row(latest), False
    version = version_for(now, None if latest is None else latest["version"])
    tx.run(
        "insert_definition",
        name=definition.name,
        version=version,
        content_hash=digest,
        body=tx.json(normalized_dict(definition)),
        activity_count=len(definition.activities),
        now=tx.time(now),
    )
    loaded = LoadedDefinition.build(definition, version=version, digest=digest, created_at=now)
    return cache.remember(loaded), True
