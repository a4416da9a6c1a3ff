"""Short full garbage collections in the long-running ``kflow`` processes.

A server or worker holds, from its start-up on, a few hundred thousand
objects of its libraries (modules, classes, functions, constants) that live
as long as the process. Python's cyclic collector walks every one of them on
each full (generation 2) collection: on the embedded server under
Sequential-5 such a pass took 30 to 36 ms, a stop of the one event loop that
every request in flight waits out (a 100-run scenario's p95 went from ~48 ms
to 70 to 85 ms whenever one fell into it). :func:`freeze_startup_objects`
collects once, then moves everything still alive into the permanent
generation (:func:`gc.freeze`): later full collections walk only the objects
made since.

Only the ``kflow serve`` and ``kflow worker`` commands call it, once they are
up: a program that embeds kflow (a test suite starting many servers) keeps
the collector as it set it.
"""

from __future__ import annotations

import gc

import structlog

log = structlog.get_logger("kflow.process")


def freeze_startup_objects() -> int:
    """Collect, then exempt every object alive now from later collections (logged
    as ``process.gc_frozen``); returns how many objects the permanent generation
    holds."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("process.gc_frozen", objects=frozen)
    return frozen
