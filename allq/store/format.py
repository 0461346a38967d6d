"""The on-disk format of persistence.md §3 and §4: file names, the file header, records.

Charter: pure functions over bytes, no I/O, no clock. A file is a 32-byte header followed
by records; a record is `u32 N`, `u32 CRC-32(length bytes + payload)` and a payload of `N`
bytes holding a CBOR array of change maps. `encode_record` validates every change first
(`allq.store.validation`), so the log never holds a change the next start would refuse;
reading a file record by record and judging its first bad record is `allq.store.scanning`.

Payloads are decoded with the strict rules of wire.md §4 (the decoder options of
`allq.wire.codec`: no tags, definite lengths, no duplicate keys, depth ≤ 8, strict UTF-8,
nothing after the item), then each change is validated against the field set of its type
`t` (§4). Recovery speed (performance.md B8): `_Reader` decodes every record of a file with
one of two `cbor2.CBORDecoder`s over the file's bytes (no per-record decoder, no Python
re-walk of the decoded value: the per-change validation checks the type of every value,
which covers the allowed-types walk of the wire codec), and proves the common changes valid
with the fast checks of `allq.store.fastcheck`; anything those do not prove valid goes
through `validate_change`, which names the problem.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from allq.store.fastcheck import FastChecks, puts_valid, tube_name_ok
from allq.store.validation import FORMAT_VERSION, READABLE_VERSIONS, FormatError, validate_change
from allq.tubes.changes import PlainReadyRow
from allq.wire.codec import _NO_TAGS, MAX_DEPTH, _check_value, _tag_hook

MAGIC: Final = b"ALQLOG\r\n"
KIND_LOG: Final = 1
KIND_SNAPSHOT: Final = 2
HEADER_SIZE: Final = 32
RECORD_HEADER_SIZE: Final = 8
MAX_PAYLOAD: Final = 33_554_432
BLOCK: Final = 512

_HEADER: Final = struct.Struct(">8sHBBQQ")  # bytes 0-27; the CRC follows
_U32: Final = struct.Struct(">I")
_RECORD_HEAD: Final = struct.Struct(">II")
_ZERO_BLOCK: Final = bytes(BLOCK)

Change = dict[str, object]

# --- names (§3) -----------------------------------------------------------------------------

_NAME_RE: Final = re.compile(r"(log|snap)-([0-9]{20})\.aql")
TMP_SUFFIX: Final = ".tmp"


def log_name(seq: int) -> str:
    return f"log-{seq:020d}.aql"


def snap_name(seq: int) -> str:
    return f"snap-{seq:020d}.aql"


def parse_name(name: str) -> tuple[int, int] | None:
    """`(kind, seq)` of a log or snapshot file name, None for any other name."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        return None
    kind = KIND_LOG if match.group(1) == "log" else KIND_SNAPSHOT
    return kind, int(match.group(2))


# --- file header (§4) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileHeader:
    kind: int
    seq: int
    created_ms: int
    version: int = FORMAT_VERSION


def encode_header(kind: int, seq: int, created_ms: int, version: int = FORMAT_VERSION) -> bytes:
    """A file header; `version` other than `FORMAT_VERSION` only to test older files."""
    if kind not in (KIND_LOG, KIND_SNAPSHOT):
        raise ValueError(f"unknown file kind {kind}")
    head = _HEADER.pack(MAGIC, version, kind, 0, seq, created_ms)
    return head + _U32.pack(zlib.crc32(head))


def decode_header(data: bytes) -> FileHeader:
    """The header at the start of `data`.

    Raises:
        FormatError: incomplete, a wrong magic, version, kind, padding or CRC.
    """
    if len(data) < HEADER_SIZE:
        raise FormatError(f"incomplete file header ({len(data)} of {HEADER_SIZE} bytes)")
    magic, version, kind, pad, seq, created_ms = _HEADER.unpack_from(data)
    (crc,) = _U32.unpack_from(data, 28)
    if crc != zlib.crc32(data[:28]):
        raise FormatError("file header CRC mismatch")
    if magic != MAGIC:
        raise FormatError("not an allq log file (wrong magic)")
    if version not in READABLE_VERSIONS:
        raise FormatError(
            f"unsupported format version {version} (this allq reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: a newer allq wrote this file?)"
        )
    if kind not in (KIND_LOG, KIND_SNAPSHOT) or pad != 0:
        raise FormatError(f"unknown file kind {kind}/{pad}")
    return FileHeader(kind, seq, created_ms, version)


# --- strict CBOR (wire.md §4) for arrays ------------------------------------------------

_STRICT: Final[dict[str, Any]] = {
    "tag_hook": _tag_hook,
    "semantic_decoders": _NO_TAGS,
    "str_errors": "strict",
    "max_depth": MAX_DEPTH,
    "allow_indefinite": False,
    "allow_duplicate_keys": False,
    "strict_hashable_types": True,
}


def decode_payload(payload: bytes, version: int = FORMAT_VERSION) -> list[Change]:
    """A record payload of a file of format `version`: one CBOR array of one or more maps,
    strictly decoded and validated.

    Raises:
        FormatError: invalid CBOR, a disallowed type, not an array of maps, an invalid change.
    """
    return _Reader(payload, version).decode(0, len(payload))


def encode_record(changes: Sequence[Mapping[str, object]]) -> bytes:
    """One record holding `changes`, each validated first.

    Raises:
        FormatError: no change, an invalid change, a payload above the cap.
    """
    if not changes:
        raise FormatError("a record holds at least one change")
    items = [dict(change) for change in changes]
    for change in items:
        if change.get("t") == "puts" and puts_valid(change, tube_name_ok):
            continue  # the column checks; `validate_change` would name a problem
        validate_change(change)
    _check_value(items, 1, FormatError)
    payload = cbor2.dumps(items)
    if len(payload) > MAX_PAYLOAD:
        raise FormatError(f"record payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    length = _U32.pack(len(payload))
    return length + _U32.pack(zlib.crc32(payload, zlib.crc32(length))) + payload


#: Records of at least this many bytes are decoded with this much read-ahead.
LARGE_READ: Final = 65536
#: Records of at least this many changes try `FastChecks.plain_ready_puts` first.
COLUMN_CHECK_MIN: Final = 16


class _Reader(FastChecks):
    """Strict decoding and validation of the records of one file's bytes.

    Two `cbor2.CBORDecoder`s over the file's bytes read every record (`decode(start, end)`
    seeks to the payload and refuses an item that does not end exactly at `end`): one with
    cbor2's default read-ahead for small records, one reading `LARGE_READ` bytes at a time
    for large ones (a `put_batch` or snapshot record decodes a third faster so; a small
    record would copy the whole read-ahead for nothing). On a seekable file cbor2 reads
    ahead and seeks back when a decode succeeds; after a failure it does not, so the decoder
    is replaced then. `fast_valid` remembers the tube names it already checked.
    """

    __slots__ = ("_fp", "_large", "_small", "rows", "version")

    def __init__(self, data: bytes, version: int = FORMAT_VERSION) -> None:
        super().__init__(columns=version >= 2)  # `puts` changes occur from format 2 on
        self.rows: list[PlainReadyRow] | None = None  # of the last record decoded, if plain
        self.version = version  # the file header's; a `meta` change must say the same
        self._fp = io.BytesIO(data)
        self._small = cbor2.CBORDecoder(self._fp, **_STRICT)
        self._large = cbor2.CBORDecoder(self._fp, read_size=LARGE_READ, **_STRICT)

    def decode(self, start: int, end: int) -> list[Change]:
        """The validated changes of the payload `data[start:end]`.

        Raises:
            FormatError: invalid CBOR, a disallowed type, not an array of maps, an invalid
                change.
        """
        fp = self._fp
        fp.seek(start)
        large = end - start >= LARGE_READ
        try:
            value = (self._large if large else self._small).decode()
        except Exception as exc:  # cbor2 raises CBORDecodeError, EOF, ValueError, MemoryError …
            # A failed decode leaves cbor2's read-ahead buffer behind (a later decode would
            # read stale bytes): start over with a fresh decoder.
            if large:
                self._large = cbor2.CBORDecoder(fp, read_size=LARGE_READ, **_STRICT)
            else:
                self._small = cbor2.CBORDecoder(fp, **_STRICT)
            raise FormatError(f"invalid CBOR: {exc}") from None
        if fp.tell() != end:
            if fp.tell() < end:
                raise FormatError("trailing bytes after the CBOR item")
            raise FormatError("invalid CBOR: the item runs past the end of the record")
        if type(value) is not list or not value:
            raise FormatError("the payload is not a non-empty CBOR array")
        self.rows = None
        if len(value) >= COLUMN_CHECK_MIN:
            self.rows = self.plain_ready_puts(value)
            if self.rows is not None:
                return value
        elif len(value) == 1:
            row = self.plain_ready_row(value[0])
            if row is not None:
                self.rows = [row]
                return value
        for index, change in enumerate(value):
            if type(change) is not dict:
                raise FormatError(f"change {index} is not a map")
            if self.fast_valid(change):
                continue
            if not self.columns and change.get("t") == "puts":
                raise FormatError(f"change {index}: a puts change in a format 1 file")
            try:
                validate_change(change)
            except FormatError as exc:
                raise FormatError(f"change {index}: {exc}") from None
            if change["t"] == "meta" and change["format"] != self.version:
                raise FormatError(
                    f"change {index}: meta says format {change['format']}, "
                    f"the file header {self.version}"
                )
        return value
