"""The proof of issue 5's budgets: three parallel LLM branches under one run budget,
through a real server, its built-in std worker and the loopback providers."""

from __future__ import annotations

import decimal
from collections.abc import Callable
from typing import Any

import pytest

from kflow.client import AsyncClient, ClientConfig
from kflow.server.serve import RunningServer
from tests.llm_providers import FakeProviders

D = decimal.Decimal


@pytest.fixture
def llm_prices() -> str:
    """Input is free, so an estimate is max_tokens x the output price: with
    max_tokens 1000, model-a reserves 0.02 and model-b 0.01."""
    return PRICES


PRICES = """
models:
  - {model: openai/model-a, input: "0", output: "20"}
  - {model: openai/model-b, input: "0", output: "10"}
"""


def three_branches(limit: str) -> str:
    branches = "\n".join(
        f"""  - key: {key}
    activity_name: llm_prompt
    parameters:
      model: [openai/model-a, openai/model-b]
      prompt: "Write the {key} section."
      max_tokens: 1000"""
        for key in ("intro", "body", "outro")
    )
    return f"""
name: report-{limit.replace(".", "-")}
settings:
  budget: {{limit: {limit}, action: abort}}
activities:
{branches}
"""


async def run(
    server: RunningServer, fake: FakeProviders, limit: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    # Every branch reserves long before any answer comes back (when its real cost
    # replaces its reservation), even on a loaded machine: the outcome is deterministic.
    fake.delay_seconds = 2.0
    config = ClientConfig(
        api_url=server.url, client_id="tester", client_secret="tester-secret-value"
    )
    async with AsyncClient(config=config) as kf:
        await kf.deploy(three_branches(limit))
        started = await kf.start(f"report-{limit.replace('.', '-')}", {})
        done = await kf.wait(started["workflow_id"], timeout=30)
        history = await kf.cost_history(started["workflow_id"])
        cost = await kf.cost(started["workflow_id"])
    return {**done, "cost": cost}, history


def outputs(done: dict[str, Any]) -> dict[str, Any]:
    found = {}
    for act in done["activities"]:
        values = {o["name"]: o["value"] for o in act.get("outputs") or []}
        found[act["activity_key"]] = values.get("result")
    return found


def show(figures: Callable[[str], None], limit: str, history: list[dict[str, Any]]) -> None:
    """The cost history, one line per row, in the "kflow figures" summary."""
    for row in history:
        figures(
            f"[budget {limit}] {row['activity_key']}: {row['provider']}/{row['model']} "
            f"${row['cost_usd']} prompt {row['prompt_tokens']} output {row['output_tokens']} "
            f"budget_event={row['budget_event']} exceeded={row['budget_exceeded']}"
        )


async def test_a_branch_that_cannot_fit_downgrades_and_spend_stays_under_the_limit(
    server: RunningServer, fake: FakeProviders, figures: Callable[[str], None]
) -> None:
    done, history = await run(server, fake, "0.05")
    show(figures, "0.05", history)
    assert done["status"] == "completed", done
    results = outputs(done)
    models = sorted(r["model"] for r in results.values())
    assert models == ["model-a", "model-a", "model-b"]  # 0.02 + 0.02 + 0.01 reserved
    [downgraded] = [r for r in results.values() if r["model"] == "model-b"]
    assert downgraded["budget_event"] == "downgrade"
    [why] = downgraded["budget_skipped_models"]
    assert (why["model"], why["reason"], why["remaining_usd"]) == (
        "openai/model-a",
        "over budget",
        "0.01",
    )
    total = D(done["cost"]["total_cost_usd"])
    assert 0 < total <= D("0.05")
    assert sum(D(r["cost_usd"]) for r in history) == total
    assert sorted((r["model"], r["budget_event"]) for r in history) == [
        ("model-a", None),
        ("model-a", None),
        ("model-b", "downgrade"),
    ]
    assert len(fake.calls("openai")) == 3


async def test_a_branch_that_fits_nowhere_fails_before_spending(
    server: RunningServer, fake: FakeProviders, figures: Callable[[str], None]
) -> None:
    done, history = await run(server, fake, "0.045")
    show(figures, "0.045", history)
    assert done["status"] == "failed", done
    by_status = sorted(a["status"] for a in done["activities"])
    assert by_status == ["completed", "completed", "failed"]
    [failed] = [a for a in done["activities"] if a["status"] == "failed"]
    assert failed["error"]["code"] == "BUDGET_EXCEEDED"
    assert "remaining budget $0.005" in failed["error"]["message"]
    assert D(done["cost"]["total_cost_usd"]) <= D("0.045")
    assert len(fake.calls("openai")) == 2  # the third branch never called anyone
    assert len(history) == 3  # two calls, and the failed attempt at no cost
