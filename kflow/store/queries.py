"""Named SQL queries, one set per dialect, read from ``store/sql/<dialect>/*.sql``.

A file holds several statements, each introduced by a header line::

    -- name: claim_activities
    UPDATE activities SET ...

The name runs to the end of the header line; the statement runs to the next
header or the end of the file. Names are unique across a dialect's files.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

_HEADER = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str, *, source: str = "<sql>") -> dict[str, str]:
    """Split a SQL file into ``{name: statement}``.

    Raises:
        ValueError: text before the first header, an empty statement, or a
            name used twice.
    """
    out: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    preamble = text[: matches[0].start()] if matches else text
    if any(line.strip() and not line.strip().startswith("--") for line in preamble.splitlines()):
        raise ValueError(f"{source}: SQL before the first '-- name:' header")
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip().rstrip(";").strip()
        name = match.group(1)
        if not body:
            raise ValueError(f"{source}: query {name!r} is empty")
        if name in out:
            raise ValueError(f"{source}: query {name!r} defined twice")
        out[name] = body
    return out


#: Queries only PostgreSQL defines; every other name exists in both dialects.
#: ``insert_appends_of_runs`` and ``insert_workflow_with_activities`` write two
#: tables in one statement (SQLite has no data-modifying ``WITH``; its
#: statements cost no round trip anyway), ``claim_known_activities`` claims
#: without asking which row (it saves a wait for the answer, which SQLite gives
#: at once) and ``other_listeners`` counts other servers' LISTEN connections (a
#: SQLite database has one server, which does not listen). ``table_upkeep_stats``,
#: ``analyze_table`` and ``vacuum_analyze_table`` serve the server's table upkeep
#: (:mod:`kflow.server.table_upkeep`), which SQLite has no use for;
#: ``expect_latest_definition`` lets a start skip a read that SQLite answers at once.
POSTGRES_ONLY = frozenset(
    {
        "insert_appends_of_runs",
        "insert_workflow_with_activities",
        "claim_known_activities",
        "other_listeners",
        "table_upkeep_stats",
        "expect_latest_definition",
        "analyze_table",
        "vacuum_analyze_table",
    }
)


@functools.cache
def load_queries(dialect: str) -> dict[str, str]:
    """All named queries of ``dialect`` (cached).

    Raises:
        ValueError: a file is malformed or two files define the same name.
    """
    folder = resources.files("kflow.store") / "sql" / dialect
    out: dict[str, str] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, sql in parse_queries(entry.read_text(), source=entry.name).items():
            if name in out:
                raise ValueError(f"{dialect}: query {name!r} defined in two files")
            out[name] = sql
    return out


def migration_files(dialect: str) -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration of ``dialect``, in order.

    Files are named ``NNNN_description.sql``.

    Raises:
        ValueError: a file name does not start with a version number, or two
            files share a version.
    """
    folder = resources.files("kflow.store") / "migrations" / dialect
    found: dict[int, tuple[int, str, str]] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        head = entry.name.split("_", 1)[0]
        if not head.isdigit():
            raise ValueError(f"migration {entry.name!r} must be named NNNN_description.sql")
        version = int(head)
        if version in found:
            raise ValueError(f"two migrations share version {version}")
        found[version] = (version, entry.name.removesuffix(".sql"), entry.read_text())
    return [found[v] for v in sorted(found)]
