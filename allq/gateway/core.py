"""The gateway core: every worker-facing operation, independent of any HTTP front.

All fronts (REST v1, legacy REST, line protocol) call these methods and nothing else.
Arguments are already-typed Python values in the vocabulary of semantics.md §14
(`body` is bytes; durations are seconds); job ids are gateway ids `<server_id>,<local_id>`.
Results are plain dicts/lists using gateway ids. Errors are `allq.errors.AllQError`
subclasses (with `.code` and `.field`) plus `Overloaded` (429) and `NoServer` (503) from
`allq.gateway.errors`.

Job views returned by reserve/peek/get are the server's job view (semantics.md §14) with
the id (and parent_id) prefixed, plus `lease`/`ttr_deadline` on reserve; a front derives
`deadline_in_s`, `delay_left_s` and `age_s` from them with `Gateway.now()`.
"""

from __future__ import annotations

from typing import Any, Protocol

JobView = dict[str, Any]


class GatewayCore(Protocol):
    """What a front may call. Implemented by `allq.gateway.cluster.Gateway`."""

    def now(self) -> float:
        """Unix time, for derived fields (`age_s`, `deadline_in_s`, ...)."""
        ...

    # -- jobs ------------------------------------------------------------------------------
    async def put(self, tube: str, fields: dict[str, Any]) -> dict[str, Any]:
        """`fields`: put arguments of semantics.md §14.1 except `tube` (body as bytes).
        Returns `{"id", "state", "duplicate"}`."""
        ...

    async def put_batch(self, tube: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each item as `put`; results in input order, each `{"id","state","duplicate"}`
        or `{"error": {"code","message","field"?}}`. Envelope errors raise."""
        ...

    async def put_parent(self, tube: str, fields: dict[str, Any]) -> dict[str, Any]: ...

    async def reserve(
        self, tubes: list[str], *, count: int = 1, wait_s: float = 0.0
    ) -> list[JobView]:
        """Long poll across every routable server for up to `wait_s`; [] when it passed."""
        ...

    async def done_many(self, items: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """`(job_id, lease)` pairs; each result `{"id","state":"gone"}` or
        `{"id","error":{...}}`, in input order."""
        ...

    async def job_op(self, op: str, job_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """One of done, delete, touch, release, bury, kick_job, peek, stats_job,
        set_children_started on the job's server; returns the server's result."""
        ...

    # -- tubes -----------------------------------------------------------------------------
    async def peek_tube(self, tube: str, state: str) -> JobView:
        """First server holding one (`state`: ready, delayed, buried); NOT_FOUND if none."""
        ...

    async def kick(self, tube: str, bound: int) -> int: ...

    async def tube_control(self, op: str, tube: str, fields: dict[str, Any]) -> dict[str, Any]:
        """pause (`duration`?), unpause, throttle (`tps`, cluster-wide), drain, undrain,
        set_shard_limit (`limit`), clear: on every routable server. Returns
        `{"servers": n, ...}` (clear adds the summed counts, throttle adds
        `per_server`)."""
        ...

    async def tube_stats(self, tube: str) -> dict[str, Any]:
        """Summed stats_tube plus `"servers": {sid: stats}`; NOT_FOUND if no server has it."""
        ...

    async def list_tubes(self) -> list[dict[str, Any]]: ...

    async def stats(self) -> dict[str, Any]: ...

    # -- cluster ---------------------------------------------------------------------------
    def servers(self) -> list[dict[str, Any]]: ...

    async def add_server(self, address: str, name: str | None = None) -> dict[str, Any]: ...

    async def drain_server(self, server_id: str) -> dict[str, Any]: ...

    async def remove_server(self, server_id: str, *, force: bool = False) -> dict[str, Any]: ...

    def ready(self) -> tuple[bool, str]:
        """(True, "") when at least one server is up, else (False, reason)."""
        ...
