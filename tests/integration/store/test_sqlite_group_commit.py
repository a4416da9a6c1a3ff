"""SQLite group commit: concurrent units share a transaction, fail alone, wait out locks."""

from __future__ import annotations

import datetime as dt
import pathlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from kflow.errors import ConflictError, StoreUnavailableError
from kflow.store import sqlite as sqlite_module
from kflow.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: pathlib.Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(tmp_path / "k.db")
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.aclose()


def _client(client_id: str) -> Any:
    def unit(tx: Any) -> str:
        tx.run(
            "insert_client",
            client_id=client_id,
            secret_hash="x",
            scopes="worker",
            description=None,
            now=tx.time(dt.datetime.now(dt.UTC)),
        )
        return client_id

    return unit


async def test_concurrent_writes_share_commits(store: SqliteStore) -> None:
    results: list[str] = []

    async def one(index: int) -> None:
        results.append(await store.write(_client(f"c{index}")))

    async with trio.open_nursery() as nursery:
        for index in range(50):
            nursery.start_soon(one, index)
    assert sorted(results) == sorted(f"c{i}" for i in range(50))
    assert store.units == 50
    assert store.batches < 50  # several units per commit
    rows = await store.read(lambda tx: tx.all("list_clients"))
    assert len(rows) == 50


async def test_a_failing_unit_fails_alone_in_its_batch(store: SqliteStore) -> None:
    await store.write(_client("taken"))
    outcomes: dict[str, object] = {}

    async def one(name: str) -> None:
        try:
            outcomes[name] = await store.write(_client(name))
        except ConflictError as exc:
            outcomes[name] = exc

    def broken(tx: Any) -> None:
        _client("half")(tx)
        raise RuntimeError("boom")

    async def failing() -> None:
        try:
            await store.write(broken)
        except RuntimeError as exc:
            outcomes["broken"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "a")
        nursery.start_soon(one, "taken")
        nursery.start_soon(failing)
        nursery.start_soon(one, "b")
    assert outcomes["a"] == "a"
    assert outcomes["b"] == "b"
    assert isinstance(outcomes["taken"], ConflictError)
    assert isinstance(outcomes["broken"], RuntimeError)
    names = {r["client_id"] for r in await store.read(lambda tx: tx.all("list_clients"))}
    assert names == {"taken", "a", "b"}  # "half" was rolled back with its unit


async def test_a_write_waits_for_another_process_lock(
    store: SqliteStore, tmp_path: pathlib.Path
) -> None:
    other = sqlite3.connect(tmp_path / "k.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.write, _client("late"))
        await trio.sleep(0.2)
        assert await store.read(lambda tx: tx.one("get_client", client_id="late")) is None
        other.execute("COMMIT")
    other.close()
    assert await store.read(lambda tx: tx.one("get_client", client_id="late")) is not None


async def test_a_lock_held_too_long_is_unavailable(
    store: SqliteStore, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "BUSY_WAIT_SECONDS", 0.3)
    other = sqlite3.connect(tmp_path / "k.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailableError, match="stayed locked"):
            await store.write(_client("never"))
    finally:
        other.execute("ROLLBACK")
        other.close()
