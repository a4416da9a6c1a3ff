"""A script cannot read its (hardened) worker's environment through /proc."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux-only")

ROOT = str(Path(__file__).resolve().parents[3])
# The child runs as an ordinary user, who may not be able to run the venv's interpreter.
CHILD_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

PROGRAM = textwrap.dedent("""
    import os, subprocess, sys
    from kflow.activities.hardening import is_protected, protect_process_memory
    if os.getuid() == 0:  # root may read anyone's /proc; test as an ordinary user
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        # changing uid made us non-dumpable; a worker started as that user is not
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(4, 1, 0, 0, 0)
    harden = sys.argv[1] == "harden"
    if harden:
        assert protect_process_memory() and is_protected()
    peek = ("import os; print(open(f'/proc/{os.getppid()}/environ', 'rb').read()"
            ".count(b'SECRET_TOKEN'))")
    python = sys.argv[2]
    child = subprocess.run([python, "-c", peek], capture_output=True, text=True)
    print(child.stdout.strip() or child.stderr.strip().splitlines()[-1])
""")


def run(mode: str) -> str:
    env = {"SECRET_TOKEN": "hunter2", "PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode, CHILD_PYTHON],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
        cwd="/",
    )
    return result.stdout.strip()


def test_an_unhardened_parent_leaks_its_environment() -> None:
    assert run("plain") == "1"  # the risk this module exists for


def test_a_hardened_parent_does_not() -> None:
    assert "PermissionError" in run("harden")
