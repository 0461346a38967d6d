"""The log writer of persistence.md §5: appends, sync modes, rotation, write failures.

Charter: a Trio shell over a `Storage`. `append` runs on the Trio thread without awaiting:
it encodes one record and writes it to the active segment with `os.write` semantics,
looping on short writes, and returns the record's **position** (the count of record bytes
accepted since the writer opened, across segments). `await commit(position)` returns once
the record is written and, under `sync="always"`, covered by an fdatasync. Callers answer
only after `commit` returns.

One background task (the syncer) runs every fdatasync of the active segment, one at a
time, in a worker thread: group commit (`always`: whenever a committer waits, one
fdatasync covers everything written so far; batches form while it runs, no added delay),
every `sync_interval_ms` while unsynced bytes exist (`interval`), or only at rotation and
close (`never`). A second task prepares the next segment in a worker thread once the
active one is half full (create, header, `meta` with `prev`, fdatasync, directory fsync).
When the active segment exceeds `segment_bytes` the writer switches: appends are queued in
memory in order, the old segment's fdatasync finishes, then the queue goes to the new one.

Any failed write, fdatasync or segment preparation puts the writer in the final
write-failed state: the segment is truncated back to the last whole record when possible,
waiters and every later `append` get `WriteFailed`, and an ERROR is logged at once and
every 60 s. It never continues without its log.

Resource handling: `open_log_writer` owns the writer's handles and tasks; on exit it
finishes a pending switch, fdatasyncs the active segment (shielded) and closes the handles.
The directory lock belongs to the caller (recovery takes it).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

import trio

from allq.store.format import (
    KIND_LOG,
    encode_header,
    encode_record,
    log_name,
)
from allq.store.storage import Storage, write_all
from allq.store.validation import FORMAT_VERSION
from allq.tubes.changes import fold_puts

log = logging.getLogger("allq.store")

SyncMode = Literal["always", "interval", "never"]
SYNC_MODES: Final = ("always", "interval", "never")
DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
FAILED_REMINDER_S: Final = 60.0


class WriteFailed(Exception):
    """The log could not be written; the server refuses mutations until it restarts."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"persistence failed; restart required ({reason})")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LogStatistics:
    """The writer's part of `stats.persistence` (persistence.md §5)."""

    sync: str
    log_bytes: int
    segments: int
    active_segment: int
    unsynced_bytes: int
    max_unsynced_age_s: float
    last_fdatasync_s: float | None
    fdatasyncs: int
    write_failed: bool


@dataclass(slots=True)
class _Segment:
    seq: int
    name: str
    handle: int
    size: int
    created_size: int = 0  # header and meta: the segment holds records beyond this


ToThread = Callable[..., Awaitable[Any]]


def _wall_ms() -> int:
    return int(time.time() * 1000)


class LogWriter:
    """Appends records to log segments; see the module docstring. Use `open_log_writer`."""

    def __init__(
        self,
        storage: Storage,
        *,
        server_id: str,
        version: str,
        seqs: Callable[[], Mapping[str, int]],
        first_seq: int,
        prev: int,
        sync: SyncMode,
        sync_interval_ms: float,
        segment_bytes: int,
        base_bytes: int,
        base_segments: int,
        wall_ms: Callable[[], int],
        to_thread: ToThread,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        if first_seq < 1 or prev >= first_seq:
            raise ValueError(f"segment {first_seq} cannot follow {prev}")
        self._storage = storage
        self._server_id = server_id
        self._version = version
        self._seqs = seqs
        self._mode: SyncMode = sync
        self._interval = sync_interval_ms / 1000
        self._segment_bytes = segment_bytes
        self._wall_ms = wall_ms
        self._to_thread = to_thread
        self._next_seq = first_seq
        self._first_prev = prev
        self._active: _Segment | None = None
        self._next: _Segment | None = None
        self._prepare_lock = trio.Lock()
        self._prepare_wanted = trio.Event()
        # positions, in record bytes since the writer opened
        self._accepted = 0
        self._written = 0
        self._synced = 0
        self._wanted = 0
        self._pending: list[bytes] = []
        self._switching = False
        self._failed: str | None = None
        self._closed = False
        self._wake = trio.Event()
        self._progress = trio.Event()
        # statistics
        self._log_bytes = base_bytes
        self._segments = base_segments
        self._fdatasyncs = 0
        self._last_fdatasync_s: float | None = None
        self._oldest_unsynced: float | None = None
        self._oldest_after_sync_start: float | None = None
        self._sync_in_flight = False
        self._max_unsynced_age = 0.0
        self._rotated = trio.Event()

    # --- the request path -------------------------------------------------------------

    @property
    def write_failed(self) -> bool:
        return self._failed is not None

    def append(self, changes: Sequence[Mapping[str, object]]) -> int:
        """Write one record holding `changes`; returns its end position for `commit`.

        Raises:
            WriteFailed: the writer is (or just became) write-failed, or is closed.
            FormatError: an invalid change (nothing is written).
        """
        if self._failed is not None:
            raise WriteFailed(self._failed)
        if self._closed:
            raise WriteFailed("the log is closed")
        data = encode_record(fold_puts(changes))
        now = trio.current_time()
        if self._switching:
            self._pending.append(data)
        else:
            self._write_active(data)
        self._accepted += len(data)
        if self._oldest_unsynced is None:
            self._oldest_unsynced = now
        if self._sync_in_flight and self._oldest_after_sync_start is None:
            self._oldest_after_sync_start = now
        self._wake.set()
        return self._accepted

    async def commit(self, position: int) -> None:
        """Wait until the record ending at `position` is written (and, under `always`,
        covered by an fdatasync).

        Raises:
            WriteFailed: the write or the fdatasync covering it failed.
        """
        while True:
            if self._written >= position and (self._mode != "always" or self._synced >= position):
                return
            if self._failed is not None:
                raise WriteFailed(self._failed)
            if self._mode == "always" and position > self._wanted:
                self._wanted = position
                self._wake.set()
            await self._progress.wait()

    def statistics(self) -> LogStatistics:
        age = self._max_unsynced_age
        if self._oldest_unsynced is not None:
            age = max(age, trio.current_time() - self._oldest_unsynced)
        return LogStatistics(
            sync=self._mode,
            log_bytes=self._log_bytes,
            segments=self._segments,
            active_segment=self._active.seq if self._active is not None else 0,
            unsynced_bytes=self._accepted - self._synced,
            max_unsynced_age_s=age,
            last_fdatasync_s=self._last_fdatasync_s,
            fdatasyncs=self._fdatasyncs,
            write_failed=self._failed is not None,
        )

    # --- compaction's hooks (persistence.md §7) ----------------------------------------

    def rotation_event(self) -> trio.Event:
        """An event set at the next switch to a new segment."""
        return self._rotated

    def closed_through(self) -> int:
        """Every log segment up to this sequence number is closed and durable (0: none)."""
        return self._active.seq - 1 if self._active is not None else 0

    async def close_segment(self) -> int:
        """Close the active segment if it holds any record (rotate, as when it is full) and
        return `closed_through()`.

        Raises:
            WriteFailed: the writer is (or became) write-failed or is closed.
        """
        active = self._active
        if self._failed is None and active is not None and active.size > active.created_size:
            self._switching = True
            self._wake.set()
            while self._active is active and not self.write_failed:
                await self._progress.wait()
        if self._failed is not None:
            raise WriteFailed(self._failed)
        if self._active is None:
            raise WriteFailed("the log is closed")
        return self.closed_through()

    def account_compaction(
        self, *, removed_bytes: int, removed_segments: int, added_bytes: int
    ) -> None:
        """Keep `log_bytes` and `segments` equal to the directory's files after a compaction."""
        self._log_bytes += added_bytes - removed_bytes
        self._segments -= removed_segments

    # --- internals ----------------------------------------------------------------------

    def _write_active(self, data: bytes) -> None:
        segment = self._active
        assert segment is not None
        before = segment.size
        try:
            write_all(self._storage, segment.handle, data)
        except OSError as exc:
            self._fail(f"write to {self._storage.describe(segment.name)} failed: {exc}")
            self._truncate(segment, before)
            raise WriteFailed(self._failed or "") from exc
        segment.size += len(data)
        self._written += len(data)
        self._log_bytes += len(data)
        if self._next is None and segment.size >= self._segment_bytes // 2:
            self._prepare_wanted.set()
        if segment.size > self._segment_bytes:
            self._switching = True

    def _truncate(self, segment: _Segment, size: int) -> None:
        try:
            self._storage.truncate(segment.handle, size)
        except OSError as exc:
            log.error(
                "cannot truncate %s back to %d bytes after a failed write: %s",
                self._storage.describe(segment.name),
                size,
                exc,
            )

    def _fail(self, reason: str) -> None:
        if self._failed is not None:
            return
        self._failed = reason
        log.error("persistence failed; restart required: %s", reason)
        self._progress.set()  # stays set: every waiter sees the failure
        self._wake.set()

    def _notify(self) -> None:
        if self._failed is None:
            self._progress.set()
            self._progress = trio.Event()

    def _sync_started(self) -> float:
        self._sync_in_flight = True
        self._oldest_after_sync_start = None
        return trio.current_time()

    def _sync_finished(self, target: int, started: float) -> None:
        now = trio.current_time()
        self._sync_in_flight = False
        self._fdatasyncs += 1
        self._last_fdatasync_s = now - started
        if self._oldest_unsynced is not None and target > self._synced:
            self._max_unsynced_age = max(self._max_unsynced_age, now - self._oldest_unsynced)
        self._synced = max(self._synced, target)
        if self._accepted > self._synced:
            self._oldest_unsynced = self._oldest_after_sync_start
        else:
            self._oldest_unsynced = None
        self._notify()

    async def _sync_active(self) -> None:
        segment = self._active
        assert segment is not None
        target = self._written
        started = self._sync_started()
        if await self._fdatasync(segment):
            self._sync_finished(target, started)

    async def _fdatasync(self, segment: _Segment) -> bool:
        """fdatasync `segment` in a worker thread; on failure the writer is write-failed."""
        try:
            await self._to_thread(self._storage.fdatasync, segment.handle)
        except OSError as exc:
            self._sync_in_flight = False
            self._fail(f"fdatasync of {self._storage.describe(segment.name)} failed: {exc}")
            return False
        return True

    def _create_segment(self, name: str, data: bytes) -> int:
        """Worker thread: create `name` holding `data`, durable with its directory entry."""
        storage = self._storage
        handle = storage.create(name)
        try:
            write_all(storage, handle, data)
            storage.fdatasync(handle)
            storage.sync_dir()
        except BaseException:
            storage.close(handle)
            try:
                storage.unlink(name)
            except OSError:
                pass
            raise
        return handle

    async def _prepare_next(self) -> None:
        async with self._prepare_lock:
            if self._next is not None or self._failed is not None:
                return
            seq = self._next_seq
            prev = self._active.seq if self._active is not None else self._first_prev
            meta: dict[str, object] = {
                "t": "meta",
                "format": FORMAT_VERSION,
                "server_id": self._server_id,
                "prev": prev,
                "seqs": dict(self._seqs()),
                "version": self._version,
            }
            data = encode_header(KIND_LOG, seq, self._wall_ms()) + encode_record([meta])
            name = log_name(seq)
            try:
                handle = await self._to_thread(self._create_segment, name, data)
            except OSError as exc:
                self._fail(f"cannot prepare log segment {self._storage.describe(name)}: {exc}")
                return
            self._next_seq = seq + 1
            self._next = _Segment(seq, name, handle, len(data), len(data))
            self._log_bytes += len(data)
            self._segments += 1

    async def _rotate(self) -> None:
        """Switch to the next segment once the active one's fdatasync has finished."""
        await self._prepare_next()
        old, new = self._active, self._next
        if self._failed is not None or old is None or new is None:
            return
        target = self._written
        started = self._sync_started()
        if not await self._fdatasync(old):
            return
        self._close_handle(old)
        self._active, self._next = new, None
        self._switching = False
        self._rotated.set()
        self._rotated = trio.Event()
        pending, self._pending = self._pending, []
        try:
            while pending and not self._switching:
                self._write_active(pending.pop(0))
        except WriteFailed:
            return
        self._pending = pending
        self._sync_finished(target, started)

    def _close_handle(self, segment: _Segment) -> None:
        try:
            self._storage.close(segment.handle)
        except OSError as exc:
            log.warning("closing %s failed: %s", self._storage.describe(segment.name), exc)

    async def _syncer(self) -> None:
        deadline = math.inf
        while self._failed is None:
            if self._switching:
                await self._rotate()
                continue
            if self._mode == "always" and self._wanted > self._synced:
                await self._sync_active()
                continue
            if self._mode == "interval" and self._written > self._synced:
                if deadline == math.inf:
                    deadline = trio.current_time() + self._interval
                elif trio.current_time() >= deadline:
                    deadline = math.inf
                    await self._sync_active()
                    continue
            else:
                deadline = math.inf
            wake = self._wake
            with trio.move_on_at(deadline):
                await wake.wait()
            if wake.is_set():
                self._wake = trio.Event()
        while True:
            await trio.sleep(FAILED_REMINDER_S)
            log.error("persistence failed; restart required: %s", self._failed)

    async def _preparer(self) -> None:
        while self._failed is None:
            await self._prepare_wanted.wait()
            self._prepare_wanted = trio.Event()
            await self._prepare_next()

    async def _open(self) -> None:
        await self._prepare_next()
        if self._failed is not None:
            raise WriteFailed(self._failed)
        self._active, self._next = self._next, None

    async def _close(self) -> None:
        """Finish a pending switch, fdatasync the active segment, close every handle."""
        if self._failed is None and self._switching:
            await self._rotate()
        if self._failed is None and self._active is not None and self._written > self._synced:
            await self._sync_active()
        self._closed = True
        for segment in (self._active, self._next):
            if segment is not None:
                self._close_handle(segment)
        self._active = self._next = None
        self._notify()


@asynccontextmanager
async def open_log_writer(
    storage: Storage,
    *,
    server_id: str,
    version: str,
    seqs: Callable[[], Mapping[str, int]],
    first_seq: int,
    prev: int,
    sync: SyncMode = "interval",
    sync_interval_ms: float = 50,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    base_bytes: int = 0,
    base_segments: int = 0,
    wall_ms: Callable[[], int] = _wall_ms,
    to_thread: ToThread = trio.to_thread.run_sync,
) -> AsyncIterator[LogWriter]:
    """A `LogWriter` appending to the new segment `first_seq` (whose `meta.prev` is `prev`).

    `seqs()` gives the engine's sequence high-water marks for each new segment's `meta`;
    `base_bytes` and `base_segments` describe the files recovery found (for statistics).
    `to_thread` runs the blocking storage calls; tests under a mock clock may pass a runner
    that calls them inline, so virtual time does not jump while a "thread" runs.

    Raises:
        WriteFailed: the first segment cannot be created.
    """
    writer = LogWriter(
        storage,
        server_id=server_id,
        version=version,
        seqs=seqs,
        first_seq=first_seq,
        prev=prev,
        sync=sync,
        sync_interval_ms=sync_interval_ms,
        segment_bytes=segment_bytes,
        base_bytes=base_bytes,
        base_segments=base_segments,
        wall_ms=wall_ms,
        to_thread=to_thread,
    )
    await writer._open()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer._syncer)
            nursery.start_soon(writer._preparer)
            try:
                yield writer
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await writer._close()
