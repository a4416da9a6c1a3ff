"""The LLM examples run end to end: against the loopback providers always, and against
the real providers when their keys are in the environment."""

from __future__ import annotations

import decimal
import os
import pathlib
from typing import Any

import pytest

from kflow.client import AsyncClient, ClientConfig
from kflow.server.serve import RunningServer
from tests.llm_providers import FakeProviders

D = decimal.Decimal
EXAMPLES = pathlib.Path(__file__).resolve().parents[3] / "examples"


async def run_example(server: RunningServer, name: str, data: dict[str, Any]) -> dict[str, Any]:
    config = ClientConfig(
        api_url=server.url, client_id="tester", client_secret="tester-secret-value"
    )
    async with AsyncClient(config=config) as kf:
        await kf.deploy(EXAMPLES / f"{name}.yaml")
        started = await kf.start(name, data)
        done = await kf.wait(started["workflow_id"], timeout=60)
        done["cost"] = await kf.cost(started["workflow_id"])
        done["history"] = await kf.cost_history(started["workflow_id"])
    return done


def statuses(done: dict[str, Any]) -> dict[str, str]:
    return {a["activity_key"]: a["status"] for a in done["activities"]}


async def test_the_research_assistant_runs_its_chain_within_budget(
    server: RunningServer, fake: FakeProviders
) -> None:
    done = await run_example(server, "research_assistant", {"topic": "home batteries"})
    assert done["status"] == "completed", done
    total = D(done["cost"]["total_cost_usd"])
    assert 0 < total <= D("0.05")
    assert [(r["activity_key"], r["provider"]) for r in done["history"]] == [
        ("outline", "anthropic"),
        ("answer", "anthropic"),
        ("summary", "openai"),
    ]
    outline_prompt = fake.calls("anthropic")[0]["body"]["messages"][0]["content"]
    assert "home batteries" in outline_prompt
    # each step is fed the previous step's answer
    assert "Answer to:" in fake.calls("anthropic")[1]["body"]["messages"][0]["content"]


@pytest.mark.parametrize(
    ("message", "branch"),
    [
        ("The invoice is wrong and the account is locked, this is urgent", "review"),
        ("Just saying thanks for the quick delivery", "acknowledge"),
    ],
)
async def test_content_moderation_branches_on_the_classification(
    server: RunningServer, fake: FakeProviders, message: str, branch: str
) -> None:
    done = await run_example(server, "content_moderation", {"message": message})
    assert done["status"] == "completed", done
    other = {"review": "acknowledge", "acknowledge": "review"}[branch]
    assert statuses(done)[branch] == "completed"
    assert statuses(done)[other] == "skipped"
    assert D(done["cost"]["total_cost_usd"]) <= D("0.02")


REAL_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")


@pytest.mark.skipif(
    not all(os.environ.get(k) for k in REAL_KEYS) or bool(os.environ.get("KFLOW_NO_REAL_LLM")),
    reason="needs ANTHROPIC_API_KEY and OPENAI_API_KEY (real providers)",
)
async def test_the_research_assistant_against_the_real_providers(tmp_path: pathlib.Path) -> None:
    from tests.integration.llm.real_server import run_against_real_providers

    done = await run_against_real_providers(
        tmp_path, EXAMPLES / "research_assistant.yaml", {"topic": "home batteries"}
    )
    assert done["status"] == "completed", done
    assert 0 < D(done["cost"]["total_cost_usd"]) <= D("0.05")
