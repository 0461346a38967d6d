"""HealthBook: the pure health record of every queue server a gateway knows (design.md §2.6).

Charter: per server, a state UP / SUSPECT / DOWN with consecutive failure and success
counts, the last success time, the last error and the round-trip time. The book takes
`now` explicitly, never reads a clock, never does I/O and never imports trio: the probe
tasks in `allq.gateway.cluster` feed it and act on the transitions it returns.

Rules:
* a failure makes an UP server SUSPECT; `fail_after` consecutive failures make it DOWN;
  a lost connection (`record_failure(..., fatal=True)`) makes it DOWN at once;
* `recover_after` consecutive successes bring a DOWN (or SUSPECT) server back UP;
* routable = not DOWN and heard from within `stale_after_s`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Health(enum.Enum):
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Transition:
    server: str
    old: Health
    new: Health
    reason: str


@dataclass(slots=True)
class ServerHealth:
    state: Health = Health.DOWN
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_ok_at: float | None = None
    last_error: str | None = None
    rtt_s: float | None = None

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000, 3),
            "last_ok_at": self.last_ok_at,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthPolicy:
    fail_after: int = 3
    recover_after: int = 2
    stale_after_s: float = 10.0

    def __post_init__(self) -> None:
        if self.fail_after < 1 or self.recover_after < 1 or self.stale_after_s <= 0:
            raise ValueError("health thresholds must be positive")


class HealthBook:
    """Health of every known server; every method takes `now` (see the module charter)."""

    def __init__(self, policy: HealthPolicy | None = None) -> None:
        self.policy = policy or HealthPolicy()
        self._servers: dict[str, ServerHealth] = {}

    def add(self, server: str) -> None:
        """A new server starts DOWN until probes succeed."""
        self._servers.setdefault(server, ServerHealth())

    def remove(self, server: str) -> None:
        self._servers.pop(server, None)

    def __contains__(self, server: object) -> bool:
        return server in self._servers

    def get(self, server: str) -> ServerHealth:
        return self._servers[server]

    def record_success(self, server: str, rtt_s: float, now: float) -> Transition | None:
        health = self._servers[server]
        health.consecutive_failures = 0
        health.consecutive_successes += 1
        health.last_ok_at = now
        health.rtt_s = rtt_s
        old = health.state
        if old is Health.SUSPECT or (
            old is Health.DOWN and health.consecutive_successes >= self.policy.recover_after
        ):
            health.state = Health.UP
            health.last_error = None
            return Transition(server, old, Health.UP, "probes succeed")
        return None

    def record_failure(
        self, server: str, error: str, now: float, *, fatal: bool = False
    ) -> Transition | None:
        health = self._servers[server]
        health.consecutive_successes = 0
        health.consecutive_failures += 1
        health.last_error = error
        old = health.state
        if old is Health.DOWN:
            return None
        if fatal or health.consecutive_failures >= self.policy.fail_after:
            health.state = Health.DOWN
        else:
            health.state = Health.SUSPECT
        if health.state is old:
            return None
        return Transition(server, old, health.state, error)

    def routable(self, server: str, now: float) -> bool:
        health = self._servers.get(server)
        if health is None or health.state is Health.DOWN or health.last_ok_at is None:
            return False
        return now - health.last_ok_at <= self.policy.stale_after_s

    def statistics(self) -> dict[str, dict[str, object]]:
        return {server: health.snapshot() for server, health in self._servers.items()}
