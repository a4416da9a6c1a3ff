"""The ``kflow`` command line against a real server process."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import trio

from tests.processes import REPO, Cluster

pytestmark = pytest.mark.slow


async def kflow(
    cluster: Cluster, *args: str, check: bool = False
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "kflow", *args],
            env=cluster.env,
            cwd=str(REPO),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if check and result.returncode != 0:
        raise AssertionError(
            f"kflow {args} failed:\n{result.stdout.decode()}\n{result.stderr.decode()}"
        )
    return result


def text(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode() + result.stderr.decode()


async def test_run_deploys_starts_follows_and_prints_outputs(cluster: Cluster) -> None:
    await cluster.serve()
    result = await kflow(
        cluster,
        "run",
        "examples/hello.yaml",
        "--input",
        '{"name": "Ada"}',
        "--api-url",
        cluster.url,
    )
    assert result.returncode == 0, text(result)
    out = result.stdout.decode()
    assert "deployed hello version" in out
    assert "activity.completed greet" in out  # one line per event when not on a terminal
    assert "HELLO, ADA!" in out
    assert "workflow completed  cost $0 (no budget)" in out


async def test_run_of_the_make_run_pipeline(cluster: Cluster) -> None:
    await cluster.serve()
    result = await kflow(
        cluster,
        "run",
        "examples/text_pipeline.yaml",
        "--input",
        "@examples/inputs/text_pipeline.json",
        "--api-url",
        cluster.url,
    )
    assert result.returncode == 0, text(result)
    out = result.stdout.decode()
    assert "5 messages analysed: mood positive" in out
    assert "activity.skipped escalate" in out
    assert "workflow completed" in out


async def test_run_exit_status_follows_the_workflow(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    await cluster.serve()
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        "name: failing\nactivities:\n  - key: boom\n    worker: py-std\n"
        "    activity_name: script\n    parameters: {script: 'raise RuntimeError(\"no\")'}\n"
    )
    result = await kflow(cluster, "run", str(failing), "--api-url", cluster.url)
    assert result.returncode == 1, text(result)
    assert "activity 'boom' failed: SCRIPT_ERROR: RuntimeError: no" in result.stdout.decode()

    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(
        "name: bad\nactivities:\n  - key: a\n    activity_name: echo\n    depends_on: [nope]\n"
    )
    result = await kflow(cluster, "run", str(invalid), "--api-url", cluster.url)
    assert result.returncode == 2, text(result)
    assert "VALIDATION_ERROR" in result.stderr.decode()
    assert "activities[0].depends_on[0]" in result.stderr.decode()

    result = await kflow(
        cluster, "run", "examples/hello.yaml", "--input", "[1]", "--api-url", cluster.url
    )
    assert result.returncode == 2
    assert "--input must be a JSON object" in result.stderr.decode()


async def test_unreachable_server_exits_3(cluster: Cluster) -> None:
    result = await kflow(cluster, "run", "examples/hello.yaml", "--api-url", "http://127.0.0.1:9")
    assert result.returncode == 3, text(result)
    assert "error: cannot reach http://127.0.0.1:9: " in result.stderr.decode()
    assert "Is 'kflow serve' running?" in result.stderr.decode()
    assert "Traceback" not in text(result)


async def test_deploy_start_status_cancel(cluster: Cluster) -> None:
    await cluster.serve()
    url = ("--api-url", cluster.url)
    deployed = await kflow(cluster, "deploy", "examples/approval.yaml", *url, check=True)
    assert "deployed approval version" in deployed.stdout.decode()
    again = await kflow(cluster, "deploy", "examples/approval.yaml", *url, check=True)
    assert "unchanged approval" in again.stdout.decode()
    started = await kflow(
        cluster, "start", "approval", "--input", '{"title": "Q3"}', *url, check=True
    )
    workflow_id = started.stdout.decode().strip()
    with trio.fail_after(30):
        while "waits for signal 'approved'" not in (
            status := (await kflow(cluster, "status", workflow_id, *url)).stdout.decode()
        ):
            await trio.sleep(0.2)
    assert "publish" in status
    as_json = await kflow(cluster, "status", workflow_id, "--json", *url, check=True)
    assert f'"id": "{workflow_id}"' in as_json.stdout.decode()
    listing = await kflow(cluster, "status", *url, check=True)
    assert workflow_id[:8] in listing.stdout.decode()
    cancelled = await kflow(cluster, "cancel", workflow_id, *url, check=True)
    assert "cancelled" in cancelled.stdout.decode()
    missing = await kflow(cluster, "status", "01900000-0000-7000-8000-000000000000", *url)
    assert missing.returncode == 2
    assert "NOT_FOUND" in missing.stderr.decode()


async def test_run_on_a_terminal_shows_the_live_table(cluster: Cluster) -> None:
    """``kflow run`` on a (pseudo-)terminal draws the rich table, then the outputs."""
    import os
    import pty

    await cluster.serve()
    command = [
        sys.executable,
        "-m",
        "kflow",
        "run",
        "examples/text_pipeline.yaml",
        "--input",
        "@examples/inputs/text_pipeline.json",
        "--api-url",
        cluster.url,
    ]

    def run_on_a_pty() -> tuple[int, str]:
        env = {**cluster.env, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"}
        pid, fd = pty.fork()
        if pid == 0:  # the child: becomes kflow on the terminal
            os.chdir(str(REPO))
            os.execve(sys.executable, command, env)
        chunks = []
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")

    with trio.fail_after(90):
        code, screen = await trio.to_thread.run_sync(run_on_a_pty)
    assert code == 0, screen[-3000:]
    assert "text_pipeline" in screen
    assert "readability" in screen  # a row of the live table
    assert "completed" in screen
    assert "workflow completed" in screen
    assert "5 messages analysed" in screen
