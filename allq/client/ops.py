"""Every client operation as data: the HTTP request to send and how to read the answer.

Sans-IO: nothing here does I/O, so the sync (`AllQ`) and Trio (`AsyncAllQ`) clients are
thin shells that send an `Op` and hand the decoded JSON to `op.parse`. Routes and shapes
are REST v1 (api.md §2, docs/rest.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode

from allq.client.errors import TransportError, error_from_response
from allq.client.model import (
    ItemResult,
    Job,
    JobRef,
    NewJob,
    Put,
    Reserved,
    encode_body,
    item_results,
)

T = TypeVar("T")

#: The gateway's batch limit (api.md §2: up to 1000 jobs per request).
BATCH = 1000


@dataclass(frozen=True, slots=True)
class Op(Generic[T]):
    """One request. `wait_s`: how long the gateway may legitimately hold it (long poll)."""

    method: str
    path: str
    body: Mapping[str, Any] | None
    parse: Callable[[Any], T]
    wait_s: float = 0.0

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()


def decode(status: int, retry_after: str | None, raw: bytes) -> Any:
    """The JSON payload of a 2xx answer; raises the typed error of any other."""
    if not 200 <= status < 300:
        raise error_from_response(status, retry_after, raw)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        raise TransportError(f"HTTP {status} with a body that is not JSON") from None


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _id_lease(job: JobRef, lease: str | None) -> tuple[str, str | None]:
    if isinstance(job, Job):
        return job.id, lease if lease is not None else job.lease
    return job, lease


def _needs_lease(job: JobRef, lease: str | None) -> tuple[str, dict[str, Any]]:
    job_id, found = _id_lease(job, lease)
    if found is None:
        raise ValueError(f"job {job_id}: a lease is needed (pass the reserved Job or lease=)")
    return job_id, {"lease": found}


def _dict(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise TransportError("the gateway answered JSON that is not an object")
    return payload


def _put(payload: Any) -> Put:
    p = _dict(payload)
    return Put(str(p["id"]), str(p["tube"]), str(p["state"]), bool(p.get("duplicate", False)))


def _jobs(payload: Any) -> Reserved:
    p = _dict(payload)
    done = item_results(p["done"]) if "done" in p else []
    return Reserved([Job.from_record(r) for r in p.get("jobs", [])], done)


def _state(payload: Any) -> str:
    return str(_dict(payload).get("state", ""))


def chunks(items: Sequence[T], size: int = BATCH) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _options(**options: Any) -> dict[str, Any]:
    return {name: value for name, value in options.items() if value is not None}


# -- jobs -------------------------------------------------------------------------------------


def put(tube: str, body: bytes | str, **options: Any) -> Op[Put]:
    record = NewJob(body=body, **options).to_record()
    return Op("POST", f"/v1/tubes/{_q(tube)}/jobs", record, _put)


def put_batch(tube: str, jobs: Sequence[bytes | str | NewJob]) -> Op[list[ItemResult]]:
    records = [job.to_record() if isinstance(job, NewJob) else encode_body(job) for job in jobs]
    return Op(
        "POST",
        f"/v1/tubes/{_q(tube)}/jobs",
        {"jobs": records},
        lambda p: item_results(_dict(p).get("jobs")),
    )


def put_parent(tube: str, body: bytes | str, **options: Any) -> Op[Put]:
    record = {**encode_body(body), **_options(**options)}
    return Op("POST", f"/v1/tubes/{_q(tube)}/parents", record, _put)


def reserve(
    tubes: str | Iterable[str],
    *,
    count: int = 1,
    timeout: float = 0.0,
    done: Iterable[JobRef | tuple[str, str]] = (),
) -> Op[Reserved]:
    names = [tubes] if isinstance(tubes, str) else list(tubes)
    body: dict[str, Any] = {"tubes": names, "count": count, "timeout": timeout}
    finished = done_items(done)
    if finished:
        body["done"] = finished
    return Op("POST", "/v1/reserve", body, _jobs, wait_s=timeout)


def done_items(done: Iterable[JobRef | tuple[str, str]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for item in done:
        if isinstance(item, tuple):
            job_id, lease = item
        else:
            job_id, body = _needs_lease(item, None)
            lease = body["lease"]
        out.append({"id": job_id, "lease": lease})
    return out


def done(job: JobRef, lease: str | None = None) -> Op[str]:
    job_id, body = _needs_lease(job, lease)
    return Op("POST", f"/v1/jobs/{_q(job_id)}/done", body, _state)


def done_batch(items: Sequence[dict[str, str]]) -> Op[list[ItemResult]]:
    return Op(
        "POST", "/v1/jobs/done", {"jobs": list(items)}, lambda p: item_results(_dict(p)["jobs"])
    )


def touch(job: JobRef, lease: str | None = None) -> Op[float | None]:
    job_id, body = _needs_lease(job, lease)

    def parse(payload: Any) -> float | None:
        value = _dict(payload).get("deadline_in_s")
        return float(value) if isinstance(value, int | float) else None

    return Op("POST", f"/v1/jobs/{_q(job_id)}/touch", body, parse)


def release(
    job: JobRef,
    lease: str | None = None,
    *,
    delay: float | None = None,
    priority: int | None = None,
) -> Op[str]:
    job_id, body = _needs_lease(job, lease)
    body.update(_options(delay=delay, priority=priority))
    return Op("POST", f"/v1/jobs/{_q(job_id)}/release", body, _state)


def bury(job: JobRef, lease: str | None = None, *, priority: int | None = None) -> Op[str]:
    job_id, body = _needs_lease(job, lease)
    body.update(_options(priority=priority))
    return Op("POST", f"/v1/jobs/{_q(job_id)}/bury", body, _state)


def kick_job(job: JobRef) -> Op[str]:
    job_id, _ = _id_lease(job, None)
    return Op("POST", f"/v1/jobs/{_q(job_id)}/kick", None, _state)


def get(job: JobRef) -> Op[Job]:
    job_id, _ = _id_lease(job, None)
    return Op("GET", f"/v1/jobs/{_q(job_id)}", None, lambda p: Job.from_record(_dict(p)))


def delete(job: JobRef, lease: str | None = None) -> Op[str | None]:
    """Lease checked only when given (a Job's own lease is not sent: operator delete)."""
    job_id = job.id if isinstance(job, Job) else job
    query = f"?{urlencode({'lease': lease})}" if lease is not None else ""

    def parse(payload: Any) -> str | None:
        previous = _dict(payload).get("previous_state")
        return str(previous) if previous is not None else None

    return Op("DELETE", f"/v1/jobs/{_q(job_id)}{query}", None, parse)


def children_started(job: JobRef) -> Op[dict[str, Any]]:
    job_id, _ = _id_lease(job, None)
    return Op("POST", f"/v1/jobs/{_q(job_id)}/children-started", None, _dict)


# -- tubes ------------------------------------------------------------------------------------


def peek(tube: str, state: str = "ready") -> Op[Job]:
    path = f"/v1/tubes/{_q(tube)}/peek?{urlencode({'state': state})}"
    return Op("GET", path, None, lambda p: Job.from_record(_dict(p)))


def kick(tube: str, bound: int = 1) -> Op[int]:
    return Op(
        "POST", f"/v1/tubes/{_q(tube)}/kick", {"bound": bound}, lambda p: int(_dict(p)["kicked"])
    )


def tube_op(
    method: str, tube: str, action: str, body: Mapping[str, Any] | None
) -> Op[dict[str, Any]]:
    suffix = f"/{action}" if action else ""
    return Op(method, f"/v1/tubes/{_q(tube)}{suffix}", body, _dict)


def pause(tube: str, seconds: float | None = None) -> Op[dict[str, Any]]:
    return tube_op("POST", tube, "pause", _options(seconds=seconds))


def unpause(tube: str) -> Op[dict[str, Any]]:
    return tube_op("POST", tube, "unpause", None)


def throttle(tube: str, tps: float) -> Op[dict[str, Any]]:
    return tube_op("PUT", tube, "throttle", {"tps": tps})


def unthrottle(tube: str) -> Op[dict[str, Any]]:
    return tube_op("DELETE", tube, "throttle", None)


def drain(tube: str) -> Op[dict[str, Any]]:
    return tube_op("POST", tube, "drain", None)


def undrain(tube: str) -> Op[dict[str, Any]]:
    return tube_op("POST", tube, "undrain", None)


def clear(tube: str) -> Op[int]:
    return Op("DELETE", f"/v1/tubes/{_q(tube)}", None, lambda p: int(_dict(p)["deleted"]))


def tube_stats(tube: str) -> Op[dict[str, Any]]:
    return tube_op("GET", tube, "", None)


def tubes() -> Op[list[dict[str, Any]]]:
    return Op("GET", "/v1/tubes", None, lambda p: list(_dict(p)["tubes"]))


# -- cluster ----------------------------------------------------------------------------------


def stats() -> Op[dict[str, Any]]:
    return Op("GET", "/v1/stats", None, _dict)


def servers() -> Op[list[dict[str, Any]]]:
    return Op("GET", "/v1/servers", None, lambda p: list(_dict(p)["servers"]))


def health() -> Op[dict[str, Any]]:
    return Op("GET", "/healthz", None, _dict)
