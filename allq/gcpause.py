"""Pausing the cyclic garbage collector while recovery builds millions of objects.

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
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

FREEZE_ABOVE: Final = 100_000


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
