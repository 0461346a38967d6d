"""Scanning a log or snapshot file (persistence.md §6.4): its header, its whole records
one at a time, and the first problem with the facts needed to call it a torn tail, a torn
creation or corruption (`Problem.verdict`).

Charter: pure functions over bytes, no I/O, no clock. A payload is decoded only after its
CRC matched, so a body is only ever taken from a record whose CRC matched.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from allq.store.format import (
    _RECORD_HEAD,
    _U32,
    _ZERO_BLOCK,
    BLOCK,
    HEADER_SIZE,
    MAX_PAYLOAD,
    RECORD_HEADER_SIZE,
    Change,
    FileHeader,
    _Reader,
    decode_header,
    parse_name,
)
from allq.store.validation import FormatError
from allq.tubes.changes import PlainReadyRow

# --- scanning a file (§6.4) -------------------------------------------------------------


class Verdict(enum.Enum):
    TORN_TAIL = "torn tail"
    TORN_CREATION = "torn creation"
    CORRUPT = "corruption"


class Record(NamedTuple):
    """A whole record: where it starts and ends, and its validated changes; `rows` their
    `plain_ready_row`s when every change is a plain ready put (None otherwise)."""

    offset: int
    end: int
    changes: list[Change]
    rows: list[PlainReadyRow] | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """The first bad header or record of a file and the facts §6.4 decides on.

    `offset` is where the bad header (0) or record starts; `torn_like` says whether the
    bytes look like an interrupted write: EOF inside it, all zero from it to EOF, or (last
    record ending at EOF with a CRC mismatch) an all-zero 512-byte-aligned block in it, or
    (a bad length or CRC) zeros from a 512-byte boundary inside it to EOF.
    A record running past EOF whose length is one bit away from one its CRC matches is a
    damaged length, not a torn write (so a flipped length bit is never silently dropped).
    """

    offset: int
    reason: str
    torn_like: bool
    in_header: bool

    def verdict(self, *, tail: bool, newest: bool, records: int) -> Verdict:
        """§6.4: `tail` = the newest log holding a change besides `meta`; `newest` = the
        newest file; `records` = whole records before the problem."""
        if newest and self.torn_like and (self.in_header or records == 0):
            return Verdict.TORN_CREATION
        if tail and self.torn_like and not self.in_header and records > 0:
            return Verdict.TORN_TAIL
        return Verdict.CORRUPT


@dataclass(frozen=True, slots=True)
class FileScan:
    name: str
    size: int
    header: FileHeader | None
    records: list[Record]
    problem: Problem | None

    @property
    def good_end(self) -> int:
        """Where the whole records end (the truncation point of a torn tail)."""
        if self.records:
            return self.records[-1].end
        return HEADER_SIZE if self.header is not None else 0


def _zero_from(data: bytes, offset: int) -> bool:
    return data.count(0, offset) == len(data) - offset


def _has_zero_block(data: bytes, start: int, end: int) -> bool:
    block = -(-start // BLOCK) * BLOCK
    while block + BLOCK <= end:
        if data[block : block + BLOCK] == _ZERO_BLOCK:
            return True
        block += BLOCK
    return False


def _zeros_from_block_inside(data: bytes, start: int, end: int) -> bool:
    """Whether every byte from some 512-byte boundary inside [start, end) to EOF is zero.

    Our extension of §6.4's zero-block rule: a power loss leaves the blocks the kernel had
    not written as zeros up to EOF, and such a run may start inside a record that is not
    the last one, or cover only a final block that EOF cuts short.
    """
    boundary = -(-len(data.rstrip(b"\0")) // BLOCK) * BLOCK
    return start < boundary < end


def _one_bit_length(data: bytes, offset: int, length: int, crc: int) -> int | None:
    """A length one bit away from `length` whose record fits the file and matches `crc`.

    EOF inside a record is a torn write, unless the length itself was hit by a bit flip;
    then the record's bytes are all there and the CRC matches the original length.
    """
    for bit in range(32):
        candidate = length ^ (1 << bit)
        end = offset + RECORD_HEADER_SIZE + candidate
        if 1 <= candidate <= MAX_PAYLOAD and end <= len(data):
            head = _U32.pack(candidate)
            if zlib.crc32(data[offset + RECORD_HEADER_SIZE : end], zlib.crc32(head)) == crc:
                return candidate
    return None


def scan(name: str, data: bytes) -> FileScan:
    """Walk a log or snapshot file: its header, whole records, and the first problem.

    `name` must be a log or snapshot name (`parse_name`); the header must match it. A file
    without any record has a problem at offset 32 ("no meta record").
    """
    scanner = FileScanner(name, data)
    records = list(scanner)
    return FileScan(name, len(data), scanner.header, records, scanner.problem)


class FileScanner:
    """`scan`, one record at a time: iterating yields the whole records in order; once the
    iteration ended, `header`, `problem` and `count` (records yielded) are final.

    Recovery replays each record as it comes (performance.md B8): decoding a whole file's
    records before the first is applied held every change map of a snapshot at once (1 GB
    for 1,000,000 jobs), and decoding into ever new memory cost more than the decoding.

    Raises:
        ValueError: `name` is not a log or snapshot name.
    """

    __slots__ = ("count", "data", "header", "name", "problem")

    def __init__(self, name: str, data: bytes) -> None:
        if parse_name(name) is None:
            raise ValueError(f"{name!r} is not a log or snapshot name")
        self.name = name
        self.data = data
        self.header: FileHeader | None = None
        self.problem: Problem | None = None
        self.count = 0

    def __iter__(self) -> Iterator[Record]:
        data = self.data
        parsed = parse_name(self.name)
        assert parsed is not None
        kind, seq = parsed
        try:
            header = decode_header(data)
            if header.kind != kind or header.seq != seq:
                raise FormatError(
                    f"file header says kind {header.kind} sequence {header.seq}, "
                    f"the name says kind {kind} sequence {seq}"
                )
        except FormatError as exc:
            last_nonzero = len(data.rstrip(b"\0"))
            self.problem = Problem(0, str(exc), last_nonzero < HEADER_SIZE, in_header=True)
            return
        self.header = header
        offset = HEADER_SIZE
        size = len(data)
        reader = _Reader(data, header.version)
        view = memoryview(data)
        crc32 = zlib.crc32
        while offset < size:
            # The fast path: a whole record whose CRC matches and whose payload decodes.
            # Anything else goes to `_read_record`, which says why it is bad.
            if size - offset >= RECORD_HEADER_SIZE:
                length, crc = _RECORD_HEAD.unpack_from(data, offset)
                end = offset + RECORD_HEADER_SIZE + length
                if (
                    1 <= length <= MAX_PAYLOAD
                    and end <= size
                    and crc
                    == crc32(
                        view[offset + RECORD_HEADER_SIZE : end], crc32(view[offset : offset + 4])
                    )
                ):
                    try:
                        changes = reader.decode(offset + RECORD_HEADER_SIZE, end)
                    except FormatError:
                        pass
                    else:
                        self.count += 1
                        yield Record(offset, end, changes, reader.rows)
                        offset = end
                        continue
            item = _read_record(data, offset, reader)
            if isinstance(item, Problem):
                self.problem = item
                return
            self.count += 1  # pragma: no cover (the fast path took every good record)
            yield item  # pragma: no cover
            offset = item.end  # pragma: no cover
        if not self.count:
            self.problem = Problem(offset, "no meta record", torn_like=True, in_header=False)


def _read_record(data: bytes, offset: int, reader: _Reader) -> Record | Problem:
    """The record at `offset`, or why it is bad. The payload is decoded only when its CRC
    matched (so a body is only ever taken from a record whose CRC matched)."""
    size = len(data)
    remaining = size - offset
    if remaining < RECORD_HEADER_SIZE:
        return Problem(offset, f"incomplete record header ({remaining} bytes)", True, False)
    length, crc = _RECORD_HEAD.unpack_from(data, offset)
    # `_zero_from` reads the rest of the file: only a bad record may ask it (a good record
    # on every call made recovery quadratic in the records of a segment).
    if not 1 <= length <= MAX_PAYLOAD:
        torn = _zero_from(data, offset) or _zeros_from_block_inside(
            data, offset, offset + RECORD_HEADER_SIZE
        )
        return Problem(offset, f"invalid record length {length}", torn, False)
    end = offset + RECORD_HEADER_SIZE + length
    if end > size:
        reason = f"record of {length} bytes runs past the end of the file ({remaining} bytes left)"
        fixed = _one_bit_length(data, offset, length, crc)
        if fixed is not None:
            reason += f"; its CRC matches length {fixed}: the length is damaged"
        return Problem(offset, reason, fixed is None, False)
    view = memoryview(data)
    if crc != zlib.crc32(
        view[offset + RECORD_HEADER_SIZE : end], zlib.crc32(view[offset : offset + 4])
    ):
        torn = (
            _zero_from(data, offset)
            or (end == size and _has_zero_block(data, offset, end))
            or _zeros_from_block_inside(data, offset, end)
        )
        return Problem(offset, "record CRC mismatch", torn, False)
    try:
        changes = reader.decode(offset + RECORD_HEADER_SIZE, end)
    except FormatError as exc:
        return Problem(offset, f"invalid record: {exc}", _zero_from(data, offset), False)
    return Record(offset, end, changes)
