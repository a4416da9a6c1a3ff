"""Ollama's chat API (``POST /api/chat``) and embeddings (``POST /api/embed``).

Usage: ``prompt_eval_count`` and ``eval_count`` (Ollama has no prompt cache
accounting). A stream is newline-delimited JSON: one object per piece of
text, the last with ``done: true``, the counts and ``done_reason``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from typing import Any, cast

import httpx

from kflow_llm.pricing import Usage
from kflow_llm.providers.base import (
    ChatRequest,
    ChatResult,
    EmbeddingResult,
    OnText,
    ProviderError,
    TextStream,
    bad_answer,
    count,
    one_per_input,
    open_stream,
    post_json,
)

DEFAULT_BASE_URL = "http://localhost:11434"


def usage_of(data: Any) -> Usage:
    return Usage(
        input_tokens=count(data, "prompt_eval_count"), output_tokens=count(data, "eval_count")
    )


class OllamaProvider:
    name = "ollama"

    def __init__(self, http: httpx.AsyncClient, *, base_url: str | None = None, **_: Any):
        self.http = http
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        messages = []
        if request.system_prompt:
            messages.append({"role": "system", "content": request.system_prompt})
        messages.append({"role": "user", "content": request.prompt})
        options: dict[str, Any] = {"num_predict": request.max_tokens}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.top_p is not None:
            options["top_p"] = request.top_p
        if request.stop_sequences:
            options["stop"] = list(request.stop_sequences)
        return {"model": request.model, "messages": messages, "stream": stream, "options": options}

    async def chat(
        self, request: ChatRequest, *, stream: bool = False, on_text: OnText | None = None
    ) -> ChatResult:
        """Raises:
        ProviderError: an error answer, a network failure or an answer of the wrong shape.
        """
        url = f"{self.base_url}/api/chat"
        body = self._body(request, stream)
        if stream:
            return await self._stream(url, body, request, on_text)
        data = await post_json(self.http, self.name, url, json=body)
        try:
            return ChatResult(
                provider=self.name,
                model=str(data.get("model") or request.model),
                content=str(data["message"].get("content") or ""),
                finish_reason=str(data.get("done_reason") or "unknown"),
                usage=usage_of(data),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise bad_answer(self.name, f"no message in the answer ({exc})") from exc

    async def _stream(
        self, url: str, body: dict[str, Any], request: ChatRequest, on_text: OnText | None
    ) -> ChatResult:
        text = TextStream(on_text)
        last: dict[str, Any] = {}
        failure: ProviderError | None = None
        async with open_stream(self.http, self.name, url, json=body) as response:
            try:
                # an async generator in fact; typed as a plain iterator by httpx
                lines = cast(AsyncGenerator[str, None], response.aiter_lines())
                async with contextlib.aclosing(lines):
                    async for line in lines:
                        if not line.strip():
                            continue
                        data = json.loads(line)
                        if data.get("error"):
                            failure = failure or ProviderError(
                                self.name, f"stream error: {data['error']}"
                            )
                            continue
                        await text.add((data.get("message") or {}).get("content"))
                        if data.get("done"):
                            last = data  # the server closes the stream after it
            except (ValueError, AttributeError) as exc:
                raise bad_answer(self.name, f"broken stream ({exc})") from exc
        if failure is not None:
            raise failure
        if not last:
            raise bad_answer(self.name, "the stream ended before its final message")
        return ChatResult(
            provider=self.name,
            model=str(last.get("model") or request.model),
            content=text.content,
            finish_reason=str(last.get("done_reason") or "unknown"),
            usage=usage_of(last),
        )

    async def embed(self, model: str, inputs: list[str]) -> EmbeddingResult:
        """Raises:
        ProviderError: as for :meth:`chat`.
        """
        url = f"{self.base_url}/api/embed"
        data = await post_json(self.http, self.name, url, json={"model": model, "input": inputs})
        try:
            vectors = [[float(x) for x in row] for row in data["embeddings"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise bad_answer(self.name, f"no embeddings in the answer ({exc})") from exc
        one_per_input(self.name, vectors, inputs)
        return EmbeddingResult(
            provider=self.name,
            model=model,
            embeddings=vectors,
            usage=Usage(input_tokens=count(data, "prompt_eval_count")),
        )
