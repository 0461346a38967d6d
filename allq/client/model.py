"""What the client hands back: jobs, put results, per-item results (api.md §1 job object).

Bodies are bytes both ways. On the way in, bytes that are valid UTF-8 go as `body` (readable
in logs and the dashboard), anything else as `body_b64`; on the way out, `body` or
`body_b64` is decoded back to the exact bytes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from allq.client.errors import ApiError, TransportError, item_error


def encode_body(body: bytes | str) -> dict[str, str]:
    """`{"body": text}` for UTF-8 bytes (or a str), else `{"body_b64": ...}`."""
    if isinstance(body, str):
        return {"body": body}
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"a job body is bytes or str, not {type(body).__name__}")
    data = bytes(body)
    try:
        return {"body": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_b64": base64.b64encode(data).decode("ascii")}


def decode_body(record: Mapping[str, Any]) -> bytes:
    if isinstance(record.get("body_b64"), str):
        try:
            return base64.b64decode(record["body_b64"], validate=True)
        except binascii.Error as exc:
            raise TransportError(f"the gateway sent a bad body_b64: {exc}") from None
    text = record.get("body", "")
    return text.encode("utf-8") if isinstance(text, str) else b""


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the gateway shows it. `lease` is set on jobs you reserved."""

    id: str
    tube: str
    body: bytes
    state: str
    priority: int
    ttr: float
    lease: str | None = None
    deadline_in_s: float | None = None
    delay_left_s: float | None = None
    age_s: float = 0.0
    reserves: int = 0
    timeouts: int = 0
    releases: int = 0
    buries: int = 0
    kicks: int = 0
    parent_id: str | None = None
    shard_key: str | None = None

    @property
    def attempt(self) -> int:
        """This reservation's attempt number: 1 + releases + TTR timeouts so far."""
        return self.releases + self.timeouts + 1

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Job:
        try:
            return cls(
                id=str(record["id"]),
                tube=str(record["tube"]),
                body=decode_body(record),
                state=str(record.get("state", "")),
                priority=int(record.get("priority") or 0),
                ttr=float(record.get("ttr") or 0.0),
                lease=record.get("lease"),
                deadline_in_s=_float(record.get("deadline_in_s")),
                delay_left_s=_float(record.get("delay_left_s")),
                age_s=float(record.get("age_s") or 0.0),
                reserves=int(record.get("reserves") or 0),
                timeouts=int(record.get("timeouts") or 0),
                releases=int(record.get("releases") or 0),
                buries=int(record.get("buries") or 0),
                kicks=int(record.get("kicks") or 0),
                parent_id=record.get("parent_id"),
                shard_key=record.get("shard_key"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TransportError(f"the gateway sent a malformed job: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class Put:
    """The answer to a put: the job's id and state; `duplicate` for a reused idempotency key."""

    id: str
    tube: str
    state: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item of a batch (put_many, done_many, reserve's `done`): a state or an error."""

    id: str | None
    state: str | None = None
    error: ApiError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def item_results(records: object) -> list[ItemResult]:
    if not isinstance(records, list):
        raise TransportError("the gateway sent a malformed batch answer")
    out: list[ItemResult] = []
    for record in records:
        if not isinstance(record, dict):
            raise TransportError("the gateway sent a malformed batch item")
        error = record.get("error")
        out.append(
            ItemResult(
                id=record.get("id"),
                state=record.get("state"),
                error=item_error(error) if isinstance(error, dict) else None,
            )
        )
    return out


class Reserved(list[Job]):
    """The jobs a reserve got (a list), plus `.done`: the results of its `done` part."""

    def __init__(self, jobs: list[Job], done: list[ItemResult] | None = None) -> None:
        super().__init__(jobs)
        self.done: list[ItemResult] = done or []


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """A job to put with its own options (for `put_many`); None leaves the default."""

    body: bytes | str
    priority: int | None = None
    delay: float | None = None
    run_at: float | None = None
    ttr: float | None = None
    expired_limit: int | None = None
    max_releases: int | None = None
    parent_id: str | None = None
    shard_key: str | None = None
    idempotency_key: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = encode_body(self.body)
        for name in (
            "priority",
            "delay",
            "run_at",
            "ttr",
            "expired_limit",
            "max_releases",
            "parent_id",
            "shard_key",
            "idempotency_key",
        ):
            value = getattr(self, name)
            if value is not None:
                record[name] = value
        record.update(self.extra)
        return record


JobRef = Job | str
