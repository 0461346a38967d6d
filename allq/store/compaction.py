"""Compaction (persistence.md §7): the snapshot plus closed logs become one new snapshot.

Charter: `compact` is a blocking, pure function of closed, synced files, meant for a
worker thread. Given the directory's current snapshot `snap-M` (if any) and the closed log
segments M+1…N, it scans them with the format code (any bad record is an error: a closed
file is never repaired here), replays their changes into a throwaway `Engine` built from
the server's `EngineConfig` with `restore()` (the recovery rules: literal, no queue
logic), and writes `dump()` of that engine as `snap-N.aql.tmp` (header kind 2; `meta`
first with `prev` 0; `tube`, `put`, `idem`; `end` counting every change before it, `meta`
included; records of at most about 1 MiB unless one job is larger). Then fdatasync, rename
to `snap-N.aql`, fsync the directory, unlink `snap-M` and logs ≤ N, fsync the directory.
A crash at any step leaves a directory that recovers to the same state: before the rename
recovery deletes the `.tmp`; after it, files ≤ N are leftovers recovery ignores.

`Compactor` is the Trio side: it checks the trigger (total file bytes > max(floor,
3 x live bytes)) after every rotation of the log writer and every `check_interval_s`; when
due it closes the active segment (`LogWriter.close_segment`), runs `compact` in a worker
thread (one at a time) and tells the writer which files went. Live bytes are estimated as
the size of the last snapshot written (a deviation from §7's in-memory sum: the event loop
never walks the job table; a shrinking live set compacts later, a growing one earlier). On
failure it deletes the `.tmp`, logs ERROR, sets `failed` and retries after 1 minute,
doubling up to 1 hour; the in-memory state stays authoritative and serving goes on.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import trio

from allq.store.format import (
    KIND_LOG,
    KIND_SNAPSHOT,
    TMP_SUFFIX,
    Change,
    encode_header,
    encode_record,
    parse_name,
    snap_name,
)
from allq.store.log import LogWriter, WriteFailed
from allq.store.scanning import scan
from allq.store.storage import OsStorage, Storage, write_all
from allq.store.validation import FORMAT_VERSION
from allq.tubes.changes import (
    dump,
    fold_puts,
)
from allq.tubes.config import EngineConfig
from allq.tubes.engine import Engine
from allq.tubes.replay import restore

log = logging.getLogger("allq.store")

DEFAULT_FLOOR_BYTES: Final = 64 * 1024 * 1024
CHECK_INTERVAL_S: Final = 10.0
RETRY_FIRST_S: Final = 60.0
RETRY_MAX_S: Final = 3600.0
RECORD_TARGET: Final = 1024 * 1024
WRITE_CHUNK: Final = 4 * 1024 * 1024


class CompactionError(Exception):
    """A closed file cannot be compacted (a bad record, a broken chain); the next start
    would refuse too."""


@dataclass(frozen=True, slots=True)
class Compacted:
    """What one compaction did."""

    snapshot: int  # N: the new snapshot's sequence number
    previous: int  # M: the snapshot it replaced (0: none)
    removed: tuple[str, ...]  # names unlinked
    removed_bytes: int
    removed_logs: int
    snapshot_bytes: int
    jobs: int
    changes: int
    duration_s: float


def _files(storage: Storage, upto: int) -> tuple[int, list[str], list[str]]:
    """(M, [snap-M] + logs M+1…N in order, stale snapshots/logs ≤ M to delete too)."""
    logs: dict[int, str] = {}
    snaps: dict[int, str] = {}
    for name in storage.list():
        parsed = parse_name(name)
        if parsed is None:
            continue
        kind, seq = parsed
        (logs if kind == KIND_LOG else snaps)[seq] = name
    snap_seq = max((s for s in snaps if s <= upto), default=0)
    stale = [snaps[s] for s in snaps if s < snap_seq]
    stale += [logs[s] for s in sorted(logs) if s <= snap_seq]
    inputs = [snaps[snap_seq]] if snap_seq else []
    inputs += [logs[s] for s in sorted(logs) if snap_seq < s <= upto]
    return snap_seq, inputs, stale


def _read_changes(
    storage: Storage,
    inputs: list[str],
    server_id: str,
    seqs: dict[str, int],
    sizes: dict[str, int],
) -> Iterator[Change]:
    """Every change of `inputs` but `meta` and `end`, in order; checks each file whole.
    Fills `seqs` (the maximum of every `meta.seqs`) and `sizes` (bytes of each file)."""
    expected_prev = 0
    for name in inputs:
        where = storage.describe(name)
        data = storage.read(name)
        sizes[name] = len(data)
        item = scan(name, data)
        del data
        if item.problem is not None:
            raise CompactionError(
                f"{where} at offset {item.problem.offset}: {item.problem.reason} "
                "(a closed file: the next start would refuse it)"
            )
        parsed = parse_name(name)
        assert parsed is not None
        kind, seq = parsed
        counted = 0
        ended = False
        for index, record in enumerate(item.records):
            for position, change in enumerate(record.changes):
                t = change["t"]
                if ended:
                    raise CompactionError(f"{where}: change after the snapshot's end")
                if (t == "meta") != (index == 0 and position == 0):
                    raise CompactionError(f"{where} at offset {record.offset}: misplaced meta")
                if t == "meta":
                    if change["server_id"] != server_id:
                        raise CompactionError(
                            f"{where} belongs to server_id {change['server_id']!r}, "
                            f"not {server_id!r}"
                        )
                    if kind == KIND_LOG and change["prev"] != expected_prev:
                        raise CompactionError(
                            f"{where}: broken chain (prev {change['prev']}, "
                            f"expected {expected_prev})"
                        )
                    meta_seqs = change["seqs"]
                    assert isinstance(meta_seqs, dict)
                    for key, value in meta_seqs.items():
                        seqs[key] = max(value, seqs.get(key, 0))
                elif t == "end":
                    if kind != KIND_SNAPSHOT or change["changes"] != counted:
                        raise CompactionError(f"{where}: end change does not match the file")
                    ended = True
                    continue
                else:
                    yield change
                counted += 1
        if kind == KIND_SNAPSHOT and not ended:
            raise CompactionError(f"{where}: snapshot without a matching end change")
        expected_prev = seq


def _records(changes: list[Change]) -> Iterator[list[Change]]:
    """Group changes into records of about `RECORD_TARGET` payload bytes (one job may be
    larger)."""
    group: list[Change] = []
    size = 0
    for change in changes:
        body = change.get("body")
        estimate = 160 + (len(body) if isinstance(body, bytes) else 0)
        if group and size + estimate > RECORD_TARGET:
            yield group
            group, size = [], 0
        group.append(change)
        size += estimate
    if group:
        yield group


def compact(
    storage: Storage,
    *,
    upto: int,
    config: EngineConfig,
    server_id: str,
    version: str,
    now: float | None = None,
    wall_ms: Callable[[], int] | None = None,
) -> Compacted | None:
    """Compact the current snapshot and the closed logs ≤ `upto` into `snap-<upto>.aql`.

    Blocking; run it in a worker thread. Returns None when there is nothing to compact (no
    closed log after the current snapshot). `now` (Unix seconds) decides which idempotency
    records are still inside their window.

    Raises:
        CompactionError: a bad record or a broken chain in a closed file.
        OSError: the storage failed. Either way the `.tmp` is deleted and every other file
            is left as it was.
    """
    started = time.monotonic()
    previous, inputs, stale = _files(storage, upto)
    newest = max((seq for name in inputs if (seq := _seq(name)) is not None), default=0)
    if newest <= previous:
        return None
    target = newest
    clock = time.time() if now is None else now
    engine = Engine(config, random_bytes=os.urandom, now=clock)
    seqs: dict[str, int] = {}
    sizes: dict[str, int] = {}
    restore(engine, _read_changes(storage, inputs, server_id, seqs, sizes))
    engine.restore_sequences(seqs)
    merged = dict(seqs)
    for key, value in engine.sequences().items():
        merged[key] = max(value, merged.get(key, 0))
    live = dump(engine)
    jobs = len(engine.jobs)
    del engine
    meta: Change = {
        "t": "meta",
        "format": FORMAT_VERSION,
        "server_id": server_id,
        "prev": 0,
        "seqs": merged,
        "version": version,
    }
    # Runs of plain ready puts are written as `puts` changes (format 2), folded per record;
    # `end` counts the changes as written.
    records = [fold_puts(group) for group in _records([meta, *live])]
    del live
    written = sum(map(len, records))
    records[-1].append({"t": "end", "changes": written})
    tmp = snap_name(target) + TMP_SUFFIX
    created_ms = wall_ms() if wall_ms is not None else int(time.time() * 1000)
    _remove_quietly(storage, tmp)
    handle = storage.create(tmp)
    snapshot_bytes = 0
    try:
        buffer = bytearray(encode_header(KIND_SNAPSHOT, target, created_ms))
        for group in records:
            buffer += encode_record(group)
            if len(buffer) >= WRITE_CHUNK:
                write_all(storage, handle, bytes(buffer))
                snapshot_bytes += len(buffer)
                buffer.clear()
        write_all(storage, handle, bytes(buffer))
        snapshot_bytes += len(buffer)
        storage.fdatasync(handle)
    except BaseException:
        storage.close(handle)
        _remove_quietly(storage, tmp)
        raise
    storage.close(handle)
    try:
        storage.rename(tmp, snap_name(target))
    except BaseException:
        _remove_quietly(storage, tmp)
        raise
    storage.sync_dir()
    # From here on the new snapshot is the directory's state; the rest is cleanup.
    removed: list[str] = []
    removed_bytes = removed_logs = 0
    for name in [*stale, *inputs]:
        try:
            size = sizes[name] if name in sizes else len(storage.read(name))
            storage.unlink(name)
        except FileNotFoundError:
            continue
        removed.append(name)
        removed_bytes += size
        removed_logs += name.startswith("log-")
    storage.sync_dir()
    return Compacted(
        snapshot=target,
        previous=previous,
        removed=tuple(removed),
        removed_bytes=removed_bytes,
        removed_logs=removed_logs,
        snapshot_bytes=snapshot_bytes,
        jobs=jobs,
        changes=written + 1,
        duration_s=time.monotonic() - started,
    )


def _seq(name: str) -> int | None:
    parsed = parse_name(name)
    return parsed[1] if parsed is not None else None


def _remove_quietly(storage: Storage, name: str) -> None:
    try:
        storage.unlink(name)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot delete %s: %s", storage.describe(name), exc)
        return
    try:
        storage.sync_dir()
    except OSError as exc:
        log.warning("cannot sync the directory after deleting %s: %s", name, exc)


ToThread = Callable[..., Awaitable[Any]]


class Compactor:
    """Runs `compact` when the trigger of persistence.md §7 holds; see the module docstring."""

    def __init__(
        self,
        storage: Storage,
        writer: LogWriter,
        *,
        config: EngineConfig,
        server_id: str,
        version: str,
        floor_bytes: int = DEFAULT_FLOOR_BYTES,
        live_bytes: int = 0,
        check_interval_s: float = CHECK_INTERVAL_S,
        retry_first_s: float = RETRY_FIRST_S,
        retry_max_s: float = RETRY_MAX_S,
        to_thread: ToThread = trio.to_thread.run_sync,
    ) -> None:
        self.storage = storage
        self.writer = writer
        self.config = config
        self.server_id = server_id
        self.version = version
        self.floor_bytes = floor_bytes
        self.live_bytes = live_bytes
        self.check_interval_s = check_interval_s
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self.to_thread = to_thread
        self.failed = False
        self.compactions = 0
        self.last: Compacted | None = None
        self._retry_s = retry_first_s
        self._not_before = -math.inf
        self._lock = trio.Lock()

    def threshold(self) -> int:
        return max(self.floor_bytes, 3 * self.live_bytes)

    def due(self) -> bool:
        return self.writer.statistics().log_bytes > self.threshold()

    def stats(self) -> dict[str, object]:
        last = self.last
        return {
            "compactions": self.compactions,
            "compaction_failed": self.failed,
            "compaction_threshold_bytes": self.threshold(),
            "last_compaction_s": last.duration_s if last is not None else None,
        }

    async def run(self, *, now: bool = False) -> None:
        """Check the trigger at once, then after each rotation and every
        `check_interval_s`, forever. `now`: compact at once (after a `--repair`)."""
        while True:
            rotated = self.writer.rotation_event()
            if self.writer.write_failed:
                pass
            elif now or (trio.current_time() >= self._not_before and self.due()):
                now = False
                await self.compact_now()
                continue
            with trio.move_on_after(self.check_interval_s):
                await rotated.wait()

    async def compact_now(self) -> Compacted | None:
        """Close the active segment and compact everything closed (one at a time).

        Failures are logged and scheduled for a retry, never raised (the log writer's own
        failure included: it has logged it already).
        """
        async with self._lock:
            try:
                upto = await self.writer.close_segment()
            except WriteFailed:
                return None
            try:
                result: Compacted | None = await self.to_thread(self._compact, upto)
            except (OSError, CompactionError, ValueError) as exc:
                self.failed = True
                self._not_before = trio.current_time() + self._retry_s
                log.error(
                    "compaction failed, retrying in %.0f s%s: %s",
                    self._retry_s,
                    "; the next start would refuse this directory"
                    if isinstance(exc, CompactionError)
                    else "",
                    exc,
                )
                self._retry_s = min(self._retry_s * 2, self.retry_max_s)
                return None
            self.failed = False
            self._retry_s = self.retry_first_s
            self._not_before = -math.inf
            if result is None:
                return None
            self.compactions += 1
            self.last = result
            self.live_bytes = result.snapshot_bytes
            self.writer.account_compaction(
                removed_bytes=result.removed_bytes,
                removed_segments=result.removed_logs,
                added_bytes=result.snapshot_bytes,
            )
            log.info(
                "compaction: snap-%d from %d file(s), %d job(s), %d -> %d bytes in %.3f s",
                result.snapshot,
                len(result.removed),
                result.jobs,
                result.removed_bytes,
                result.snapshot_bytes,
                result.duration_s,
            )
            return result

    def _compact(self, upto: int) -> Compacted | None:
        """Runs in a worker thread. On real files the work itself goes to a child process:
        in a thread it would compete with the event loop for the interpreter lock (a
        compaction of 50,000 jobs in a thread delayed a 1 ms heartbeat by up to 130 ms;
        persistence.md §7 allows at most 10 ms)."""
        if isinstance(self.storage, OsStorage):
            context = multiprocessing.get_context("spawn")
            with context.Pool(1) as pool:
                result: Compacted | None = pool.apply(
                    _compact_directory,
                    (self.storage.path, upto, self.config, self.server_id, self.version),
                )
            return result
        return compact(
            self.storage,
            upto=upto,
            config=self.config,
            server_id=self.server_id,
            version=self.version,
        )


#: Niceness added to the compaction child: background work yields the CPU to the serving
#: process (on a busy 2-core machine the child and the server otherwise share it evenly).
COMPACTION_NICENESS: Final = 10


def lower_priority(increment: int = COMPACTION_NICENESS) -> None:
    """Make this process nicer by `increment`; where that is not allowed, carry on as is."""
    try:
        os.nice(increment)
    except OSError as exc:
        log.debug("compaction keeps its priority: %s", exc)


def _compact_directory(
    path: str, upto: int, config: EngineConfig, server_id: str, version: str
) -> Compacted | None:
    """`compact()` on a directory, in a child process (the parent keeps the lock)."""
    lower_priority()
    return compact(OsStorage(path), upto=upto, config=config, server_id=server_id, version=version)
