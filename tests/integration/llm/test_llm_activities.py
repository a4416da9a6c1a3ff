"""llm_prompt and embedding against the loopback providers: pricing, budgets, fallbacks."""

from __future__ import annotations

import decimal
import uuid
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from kflow.activities import load_plugins, std_registry
from kflow.errors import ActivityError
from kflow.worker import ActivityContext
from kflow_llm.activities import EmbeddingActivity, LlmPromptActivity, estimate_prompt_tokens
from kflow_llm.pricing import PriceCatalog, load_catalog, merge, parse_catalog
from kflow_llm.providers import Cooldowns
from tests.llm_providers import FakeProviders, environ_for

D = decimal.Decimal

#: Test prices (USD per million tokens) over the shipped catalog.
PRICES = """
models:
  - {model: anthropic/big, input: "10", output: "50", cache_read: "1"}
  - {model: openai/medium, input: "1", output: "5", cache_read: "0.1"}
  - {model: ollama/small, input: "0", output: "0"}
"""


@pytest.fixture
def catalog() -> PriceCatalog:
    shipped = load_catalog(environ={})
    return PriceCatalog(entries=tuple(merge(shipped.entries, parse_catalog(PRICES, "test"))))


def make(cls: Any, fake: FakeProviders, http: httpx.AsyncClient, catalog: PriceCatalog) -> Any:
    return cls(
        http=http,
        catalog=catalog,
        environ=environ_for(fake),
        retry_base_seconds=0.01,
        cooldowns=Cooldowns(threshold=1, seconds=60),
    )


def context(budget: dict[str, Any] | None = None, remaining: str | None = None) -> ActivityContext:
    return ActivityContext(
        workflow_id=uuid.uuid4(),
        activity_id=uuid.uuid4(),
        activity_key="ask",
        settings={"budget": budget} if budget else {},
        budget_remaining_usd=D(remaining) if remaining else None,
    )


PROMPT = "Summarise the quarterly report in one line."


async def test_a_prompt_is_answered_priced_and_recorded(
    fake: FakeProviders, http: httpx.AsyncClient, catalog: PriceCatalog
) -> None:
    ctx = context()
    result = await make(LlmPromptActivity, fake, http, catalog).execute(
        {"model": "anthropic/claude-sonnet-5", "prompt": PROMPT, "max_tokens": 100}, ctx
    )
    out = result.to_output_dict()["result"]
    assert out["content"] == f"Answer to: {PROMPT}"
    assert (out["provider"], out["model"], out["finish_reason"]) == (
        "anthropic",
        "claude-sonnet-5",
        "end_turn",
    )
    # 90 uncached input at 2.00, 30 cache reads at 0.20, 40 output at 10.00 per million
    assert D(out["cost_usd"]) == D("0.000586")
    assert out["usage"] == {
        "prompt_tokens": 120,
        "output_tokens": 40,
        "total_tokens": 160,
        "cached_tokens": 30,
        "reasoning_tokens": 0,
    }
    assert (out["budget_event"], out["budget_skipped_models"], out["cache_hit"]) == (
        None,
        [],
        False,
    )
    [entry] = ctx.recorded_usage
    assert (entry.provider, entry.model, entry.cost_usd) == (
        "anthropic",
        "claude-sonnet-5",
        D("0.000586"),
    )
    assert entry.cache_read_tokens == 30


@pytest.mark.parametrize("model", ["openai/medium", "google/gemini-3.8-flash", "ollama/small"])
async def test_streaming_gives_the_same_answer_and_usage(
    fake: FakeProviders, http: httpx.AsyncClient, catalog: PriceCatalog, model: str
) -> None:
    activity = make(LlmPromptActivity, fake, http, catalog)
    whole = await activity.execute({"model": model, "prompt": PROMPT}, context())
    streamed = await activity.execute({"model": model, "prompt": PROMPT, "stream": True}, context())
    a, b = whole.to_output_dict()["result"], streamed.to_output_dict()["result"]
    assert a["content"] == b["content"] == f"Answer to: {PROMPT}"
    assert a["usage"] == b["usage"]
    assert a["cost_usd"] == b["cost_usd"]


def estimate(model_in: str, model_out: str, max_tokens: int) -> D:
    tokens = estimate_prompt_tokens(PROMPT)
    return (tokens * D(model_in) + max_tokens * D(model_out)) / 1_000_000


async def test_a_fallback_chain_under_a_tight_budget_picks_the_model_that_fits(
    fake: FakeProviders, http: httpx.AsyncClient, catalog: PriceCatalog
) -> None:
    big, medium = estimate("10", "50", 1000), estimate("1", "5", 1000)
    assert medium < D("0.01") < big
    ctx = context(budget={"limit": "0.01", "action": "abort"})
    result = await make(LlmPromptActivity, fake, http, catalog).execute(
        {
            "model": ["anthropic/big", "openai/medium", "ollama/small"],
            "prompt": PROMPT,
            "max_tokens": 1000,
        },
        ctx,
    )
    out = result.to_output_dict()["result"]
    assert out["provider"] == "openai"
    assert out["budget_event"] == "downgrade"
    [skipped] = out["budget_skipped_models"]
    assert skipped == {
        "model": "anthropic/big",
        "reason": "over budget",
        "estimate_usd": f"{big:f}",
        "remaining_usd": "0.01",
    }
    assert [c["vendor"] for c in fake.requests] == ["openai"]  # the big model was never called


async def test_the_servers_remaining_budget_counts_when_it_is_smaller(
    fake: FakeProviders, http: httpx.AsyncClient, catalog: PriceCatalog
) -> None:
    ctx = context(budget={"limit": "5", "action": "abort"}, remaining="0.01")
    result = await make(LlmPromptActivity, fake, http, catalog).execute(
        {"model": ["anthropic/big", "openai/medium"], "prompt": PROMPT, "max_tokens": 1000}, ctx
    )
    assert result.to_output_dict()["result"]["provider"] == "openai"


async def test_nothing_fits_so_abort_fails_before_spending(
    fake: FakeProviders, http: httpx.AsyncClient, catalog: PriceCatalog
) -> None:
    ctx = context(budget={"limit": "0.000001", "action": "abort"})
    with pytest.raises(ActivityError) as caught:
        await make(LlmPromptActivity, fake, http, catalog).execute(
            {"model": ["anthropic/big", "openai/medium"], "prompt": PROMPT}, ctx
        )
    assert (caught.value.code, caught.value.retryable) == ("BUDGET_EXCEEDED", False)
    assert "anthropic/big (estimate $" in caught.value.message
    assert fake.requests == []
    assert ctx.recorded_usage == []


async def test_nothing_fits_so_continue_calls_the_cheapest_and_says_so(
    fake: FakeProviders, http: httpx.AsyncClient, catalog: PriceCatalog
) -> None:
    ctx = context(budget={"limit": "0.000001", "action": "continue"})
    result = await make(LlmPromptActivity, fake, http, catalog).execute(
        {"model": ["anthropic/big", "openai/medium"], "prompt": PROMPT}, ctx
    )
    out = result.to_output_dict()["result"]
    assert (out["provider"], out["budget_event"]) == ("openai", "budget_exceeded")


async def test_a_failing_provider_falls_back_and_cools_down(
    fake: FakeProviders, http: httpx.AsyncClient, catalog: PriceCatalog
) -> None:
    fake.fail("anthropic", 503, times=10)
    activity = make(LlmPromptActivity, fake, http, catalog)
    chain = {"model": ["anthropic/big", "openai/medium"], "prompt": PROMPT}
    with capture_logs() as logs:
        first = (await activity.execute(chain, context())).to_output_dict()["result"]
    assert first["provider"] == "openai"
    assert first["budget_event"] == "downgrade"
    assert first["budget_skipped_models"][0]["reason"].startswith("failed: HTTP 503")
    assert len(fake.calls("anthropic")) == 3  # its retries, then the chain moved on
    assert any(e["event"] == "llm.call_failed" for e in logs)
    second = (await activity.execute(chain, context())).to_output_dict()["result"]
    assert second["budget_skipped_models"] == [
        {"model": "anthropic/big", "reason": "provider cooling down"}
    ]
    assert len(fake.calls("anthropic")) == 3  # not asked again while cooling down


async def test_when_every_model_fails_the_attempt_fails_retryably(
    fake: FakeProviders, http: httpx.AsyncClient, catalog: PriceCatalog
) -> None:
    fake.fail("openai", 500, times=10)
    with pytest.raises(ActivityError) as caught:
        await make(LlmPromptActivity, fake, http, catalog).execute(
            {"model": "openai/medium", "prompt": PROMPT}, context()
        )
    assert (caught.value.code, caught.value.retryable) == ("LLM_PROVIDER_ERROR", True)


async def test_a_model_without_a_price_costs_zero_with_a_warning(
    fake: FakeProviders, http: httpx.AsyncClient, catalog: PriceCatalog
) -> None:
    ctx = context()
    with capture_logs() as logs:
        result = await make(LlmPromptActivity, fake, http, catalog).execute(
            {"model": "openai/brand-new-model", "prompt": PROMPT}, ctx
        )
    out = result.to_output_dict()["result"]
    assert (out["cost_usd"], out["priced"]) == ("0", False)
    assert any(e["event"] == "llm.price_unknown" for e in logs)
    assert ctx.recorded_usage[0].input_tokens == 90


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "claude", "prompt": "x"}, "model"),
        ({"model": ["openai/a", 3], "prompt": "x"}, "model[1]"),
        ({"model": ["openai/a"] * 9, "prompt": "x"}, "model"),
        ({"model": "openai/a"}, "prompt"),
        ({"model": "openai/a", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "openai/a", "prompt": "x", "temperature": 3}, "temperature"),
        ({"model": "openai/a", "prompt": "x", "top_p": "high"}, "top_p"),
        ({"model": "openai/a", "prompt": "x", "stop_sequences": "END"}, "stop_sequences"),
        ({"model": "openai/a", "prompt": "x", "stream": "yes"}, "stream"),
        ({"model": "openai/a", "prompt": "x", "system_prompt": 1}, "system_prompt"),
    ],
)
async def test_bad_parameters_name_the_field(
    fake: FakeProviders,
    http: httpx.AsyncClient,
    catalog: PriceCatalog,
    params: dict[str, Any],
    field: str,
) -> None:
    with pytest.raises(ActivityError) as caught:
        await make(LlmPromptActivity, fake, http, catalog).execute(params, context())
    assert caught.value.code == "INVALID_PARAMETERS"
    assert caught.value.message.startswith(f"{field}: ")
    assert fake.requests == []


async def test_embeddings_are_returned_and_priced(
    fake: FakeProviders, http: httpx.AsyncClient, catalog: PriceCatalog
) -> None:
    ctx = context()
    result = await make(EmbeddingActivity, fake, http, catalog).execute(
        {"model": "openai/text-embedding-3-small", "input": ["a", "bbb"]}, ctx
    )
    out = result.to_output_dict()["result"]
    assert out["embedding_count"] == 2
    assert [v[0] for v in out["embeddings"]] == [1.0, 3.0]
    assert D(out["cost_usd"]) == D("8") * D("0.02") / 1_000_000
    assert ctx.recorded_usage[0].input_tokens == 8


async def test_an_embedding_from_a_provider_without_one_is_a_clear_error(
    fake: FakeProviders, http: httpx.AsyncClient, catalog: PriceCatalog
) -> None:
    with pytest.raises(ActivityError, match="has no embedding API") as caught:
        await make(EmbeddingActivity, fake, http, catalog).execute(
            {"model": "anthropic/claude-sonnet-5", "input": "x"}, context()
        )
    assert caught.value.code == "LLM_PROVIDER_ERROR"


def test_the_std_worker_gets_both_activities_through_the_entry_point() -> None:
    registry = std_registry()
    assert "llm" in load_plugins(registry, "std")
    assert {"std.llm_prompt", "std.embedding"} <= set(registry.activity_types())
    other = std_registry()
    load_plugins(other, "py-std")
    assert "std.llm_prompt" not in other.activity_types()
