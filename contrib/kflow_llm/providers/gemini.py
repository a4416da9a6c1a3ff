"""Google's Gemini API: ``models/{model}:generateContent`` and, streamed,
``:streamGenerateContent?alt=sse``; embeddings through ``:batchEmbedContents``.

Usage (``usageMetadata``): ``promptTokenCount`` includes
``cachedContentTokenCount``; ``thoughtsTokenCount`` is billed as output on top
of ``candidatesTokenCount``. Each streamed event is a whole response object
holding the next piece of text; the last ones carry the usage.
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

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"


def usage_of(data: Any) -> Usage:
    prompt = count(data, "promptTokenCount")
    cached = min(prompt, count(data, "cachedContentTokenCount"))
    thoughts = count(data, "thoughtsTokenCount")
    return Usage(
        input_tokens=prompt - cached,
        cache_read_tokens=cached,
        output_tokens=count(data, "candidatesTokenCount") + thoughts,
        reasoning_tokens=thoughts,
    )


def _text_of(data: dict[str, Any]) -> tuple[str, str | None]:
    """The text of the first candidate and its finish reason (None while streaming)."""
    candidates = data.get("candidates") or []
    if not candidates:
        return "", None
    first = candidates[0]
    parts = (first.get("content") or {}).get("parts") or []
    text = "".join(p.get("text", "") for p in parts if isinstance(p, dict) and not p.get("thought"))
    return text, first.get("finishReason")


class GeminiProvider:
    name = "google"

    def __init__(self, http: httpx.AsyncClient, *, api_key: str, base_url: str | None = None):
        self.http = http
        self.api_key = api_key
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")

    def _headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.api_key}

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        config: dict[str, Any] = {"maxOutputTokens": request.max_tokens}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.stop_sequences:
            config["stopSequences"] = list(request.stop_sequences)
        body: dict[str, Any] = {
            "contents": [{"role": "user", "parts": [{"text": request.prompt}]}],
            "generationConfig": config,
        }
        if request.system_prompt:
            body["systemInstruction"] = {"parts": [{"text": request.system_prompt}]}
        return body

    async def chat(
        self, request: ChatRequest, *, stream: bool = False, on_text: OnText | None = None
    ) -> ChatResult:
        """Raises:
        ProviderError: an error answer, a network failure or an answer of the wrong shape.
        """
        base = f"{self.base_url}/v1beta/models/{request.model}"
        if stream:
            return await self._stream(base, request, on_text)
        data = await post_json(
            self.http,
            self.name,
            f"{base}:generateContent",
            json=self._body(request),
            headers=self._headers(),
        )
        try:
            if not data.get("candidates"):
                blocked = (data.get("promptFeedback") or {}).get("blockReason")
                raise bad_answer(self.name, f"no candidates (blocked: {blocked})")
            text, finish = _text_of(data)
            return ChatResult(
                provider=self.name,
                model=str(data.get("modelVersion") or request.model),
                content=text,
                finish_reason=str(finish or "unknown"),
                usage=usage_of(data.get("usageMetadata")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise bad_answer(self.name, f"unreadable answer ({exc})") from exc

    async def _stream(self, base: str, request: ChatRequest, on_text: OnText | None) -> ChatResult:
        text = TextStream(on_text)
        model = request.model
        finish = "unknown"
        usage: Any = None
        url = f"{base}:streamGenerateContent"
        stream = open_stream(
            self.http,
            self.name,
            url,
            json=self._body(request),
            headers=self._headers(),
            params={"alt": "sse"},
        )
        async with stream as response:
            try:
                events = httpx_sse.EventSource(response).aiter_sse()
                async with contextlib.aclosing(events):
                    async for event in events:
                        data = event.json()
                        model = str(data.get("modelVersion") or model)
                        usage = data.get("usageMetadata") or usage
                        piece, reason = _text_of(data)
                        await text.add(piece)
                        if reason:
                            finish = str(reason)
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
        """``:batchEmbedContents`` (the Gemini API reports no token usage for it).

        Raises:
            ProviderError: as for :meth:`chat`.
        """
        url = f"{self.base_url}/v1beta/models/{model}:batchEmbedContents"
        body = {
            "requests": [
                {"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
                for text in inputs
            ]
        }
        data = await post_json(self.http, self.name, url, json=body, headers=self._headers())
        try:
            vectors = [[float(x) for x in e["values"]] for e in data["embeddings"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise bad_answer(self.name, f"no embeddings in the answer ({exc})") from exc
        one_per_input(self.name, vectors, inputs)
        return EmbeddingResult(provider=self.name, model=model, embeddings=vectors, usage=Usage())
