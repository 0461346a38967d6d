"""Change maps and files for the persistence tests, built with the real format code."""

from __future__ import annotations

from collections.abc import Sequence

from allq.store.format import (
    KIND_LOG,
    KIND_SNAPSHOT,
    Change,
    encode_header,
    encode_record,
    log_name,
)
from allq.store.storage import MemoryStorage
from allq.store.validation import FORMAT_VERSION

SERVER = "s1"
COUNTERS = dict.fromkeys(
    (
        "reserves",
        "timeouts",
        "releases",
        "buries",
        "kicks",
        "timeouts_since_kick",
        "releases_since_kick",
    ),
    0,
)


def jid(n: int) -> str:
    """A valid local id (22 characters of the id alphabet)."""
    return f"job{n:019d}"


def meta(prev: int = 0, server_id: str = SERVER, version: int = FORMAT_VERSION) -> Change:
    return {
        "t": "meta",
        "format": version,
        "server_id": server_id,
        "prev": prev,
        "seqs": {"ready_seq": 0},
        "version": "0.1.0",
    }


def put(n: int, *, tube: str = "t", body: bytes | None = None, priority: int = 5) -> Change:
    return {
        "t": "put",
        "id": jid(n),
        "tube": tube,
        "body": body if body is not None else f"body-{n}".encode(),
        "priority": priority,
        "ttr": 60,
        "expired_limit": 3,
        "max_releases": 6,
        "created_at": 1000.0 + n,
        "state": "ready",
        "seq": n,
        "ready_since": 1000.0 + n,
        **COUNTERS,
    }


def parent(n: int) -> Change:
    change = put(n)
    del change["ready_since"]
    change.update(
        state="waiting",
        timeout=3600,
        timeout_at=4600.5,
        run_on_timeout=False,
        limit=None,
        noop=True,
        on_child_failure="wait",
        children_started=0,
        children_completed=0,
        children_failed=0,
    )
    return change


def bury(n: int) -> Change:
    return {
        "t": "state",
        "id": jid(n),
        "state": "buried",
        "priority": 5,
        "seq": 100 + n,
        "buried_at": 2000.0,
        **COUNTERS,
        "buries": 1,
    }


def delete(n: int) -> Change:
    return {"t": "delete", "id": jid(n)}


def log_bytes(
    seq: int,
    prev: int,
    records: Sequence[Sequence[Change]],
    server_id: str = SERVER,
    version: int = FORMAT_VERSION,
) -> bytes:
    """A log segment: header, a record holding `meta`, then one record per item."""
    data = encode_header(KIND_LOG, seq, 1_700_000_000_000, version)
    data += encode_record([meta(prev, server_id, version)])
    for changes in records:
        data += encode_record(changes)
    return data


def snap_bytes(seq: int, changes: Sequence[Change], *, end: bool = True) -> bytes:
    data = encode_header(KIND_SNAPSHOT, seq, 1_700_000_000_000)
    data += encode_record([meta(0), *changes])
    if end:
        data += encode_record([{"t": "end", "changes": len(changes) + 1}])
    return data


def storage_with(files: dict[str, bytes], seed: int = 0) -> MemoryStorage:
    storage = MemoryStorage(seed)
    for name, data in files.items():
        storage.put_file(name, data)
    return storage


def chain(*segments: Sequence[Sequence[Change]], first: int = 1, prev: int = 0) -> dict[str, bytes]:
    """Consecutive log segments `first`, `first + 1`, … each following the one before."""
    files = {}
    for index, records in enumerate(segments):
        seq = first + index
        files[log_name(seq)] = log_bytes(seq, prev if index == 0 else seq - 1, records)
    return files
