"""`allq up`: an embedded cluster in one process tree (operations.md §1).

N queue servers (`s1`, `s2`, …) on loopback ports chosen by the kernel and one gateway
serving REST on `--port`, all in one Trio run:

    run_up
    └─ root nursery
       ├─ signal watcher      first SIGINT/SIGTERM: graceful stop; a second one: now
       ├─ run_server xN       (allq.server_process) sharing one ShutdownState
       └─ run_gateway         (allq.gateway.process) with a shutdown trigger

Keys are made on first start under `<data-dir>/keys/` (one pair per server, one client
pair for the gateway, the allow-list; secret files 0600) and reused afterwards. The
servers bind 127.0.0.1 only. Ctrl-C stops the gateway first, then drains the servers, and
the process exits 130; SIGTERM exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import trio

from allq.config import ConfigError, ServerConfig
from allq.gateway.process import GatewayProcessConfig, run_gateway
from allq.session import ShutdownState
from allq.tubes.config import EngineConfig
from allq.wire.keyfiles import (
    KeyPair,
    PublicKey,
    format_allow_line,
    write_public_key,
    write_secret_key,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class UpConfig:
    servers: int = 2
    host: str = "127.0.0.1"
    port: int = 8090
    data_dir: Path = Path(".allq")
    memory: bool = False
    api_token: str | None = None
    graceful_s: float = 5.0
    #: The gateway's line protocol (allq.gateway.line): 0 / None turn an endpoint off.
    line_port: int = 0
    socket_path: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.servers <= 16:
            raise ConfigError(f"setting servers = {self.servers!r}: must be 1 … 16")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"setting port = {self.port!r}: must be 0 … 65535")
        if not 0 <= self.line_port <= 65535:
            raise ConfigError(f"setting line_port = {self.line_port!r}: must be 0 … 65535")


@dataclass(frozen=True, slots=True)
class UpKeys:
    servers: list[tuple[Path, Path]]  # (secret key, public key) per server
    client: Path
    allow: Path


def ensure_keys(directory: Path, servers: int) -> UpKeys:
    """Make the embedded cluster's keys on first start; reuse them afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    client_key = directory / "gateway-client.key"
    allow = directory / "clients.allow"
    if not client_key.exists():
        pair = KeyPair.generate("client", "allq-up-gateway")
        write_secret_key(client_key, pair)
        write_public_key(directory / "gateway-client.pub", pair.public_key())
        allow.write_text(format_allow_line(pair.public_key()) + "\n")
        log.info("made a client key pair and allow-list under %s", directory)
    pairs = []
    for n in range(1, servers + 1):
        secret, public = directory / f"server-{n}.key", directory / f"server-{n}.pub"
        if not secret.exists():
            pair = KeyPair.generate("server", f"s{n}")
            write_secret_key(secret, pair)
            write_public_key(public, PublicKey(pair.public, "server", f"s{n}"))
        pairs.append((secret, public))
    return UpKeys(pairs, client_key, allow)


def banner(url: str, data_dir: Path, servers: int, memory: bool) -> str:
    return "\n".join(
        [
            "",
            f"allq is up: {servers} queue server(s) and a gateway",
            f"  REST API   {url}/v1/   (OpenAPI: {url}/openapi.json)",
            f"  dashboard  {url}/   (not served yet: it arrives with the observability issue)",
            f"  keys       {data_dir / 'keys'}",
            (
                "  storage    memory only (--memory): jobs are lost when allq up stops"
                if memory
                else f"  storage    {data_dir}/server-N/ (kept across restarts)"
            ),
            "",
            "Try it:",
            f'  curl -s -XPOST {url}/v1/tubes/hello/jobs -d \'{{"body": "hi"}}\'',
            f'  curl -s -XPOST {url}/v1/reserve -d \'{{"tubes": ["hello"], "timeout": 5}}\'',
            "",
            "Ctrl-C stops everything.",
            "",
        ]
    )


async def run_up(  # noqa: ASYNC128 (started by _start_all)
    config: UpConfig, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> int:
    """Run the embedded cluster until a signal; returns the exit code (130 on Ctrl-C)."""
    keys = ensure_keys(config.data_dir / "keys", config.servers)
    shutdown = ShutdownState(grace_s=config.graceful_s)
    stop_gateway = trio.Event()
    interrupted = False
    async with trio.open_nursery() as root:

        async def watch() -> None:
            nonlocal interrupted
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if stop_gateway.is_set():
                        log.warning("second signal: stopping now")
                        root.cancel_scope.cancel()
                        return
                    interrupted = signum == signal.SIGINT
                    log.info("signal %s: stopping the gateway, then the servers", signum)
                    stop_gateway.set()

        root.start_soon(watch)
        async with trio.open_nursery() as servers:
            url = await _start_all(config, keys, shutdown, stop_gateway, servers, task_status)
            log.info("allq up ready at %s", url)
        root.cancel_scope.cancel()  # every server has drained: stop the signal watcher
    log.info("allq up stopped")
    return 130 if interrupted else 0


async def _start_all(
    config: UpConfig,
    keys: UpKeys,
    shutdown: ShutdownState,
    stop_gateway: trio.Event,
    servers: trio.Nursery,
    task_status: trio.TaskStatus[str],
) -> str:
    """Start the servers, then the gateway; once the gateway stops, drain the servers."""
    addresses = []
    for n, (secret, _) in enumerate(keys.servers, start=1):
        server = ServerConfig(
            engine=EngineConfig(server_id=f"s{n}"),
            host="127.0.0.1",
            port=0,
            key_file=secret,
            allow_file=keys.allow,
            graceful_s=config.graceful_s,
            data_dir=None if config.memory else config.data_dir / f"server-{n}",
        )
        host, port = await servers.start(_server_task, server, shutdown)
        addresses.append(f"{host}:{port}")
    gateway = GatewayProcessConfig(
        servers=addresses,
        key_file=keys.client,
        server_key_file=None,
        server_public_key_files={
            address: public for address, (_, public) in zip(addresses, keys.servers, strict=True)
        },
        host=config.host,
        port=config.port,
        api_token=config.api_token,
        graceful_s=config.graceful_s,
        line_port=config.line_port,
        socket_path=config.socket_path,
    )

    async def gateway_task(task_status: trio.TaskStatus[tuple[str, int]]) -> None:  # noqa: ASYNC128
        try:
            await run_gateway(
                gateway,
                shutdown_trigger=stop_gateway.wait,
                wait_for_servers=len(addresses),
                task_status=task_status,
            )
        finally:
            shutdown.begin()  # the gateway is gone: the servers drain and stop

    host, port = await servers.start(gateway_task)
    url = f"http://{host}:{port}"
    print(banner(url, config.data_dir, config.servers, config.memory), flush=True)
    task_status.started(url)
    return url


async def _server_task(  # noqa: ASYNC128 (run_server starts it)
    config: ServerConfig,
    shutdown: ShutdownState,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    from allq.server_process import run_server

    await run_server(config, shutdown=shutdown, task_status=task_status)
