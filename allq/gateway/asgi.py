"""ASGI entry for an external Hypercorn: `hypercorn --worker-class trio 'allq.gateway.asgi:app'`.

Hypercorn owns the process here, so the gateway core runs inside the app's lifespan: the
QuartTrio app starts it in `app.nursery` in `before_serving` and cancels it in
`after_serving` (Hypercorn sends the lifespan shutdown after draining requests, so the core
outlives every request). `allq gateway` is the other way round (core beside Hypercorn).

Configuration is `allq gateway`'s: the `[gateway]` settings of `allq.settings`, resolved by
the same code (`settings.resolve`, `process.config_from_settings`, `process.core_config`)
with the same names, checks and one-line errors, read when Hypercorn first calls `app` (its
lifespan), never at import. There are no flags here, so the precedence is environment
(`ALLQ_GATEWAY_SERVERS`, `ALLQ_GATEWAY_KEY`, `ALLQ_GATEWAY_SERVER_KEY`, …) > the `[gateway]`
table of the TOML file named by `ALLQ_CONFIG` (this entry's stand-in for `--config`) >
default. The settings Hypercorn's own options replace (`host`, `port`, `workers`,
`graceful_timeout`) and the line protocol's (not served here) are not used; setting one
logs a warning saying so.

The names this entry read before it used the table (`ALLQ_SERVERS`, `ALLQ_KEY`,
`ALLQ_MAX_INFLIGHT`, … in `OLD_NAMES`) stop it with an error naming the setting to use
instead. `ALLQ_SERVER_KEY` is `allq server`'s own secret key (`server.key`), so it is not
an error here, only ignored; the gateway reads the servers' public key from
`ALLQ_GATEWAY_SERVER_KEY`, and says so when that is missing while `ALLQ_SERVER_KEY` is set.

Log lines are allq's (`allq.log`), Hypercorn's own included ("Running on …", its errors,
and access lines with `--access-logfile -`). A bad or missing setting stops the worker at
start-up with one log line naming the setting and exit code 2, which Hypercorn 0.18 passes
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
from allq.gateway.cluster import Gateway, GatewayConfig, open_gateway
from allq.gateway.errors import NoServer
from allq.gateway.process import (
    GatewayProcessConfig,
    config_from_settings,
    core_config,
    rest_app,
)
from allq.log import adopt_logger, configure_logging
from allq.settings import BY_SECTION, read_config_file, resolve

log = logging.getLogger(__name__)

#: Exit code of a worker whose environment is wrong (the CLI's usage-error code).
EXIT_CONFIG = 2

#: The TOML config file (`--config` of `allq gateway`; only its `[gateway]` table is read).
CONFIG_ENV = "ALLQ_CONFIG"

#: The names this entry read before it used the settings table -> the `[gateway]` setting
#: to use instead. `ALLQ_API_TOKEN` is not here: the table reads it for `gateway.api_token`.
OLD_NAMES = {
    "ALLQ_SERVERS": "servers",
    "ALLQ_KEY": "key",
    "ALLQ_MAX_BODY_BYTES": "max_body_bytes",
    "ALLQ_MAX_INFLIGHT": "max_inflight",
    "ALLQ_MAX_WAITING": "max_waiting",
    "ALLQ_LONG_POLL_CAP_S": "long_poll_cap",
    "ALLQ_LOG_LEVEL": "log_level",
    "ALLQ_LOG_JSON": "log_json",
}

#: `allq server`'s secret key: the old entry misread it as the servers' public key.
SERVER_SECRET_KEY_ENV = BY_SECTION["server"]["key"].env

#: `[gateway]` settings with no effect under Hypercorn -> what to use instead.
NOT_USED = {
    "host": "hypercorn --bind",
    "port": "hypercorn --bind",
    "workers": "hypercorn --workers",
    "graceful_timeout": "hypercorn --graceful-timeout",
    "line_port": "allq gateway: the line protocol is not served here",
    "socket": "allq gateway: the line protocol is not served here",
    "line_max_connections": "allq gateway: the line protocol is not served here",
}

#: Hypercorn's own loggers: their lines go through our formatter too (allq.log.adopt_logger).
HYPERCORN_LOGGERS = ("hypercorn.error", "hypercorn.access")


def config_file(environ: Mapping[str, str]) -> Path | None:
    """The config file named by `ALLQ_CONFIG` (unset or empty: none)."""
    text = environ.get(CONFIG_ENV, "").strip()
    return Path(text) if text else None


def check_old_names(environ: Mapping[str, str]) -> None:
    """Refuse the entry's former variable names, naming the settings that replace them."""
    found = [name for name in OLD_NAMES if name in environ]
    if found:
        renames = "; ".join(
            f"{name} is no longer read: set {BY_SECTION['gateway'][OLD_NAMES[name]].env}"
            for name in found
        )
        raise ConfigError(f"{renames} (the ASGI app reads allq gateway's settings)")


def logging_from_env(environ: Mapping[str, str]) -> tuple[str, bool]:
    """`(level, json_lines)`: the `log_level` and `log_json` settings."""
    check_old_names(environ)
    values = resolve("gateway", {}, environ, config_file(environ), only=("log_level", "log_json"))
    return values["log_level"], values["log_json"]


def process_config_from_env(environ: Mapping[str, str]) -> GatewayProcessConfig:
    """Every `[gateway]` setting, resolved and checked as `allq gateway` does."""
    check_old_names(environ)
    try:
        config = config_from_settings(resolve("gateway", {}, environ, config_file(environ)))
    except ValueError as exc:  # a check below the settings table, as `allq gateway` reports it
        raise ConfigError(str(exc)) from None
    if config.server_key_file is None and SERVER_SECRET_KEY_ENV in environ:
        server_key = BY_SECTION["gateway"]["server_key"].env
        raise ConfigError(
            f"setting gateway.server_key is not set: the servers' public key file goes in "
            f"{server_key} ({SERVER_SECRET_KEY_ENV} is allq server's own secret key, not read "
            "by the gateway)"
        )
    return config


def unused_settings(environ: Mapping[str, str]) -> list[str]:
    """The settings set in the environment or config file that Hypercorn makes moot."""
    path = config_file(environ)
    table = {} if path is None else read_config_file(path).get("gateway", {})
    unused: list[str] = []
    for name, instead in NOT_USED.items():
        setting = BY_SECTION["gateway"][name]
        spelled = [env for env in (setting.env, *setting.legacy) if env in environ]
        if name in table:
            spelled.append(f"{name} in [gateway] of {path}")
        unused.extend(f"{spelling} (use {instead})" for spelling in spelled)
    return unused


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
    config = process_config_from_env(environ)
    if unused := unused_settings(environ):
        log.warning("not used under Hypercorn: %s", "; ".join(unused))
    core = LifespanCore(core_config(config))
    app = rest_app(core, config)

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
