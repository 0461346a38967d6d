"""ASGI entry for an external Hypercorn: `hypercorn --worker-class trio 'allq.gateway.asgi:app'`.

Hypercorn owns the process here, so the gateway core runs inside the app's lifespan: the
QuartTrio app starts it in `app.nursery` in `before_serving` and cancels it in
`after_serving` (Hypercorn sends the lifespan shutdown after draining requests, so the core
outlives every request). `allq gateway` is the other way round (core beside Hypercorn).

Configuration comes from the environment, read when Hypercorn first calls `app` (its
lifespan), never at import:

| variable | meaning |
|---|---|
| `ALLQ_SERVERS` | required: the queue servers, `host:port,host:port,…` |
| `ALLQ_KEY` | required: the gateway's client secret key file |
| `ALLQ_SERVER_KEY` | required: the servers' public key file |
| `ALLQ_API_TOKEN` | optional: require `Authorization: Bearer TOKEN` |
| `ALLQ_MAX_BODY_BYTES`, `ALLQ_MAX_INFLIGHT` | as the `allq gateway` flags |
| `ALLQ_MAX_WAITING`, `ALLQ_LONG_POLL_CAP_S` | as the `allq gateway` flags |
| `ALLQ_LOG_LEVEL`, `ALLQ_LOG_JSON` | `INFO` by default; `1`/`true` for one JSON object per line |

Log lines are allq's (`allq.log`), Hypercorn's own included ("Running on …", its errors,
and access lines with `--access-logfile -`). A bad or missing setting stops the worker at
start-up with one log line naming the variable and exit code 2, which Hypercorn 0.18 passes
on only with `--workers 0` (with worker processes its parent stops but exits 0: hypercorn
#269).

If the core task ever fails, the failure is logged and every request answers 503 NO_SERVER
(`/readyz` says why): the process cannot stop Hypercorn from inside the app, and a
supervisor's readiness check then sees it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import trio
from quart_trio import QuartTrio

from allq.config import ConfigError
from allq.gateway.app import create_app
from allq.gateway.cluster import Gateway, GatewayConfig, ServerSpec, open_gateway
from allq.gateway.errors import NoServer
from allq.gateway.links import ServerAddress
from allq.log import adopt_logger, configure_logging
from allq.wire.keyfiles import KeyFileError, load_public_key, load_secret_key

log = logging.getLogger(__name__)

#: Exit code of a worker whose environment is wrong (the CLI's usage-error code).
EXIT_CONFIG = 2

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
#: Hypercorn's own loggers: their lines go through our formatter too (allq.log.adopt_logger).
HYPERCORN_LOGGERS = ("hypercorn.error", "hypercorn.access")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """`create_app` keyword arguments from `ALLQ_*` variables (errors name the variable)."""

    def number(name: str, default: float, kind: type[int] | type[float]) -> Any:
        text = environ.get(name)
        if text is None:
            return default
        try:
            value = kind(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not a number") from None
        if not value > 0:
            raise ConfigError(f"{name}={text!r} must be > 0")
        return value

    cap = number("ALLQ_LONG_POLL_CAP_S", 300.0, float)
    if cap > 300:
        raise ConfigError(f"ALLQ_LONG_POLL_CAP_S={cap!r} must be in (0, 300]")
    return {
        "api_token": environ.get("ALLQ_API_TOKEN") or None,
        "max_body_bytes": number("ALLQ_MAX_BODY_BYTES", 2 * 1_048_576, int),
        "max_inflight": number("ALLQ_MAX_INFLIGHT", 10_000, int),
        "max_waiting": number("ALLQ_MAX_WAITING", 10_000, int),
        "long_poll_cap_s": cap,
    }


def logging_from_env(environ: Mapping[str, str]) -> tuple[str, bool]:
    """`(level, json_lines)` from `ALLQ_LOG_LEVEL` and `ALLQ_LOG_JSON`."""
    level = environ.get("ALLQ_LOG_LEVEL", "INFO").strip().upper()
    if level not in _LEVELS:
        raise ConfigError(f"ALLQ_LOG_LEVEL={level!r} must be one of {', '.join(_LEVELS)}")
    flag = environ.get("ALLQ_LOG_JSON", "").strip().lower()
    if flag not in _TRUE | _FALSE:
        raise ConfigError(f"ALLQ_LOG_JSON={flag!r} must be 1/true/yes/on or 0/false/no/off")
    return level, flag in _TRUE


def _required(environ: Mapping[str, str], name: str, what: str) -> str:
    text = environ.get(name, "").strip()
    if not text:
        raise ConfigError(f"{name} is not set: {what}")
    return text


def core_config_from_env(environ: Mapping[str, str]) -> GatewayConfig:
    """The core's configuration (servers, keys loaded and checked); errors name the variable."""
    text = _required(environ, "ALLQ_SERVERS", "the queue servers, as host:port,host:port,…")
    servers: list[ServerSpec] = []
    for item in text.split(","):
        try:
            servers.append(ServerSpec(ServerAddress.parse(item)))
        except ValueError as exc:
            raise ConfigError(f"ALLQ_SERVERS={text!r}: {exc}") from None
    key = Path(_required(environ, "ALLQ_KEY", "the gateway's client secret key file"))
    server_key = Path(_required(environ, "ALLQ_SERVER_KEY", "the servers' public key file"))
    try:
        client_keys = load_secret_key(key, role="client")
    except (KeyFileError, OSError) as exc:
        raise ConfigError(f"ALLQ_KEY={str(key)!r}: {exc}") from None
    try:
        server_public = load_public_key(server_key, role="server")
    except (KeyFileError, OSError) as exc:
        raise ConfigError(f"ALLQ_SERVER_KEY={str(server_key)!r}: {exc}") from None
    return GatewayConfig(servers=servers, client_keys=client_keys, server_public=server_public)


class LifespanCore:
    """A `GatewayCore` whose `Gateway` is started and stopped by the app's lifespan.

    Until it runs (and after it stopped or failed) every operation answers 503 NO_SERVER.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.gateway: Gateway | None = None
        self.failure: str | None = None
        self._scope = trio.CancelScope()
        self._running = False
        self._stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the core until `stop()`; a failure is logged and kept (see module docstring)."""
        self._running = True
        try:
            with self._scope:
                async with open_gateway(self.config) as gateway:
                    self.gateway = gateway
                    log.info("gateway core started with %d server(s)", len(self.config.servers))
                    task_status.started()
                    await trio.sleep_forever()
        except Exception as exc:  # a bug in the core: keep serving 503s, readyz says why
            self.failure = f"the gateway core stopped: {type(exc).__name__}: {exc}"
            log.error("%s", self.failure, exc_info=exc)
        finally:
            self.gateway = None
            self._stopped.set()
            log.info("gateway core stopped")

    async def stop(self) -> None:
        """Cancel the core and wait until its connections are closed.

        Waiting matters: Hypercorn cancels the whole lifespan as soon as it ends, which
        would cut the links' goodbyes short.
        """
        self._scope.cancel()
        if self._running:
            await self._stopped.wait()

    def _core(self) -> Gateway:
        if self.gateway is None:
            raise NoServer(self.failure or "the gateway core is not running")
        return self.gateway

    # -- GatewayCore ---------------------------------------------------------------------------

    def now(self) -> float:
        return time.time()

    async def put(self, tube: str, fields: dict[str, Any]) -> dict[str, Any]:
        return await self._core().put(tube, fields)

    async def put_batch(self, tube: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await self._core().put_batch(tube, items)

    async def put_parent(self, tube: str, fields: dict[str, Any]) -> dict[str, Any]:
        return await self._core().put_parent(tube, fields)

    async def reserve(
        self, tubes: list[str], *, count: int = 1, wait_s: float = 0.0
    ) -> list[dict[str, Any]]:
        return await self._core().reserve(tubes, count=count, wait_s=wait_s)

    async def done_many(self, items: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
        return await self._core().done_many(items)

    async def job_op(self, op: str, job_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        return await self._core().job_op(op, job_id, fields)

    async def peek_tube(self, tube: str, state: str) -> dict[str, Any]:
        return await self._core().peek_tube(tube, state)

    async def kick(self, tube: str, bound: int) -> int:
        return await self._core().kick(tube, bound)

    async def tube_control(self, op: str, tube: str, fields: dict[str, Any]) -> dict[str, Any]:
        return await self._core().tube_control(op, tube, fields)

    async def tube_stats(self, tube: str) -> dict[str, Any]:
        return await self._core().tube_stats(tube)

    async def list_tubes(self) -> list[dict[str, Any]]:
        return await self._core().list_tubes()

    async def stats(self) -> dict[str, Any]:
        return await self._core().stats()

    def servers(self) -> list[dict[str, Any]]:
        return [] if self.gateway is None else self.gateway.servers()

    async def add_server(self, address: str, name: str | None = None) -> dict[str, Any]:
        return await self._core().add_server(address, name)

    async def drain_server(self, server_id: str) -> dict[str, Any]:
        return await self._core().drain_server(server_id)

    async def remove_server(self, server_id: str, *, force: bool = False) -> dict[str, Any]:
        return await self._core().remove_server(server_id, force=force)

    def ready(self) -> tuple[bool, str]:
        if self.gateway is None:
            return False, self.failure or "the gateway core is not running"
        return self.gateway.ready()


def build_app(environ: Mapping[str, str]) -> QuartTrio:
    """The REST app with a lifespan-started core, from `environ` (raises `ConfigError`)."""
    settings = settings_from_env(environ)
    core = LifespanCore(core_config_from_env(environ))
    app = create_app(core, **settings)

    @app.before_serving
    async def start_core() -> None:
        await app.nursery.start(core.run)

    @app.after_serving
    async def stop_core() -> None:
        await core.stop()

    return app


class EnvApp:
    """The module's `app`: builds the real app from the environment at its first call.

    Hypercorn calls it first for the lifespan, before binding; a `ConfigError` then ends
    the worker process with one log line and exit code 2 (`on_error` replaces that).
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        on_error: Callable[[str], NoReturn] | None = None,
    ) -> None:
        self._environ = environ
        self._on_error = on_error or _exit_with
        self._app: QuartTrio | None = None

    def load(self) -> QuartTrio:
        if self._app is None:
            environ = os.environ if self._environ is None else self._environ
            try:
                level, json_lines = logging_from_env(environ)
            except ConfigError as exc:
                configure_logging()
                self._on_error(str(exc))
            configure_logging(level, json_lines=json_lines)
            for name in HYPERCORN_LOGGERS:
                adopt_logger(name)
            try:
                self._app = build_app(environ)
            except ConfigError as exc:
                self._on_error(str(exc))
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.load()(scope, receive, send)


def _exit_with(message: str) -> NoReturn:
    log.critical("cannot start: %s", message)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    # Hypercorn's worker would turn an exception here into a multi-line traceback (or,
    # from the lifespan, carry on without a core); one line and exit code 2 is the contract.
    os._exit(EXIT_CONFIG)


app = EnvApp()
