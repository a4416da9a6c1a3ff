"""The ``kflow.activities`` entry point of kflow_llm: cheap enough for every ``std`` worker.

Every ``std`` worker loads the installed plugins when it starts, whether or
not it will ever run an LLM activity. Registering here imports none of the
providers, the price catalog or the activities themselves: each activity is
a :class:`Deferred` stand-in that builds the real one
(:mod:`kflow_llm.activities`) on its first attempt. An idle worker keeps
about 1.4 MiB and 20 ms of imports (bench/README.md, "Idle footprint").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kflow.worker import Activity, ActivityRegistry, ActivityResult

if TYPE_CHECKING:
    from kflow.worker import ActivityContext


class Deferred(Activity):
    """Stands in for the activity ``build()`` makes, building it on the first attempt."""

    def __init__(self, name: str, build: Callable[[], Activity]) -> None:
        self.name = name
        self._build = build
        self._target: Activity | None = None

    def target(self) -> Activity:
        """The real activity (built now if no attempt has needed it yet).

        Raises:
            Exception: whatever building it raised (the attempt fails with it).
        """
        if self._target is None:
            self._target = self._build()
        return self._target

    async def execute(
        self, params: dict[str, Any], ctx: ActivityContext
    ) -> ActivityResult | Mapping[str, Any]:
        return await self.target().execute(params, ctx)

    async def aclose(self) -> None:
        """Close the real activity, if one was built."""
        aclose = getattr(self._target, "aclose", None)
        if aclose is not None:
            await aclose()


def register(registry: ActivityRegistry, worker: str) -> None:
    """Register ``llm_prompt`` and ``embedding`` on the ``std`` worker (deferred).

    Both share one :class:`~kflow_llm.providers.Cooldowns`, as
    :func:`kflow_llm.activities.register` makes them.
    """
    if worker != "std":
        return
    shared: dict[str, Any] = {}

    def build(name: str) -> Activity:
        from kflow_llm import activities, providers

        cooldowns = shared.setdefault("cooldowns", providers.Cooldowns())
        if name == "llm_prompt":
            return activities.LlmPromptActivity(cooldowns=cooldowns)
        return activities.EmbeddingActivity(cooldowns=cooldowns)

    for name in ("llm_prompt", "embedding"):
        registry.register(Deferred(name, functools.partial(build, name)), worker="std")
