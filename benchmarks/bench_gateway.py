"""REST through the gateway on loopback: put+reserve cycles/s and idle pickup latency.

Starts real `allq server` processes and an `allq gateway` (with `--workers 1` and then
`--workers 2`), drives it with raw h11 keep-alive clients on Trio (the load generator
reports its own CPU), and prints one JSON line per measurement. Bounded in count and time.

    .venv/bin/python -m benchmarks.bench_gateway --seconds 10 --workers-list 1,2

B1 shape: each of `--concurrency` clients loops put -> reserve (acknowledging its
previous job with `done` folded into the reserve), so a cycle is 2 HTTP requests.
Pickup: one worker long-polls, a second client puts; latency is put-sent -> job-received.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from allq.client.raw import JsonHttp
from allq.wire.keyfiles import keygen
from benchmarks.procs import cpu_seconds, own_cpu, start

BODY = "x" * 100


async def cycles(
    address: tuple[str, int], concurrency: int, seconds: float, tube: str
) -> tuple[int, int]:
    """(jobs completed, error answers) over `seconds` of B1-shaped load."""
    done_count = 0
    errors = 0

    async def client() -> None:
        nonlocal done_count, errors
        http = await JsonHttp.connect(address)
        ack: list[dict[str, str]] = []
        with trio.move_on_after(seconds):
            while True:
                status, _ = await http.request("POST", f"/v1/tubes/{tube}/jobs", {"body": BODY})
                errors += status != 201
                status, body = await http.request(
                    "POST", "/v1/reserve", {"tubes": [tube], "timeout": 1, "done": ack}
                )
                if status != 200:
                    errors += 1
                    ack = []
                    continue
                ack = [{"id": j["id"], "lease": j["lease"]} for j in body["jobs"]]
                done_count += len(ack)
        await http.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    return done_count, errors


async def pickup(address: tuple[str, int], samples: int) -> list[float]:
    async with await JsonHttp.connect(address) as worker, await JsonHttp.connect(address) as putter:
        return await _pickup(worker, putter, samples)


async def _pickup(worker: JsonHttp, putter: JsonHttp, samples: int) -> list[float]:
    latencies: list[float] = []
    for i in range(samples):
        sent_at = 0.0
        got_at = 0.0
        ready = trio.Event()

        async def wait(ready: trio.Event = ready) -> None:
            nonlocal got_at
            ready.set()
            _status, body = await worker.request(
                "POST", "/v1/reserve", {"tubes": ["pickup"], "timeout": 10}
            )
            got_at = time.perf_counter()
            job = body["jobs"][0]
            await worker.request("POST", f"/v1/jobs/{job['id']}/done", {"lease": job["lease"]})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await ready.wait()
            await trio.sleep(0.05)  # let the long poll reach every server
            sent_at = time.perf_counter()
            await putter.request("POST", "/v1/tubes/pickup/jobs", {"body": str(i)})
        latencies.append(got_at - sent_at)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--workers-list", default="1,2")
    parser.add_argument("--pickup-samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keygen(root / "keys", clients=1, force=False)
        keys = root / "keys"
        servers = []
        try:
            for i in range(args.servers):
                process, (host, port) = start(
                    [
                        "server",
                        "--port",
                        "0",
                        "--name",
                        f"s{i + 1}",
                        "--key",
                        str(keys / "server.key"),
                        "--allow",
                        str(keys / "clients.allow"),
                    ],
                    root / f"s{i}.log",
                )
                servers.append((process, f"{host}:{port}"))
            for workers in [int(w) for w in args.workers_list.split(",")]:
                gateway, address = start_gateway(workers, servers, keys, root)
                try:
                    server_cpu = sum(cpu_seconds(p.pid) for p, _ in servers)
                    gateway_cpu, client_cpu, t0 = (
                        cpu_seconds(gateway.pid, with_children=True),
                        own_cpu(),
                        time.perf_counter(),
                    )
                    done, errors = trio.run(
                        cycles, address, args.concurrency, args.seconds, f"b{workers}"
                    )
                    elapsed = time.perf_counter() - t0
                    result = {
                        "measure": "rest_cycle (put + reserve with done folded in)",
                        "gateway_workers": workers,
                        "servers": args.servers,
                        "concurrency": args.concurrency,
                        "jobs": done,
                        "error_answers": errors,
                        "jobs_per_s": round(done / elapsed),
                        "gateway_cpu_s_per_1000": round(
                            (cpu_seconds(gateway.pid, with_children=True) - gateway_cpu)
                            / done
                            * 1000,
                            3,
                        ),
                        "server_cpu_s_per_1000": round(
                            (sum(cpu_seconds(p.pid) for p, _ in servers) - server_cpu)
                            / done
                            * 1000,
                            3,
                        ),
                        "loadgen_cpu_s_per_1000": round((own_cpu() - client_cpu) / done * 1000, 3),
                    }
                    print(json.dumps(result), flush=True)
                    if workers == 1:
                        lat = trio.run(pickup, address, args.pickup_samples)
                        print(
                            json.dumps(
                                {
                                    "measure": "idle pickup latency (put sent -> job received)",
                                    "samples": len(lat),
                                    "p50_ms": round(statistics.median(lat) * 1000, 2),
                                    "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
                                    "max_ms": round(max(lat) * 1000, 2),
                                }
                            ),
                            flush=True,
                        )
                finally:
                    gateway.terminate()
                    gateway.wait(timeout=30)
        finally:
            for process, _ in servers:
                process.terminate()
                process.wait(timeout=30)


def start_gateway(
    workers: int, servers: list[tuple[subprocess.Popen[bytes], str]], keys: Path, root: Path
) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    """The gateway on a free port with logging at WARNING (no access log lines)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = root / f"gateway-{workers}.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "allq",
                "gateway",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--log-level",
                "WARNING",
                "--line-port",
                "0",
                "--socket",
                "off",
                "--servers",
                ",".join(a for _, a in servers),
                "--key",
                str(keys / "client-1.key"),
                "--server-key",
                str(keys / "server.pub"),
            ],
            stderr=handle,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                if b" 200 " in conn.recv(1024):
                    return process, ("127.0.0.1", port)
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"allq gateway did not start:\n{log.read_text()}")
        time.sleep(0.1)


if __name__ == "__main__":
    main()
