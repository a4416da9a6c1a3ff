"""Anthropic's Messages API (``POST /v1/messages``), whole or streamed.

Usage: ``input_tokens`` (uncached), ``cache_read_input_tokens``,
``cache_creation_input_tokens``, ``output_tokens``. A stream is Server-Sent
Events: ``message_start`` carries the input usage, ``content_block_delta``
the text, ``message_delta`` the stop reason and the output tokens so far,
``error`` a failure inside a 200 stream.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import httpx_sse

from kflow_llm.pricing import Usage
from kflow_llm.providers.base import (
    ChatRequest,
    ChatResult,
    OnText,
    ProviderError,
    TextStream,
    bad_answer,
    count,
    open_stream,
    post_json,
)

API_VERSION = "2023-06-01"
DEFAULT_BASE_URL = "https://api.anthropic.com"


def usage_of(data: Any) -> Usage:
    return Usage(
        input_tokens=count(data, "input_tokens"),
        output_tokens=count(data, "output_tokens"),
        cache_read_tokens=count(data, "cache_read_input_tokens"),
        cache_creation_tokens=count(data, "cache_creation_input_tokens"),
    )


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, http: httpx.AsyncClient, *, api_key: str, base_url: str | None = None):
        self.http = http
        self.api_key = api_key
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [{"role": "user", "content": request.prompt}],
        }
        if request.system_prompt:
            body["system"] = request.system_prompt
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop_sequences:
            body["stop_sequences"] = list(request.stop_sequences)
        if stream:
            body["stream"] = True
        return body

    def _headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key, "anthropic-version": API_VERSION}

    async def chat(
        self, request: ChatRequest, *, stream: bool = False, on_text: OnText | None = None
    ) -> ChatResult:
        """Raises:
        ProviderError: an error answer, a network failure or an answer of the wrong shape.
        """
        url = f"{self.base_url}/v1/messages"
        body = self._body(request, stream)
        if stream:
            return await self._stream(url, body, request, on_text)
        data = await post_json(self.http, self.name, url, json=body, headers=self._headers())
        try:
            blocks = data["content"]
            text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
            return ChatResult(
                provider=self.name,
                model=str(data.get("model") or request.model),
                content=text,
                finish_reason=str(data.get("stop_reason") or "unknown"),
                usage=usage_of(data.get("usage")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise bad_answer(self.name, f"no message content ({exc})") from exc

    async def _stream(
        self, url: str, body: dict[str, Any], request: ChatRequest, on_text: OnText | None
    ) -> ChatResult:
        text = TextStream(on_text)
        start: dict[str, Any] = {}
        final: dict[str, Any] = {}
        model = request.model
        stop = "unknown"
        failure: ProviderError | None = None
        stream = open_stream(self.http, self.name, url, json=body, headers=self._headers())
        async with stream as response:
            try:
                events = httpx_sse.EventSource(response).aiter_sse()
                async with contextlib.aclosing(events):
                    async for event in events:
                        data = event.json() if event.data else {}
                        kind = data.get("type", event.event)
                        if kind == "message_start":
                            message = data.get("message") or {}
                            model = str(message.get("model") or model)
                            start = message.get("usage") or {}
                        elif kind == "content_block_delta":
                            delta = data.get("delta") or {}
                            if delta.get("type") == "text_delta":
                                await text.add(delta.get("text"))
                        elif kind == "message_delta":
                            stop = str((data.get("delta") or {}).get("stop_reason") or stop)
                            final = data.get("usage") or final
                        elif kind == "error":  # raised once the stream is read to its end
                            error = data.get("error") or {}
                            overloaded = error.get("type") in ("overloaded_error", "api_error")
                            failure = ProviderError(
                                self.name,
                                f"stream error: {error.get('message') or error}",
                                retryable=overloaded,
                            )
            except (ValueError, httpx_sse.SSEError) as exc:
                raise bad_answer(self.name, f"broken event stream ({exc})") from exc
        if failure is not None:
            raise failure
        return ChatResult(
            provider=self.name,
            model=model,
            content=text.content,
            finish_reason=stop,
            usage=usage_of({**start, **{k: v for k, v in final.items() if v is not None}}),
        )
