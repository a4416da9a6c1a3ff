"""Run budgets shared by parallel branches: claims hand out what is left, reservations
are granted only while they fit, a finished attempt's real cost replaces its reservation."""

from __future__ import annotations

import decimal
from typing import Any

import httpx

from tests.integration.conftest import Api, assert_error

D = decimal.Decimal

THREE_BRANCHES = """
name: three-branches
settings:
  budget: {limit: 0.05, action: abort}
activities:
  - {key: a, activity_name: echo}
  - {key: b, activity_name: echo}
  - {key: c, activity_name: echo}
"""

UNBUDGETED = """
name: unbudgeted
activities:
  - {key: a, activity_name: echo}
"""


async def reserve(
    api: Api,
    item: dict[str, Any],
    amount: Any,
    worker_id: str = "w1",
) -> httpx.Response:
    body: dict[str, Any] = {"worker_id": worker_id}
    if amount is not None:
        body["amount_usd"] = amount
    return await api.client.post(
        f"/api/v1/activities/{item['activity_id']}/budget/reserve", json=body
    )


async def granted(api: Api, item: dict[str, Any], amount: str) -> tuple[bool, D]:
    response = await reserve(api, item, amount)
    assert response.status_code == 200, response.text
    answer = response.json()
    return answer["granted"], D(answer["budget_remaining_usd"])


async def test_parallel_branches_cannot_jointly_overspend(api: Api) -> None:
    await api.deploy(THREE_BRANCHES)
    workflow_id = await api.start("three-branches")
    items = {i["activity_key"]: i for i in await api.poll(n=3)}
    assert {D(i["budget_remaining_usd"]) for i in items.values()} == {D("0.05")}
    assert await granted(api, items["a"], "0.02") == (True, D("0.03"))
    assert await granted(api, items["b"], "0.02") == (True, D("0.01"))
    assert await granted(api, items["c"], "0.02") == (False, D("0.01"))
    # a re-reservation replaces the attempt's previous one
    assert await granted(api, items["b"], "0.015") == (True, D("0.015"))
    # a finishes: its real cost counts instead of its reservation
    done = await api.client.post(
        f"/api/v1/activities/{items['a']['activity_id']}/complete",
        json={"worker_id": "w1", "output": {}, "cost_usd": "0.012"},
    )
    assert done.status_code == 200, done.text
    assert await granted(api, items["c"], "0.03") == (False, D("0.023"))
    assert await granted(api, items["c"], "0.023") == (True, D("0"))
    cost = (await api.client.get(f"/api/v1/workflows/{workflow_id}/cost")).json()
    assert D(cost["total_cost_usd"]) == D("0.012")


async def test_a_retried_attempt_starts_without_a_reservation(api: Api) -> None:
    await api.deploy(
        THREE_BRANCHES.replace(
            "{key: a, activity_name: echo}",
            "{key: a, activity_name: echo, "
            "settings: {retry: {max_attempts: 2, "
            "base_seconds: 0.01}}}",
        )
    )
    await api.start("three-branches")
    items = {i["activity_key"]: i for i in await api.poll(n=3)}
    assert (await granted(api, items["a"], "0.04"))[0]
    failed = await api.fail(items["a"], retryable=True)
    assert failed.status_code == 200, failed.text
    [again] = await api.poll(n=1, wait=5)
    assert again["activity_key"] == "a"
    assert D(again["budget_remaining_usd"]) == D("0.05")  # the failed attempt's hold is gone
    assert await granted(api, items["b"], "0.05") == (True, D("0"))


async def test_without_a_run_budget_everything_is_granted(api: Api) -> None:
    await api.deploy(UNBUDGETED)
    await api.start("unbudgeted")
    [item] = await api.poll()
    assert "budget_remaining_usd" not in item or item["budget_remaining_usd"] is None
    answer = (await reserve(api, item, "1000")).json()
    assert answer == {
        "granted": True,
        "reserved_usd": "0",
        "budget_limit_usd": None,
        "budget_remaining_usd": None,
    }


async def test_only_the_lease_holder_of_a_running_attempt_may_reserve(api: Api) -> None:
    await api.deploy(UNBUDGETED)
    await api.start("unbudgeted")
    [item] = await api.poll()
    assert_error(await reserve(api, item, "0.01", worker_id="w2"), 409)
    done = await api.complete(item)
    assert done.status_code == 200
    error = assert_error(await reserve(api, item, "0.01"), 409)
    assert "is completed" in error["message"]
    unknown = {"activity_id": "00000000-0000-7000-8000-000000000000"}
    assert_error(await reserve(api, unknown, "0.01"), 404)


async def test_bad_reservations_name_the_field(api: Api) -> None:
    await api.deploy(UNBUDGETED)
    await api.start("unbudgeted")
    [item] = await api.poll()
    assert_error(await reserve(api, item, None), 422, field="amount_usd")
    assert_error(await reserve(api, item, "-1"), 422, field="amount_usd")
    assert_error(await reserve(api, item, "lots"), 422, field="amount_usd")


BUDGETED_CHAIN = """
name: budgeted-chain
settings:
  budget: {limit: 0.05, action: abort}
activities:
  - {key: a, activity_name: echo}
  - {key: b, activity_name: echo, depends_on: [a]}
"""


async def test_the_next_step_a_report_claims_is_handed_what_is_left_after_that_report(
    api: Api,
) -> None:
    """The spend the report records in its transaction counts for the activity it
    claims in the same transaction (``claim_next``)."""
    await api.deploy(BUDGETED_CHAIN)
    await api.start("budgeted-chain")
    [a] = await api.poll()
    report = {"worker_id": "w1", "output": {}, "cost_usd": "0.02"}
    response = await api.client.post(
        "/api/v1/activities/reports",
        json={
            "reports": [
                {"activity_id": a["activity_id"], "kind": "complete", "report": report}
                | {"claim_next": True}
            ]
        },
    )
    [b] = response.json()["results"][0]["body"]["activities"]
    assert b["activity_key"] == "b"
    assert D(b["budget_remaining_usd"]) == D("0.03")
