"""The ``kflow`` command line (DESIGN.md, "Command line": a contract scripts rely on).

::

    kflow serve  [--host H] [--port P] [--db URL] [--no-worker] [--insecure-dev] [--seed-client]
                 [--deploy PATH]... [--run FILE [--input JSON]]
    kflow worker [--api-url URL] [--worker NAME] [--concurrency N]
                 (MODULE:REGISTRY | --std | --py-std)
    kflow run FILE.yaml [--input JSON] [--api-url URL]
    kflow deploy FILE... | start NAME --input JSON | status [ID] | cancel ID
    kflow migrate [--db URL] | clients (create NAME --scopes S | list | disable NAME)

Exit status: 0 success (``run``: the workflow completed), 1 the workflow
failed or was cancelled, 2 bad usage, input or configuration, 3 the server
could not be reached, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from kflow._lean import lean_imports

lean_imports()  # before httpx and structlog are loaded (see kflow._lean)

import httpx  # noqa: E402
import trio  # noqa: E402

from kflow import log as kflog  # noqa: E402
from kflow._version import __version__  # noqa: E402
from kflow.config import LOG_FORMATS, env_log_format, env_log_level  # noqa: E402
from kflow.errors import ApiError, ConfigError, KflowError  # noqa: E402

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class LazyConsole:
    """Stands in for a :class:`rich.console.Console` until one is used.

    ``kflow worker`` logs through structlog and never prints, so its process
    does not load rich (~4 MiB resident, ~40 ms) at all; error messages make
    the console when they need it. Attribute access only: commands that hand
    the console to rich itself (live progress) get a real one.
    """

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


def _error_line(console: Any, message: str) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def parse_input(text: str | None) -> dict[str, Any]:
    """``--input``: a JSON object, or ``@file.json``.

    Raises:
        ConfigError: not JSON, or not an object.
    """
    if text is None:
        return {}
    try:
        raw = pathlib.Path(text[1:]).read_text() if text.startswith("@") else text
        value = json.loads(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--input must be a JSON object (or @file.json): {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"--input must be a JSON object, got {type(value).__name__}")
    return value


def _server_args(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the server (API, scheduler, built-in workers)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1; KFLOW_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8080; KFLOW_PORT)")
    serve.add_argument("--db", help="sqlite:///PATH or postgresql://... (KFLOW_DATABASE_URL)")
    serve.add_argument(
        "--no-worker", action="store_true", help="do not run the built-in std and py-std workers"
    )
    serve.add_argument(
        "--insecure-dev",
        action="store_true",
        default=None,
        help="accept requests without a token (loopback binds only)",
    )
    serve.add_argument(
        "--seed-client",
        action="store_true",
        default=None,
        help="create the client KRUXIAFLOW_CLIENT_ID/_SECRET if missing",
    )
    serve.add_argument(
        "--deploy",
        action="append",
        type=pathlib.Path,
        default=[],
        metavar="PATH",
        help="deploy definition files (or a directory) at start",
    )
    serve.add_argument(
        "--run",
        type=pathlib.Path,
        metavar="FILE",
        help="after start-up, run this workflow and show its progress",
    )
    serve.add_argument("--input", help="input of --run: a JSON object or @file.json")

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--db", help="database URL (KFLOW_DATABASE_URL)")

    clients = sub.add_parser("clients", help="manage API clients (direct database access)")
    clients.add_argument("--db", help="database URL (KFLOW_DATABASE_URL)")
    csub = clients.add_subparsers(dest="clients_command", required=True)
    create = csub.add_parser("create", help="create a client and print its secret once")
    create.add_argument("client_id")
    create.add_argument(
        "--scopes",
        default="worker",
        help="comma-separated: admin, worker, workflows:read, workflows:write",
    )
    create.add_argument("--secret", help="use this secret instead of a generated one")
    create.add_argument("--description")
    csub.add_parser("list", help="list clients")
    disable = csub.add_parser("disable", help="disable a client (its tokens stop working)")
    disable.add_argument("client_id")


def _client_args(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def with_url(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--api-url", help="server URL (KRUXIAFLOW_API_URL, default http://127.0.0.1:8080)"
        )
        return parser

    worker = with_url(sub.add_parser("worker", help="run a worker"))
    worker.add_argument(
        "registry",
        nargs="?",
        metavar="MODULE:REGISTRY",
        help="an ActivityRegistry (or a function returning one)",
    )
    kind = worker.add_mutually_exclusive_group()
    kind.add_argument("--std", action="store_true", help="the standard std worker")
    kind.add_argument("--py-std", action="store_true", help="the standard py-std worker")
    worker.add_argument("--worker", help="queue name to serve (KRUXIAFLOW_WORKER)")
    worker.add_argument(
        "--concurrency", type=int, help="activity slots (KRUXIAFLOW_WORKER_MAX_ACTIVITIES)"
    )

    run = with_url(sub.add_parser("run", help="deploy, start and follow a workflow"))
    run.add_argument("file", type=pathlib.Path)
    run.add_argument("--input", help="a JSON object or @file.json")

    deploy = with_url(sub.add_parser("deploy", help="deploy workflow definitions"))
    deploy.add_argument("files", nargs="+", type=pathlib.Path)

    start = with_url(sub.add_parser("start", help="start a run of a deployed workflow"))
    start.add_argument("name")
    start.add_argument("--input", help="a JSON object or @file.json")
    start.add_argument("--version")
    start.add_argument("--unique-key")
    start.add_argument("--wait", action="store_true", help="follow the run until it ends")

    status = with_url(sub.add_parser("status", help="show a run (or the latest runs)"))
    status.add_argument("workflow_id", nargs="?")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    cancel = with_url(sub.add_parser("cancel", help="cancel a run"))
    cancel.add_argument("workflow_id")

    prices = sub.add_parser("prices", help="list LLM token prices (the llm extra)")
    prices.add_argument("--provider", help="only this provider (anthropic, openai, ...)")
    prices.add_argument("--model", help="only models whose id contains this text")
    prices.add_argument("--at", help="the prices in force at this date or timestamp")
    prices.add_argument(
        "--file", help="a prices file applied over the shipped catalog (KFLOW_LLM_PRICES)"
    )
    prices.add_argument("--json", action="store_true", help="print JSON")


async def _unwrapped(handler: Any, args: argparse.Namespace, console: Console) -> int:
    """Run a command; an exception group with one leaf re-raises that leaf."""
    try:
        result: int = await handler(args, console)
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1 and isinstance(leaves[0], Exception):
            raise leaves[0] from group
        raise
    return result


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kflow", description="kflow: durable workflows for AI work, on Trio."
    )
    parser.add_argument("--version", action="version", version=f"kflow {__version__}")
    parser.add_argument(
        "--log-level", default=None, help="debug, info, warning, error (KFLOW_LOG_LEVEL)"
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="auto (JSON unless on a terminal), json or console (KFLOW_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _server_args(sub)
    _client_args(sub)
    return parser


def _configure_logging(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--log-level``/``--log-format``, else ``KFLOW_LOG_LEVEL``/``KFLOW_LOG_FORMAT``.

    Raises:
        SystemExit: a bad level or format (usage error, status 2).
    """
    try:
        level = kflog.level_from_name(args.log_level or env_log_level())
        fmt = args.log_format or env_log_format()
    except ValueError as exc:  # ConfigError is a ValueError too
        parser.error(str(exc))
    kflog.configure(level=level, fmt=fmt)


def unreachable_message(exc: httpx.TransportError, api_url: str | None = None) -> str:
    """``cannot reach URL: reason. Is 'kflow serve' running?`` for a network failure.

    ``api_url`` is the URL the command was given; without it the origin of the
    failed request is named.
    """
    url = api_url or "the server"
    if api_url is None:
        try:
            request = exc.request
        except RuntimeError:  # raised outside of a request: there is none
            pass
        else:
            url = f"{request.url.scheme}://{request.url.netloc.decode('ascii')}"
    reason = str(exc) or type(exc).__name__
    return f"cannot reach {url}: {reason}. Is 'kflow serve' running?"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kflow`` console script; returns the exit status.

    Errors become a one-line message on stderr and an exit status (module
    docstring), never a traceback: configuration and usage problems exit 2,
    a server that cannot be reached (connection refused, DNS, timeout) 3.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    console: Any = LazyConsole(stderr=False)
    if args.command != "worker":
        from rich.console import Console

        console = Console(stderr=False)
    errors = LazyConsole(stderr=True, soft_wrap=True)
    _configure_logging(parser, args)
    from kflow import _commands

    handler = getattr(_commands, f"cmd_{args.command}")
    try:
        code: int = trio.run(_unwrapped, handler, args, console)
    except KeyboardInterrupt:
        errors.print("interrupted")
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        _error_line(errors, str(exc))
        return EXIT_USAGE
    except ApiError as exc:
        from rich.markup import escape

        _error_line(errors, f"{exc.code}: {exc.message}")
        for field, messages in exc.details.get("field_errors", {}).items():
            errors.print(f"  {escape(field)}: {escape('; '.join(messages))}", highlight=False)
        return EXIT_USAGE if exc.status < 500 else EXIT_FAILED
    except KflowError as exc:
        _error_line(errors, str(exc))
        return EXIT_USAGE
    except httpx.TransportError as exc:  # also the single leaf of a group (_unwrapped)
        _error_line(errors, unreachable_message(exc, getattr(args, "api_url", None)))
        return EXIT_UNREACHABLE
    except OSError as exc:
        _error_line(errors, str(exc))
        return EXIT_UNREACHABLE
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
