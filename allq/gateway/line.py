"""The local line protocol (api.md §4): one JSON object per line over TCP and a unix socket.

A request line is `{"action": <name>, "params": {...}}`; the reply is one line, in request
order, many requests per connection (pipelining welcome). Actions:

* the original AllQ client's actions (`allq.gateway.legacy.ACTIONS`), answered in the
  original's shapes: `{"response": {...}}`, plus the top-level `job` node on put/get (and
  `jobs` on multiple gets) that the Ruby gem reads. As in the original, job-hash values
  are strings (`"expireds": "0"`); `clear` answers `{}`, `stats` the original's
  `{server: {tube: {...}, "global": {...}}}`, `ping` `{server: "true" | "false"}`;
* the v1 operations under their v1 route names (`reserve`, `put_jobs`, `get_job`,
  `peek_tube`, ...; `allq.gateway.routes.ROUTES`), params being the v1 body's fields plus
  the path (`tube`, `id` or `job_id`) and query ones; the reply is the v1 response body.
  Where a name is both, the original action wins, except `done`, `touch`, `release` and
  `bury` with a `lease` and `put` with `jobs` (a v1 batch put), which are v1.

Errors: `{"error": {"code", "message", "field"?}}` on one line, and the connection lives
on; a line longer than `max_line_bytes` gets JOB_TOO_BIG and the rest of it is skipped.
Blank lines are skipped without a reply. Idle connections are kept (no read timeout);
connections past `max_connections` get one OVERLOADED line and are closed.

Shutdown: when `shutdown_trigger` returns, listening stops, idle connections are closed,
and a busy connection closes once its current request is answered. The caller cancels
what is left after its grace period.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

from allq.config import ConfigError
from allq.errors import AllQError, BadFormat, JobTooBig
from allq.gateway import bodies as b
from allq.gateway.core import GatewayCore
from allq.gateway.errors import Overloaded
from allq.gateway.legacy import ACTIONS, Job, Node, run_action
from allq.gateway.request_schemas import check_path
from allq.gateway.route import Call, Limiter, Route
from allq.gateway.routes import ROUTES
from allq.tubes.validate import is_number

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 7766
RECEIVE_BYTES: Final = 65536
#: Replies gathered before they are written even though more requests are buffered.
FLUSH_EVERY: Final = 64
#: v1 routes not offered on the line protocol: operations and cluster membership changes.
_NOT_ON_LINE: Final = frozenset(
    {"healthz", "readyz", "openapi", "add_server", "drain_server", "remove_server"}
)
V1_ROUTES: Final[dict[str, Route]] = {r.name: r for r in ROUTES if r.name not in _NOT_ON_LINE}
#: Original actions that are the v1 operation when a lease is given.
_LEASED: Final = frozenset({"done", "touch", "release", "bury"})


def default_socket_path() -> Path:
    """`$XDG_RUNTIME_DIR/allq.sock`, else `/tmp/allq-<uid>.sock`."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "allq.sock"
    return Path(f"/tmp/allq-{os.getuid()}.sock")


def socket_setting(value: Path | None) -> Path | None:
    """The `socket` setting as a path: unset is the default path, `off` is None."""
    if value is None:
        return default_socket_path()
    return None if str(value) == "off" else value


@dataclass(frozen=True, slots=True, kw_only=True)
class LineConfig:
    """Where and how the line protocol listens. `tcp_port` None: no TCP (0: any free
    port); `socket_path` None: no unix socket. TCP always binds loopback."""

    tcp_port: int | None = DEFAULT_PORT
    socket_path: Path | None = None
    host: str = "127.0.0.1"
    max_connections: int = 1024
    max_line_bytes: int = 2 * 1_048_576
    max_inflight: int = 10_000
    max_waiting: int = 10_000
    long_poll_cap_s: float = 300.0
    #: Already bound, listening sockets to serve instead (`--workers N` shares them).
    sockets: tuple[socket.socket, ...] = field(default=())

    @property
    def enabled(self) -> bool:
        return self.tcp_port is not None or self.socket_path is not None or bool(self.sockets)


# -- shaping original replies ------------------------------------------------------------------


def _line_job(job: Job) -> dict[str, str]:
    if not job:
        return {}
    out = {"job_id": str(job["id"])}
    out.update({k: str(job[k]) for k in ("body", "body_b64") if k in job})
    out.update({k: str(job[k]) for k in ("tube", "expireds", "releases")})
    return out


def line_payload(node: Node) -> dict[str, Any]:
    """An original action's reply line from its response node (module docstring)."""
    action = node["action"]
    if action == "clear":
        return {}
    if action == "ping":
        return {sid: "true" if up else "false" for sid, up in node["servers"].items()}
    if action == "stats":
        out: dict[str, Any] = {}
        for server in node["servers"]:
            tubes: dict[str, Any] = {
                t["tube"]: {k: str(v) for k, v in t.items() if k != "tube"} for t in server["stats"]
            }
            tubes["global"] = {k: str(server[k]) for k in ("action_count", "job_put", "job_get")}
            out[server["server_name"]] = tubes
        return out
    response = dict(node)
    reply: dict[str, Any] = {"response": response}
    if "job" in node:
        response["job"] = reply["job"] = _line_job(node["job"])
    if "jobs" in node:
        response["jobs"] = reply["jobs"] = [_line_job(job) for job in node["jobs"]]
    if action == "put":
        reply["job"] = {"job_id": node["job_id"]}
    return reply


# -- requests ----------------------------------------------------------------------------------


def parse_request(line: bytes) -> tuple[str, dict[str, object]]:
    try:
        value = b.parse_json(line)
    except BadFormat as exc:
        exc.message = exc.message.replace("the request body", "the request line")
        raise
    if not isinstance(value, dict):
        raise BadFormat('a request is one JSON object {"action": ..., "params": {...}}')
    for name in value:
        if name not in ("action", "params"):
            raise BadFormat(f"unknown request field {name!r}", field=name)
    action = value.get("action")
    if not isinstance(action, str):
        raise BadFormat("action must be a string", field="action")
    params = value.get("params", {})
    if not isinstance(params, dict):
        raise BadFormat("params must be a JSON object", field="params")
    return action, params


def v1_route(action: str, params: dict[str, object]) -> Route | None:
    """The v1 route a request names, or None for an original action."""
    if action == "put" and "jobs" in params:
        return V1_ROUTES["put_jobs"]
    if action in ACTIONS:
        return V1_ROUTES[action] if action in _LEASED and "lease" in params else None
    route = V1_ROUTES.get(action)
    if route is None:
        raise BadFormat(f"unknown action {action[:64]!r}", field="action")
    return route


def _query_text(value: object, f: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if is_number(value):
        return json.dumps(value)
    raise BadFormat(f"{f} must be a string, number or boolean", field=f)


async def run_v1(
    route: Route, params: dict[str, object], core: GatewayCore, limiter: Limiter, cap_s: float
) -> object:
    """One v1 operation from line params; returns the v1 response body."""
    rest = dict(params)
    path: dict[str, str] = {}
    for name in route.path_params:
        key = "job_id" if name == "id" and "id" not in rest and "job_id" in rest else name
        if key not in rest:
            raise BadFormat(f"the field {name!r} is required", field=name)
        value = rest.pop(key)
        if not isinstance(value, str):
            raise BadFormat(f"{key} must be a string", field=key)
        path[name] = check_path(name, value)
    names = {q.name for q in route.query}
    items = [(k, _query_text(rest.pop(k), k)) for k in list(rest) if k in names]
    query = b.parse_query(items, route.query)
    if route.body is not None:
        body = route.body.parse(rest)
    elif rest:
        raise BadFormat(f"{route.name} takes no field {next(iter(rest))!r}", field=next(iter(rest)))
    else:
        body = None
    call = Call(
        core=core, limiter=limiter, long_poll_cap_s=cap_s, params=path, body=body, query=query
    )
    # An error answer that still reports its `done` part is a Reply too: its payload.
    return (await route.handler(call)).payload


def _may_wait(action: str, params: dict[str, object]) -> bool:
    timeout = params.get("timeout")
    return action in ("reserve", "reserve_tube") and is_number(timeout) and timeout != 0


def encode(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def error_line(exc: AllQError) -> bytes:
    return encode(b.error_payload(exc))


# -- reading lines -----------------------------------------------------------------------------


class TooLong:
    """A line past the limit (its rest is skipped)."""


TOO_LONG: Final = TooLong()


class LineReader:
    """Splits received bytes into lines of at most `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.skipping = False
        self._scanned = 0

    def feed(self, data: bytes | bytearray) -> None:
        self.buffer += data

    def next(self) -> bytes | TooLong | None:
        """The next complete line (without its newline), TOO_LONG, or None: need data."""
        buf = self.buffer
        while True:
            end = buf.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(buf)
                if self.skipping:
                    buf.clear()
                    self._scanned = 0
                    return None
                if len(buf) > self.limit:
                    buf.clear()
                    self._scanned = 0
                    self.skipping = True
                    return TOO_LONG
                return None
            line = bytes(buf[:end])
            del buf[: end + 1]
            self._scanned = 0
            if self.skipping:
                self.skipping = False
                continue
            if end > self.limit:
                return TOO_LONG
            return line

    def rest(self) -> bytes:
        """What is left at end of input (a last line without its newline)."""
        data = b"" if self.skipping else bytes(self.buffer)
        self.buffer.clear()
        return data


# -- the server --------------------------------------------------------------------------------


class LineServer:
    """Serves line-protocol connections over `core` (see the module docstring)."""

    def __init__(self, core: GatewayCore, config: LineConfig) -> None:
        self.core = core
        self.config = config
        self.limiter = Limiter(max_inflight=config.max_inflight, max_waiting=config.max_waiting)
        self.connections = 0
        self.stopping = False
        self._idle: set[trio.CancelScope] = set()

    async def answer(self, action: str, params: dict[str, object]) -> bytes:
        try:
            with self.limiter.request():
                route = v1_route(action, params)
                if route is None:
                    payload: object = line_payload(await run_action(self.core, action, params))
                else:
                    cap = self.config.long_poll_cap_s
                    payload = await run_v1(route, params, self.core, self.limiter, cap)
        except AllQError as exc:
            return error_line(exc)
        except Exception as exc:
            log.error("line protocol: unexpected error on %r", action[:64], exc_info=exc)
            return error_line(AllQError(f"internal error: {type(exc).__name__}"))
        return encode(payload)

    async def handle(self, stream: trio.abc.Stream) -> None:
        async with stream:
            if self.connections >= self.config.max_connections:
                limit = self.config.max_connections
                busy = Overloaded(f"{self.connections} line connections open (limit {limit})")
                with trio.move_on_after(1):
                    await stream.send_all(error_line(busy))
                return
            self.connections += 1
            try:
                await self._converse(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self.connections -= 1

    async def _converse(self, stream: trio.abc.Stream) -> None:
        reader = LineReader(self.config.max_line_bytes)
        out: list[bytes] = []
        at_end = False
        while True:
            item = reader.next()
            if item is None and at_end:
                item = reader.rest()
                if not item.strip():
                    if out:
                        await stream.send_all(b"".join(out))
                    return
            if item is None:
                if out:
                    await stream.send_all(b"".join(out))
                    out.clear()
                if self.stopping:
                    return
                with trio.CancelScope() as idle:
                    self._idle.add(idle)
                    try:
                        data = await stream.receive_some(RECEIVE_BYTES)
                    finally:
                        self._idle.discard(idle)
                if idle.cancelled_caught:
                    return
                if data:
                    reader.feed(data)
                else:
                    at_end = True
                continue
            if isinstance(item, TooLong):
                limit = self.config.max_line_bytes
                out.append(error_line(JobTooBig(f"a request line is longer than {limit} bytes")))
                continue
            if not item.strip():
                continue
            try:
                action, params = parse_request(item)
            except AllQError as exc:
                out.append(error_line(exc))
                continue
            if out and (_may_wait(action, params) or len(out) >= FLUSH_EVERY):
                await stream.send_all(b"".join(out))
                out.clear()
            out.append(await self.answer(action, params))
            if self.stopping:
                await stream.send_all(b"".join(out))
                return

    def stop(self) -> None:
        """Close idle connections; busy ones close after their current answer."""
        self.stopping = True
        for scope in list(self._idle):
            scope.cancel()


def open_line_sockets(config: LineConfig) -> list[socket.socket]:
    """Bind and listen on the TCP port and the unix socket of `config` (stdlib sockets)."""
    socks: list[socket.socket] = []
    try:
        if config.tcp_port is not None:
            from allq.gateway.serve import listening_socket

            socks.append(listening_socket(config.host, config.tcp_port, backlog=1024))
        if config.socket_path is not None:
            socks.append(_unix_socket(config.socket_path))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _unix_socket(path: Path) -> socket.socket:
    """A listening unix socket at `path`, mode 0600. A stale socket file is replaced; a
    live one (another gateway) or any other file is an error."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise ConfigError(f"line socket {path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))  # immediate on a unix socket: accepted or refused
            except OSError:
                path.unlink(missing_ok=True)  # stale: nobody listens
            else:
                raise ConfigError(f"line socket {path} is in use by another process")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        path.chmod(0o600)  # before listen(): nobody else can connect in between
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def describe(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return str(sock.getsockname())
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


async def serve_line(
    core: GatewayCore,
    config: LineConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the line protocol until `shutdown_trigger` returns and connections close.

    Reports the listening addresses (`host:port`, socket paths) through `task_status`.
    Sockets given in `config.sockets` are served as they are (and closed here); otherwise
    they are bound here, and the unix socket file is removed when serving ends.
    """
    server = LineServer(core, config)
    owned = not config.sockets
    socks = open_line_sockets(config) if owned else list(config.sockets)
    paths = [Path(describe(s)) for s in socks if s.family == socket.AF_UNIX] if owned else []
    try:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in socks]
        addresses = [describe(s) for s in socks]
        async with trio.open_nursery() as nursery:
            accepting = trio.CancelScope()

            async def accept() -> None:
                with accepting:
                    await trio.serve_listeners(server.handle, listeners, handler_nursery=nursery)

            nursery.start_soon(accept)
            log.info("allq line protocol on %s", ", ".join(addresses))
            task_status.started(addresses)
            await shutdown_trigger()
            accepting.cancel()
            server.stop()
    finally:
        for sock in socks:
            sock.close()
        for path in paths:
            path.unlink(missing_ok=True)
