"""Queue server over the encrypted wire on loopback: handshakes/s, put/s, reserve+done/s.

Starts a real `allq server` process on a free loopback port with fresh keys, drives it
from this process with the pipelining client, and reports each figure with the server's
and the load generator's CPU seconds. Bounded: every phase stops at `--count` operations
or `--seconds`, whichever comes first.

    .venv/bin/python -m benchmarks.bench_server --count 20000 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from allq.wire.client import Client, open_client
from allq.wire.keyfiles import KeyPair, PublicKey, keygen, load_public_key, load_secret_key
from benchmarks.procs import cpu_seconds, own_cpu, start

LISTENING = re.compile(r"listening on ([0-9.]+):(\d+)")
BODY = b"x" * 100
PHASES = ("handshake", "sequential", "pipelined")


async def measure(
    name: str, pid: int, count: int, seconds: float, step: Callable[[int], Awaitable[int]]
) -> dict[str, Any]:
    """Run `step(i)` (which returns how many operations it did) until count or seconds."""
    server_cpu, client_cpu, start = cpu_seconds(pid), own_cpu(), time.perf_counter()
    done = 0
    with trio.move_on_after(seconds):
        while done < count:
            done += await step(done)
    elapsed = time.perf_counter() - start
    result = {
        "phase": name,
        "ops": done,
        "seconds": round(elapsed, 3),
        "ops_per_s": round(done / elapsed),
        "server_cpu_s_per_1000": round((cpu_seconds(pid) - server_cpu) / done * 1000, 4),
        "client_cpu_s_per_1000": round((own_cpu() - client_cpu) / done * 1000, 4),
    }
    print(json.dumps(result), flush=True)
    return result


#: How `pipelined` issues a window: "batch" = `Client.start_batch` (one write for the
#: window, like the beanstalkd reference client), "tasks" = one task per request calling
#: `Client.request` (the shape of concurrent gateway callers; writes coalesce per tick).
#: ALLQ_BENCH_CLIENT sets the default (so `benchmarks.suite` can run either shape).
CLIENT_MODES = ("batch", "tasks")
client_mode = os.environ.get("ALLQ_BENCH_CLIENT", "batch")


async def pipelined(
    client: Client, op: str, fields_for: Callable[[int], dict[str, Any]], n: int
) -> list[object]:
    """`n` requests in flight at once; their results in order."""
    if client_mode == "batch":
        pending = await client.start_batch([(op, fields_for(i)) for i in range(n)])
        return [await request.wait() for request in pending]
    results: list[object] = [None] * n

    async def one(i: int) -> None:
        results[i] = await client.request(op, **fields_for(i))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return results


async def run(
    args: argparse.Namespace, keys: Path, host: str, port: int, pid: int
) -> list[dict[str, Any]]:
    client_keys: KeyPair = load_secret_key(keys / "client-1.key")
    server_key: PublicKey = load_public_key(keys / "server.pub")
    results = []

    async def handshake(_: int) -> int:
        async with open_client(host, port, client_keys, server_key):
            pass
        return 1

    phases = set(args.phases.split(",")) if args.phases != "all" else set(PHASES)
    if phases - set(PHASES):
        raise SystemExit(f"unknown phase(s): {sorted(phases - set(PHASES))}")
    if "handshake" in phases:
        results.append(
            await measure("handshake", pid, min(args.count, 500), args.seconds, handshake)
        )
    async with open_client(host, port, client_keys, server_key) as client:

        async def put_sequential(_: int) -> int:
            await client.request("put", tube="seq", body=BODY)
            return 1

        async def reserve_done_sequential(_: int) -> int:
            jobs = await client.request("reserve", tubes=["seq"])
            await client.request("done", job_id=jobs[0]["id"], lease=jobs[0]["lease"])
            return 1

        depth: int = args.depth

        async def put_pipelined(_: int) -> int:
            await pipelined(client, "put", lambda i: {"tube": "pipe", "body": BODY}, depth)
            return depth

        async def reserve_done_pipelined(_: int) -> int:
            batches = await pipelined(client, "reserve", lambda i: {"tubes": ["pipe"]}, depth)
            jobs: list[Any] = [batch[0] for batch in batches]  # type: ignore[index]
            await pipelined(
                client,
                "done",
                lambda i: {"job_id": jobs[i]["id"], "lease": jobs[i]["lease"]},
                depth,
            )
            return depth

        if "sequential" in phases:
            results.append(
                await measure("put sequential", pid, args.count, args.seconds, put_sequential)
            )
            results.append(
                await measure(
                    "reserve+done sequential",
                    pid,
                    results[-1]["ops"],
                    args.seconds,
                    reserve_done_sequential,
                )
            )
        if "pipelined" in phases:
            name = f"x{depth} ({client_mode} client)"
            results.append(
                await measure(f"put pipelined {name}", pid, args.count, args.seconds, put_pipelined)
            )
            results.append(
                await measure(
                    f"reserve+done pipelined {name}",
                    pid,
                    results[-1]["ops"],
                    args.seconds,
                    reserve_done_pipelined,
                )
            )
    return results


def main() -> None:
    global client_mode
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000, help="operations per phase (max)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time per phase (max)")
    parser.add_argument("--depth", type=int, default=100, help="requests in flight when pipelined")
    parser.add_argument(
        "--client",
        choices=CLIENT_MODES,
        default=client_mode,
        help="pipelined window: one start_batch write, or one task per request",
    )
    parser.add_argument(
        "--phases",
        default="all",
        help="comma-separated: handshake,sequential,pipelined (default all)",
    )
    parser.add_argument("--server-log", type=Path, help="copy the server's log here at the end")
    args = parser.parse_args()
    client_mode = args.client
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        keygen(keys, clients=1, force=False)
        log_path = Path(tmp) / "server.log"
        process, (host, port) = start(
            ["server", "--port", "0", "--name", "bench", "--key", str(keys / "server.key"),
             "--allow", str(keys / "clients.allow"), "--handshake-rate", "100000",
             "--handshake-rate-per-source", "100000"],
            log_path,
        )  # fmt: skip
        try:
            trio.run(run, args, keys, host, port, process.pid)
        except BaseException:
            print(log_path.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            process.terminate()
            process.wait(timeout=20)
            if args.server_log is not None:
                args.server_log.write_text(log_path.read_text())


if __name__ == "__main__":
    main()
