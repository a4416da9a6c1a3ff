"""Registry builders, ``aclose_registry`` and entry-point plugins (real dist-info on sys.path)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
import structlog

from kflow.activities import (
    ENTRY_POINT_GROUP,
    aclose_registry,
    load_plugins,
    open_std_registry,
    postgres_available,
    py_std_registry,
    std_registry,
)
from kflow.activities.script_pool import ScriptPool
from kflow.worker.context import ActivityContext


async def test_std_and_py_std_registries() -> None:
    async with httpx.AsyncClient() as http:
        std = std_registry(http=http)
        postgres = ["std.postgres_query", "std.postgres_transaction"]
        assert std.activity_types() == [
            "std.echo",
            "std.email_send",
            "std.http_request",
            *(postgres if postgres_available() else []),
        ]
        await aclose_registry(std)
        assert not http.is_closed  # injected: the caller's to close
    async with ScriptPool(size=1) as pool:  # no child is started until a run
        assert py_std_registry(pool).activity_types() == ["py-std.script"]


async def test_echo() -> None:
    async with open_std_registry() as registry:
        act = registry.get("std", "echo")
        ctx = ActivityContext(workflow_id=uuid4(), activity_id=uuid4(), activity_key="k")
        result = await act.execute({"a": [1, {"b": None}]}, ctx)
    assert result.to_output_dict() == {"echo": {"a": [1, {"b": None}]}}


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fake installed distribution with four ``kflow.activities`` entry points."""
    suffix = uuid4().hex[:8]
    dist = tmp_path / f"kflow_fake_plugins_{suffix}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: kflow-fake-plugins-{suffix}\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(f"""\
        [{ENTRY_POINT_GROUP}]
        good-{suffix} = fake_good_{suffix}:register
        broken-{suffix} = fake_broken_{suffix}:register
        missing-{suffix} = fake_missing_{suffix}:register
        clash-{suffix} = fake_clash_{suffix}:register
        """)
    )
    body = textwrap.dedent("""\
        from kflow.worker import ActivityResult, activity

        @activity(name="{name}")
        async def act(params, ctx):
            return ActivityResult.value("out", 1)

        def register(registry, worker):
            registry.register(act, worker)
            {after}
        """)
    (tmp_path / f"fake_good_{suffix}.py").write_text(body.format(name="greet", after="pass"))
    (tmp_path / f"fake_broken_{suffix}.py").write_text(
        body.format(name="half", after="raise RuntimeError('boom')")
    )
    (tmp_path / f"fake_clash_{suffix}.py").write_text(body.format(name="echo", after="pass"))
    monkeypatch.syspath_prepend(str(tmp_path))
    return suffix


async def test_load_plugins_loads_good_and_skips_failures(plugins: str) -> None:
    async with open_std_registry() as registry:
        echo = registry.get("std", "echo")
        with structlog.testing.capture_logs() as logs:
            loaded = load_plugins(registry, "std")
    assert f"good-{plugins}" in loaded
    assert not {f"broken-{plugins}", f"missing-{plugins}", f"clash-{plugins}"} & set(loaded)
    assert registry.get("std", "greet") is not None
    assert registry.get("std", "half") is None  # a failed plugin changes nothing
    assert registry.get("std", "echo") is echo
    failed = {e["plugin"]: e["error"] for e in logs if e["event"] == "activities.plugin_failed"}
    assert failed[f"broken-{plugins}"] == "RuntimeError: boom"
    assert failed[f"missing-{plugins}"].startswith("ModuleNotFoundError")
    assert "already registered" in failed[f"clash-{plugins}"]
