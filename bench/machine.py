"""What the figures were measured on: cores, CPU, memory, load, versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sqlite3
from typing import Any

PACKAGES = (
    "kflow",
    "trio",
    "httpx",
    "hypercorn",
    "celery",
    "kombu",
    "redis",
    "psycopg",
    "greenlet",
    "kruxiaflow",
    "psutil",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        return None


def load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def describe() -> dict[str, Any]:
    """Everything but the servers' versions (PostgreSQL, Redis), which the run adds."""
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "packages": versions(),
        "load_average_at_start": load(),
    }
