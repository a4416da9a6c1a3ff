"""kflow_llm — LLM cost governance for kflow (the ``llm`` extra).

Built on kflow's public API only; the kflow core never imports it.
This release ships the pricing catalog: per-model token prices with
effective-date windows, user overrides, exact Decimal pricing of a call's
usage (:mod:`kflow_llm.pricing`) and the ``kflow prices`` command.
"""

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
