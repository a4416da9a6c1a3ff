"""kflow._gc: full collections skip what the process holds from its start-up."""

from __future__ import annotations

import gc

from kflow._gc import freeze_startup_objects


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_objects_alive_at_the_freeze_leave_the_collected_generations() -> None:
    try:
        before = len(gc.get_objects())
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count()
        assert frozen >= before // 2  # the start-up objects: modules, classes, functions
        assert len(gc.get_objects()) < before - frozen // 2  # the collector no longer walks them
        _Cycle()  # garbage made afterwards is still collected
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
