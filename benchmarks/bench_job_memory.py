"""Bytes per queued job inside one engine (performance.md B7, without sockets or a server).

Puts N ready 100-byte jobs into one tube through `Engine.handle("put_batch", ...)` in
batches of 1,000, as the wire server does, with a distinct body and tube-name object per
job (a CBOR decoder makes new ones per request). Two measurements, each in a fresh child
process (same interpreter, no other allocations):

* `rss`: growth of VmRSS per job (what B7 measures for the whole server);
* `traced`: tracemalloc per job, by allocating source line (top lines), plus the sizes of
  one job's objects (`sys.getsizeof`).

    .venv/bin/python -m benchmarks.bench_job_memory --jobs 100000 [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from typing import Any

from allq.tubes.config import EngineConfig
from allq.tubes.engine import Engine

BODY = b"x" * 100
BATCH = 1000


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _fill(engine: Engine, jobs: int) -> None:
    now = engine.now
    for first in range(0, jobs, BATCH):
        now += 0.001
        batch = [
            {"tube": "".join(["b", "7"]), "body": bytes(bytearray(BODY))}
            for _ in range(min(BATCH, jobs - first))
        ]
        engine.handle("put_batch", {"jobs": batch}, now)


def _engine() -> Engine:
    engine = Engine(EngineConfig(server_id="m1"), random_bytes=os.urandom, now=1000.0)
    _fill(engine, 1)  # the tube and the engine's first-use allocations
    return engine


def measure_rss(jobs: int) -> dict[str, Any]:
    engine = _engine()
    gc.collect()
    before = _rss_bytes()
    _fill(engine, jobs)
    gc.collect()
    grown = _rss_bytes() - before
    return {"jobs": jobs, "rss_growth_mib": round(grown / 1048576, 1),
            "bytes_per_job": round(grown / jobs)}  # fmt: skip


def measure_traced(jobs: int, top: int) -> dict[str, Any]:
    engine = _engine()
    gc.collect()
    tracemalloc.start(1)
    start = tracemalloc.take_snapshot()
    _fill(engine, jobs)
    gc.collect()
    stats = tracemalloc.take_snapshot().compare_to(start, "lineno")
    tracemalloc.stop()
    lines = [
        {
            "where": str(stat.traceback),
            "bytes_per_job": round(stat.size_diff / jobs, 1),
            "objects_per_job": round(stat.count_diff / jobs, 2),
        }
        for stat in stats[:top]
        if stat.size_diff > 0
    ]
    job = next(reversed(engine.jobs.values()))
    sizes = {
        "job": sys.getsizeof(job),
        "job.id": sys.getsizeof(job.id),
        "job.body": sys.getsizeof(job.body),
        "job.put_seq": sys.getsizeof(job.put_seq),
        "job.ready_seq": sys.getsizeof(job.ready_seq),
        "job.created_at": sys.getsizeof(job.created_at),
    }
    return {"jobs": jobs, "bytes_per_job": round(sum(s.size_diff for s in stats) / jobs, 1),
            "top_lines": lines, "sizes": sizes}  # fmt: skip


def _child(kind: str, jobs: int, top: int) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (nothing else on its heap)."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_job_memory", "--child", kind,
         "--jobs", str(jobs), "--top", str(top)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--top", type=int, default=12, help="tracemalloc lines shown")
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--child", choices=["rss", "traced"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "rss":
        print(json.dumps(measure_rss(args.jobs)))
        return
    if args.child == "traced":
        print(json.dumps(measure_traced(args.jobs, args.top)))
        return
    print(f"filling one engine with {args.jobs:,} ready 100-byte jobs (twice) ...", flush=True)
    rss = _child("rss", args.jobs, args.top)
    traced = _child("traced", args.jobs, args.top)
    print(f"RSS growth: {rss['bytes_per_job']} bytes/job ({rss['rss_growth_mib']} MiB)")
    print(f"tracemalloc: {traced['bytes_per_job']} bytes/job; by line:")
    for line in traced["top_lines"]:
        per_job, objects = line["bytes_per_job"], line["objects_per_job"]
        print(f"  {per_job:8.1f} B  {objects:5.2f} obj  {line['where']}")
    print("one job's objects (sys.getsizeof): "
          + ", ".join(f"{name} {size}" for name, size in traced["sizes"].items()))  # fmt: skip
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"rss": rss, "traced": traced}, out, indent=2)


if __name__ == "__main__":
    main()
