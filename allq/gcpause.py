"""Keeping the cyclic garbage collector off large, long-lived heaps.

Charter: `paused_gc()` is a context manager for bulk loads (recovery's `recover()` and
`restore()`, compaction's replay). It turns the cyclic collector off while the load runs and
turns it back on afterwards (if it was on). When the load left more than `FREEZE_ABOVE`
new container objects alive, it first moves everything alive to the permanent generation
(`gc.freeze()`).

Why: the objects a recovery builds (change maps, jobs, heap entries) all stay alive, so
every collection the load triggers walks a growing heap for nothing: at 100,000 jobs the
collector took about half of `recover()`. Frozen, they are never walked by later collections
either (without the freeze, the first collections after the load walk all of them at once,
stalling the event loop). Frozen objects are still freed by reference counting when they go
(a deleted job, the change maps after `restore()`); only a reference cycle among them would
stay, and recovery builds none. Small loads (tests) are not frozen.

`GrowthFreezer` does the same for a running server whose queue grows: without it, each
full collection walks every live job (2.3 s at 1,000,000 jobs, measured while the suite
built them), stalling the event loop. Each time the live jobs grew by `FREEZE_STEP` since
the last freeze it freezes the heap, so a full collection walks at most the jobs put since
(about 50 ms). When the queue drains below a quarter of what was frozen it unfreezes, so
the collector again sees everything, including any cycle a freeze caught while it was
alive (a few in-flight objects per freeze: bounded by the number of freezes).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

FREEZE_ABOVE: Final = 100_000
#: `GrowthFreezer`: freeze once this many more jobs are alive than at the last freeze.
FREEZE_STEP: Final = 25_000


@contextmanager
def paused_gc() -> Iterator[None]:
    """Run the body with the cyclic collector off (see the module charter)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if gc.get_count()[0] > FREEZE_ABOVE:
            gc.freeze()
    finally:
        if enabled:
            gc.enable()


class GrowthFreezer:
    """Freezes the heap as the live jobs grow, unfreezes when they shrink (module charter)."""

    def __init__(self, step: int = FREEZE_STEP) -> None:
        self.step = step
        self.frozen_at = 0  # live jobs at the last freeze (0: nothing frozen by us)
        self.freezes = 0

    def note(self, live_jobs: int) -> None:
        """Call after changes to the number of live jobs (cheap: two comparisons)."""
        if live_jobs >= self.frozen_at + self.step:
            gc.collect(1)  # young garbage goes now rather than into the frozen set
            gc.freeze()
            self.frozen_at = live_jobs
            self.freezes += 1
        elif self.frozen_at and live_jobs * 4 < self.frozen_at:
            gc.unfreeze()
            self.frozen_at = 0
