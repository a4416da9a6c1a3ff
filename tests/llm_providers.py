"""A loopback server that speaks the four LLM vendors' real wire formats.

One Starlette application answers Anthropic Messages (``/v1/messages``),
OpenAI Chat Completions and embeddings (``/v1/chat/completions``,
``/v1/embeddings``), Gemini (``/v1beta/models/{model}:generateContent``,
``:streamGenerateContent?alt=sse``, ``:batchEmbedContents``) and Ollama
(``/api/chat``, ``/api/embed``), whole and streamed, with the shapes of the
vendors' API references (request and response bodies, SSE event names,
NDJSON lines, usage fields, error envelopes). Tests script failures
(``fail(...)``) and read what was asked (``requests``). Every answer echoes
a reply built from the prompt, so tests can check content end to end.

Run it with :func:`serve_fake_providers` (a real socket on 127.0.0.1).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import hypercorn.config
import hypercorn.trio
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

#: Token counts every fake answer reports (the same numbers in each vendor's fields).
INPUT, CACHED, OUTPUT, REASONING = 120, 30, 40, 8


@attrs.define
class Failure:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = attrs.field(factory=dict)


@attrs.define
class FakeProviders:
    """State of the loopback server: what it was asked, what it must fail."""

    requests: list[dict[str, Any]] = attrs.field(factory=list)
    failures: dict[str, list[Failure]] = attrs.field(factory=dict)
    mid_stream_error: set[str] = attrs.field(factory=set)
    #: Seconds every answer takes (so parallel callers overlap).
    delay_seconds: float = 0.0
    url: str = ""

    def fail(self, vendor: str, status: int, *, times: int = 1, **headers: str) -> None:
        """The next ``times`` calls to ``vendor`` answer ``status`` in its error format."""
        body = ERROR_BODIES[vendor](status)
        self.failures.setdefault(vendor, []).extend(
            Failure(status, body, dict(headers)) for _ in range(times)
        )

    def calls(self, vendor: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["vendor"] == vendor]


def reply_to(prompt: str) -> str:
    return f"Answer to: {prompt}"


def _anthropic_error(status: int) -> dict[str, Any]:
    kind = {429: "rate_limit_error", 529: "overloaded_error", 401: "authentication_error"}
    return {"type": "error", "error": {"type": kind.get(status, "api_error"), "message": "no"}}


def _openai_error(status: int) -> dict[str, Any]:
    code = {429: "rate_limit_exceeded", 401: "invalid_api_key"}.get(status, "server_error")
    return {"error": {"message": f"fake {status}", "type": "error", "param": None, "code": code}}


def _gemini_error(status: int) -> dict[str, Any]:
    name = {429: "RESOURCE_EXHAUSTED", 400: "INVALID_ARGUMENT", 503: "UNAVAILABLE"}
    status_name = name.get(status, "INTERNAL")
    return {"error": {"code": status, "message": f"fake {status}", "status": status_name}}


def _ollama_error(status: int) -> dict[str, Any]:
    return {"error": f"fake {status}"}


ERROR_BODIES = {
    "anthropic": _anthropic_error,
    "openai": _openai_error,
    "google": _gemini_error,
    "ollama": _ollama_error,
}


def _sse(events: list[tuple[str | None, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for name, data in events:
            head = f"event: {name}\n" if name else ""
            text = data if isinstance(data, str) else json.dumps(data)
            yield f"{head}data: {text}\n\n".encode()

    return StreamingResponse(body(), media_type="text/event-stream")


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


async def _anthropic(state: FakeProviders, request: Request) -> Response:
    body = await request.json()
    prompt = body["messages"][-1]["content"]
    text = reply_to(prompt)
    usage = {
        "input_tokens": INPUT - CACHED,
        "cache_read_input_tokens": CACHED,
        "cache_creation_input_tokens": 0,
        "output_tokens": OUTPUT,
    }
    if not body.get("stream"):
        return JSONResponse(
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
        )
    events: list[tuple[str | None, Any]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": body["model"],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {**usage, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    for piece in _pieces(text):
        events.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
        )
    if "anthropic" in state.mid_stream_error:
        events.append(
            (
                "error",
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            )
        )
        return _sse(events)
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": OUTPUT},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return _sse(events)


def _openai_usage() -> dict[str, Any]:
    return {
        "prompt_tokens": INPUT,
        "completion_tokens": OUTPUT,
        "total_tokens": INPUT + OUTPUT,
        "prompt_tokens_details": {"cached_tokens": CACHED, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": REASONING, "audio_tokens": 0},
    }


async def _openai(state: FakeProviders, request: Request) -> Response:
    body = await request.json()
    text = reply_to(body["messages"][-1]["content"])
    base = {
        "id": "chatcmpl-fake",
        "created": 1_790_000_000,
        "model": body["model"],
        "system_fingerprint": "fp_fake",
    }
    if not body.get("stream"):
        return JSONResponse(
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": _openai_usage(),
            }
        )
    chunk = {**base, "object": "chat.completion.chunk"}
    events: list[tuple[str | None, Any]] = [
        (
            None,
            {
                **chunk,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            },
        )
    ]
    for piece in _pieces(text):
        events.append(
            (
                None,
                {
                    **chunk,
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                },
            )
        )
    events.append(
        (None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    )
    if body.get("stream_options", {}).get("include_usage"):
        events.append((None, {**chunk, "choices": [], "usage": _openai_usage()}))
    events.append((None, "[DONE]"))
    return _sse(events)


async def _openai_embeddings(state: FakeProviders, request: Request) -> Response:
    body = await request.json()
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    return JSONResponse(
        {
            "object": "list",
            "model": body["model"],
            "data": [
                {"object": "embedding", "index": i, "embedding": [float(len(t)), 0.5, -0.25]}
                for i, t in reversed(list(enumerate(inputs)))
            ],  # out of order on purpose
            "usage": {"prompt_tokens": 4 * len(inputs), "total_tokens": 4 * len(inputs)},
        }
    )


def _gemini_usage() -> dict[str, Any]:
    return {
        "promptTokenCount": INPUT,
        "cachedContentTokenCount": CACHED,
        "candidatesTokenCount": OUTPUT - REASONING,
        "thoughtsTokenCount": REASONING,
        "totalTokenCount": INPUT + OUTPUT,
    }


async def _gemini(state: FakeProviders, request: Request) -> Response:
    model, _, method = request.path_params["call"].partition(":")
    body = await request.json()
    if method == "batchEmbedContents":
        return JSONResponse(
            {
                "embeddings": [
                    {"values": [float(len(r["content"]["parts"][0]["text"])), 0.5]}
                    for r in body["requests"]
                ]
            }
        )
    text = reply_to(body["contents"][-1]["parts"][0]["text"])

    def response(piece: str, finish: str | None, usage: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {
            "content": {"role": "model", "parts": [{"text": piece}]},
            "index": 0,
        }
        if finish:
            candidate["finishReason"] = finish
        out: dict[str, Any] = {
            "candidates": [candidate],
            "modelVersion": model,
            "responseId": "fake",
        }
        if usage:
            out["usageMetadata"] = _gemini_usage()
        return out

    if method == "generateContent":
        return JSONResponse(response(text, "STOP", True))
    assert method == "streamGenerateContent", method
    assert request.query_params.get("alt") == "sse"
    pieces = _pieces(text)
    events: list[tuple[str | None, Any]] = [
        (None, response(p, "STOP" if i == len(pieces) - 1 else None, i == len(pieces) - 1))
        for i, p in enumerate(pieces)
    ]
    return _sse(events)


async def _ollama_chat(state: FakeProviders, request: Request) -> Response:
    body = await request.json()
    text = reply_to(body["messages"][-1]["content"])
    final = {
        "model": body["model"],
        "created_at": "2026-11-22T00:00:00Z",
        "done": True,
        "done_reason": "stop",
        "total_duration": 1000,
        "prompt_eval_count": INPUT,
        "eval_count": OUTPUT,
    }
    if not body.get("stream", True):
        return JSONResponse({**final, "message": {"role": "assistant", "content": text}})

    async def lines() -> AsyncIterator[bytes]:
        for piece in _pieces(text):
            yield (
                json.dumps(
                    {
                        "model": body["model"],
                        "created_at": "2026-11-22T00:00:00Z",
                        "message": {"role": "assistant", "content": piece},
                        "done": False,
                    }
                )
                + "\n"
            ).encode()
        yield (
            json.dumps({**final, "message": {"role": "assistant", "content": ""}}) + "\n"
        ).encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def _ollama_embed(state: FakeProviders, request: Request) -> Response:
    body = await request.json()
    return JSONResponse(
        {
            "model": body["model"],
            "embeddings": [[float(len(t)), 1.0] for t in body["input"]],
            "prompt_eval_count": 3 * len(body["input"]),
        }
    )


def _vendor_route(path: str, vendor: str, handler: Any, state: FakeProviders) -> Route:
    async def endpoint(request: Request) -> Response:
        raw = await request.body()
        state.requests.append(
            {
                "vendor": vendor,
                "path": request.url.path,
                "headers": dict(request.headers),
                "query": dict(request.query_params),
                "body": json.loads(raw) if raw else None,
            }
        )
        if state.delay_seconds:
            await trio.sleep(state.delay_seconds)
        queue = state.failures.get(vendor)
        if queue:
            failure = queue.pop(0)
            return JSONResponse(failure.body, status_code=failure.status, headers=failure.headers)
        return await handler(state, request)

    return Route(path, endpoint, methods=["POST"])


def fake_providers_app(state: FakeProviders) -> Starlette:
    return Starlette(
        routes=[
            _vendor_route("/v1/messages", "anthropic", _anthropic, state),
            _vendor_route("/v1/chat/completions", "openai", _openai, state),
            _vendor_route("/v1/embeddings", "openai", _openai_embeddings, state),
            _vendor_route("/v1beta/models/{call:path}", "google", _gemini, state),
            _vendor_route("/api/chat", "ollama", _ollama_chat, state),
            _vendor_route("/api/embed", "ollama", _ollama_embed, state),
        ]
    )


async def serve_fake_providers(nursery: trio.Nursery) -> FakeProviders:
    """Start the loopback server in ``nursery``; returns its state (``url`` set)."""
    state = FakeProviders()
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    binds = await nursery.start(partial(hypercorn.trio.serve, fake_providers_app(state), config))
    state.url = str(binds[0])
    return state


def environ_for(state: FakeProviders) -> dict[str, str]:
    """Worker environment pointing every provider at the loopback server."""
    return {
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": state.url,
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": f"{state.url}/v1",
        "GOOGLE_API_KEY": "g-test",
        "GOOGLE_BASE_URL": state.url,
        "OLLAMA_BASE_URL": state.url,
    }
