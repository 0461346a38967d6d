"""The compatibility fronts on loopback: put+get+done cycles/s over the line protocol and
over the legacy REST routes.

Starts real `allq server` processes and one `allq gateway` with the line protocol on a
free TCP port, drives it with `--concurrency` Trio clients for `--seconds` per mode, and
prints one JSON line per mode (jobs/s and CPU-seconds per 1,000 jobs of each process,
the load generator's included). Bounded in count and time; loopback only.

    .venv/bin/python -m benchmarks.bench_compat --seconds 8

Modes (each client loops one job at a time):
  line_original  put -> get -> done: the original actions, 3 lines per job
  line_v1        put -> reserve with the previous job's done folded in: 2 lines per job
  rest_legacy    POST /job -> GET /job?tube= -> PUT /done?job_id=: 3 HTTP requests per job
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import trio

from allq.client.raw import JsonHttp
from allq.wire.keyfiles import keygen
from benchmarks.procs import cpu_seconds, own_cpu, start

BODY = "x" * 100


class Line:
    """A pipelining-capable line-protocol client (one request at a time here)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def call(self, action: str, params: dict[str, Any]) -> Any:
        data = json.dumps({"action": action, "params": params}).encode() + b"\n"
        await self.stream.send_all(data)
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("the gateway closed the line connection")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)


Counter = dict[str, int]
#: The first error answer seen, printed with the results.
first_error: dict[str, Any] = {}


async def line_original(address: tuple[str, int], tube: str, stop: float, n: Counter) -> None:
    line = Line(await trio.open_tcp_stream(*address))
    async with line.stream:
        while time.monotonic() < stop:
            put = await line.call("put", {"tube": tube, "body": BODY})
            got = await line.call("get", {"tube": tube})
            job = got.get("job") or {}
            if "error" in put or not job:
                failed = put.get("error") or got.get("error")
                if failed:
                    n["errors"] += 1
                    first_error.setdefault("error", failed)
                else:
                    n["empty"] += 1
                continue
            done = await line.call("done", {"job_id": job["job_id"]})
            n["errors" if "error" in done else "jobs"] += 1


async def line_v1(address: tuple[str, int], tube: str, stop: float, n: Counter) -> None:
    line = Line(await trio.open_tcp_stream(*address))
    ack: list[dict[str, str]] = []
    async with line.stream:
        while time.monotonic() < stop:
            put = await line.call("put_jobs", {"tube": tube, "body": BODY})
            n["errors"] += "error" in put
            got = await line.call("reserve", {"tubes": [tube], "timeout": 1, "done": ack})
            if "error" in got:
                n["errors"] += 1
                ack = []
                continue
            n["jobs"] += len(ack)
            ack = [{"id": j["id"], "lease": j["lease"]} for j in got["jobs"]]


async def rest_legacy(address: tuple[str, int], tube: str, stop: float, n: Counter) -> None:
    http = await JsonHttp.connect(address)
    while time.monotonic() < stop:
        try:
            status, _ = await http.request("POST", "/job", {"tube": tube, "body": BODY})
            n["errors"] += status != 200
            status, job = await http.request("GET", f"/job?tube={tube}")
            if status != 200 or not job:
                n["errors" if status != 200 else "empty"] += 1
                continue
            status, _ = await http.request("PUT", f"/done?job_id={job['id']}")
            n["errors" if status != 200 else "jobs"] += 1
        except h11.LocalProtocolError:  # Hypercorn closes a connection after 1,000 requests
            await http.aclose()
            http = await JsonHttp.connect(address)
            n["reconnects"] += 1
    await http.aclose()


Mode = Callable[[tuple[str, int], str, float, Counter], Awaitable[None]]
MODES: dict[str, Mode] = {
    "line_original": line_original,
    "line_v1": line_v1,
    "rest_legacy": rest_legacy,
}


async def drive(mode: Mode, address: tuple[str, int], concurrency: int, seconds: float) -> Counter:
    counts: Counter = {"jobs": 0, "errors": 0, "empty": 0, "reconnects": 0}
    stop = time.monotonic() + seconds
    async with trio.open_nursery() as nursery:
        for i in range(concurrency):
            nursery.start_soon(mode, address, f"c{i % 10}", stop, counts)
    return counts


async def wait_ready(address: tuple[str, int], servers: int) -> None:
    """Until the gateway reports every server up (it links to them after it listens)."""
    http = await JsonHttp.connect(address)
    with trio.fail_after(30):
        while True:
            _, body = await http.request("GET", "/v1/servers")
            if sum(s["state"] == "up" for s in body["servers"]) == servers:
                break
            await trio.sleep(0.1)
    await http.aclose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keys = root / "keys"
        keygen(keys, clients=1, force=False)
        processes: list[subprocess.Popen[bytes]] = []
        try:
            addresses = []
            for i in range(args.servers):
                server, (host, port) = start(
                    ["server", "--port", "0", "--name", f"s{i + 1}",
                     "--key", str(keys / "server.key"), "--allow", str(keys / "clients.allow")],
                    root / f"s{i}.log",
                )  # fmt: skip
                processes.append(server)
                addresses.append(f"{host}:{port}")
            line_port = free_port()
            gateway, rest = start(
                ["gateway", "--port", "0", "--line-port", str(line_port), "--socket", "off",
                 "--log-level", "INFO", "--servers", ",".join(addresses),
                 "--key", str(keys / "client-1.key"), "--server-key", str(keys / "server.pub")],
                root / "gateway.log",
            )  # fmt: skip
            processes.append(gateway)
            trio.run(wait_ready, rest, args.servers)
            for name in args.modes.split(","):
                address = ("127.0.0.1", line_port) if name.startswith("line") else rest
                cpu_before = [cpu_seconds(p.pid) for p in processes]
                own_before, t0 = own_cpu(), time.perf_counter()
                counts = trio.run(drive, MODES[name], address, args.concurrency, args.seconds)
                elapsed = time.perf_counter() - t0
                jobs = max(counts["jobs"], 1)
                cpu = [cpu_seconds(p.pid) - c for p, c in zip(processes, cpu_before, strict=True)]
                result = {
                    "measure": f"compat {name} (put + get + done per job)",
                    "servers": args.servers,
                    "concurrency": args.concurrency,
                    **counts,
                    "jobs_per_s": round(counts["jobs"] / elapsed),
                    "gateway_cpu_s_per_1000": round(cpu[-1] / jobs * 1000, 3),
                    "server_cpu_s_per_1000": round(sum(cpu[:-1]) / jobs * 1000, 3),
                    "loadgen_cpu_s_per_1000": round((own_cpu() - own_before) / jobs * 1000, 3),
                    "first_error": first_error.pop("error", None),
                }
                print(json.dumps(result), flush=True)
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(timeout=30)


if __name__ == "__main__":
    main()
