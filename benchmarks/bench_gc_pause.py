"""Longest cyclic-GC pause while N jobs are put through an `EngineShell` (put_batch of 1,000).

    .venv/bin/python -m benchmarks.bench_gc_pause 1000000 on    # with GrowthFreezer (default)
    .venv/bin/python -m benchmarks.bench_gc_pause 1000000 off   # without

In process, no network: a full collection of a heap holding N live jobs stalls the event
loop for as long as it runs; `allq.gcpause.GrowthFreezer` keeps full collections to the jobs
put since its last freeze.
"""

import gc
import os
import sys
import time
from typing import Any

import trio
import trio.lowlevel

from allq.tubes.config import EngineConfig
from allq.tubes.engine import Engine
from allq.tubes.runner import EngineShell, UnixClock

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
USE = (sys.argv[2] if len(sys.argv) > 2 else "on") == "on"
pauses: list[tuple[float, int]] = []
started = [0.0]


def on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        pauses.append((time.perf_counter() - started[0], int(info["generation"])))


async def main() -> None:
    clock = UnixClock.start(time.time())
    engine = Engine(EngineConfig(server_id="g"), random_bytes=os.urandom, now=clock.now())
    shell = EngineShell(engine, clock)
    if not USE:
        shell.freezer.step = 10**12  # never freezes
    async with trio.open_nursery() as n:
        await n.start(shell.run)
        body = b"x" * 100
        t = time.perf_counter()
        for i in range(0, N, 1000):
            shell.call(
                "put_batch", {"jobs": [{"tube": f"t{i % 8}", "body": body} for _ in range(1000)]}
            )
            if i % 10000 == 0:
                await trio.lowlevel.checkpoint()
        el = time.perf_counter() - t
        n.cancel_scope.cancel()
    full = [p for p, g in pauses if g == 2]
    mode = "on " if USE else "off"
    print(
        f"freezer {mode}: {N:,} jobs in {el:.1f} s; collections {len(pauses)}, "
        f"max pause {max(p for p, _ in pauses) * 1000:.1f} ms, full collections {len(full)}, "
        f"max full {max(full, default=0) * 1000:.1f} ms, freezes {shell.freezer.freezes}"
    )


if __name__ == "__main__":
    gc.callbacks.append(on_gc)
    trio.run(main)
