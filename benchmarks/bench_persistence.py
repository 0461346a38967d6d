"""Persistence figures (persistence.md §13): put/s per sync mode, log bytes per job,
fdatasync latency of this disk, recovery time, compaction time.

* put/s: a real `allq server` per mode (`--sync always|interval|never` with `--data-dir`
  in a fresh temporary directory on the benchmark's disk, and memory only), on loopback,
  driven by `--putters` concurrent putters spread over `--connections` connections (so
  `always` can group-commit); each run stops at `--count` puts or `--seconds`.
* log bytes per job: the data directory's size after the `never` run / puts.
* fdatasync latency: 4 KiB appended then `os.fdatasync`, `--syncs` times, in the directory.
* recovery: `--jobs` 100-byte jobs put by the engine and written by the real `LogWriter`
  (no network), then `recover()` + `restore()` timed; then one `compact()` timed, and
  recovery from the snapshot timed.
* `--worst-case JOBS` (alone): the recovery of the slowest directory of JOBS jobs that the
  compaction trigger lets stand (`write_worst_case`: a snapshot, then one-put records).

    .venv/bin/python -m benchmarks.bench_persistence --count 20000 --seconds 15 --jobs 200000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from allq.gcpause import paused_gc
from allq.store.compaction import compact
from allq.store.log import open_log_writer
from allq.store.recovery import recover
from allq.store.storage import OsStorage
from allq.tubes.config import EngineConfig
from allq.tubes.engine import Engine
from allq.tubes.replay import Replayer
from allq.wire.client import open_client
from allq.wire.keyfiles import keygen, load_public_key, load_secret_key
from benchmarks.procs import start

BODY = b"x" * 100


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.name != "LOCK")


async def put_rate(
    keys: Path, extra: list[str], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    server_args = [
        "server", "--port", "0", "--name", "b1", "--key", str(keys / "server.key"),
        "--allow", str(keys / "clients.allow"), *extra,
    ]  # fmt: skip
    process, (host, port) = start(server_args, work / "server.log")
    client_keys = load_secret_key(keys / "client-1.key")
    server_key = load_public_key(keys / "server.pub")
    done = 0
    try:
        async with trio.open_nursery() as nursery:
            clients = [
                await nursery.start(_client, host, port, client_keys, server_key)
                for _ in range(args.connections)
            ]
            started = time.perf_counter()

            async def putter(index: int) -> None:
                nonlocal done
                client = clients[index % len(clients)]
                while done < args.count:
                    await client.request("put", tube=f"t{index % 4}", body=BODY)
                    done += 1

            with trio.move_on_after(args.seconds):
                async with trio.open_nursery() as putters:
                    for index in range(args.putters):
                        putters.start_soon(putter, index)
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {"puts": done, "seconds": round(elapsed, 2), "put_per_s": round(done / elapsed)}


async def _client(
    host: str, port: int, keys: Any, server_key: Any, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    async with open_client(host, port, keys, server_key) as client:
        task_status.started(client)
        await trio.sleep_forever()


def fdatasync_latency(directory: Path, count: int) -> dict[str, float]:
    path = directory / "fdatasync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    samples = []
    try:
        for _ in range(count):
            os.write(fd, b"\0" * 4096)
            begin = time.perf_counter()
            os.fdatasync(fd)
            samples.append((time.perf_counter() - begin) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 3),
    }


def _logging_engine(directory: Path) -> tuple[Engine, OsStorage, float]:
    """An engine of server "b1" collecting its changes, the locked storage of `directory`,
    and the time of both."""
    now = time.time()
    engine = Engine(EngineConfig(server_id="b1"), random_bytes=os.urandom, now=now)
    engine.changelog.enabled = True
    storage = OsStorage(directory)
    storage.lock()
    return engine, storage, now


async def write_jobs(directory: Path, jobs: int) -> float:
    """`jobs` puts of 100-byte bodies through the engine and the real LogWriter."""
    engine, storage, now = _logging_engine(directory)
    started = time.perf_counter()
    async with open_log_writer(
        storage, server_id="b1", version="bench", seqs=engine.sequences, first_seq=1, prev=0,
        sync="never",
    ) as writer:  # fmt: skip
        for index in range(jobs):
            engine.handle("put", {"tube": f"t{index % 8}", "body": BODY}, now)
            writer.append(engine.take_changes())
            if index % 1000 == 0:
                await trio.lowlevel.checkpoint()
    storage.unlock()
    return time.perf_counter() - started


async def write_worst_case(directory: Path, batched: int, jobs: int) -> dict[str, Any]:
    """The slowest directory of `jobs` live jobs the compaction trigger lets stand: `batched`
    jobs put in `put_batch`es of 1,000 and compacted into a snapshot, then single puts (one
    record each, the slowest to recover) until the files reach the trigger, 3 x the
    snapshot's size (`Compactor.threshold`), or `jobs` jobs are live."""
    engine, storage, now = _logging_engine(directory)
    async with open_log_writer(
        storage, server_id="b1", version="bench", seqs=engine.sequences, first_seq=1, prev=0,
        sync="never",
    ) as writer:  # fmt: skip
        for start in range(0, batched, 1000):
            tube = f"t{start // 1000 % 8}"
            items = [{"tube": tube, "body": BODY} for _ in range(min(1000, batched - start))]
            engine.handle("put_batch", {"jobs": items}, now)
            writer.append(engine.take_changes())
            await trio.lowlevel.checkpoint()
    result = compact(storage, upto=10**9, config=engine.config, server_id="b1", version="bench")
    assert result is not None
    found = recover(storage)  # where the next segment goes, as the server finds it
    threshold = 3 * result.snapshot_bytes
    singles = 0
    async with open_log_writer(
        storage, server_id="b1", version="bench", seqs=engine.sequences,
        first_seq=found.next_seq, prev=found.prev, sync="never", base_bytes=found.log_bytes,
    ) as writer:  # fmt: skip
        while batched + singles < jobs and writer.statistics().log_bytes < threshold:
            engine.handle("put", {"tube": f"t{singles % 8}", "body": BODY}, now)
            writer.append(engine.take_changes())
            singles += 1
            if singles % 1000 == 0:
                await trio.lowlevel.checkpoint()
    storage.unlock()
    return {
        "batched_jobs": batched,
        "single_put_records": singles,
        "snapshot_bytes": result.snapshot_bytes,
        "files_bytes": dir_bytes(directory),
    }


def timed_recovery(directory: Path) -> dict[str, Any]:
    """Recovery of `directory` into an engine as the server does it (`recover()` streaming
    each record into a `Replayer`, then `finish()`): wall seconds, and CPU seconds of this
    process (less sensitive to other load on a shared machine)."""
    storage = OsStorage(directory)
    started, cpu = time.perf_counter(), time.process_time()
    engine = Engine(EngineConfig(server_id="b1"), random_bytes=os.urandom, now=time.time())
    replayer = Replayer(engine)
    with paused_gc():  # as the server does (server_process.open_persistence)
        result = recover(storage, sink=replayer)
        read, read_cpu = time.perf_counter() - started, time.process_time() - cpu
        replayer.finish()
    total, total_cpu = time.perf_counter() - started, time.process_time() - cpu
    storage.unlock()
    return {
        "jobs": len(engine.jobs),
        "bytes": result.bytes_read,
        "recover_s": round(read, 2),
        "recover_and_restore_s": round(total, 2),
        "recover_cpu_s": round(read_cpu, 2),
        "recover_and_restore_cpu_s": round(total_cpu, 2),
    }


async def main_async(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="allq-bench-persist-", dir=args.dir))
    out: dict[str, Any] = {"argv": sys.argv[1:]}
    try:
        if args.worst_case:
            data = base / "worst"
            jobs = args.worst_case
            # about half the jobs in the snapshot leaves room for the other half as single
            # puts under the trigger (3 x the snapshot: ~171 bytes per job in the snapshot,
            # ~356 per one-put record)
            shape = await write_worst_case(data, batched=jobs * 515 // 1000, jobs=jobs)
            print(json.dumps({"worst_case": {**shape, **timed_recovery(data)}}), flush=True)
            return
        keygen(base / "keys", clients=1, force=False)
        out["fdatasync_4k"] = fdatasync_latency(base, args.syncs)
        print(json.dumps({"fdatasync_4k": out["fdatasync_4k"]}), flush=True)
        modes: list[tuple[str, list[str]]] = [
            (mode, ["--data-dir", str(base / f"data-{mode}"), "--sync", mode])
            for mode in ("always", "interval", "never")
        ]
        modes.append(("memory", []))
        for mode, extra in modes:
            work = base / f"run-{mode}"
            work.mkdir()
            figure = await put_rate(base / "keys", extra, args, work)
            if extra:
                figure["log_bytes_per_job"] = round(
                    dir_bytes(base / f"data-{mode}") / figure["puts"], 1
                )
            out[f"put_{mode}"] = figure
            print(json.dumps({mode: figure}), flush=True)
        data = base / "recovery"
        written = await write_jobs(data, args.jobs)
        figure = {"write_s": round(written, 2), **timed_recovery(data)}
        figure["log_bytes_per_job"] = round(figure["bytes"] / args.jobs, 1)
        print(json.dumps({"recovery_log": figure}), flush=True)
        storage = OsStorage(data)
        storage.lock()
        started = time.perf_counter()
        result = compact(
            storage, upto=10**9, config=EngineConfig(server_id="b1"), server_id="b1",
            version="bench",
        )  # fmt: skip
        storage.unlock()
        compacted = {
            "compact_s": round(time.perf_counter() - started, 2),
            "snapshot_bytes": result.snapshot_bytes if result else None,
            **timed_recovery(data),
        }
        print(json.dumps({"recovery_snapshot": compacted}), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20000, help="puts per mode at most")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per mode at most")
    parser.add_argument("--putters", type=int, default=100)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=200_000, help="jobs for the recovery figure")
    parser.add_argument("--syncs", type=int, default=200, help="fdatasync samples")
    parser.add_argument("--dir", default=None, help="where the data directories go")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--worst-case",
        type=int,
        default=0,
        metavar="JOBS",
        help="only time the recovery of the slowest directory of JOBS live jobs the "
        "compaction trigger allows (see write_worst_case)",
    )
    trio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
