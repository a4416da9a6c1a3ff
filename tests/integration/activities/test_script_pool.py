"""``ScriptPool`` with real child interpreters: reuse, isolation, limits, failures."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator

import pytest
import trio

from kflow.activities.script_pool import ScriptOutcome, ScriptPool


@pytest.fixture
async def pool() -> AsyncIterator[ScriptPool]:
    async with ScriptPool(size=2, memory_limit_mb=256) as p:
        yield p


async def run(
    pool: ScriptPool, script: str, inputs: object = None, seconds: float = 5
) -> ScriptOutcome:
    return await pool.run(script, inputs, timeout=seconds, workflow_id="wf-1", activity_key="k")


def assert_dead(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_input_output_and_context_names(pool) -> None:
    out = await run(
        pool, "OUTPUT = {'n': INPUT['n'] + 1, 'wf': workflow_id, 'key': activity_key}", {"n": 41}
    )
    assert out.ok, out
    assert out.output == {"n": 42, "wf": "wf-1", "key": "k"}
    assert (await run(pool, "OUTPUT['input'] = INPUT")).output == {"input": {}}


async def test_top_level_await(pool) -> None:
    script = "import asyncio\nawait asyncio.sleep(0)\nOUTPUT = await asyncio.sleep(0, 'done')"
    assert (await run(pool, script)).output == "done"


async def test_logs_and_prints_are_captured_without_corrupting_the_protocol(pool) -> None:
    script = (
        "import os, sys, logging\n"
        "print('hello')\n"
        "print('x' * 100_000)\n"
        "sys.stderr.write('oops\\n')\n"
        "os.write(1, b'raw bytes on fd 1\\n')\n"
        "logger.info('n=%s', INPUT['n'])\n"
        "logging.getLogger('lib').warning('from a library')\n"
        "OUTPUT = 'fine'\n"
    )
    out = await run(pool, script, {"n": 3})
    assert out.ok, out
    assert out.output == "fine"
    assert out.stdout.startswith("hello\nxxx")
    assert out.stdout.endswith("[... truncated]")
    assert len(out.stdout) < 70_000
    assert out.stderr == "oops\n"
    assert [(r.level, r.logger, r.message) for r in out.logs] == [
        (20, "kflow.script", "n=3"),
        (30, "lib", "from a library"),
    ]


async def test_child_is_reused_with_fresh_globals_and_restored_state(pool) -> None:
    first = await run(
        pool, "import os\nx = 1\nos.environ['LEAK'] = '1'\nos.chdir('/')\nOUTPUT = os.getpid()"
    )
    second = await run(
        pool,
        "import os\nOUTPUT = ['x' in globals(), 'LEAK' in os.environ, os.getcwd(), os.getpid()]",
    )
    assert second.output == [False, False, os.getcwd(), first.output]
    assert first.pid == second.pid == first.output


async def test_syntax_error(pool) -> None:
    out = await run(pool, "a = 1\nb = (\n")
    assert (out.ok, out.error_code, out.retryable) == (False, "SYNTAX_ERROR", False)
    assert "line 2" in out.error_message


async def test_script_error_shows_only_script_frames(pool) -> None:
    out = await run(pool, "import json\ndef f():\n    return json.loads('{')\nf()\n")
    assert (out.error_code, out.retryable) == ("SCRIPT_ERROR", False)
    assert out.error_message.startswith("json.decoder.JSONDecodeError: Expecting")
    assert 'File "<script>", line 4' in out.error_message
    assert 'File "<script>", line 3, in f' in out.error_message
    assert "json/decoder.py" not in out.error_message
    assert "_script_child" not in out.error_message


async def test_output_not_serialisable(pool) -> None:
    out = await run(pool, "OUTPUT = {'s': {1, 2}}")
    assert (out.error_code, out.retryable) == ("SCRIPT_ERROR", False)
    assert "set" in out.error_message


async def test_missing_script_starts_no_child(pool) -> None:
    for script in ("", "   \n", None):
        out = await run(pool, script)  # type: ignore[arg-type]
        assert (out.error_code, out.retryable, out.pid) == ("MISSING_SCRIPT", False, None)


@pytest.mark.parametrize("script", ["while True: pass", "import time\ntime.sleep(100)"])
async def test_timeout_kills_blocking_code(pool, script) -> None:
    with trio.fail_after(3):
        out = await run(pool, script, seconds=0.5)
    assert (out.error_code, out.retryable) == ("TIMEOUT", True)
    assert_dead(out.pid)
    assert (await run(pool, "OUTPUT = 1")).output == 1


async def test_cancellation_kills_and_replaces_the_child() -> None:
    async with ScriptPool(size=1, memory_limit_mb=None) as pool:
        pid = (await run(pool, "import os\nOUTPUT = os.getpid()")).output
        with trio.move_on_after(0.3) as scope:
            await run(pool, "import time\ntime.sleep(100)", seconds=30)
        assert scope.cancelled_caught
        assert_dead(pid)
        again = await run(pool, "import os\nOUTPUT = os.getpid()")
        assert again.ok
        assert again.output != pid


async def test_crash_exit_status(pool) -> None:
    out = await run(pool, "import os\nos._exit(3)")
    assert (out.error_code, out.retryable) == ("SCRIPT_CRASHED", True)
    assert "exit status 3" in out.error_message


async def test_crash_by_signal(pool) -> None:
    out = await run(pool, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert (out.error_code, out.retryable) == ("SCRIPT_CRASHED", True)
    assert "SIGSEGV" in out.error_message
    assert "memory limit is 256 MB" in out.error_message


async def test_script_closing_the_protocol_pipe_is_killed(pool) -> None:
    out = await run(pool, "import os, time\nos.closerange(3, 256)\ntime.sleep(30)")
    assert (out.error_code, out.retryable) == ("SCRIPT_CRASHED", True)
    assert "protocol pipe" in out.error_message
    assert_dead(out.pid)


async def test_memory_limit(pool) -> None:
    out = await run(pool, "data = bytearray(2 * 1024 ** 3)\nOUTPUT = len(data)")
    assert (out.ok, out.retryable) == (False, False)
    if out.error_code == "SCRIPT_ERROR":
        assert out.error_message.startswith("MemoryError")
    else:
        assert out.error_code == "SCRIPT_CRASHED"
    assert "256 MB" in out.error_message
    assert (await run(pool, "OUTPUT = 'still fine'")).output == "still fine"


async def test_memory_exhausted_while_serialising_output_crashes_as_memory(pool) -> None:
    out = await run(pool, "OUTPUT = 'x' * (180 * 1024 ** 2)")
    assert (out.ok, out.error_code, out.retryable) == (False, "SCRIPT_CRASHED", False)
    assert "out of memory" in out.error_message
    assert "256 MB" in out.error_message


async def test_environment_is_an_allow_list(monkeypatch) -> None:
    monkeypatch.setenv("KRUXIAFLOW_CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("KFLOW_DATABASE_URL", "postgresql://u:pw@db/kflow")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_x")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    async with ScriptPool(size=1, env={"EXTRA": "yes"}) as pool:
        out = await run(pool, "import os\nOUTPUT = dict(os.environ)")
    assert not {
        "KRUXIAFLOW_CLIENT_SECRET",
        "OPENAI_API_KEY",
        "KFLOW_DATABASE_URL",
        "GITHUB_TOKEN",
    } & set(out.output)
    assert "s3cret" not in repr(out.output)
    assert out.output["EXTRA"] == "yes"
    assert out.output["LC_ALL"] == "C.UTF-8"
    assert out.output.get("PATH") == os.environ.get("PATH")


async def test_concurrency_is_bounded_by_size(pool) -> None:
    results: list[ScriptOutcome] = []

    async def one() -> None:
        results.append(await run(pool, "import os, time\ntime.sleep(0.1)\nOUTPUT = os.getpid()"))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert all(r.ok for r in results)
    assert len({r.output for r in results}) <= 2


async def test_threads_left_running_retire_the_child(pool) -> None:
    first = await run(
        pool,
        "import threading, time, os\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "OUTPUT = os.getpid()",
    )
    assert first.ok
    assert_dead(first.output)
    assert (await run(pool, "import os\nOUTPUT = os.getpid()")).output != first.output


async def test_interpreter_that_cannot_start() -> None:
    async with ScriptPool(size=1, python="/nonexistent/python3") as pool:
        out = await run(pool, "OUTPUT = 1")
    assert (out.error_code, out.retryable) == ("SCRIPT_CRASHED", True)
    assert "/nonexistent/python3" in out.error_message


async def test_closed_pool_refuses_and_kills_children() -> None:
    pool = ScriptPool(size=1, python=sys.executable)
    pid = (await run(pool, "import os\nOUTPUT = os.getpid()")).output
    await pool.aclose()
    assert_dead(pid)
    with pytest.raises(trio.ClosedResourceError):
        await run(pool, "OUTPUT = 1")


def test_bad_size() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ScriptPool(size=0)
