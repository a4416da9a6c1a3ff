"""kflow_llm — LLM cost governance for kflow (the ``llm`` extra).

Built on kflow's public API only; the kflow core never imports it.
This release ships the pricing catalog: per-model token prices with
effective-date windows, user overrides, exact Decimal pricing of a call's
usage (:mod:`kflow_llm.pricing`) and the ``kflow prices`` command.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kflow_llm.pricing import (
        PRICES_ENV,
        ModelPrice,
        PriceCatalog,
        Priced,
        Usage,
        cost_of,
        load_catalog,
    )

__all__ = [
    "PRICES_ENV",
    "ModelPrice",
    "PriceCatalog",
    "Priced",
    "Usage",
    "cost_of",
    "load_catalog",
]


def __getattr__(name: str) -> Any:
    """The pricing names, imported on first use: every ``std`` worker imports this
    package for its plugin (:mod:`kflow_llm.plugin`), most never price a call."""
    if name in __all__:
        from kflow_llm import pricing

        return getattr(pricing, name)
    raise AttributeError(f"module 'kflow_llm' has no attribute {name!r}")
