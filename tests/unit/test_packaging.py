"""setup.cfg lists its packages by name; none may be forgotten."""

from __future__ import annotations

import configparser
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMPORTS_ADD_ON = re.compile(r"^\s*(from|import)\s+kflow_llm\b|import_module\([\"']kflow_llm", re.M)


def _listed() -> tuple[set[str], dict[str, str]]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    packages = {p.strip() for p in config["options"]["packages"].split() if p.strip()}
    dirs = {}
    for line in config["options"]["package_dir"].strip().splitlines():
        name, _, path = line.partition("=")
        dirs[name.strip()] = path.strip()
    return packages, dirs


def _package_dirs(top: pathlib.Path, name: str) -> set[str]:
    return {
        ".".join([name, *init.parent.relative_to(top).parts])
        for init in top.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_every_package_directory_is_listed_in_setup_cfg() -> None:
    packages, dirs = _listed()
    found = _package_dirs(ROOT / "kflow", "kflow")
    for name, path in dirs.items():
        found |= _package_dirs(ROOT / path, name)
    assert found == packages
    assert dirs == {"kflow_llm": "contrib/kflow_llm"}


def test_the_core_never_imports_an_add_on() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "kflow").rglob("*.py")
        if IMPORTS_ADD_ON.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
