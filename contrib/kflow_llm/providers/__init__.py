"""The LLM providers kflow_llm speaks to, over httpx (no vendor SDKs).

Model ids are ``provider/model``: ``anthropic/…``, ``openai/…``, ``google/…``
(Gemini), ``ollama/…``. Keys and base URLs come from the environment of the
worker process, with the vendors' own SDK names: ``ANTHROPIC_API_KEY``,
``OPENAI_API_KEY``, ``GOOGLE_API_KEY`` and ``ANTHROPIC_BASE_URL``,
``OPENAI_BASE_URL``, ``GOOGLE_BASE_URL``, ``OLLAMA_BASE_URL``. Pointing
``OPENAI_BASE_URL`` at an OpenAI-compatible server (vLLM, llama.cpp server,
LM Studio) makes ``openai/<its model>`` use it; such a server needs no key.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from kflow_llm.providers.anthropic import AnthropicProvider
from kflow_llm.providers.base import (
    ChatRequest,
    ChatResult,
    Cooldowns,
    EmbeddingResult,
    Provider,
    ProviderError,
    with_retries,
)
from kflow_llm.providers.gemini import GeminiProvider
from kflow_llm.providers.ollama import OllamaProvider
from kflow_llm.providers.openai import OpenAIProvider

PROVIDERS = ("anthropic", "openai", "google", "ollama")
_KEYS = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY", "google": "GOOGLE_API_KEY"}
_BASES = {
    "anthropic": "ANTHROPIC_BASE_URL",
    "openai": "OPENAI_BASE_URL",
    "google": "GOOGLE_BASE_URL",
    "ollama": "OLLAMA_BASE_URL",
}


def split_model(model: str) -> tuple[str, str]:
    """``("anthropic", "claude-sonnet-5")`` from ``"anthropic/claude-sonnet-5"``.

    Raises:
        ValueError: not ``provider/model`` or an unknown provider.
    """
    provider, sep, name = model.partition("/")
    if not sep or not name:
        raise ValueError(f"expected 'provider/model', got {model!r}")
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r} (known: {', '.join(PROVIDERS)})")
    return provider, name


def provider_for(name: str, http: httpx.AsyncClient, environ: Mapping[str, str]) -> Provider:
    """The adapter for provider ``name``, configured from ``environ``.

    Raises:
        ProviderError: its API key is not set (not retryable).
    """
    base = environ.get(_BASES[name]) or None
    if name == "ollama":
        return OllamaProvider(http, base_url=base)
    key = environ.get(_KEYS[name], "")
    if not key and not (name == "openai" and base):
        raise ProviderError(name, f"{_KEYS[name]} is not set in the worker's environment")
    if name == "anthropic":
        return AnthropicProvider(http, api_key=key, base_url=base)
    if name == "openai":
        return OpenAIProvider(http, api_key=key, base_url=base)
    return GeminiProvider(http, api_key=key, base_url=base)


__all__ = [
    "PROVIDERS",
    "AnthropicProvider",
    "ChatRequest",
    "ChatResult",
    "Cooldowns",
    "EmbeddingResult",
    "GeminiProvider",
    "OllamaProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderError",
    "provider_for",
    "split_model",
    "with_retries",
]
