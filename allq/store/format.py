"""The on-disk format of persistence.md §3, §4 and the bad-record verdicts of §6.4.

Charter: pure functions over bytes, no I/O, no clock. A file is a 32-byte header followed
by records; a record is `u32 N`, `u32 CRC-32(length bytes + payload)` and a payload of `N`
bytes holding a CBOR array of change maps. `scan` walks a file's bytes, returns its whole
records and the first problem with the facts §6.4 needs to call it a torn tail, a torn
creation or corruption (`Problem.verdict`).

Payloads are decoded with the strict rules of wire.md §4 (the decoder options of
`allq.wire.codec`: no tags, definite lengths, no duplicate keys, depth ≤ 8, strict UTF-8,
nothing after the item), then each change is validated against the field set of its type
`t` (§4). `encode_record` runs the same validation, so the log never holds a change the next
start would refuse.

Recovery speed (performance.md B8): `scan` decodes every record of a file with one
`cbor2.CBORDecoder` over the file's bytes (no per-record decoder, no Python re-walk of the
decoded value: the per-change validation checks the type of every value, which covers the
allowed-types walk of the wire codec), and validates plain `put`, `state` and `delete`
changes with straight-line checks (`_Reader.fast_valid`); anything those do not prove valid
goes through `validate_change`, which names the problem.
"""

from __future__ import annotations

import enum
import io
import math
import re
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any, Final, NamedTuple, cast

import cbor2

from allq.tubes.changes import (
    PLAIN_READY_FIELDS,
    PLAIN_READY_SIZE,
    PlainReadyRow,
    plain_ready_row,
)
from allq.tubes.config import SERVER_ID_RE
from allq.tubes.job import COUNTERS
from allq.tubes.validate import IDEMPOTENCY_KEY_RE, LOCAL_ID_RE, TUBE_NAME_RE
from allq.wire.codec import _NO_TAGS, MAX_DEPTH, _check_value, _tag_hook

MAGIC: Final = b"ALQLOG\r\n"
#: The version this code writes; it reads `READABLE_VERSIONS` (format 2 adds the `puts`
#: change, see `allq.tubes.changes.fold_puts`).
FORMAT_VERSION: Final = 2
READABLE_VERSIONS: Final = (1, 2)
KIND_LOG: Final = 1
KIND_SNAPSHOT: Final = 2
HEADER_SIZE: Final = 32
RECORD_HEADER_SIZE: Final = 8
MAX_PAYLOAD: Final = 33_554_432
BLOCK: Final = 512
U32_MAX: Final = 0xFFFF_FFFF
U64_MAX: Final = 2**64 - 1

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


class FormatError(ValueError):
    """A header, record or change that breaks the format; the message is the reason."""


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
        if change.get("t") == "puts" and _puts_valid(change, _tube_name_ok):
            continue  # the column checks; `validate_change` would name a problem
        validate_change(change)
    _check_value(items, 1, FormatError)
    payload = cbor2.dumps(items)
    if len(payload) > MAX_PAYLOAD:
        raise FormatError(f"record payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    length = _U32.pack(len(payload))
    return length + _U32.pack(zlib.crc32(payload, zlib.crc32(length))) + payload


# --- change validation (§4) -------------------------------------------------------------

Check = Callable[[object], bool]


def _is_int(low: int = 0, high: int = U64_MAX) -> Check:
    return lambda v: type(v) is int and low <= v <= high


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_positive(v: object) -> bool:
    return _is_number(v) and cast("float", v) > 0


def _is_bool(v: object) -> bool:
    return isinstance(v, bool)


def _matches(pattern: re.Pattern[str]) -> Check:
    return lambda v: isinstance(v, str) and pattern.fullmatch(v) is not None


def _optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _is_text(v: object) -> bool:
    return isinstance(v, str)


def _is_seqs(v: object) -> bool:
    return isinstance(v, dict) and all(
        isinstance(k, str) and type(n) is int and 0 <= n <= U64_MAX for k, n in v.items()
    )


_ID: Final = _matches(LOCAL_ID_RE)
_TUBE: Final = _matches(TUBE_NAME_RE)
_COUNT: Final = _is_int()
_U32_CHECK: Final = _is_int(0, U32_MAX)

STATE_TIMES: Final = {"ready": "ready_since", "delayed": "due_at", "buried": "buried_at"}
JOB_STATES: Final = ("ready", "delayed", "buried", "waiting")

_JOB_REQUIRED: Final[dict[str, Check]] = {
    "id": _ID,
    "tube": _TUBE,
    "body": lambda v: isinstance(v, bytes),
    "priority": _U32_CHECK,
    "ttr": _is_positive,
    "expired_limit": _COUNT,
    "max_releases": _COUNT,
    "created_at": _is_number,
    "state": lambda v: v in JOB_STATES,
    "seq": _COUNT,
    **dict.fromkeys(COUNTERS, _COUNT),
}
_JOB_OPTIONAL: Final[dict[str, Check]] = {
    "parent_id": _ID,
    "shard_key": _TUBE,
    "idempotency_key": _matches(IDEMPOTENCY_KEY_RE),
}
_PARENT: Final[dict[str, Check]] = {
    "timeout": _is_positive,
    "timeout_at": _is_number,
    "run_on_timeout": _is_bool,
    "limit": _optional(_COUNT),
    "noop": _is_bool,
    "on_child_failure": lambda v: v in ("wait", "bury"),
    "children_started": _COUNT,
    "children_completed": _COUNT,
    "children_failed": _COUNT,
}
_STATE: Final[dict[str, Check]] = {
    "id": _ID,
    "state": lambda v: isinstance(v, str) and v in STATE_TIMES,
    "priority": _U32_CHECK,
    "seq": _COUNT,
    **dict.fromkeys(COUNTERS, _COUNT),
}
_FIXED: Final[dict[str, dict[str, Check]]] = {
    "meta": {
        "format": lambda v: type(v) is int and v in READABLE_VERSIONS,
        "server_id": _matches(SERVER_ID_RE),
        "prev": _COUNT,
        "seqs": _is_seqs,
        "version": _is_text,
    },
    "delete": {"id": _ID},
    "count": {
        "id": _ID,
        "limit": _optional(_COUNT),
        "children_started": _COUNT,
        "children_completed": _COUNT,
        "children_failed": _COUNT,
    },
    "clear": {"tube": _TUBE},
    "tube": {
        "tube": _TUBE,
        "paused": _is_bool,
        "pause_until": _optional(_is_number),
        "throttle_tps": _optional(_is_number),
        "draining": _is_bool,
        "shard_reservation_limit": _optional(_COUNT),
    },
    "idem": {"key": _matches(IDEMPOTENCY_KEY_RE), "id": _ID, "first_seen": _is_number},
    "end": {"changes": _COUNT},
}
CHANGE_TYPES: Final = (
    "meta", "put", "puts", "state", "delete", "count", "clear", "tube", "idem", "end",
)  # fmt: skip
#: The element check of each column of a `puts` change (format 2).
_PUTS_COLUMNS: Final[dict[str, Check]] = {
    name: _is_number if name == "ready_since" else _JOB_REQUIRED[name]
    for name in PLAIN_READY_FIELDS
}


def _expected_fields(change: Mapping[str, object]) -> tuple[dict[str, Check], dict[str, Check]]:
    """(required, optional) field checks of `change`, keyed by name, `t` excluded."""
    kind = change.get("t")
    if kind == "put":
        required = dict(_JOB_REQUIRED)
        state = change.get("state")
        if isinstance(state, str) and state in STATE_TIMES:
            required[STATE_TIMES[state]] = _is_number
        if state == "waiting" or any(key in change for key in _PARENT):
            required.update(_PARENT)
        return required, _JOB_OPTIONAL
    if kind == "state":
        required = dict(_STATE)
        state = change.get("state")
        if isinstance(state, str) and state in STATE_TIMES:
            required[STATE_TIMES[state]] = _is_number
        return required, {}
    if isinstance(kind, str) and kind in _FIXED:
        return _FIXED[kind], {}
    raise FormatError(f"unknown change type {kind!r}")


def validate_change(change: Mapping[str, object]) -> None:
    """Check one change map against the field set of its type (§4).

    Raises:
        FormatError: an unknown type, a missing, unknown or ill-typed field.
    """
    if change.get("t") == "puts":
        _validate_puts(change)
        return
    required, optional = _expected_fields(change)
    kind = change["t"]
    for key, value in change.items():
        if key == "t":
            continue
        if not isinstance(key, str):
            raise FormatError(f"{kind}: map keys must be text strings")
        check = required.get(key) or optional.get(key)
        if check is None:
            raise FormatError(f"{kind}: unexpected field {key!r}")
        if not check(value):
            raise FormatError(f"{kind}: invalid {key} {value!r:.80}")
    for key in required:
        if key not in change:
            raise FormatError(f"{kind}: missing field {key!r}")


def _validate_puts(change: Mapping[str, object]) -> None:
    """A `puts` change: exactly the columns of `PLAIN_READY_FIELDS`, arrays of one length
    of at least 1, every element valid for its field."""
    length: int | None = None
    for key, column in change.items():
        if key == "t":
            continue
        if not isinstance(key, str):
            raise FormatError("puts: map keys must be text strings")
        check = _PUTS_COLUMNS.get(key)
        if check is None:
            raise FormatError(f"puts: unexpected field {key!r}")
        if not isinstance(column, list) or not column:
            raise FormatError(f"puts: {key} is not a non-empty array")
        if length is None:
            length = len(column)
        elif len(column) != length:
            raise FormatError(f"puts: {key} has {len(column)} values, other fields {length}")
        for index, value in enumerate(column):
            if not check(value):
                raise FormatError(f"puts: invalid {key}[{index}] {value!r:.80}")
    for key in _PUTS_COLUMNS:
        if key not in change:
            raise FormatError(f"puts: missing field {key!r}")


# --- fast decoding and validation of a file's records -----------------------------------

# Plain `put` and `state` changes are checked through one tuple of their required values:
# `(id, tube or state, body?, numbers..., ints...)`. Its tuple of value types must be one of
# the signatures below (exact types: a bool is not an int); then the ints are range-checked
# with one min/max, the numbers with one isfinite of their sum (an overflowing sum just sends
# the change to `validate_change`).
_NUMBER_TYPES: Final = (int, float)


def _signatures(head: tuple[type, ...], numbers: int, ints: int) -> frozenset[tuple[type, ...]]:
    combos: list[tuple[type, ...]] = [()]
    for _ in range(numbers):
        combos = [(*combo, kind) for combo in combos for kind in _NUMBER_TYPES]
    return frozenset((*head, *combo, *(int,) * ints) for combo in combos)


_PUT_INTS: Final = ("priority", "expired_limit", "max_releases", "seq", *COUNTERS)
_PUT_GET: Final = {
    state: itemgetter("id", "tube", "body", "ttr", "created_at", time, *_PUT_INTS)
    for state, time in STATE_TIMES.items()
}
_PUT_SIZE: Final = len(_JOB_REQUIRED) + 2  # + "t" + the state's time
_PUT_SIGNATURES: Final = _signatures((str, str, bytes), 3, len(_PUT_INTS))
_STATE_INTS: Final = ("priority", "seq", *COUNTERS)
_STATE_GET: Final = {
    state: itemgetter("id", time, *_STATE_INTS) for state, time in STATE_TIMES.items()
}
_STATE_SIZE: Final = len(_STATE) + 2
_STATE_SIGNATURES: Final = _signatures((str,), 1, len(_STATE_INTS))
_OPTIONAL_MATCH: Final = (
    ("parent_id", LOCAL_ID_RE.fullmatch),
    ("shard_key", TUBE_NAME_RE.fullmatch),
    ("idempotency_key", IDEMPOTENCY_KEY_RE.fullmatch),
)
#: The value type of each field of a plain ready put (the numbers may be int or float).
_ROW_KINDS: Final = tuple(
    (name, str if name in ("id", "tube") else bytes if name == "body" else int)
    for name in PLAIN_READY_FIELDS
)
#: Records of at least this many bytes are decoded with this much read-ahead.
LARGE_READ: Final = 65536
#: Records of at least this many changes try `_Reader.plain_ready_puts` first.
COLUMN_CHECK_MIN: Final = 16
_PLAIN_READY_SIZE: Final = {PLAIN_READY_SIZE}
_ROW_TTR: Final = PLAIN_READY_FIELDS.index("ttr")
_ROW_PRIORITY: Final = PLAIN_READY_FIELDS.index("priority")
_ROW_NUMBERS: Final = tuple(
    PLAIN_READY_FIELDS.index(name) for name in ("ttr", "created_at", "ready_since")
)
_ROW_INTS: Final = tuple(
    index
    for index, name in enumerate(PLAIN_READY_FIELDS)
    if name in ("priority", "expired_limit", "max_releases", "seq", *COUNTERS)
)
_ROW_SIGNATURES: Final = frozenset(
    tuple(numbers.get(name, kind) for name, kind in _ROW_KINDS)
    for numbers in [
        dict(zip(("ttr", "created_at", "ready_since"), combo, strict=True))
        for combo in _signatures((), 3, 0)
    ]
)
_row_numbers: Final = itemgetter(*_ROW_NUMBERS)
_row_ints: Final = itemgetter(*_ROW_INTS)
_DICT: Final = {dict}
_LIST: Final = {list}
_STR: Final = {str}
_BYTES: Final = {bytes}
_INT: Final = {int}
_NUMBER_SET: Final = {int, float}
_PUT: Final = {"put"}
_READY: Final = {"ready"}
_KIND: Final = itemgetter("t")
_STATE_OF: Final = itemgetter("state")
_id_match: Final = LOCAL_ID_RE.fullmatch
_tube_match: Final = TUBE_NAME_RE.fullmatch
_isfinite: Final = math.isfinite


class _Reader:
    """Strict decoding and validation of the records of one file's bytes.

    Two `cbor2.CBORDecoder`s over the file's bytes read every record (`decode(start, end)`
    seeks to the payload and refuses an item that does not end exactly at `end`): one with
    cbor2's default read-ahead for small records, one reading `LARGE_READ` bytes at a time
    for large ones (a `put_batch` or snapshot record decodes a third faster so; a small
    record would copy the whole read-ahead for nothing). On a seekable file cbor2 reads
    ahead and seeks back when a decode succeeds; after a failure it does not, so the decoder
    is replaced then. `fast_valid` remembers the tube names it already checked.
    """

    __slots__ = ("_fp", "_large", "_small", "_tubes", "columns", "rows", "version")

    def __init__(self, data: bytes, version: int = FORMAT_VERSION) -> None:
        self.rows: list[PlainReadyRow] | None = None  # of the last record decoded, if plain
        self.version = version  # the file header's; a `meta` change must say the same
        self.columns = version >= 2  # whether `puts` changes may occur
        self._fp = io.BytesIO(data)
        self._small = cbor2.CBORDecoder(self._fp, **_STRICT)
        self._large = cbor2.CBORDecoder(self._fp, read_size=LARGE_READ, **_STRICT)
        self._tubes: set[str] = set()

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

    def fast_valid(self, change: dict[str, Any]) -> bool:
        """Whether `change` is a plain `put` (not a parent), `state` or `delete` change that
        is certainly valid. False sends it to `validate_change`, which names the problem (or
        accepts what these checks do not cover)."""
        kind = change.get("t")
        if kind == "delete":
            return len(change) == 2 and self._id_ok(change.get("id"))
        if kind == "puts":
            return self.columns and self._puts_valid(change)
        state = change.get("state")
        if type(state) is not str or state not in STATE_TIMES:
            return False
        try:
            if kind == "put":
                values = _PUT_GET[state](change)
                extra = len(change) - _PUT_SIZE
                return (
                    tuple(map(type, values)) in _PUT_SIGNATURES
                    and (extra == 0 or self._optional_ok(change, extra))
                    and _id_match(values[0]) is not None
                    and self._tube_ok(values[1])
                    and values[3] > 0
                    and _isfinite(values[3] + values[4] + values[5])
                    and values[6] <= U32_MAX
                    and min(values[6:]) >= 0
                    and max(values[6:]) <= U64_MAX
                )
            if kind == "state":
                values = _STATE_GET[state](change)
                return (
                    len(change) == _STATE_SIZE
                    and tuple(map(type, values)) in _STATE_SIGNATURES
                    and _id_match(values[0]) is not None
                    and _isfinite(values[1])
                    and values[2] <= U32_MAX
                    and min(values[2:]) >= 0
                    and max(values[2:]) <= U64_MAX
                )
        except KeyError:  # a required field is missing
            return False
        return False

    def plain_ready_puts(self, changes: list[Any]) -> list[PlainReadyRow] | None:
        """The `plain_ready_row`s of `changes` if every one is a certainly valid plain ready
        `put` (no parent, no optional field: the records of `put_batch` and of snapshots),
        else None. The checks of `fast_valid`, made column by column over the whole record
        (`map`, `set`, `min`, `max` run in C), about a quarter of their cost per change; the
        rows serve the replay too. None sends the record to the per-change checks, which
        name the problem."""
        try:
            if (
                set(map(type, changes)) != _DICT
                or set(map(len, changes)) != _PLAIN_READY_SIZE
                or set(map(_KIND, changes)) != _PUT
                or set(map(_STATE_OF, changes)) != _READY
            ):
                return None
            rows = list(map(plain_ready_row, changes))
        except (KeyError, TypeError):  # a missing field; an unhashable kind or state
            return None
        return rows if self._columns_valid(list(zip(*rows, strict=True))) else None

    def plain_ready_row(self, change: Any) -> PlainReadyRow | None:
        """The `plain_ready_row` of `change` if it is a certainly valid plain ready `put`
        (a record of one `put`, the common record of a log fed single puts), else None:
        the checks of `_columns_valid` on one row, which the replay then applies as it is."""
        if (
            type(change) is not dict
            or len(change) != PLAIN_READY_SIZE
            or change.get("t") != "put"
            or change.get("state") != "ready"
        ):
            return None
        try:
            row: PlainReadyRow = plain_ready_row(change)
        except KeyError:
            return None
        if tuple(map(type, row)) not in _ROW_SIGNATURES:
            return None
        ints = _row_ints(row)
        valid = (
            _id_match(row[0]) is not None
            and self._tube_ok(row[1])
            and row[_ROW_TTR] > 0
            and _isfinite(sum(_row_numbers(row)))
            and row[_ROW_PRIORITY] <= U32_MAX
            and min(ints) >= 0
            and max(ints) <= U64_MAX
        )
        return row if valid else None

    def _puts_valid(self, change: dict[str, Any]) -> bool:
        return _puts_valid(change, self._tube_ok)

    def _columns_valid(self, columns: Sequence[Sequence[Any]]) -> bool:
        return _columns_valid(columns, self._tube_ok)

    @staticmethod
    def _optional_ok(change: dict[str, Any], extra: int) -> bool:
        """Whether exactly `extra` more fields are present and all are valid optional ones."""
        found = 0
        for name, matches in _OPTIONAL_MATCH:
            if name in change:
                value = change[name]
                if type(value) is not str or matches(value) is None:
                    return False
                found += 1
        return found == extra

    @staticmethod
    def _id_ok(value: object) -> bool:
        return type(value) is str and _id_match(value) is not None

    def _tube_ok(self, value: str) -> bool:
        if value in self._tubes:
            return True
        if _tube_match(value) is None:
            return False
        self._tubes.add(value)
        return True


def _puts_valid(change: Mapping[str, Any], tube_ok: Callable[[str], bool]) -> bool:
    """Whether a `puts` change is certainly valid (`_columns_valid` over its columns)."""
    if len(change) != PLAIN_READY_SIZE - 1:  # the fields and `t`
        return False
    try:
        columns = [change[name] for name in PLAIN_READY_FIELDS]
    except KeyError:
        return False
    return (
        set(map(type, columns)) == _LIST
        and len(set(map(len, columns))) == 1
        and len(columns[0]) > 0
        and _columns_valid(columns, tube_ok)
    )


def _columns_valid(columns: Sequence[Sequence[Any]], tube_ok: Callable[[str], bool]) -> bool:
    """Whether the values of plain ready puts, one column per field of `PLAIN_READY_FIELDS`
    (of equal lengths), are certainly valid; `tube_ok` checks each distinct tube name."""
    ids, tubes, bodies = columns[:3]
    numbers = [columns[index] for index in _ROW_NUMBERS]
    ints = [columns[index] for index in _ROW_INTS]
    return (
        set(map(type, ids)) == _STR
        and all(map(_id_match, ids))
        and set(map(type, tubes)) == _STR
        and all(map(tube_ok, set(tubes)))
        and set(map(type, bodies)) == _BYTES
        and set(map(type, chain.from_iterable(numbers))) <= _NUMBER_SET
        and all(map(_isfinite, chain.from_iterable(numbers)))
        and min(columns[_ROW_TTR]) > 0
        and set(map(type, chain.from_iterable(ints))) == _INT
        and max(columns[_ROW_PRIORITY]) <= U32_MAX
        and min(map(min, ints)) >= 0
        and max(map(max, ints)) <= U64_MAX
    )


def _tube_name_ok(value: str) -> bool:
    return _tube_match(value) is not None


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
