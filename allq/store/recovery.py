"""Recovery (persistence.md §6.1, §6.2, §6.4, §6.5): from the files to the changes to apply.

Charter: blocking code over a `Storage` (the server runs it before its listener opens, in a
worker thread if it likes). `recover` takes the lock, deletes `*.tmp`, picks the newest
snapshot, walks the snapshot and the log chain after it, and returns the ordered changes the
engine applies literally, with what the writer needs to open the next segment. It never runs
queue logic. Each record's changes go to a `ChangeSink` as soon as the record is read and
checked: the engine's `Replayer` (the server: no list of every change is ever held) or a
`CollectingSink` (the default: `Recovered.changes`). The sink tracks which job ids are live,
to skip orphan changes (§6.2) and to name a duplicate `put`.

Verdicts (§6.4): a torn tail in the tail segment is truncated (WARNING `torn tail in FILE at
OFFSET: dropped N bytes`); a torn creation of the newest file is deleted (WARNING); anything
else is corruption: `RecoveryError` naming the file, the offset, the reason and what
`--repair` would drop. With `repair=True` the bytes from the bad record to the end of the
file go to `quarantine/FILE.OFFSET` (fsynced), the file is cut there, and recovery goes on
tolerating chain breaks and orphans; `Recovered.repaired` then asks for a compaction.

Files are changed only after the whole walk succeeded (truncations, deletions), except the
quarantines of a repair and the `*.tmp` deletion of step 1. The cyclic garbage collector is
paused meanwhile (`allq.gcpause`): every change map recovery builds stays alive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Final, Protocol

from allq.gcpause import paused_gc
from allq.store.format import (
    HEADER_SIZE,
    KIND_LOG,
    KIND_SNAPSHOT,
    TMP_SUFFIX,
    Change,
    parse_name,
)
from allq.store.scanning import (
    FileScanner,
    Record,
    Verdict,
)
from allq.store.storage import LOCK_NAME, Storage, write_all
from allq.store.validation import CHANGE_TYPES
from allq.tubes.changes import PlainReadyRow, jobs_put
from allq.tubes.replay import DuplicatePut

log = logging.getLogger("allq.store")

QUARANTINE: Final = "quarantine"
SNAPSHOT_TYPES: Final = frozenset({"meta", "tube", "put", "puts", "idem", "end"})
JOB_CHANGES: Final = frozenset({"state", "delete", "count"})
REPAIR_CONSEQUENCES: Final = "jobs put in that range are lost, jobs deleted in it may come back"
#: Change types a record after the first may hold without any structural check.
_SNAPSHOT_BODY: Final = SNAPSHOT_TYPES - {"meta", "end"}
_LOG_BODY: Final = frozenset(CHANGE_TYPES) - {"meta", "end"}
_KIND: Final = itemgetter("t")
_PUTS: Final = frozenset({"put"})


class ChangeSink(Protocol):
    """Where recovery sends the changes of each record (`meta` and `end` excluded), in file
    order, once the record passed every check."""

    @property
    def orphans(self) -> int:
        """Changes skipped because they named an unknown job (§6.2)."""
        ...

    def feed(self, changes: Sequence[Change], rows: list[PlainReadyRow] | None = None) -> None:
        """Apply `changes`; `rows`, when given, are their `plain_ready_row`s (every change is
        a plain ready put): a sink may apply those instead.

        Raises:
            DuplicatePut: a `put` for a live job or put twice by `changes`; nothing of them
                was applied (the record is corrupt: `--repair` drops it whole).
            ValueError: a change that cannot be applied (recovery refuses to start).
        """
        ...


class CollectingSink:
    """The changes to apply, in a list, with orphan changes left out (`recover`'s default)."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.orphans = 0
        self.live: dict[str, str] = {}  # job id -> tube
        self.tubes: dict[str, set[str]] = {}  # tube -> live job ids

    def feed(self, changes: Sequence[Change], rows: list[PlainReadyRow] | None = None) -> None:
        seen: set[str] = set()
        for change in changes:
            for job_id, _ in jobs_put(change):
                if job_id in self.live or job_id in seen:
                    raise DuplicatePut(f"duplicate put of job {job_id}")
                seen.add(job_id)
        for change in changes:
            t = change["t"]
            if t == "put" or t == "puts":
                for job_id, tube in jobs_put(change):
                    self.live[job_id] = tube
                    self.tubes.setdefault(tube, set()).add(job_id)
            elif t in JOB_CHANGES:
                job_id = str(change["id"])
                owner = self.live.get(job_id)
                if owner is None:
                    self.orphans += 1
                    continue
                if t == "delete":
                    del self.live[job_id]
                    self.tubes[owner].discard(job_id)
            elif t == "clear":
                for job_id in self.tubes.pop(str(change["tube"]), set()):
                    del self.live[job_id]
            self.changes.append(change)


class RecoveryError(Exception):
    """Recovery refuses to start; the message is meant for the operator as it is."""


@dataclass(frozen=True, slots=True)
class Corruption:
    """A corruption verdict: where, why, and what `--repair` drops."""

    name: str
    offset: int
    reason: str
    drop_bytes: int


@dataclass(slots=True)
class Recovered:
    """What recovery found, for the engine and the writer.

    `changes` holds, in file order, every change to apply except `meta` and `end`, orphan
    changes removed, when recovery collected them (no sink given; else it stays empty).
    `seqs` is the maximum over all `meta.seqs`. Open the next log with
    `first_seq=next_seq, prev=prev`.
    """

    changes: list[Change] = field(default_factory=list)
    server_id: str | None = None
    seqs: dict[str, int] = field(default_factory=dict)
    snapshot: int = 0
    next_seq: int = 1
    prev: int = 0
    files: int = 0
    records: int = 0
    bytes_read: int = 0
    log_bytes: int = 0
    segments: int = 0
    torn_bytes_dropped: int = 0
    orphan_changes: int = 0
    quarantined: list[tuple[str, int, int]] = field(default_factory=list)
    repaired: bool = False
    warnings: list[str] = field(default_factory=list)


class _Recovery:
    def __init__(
        self, storage: Storage, server_id: str | None, repair: bool, sink: ChangeSink
    ) -> None:
        self.storage = storage
        self.expected_server_id = server_id
        self.repair = repair
        self.sink = sink
        self.out = Recovered(server_id=server_id)
        self.truncations: list[tuple[str, int, int]] = []  # name, offset, dropped
        self.deletions: list[str] = []
        self.sizes: dict[str, int] = {}  # size of every file read, as it stands now
        self._ended = False  # whether the file replayed last held an `end` change

    # --- messages -------------------------------------------------------------------

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.out.warnings.append(message)

    def corrupt(self, problem: Corruption) -> None:
        """Refuse, or under repair quarantine the bad range and cut the file."""
        where = self.storage.describe(problem.name)
        if not self.repair:
            raise refusal(self.storage, problem)
        self.out.repaired = True
        if problem.drop_bytes == 0:
            log.error("repair: %s at offset %d: %s", where, problem.offset, problem.reason)
            return
        data = self.storage.read(problem.name)
        target = self._quarantine(problem.name, problem.offset, data[problem.offset :])
        if problem.offset <= HEADER_SIZE:  # no meta would remain
            self.storage.unlink(problem.name)
            self.storage.sync_dir()
            del self.sizes[problem.name]
        else:
            self._truncate(problem.name, problem.offset)
        self.out.quarantined.append((problem.name, problem.offset, problem.drop_bytes))
        log.error(
            "repair: %s at offset %d: %s; quarantined %d bytes in %s",
            where,
            problem.offset,
            problem.reason,
            problem.drop_bytes,
            self.storage.describe(target),
        )

    def _quarantine(self, name: str, offset: int, data: bytes) -> str:
        storage = self.storage
        target = f"{QUARANTINE}/{name}.{offset}"
        suffix = 0
        while True:
            try:
                handle = storage.create(target if suffix == 0 else f"{target}.{suffix}")
                break
            except FileExistsError:
                suffix += 1
        target = target if suffix == 0 else f"{target}.{suffix}"
        try:
            write_all(storage, handle, data)
            storage.fdatasync(handle)
        finally:
            storage.close(handle)
        storage.sync_dir(QUARANTINE)
        storage.sync_dir()
        return target

    def _truncate(self, name: str, size: int) -> None:
        self.sizes[name] = size
        handle = self.storage.open_append(name)
        try:
            self.storage.truncate(handle, size)
            self.storage.fdatasync(handle)
        finally:
            self.storage.close(handle)

    # --- the procedure --------------------------------------------------------------

    def run(self) -> Recovered:
        storage = self.storage
        storage.lock()
        logs: dict[int, str] = {}
        snaps: dict[int, str] = {}
        removed_tmp = False
        for name in storage.list():
            if name.endswith(TMP_SUFFIX):
                storage.unlink(name)
                removed_tmp = True
                continue
            parsed = parse_name(name)
            if parsed is None:
                if name not in (LOCK_NAME, QUARANTINE):
                    self.warn(f"ignoring unknown file {storage.describe(name)}")
                continue
            kind, seq = parsed
            (logs if kind == KIND_LOG else snaps)[seq] = name
        if removed_tmp:
            storage.sync_dir()
        all_seqs = [*logs, *snaps]
        self.out.next_seq = max(all_seqs, default=0) + 1
        snap_seq = max(snaps, default=0)
        self.out.snapshot = snap_seq
        leftovers = [snaps[s] for s in snaps if s < snap_seq]
        leftovers += [logs[s] for s in logs if s <= snap_seq]
        chain = [logs[s] for s in sorted(logs) if s > snap_seq]
        cached, tail = self._find_tail(chain)

        if snap_seq:
            self._replay(snaps[snap_seq], None, KIND_SNAPSHOT, expected_prev=0, tail=None)
        prev = snap_seq
        for name in chain:
            if name in self.deletions:
                continue
            prev = self._replay(name, cached.pop(name, None), KIND_LOG, prev, tail)

        # Every check passed: now change the files.
        for name, offset, dropped in self.truncations:
            self._truncate(name, offset)
            self.warn(f"torn tail in {storage.describe(name)} at {offset}: dropped {dropped} bytes")
            self.out.torn_bytes_dropped += dropped
        for name in self.deletions:
            storage.unlink(name)
            del self.sizes[name]
        for name in leftovers:
            storage.unlink(name)
        if self.deletions or leftovers:
            storage.sync_dir()
        self.out.orphan_changes = self.sink.orphans
        if self.out.orphan_changes:
            self.warn(f"recovery skipped {self.out.orphan_changes} orphan changes")
        self.out.prev = prev
        self.out.log_bytes = sum(self.sizes.values())
        self.out.segments = sum(name.startswith("log-") for name in self.sizes)
        return self.out

    def _read(self, name: str) -> bytes:
        data = self.storage.read(name)
        self.sizes[name] = len(data)
        self.out.bytes_read += len(data)
        self.out.files += 1
        return data

    def _find_tail(self, chain: list[str]) -> tuple[dict[str, bytes], str | None]:
        """Read from the newest log down: drop a torn creation, find the tail segment (the
        newest log holding any change besides `meta`). Only each file's header and first
        record are decoded here: whether more bytes follow decides, and a torn creation
        lies in those two."""
        cached: dict[str, bytes] = {}
        for index, name in enumerate(reversed(chain)):
            data = cached[name] = self._read(name)
            scanner = FileScanner(name, data)
            first = next(iter(scanner), None)
            problem = scanner.problem
            if index == 0 and problem is not None:
                verdict = problem.verdict(tail=False, newest=True, records=scanner.count)
                if verdict is Verdict.TORN_CREATION:
                    self.deletions.append(name)
                    self.warn(
                        f"torn creation of {self.storage.describe(name)} "
                        f"({len(data)} bytes): deleted"
                    )
                    continue
            if problem is not None or len(data) > (HEADER_SIZE if first is None else first.end):
                return cached, name
        return cached, None

    def _replay(
        self,
        name: str,
        data: bytes | None,
        kind: int,
        expected_prev: int,
        tail: str | None,
    ) -> int:
        """Replay one file, each record as it is read; returns the sequence number the next
        log must name as `prev`.

        A torn creation of the newest file was handled by `_find_tail`, so only a torn
        tail (in `tail`) is not corruption here. A bad record ends the file's records: it is
        judged (§6.4) after the good ones before it were applied.
        """
        if data is None:
            data = self._read(name)
        parsed = parse_name(name)
        assert parsed is not None
        next_prev = parsed[1] if kind == KIND_LOG else expected_prev
        size = len(data)
        scanner = FileScanner(name, data)
        if not self._replay_records(name, scanner, kind, expected_prev, size):
            return next_prev
        problem = scanner.problem
        if problem is not None:
            verdict = problem.verdict(tail=name == tail, newest=False, records=scanner.count)
            if verdict is Verdict.TORN_TAIL:
                self.truncations.append((name, problem.offset, size - problem.offset))
            else:
                self.corrupt(
                    Corruption(name, problem.offset, problem.reason, size - problem.offset)
                )
        if kind == KIND_SNAPSHOT and not self._ended:
            self.corrupt(Corruption(name, size, "snapshot without a matching end change", 0))
        return next_prev

    def _replay_records(
        self, name: str, records: Iterable[Record], kind: int, expected_prev: int, size: int
    ) -> bool:
        """Apply the whole records of one file; False if one of them is corrupt (then the
        rest of the file is skipped: `corrupt` refused, or quarantined it under repair)."""
        changes_seen = 0
        ended = self._ended = False
        for index, record in enumerate(records):
            changes = record.changes
            kinds = _PUTS if record.rows is not None else set(map(_KIND, changes))
            if index and not ended and kinds <= (_LOG_BODY if kind == KIND_LOG else _SNAPSHOT_BODY):
                # The common record after a file's first: no structural check can fail on it.
                applicable = changes
                changes_seen += len(changes)
            else:
                reason = self._record_problem(record, index, kind, ended)
                if reason is not None:
                    self.corrupt(Corruption(name, record.offset, reason, size - record.offset))
                    return False
                if index == 0:
                    self._check_meta(name, changes[0], kind, expected_prev)
                applicable = []
                for change in changes:
                    t = change["t"]
                    if t == "end":
                        ended = True
                        if change["changes"] != changes_seen:
                            self.corrupt(
                                Corruption(
                                    name,
                                    record.offset,
                                    f"end counts {change['changes']} changes, the file holds "
                                    f"{changes_seen}",
                                    size - record.offset,
                                )
                            )
                            return False
                        continue
                    changes_seen += 1
                    if t != "meta":
                        applicable.append(change)
            if applicable and not self._apply(name, record, applicable, size):
                return False
            self.out.records += 1
        self._ended = ended
        return True

    def _record_problem(self, record: Record, index: int, kind: int, ended: bool) -> str | None:
        """Why a whole, CRC-valid record breaks the structure of its file (None if it does
        not; a duplicate put is the sink's to find)."""
        for position, change in enumerate(record.changes):
            t = change["t"]
            if ended:
                return "change after the snapshot's end"
            if (t == "meta") != (index == 0 and position == 0):
                return "meta change not first in the file" if t == "meta" else "no meta change"
            if kind == KIND_SNAPSHOT and t not in SNAPSHOT_TYPES:
                return f"{t} change in a snapshot"
            if kind == KIND_LOG and t == "end":
                return "end change in a log segment"
            if t == "end":
                ended = True
        return None

    def _check_meta(self, name: str, meta: Change, kind: int, expected_prev: int) -> None:
        server_id = meta["server_id"]
        assert isinstance(server_id, str)
        where = self.storage.describe(name)
        if self.out.server_id is None:
            self.out.server_id = server_id
        elif server_id != self.out.server_id:
            if self.expected_server_id is not None:
                raise RecoveryError(
                    f"{where} was written by server_id {server_id!r}, this server is "
                    f"{self.expected_server_id!r}: refusing to start on another server's "
                    "data directory (--repair does not change this)"
                )
            raise RecoveryError(
                f"{where} was written by server_id {server_id!r}, earlier files by "
                f"{self.out.server_id!r}: refusing to start (--repair does not change this)"
            )
        seqs = meta["seqs"]
        assert isinstance(seqs, dict)
        for key, value in seqs.items():
            self.out.seqs[key] = max(value, self.out.seqs.get(key, 0))
        prev = meta["prev"]
        if prev != expected_prev:
            what = "snapshot" if kind == KIND_SNAPSHOT else "log segment"
            self.corrupt(
                Corruption(
                    name,
                    HEADER_SIZE,
                    f"broken chain: this {what} follows segment {prev}, expected {expected_prev}"
                    " (a file is missing)",
                    0,
                )
            )

    def _apply(self, name: str, record: Record, changes: list[Change], size: int) -> bool:
        """Hand one record's changes to the sink; False if the record is corrupt (a
        duplicate put: nothing of it applied) and the rest of the file is to be skipped.

        Raises:
            RecoveryError: the sink cannot apply a change (even `--repair` cannot drop it,
                since part of the record may be applied already).
        """
        try:
            self.sink.feed(changes, record.rows if changes is record.changes else None)
        except DuplicatePut as exc:
            self.corrupt(Corruption(name, record.offset, str(exc), size - record.offset))
            return False
        except ValueError as exc:
            raise unapplicable(self.storage, name, record.offset, exc) from None
        return True


def refusal(storage: Storage, problem: Corruption) -> RecoveryError:
    """The refusal of §6.4 for a corruption found without `--repair`."""
    if problem.drop_bytes:
        effect = (
            f"move the {problem.drop_bytes} bytes from offset {problem.offset} to the "
            f"end of the file into {storage.describe(QUARANTINE)}/ and drop the "
            f"changes they hold ({REPAIR_CONSEQUENCES})"
        )
    else:
        effect = f"go on without it ({REPAIR_CONSEQUENCES})"
    return RecoveryError(
        f"corruption in {storage.describe(problem.name)} at offset {problem.offset}: "
        f"{problem.reason}; refusing to start. --repair would {effect}"
    )


def unapplicable(storage: Storage, name: str, offset: int, exc: ValueError) -> RecoveryError:
    """The refusal for a record whose change the sink cannot apply."""
    return RecoveryError(
        f"{storage.describe(name)} at offset {offset}: a change cannot "
        f"be applied: {exc}; refusing to start (--repair does not change this)"
    )


def recover(
    storage: Storage,
    *,
    server_id: str | None = None,
    repair: bool = False,
    sink: ChangeSink | None = None,
) -> Recovered:
    """Run the recovery procedure of persistence.md §6.1 on `storage`.

    Takes the storage's lock and keeps it. `server_id` is this server's; None adopts the
    directory's (every file must still agree). Each record's changes go to `sink` as soon
    as the record passed its checks; without one they are collected in `Recovered.changes`.
    A refusal may come after part of the changes reached the sink: discard it then.

    Raises:
        DirectoryInUse: another server holds the lock.
        RecoveryError: corruption (without `repair`), or another server's directory.
        OSError: the storage failed.
    """
    collector = CollectingSink()
    with paused_gc():
        out = _Recovery(storage, server_id, repair, collector if sink is None else sink).run()
    if sink is None:
        out.changes = collector.changes
    return out
