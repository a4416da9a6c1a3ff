"""The ``llm_prompt`` and ``embedding`` activities (PROTOCOL §9) of the ``std`` worker.

Registered through the ``kflow.activities`` entry point (``register``); any
Python worker can also register them itself.

``llm_prompt`` — ``model`` is ``"provider/model"`` or a fallback chain (a
list, most capable first). Before any call the cost of each candidate is
estimated from the prompt's size (a conservative three UTF-8 bytes per
token) and ``max_tokens`` at catalog prices; the first candidate whose
estimate fits the budget and whose provider is not cooling down is called.
The budget is the activity's own ``settings.budget.limit`` and, when the
server hands one to the claim, ``budget_remaining_usd`` — whichever is
smaller. If no candidate fits: action ``abort`` fails the attempt with
``BUDGET_EXCEEDED`` before anything is spent; action ``continue`` calls the
cheapest candidate and says so in the result. A provider that fails after
its retries is skipped and the chain moves on. Every call made is recorded
(``ctx.record_usage``) with its cost from the catalog, so failed attempts
are paid for too.

``embedding`` — ``model`` and ``input`` (a string or a list of strings).
"""

from __future__ import annotations

import decimal
import math
import os
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import structlog

from kflow.errors import ActivityError
from kflow.worker import Activity, ActivityContext, ActivityRegistry, ActivityResult
from kflow.worker import Usage as UsageEntry
from kflow_llm.pricing import PriceCatalog, Priced, Usage, load_catalog
from kflow_llm.providers import (
    ChatRequest,
    ChatResult,
    Cooldowns,
    Provider,
    ProviderError,
    provider_for,
    split_model,
    with_retries,
)

log = structlog.get_logger("kflow_llm.activities")

MAX_CHAIN = 8
MAX_TOKENS_LIMIT = 1_000_000
BYTES_PER_TOKEN = 3
DEFAULT_MAX_TOKENS = 1024


def estimate_prompt_tokens(*texts: str | None) -> int:
    """A conservative token count: three UTF-8 bytes per token, rounded up."""
    size = sum(len(t.encode("utf-8")) for t in texts if t)
    return math.ceil(size / BYTES_PER_TOKEN)


@attrs.frozen
class PromptParams:
    models: tuple[str, ...]
    request: ChatRequest
    stream: bool


def _fail(field: str, problem: str) -> ActivityError:
    return ActivityError(f"{field}: {problem}", code="INVALID_PARAMETERS", retryable=False)


def parse_prompt_params(params: Mapping[str, Any]) -> PromptParams:
    """Raises:
    ActivityError: ``INVALID_PARAMETERS`` naming the field.
    """
    raw_model = params.get("model")
    models = [raw_model] if isinstance(raw_model, str) else raw_model
    if not isinstance(models, list) or not models:
        raise _fail("model", "expected 'provider/model' or a non-empty list of them")
    if len(models) > MAX_CHAIN:
        raise _fail("model", f"a fallback chain may list at most {MAX_CHAIN} models")
    for index, model in enumerate(models):
        where = "model" if isinstance(raw_model, str) else f"model[{index}]"
        if not isinstance(model, str):
            raise _fail(where, "expected 'provider/model'")
        try:
            split_model(model)
        except ValueError as exc:
            raise _fail(where, str(exc)) from exc
    prompt = params.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _fail("prompt", "expected a non-empty string")
    system = params.get("system_prompt")
    if system is not None and not isinstance(system, str):
        raise _fail("system_prompt", "expected a string")
    max_tokens = params.get("max_tokens", DEFAULT_MAX_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise _fail("max_tokens", "expected an integer")
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise _fail("max_tokens", f"must be between 1 and {MAX_TOKENS_LIMIT}")
    temperature = _number(params, "temperature", 0.0, 2.0)
    top_p = _number(params, "top_p", 0.0, 1.0)
    stops = params.get("stop_sequences", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _fail("stop_sequences", "expected a list of non-empty strings")
    stream = params.get("stream", False)
    if not isinstance(stream, bool):
        raise _fail("stream", "expected true or false")
    return PromptParams(
        models=tuple(models),
        request=ChatRequest(
            model="",
            prompt=prompt,
            system_prompt=system,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop_sequences=tuple(stops),
        ),
        stream=stream,
    )


def _number(params: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(name, "expected a number")
    if not low <= value <= high:
        raise _fail(name, f"must be between {low:g} and {high:g}")
    return float(value)


@attrs.frozen
class Budget:
    """What this attempt may spend (None: no limit) and what to do when it cannot fit."""

    remaining: decimal.Decimal | None
    action: str  # abort | continue


def budget_of(ctx: ActivityContext) -> Budget:
    """The smaller of the activity's own limit and the server's remaining budget."""
    settings = ctx.settings.get("budget") if isinstance(ctx.settings, Mapping) else None
    limits = [ctx.budget_remaining_usd]
    action = "abort"
    if isinstance(settings, Mapping):
        if settings.get("limit") is not None:
            limits.append(decimal.Decimal(str(settings["limit"])))
        action = str(settings.get("action") or "abort")
    known = [limit for limit in limits if limit is not None]
    return Budget(remaining=min(known) if known else None, action=action)


def to_entry(
    priced: Priced, provider: str, model: str, *, budget_event: str | None = None
) -> UsageEntry:
    """The worker protocol's usage entry for one priced call."""
    usage = priced.usage
    return UsageEntry(
        provider=provider,
        model=model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_creation_tokens=usage.cache_creation_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cost_usd=priced.cost_usd,
        budget_event=budget_event,
    )


class _LlmActivity(Activity):
    """Shared plumbing: the HTTP client, the catalog, the environment, cooldowns."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient | None = None,
        catalog: PriceCatalog | None = None,
        environ: Mapping[str, str] | None = None,
        cooldowns: Cooldowns | None = None,
        retry_base_seconds: float = 1.0,
    ) -> None:
        self._http = http
        self._owns_http = http is None
        self._catalog = catalog
        self._environ = environ
        self.cooldowns = cooldowns or Cooldowns()
        self.retry_base_seconds = retry_base_seconds

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=10.0))
        return self._http

    @property
    def catalog(self) -> PriceCatalog:
        if self._catalog is None:
            self._catalog = load_catalog(environ=self.environ)
        return self._catalog

    @property
    def environ(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()


class LlmPromptActivity(_LlmActivity):
    name = "llm_prompt"

    def estimate(self, model: str, params: PromptParams) -> decimal.Decimal | None:
        """The most this call can cost, or None when the model has no price."""
        request = params.request
        usage = Usage(
            input_tokens=estimate_prompt_tokens(request.prompt, request.system_prompt),
            output_tokens=request.max_tokens,
        )
        price = self.catalog.lookup(model)
        if price is None:
            return None
        return self.catalog.price(model, usage).cost_usd

    def choose(
        self, params: PromptParams, budget: Budget
    ) -> tuple[list[tuple[str, decimal.Decimal | None]], list[dict[str, Any]]]:
        """The candidates to try in order, and the models skipped with why."""
        fits: list[tuple[str, decimal.Decimal | None]] = []
        skipped: list[dict[str, Any]] = []
        for model in params.models:
            provider, _ = split_model(model)
            estimate = self.estimate(model, params)
            if not self.cooldowns.available(provider):
                skipped.append({"model": model, "reason": "provider cooling down"})
            elif (
                budget.remaining is not None
                and estimate is not None
                and estimate > budget.remaining
            ):
                skipped.append(_over(model, estimate, budget.remaining))
            else:
                fits.append((model, estimate))
        return fits, skipped

    async def _call(self, provider: Provider, request: ChatRequest, stream: bool) -> ChatResult:
        """One chat call with retries.

        Raises:
            ProviderError: it failed for good.
        """

        async def once() -> ChatResult:
            return await provider.chat(request, stream=stream)

        result: ChatResult = await with_retries(once, base=self.retry_base_seconds)
        return result

    async def execute(self, params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        """Raises:
        ActivityError: ``INVALID_PARAMETERS``; ``BUDGET_EXCEEDED`` (not retryable) when
            no model fits under action ``abort``; ``LLM_PROVIDER_ERROR`` when every
            candidate failed (retryable if the last failure was).
        """
        parsed = parse_prompt_params(params)
        budget = budget_of(ctx)
        candidates, skipped = self.choose(parsed, budget)
        # With a run budget (the claim said how much is left) each call first
        # reserves its estimate, so parallel branches cannot jointly overspend.
        shared = ctx.budget_remaining_usd is not None
        failure: ProviderError | None = None
        for model, estimate in candidates:
            if shared:
                reservation = await ctx.reserve_budget(estimate or decimal.Decimal(0))
                if not reservation.granted:
                    left = reservation.remaining_usd or decimal.Decimal(0)
                    skipped.append(_over(model, estimate, left))
                    continue
            outcome = await self._try(model, parsed, ctx, skipped)
            if isinstance(outcome, ProviderError):
                failure = outcome
                continue
            event = None if model == parsed.models[0] else "downgrade"
            return self._result(outcome, model, event, skipped, ctx)
        over = [s for s in skipped if s["reason"] == "over budget"]
        if failure is not None or not over:
            reasons = "; ".join(f"{s['model']}: {s['reason']}" for s in skipped)
            raise ActivityError(
                f"every model failed: {reasons}",
                code="LLM_PROVIDER_ERROR",
                retryable=failure.retryable if failure is not None else True,
            )
        if budget.action != "continue":
            raise ActivityError(
                _no_fit_message(skipped, budget), code="BUDGET_EXCEEDED", retryable=False
            )
        cheapest = min(over, key=lambda s: decimal.Decimal(s["estimate_usd"]))
        outcome = await self._try(cheapest["model"], parsed, ctx, skipped)
        if isinstance(outcome, ProviderError):
            raise ActivityError(
                f"{cheapest['model']}: {outcome.message}",
                code="LLM_PROVIDER_ERROR",
                retryable=outcome.retryable,
            )
        return self._result(outcome, cheapest["model"], "budget_exceeded", skipped, ctx)

    async def _try(
        self, model: str, parsed: PromptParams, ctx: ActivityContext, skipped: list[dict[str, Any]]
    ) -> tuple[ChatResult, Priced] | ProviderError:
        """Call ``model``; a failure is noted in ``skipped`` and its provider cooled down."""
        provider_name, model_name = split_model(model)
        try:
            provider = provider_for(provider_name, self.http, self.environ)
            request = attrs.evolve(parsed.request, model=model_name)
            result = await self._call(provider, request, parsed.stream)
        except ProviderError as exc:
            self.cooldowns.failed(provider_name)
            skipped.append({"model": model, "reason": f"failed: {exc.message}"})
            ctx.logger.warning("llm.call_failed", model=model, error=str(exc))
            return exc
        self.cooldowns.succeeded(provider_name)
        return result, self.catalog.price(model, result.usage)

    def _result(
        self,
        outcome: tuple[ChatResult, Priced],
        model: str,
        event: str | None,
        skipped: list[dict[str, Any]],
        ctx: ActivityContext,
    ) -> ActivityResult:
        result, priced = outcome
        provider_name, model_name = split_model(model)
        ctx.record_usage(to_entry(priced, provider_name, model_name, budget_event=event))
        ctx.logger.info(
            "llm.call", model=model, cost_usd=f"{priced.cost_usd:f}", budget_event=event
        )
        usage = result.usage
        return ActivityResult.value(
            "result",
            {
                "content": result.content,
                "model": result.model,
                "provider": provider_name,
                "finish_reason": result.finish_reason,
                "cost_usd": f"{priced.cost_usd:f}",
                "priced": priced.known,
                "budget_skipped_models": skipped,
                "budget_event": event,
                "cache_hit": False,
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "output_tokens": usage.output_tokens,
                    "total_tokens": usage.prompt_tokens + usage.output_tokens,
                    "cached_tokens": usage.cache_read_tokens,
                    "reasoning_tokens": usage.reasoning_tokens,
                },
            },
        )


def _over(model: str, estimate: decimal.Decimal | None, left: decimal.Decimal) -> dict[str, Any]:
    return {
        "model": model,
        "reason": "over budget",
        "estimate_usd": f"{estimate or 0:f}",
        "remaining_usd": f"{left:f}",
    }


def _no_fit_message(skipped: list[dict[str, Any]], budget: Budget) -> str:
    """Why nothing was called: each model with its estimate and the budget left then."""
    parts = []
    for s in skipped:
        if s["reason"] == "over budget":
            parts.append(
                f"{s['model']} (estimate ${s['estimate_usd']}, "
                f"remaining budget ${s['remaining_usd']})"
            )
        else:
            parts.append(f"{s['model']} ({s['reason']})")
    return f"no model fits the budget ({budget.action}): " + ", ".join(parts)


class EmbeddingActivity(_LlmActivity):
    name = "embedding"

    async def execute(self, params: dict[str, Any], ctx: ActivityContext) -> ActivityResult:
        """Raises:
        ActivityError: ``INVALID_PARAMETERS``; ``LLM_PROVIDER_ERROR`` for a failed call
            or a provider without embeddings.
        """
        model = params.get("model")
        if not isinstance(model, str):
            raise _fail("model", "expected 'provider/model'")
        try:
            provider_name, model_name = split_model(model)
        except ValueError as exc:
            raise _fail("model", str(exc)) from exc
        raw = params.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs:
            raise _fail("input", "expected a string or a non-empty list of strings")
        if not all(isinstance(text, str) for text in inputs):
            raise _fail("input", "expected a string or a non-empty list of strings")
        try:
            embed = _embedder(provider_for(provider_name, self.http, self.environ))
            result = await with_retries(
                lambda: embed(model_name, inputs), base=self.retry_base_seconds
            )
        except ProviderError as exc:
            raise ActivityError(
                str(exc), code="LLM_PROVIDER_ERROR", retryable=exc.retryable
            ) from exc
        priced = self.catalog.price(model, result.usage)
        ctx.record_usage(to_entry(priced, provider_name, model_name))
        return ActivityResult.value(
            "result",
            {
                "embeddings": result.embeddings,
                "embedding_count": len(result.embeddings),
                "model": result.model,
                "provider": provider_name,
                "cost_usd": f"{priced.cost_usd:f}",
            },
        )


def _embedder(provider: Any) -> Any:
    """The provider's ``embed`` method.

    Raises:
        ProviderError: the provider has no embedding API (Anthropic).
    """
    embed = getattr(provider, "embed", None)
    if embed is None:
        raise ProviderError(provider.name, "has no embedding API")
    return embed


def register(registry: ActivityRegistry, worker: str) -> None:
    """The ``kflow.activities`` entry point: both activities on the ``std`` worker."""
    if worker != "std":
        return
    cooldowns = Cooldowns()
    registry.register(LlmPromptActivity(cooldowns=cooldowns), worker="std")
    registry.register(EmbeddingActivity(cooldowns=cooldowns), worker="std")
