"""Live progress of a run in the terminal (``kflow run``, ``kflow serve --run``).

On a terminal a rich table of activities refreshes as the run's events
arrive; elsewhere (pipes, CI logs) one line per event is printed. Both end
with the outputs of the final activities, the cost and the outcome.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from typing import Any

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.pretty import Pretty
from rich.table import Table
from rich.text import Text

from kflow._serde import parse_datetime
from kflow.client import AsyncClient
from kflow.errors import ApiError

_STYLE = {
    "not_scheduled": "dim",
    "waiting": "yellow",
    "pending": "cyan",
    "running": "bold blue",
    "completed": "green",
    "failed": "bold red",
    "skipped": "dim",
    "cancelled": "magenta",
    "created": "cyan",
}
_ICON = {
    "not_scheduled": "·",
    "waiting": "⏳",
    "pending": "…",
    "running": "▶",
    "completed": "✔",
    "failed": "✘",
    "skipped": "↷",
    "cancelled": "■",
    "created": "…",
}


def _duration(activity: dict[str, Any]) -> str:
    start, end = activity.get("started_at"), activity.get("completed_at")
    if not start:
        return ""
    begin = parse_datetime(start)
    finish = parse_datetime(end) if end else dt.datetime.now(dt.UTC)
    seconds = max(0.0, (finish - begin).total_seconds())
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _detail(activity: dict[str, Any]) -> str:
    if activity.get("error") and activity["status"] in ("failed", "waiting"):
        error = activity["error"]
        return f"{error.get('code')}: {error.get('message', '')}"[:90]
    if activity.get("waits_for_signal"):
        return f"waits for signal {activity['waits_for_signal']!r}"
    if activity["status"] == "waiting" and activity.get("available_at"):
        return f"until {activity['available_at']}"
    if activity["status"] == "running" and activity.get("worker_id"):
        return f"on {activity['worker_id']}"
    return ""


def render_run(run: dict[str, Any], elapsed: float) -> Table:
    """A table of the run's activities."""
    status = run["status"]
    title = Text.assemble(
        (f"{run['definition_name']} ", "bold"),
        (f"{run['id']}  ", "dim"),
        (f"{_ICON.get(status, '')} {status}", _STYLE.get(status, "")),
        (f"   {elapsed:.1f} s   cost ${run.get('total_cost_usd', '0')}", "dim"),
    )
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("activity", "worker", "status", "try", "time", "detail"):
        table.add_column(column, no_wrap=column != "detail")
    for act in run["activities"]:
        state = act["status"]
        tries = f"{act['attempt']}" + (f" (iter {act['iteration']})" if act["iteration"] else "")
        table.add_row(
            act["activity_key"],
            act["worker"],
            Text(f"{_ICON.get(state, '')} {state}", style=_STYLE.get(state, "")),
            tries if act["attempt"] else "",
            _duration(act),
            _detail(act),
        )
    return table


def cost_line(cost: dict[str, Any]) -> str:
    """``cost $X`` and, with a budget, ``of a $L budget, $R left`` (or over by)."""
    line = f"cost ${cost['total_cost_usd']}"
    limit, remaining = cost.get("budget_limit_usd"), cost.get("budget_remaining_usd")
    if limit is None or remaining is None:
        return line + " (no budget)"
    if str(remaining).startswith("-"):
        return line + f" of a ${limit} budget: [red]over by ${str(remaining)[1:]}[/]"
    return line + f" of a ${limit} budget, ${remaining} left"


def render_result(
    run: dict[str, Any], output: dict[str, Any] | None, cost: dict[str, Any] | None = None
) -> Group:
    """Outputs of the final activities (or the error) after the run ended, and its
    cost against its budget when ``cost`` (the cost route's answer) is given."""
    parts: list[Any] = []
    if output is not None:
        for item in output.get("terminal_outputs", []):
            values = {o["name"]: o["value"] for o in item["output"]}
            parts.append(
                Panel(
                    Pretty(values, expand_all=False),
                    title=f"output of {item['activity_key']}",
                    title_align="left",
                )
            )
    if run.get("error_message"):
        parts.append(Text(f"✘ {run['error_message']}", style="bold red"))
    status = run["status"]
    spent = (
        Text.from_markup(f"  {cost_line(cost)}")
        if cost is not None
        else Text(f"  total cost ${run.get('total_cost_usd', '0')}")
    )
    parts.append(
        Text.assemble((f"{_ICON.get(status, '')} workflow {status}", _STYLE[status]), spent)
    )
    return Group(*parts)


async def follow_run(client: AsyncClient, workflow_id: str, console: Console) -> dict[str, Any]:
    """Show the run until it ends; returns its final state."""
    started = time.monotonic()
    run = await client.status(workflow_id)
    if console.is_terminal:
        with Live(
            render_run(run, 0.0), console=console, refresh_per_second=8, transient=False
        ) as live:
            async with trio.open_nursery() as nursery:

                async def tick() -> None:
                    while True:
                        await trio.sleep(0.25)
                        live.update(render_run(run, time.monotonic() - started))

                nursery.start_soon(tick)
                async with contextlib.aclosing(client.events(workflow_id)) as events:
                    async for _ in events:
                        run = await client.status(workflow_id)
                        live.update(render_run(run, time.monotonic() - started))
                nursery.cancel_scope.cancel()
            run = await client.status(workflow_id)
            live.update(render_run(run, time.monotonic() - started))
    else:
        async with contextlib.aclosing(client.events(workflow_id)) as events:
            async for event in events:
                key = f" {event['activity_key']}" if event.get("activity_key") else ""
                data = event.get("data") or {}
                extra = f" {data}" if data and event["type"] != "workflow.started" else ""
                console.print(f"{event['created_at']} {event['type']}{key}{extra}", highlight=False)
        run = await client.status(workflow_id)
    output = await client.output(workflow_id) if run["status"] == "completed" else None
    try:
        cost: dict[str, Any] | None = await client.cost(workflow_id)
    except ApiError:  # a server without the cost route: the run's total is shown instead
        cost = None
    console.print(render_result(run, output, cost))
    return run
