"""The provider adapters against a loopback server speaking each vendor's wire format."""

from __future__ import annotations

import httpx
import pytest
import trio

from kflow_llm.pricing import Usage
from kflow_llm.providers import (
    ChatRequest,
    Cooldowns,
    ProviderError,
    provider_for,
    split_model,
    with_retries,
)
from tests.llm_providers import CACHED, INPUT, OUTPUT, REASONING, FakeProviders, environ_for

VENDORS = ["anthropic", "openai", "google", "ollama"]

#: The usage each vendor's fake answer maps to (the same numbers, in each vendor's fields).
EXPECTED = {
    "anthropic": Usage(input_tokens=INPUT - CACHED, cache_read_tokens=CACHED, output_tokens=OUTPUT),
    "openai": Usage(
        input_tokens=INPUT - CACHED,
        cache_read_tokens=CACHED,
        output_tokens=OUTPUT,
        reasoning_tokens=REASONING,
    ),
    "google": Usage(
        input_tokens=INPUT - CACHED,
        cache_read_tokens=CACHED,
        output_tokens=OUTPUT,
        reasoning_tokens=REASONING,
    ),
    "ollama": Usage(input_tokens=INPUT, output_tokens=OUTPUT),
}


REQUEST = ChatRequest(
    model="m-1",
    prompt="What is 2+2?",
    system_prompt="Be brief.",
    max_tokens=64,
    temperature=0.2,
    stop_sequences=("END",),
)


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_chat_returns_content_finish_reason_and_usage(
    fake: FakeProviders, http: httpx.AsyncClient, vendor: str, stream: bool
) -> None:
    provider = provider_for(vendor, http, environ_for(fake))
    pieces: list[str] = []

    async def on_text(text: str) -> None:
        pieces.append(text)

    result = await provider.chat(REQUEST, stream=stream, on_text=on_text)
    assert result.content == "Answer to: What is 2+2?"
    assert result.provider == vendor
    assert result.model == "m-1"
    assert result.usage == EXPECTED[vendor]
    assert result.finish_reason in ("end_turn", "stop", "STOP")
    if stream:
        assert len(pieces) > 1
        assert "".join(pieces) == result.content
    else:
        assert pieces == []


@pytest.mark.parametrize("vendor", VENDORS)
async def test_the_request_carries_the_vendor_fields(
    fake: FakeProviders, http: httpx.AsyncClient, vendor: str
) -> None:
    await provider_for(vendor, http, environ_for(fake)).chat(REQUEST)
    [call] = fake.calls(vendor)
    body, headers = call["body"], call["headers"]
    if vendor == "anthropic":
        assert headers["x-api-key"] == "sk-ant-test"
        assert headers["anthropic-version"] == "2023-06-01"
        assert body["system"] == "Be brief."
        assert (body["max_tokens"], body["stop_sequences"]) == (64, ["END"])
    elif vendor == "openai":
        assert headers["authorization"] == "Bearer sk-test"
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert (body["max_completion_tokens"], body["stop"]) == (64, ["END"])
    elif vendor == "google":
        assert headers["x-goog-api-key"] == "g-test"
        assert call["path"] == "/v1beta/models/m-1:generateContent"
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert body["generationConfig"]["maxOutputTokens"] == 64
        assert body["generationConfig"]["stopSequences"] == ["END"]
    else:
        assert body["stream"] is False
        assert body["options"]["num_predict"] == 64
        assert body["options"]["stop"] == ["END"]
    assert (
        body.get(
            "temperature",
            body.get("options", {}).get(
                "temperature", body.get("generationConfig", {}).get("temperature")
            ),
        )
        == 0.2
    )


@pytest.mark.parametrize("vendor", ["openai", "google", "ollama"])
async def test_embeddings_come_back_in_input_order(
    fake: FakeProviders, http: httpx.AsyncClient, vendor: str
) -> None:
    provider = provider_for(vendor, http, environ_for(fake))
    result = await provider.embed("e-1", ["a", "bbb"])  # type: ignore[attr-defined]
    assert [vector[0] for vector in result.embeddings] == [1.0, 3.0]
    assert result.provider == vendor


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize(
    ("status", "retryable"), [(429, True), (500, True), (503, True), (400, False), (401, False)]
)
async def test_error_answers_are_classified(
    fake: FakeProviders, http: httpx.AsyncClient, vendor: str, status: int, retryable: bool
) -> None:
    fake.fail(vendor, status)
    with pytest.raises(ProviderError) as caught:
        await provider_for(vendor, http, environ_for(fake)).chat(REQUEST)
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert caught.value.provider == vendor
    assert str(status) in str(caught.value)


async def test_anthropic_overloaded_529_is_retryable(
    fake: FakeProviders, http: httpx.AsyncClient
) -> None:
    fake.fail("anthropic", 529)
    with pytest.raises(ProviderError) as caught:
        await provider_for("anthropic", http, environ_for(fake)).chat(REQUEST, stream=True)
    assert (caught.value.status, caught.value.retryable) == (529, True)


async def test_an_error_event_inside_an_anthropic_stream_fails_the_call(
    fake: FakeProviders, http: httpx.AsyncClient
) -> None:
    fake.mid_stream_error.add("anthropic")
    with pytest.raises(ProviderError, match="Overloaded") as caught:
        await provider_for("anthropic", http, environ_for(fake)).chat(REQUEST, stream=True)
    assert caught.value.retryable


@pytest.mark.parametrize("vendor", VENDORS)
async def test_rate_limits_are_retried_after_the_time_the_provider_asks(
    fake: FakeProviders, http: httpx.AsyncClient, vendor: str
) -> None:
    fake.fail(vendor, 429, times=2, **{"retry-after": "0.2"})
    provider = provider_for(vendor, http, environ_for(fake))
    started = trio.current_time()
    result = await with_retries(lambda: provider.chat(REQUEST, stream=True), base=5.0)
    assert result.content == "Answer to: What is 2+2?"
    assert len(fake.calls(vendor)) == 3
    waited = trio.current_time() - started
    assert 0.4 <= waited < 5.0  # two Retry-After pauses, not the 5 s backoff


async def test_retries_stop_after_the_attempts_and_keep_the_last_error(
    fake: FakeProviders, http: httpx.AsyncClient
) -> None:
    fake.fail("openai", 503, times=5)
    provider = provider_for("openai", http, environ_for(fake))
    with pytest.raises(ProviderError) as caught:
        await with_retries(lambda: provider.chat(REQUEST), attempts=3, base=0.01)
    assert caught.value.status == 503
    assert len(fake.calls("openai")) == 3


async def test_a_client_error_is_not_retried(fake: FakeProviders, http: httpx.AsyncClient) -> None:
    fake.fail("google", 400, times=3)
    provider = provider_for("google", http, environ_for(fake))
    with pytest.raises(ProviderError):
        await with_retries(lambda: provider.chat(REQUEST), base=0.01)
    assert len(fake.calls("google")) == 1


async def test_an_unreachable_provider_is_a_retryable_error(http: httpx.AsyncClient) -> None:
    import socket

    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        env = {"OLLAMA_BASE_URL": f"http://127.0.0.1:{sock.getsockname()[1]}"}
        with pytest.raises(ProviderError, match="unreachable") as caught:
            await provider_for("ollama", http, env).chat(REQUEST)
    assert caught.value.retryable


def test_a_missing_api_key_names_the_variable() -> None:
    with pytest.raises(ProviderError, match="ANTHROPIC_API_KEY is not set"):
        provider_for("anthropic", httpx.AsyncClient(), {})


def test_an_openai_compatible_server_needs_no_key() -> None:
    provider = provider_for(
        "openai", httpx.AsyncClient(), {"OPENAI_BASE_URL": "http://vllm:8000/v1"}
    )
    assert provider.base_url == "http://vllm:8000/v1"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("claude", "expected 'provider/model'"),
        ("mistral/large", "unknown provider 'mistral'"),
        ("openai/", "expected 'provider/model'"),
    ],
)
def test_model_ids_are_provider_slash_model(model: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_model(model)
    assert split_model("google/gemini-3.8-flash") == ("google", "gemini-3.8-flash")


async def test_a_provider_that_keeps_failing_is_set_aside_for_a_while(
    autojump_clock: object,
) -> None:
    cooldowns = Cooldowns(threshold=2, seconds=30)
    cooldowns.failed("openai")
    assert cooldowns.available("openai")
    cooldowns.failed("openai")
    assert not cooldowns.available("openai")
    assert cooldowns.available("anthropic")
    await trio.sleep(30)
    assert cooldowns.available("openai")
    cooldowns.failed("openai")
    cooldowns.succeeded("openai")
    cooldowns.failed("openai")
    assert cooldowns.available("openai")  # a success reset the count
