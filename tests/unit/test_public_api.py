"""The curated public namespaces: ``__all__`` sorted, complete and importable."""

from __future__ import annotations

import importlib
import types

import pytest


def isort_style(item: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions."""
    if item.isupper() or (item.upper() == item and "_" in item):
        return (0, item)
    return (1, item) if item[:1].isupper() else (2, item)


PACKAGES = [
    "kflow",
    "kflow.worker",
    "kflow.model",
    "kflow.activities",
    "kflow.errors",
    "kflow.templates",
    "kflow.client",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=isort_style), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ names missing {item}"


@pytest.mark.parametrize("name", ["kflow", "kflow.worker", "kflow.model", "kflow.activities"])
def test_every_public_name_of_a_package_is_exported(name: str) -> None:
    module = importlib.import_module(name)
    # what the package itself defines (helpers imported from elsewhere do not count)
    public = {
        item
        for item, value in vars(module).items()
        if not item.startswith("_")
        and not isinstance(value, types.ModuleType)
        and str(getattr(value, "__module__", "")).startswith(name + ".")
    }
    assert public <= set(module.__all__), (
        f"{name} exports without __all__: {public - set(module.__all__)}"
    )


def test_worker_sdk_names_of_the_issue_are_public() -> None:
    import kflow.worker as sdk

    for item in (
        "Activity",
        "activity",
        "ActivityContext",
        "ActivityResult",
        "ActivityOutput",
        "OutputType",
        "ActivityRegistry",
        "WorkerConfig",
        "WorkerManager",
    ):
        assert item in sdk.__all__


def test_importing_the_worker_sdk_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, kflow.worker; heavy = [m for m in ('starlette', 'jinja2', 'hypercorn', "
        "'yaml', 'psycopg') if m in sys.modules]; print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
