"""Event-loop lag while a server compacts (persistence.md §7, §12 P8).

Writes N jobs through the engine and the real `LogWriter` into a temporary directory,
then runs one compaction through the real `Compactor` (child process on real files) while
a heartbeat task sleeps 1 ms at a time; reports how late the heartbeat woke.

    .venv/bin/python -m benchmarks.bench_compaction_lag --jobs 50000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import trio

from allq.store.compaction import Compactor
from allq.store.log import open_log_writer
from allq.store.recovery import recover
from allq.store.storage import OsStorage
from allq.tubes.config import EngineConfig
from benchmarks.bench_persistence import write_jobs


async def measure(jobs: int) -> dict[str, object]:
    directory = Path(tempfile.mkdtemp(prefix="allq-bench-lag-"))
    await write_jobs(directory, jobs)
    storage = OsStorage(directory)
    recovered = recover(storage)
    lags: list[float] = []
    async with open_log_writer(
        storage, server_id="b1", version="bench", seqs=lambda: recovered.seqs,
        first_seq=recovered.next_seq, prev=recovered.prev, sync="never",
    ) as writer:  # fmt: skip
        compactor = Compactor(
            storage, writer, config=EngineConfig(server_id="b1"), server_id="b1",
            version="bench", floor_bytes=4096,
        )  # fmt: skip
        finished = trio.Event()

        async def heartbeat() -> None:
            while not finished.is_set():
                start = time.perf_counter()
                await trio.sleep(0.001)
                lags.append(time.perf_counter() - start - 0.001)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat)
            started = time.perf_counter()
            result = await compactor.compact_now()
            duration = time.perf_counter() - started
            finished.set()
    storage.unlock()
    lags.sort()
    return {
        "jobs": jobs,
        "compacted": result is not None,
        "compaction_s": round(duration, 2),
        "heartbeats": len(lags),
        "lag_p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 2),
        "lag_max_ms": round(lags[-1] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=50_000)
    args = parser.parse_args()
    print(json.dumps(trio.run(measure, args.jobs)))


if __name__ == "__main__":
    main()
