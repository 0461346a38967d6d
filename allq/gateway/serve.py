"""Serving the REST app with Hypercorn's trio worker, in one process or in N.

`serve_rest` owns the listening socket: it binds it itself (so port 0 works and the bound
address is known before Hypercorn starts), listens with a large backlog, and hands it to
Hypercorn's trio worker (`hypercorn.trio.run.worker_serve(..., sockets=...)`, the same
entry Hypercorn's own multi-process runner uses; the public `serve()` cannot take a
socket). The bound `(host, port)` goes up through `task_status`.

Multi-process (`allq gateway --workers N`): `run_workers` binds one socket in the parent
and starts N spawned processes that inherit it (Hypercorn's own model). Each process runs
`target(sock)`: its own trio loop, its own gateway core, its own `serve_rest(sock=...)`.
The kernel hands each new connection to whichever process accepts first. Workers ignore
SIGINT/SIGTERM; the parent alone handles them (a Ctrl-C reaches the whole process group, so
forwarding would deliver two signals): the first closes a pipe whose read end each worker
awaits as its shutdown trigger (so the workers also drain if the parent dies), a second
kills them. If a worker dies unexpectedly, the others are stopped and its code returned.

Resource handling: a socket passed in (`sock=`) is closed by Hypercorn's listener when
serving ends; one created here is closed here.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_processes
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

log = logging.getLogger(__name__)
ACCESS_LOG = logging.getLogger("allq.gateway.access")
ERROR_LOG = logging.getLogger("allq.gateway.http")

DEFAULT_BACKLOG = 2048
DEFAULT_KEEP_ALIVE_S = 30.0


def listening_socket(
    host: str, port: int, *, backlog: int = DEFAULT_BACKLOG, reuse_port: bool = False
) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (IPv4 or IPv6 by `host`)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_address(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])


def hypercorn_config(
    *,
    graceful_timeout_s: float,
    backlog: int = DEFAULT_BACKLOG,
    keep_alive_timeout_s: float = DEFAULT_KEEP_ALIVE_S,
    access_log: bool = True,
) -> Config:
    config = Config()
    config.backlog = backlog
    config.graceful_timeout = graceful_timeout_s
    config.keep_alive_timeout = keep_alive_timeout_s
    # Hypercorn formats every access line before the logger's level is looked at (~5 % of
    # the gateway's CPU at WARNING), so the logger is only given when it would write.
    config.accesslog = ACCESS_LOG if access_log and ACCESS_LOG.isEnabledFor(logging.INFO) else None
    config.errorlog = ERROR_LOG
    config.include_server_header = False
    return config


class _ReportAddress:
    """Hypercorn reports its bind URLs; we report the bound `(host, port)` instead."""

    def __init__(self, task_status: trio.TaskStatus[tuple[str, int]], address: tuple[str, int]):
        self._task_status = task_status
        self._address = address

    def started(self, value: object = None) -> None:
        self._task_status.started(self._address)


async def serve_rest(  # noqa: ASYNC128 - Hypercorn calls started() via _ReportAddress
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8090,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout_s: float = 10.0,
    sock: socket.socket | None = None,
    backlog: int = DEFAULT_BACKLOG,
    keep_alive_timeout_s: float = DEFAULT_KEEP_ALIVE_S,
    access_log: bool = True,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger()` returns, then drain for `graceful_timeout_s`.

    Binds `host:port` (port 0: any free port) unless a listening `sock` is given.
    """
    own = sock is None
    if sock is None:
        sock = listening_socket(host, port, backlog=backlog)
    try:
        config = hypercorn_config(
            graceful_timeout_s=graceful_timeout_s,
            backlog=backlog,
            keep_alive_timeout_s=keep_alive_timeout_s,
            access_log=access_log,
        )
        address = bound_address(sock)
        await worker_serve(
            wrap_app(app, config.wsgi_max_body_size, "asgi"),
            config,
            sockets=Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[]),
            shutdown_trigger=shutdown_trigger,
            task_status=_ReportAddress(task_status, address),
        )
    finally:
        if own:
            sock.close()


async def until_signal(*signums: int) -> None:
    """A shutdown trigger: returns at the first of `signums` (default SIGINT, SIGTERM)."""
    with trio.open_signal_receiver(*(signums or (signal.SIGINT, signal.SIGTERM))) as signals:
        async for _ in signals:
            return


# -- several processes ------------------------------------------------------------------------

#: `target(sock, shutdown_trigger)`: serve on `sock` until `await shutdown_trigger()` returns.
WorkerTarget = Callable[[socket.socket, Callable[[], Awaitable[None]]], Awaitable[None]]


def _worker_main(target: WorkerTarget, sock: socket.socket, stop: Connection) -> None:
    # The parent alone reacts to signals (a Ctrl-C reaches the whole process group); it
    # stops the workers by closing its end of `stop`, which also happens if it dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    async def shutdown_trigger() -> None:
        await trio.lowlevel.wait_readable(stop.fileno())

    trio.run(target, sock, shutdown_trigger)


class WorkerPool:
    """N spawned processes serving one inherited listening socket (see module docstring)."""

    def __init__(self, n: int, target: WorkerTarget, sock: socket.socket) -> None:
        if n < 1:
            raise ValueError("a worker pool needs at least one worker")
        context = multiprocessing.get_context("spawn")
        self.sock = sock
        self._stop_reader, self._stop_writer = context.Pipe(duplex=False)
        self.processes: list[BaseProcess] = [
            context.Process(
                target=_worker_main,
                args=(target, sock, self._stop_reader),
                name=f"allq-gateway-{i}",
                daemon=True,
            )
            for i in range(n)
        ]

    def start(self) -> None:
        for process in self.processes:
            process.start()
        self._stop_reader.close()
        host, port = bound_address(self.sock)
        log.info("started %d gateway workers on %s:%s", len(self.processes), host, port)

    def wait_any(self, timeout_s: float | None) -> list[BaseProcess]:
        """Block until a worker exits (or the timeout); the exited workers."""
        live = [p for p in self.processes if p.exitcode is None]
        if live:
            wait_for_processes([p.sentinel for p in live], timeout=timeout_s)
        return [p for p in self.processes if p.exitcode is not None]

    def request_stop(self) -> None:
        """Every worker starts its graceful shutdown."""
        self._stop_writer.close()

    def kill(self) -> None:
        for process in self.processes:
            if process.exitcode is None:
                process.kill()

    def stop(self, timeout_s: float) -> int:
        """Graceful stop, up to `timeout_s`, then kill; the first non-zero exit code or 0."""
        self.request_stop()
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.exitcode is None:
                log.warning(
                    "gateway worker %s did not stop in %.1f s: killed", process.pid, timeout_s
                )
                process.kill()
                process.join()
        return next((p.exitcode for p in self.processes if p.exitcode), 0) or 0


def run_workers(
    n: int,
    target: WorkerTarget,
    *,
    host: str = "127.0.0.1",
    port: int = 8090,
    backlog: int = DEFAULT_BACKLOG,
    stop_timeout_s: float = 30.0,
) -> int:
    """Run `target(sock, shutdown_trigger)` in `n` processes sharing one socket; exit code.

    Blocks (no trio in the parent: it only supervises). Call it from the main thread.
    `target` must be a module-level async function (it is pickled into the workers). The
    first SIGINT/SIGTERM stops the workers gracefully; a second one kills them.
    """
    signals_seen = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            pool.kill()

    with listening_socket(host, port, backlog=backlog) as sock:
        pool = WorkerPool(n, target, sock)
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            pool.start()
            code = 0
            while not signals_seen:
                exited = pool.wait_any(0.2)
                if exited:
                    code = next((p.exitcode for p in exited if p.exitcode), 0) or 1
                    log.error("gateway worker %s exited (%s): stopping all", exited[0].pid, code)
                    break
            return pool.stop(stop_timeout_s) or code
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
