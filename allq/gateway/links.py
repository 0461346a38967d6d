"""ServerLink: one queue server as the gateway sees it, and the task that keeps it connected.

One task per server (`ServerLink.run`) owns its connection pool: it connects with
backoff, learns the server's `server_id` with `ping`, probes it on a fixed period, and
feeds the `HealthBook`. Every request to the server goes through `ServerLink.call`, which
registers a cancel scope in `inflight`; when the server is marked DOWN (or removed) every
one of them is cancelled at once and the callers get `NoServer`. This is how "health
tracking with cancel scopes" is concrete: a dead server frees everything stuck on it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from allq.errors import AllQError
from allq.gateway.errors import NoServer
from allq.gateway.health import Health, HealthBook, Transition
from allq.wire.client import ConnectionLost, Pool, open_pool
from allq.wire.keyfiles import KeyPair, PublicKey
from allq.wire.stream import HandshakeFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ServerAddress:
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"server address {text!r} must be host:port")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSettings:
    """Timings of the link task (seconds)."""

    probe_interval_s: float = 1.0
    probe_timeout_s: float = 2.0
    request_timeout_s: float = 10.0
    backoff_min_s: float = 0.1
    backoff_max_s: float = 5.0
    pool_size: int = 2

    def __post_init__(self) -> None:
        for name in ("probe_interval_s", "probe_timeout_s", "request_timeout_s", "backoff_min_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"setting {name} = {getattr(self, name)!r}: must be > 0")


class ServerLink:
    """A configured queue server: address, keys, connection pool, in-flight requests."""

    def __init__(
        self,
        address: ServerAddress,
        *,
        name: str | None,
        client_keys: KeyPair,
        server_public: PublicKey,
        book: HealthBook,
        settings: LinkSettings,
        on_transition: Callable[[ServerLink, Transition], None],
    ) -> None:
        self.address = address
        self.configured_name = name
        self.server_id: str | None = name
        self._client_keys = client_keys
        self._server_public = server_public
        self._book = book
        self.settings = settings
        self._on_transition = on_transition
        self.key = str(address)
        book.add(self.key)
        self.pool: Pool | None = None
        self.inflight: set[trio.CancelScope] = set()
        self.load = 0
        self.draining = False
        self.removed = False
        self.jobs_total: int | None = None
        self._scope = trio.CancelScope()
        self._connected_scope = trio.CancelScope()

    # -- state -------------------------------------------------------------------------------

    @property
    def health(self) -> Health:
        return self._book.get(self.key).state

    def routable(self) -> bool:
        return (
            not self.removed
            and self.pool is not None
            and self.server_id is not None
            and self._book.routable(self.key, trio.current_time())
        )

    def snapshot(self) -> dict[str, Any]:
        record = self._book.get(self.key).snapshot()
        if isinstance(last_ok := record["last_ok_at"], float):  # Trio time -> unix time
            record["last_ok_at"] = round(time.time() - (trio.current_time() - last_ok), 3)
        state = "draining" if self.draining and record["state"] != "down" else record["state"]
        return {
            "id": self.server_id,
            "address": str(self.address),
            **record,
            "state": state,
            "jobs": self.jobs_total,
            "in_flight": self.load,
        }

    # -- requests ----------------------------------------------------------------------------

    async def call(self, op: str, timeout_s: float | None = None, **fields: object) -> Any:
        """One request on this server. Raises NoServer when it is down or goes down."""
        return (await self._requests(timeout_s, [(op, fields)], single=True))[0]

    async def call_batch(
        self, requests: Sequence[tuple[str, Mapping[str, object]]]
    ) -> list[Any | AllQError]:
        """Several requests sent in one write, answered in order; an `AllQError` answer is
        returned in its place. Raises NoServer when the server is down or goes down."""
        return await self._requests(None, requests, single=False)

    async def _requests(
        self,
        timeout_s: float | None,
        requests: Sequence[tuple[str, Mapping[str, object]]],
        *,
        single: bool,
    ) -> list[Any]:
        pool = self.pool
        if pool is None or not self.routable():
            raise NoServer(f"server {self.server_id or self.key} is not available")
        limit = self.settings.request_timeout_s if timeout_s is None else timeout_s
        with trio.CancelScope(deadline=trio.current_time() + limit) as scope:
            self.inflight.add(scope)
            self.load += len(requests)
            try:
                if single:
                    op, fields = requests[0]
                    return [await pool.request(op, **fields)]
                results: list[Any] = []
                for pending in await pool.pick().start_batch(requests):
                    try:
                        results.append(await pending.wait())
                    except AllQError as error:
                        results.append(error)
                return results
            except ConnectionLost as lost:
                self.connection_lost(str(lost))
                raise NoServer(f"connection to server {self.server_id} lost") from None
            finally:
                self.inflight.discard(scope)
                self.load -= len(requests)
        raise NoServer(f"server {self.server_id} did not answer in time or was marked down")

    def cancel_inflight(self, reason: str) -> None:
        if self.inflight:
            log.warning(
                "server %s: cancelling %d request(s): %s", self.key, len(self.inflight), reason
            )
        for scope in list(self.inflight):
            scope.cancel()

    def connection_lost(self, reason: str) -> None:
        self._record(self._book.record_failure(self.key, reason, trio.current_time(), fatal=True))
        self._connected_scope.cancel()  # the link task reconnects

    def stop(self) -> None:
        """Removed from the cluster: cancel everything and end the link task."""
        self.removed = True
        self.cancel_inflight("server removed")
        self._scope.cancel()

    # -- the link task ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = self.settings.backoff_min_s
        with self._scope:
            while not self.removed:
                try:
                    await self._connected()
                    backoff = self.settings.backoff_min_s
                except (OSError, HandshakeFailed, ConnectionLost, trio.BrokenResourceError) as exc:
                    self._record(
                        self._book.record_failure(
                            self.key, f"connect: {exc}", trio.current_time(), fatal=True
                        )
                    )
                    log.debug("server %s: %s", self.key, exc)
                await trio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self.settings.backoff_max_s)

    async def _connected(self) -> None:
        async with open_pool(
            self.address.host,
            self.address.port,
            self._client_keys,
            self._server_public,
            size=self.settings.pool_size,
        ) as pool:
            with trio.CancelScope() as connected:
                self._connected_scope = connected
                pong = await pool.request("ping")
                if not self._learn_identity(str(pong["server_id"])):
                    await trio.sleep_forever()  # misconfigured: stay down, the log says why
                self.pool = pool
                try:
                    await self._probe_loop(pool)
                finally:
                    self.pool = None
            if connected.cancelled_caught:
                raise ConnectionLost("connection lost")

    def _learn_identity(self, server_id: str) -> bool:
        if self.configured_name is not None and server_id != self.configured_name:
            log.error(
                "server at %s calls itself %r but is configured as %r: not using it",
                self.key,
                server_id,
                self.configured_name,
            )
            return False
        if self.server_id != server_id:
            log.info("server at %s is %s", self.key, server_id)
        self.server_id = server_id
        return True

    async def _probe_loop(self, pool: Pool) -> None:
        """Ping every probe interval (drift-free); feed the book; refresh the job count."""
        interval = self.settings.probe_interval_s
        next_probe = trio.current_time()
        probes = 0
        while True:
            start = trio.current_time()
            with trio.move_on_after(self.settings.probe_timeout_s) as probe:
                try:
                    if probes % 5 == 0 or self.draining:
                        stats = await pool.request("stats")
                        self.jobs_total = int(stats["jobs"]["total"])
                    else:
                        await pool.request("ping")
                except AllQError as error:
                    self._record(self._book.record_failure(self.key, error.message, start))
                    probes += 1
                    next_probe += interval
                    await trio.sleep_until(max(next_probe, trio.current_time()))
                    continue
            now = trio.current_time()
            if probe.cancelled_caught:
                self._record(self._book.record_failure(self.key, "probe timed out", now))
            else:
                self._record(self._book.record_success(self.key, now - start, now))
            probes += 1
            next_probe += interval * random.uniform(0.9, 1.1)
            await trio.sleep_until(max(next_probe, now))

    def _record(self, transition: Transition | None) -> None:
        if transition is None:
            return
        if transition.new is Health.DOWN:
            self.cancel_inflight("server marked down")
        level = logging.WARNING if transition.new is not Health.UP else logging.INFO
        log.log(
            level,
            "server %s (%s): %s -> %s (%s)",
            self.server_id,
            self.key,
            transition.old.value,
            transition.new.value,
            transition.reason,
        )
        self._on_transition(self, transition)
