"""Support for the client, worker and CLI tests: a real gateway on loopback, and handlers.

`serving_gateway(tmp_path)` runs real queue servers and a real gateway core in this process
(`tests.helpers.cluster.local_cluster`) and serves the real REST app with Hypercorn on
127.0.0.1:0; it yields the base URL. The handlers at the bottom are imported by `allq work`
subprocesses (`--handler tests.client_support:...`) and report progress through files
named in the job body, never through sleeps.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from allq.client import Job
from allq.gateway.app import create_app
from allq.gateway.serve import serve_rest
from tests.helpers.cluster import Cluster, local_cluster


@dataclass
class Served:
    url: str
    cluster: Cluster


@asynccontextmanager
async def serving_gateway(
    tmp_path: Path, n: int = 2, *, api_token: str | None = None
) -> AsyncIterator[Served]:
    async with local_cluster(tmp_path, n) as cluster:
        app = create_app(
            cluster.gateway,
            api_token=api_token,
            max_body_bytes=4 * 1024 * 1024,
            max_inflight=1000,
            max_waiting=1000,
            long_poll_cap_s=300,
        )
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def serve(task_status: trio.TaskStatus[tuple[str, int]]) -> None:  # noqa: ASYNC128
                await serve_rest(
                    app,
                    host="127.0.0.1",
                    port=0,
                    shutdown_trigger=stop.wait,
                    graceful_timeout_s=1,
                    task_status=task_status,
                )

            host, port = await nursery.start(serve)
            try:
                yield Served(f"http://{host}:{port}", cluster)
            finally:
                stop.set()


# -- handlers for `allq work` subprocesses -----------------------------------------------------


def gated(job: Job) -> None:
    """Body `{"started": path, "gate": fifo}`: note the start, then block on the FIFO until
    the test writes a line to it (the test decides when the job finishes)."""
    spec = json.loads(job.body)
    started = Path(spec["started"])
    partial = started.with_suffix(".partial")
    partial.write_text(job.id)
    partial.replace(started)  # atomic: the test never reads a half-written file
    with Path(spec["gate"]).open() as gate:
        gate.readline()
