"""The cyclic garbage collector, run less while a stream process works.

The sink and the stages allocate a few dozen short-lived objects per record, none in a
cycle; at the collector's default (a pass every 700 allocations, scanning more and more of
the heap) that was a third of the sink's CPU, and about a tenth of a worker's. What
start-up built is frozen out of the scans.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

ALLOCATIONS_PER_PASS = 50_000


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(ALLOCATIONS_PER_PASS, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
