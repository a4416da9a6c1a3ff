"""kflow_llm's entry point registers its activities without importing them."""

from __future__ import annotations

import subprocess
import sys

import trio

from kflow.worker import ActivityRegistry
from kflow_llm.plugin import Deferred, register


def test_registering_imports_no_provider_and_no_catalog() -> None:
    code = (
        "import sys\n"
        "from kflow.worker import ActivityRegistry\n"
        "from kflow_llm.plugin import register\n"
        "register(ActivityRegistry(default_worker='std'), 'std')\n"
        "print(sorted(m for m in sys.modules if m.startswith('kflow_llm')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['kflow_llm', 'kflow_llm.plugin']"


def test_the_stand_ins_build_the_real_activities_sharing_one_cooldowns() -> None:
    registry = ActivityRegistry(default_worker="std")
    register(registry, "std")
    register(registry, "py-std")  # nothing for other workers
    prompt, embedding = registry.get("std", "llm_prompt"), registry.get("std", "embedding")
    assert isinstance(prompt, Deferred)
    assert isinstance(embedding, Deferred)
    assert registry.workers() == ["std"]
    from kflow_llm.activities import EmbeddingActivity, LlmPromptActivity

    real_prompt, real_embedding = prompt.target(), embedding.target()
    assert isinstance(real_prompt, LlmPromptActivity)
    assert isinstance(real_embedding, EmbeddingActivity)
    assert prompt.target() is real_prompt  # built once
    assert real_prompt.cooldowns is real_embedding.cooldowns


async def test_a_stand_in_runs_and_closes_what_it_built() -> None:
    calls: list[str] = []

    class Real(Deferred):
        def __init__(self) -> None:
            pass

        async def execute(self, params: dict[str, object], ctx: object) -> dict[str, object]:
            calls.append("execute")
            return {"echo": params}

        async def aclose(self) -> None:
            calls.append("aclose")

    built: list[Real] = []

    def build() -> Real:
        built.append(Real())
        return built[-1]

    stand_in = Deferred("thing", build)
    await stand_in.aclose()  # nothing built yet: nothing to close
    assert built == []
    assert await stand_in.execute({"x": 1}, None) == {"echo": {"x": 1}}  # type: ignore[arg-type]
    await stand_in.execute({}, None)  # type: ignore[arg-type]
    await stand_in.aclose()
    assert len(built) == 1
    assert calls == ["execute", "execute", "aclose"]
    await trio.lowlevel.checkpoint()
