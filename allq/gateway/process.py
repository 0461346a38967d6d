"""The `allq gateway` process: keys, the gateway core, the REST front, signals.

Task tree (design.md §2.2):

    run_gateway
    └─ root nursery
       ├─ signal watcher        SIGINT/SIGTERM: graceful stop; a second one: stop now
       ├─ open_gateway          one link task per queue server (connect, probe, failover)
       ├─ serve_rest            hypercorn.trio.serve(app, ...) with shutdown_trigger
       └─ serve_line            the line protocol (allq.gateway.line), when configured

The core runs beside Hypercorn, not inside the app's lifespan, so a crashing core crashes
the process and the app can be tested without lifespan (design.md §2.2, pitfall 17).
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from allq.config import ConfigError
from allq.gateway.cluster import GatewayConfig, ServerSpec, open_gateway, wait_until_ready
from allq.gateway.health import HealthPolicy
from allq.gateway.links import LinkSettings, ServerAddress
from allq.settings import BY_SECTION
from allq.wire.keyfiles import KeyFileError, load_public_key, load_secret_key

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from allq.gateway.core import GatewayCore
    from allq.gateway.line import LineConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayProcessConfig:
    """Everything `allq gateway` needs (operations.md §2)."""

    servers: list[str]
    key_file: Path | None
    server_key_file: Path | None
    #: Per-server public keys (address -> file), for servers that do not share one pair.
    server_public_key_files: dict[str, Path] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8090
    api_token: str | None = None
    workers: int = 1
    graceful_s: float = 10.0
    max_body_bytes: int = 1_048_576 * 2
    max_inflight: int = 10_000
    max_waiting: int = 10_000
    long_poll_cap_s: float = 300.0
    log_level: str = "INFO"
    log_json: bool = False
    health: HealthPolicy = field(default_factory=HealthPolicy)
    links: LinkSettings = field(default_factory=LinkSettings)
    # -- the line protocol (api.md §4): `line_port` 0 and `socket_path` None turn it off
    line_port: int = 0
    socket_path: Path | None = None
    line_max_connections: int = 1024

    def __post_init__(self) -> None:
        if not 0 <= self.line_port <= 65535:
            raise ConfigError(f"setting line_port = {self.line_port!r}: must be 0 … 65535")
        if self.line_max_connections < 1:
            raise ConfigError(
                f"setting line_max_connections = {self.line_max_connections!r}: must be ≥ 1"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"setting port = {self.port!r}: must be 0 … 65535")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"setting workers = {self.workers!r}: must be 1 … 64")
        for name in ("max_inflight", "max_waiting"):
            if getattr(self, name) < 1:
                raise ConfigError(f"setting {name} = {getattr(self, name)!r}: must be ≥ 1")
        if not 0 < self.long_poll_cap_s <= 300:
            raise ConfigError(
                f"setting long_poll_cap_s = {self.long_poll_cap_s!r}: must be in (0, 300]"
            )
        for address in self.servers:
            try:
                ServerAddress.parse(address)
            except ValueError as exc:
                raise ConfigError(f"setting servers: {exc}") from None


def rest_app(core: GatewayCore, config: GatewayProcessConfig) -> QuartTrio:
    """The REST app over `core` with the limits of `config` (`allq gateway` and the ASGI
    entry). Quart is imported here, not with this module: `allq gateway --help` stays fast."""
    from allq.gateway.app import create_app

    return create_app(
        core,
        api_token=config.api_token,
        max_body_bytes=config.max_body_bytes,
        max_inflight=config.max_inflight,
        max_waiting=config.max_waiting,
        long_poll_cap_s=config.long_poll_cap_s,
    )


def config_from_settings(values: Mapping[str, Any]) -> GatewayProcessConfig:
    """The process configuration from the resolved `[gateway]` settings (`allq.settings`).

    Shared by `allq gateway` and the ASGI entry (`allq.gateway.asgi`), so both read the same
    names with the same validation.
    """
    from allq.gateway.line import socket_setting

    return GatewayProcessConfig(
        servers=list(values["servers"]),
        key_file=values["key"],
        server_key_file=values["server_key"],
        host=values["host"],
        port=values["port"],
        api_token=values["api_token"],
        workers=values["workers"],
        graceful_s=values["graceful_timeout"],
        max_body_bytes=values["max_body_bytes"],
        max_inflight=values["max_inflight"],
        max_waiting=values["max_waiting"],
        long_poll_cap_s=values["long_poll_cap"],
        log_level=values["log_level"],
        log_json=values["log_json"],
        health=HealthPolicy(fail_after=values["fail_after"]),
        # the line protocol (allq.gateway.line): 0 / "off" turn an endpoint off
        line_port=values["line_port"],
        socket_path=socket_setting(values["socket"]),
        line_max_connections=values["line_max_connections"],
        links=LinkSettings(
            probe_interval_s=values["probe_interval"],
            probe_timeout_s=values["probe_timeout"],
            request_timeout_s=values["request_timeout"],
        ),
    )


def _not_set(name: str) -> ConfigError:
    """A required `[gateway]` setting is missing: name all three of its spellings."""
    setting = BY_SECTION["gateway"][name]
    return ConfigError(
        f"setting gateway.{name} is not set: {setting.help} "
        f"(flag {setting.flag}, environment {setting.env} or {name} in [gateway])"
    )


def core_config(config: GatewayProcessConfig) -> GatewayConfig:
    """Load the keys and build the core's configuration; errors name the setting or file."""
    if config.key_file is None:
        raise _not_set("key")
    if config.server_key_file is None and not config.server_public_key_files:
        raise _not_set("server_key")
    if not config.servers:
        raise _not_set("servers")
    paths = [config.key_file, config.server_key_file, *config.server_public_key_files.values()]
    for path in paths:
        if path is not None and not path.exists():
            raise ConfigError(f"key file {path} does not exist")
    try:
        client_keys = load_secret_key(config.key_file, role="client")
        server_public = (
            None
            if config.server_key_file is None
            else load_public_key(config.server_key_file, role="server")
        )
        per_server = {
            address: load_public_key(path, role="server")
            for address, path in config.server_public_key_files.items()
        }
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None
    return GatewayConfig(
        servers=[
            ServerSpec(ServerAddress.parse(a), public_key=per_server.get(a)) for a in config.servers
        ],
        client_keys=client_keys,
        server_public=server_public,
        health=config.health,
        links=config.links,
    )


def line_config(
    config: GatewayProcessConfig, sockets: tuple[socket.socket, ...] = ()
) -> LineConfig | None:
    """The line protocol's configuration, or None when it is off."""
    from allq.gateway.line import LineConfig

    line = LineConfig(
        tcp_port=config.line_port or None,
        socket_path=config.socket_path,
        max_connections=config.line_max_connections,
        max_line_bytes=config.max_body_bytes,
        max_inflight=config.max_inflight,
        max_waiting=config.max_waiting,
        long_poll_cap_s=config.long_poll_cap_s,
        sockets=sockets,
    )
    return line if line.enabled else None


async def run_gateway(
    config: GatewayProcessConfig,
    *,
    sock: socket.socket | None = None,
    line_sockets: tuple[socket.socket, ...] = (),
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    wait_for_servers: int = 0,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one gateway (one Hypercorn worker with its own core) until told to stop.

    Alone, it watches SIGINT/SIGTERM itself; as one of `--workers N` it is given the shared
    listening `sock` and the parent's `shutdown_trigger`.
    """
    from allq.gateway.line import serve_line
    from allq.gateway.serve import serve_rest

    core = core_config(config)
    stop = trio.Event()
    async with trio.open_nursery() as root:
        if shutdown_trigger is None:
            root.start_soon(_watch_signals, stop, root.cancel_scope)
        else:
            root.start_soon(_set_after, shutdown_trigger, stop)
        async with open_gateway(core) as gateway:
            app = rest_app(gateway, config)
            served = trio.Event()

            async def rest(task_status: trio.TaskStatus[tuple[str, int]]) -> None:  # noqa: ASYNC128
                try:
                    await serve_rest(
                        app,
                        host=config.host,
                        port=config.port,
                        shutdown_trigger=stop.wait,
                        graceful_timeout_s=config.graceful_s,
                        sock=sock,
                        task_status=task_status,
                    )
                finally:
                    served.set()

            host, port = await root.start(rest)
            line = line_config(config, line_sockets)
            line_scope, line_done = trio.CancelScope(), trio.Event()

            async def line_task(task_status: trio.TaskStatus[list[str]]) -> None:  # noqa: ASYNC128
                assert line is not None
                try:
                    with line_scope:
                        await serve_line(
                            gateway, line, shutdown_trigger=stop.wait, task_status=task_status
                        )
                finally:
                    line_done.set()

            if line is not None:
                await root.start(line_task)
            else:
                line_done.set()
            if wait_for_servers:  # embedded use: report started once the servers are routable
                with trio.move_on_after(config.links.request_timeout_s):
                    await wait_until_ready(gateway, servers=wait_for_servers)
            log.info("allq gateway listening on http://%s:%s", host, port)
            task_status.started((host, port))
            await stop.wait()
            # Hypercorn drains within the graceful timeout; then the core closes.
            with trio.move_on_after(config.graceful_s + 1):
                await served.wait()
                await line_done.wait()  # busy line connections finish their request
            line_scope.cancel()  # the core closes next: nothing may still use it
            await line_done.wait()
        root.cancel_scope.cancel()
    log.info("allq gateway stopped")


async def _set_after(trigger: Callable[[], Awaitable[None]], stop: trio.Event) -> None:
    await trigger()
    stop.set()


async def gateway_worker(
    config: GatewayProcessConfig,
    line_sockets: tuple[socket.socket, ...],
    sock: socket.socket,
    shutdown_trigger: Callable[[], Awaitable[None]],
) -> None:
    """The body of one `--workers N` process (module level: it is pickled).

    `line_sockets`: the line protocol's listening sockets, bound once by the parent and
    shared by every worker like the REST socket."""
    from allq.log import configure_logging

    configure_logging(config.log_level, json_lines=config.log_json)  # spawned: fresh logging
    await run_gateway(
        config, sock=sock, line_sockets=line_sockets, shutdown_trigger=shutdown_trigger
    )


def run_gateway_workers(config: GatewayProcessConfig) -> int:
    """`allq gateway --workers N`: N processes, each with its own core, on one socket."""
    from allq.gateway.line import open_line_sockets
    from allq.gateway.serve import run_workers

    core_config(config)  # fail here, once, with the file named
    line = line_config(config)
    line_sockets = open_line_sockets(line) if line is not None else []
    try:
        return run_workers(
            config.workers,
            functools.partial(gateway_worker, config, tuple(line_sockets)),
            host=config.host,
            port=config.port,
            stop_timeout_s=config.graceful_s + 5,
        )
    finally:
        for line_sock in line_sockets:
            line_sock.close()
        if line is not None and line.socket_path is not None:
            line.socket_path.unlink(missing_ok=True)


async def _watch_signals(stop: trio.Event, root: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not stop.is_set():
                log.info("signal %s: graceful shutdown", signum)
                stop.set()
            else:
                log.warning("second signal %s: stopping now", signum)
                root.cancel()
