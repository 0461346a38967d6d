"""Gatekeeper: the server side of the encrypted transport, with pre-auth limits (wire.md §8).

Before a peer has authenticated, the server keeps no state for it beyond the socket and
a few counters here: at most `max_unauthenticated` handshakes in progress (and
`max_unauthenticated_per_source` per address), and handshake rate limits as token buckets
(global and per address). A peer over any limit, or failing the handshake, is closed
without a single byte sent. Failures are logged at most once per reason per second.

The allow-list can be replaced at run time (SIGHUP); handshakes use the list current at
their start, and `revoked()` says which live peers lost their key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from allq.wire.handshake import ReplayCache
from allq.wire.keyfiles import AllowList, KeyPair
from allq.wire.stream import HandshakeFailed, server_handshake
from allq.wire.transport import MessageStream

log = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class GateLimits:
    max_unauthenticated: int = 64
    max_unauthenticated_per_source: int = 8
    handshake_rate: float = 100.0
    handshake_burst: float = 200.0
    handshake_rate_per_source: float = 10.0
    handshake_burst_per_source: float = 20.0
    handshake_timeout_s: float = 5.0
    max_frame: int = 1_048_576 + 65_536


@dataclass(slots=True)
class _Bucket:
    rate: float
    capacity: float
    tokens: float
    at: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(slots=True)
class GateStats:
    handshakes_ok: int = 0
    handshakes_failed: int = 0
    refused_limits: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)


class Gatekeeper:
    """A `Transport` for `allq.server.serve`: handshake under limits, or refuse silently."""

    def __init__(
        self,
        server_keys: KeyPair,
        allowlist: AllowList,
        *,
        limits: GateLimits | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.server_keys = server_keys
        self.allowlist = allowlist
        self.limits = limits or GateLimits()
        self.replay_cache = ReplayCache()
        self.stats = GateStats()
        self._wall_clock = wall_clock
        self._pending = 0
        self._pending_by_source: dict[str, int] = {}
        self._global = _Bucket(
            self.limits.handshake_rate,
            self.limits.handshake_burst,
            self.limits.handshake_burst,
            0.0,
        )
        self._per_source: dict[str, _Bucket] = {}
        self._last_log: dict[str, float] = {}

    async def __call__(self, stream: trio.abc.Stream) -> MessageStream | None:
        source = _source_of(stream)
        if not self._admit(source):
            self.stats.refused_limits += 1
            self._log_failure("over pre-authentication limits", source)
            await trio.aclose_forcefully(stream)
            return None
        self._pending += 1
        self._pending_by_source[source] = self._pending_by_source.get(source, 0) + 1
        try:
            messages = await server_handshake(
                stream,
                self.server_keys,
                self.allowlist,
                self.replay_cache,
                self._wall_clock,
                max_frame=self.limits.max_frame,
                handshake_timeout=self.limits.handshake_timeout_s,
            )
        except HandshakeFailed as failure:
            self.stats.handshakes_failed += 1
            reasons = self.stats.failures_by_reason
            reasons[failure.reason] = reasons.get(failure.reason, 0) + 1
            self._log_failure(str(failure), source)
            return None
        finally:
            self._pending -= 1
            left = self._pending_by_source[source] - 1
            if left:
                self._pending_by_source[source] = left
            else:
                del self._pending_by_source[source]
        self.stats.handshakes_ok += 1
        log.info("client %s authenticated from %s", messages.peer_name, source)
        return messages

    def _admit(self, source: str) -> bool:
        limits = self.limits
        if self._pending >= limits.max_unauthenticated:
            return False
        if self._pending_by_source.get(source, 0) >= limits.max_unauthenticated_per_source:
            return False
        now = trio.current_time()
        bucket = self._per_source.get(source)
        if bucket is None:
            if len(self._per_source) > 10_000:  # bound the table: forget full buckets
                self._per_source = {
                    key: b for key, b in self._per_source.items() if b.tokens < b.capacity
                }
            burst = limits.handshake_burst_per_source
            bucket = self._per_source[source] = _Bucket(
                limits.handshake_rate_per_source, burst, burst, now
            )
        return bucket.take(now) and self._global.take(now)

    def _log_failure(self, reason: str, source: str) -> None:
        now = trio.current_time()
        key = reason.split(" (", 1)[0]
        if now - self._last_log.get(key, -1e9) >= 1.0:
            self._last_log[key] = now
            log.warning("handshake from %s refused: %s", source, reason)


def _source_of(stream: trio.abc.Stream) -> str:
    socket = getattr(stream, "socket", None)
    if socket is None:
        return "memory"
    try:
        return str(socket.getpeername()[0])
    except OSError:
        return "?"
