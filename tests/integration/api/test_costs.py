"""What runs cost through the API (PROTOCOL §7): a run's cost, its history, analytics."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from tests.integration.conftest import Api, assert_error

D = decimal.Decimal

BUDGETED = """
name: budgeted
settings:
  budget: {limit: 0.05, action: continue}
activities:
  - key: draft
    activity_name: echo
    settings:
      budget: {limit: 0.01, action: abort}
  - key: review
    activity_name: echo
    depends_on: [draft]
"""

PLAIN = """
name: plain
activities:
  - key: only
    activity_name: echo
"""


def usage(provider: str, model: str, cost: str, **tokens: int) -> dict[str, Any]:
    return {"provider": provider, "model": model, "cost_usd": cost, **tokens}


async def complete(api: Api, item: dict[str, Any], **body: Any) -> None:
    response = await api.client.post(
        f"/api/v1/activities/{item['activity_id']}/complete",
        json={"worker_id": "w1", "output": {}, **body},
    )
    assert response.status_code == 200, response.text


async def run_budgeted(api: Api) -> str:
    """draft: one call (0.004); review: two calls and an unattributed 0.05."""
    await api.deploy(BUDGETED)
    workflow_id = await api.start("budgeted")
    [draft] = await api.poll()
    await complete(
        api,
        draft,
        usage=[
            usage(
                "anthropic",
                "claude-sonnet-5",
                "0.004",
                input_tokens=1000,
                output_tokens=200,
                cache_read_tokens=500,
            )
        ],
    )
    [review] = await api.poll()
    await complete(
        api,
        review,
        cost_usd="0.05",
        usage=[
            usage(
                "openai",
                "gpt-6-luna",
                "0.0002",
                input_tokens=100,
                output_tokens=300,
                reasoning_tokens=120,
            ),
            usage(
                "anthropic",
                "claude-haiku-5-5",
                "0.0003",
                input_tokens=10,
                cache_creation_tokens=20,
                output_tokens=5,
            ),
        ],
    )
    await api.wait_status(workflow_id, "completed")
    return workflow_id


async def test_a_run_reports_its_cost_and_remaining_budget(api: Api) -> None:
    workflow_id = await run_budgeted(api)
    cost = (await api.client.get(f"/api/v1/workflows/{workflow_id}/cost")).json()
    assert cost["workflow_id"] == workflow_id
    assert cost["workflow_name"] == "budgeted"
    assert D(cost["total_cost_usd"]) == D("0.0545")
    assert D(cost["budget_limit_usd"]) == D("0.05")
    assert D(cost["budget_remaining_usd"]) == D("-0.0045")  # overspent (action: continue)
    assert cost["total_activities"] == 2


async def test_a_run_without_a_budget_has_no_limit(api: Api) -> None:
    await api.deploy(PLAIN)
    workflow_id = await api.start("plain")
    [item] = await api.poll()
    await complete(api, item)
    cost = (await api.client.get(f"/api/v1/workflows/{workflow_id}/cost")).json()
    assert D(cost["total_cost_usd"]) == 0
    assert cost["budget_limit_usd"] is None
    assert cost["budget_remaining_usd"] is None
    history = (await api.client.get(f"/api/v1/workflows/{workflow_id}/cost/history")).json()
    assert len(history) == 1
    assert D(history[0]["cost_usd"]) == 0
    assert history[0]["provider"] is None


async def test_the_cost_history_has_a_row_per_call_adding_up_to_each_attempt(api: Api) -> None:
    workflow_id = await run_budgeted(api)
    history = (await api.client.get(f"/api/v1/workflows/{workflow_id}/cost/history")).json()
    assert [(r["activity_key"], r["provider"], r["model"]) for r in history] == [
        ("draft", "anthropic", "claude-sonnet-5"),
        ("review", "openai", "gpt-6-luna"),
        ("review", "anthropic", "claude-haiku-5-5"),
        ("review", None, None),  # the worker's own cost_usd, not tied to a call
    ]
    draft = history[0]
    assert (draft["prompt_tokens"], draft["output_tokens"]) == (1500, 200)
    assert (draft["total_tokens"], draft["cached_tokens"]) == (1700, 500)
    assert D(draft["budget_limit_usd"]) == D("0.01")  # the activity's own budget
    assert draft["budget_exceeded"] is False
    assert history[2]["prompt_tokens"] == 30
    assert D(history[1]["budget_limit_usd"]) == D("0.05")  # the run's budget
    assert [r["budget_exceeded"] for r in history] == [False, False, False, True]
    assert sum(D(r["cost_usd"]) for r in history) == D("0.0545")
    assert all(r["attempt"] == 1 and r["budget_event"] is None for r in history)
    assert all(r["created_at"].endswith("Z") for r in history)


async def test_analytics_group_spend_by_provider_model_definition_and_day(api: Api) -> None:
    await run_budgeted(api)
    today = dt.datetime.now(dt.UTC).date()
    window = {
        "start_date": today.isoformat(),
        "end_date": (today + dt.timedelta(days=1)).isoformat(),
    }

    async def groups(by: str) -> dict[str, Any]:
        response = await api.client.get("/api/v1/cost/analytics", params={**window, "group_by": by})
        assert response.status_code == 200, response.text
        body = response.json()
        assert D(body["total_cost_usd"]) == D("0.0545")
        assert body["attempts"] == 2
        return {g["key"]: g for g in body["groups"]}

    by_provider = await groups("provider")
    assert list(by_provider) == ["unattributed", "anthropic", "openai"]  # costliest first
    assert D(by_provider["anthropic"]["total_cost_usd"]) == D("0.0043")
    assert by_provider["anthropic"]["attempts"] == 2
    assert by_provider["anthropic"]["prompt_tokens"] == 1530
    by_model = await groups("model")
    assert set(by_model) == {
        "unattributed",
        "anthropic/claude-sonnet-5",
        "anthropic/claude-haiku-5-5",
        "openai/gpt-6-luna",
    }
    assert list(await groups("definition")) == ["budgeted"]
    assert list(await groups("day")) == [today.isoformat()]


async def test_analytics_outside_the_period_are_empty(api: Api) -> None:
    await run_budgeted(api)
    response = await api.client.get(
        "/api/v1/cost/analytics", params={"start_date": "2020-01-01", "end_date": "2020-02-01"}
    )
    body = response.json()
    assert body["groups"] == []
    assert D(body["total_cost_usd"]) == 0


async def test_bad_analytics_parameters_name_the_field(api: Api) -> None:
    cases = [
        ({"group_by": "colour"}, "group_by"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"start_date": "2026-02-01", "end_date": "2026-01-01"}, "end_date"),
        ({"start_date": "2020-01-01", "end_date": "2026-01-01"}, "start_date"),
    ]
    for params, field in cases:
        response = await api.client.get("/api/v1/cost/analytics", params=params)
        assert_error(response, 422, field=field)


async def test_the_cost_of_an_unknown_run_is_404(api: Api) -> None:
    for suffix in ("cost", "cost/history"):
        response = await api.client.get(
            f"/api/v1/workflows/00000000-0000-7000-8000-000000000000/{suffix}"
        )
        assert_error(response, 404)


COST_AWARE = """
name: cost-aware
settings:
  budget: {limit: 0.10, action: abort}
activities:
  - key: first
    activity_name: echo
  - key: second
    activity_name: echo
    depends_on: [first]
    parameters:
      spent: "{{ ACTIVITY.accumulated_cost_usd }}"
      left: "{{ ACTIVITY.remaining_budget_usd }}"
      cheap_mode: "{{ ACTIVITY.remaining_budget_usd < 0.08 }}"
"""


async def test_later_steps_see_what_was_spent_and_what_is_left(api: Api) -> None:
    await api.deploy(COST_AWARE)
    await api.start("cost-aware")
    [first] = await api.poll()
    await complete(api, first, usage=[usage("openai", "gpt-6-luna", "0.025", input_tokens=10)])
    [second] = await api.poll(wait=5)
    params = second["parameters"]
    assert D(params["spent"]) == D("0.025")
    assert D(params["left"]) == D("0.075")
    assert params["cheap_mode"] is True
