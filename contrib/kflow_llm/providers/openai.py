"""OpenAI Chat Completions (``POST {base}/chat/completions``) and embeddings, whole or
streamed — also any OpenAI-compatible server (vLLM, llama.cpp, LM Studio) through
``OPENAI_BASE_URL``.

Usage: ``prompt_tokens`` includes ``prompt_tokens_details.cached_tokens``;
``completion_tokens`` includes ``completion_tokens_details.reasoning_tokens``.
A stream is ``data:`` events of chunks ending with ``data: [DONE]``; with
``stream_options.include_usage`` the last chunk carries the usage (servers
that ignore the option give none: the call is then recorded with zero tokens).
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
    EmbeddingResult,
    OnText,
    TextStream,
    bad_answer,
    count,
    one_per_input,
    open_stream,
    post_json,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def usage_of(data: Any) -> Usage:
    prompt = count(data, "prompt_tokens")
    cached = min(prompt, count((data or {}).get("prompt_tokens_details"), "cached_tokens"))
    output = count(data, "completion_tokens")
    reasoning = count((data or {}).get("completion_tokens_details"), "reasoning_tokens")
    return Usage(
        input_tokens=prompt - cached,
        cache_read_tokens=cached,
        output_tokens=output,
        reasoning_tokens=min(reasoning, output),
    )


class OpenAIProvider:
    name = "openai"

    def __init__(self, http: httpx.AsyncClient, *, api_key: str, base_url: str | None = None):
        self.http = http
        self.api_key = api_key
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        messages = []
        if request.system_prompt:
            messages.append({"role": "system", "content": request.system_prompt})
        messages.append({"role": "user", "content": request.prompt})
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "max_completion_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop_sequences:
            body["stop"] = list(request.stop_sequences)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def chat(
        self, request: ChatRequest, *, stream: bool = False, on_text: OnText | None = None
    ) -> ChatResult:
        """Raises:
        ProviderError: an error answer, a network failure or an answer of the wrong shape.
        """
        url = f"{self.base_url}/chat/completions"
        body = self._body(request, stream)
        if stream:
            return await self._stream(url, body, request, on_text)
        data = await post_json(self.http, self.name, url, json=body, headers=self._headers())
        try:
            choice = data["choices"][0]
            return ChatResult(
                provider=self.name,
                model=str(data.get("model") or request.model),
                content=str(choice["message"].get("content") or ""),
                finish_reason=str(choice.get("finish_reason") or "unknown"),
                usage=usage_of(data.get("usage")),
            )
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise bad_answer(self.name, f"no choice in the answer ({exc})") from exc

    async def _stream(
        self, url: str, body: dict[str, Any], request: ChatRequest, on_text: OnText | None
    ) -> ChatResult:
        text = TextStream(on_text)
        model = request.model
        finish = "unknown"
        usage: Any = None
        stream = open_stream(self.http, self.name, url, json=body, headers=self._headers())
        async with stream as response:
            try:
                events = httpx_sse.EventSource(response).aiter_sse()
                async with contextlib.aclosing(events):
                    async for event in events:
                        if event.data.strip() == "[DONE]":
                            continue  # the server ends the stream; read it to its end
                        chunk = event.json()
                        model = str(chunk.get("model") or model)
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                        for choice in chunk.get("choices") or []:
                            await text.add((choice.get("delta") or {}).get("content"))
                            if choice.get("finish_reason"):
                                finish = str(choice["finish_reason"])
            except (ValueError, AttributeError, httpx_sse.SSEError) as exc:
                raise bad_answer(self.name, f"broken event stream ({exc})") from exc
        return ChatResult(
            provider=self.name,
            model=model,
            content=text.content,
            finish_reason=finish,
            usage=usage_of(usage),
        )

    async def embed(self, model: str, inputs: list[str]) -> EmbeddingResult:
        """``POST {base}/embeddings``.

        Raises:
            ProviderError: as for :meth:`chat`.
        """
        url = f"{self.base_url}/embeddings"
        body = {"model": model, "input": inputs}
        data = await post_json(self.http, self.name, url, json=body, headers=self._headers())
        try:
            rows = sorted(data["data"], key=lambda row: row.get("index", 0))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ValueError: float()
            raise bad_answer(self.name, f"no embeddings in the answer ({exc})") from exc
        one_per_input(self.name, vectors, inputs)
        return EmbeddingResult(
            provider=self.name,
            model=str(data.get("model") or model),
            embeddings=vectors,
            usage=Usage(input_tokens=count(data.get("usage"), "prompt_tokens")),
        )
