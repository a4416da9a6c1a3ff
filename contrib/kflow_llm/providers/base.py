"""What every provider adapter shares: requests, results, errors, retries, cooldowns.

An adapter turns a :class:`ChatRequest` into one HTTP call to its vendor's
API (plain httpx, no vendor SDK) and the answer into a :class:`ChatResult`
with the call's :class:`~kflow_llm.pricing.Usage`. With ``stream=True`` it
reads the vendor's own streaming format, hands each piece of text to
``on_text`` as it arrives, and takes the usage from the end of the stream.

Failures are :class:`ProviderError`. 408, 409, 429, 5xx (and Anthropic's
529) and network failures are retryable; :func:`with_retries` retries them
with tenacity, honouring ``Retry-After``. :class:`Cooldowns` puts a provider
that keeps failing aside for a while so a fallback chain moves on.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs
import httpx
import tenacity
import trio

from kflow_llm.pricing import Usage

OnText = Callable[[str], Awaitable[None]]
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
#: Longest pause one Retry-After may impose before the call is given up as failed.
MAX_RETRY_AFTER_SECONDS = 60.0


@attrs.frozen
class ChatRequest:
    """One prompt for one model (``model`` without its ``provider/`` prefix)."""

    model: str
    prompt: str
    system_prompt: str | None = None
    max_tokens: int = 1024
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] = ()


@attrs.frozen
class ChatResult:
    """The answer of a call and what it used."""

    provider: str
    model: str
    content: str
    finish_reason: str
    usage: Usage


@attrs.frozen
class EmbeddingResult:
    provider: str
    model: str
    embeddings: list[list[float]]
    usage: Usage


class ProviderError(Exception):
    """A provider call failed.

    ``status`` is the HTTP status (None for a network failure or a bad
    answer); ``retry_after`` the seconds the provider asked to wait.
    """

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class Provider(Protocol):
    """A vendor's chat (and, where it has one, embedding) API."""

    name: str

    async def chat(
        self, request: ChatRequest, *, stream: bool = False, on_text: OnText | None = None
    ) -> ChatResult: ...


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """``Retry-After`` (seconds or an HTTP date) in seconds, or None."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _error_text(response: httpx.Response) -> str:
    """The vendor's error message (all four nest it under ``error``), else the body."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:500]
    if isinstance(error, str):
        return error[:500]
    return str(data)[:500]


def raise_for_status(provider: str, response: httpx.Response) -> None:
    """Raises:
    ProviderError: the answer is not a 2xx (retryable as listed in the module docstring).
    """
    if response.is_success:
        return
    raise ProviderError(
        provider,
        f"HTTP {response.status_code}: {_error_text(response)}",
        status=response.status_code,
        retryable=response.status_code in RETRYABLE_STATUSES,
        retry_after=retry_after_seconds(response.headers),
    )


def transport_error(provider: str, exc: httpx.TransportError) -> ProviderError:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "unreachable"
    return ProviderError(provider, f"{kind}: {exc or type(exc).__name__}", retryable=True)


def bad_answer(provider: str, what: str) -> ProviderError:
    return ProviderError(provider, f"unexpected answer: {what}")


def count(data: Any, name: str) -> int:
    """A token counter of a vendor's usage object (0 when missing or not a count)."""
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


async def post_json(
    http: httpx.AsyncClient,
    provider: str,
    url: str,
    *,
    json: Any,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """POST ``json`` and decode the JSON answer.

    Raises:
        ProviderError: a network failure, an error answer, or an answer that is not JSON.
    """
    try:
        response = await http.post(url, json=json, headers=headers)
    except httpx.TransportError as exc:
        raise transport_error(provider, exc) from exc
    raise_for_status(provider, response)
    try:
        return response.json()
    except ValueError as exc:
        raise bad_answer(provider, f"not JSON ({exc})") from exc


@contextlib.asynccontextmanager
async def open_stream(
    http: httpx.AsyncClient,
    provider: str,
    url: str,
    *,
    json: Any,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> AsyncIterator[httpx.Response]:
    """POST ``json`` for a streamed answer; yields the response once it is a success.

    Raises:
        ProviderError: an error answer, or a network failure at any point of the stream.
    """
    try:
        async with http.stream("POST", url, json=json, headers=headers, params=params) as response:
            if not response.is_success:
                await response.aread()
                raise_for_status(provider, response)
            yield response
    except httpx.TransportError as exc:
        raise transport_error(provider, exc) from exc


class TextStream:
    """The text of a streamed answer, gathered as it arrives and handed to ``on_text``."""

    def __init__(self, on_text: OnText | None) -> None:
        self._parts: list[str] = []
        self._on_text = on_text

    async def add(self, text: str | None) -> None:
        if text:
            self._parts.append(text)
            if self._on_text is not None:
                await self._on_text(text)

    @property
    def content(self) -> str:
        return "".join(self._parts)


def one_per_input(provider: str, vectors: list[list[float]], inputs: list[str]) -> None:
    """Raises:
    ProviderError: the answer has not exactly one embedding per input.
    """
    if len(vectors) != len(inputs):
        raise bad_answer(provider, f"{len(vectors)} embeddings for {len(inputs)} inputs")


def _wait(state: tenacity.RetryCallState, *, base: float, cap: float) -> float:
    exc = state.outcome.exception() if state.outcome else None
    backoff = min(cap, base * 2 ** (state.attempt_number - 1))
    if isinstance(exc, ProviderError) and exc.retry_after is not None:
        return min(exc.retry_after, MAX_RETRY_AFTER_SECONDS)
    return float(backoff)


async def with_retries(
    call: Callable[[], Awaitable[Any]],
    *,
    attempts: int = 3,
    base: float = 1.0,
    cap: float = 20.0,
) -> Any:
    """``call()``, retried on retryable :class:`ProviderError` (Retry-After first,
    else exponential backoff from ``base`` up to ``cap`` seconds).

    Raises:
        ProviderError: the last failure once ``attempts`` are used, or any
            non-retryable one at once; also when a Retry-After is longer than
            :data:`MAX_RETRY_AFTER_SECONDS`.
    """

    def retryable(exc: BaseException) -> bool:
        if not isinstance(exc, ProviderError) or not exc.retryable:
            return False
        return exc.retry_after is None or exc.retry_after <= MAX_RETRY_AFTER_SECONDS

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=lambda state: _wait(state, base=base, cap=cap),
        retry=tenacity.retry_if_exception(retryable),
        sleep=trio.sleep,
        reraise=True,
    )

    async def attempt() -> Any:  # tenacity awaits only coroutine functions
        return await call()

    return await retrying(attempt)


class Cooldowns:
    """Providers set aside after failing ``threshold`` calls in a row.

    A provider on cooldown is skipped until ``seconds`` have passed (Trio's
    clock); one success clears its count.
    """

    def __init__(self, *, threshold: int = 3, seconds: float = 30.0) -> None:
        self.threshold = threshold
        self.seconds = seconds
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def available(self, provider: str) -> bool:
        until = self._until.get(provider)
        return until is None or trio.current_time() >= until

    def failed(self, provider: str) -> None:
        count = self._failures.get(provider, 0) + 1
        self._failures[provider] = count
        if count >= self.threshold:
            self._until[provider] = trio.current_time() + self.seconds
            self._failures[provider] = 0

    def succeeded(self, provider: str) -> None:
        self._failures.pop(provider, None)
        self._until.pop(provider, None)
