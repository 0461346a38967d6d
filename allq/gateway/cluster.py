"""Gateway: the core of `allq gateway`, federating queue servers (semantics.md §18).

It implements `GatewayCore` (allq/gateway/core.py) over a set of `ServerLink`s:

* **ids**: a job's gateway id is `<server_id>,<local_id>`, the server_id being the one the
  server reports (`ping`); the gateway sends only the local id to the server;
* **puts**: with `parent_id` to the parent's server; with `idempotency_key` to the server
  picked by rendezvous hashing of the key over the configured servers (so a retry lands
  on the same server); otherwise power of two choices on in-flight load among routable,
  non-draining servers. A put that may have reached a server is never retried elsewhere;
  a DRAINING answer (nothing was stored) moves on to another server;
* **reserve**: a non-blocking round over every routable server (shuffled), then, with
  time left, a blocking reserve on all of them at once; the first that delivers wins and
  the others are cancelled (jobs they delivered meanwhile go back by `unreserve`, which
  the wire client does for abandoned reserves). Servers that become routable during the
  wait are asked too, so there are no false empties;
* **tube-wide operations** go to every routable server; the settings are remembered and
  re-applied to a server that comes back or joins; throttles are split as float shares
  and re-split when the set of routable servers changes;
* **reads** (peek, stats) are safe to repeat and skip a server that fails.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from allq.errors import AllQError, BadFormat, Draining, NotFound, TimedOut, renumber_item_error
from allq.gateway.errors import NoServer
from allq.gateway.health import Health, HealthBook, HealthPolicy, Transition
from allq.gateway.hints import ReadyHints
from allq.gateway.links import LinkSettings, ServerAddress, ServerLink
from allq.tubes.validate import LOCAL_ID_RE
from allq.wire.keyfiles import KeyPair, PublicKey

log = logging.getLogger(__name__)

JobView = dict[str, Any]
_COUNT_FIELDS = (
    "ready",
    "delayed",
    "reserved",
    "buried",
    "waiting",
    "urgent",
    "total_puts",
    "total_completed",
    "total_timeouts",
    "total_buried",
    "waiting_reservers",
)
_PEEK_OPS = {"ready": "peek_ready", "delayed": "peek_delayed", "buried": "peek_buried"}
#: Extra time a blocking reserve request may take beyond its wait.
_WAIT_MARGIN_S = 5.0


@dataclass(slots=True)
class TubeSettings:
    """What the gateway last applied to a tube cluster-wide (re-applied on rejoin)."""

    paused: bool | None = None
    pause_until: float | None = None  # unix time; None with paused=True: until unpause
    draining: bool | None = None
    throttle_tps: float | None = None  # cluster-wide; None: no throttle set by us
    throttle_removed: bool = False
    shard_limit: int | None = None


@dataclass(frozen=True, slots=True)
class ServerSpec:
    address: ServerAddress
    name: str | None = None
    public_key: PublicKey | None = None


#: One item of `done_many` bound for a server: (its index, gateway job id, wire fields).
_DoneItem = tuple[int, str, dict[str, Any]]


@dataclass(slots=True, kw_only=True)
class GatewayConfig:
    servers: list[ServerSpec]
    client_keys: KeyPair
    server_public: PublicKey | None = None
    health: HealthPolicy = field(default_factory=HealthPolicy)
    links: LinkSettings = field(default_factory=LinkSettings)


class Gateway:
    """The gateway core. Start it with `open_gateway(config)`."""

    def __init__(self, config: GatewayConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.book = HealthBook(config.health)
        self.links: dict[str, ServerLink] = {}  # by address
        self._nursery = nursery
        self._settings: dict[str, TubeSettings] = {}
        self.changed = trio.Event()
        self._routable_ids: frozenset[str] = frozenset()
        # Observability (allq.gateway.metrics): jobs handed out by reserve, by tube.
        self.reserved_by_tube: dict[str, int] = {}
        #: Where ready jobs probably are: the order in which a reserve asks servers.
        self.hints = ReadyHints()

    # -- lifecycle ---------------------------------------------------------------------------

    async def _start_link(self, spec: ServerSpec) -> ServerLink:
        public = spec.public_key or self.config.server_public
        if public is None:
            raise BadFormat(f"no public key for server {spec.address}", field="server_key")
        link = ServerLink(
            spec.address,
            name=spec.name,
            client_keys=self.config.client_keys,
            server_public=public,
            book=self.book,
            settings=self.config.links,
            on_transition=self._on_transition,
        )
        self.links[link.key] = link
        await self._nursery.start(link.run)
        return link

    def now(self) -> float:
        return time.time()

    def _signal(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _on_transition(self, link: ServerLink, transition: Transition) -> None:
        if transition.new is Health.UP:
            self._nursery.start_soon(self._reapply, link)
        routable = frozenset(lid for lid, lk in self._by_id().items() if lk.routable())
        if routable != self._routable_ids:
            self._routable_ids = routable
            self._nursery.start_soon(self._resplit_throttles)
        self._signal()

    # -- lookup ------------------------------------------------------------------------------

    def _by_id(self) -> dict[str, ServerLink]:
        return {
            link.server_id: link
            for link in self.links.values()
            if link.server_id is not None and not link.removed
        }

    def _routable(self) -> list[ServerLink]:
        return [link for link in self.links.values() if link.routable()]

    def _require_routable(self) -> list[ServerLink]:
        links = self._routable()
        if not links:
            raise NoServer("no queue server is reachable")
        return links

    def _link_for_id(self, job_id: str, field_name: str = "job_id") -> tuple[ServerLink, str]:
        server, sep, local = job_id.partition(",")
        if not sep or not LOCAL_ID_RE.fullmatch(local):
            raise BadFormat(f"{field_name} must be '<server_id>,<job id>'", field=field_name)
        link = self._by_id().get(server)
        if link is None:
            raise NotFound(f"no server {server!r} for job {job_id}", field=field_name)
        return link, local

    def _full_id(self, link: ServerLink, view: dict[str, Any]) -> dict[str, Any]:
        out = dict(view)
        if isinstance(out.get("id"), str) and "," not in out["id"]:
            out["id"] = f"{link.server_id},{out['id']}"
        if isinstance(out.get("parent_id"), str) and "," not in out["parent_id"]:
            out["parent_id"] = f"{link.server_id},{out['parent_id']}"
        out["server"] = link.server_id
        return out

    # -- puts ----------------------------------------------------------------------------------

    def _rendezvous(self, key: str) -> ServerLink:
        candidates = [link for link in self.links.values() if link.server_id and not link.removed]
        if not candidates:
            raise NoServer("no queue server is known yet")

        def score(link: ServerLink) -> bytes:
            return hashlib.blake2b(f"{key}\x00{link.server_id}".encode(), digest_size=8).digest()

        return max(candidates, key=score)

    def _put_candidates(self, fields: dict[str, Any]) -> list[ServerLink]:
        """Servers to try in order for one put (more than one only when retrying is safe)."""
        parent = fields.get("parent_id")
        if isinstance(parent, str):
            link, local = self._link_for_id(parent, "parent_id")
            fields["parent_id"] = local
            return [link]
        key = fields.get("idempotency_key")
        if isinstance(key, str):
            return [self._rendezvous(key)]
        links = [link for link in self._require_routable() if not link.draining]
        if not links:
            raise NoServer("every reachable queue server is draining")
        if len(links) >= 2:
            first, second = random.sample(links, 2)
            best = first if first.load <= second.load else second
        else:
            best = links[0]
        rest = [link for link in links if link is not best]
        random.shuffle(rest)
        return [best, *rest]

    async def _put(self, op: str, tube: str, fields: dict[str, Any]) -> dict[str, Any]:
        fields = dict(fields)
        candidates = self._put_candidates(fields)
        draining: Draining | None = None
        for link in candidates:
            try:
                result = await link.call(op, tube=tube, **fields)
            except Draining as error:  # nothing was stored: another server may take it
                draining = error
                continue
            if result.get("state") == "ready":
                self.hints.added(link.key, tube)
            return self._full_id(link, result)
        assert draining is not None
        raise draining

    async def put(self, tube: str, fields: dict[str, Any]) -> dict[str, Any]:
        return await self._put("put", tube, fields)

    async def put_parent(self, tube: str, fields: dict[str, Any]) -> dict[str, Any]:
        return await self._put("put_parent", tube, fields)

    async def put_batch(self, tube: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items routed one by one; one put_batch per server; results in input order."""
        results: list[dict[str, Any] | None] = [None] * len(items)
        groups: dict[str, tuple[ServerLink, list[int], list[dict[str, Any]]]] = {}
        for index, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise BadFormat(f"jobs[{index}] must be an object", field=f"jobs[{index}]")
                fields = dict(item)
                link = self._put_candidates(fields)[0]
            except AllQError as error:
                results[index] = {"error": _error_record(error, f"jobs[{index}].")}
                continue
            group = groups.setdefault(link.key, (link, [], []))
            group[1].append(index)
            group[2].append({"tube": tube, **fields})

        async def send(link: ServerLink, indexes: list[int], batch: list[dict[str, Any]]) -> None:
            try:
                answers = await link.call("put_batch", jobs=batch)
            except AllQError as error:
                for index in indexes:
                    results[index] = {"error": _error_record(error)}
                return
            for position, (index, answer) in enumerate(zip(indexes, answers, strict=True)):
                if "error" in answer:
                    answer["error"] = renumber_item_error(answer["error"], position, index)
                    results[index] = answer
                else:
                    results[index] = self._full_id(link, answer)
            self.hints.added(link.key, tube, sum(a.get("state") == "ready" for a in answers))

        async with trio.open_nursery() as nursery:
            for link, indexes, batch in groups.values():
                nursery.start_soon(send, link, indexes, batch)
        return [
            result if result is not None else {"error": {"code": "INTERNAL"}} for result in results
        ]

    # -- reserve -------------------------------------------------------------------------------

    async def reserve(
        self, tubes: list[str], *, count: int = 1, wait_s: float = 0.0
    ) -> list[JobView]:
        jobs = await self._reserve(tubes, count, wait_s)
        _count_tubes(self.reserved_by_tube, jobs)
        return jobs

    async def _reserve(self, tubes: list[str], count: int, wait_s: float) -> list[JobView]:
        links = self._require_routable()
        random.shuffle(links)
        hints = self.hints
        if len(links) > 1:
            # Servers hinted to hold ready jobs first, in random order among themselves (most
            # hinted first would send every concurrent reserve to the same server).
            links.sort(key=lambda link: hints.likely(link.key, tubes) <= 0)
        deadline = trio.current_time() + wait_s
        jobs: list[JobView] = []
        answered = 0
        for link in links:
            asked = count - len(jobs)
            try:
                got = await link.call("reserve", tubes=tubes, count=asked, timeout=0)
            except (TimedOut, NoServer) as outcome:
                if isinstance(outcome, TimedOut):
                    answered += 1
                    hints.taken(link.key, tubes, (), asked)
                continue
            answered += 1
            hints.taken(link.key, tubes, (job["tube"] for job in got), asked)
            jobs.extend(self._full_id(link, job) for job in got)
            if len(jobs) >= count:
                return jobs
        if jobs:
            return jobs
        if wait_s <= 0 or trio.current_time() >= deadline:
            if not answered:
                raise NoServer("no queue server answered the reserve")
            return []
        return await self._wait_everywhere(tubes, count, deadline)

    async def _wait_everywhere(
        self, tubes: list[str], count: int, deadline: float
    ) -> list[JobView]:
        """Blocking reserves on every routable server at once; the first delivery wins."""
        jobs: list[JobView] = []
        asked: set[str] = set()
        timed_out = 0

        async def wait_on(link: ServerLink, scope: trio.CancelScope) -> None:
            nonlocal timed_out
            left = deadline - trio.current_time()
            if left <= 0:
                return
            try:
                got = await link.call(
                    "reserve",
                    timeout_s=left + _WAIT_MARGIN_S,
                    tubes=tubes,
                    count=count,
                    timeout=round(min(left, 300.0), 3),
                )
            except TimedOut:
                timed_out += 1
                return
            except NoServer:
                return
            if jobs:  # another server won in the same instant: give these back
                await self._unreserve(link, got)
                return
            jobs.extend(self._full_id(link, job) for job in got)
            scope.cancel()

        async with trio.open_nursery() as nursery:
            for link in self._routable():
                asked.add(link.key)
                nursery.start_soon(wait_on, link, nursery.cancel_scope)
            while trio.current_time() < deadline and not jobs:
                with trio.move_on_at(deadline):
                    await self.changed.wait()
                for link in self._routable():  # servers that became routable meanwhile
                    if link.key not in asked:
                        asked.add(link.key)
                        nursery.start_soon(wait_on, link, nursery.cancel_scope)
            if jobs or trio.current_time() >= deadline:
                nursery.cancel_scope.cancel()
        if not jobs and not timed_out and not self._routable():
            raise NoServer("every queue server went away during the reserve")
        return jobs

    async def _unreserve(self, link: ServerLink, jobs: list[dict[str, Any]]) -> None:
        with trio.CancelScope(shield=True):
            for job in jobs:
                try:
                    await link.call("unreserve", job_id=job["id"], lease=job["lease"])
                except AllQError as error:
                    log.info("unreserve of %s on %s: %s", job["id"], link.server_id, error.code)

    # -- job operations ------------------------------------------------------------------------

    async def job_op(self, op: str, job_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        link, local = self._link_for_id(job_id)
        result = await link.call(op, job_id=local, **fields)
        return self._full_id(link, result) if "id" in result else result

    async def done_many(self, items: list[tuple[str, str | None]]) -> list[dict[str, Any]]:
        """`done` for each item, answered in order. The items of one server go in one batch
        write (so one job's repeated items run in the order given); servers concurrently."""
        results: list[dict[str, Any]] = [{} for _ in items]
        by_link: dict[ServerLink, list[_DoneItem]] = {}
        for index, (job_id, lease) in enumerate(items):
            try:
                link, local = self._link_for_id(job_id)
            except AllQError as error:
                results[index] = {"id": job_id, "error": _error_record(error)}
                continue
            fields = {"job_id": local} if lease is None else {"job_id": local, "lease": lease}
            by_link.setdefault(link, []).append((index, job_id, fields))

        async def one_server(link: ServerLink, batch: list[_DoneItem]) -> None:
            try:
                answers = await link.call_batch([("done", fields) for _, _, fields in batch])
            except AllQError as error:
                answers = [error] * len(batch)
            for (index, job_id, _), answer in zip(batch, answers, strict=True):
                if isinstance(answer, AllQError):
                    results[index] = {"id": job_id, "error": _error_record(answer)}
                else:
                    results[index] = {"id": job_id, "state": "gone"}

        if len(by_link) == 1:  # the usual case: no task needed
            await one_server(*next(iter(by_link.items())))
        else:
            async with trio.open_nursery() as nursery:
                for link, batch in by_link.items():
                    nursery.start_soon(one_server, link, batch)
        return results

    # -- tubes ---------------------------------------------------------------------------------

    async def _each(
        self, fn: Callable[[ServerLink], Awaitable[Any]], links: list[ServerLink] | None = None
    ) -> dict[str, Any]:
        """Run `fn` on every routable server concurrently: {server_id: result | error}."""
        results: dict[str, Any] = {}

        async def one(link: ServerLink) -> None:
            try:
                results[str(link.server_id)] = await fn(link)
            except AllQError as error:
                results[str(link.server_id)] = error

        async with trio.open_nursery() as nursery:
            for link in links if links is not None else self._require_routable():
                nursery.start_soon(one, link)
        return results

    async def peek_tube(self, tube: str, state: str) -> JobView:
        op = _PEEK_OPS.get(state)
        if op is None:
            raise BadFormat("state must be ready, delayed or buried", field="state")
        links = self._require_routable()
        for link in links:
            try:
                return self._full_id(link, await link.call(op, tube=tube))
            except (NotFound, NoServer):
                continue
        raise NotFound(f"no {state} job in tube {tube!r} on any server")

    async def kick(self, tube: str, bound: int) -> int:
        kicked = 0
        for link in self._require_routable():
            if kicked >= bound:
                break
            try:
                result = await link.call("kick", tube=tube, bound=bound - kicked)
            except NoServer:
                continue
            kicked += int(result["kicked"])
        return kicked

    async def tube_control(self, op: str, tube: str, fields: dict[str, Any]) -> dict[str, Any]:
        links = self._require_routable()
        settings = self._settings.setdefault(tube, TubeSettings())
        per_server: dict[str, float] = {}
        if op == "throttle":
            tps = float(fields["tps"])
            share = tps / len(links) if tps > 0 else 0.0
            settings.throttle_tps = tps if tps > 0 else None
            settings.throttle_removed = tps <= 0
            per_server = {str(link.server_id): share for link in links}
            results = await self._each(
                lambda link: link.call("throttle", tube=tube, tps=share), links
            )
        else:
            self._remember(settings, op, fields)
            results = await self._each(lambda link: link.call(op, tube=tube, **fields), links)
        errors = [r for r in results.values() if isinstance(r, AllQError)]
        applied = {sid: r for sid, r in results.items() if not isinstance(r, AllQError)}
        if not applied and errors:
            raise errors[0]
        reply: dict[str, Any] = {"servers": len(applied)}
        if op == "throttle":
            reply["per_server"] = {
                sid: share for sid, share in per_server.items() if sid in applied
            }
        if op == "clear":
            for key in ("ready", "delayed", "reserved", "buried", "waiting"):
                reply[key] = sum(int(r.get(key, 0)) for r in applied.values())
        if op == "pause":
            reply["pause_until"] = settings.pause_until
        return reply

    def _remember(self, settings: TubeSettings, op: str, fields: dict[str, Any]) -> None:
        if op == "pause":
            duration = fields.get("duration")
            if duration == 0:
                settings.paused, settings.pause_until = False, None
            else:
                settings.paused = True
                settings.pause_until = None if duration is None else self.now() + float(duration)
        elif op == "unpause":
            settings.paused, settings.pause_until = False, None
        elif op in ("drain", "undrain"):
            settings.draining = op == "drain"
        elif op == "set_shard_limit":
            settings.shard_limit = int(fields["limit"])

    async def _reapply(self, link: ServerLink) -> None:
        """A server came back or joined: give it the tube settings the cluster has."""
        for tube, settings in list(self._settings.items()):
            try:
                if settings.paused is True:
                    if settings.pause_until is None:
                        await link.call("pause", tube=tube)
                    elif (left := settings.pause_until - self.now()) > 0:
                        await link.call("pause", tube=tube, duration=round(left, 3))
                    else:
                        await link.call("unpause", tube=tube)
                elif settings.paused is False:
                    await link.call("unpause", tube=tube)
                if settings.draining is not None:
                    await link.call("drain" if settings.draining else "undrain", tube=tube)
                if settings.shard_limit is not None:
                    await link.call("set_shard_limit", tube=tube, limit=settings.shard_limit)
            except AllQError as error:
                log.warning("re-applying settings of %s to %s: %s", tube, link.server_id, error)
        await self._resplit_throttles()

    async def _resplit_throttles(self) -> None:
        links = self._routable()
        if not links:
            return
        for tube, settings in list(self._settings.items()):
            if settings.throttle_tps is None and not settings.throttle_removed:
                continue
            share = (settings.throttle_tps or 0.0) / len(links)
            await self._each(_throttle_call(tube, share), links)

    async def tube_stats(self, tube: str) -> dict[str, Any]:
        results = await self._each(lambda link: link.call("stats_tube", tube=tube))
        found = {sid: r for sid, r in results.items() if not isinstance(r, AllQError)}
        if not found:
            raise NotFound(f"no server has tube {tube!r}", field="tube")
        total: dict[str, Any] = {"name": tube}
        for key in _COUNT_FIELDS:
            total[key] = sum(int(r.get(key, 0)) for r in found.values())
        total["completions_per_s"] = sum(float(r["completions_per_s"]) for r in found.values())
        total["oldest_ready_age_s"] = max(float(r["oldest_ready_age_s"]) for r in found.values())
        averages = [
            float(r["avg_work_s"]) for r in found.values() if r.get("avg_work_s") is not None
        ]
        total["avg_work_s"] = sum(averages) / len(averages) if averages else None
        total["paused"] = any(bool(r["paused"]) for r in found.values())
        total["draining"] = any(bool(r["draining"]) for r in found.values())
        settings = self._settings.get(tube)
        total["throttle_tps"] = settings.throttle_tps if settings is not None else None
        total["fair"] = any(bool(r.get("fair")) for r in found.values())
        total["servers"] = found
        return total

    async def list_tubes(self) -> list[dict[str, Any]]:
        async def names(link: ServerLink) -> list[str]:
            out: list[str] = []
            after: str | None = None
            while True:
                paging: dict[str, Any] = {} if after is None else {"after": after}
                page = await link.call("list_tubes", **paging)
                out.extend(page["tubes"])
                after = page["next_after"]
                if after is None:
                    return out

        per_server = await self._each(names)
        all_names = sorted({n for r in per_server.values() if isinstance(r, list) for n in r})
        summaries: list[dict[str, Any]] = []
        for name in all_names:
            try:
                stats = await self.tube_stats(name)
            except NotFound:
                continue
            summaries.append(
                {
                    key: stats[key]
                    for key in ("name", "ready", "reserved", "delayed", "buried", "waiting")
                }
            )
        return summaries

    async def stats(self) -> dict[str, Any]:
        results = await self._each(lambda link: link.call("stats"))
        servers = {sid: r for sid, r in results.items() if not isinstance(r, AllQError)}
        jobs = dict.fromkeys(("ready", "delayed", "reserved", "buried", "waiting", "total"), 0)
        for server in servers.values():
            for key in jobs:
                jobs[key] += int(server["jobs"][key])
        return {
            "jobs": jobs,
            "servers": servers,
            "tubes": await self.list_tubes(),
            "unavailable": sorted(sid for sid, r in results.items() if isinstance(r, AllQError)),
        }

    # -- cluster ---------------------------------------------------------------------------

    def servers(self) -> list[dict[str, Any]]:
        return [link.snapshot() for link in self.links.values() if not link.removed]

    def ready(self) -> tuple[bool, str]:
        if any(link.routable() for link in self.links.values()):
            return True, ""
        if not self.links:
            return False, "no queue server is configured"
        return False, "no queue server is up"

    async def add_server(self, address: str, name: str | None = None) -> dict[str, Any]:
        try:
            parsed = ServerAddress.parse(address)
        except ValueError as exc:
            raise BadFormat(str(exc), field="address") from None
        if str(parsed) in self.links and not self.links[str(parsed)].removed:
            raise BadFormat(f"server {parsed} is already configured", field="address")
        link = await self._start_link(ServerSpec(parsed, name))
        return link.snapshot()

    def _link_by_server_id(self, server_id: str) -> ServerLink:
        link = self._by_id().get(server_id)
        if link is None:
            raise NotFound(f"no server {server_id!r}", field="server_id")
        return link

    async def drain_server(self, server_id: str) -> dict[str, Any]:
        link = self._link_by_server_id(server_id)
        link.draining = True
        self._nursery.start_soon(self._remove_when_empty, link)
        return link.snapshot()

    async def _remove_when_empty(self, link: ServerLink) -> None:
        while not link.removed:
            if link.routable():
                try:
                    stats = await link.call("stats")
                    if int(stats["jobs"]["total"]) == 0:
                        self._drop(link)
                        return
                except AllQError:
                    pass
            with trio.move_on_after(link.settings.probe_interval_s):
                await self.changed.wait()

    async def remove_server(self, server_id: str, *, force: bool = False) -> dict[str, Any]:
        link = self._link_by_server_id(server_id)
        if not force:
            held = link.jobs_total
            if link.routable():
                held = int((await link.call("stats"))["jobs"]["total"])
            if held:
                raise BadFormat(
                    f"server {server_id} still holds {held} job(s): drain it, or force",
                    field="force",
                )
        snapshot = link.snapshot()
        self._drop(link)
        return snapshot

    def _drop(self, link: ServerLink) -> None:
        log.info("server %s (%s) removed from the cluster", link.server_id, link.key)
        link.stop()
        del self.links[link.key]
        self.book.remove(link.key)
        self._routable_ids = frozenset()
        self._nursery.start_soon(self._resplit_throttles)
        self._signal()


#: Tubes counted by name in `reserved_by_tube`; past it, counts go under "" (bounded memory).
MAX_COUNTED_TUBES = 10_000


def _count_tubes(counts: dict[str, int], jobs: list[JobView]) -> None:
    for job in jobs:
        tube = str(job.get("tube", ""))
        if tube not in counts and len(counts) >= MAX_COUNTED_TUBES:
            tube = ""
        counts[tube] = counts.get(tube, 0) + 1


def _throttle_call(tube: str, share: float) -> Callable[[ServerLink], Awaitable[Any]]:
    def call(link: ServerLink) -> Awaitable[Any]:
        return link.call("throttle", tube=tube, tps=share)

    return call


def _error_record(error: AllQError, prefix: str = "") -> dict[str, Any]:
    """`error.to_record()` with its field under `prefix` (e.g. `jobs[3].`)."""
    record: dict[str, Any] = error.to_record()
    field = record.get("field")
    if field is not None and not field.startswith(prefix):
        record["field"] = prefix + field
    return record


@asynccontextmanager
async def open_gateway(config: GatewayConfig) -> AsyncIterator[Gateway]:
    """Start a gateway core: one link task per configured server, in a nursery it owns.

    Resource handling: on exit every link task is cancelled and every connection closed.
    """
    async with trio.open_nursery() as nursery:
        gateway = Gateway(config, nursery)
        for spec in config.servers:
            await gateway._start_link(spec)
        try:
            yield gateway
        finally:
            nursery.cancel_scope.cancel()


async def wait_until_ready(
    gateway: Gateway, *, servers: int = 1, limit_s: float = math.inf
) -> None:
    """Wait until at least `servers` servers are routable (tests and `allq up`)."""
    with trio.fail_after(limit_s):
        while len(gateway._routable()) < servers:
            await gateway.changed.wait()
