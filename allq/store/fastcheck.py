"""Fast checks of the common changes (performance.md B8): proofs that a change is valid,
made with a few C-level operations instead of one Python check per field.

Charter: pure functions, no I/O. Each check either proves a change valid or answers "not
proven" (False / None), and the caller then runs `validate_change`, which names the
problem or accepts what these checks do not cover; so a fast check may be stricter than
`validate_change`, never laxer (tests/store/test_fast_paths.py, test_columns.py mutate every
field to prove it). `FastChecks` remembers the tube names it already checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any, Final

from allq.store.validation import (
    JOB_FIELDS,
    STATE_FIELDS,
    STATE_TIMES,
    U32_MAX,
    U64_MAX,
)
from allq.tubes.changes import (
    PLAIN_READY_FIELDS,
    PLAIN_READY_SIZE,
    PlainReadyRow,
    is_plain_ready,
    plain_ready_row,
)
from allq.tubes.job import COUNTERS
from allq.tubes.validate import IDEMPOTENCY_KEY_RE, LOCAL_ID_RE, TUBE_NAME_RE

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
_PUT_SIZE: Final = len(JOB_FIELDS) + 2  # + "t" + the state's time
_PUT_SIGNATURES: Final = _signatures((str, str, bytes), 3, len(_PUT_INTS))
_STATE_INTS: Final = ("priority", "seq", *COUNTERS)
_STATE_GET: Final = {
    state: itemgetter("id", time, *_STATE_INTS) for state, time in STATE_TIMES.items()
}
_STATE_SIZE: Final = len(STATE_FIELDS) + 2
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


class FastChecks:
    """The fast checks over the changes of one file (or one record to write): `columns`
    says whether `puts` changes may occur (format 2)."""

    __slots__ = ("_tubes", "columns")

    def __init__(self, columns: bool = True) -> None:
        self.columns = columns
        self._tubes: set[str] = set()

    def fast_valid(self, change: dict[str, Any]) -> bool:
        """Whether `change` is a plain `put` (not a parent), `state` or `delete` change that
        is certainly valid. False sends it to `validate_change`, which names the problem (or
        accepts what these checks do not cover)."""
        kind = change.get("t")
        if kind == "delete":
            return len(change) == 2 and self._id_ok(change.get("id"))
        if kind == "puts":
            return self.columns and puts_valid(change, self._tube_ok)
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
        columns = list(zip(*rows, strict=True))
        return rows if columns_valid(columns, self._tube_ok) else None

    def plain_ready_row(self, change: Any) -> PlainReadyRow | None:
        """The `plain_ready_row` of `change` if it is a certainly valid plain ready `put`
        (a record of one `put`, the common record of a log fed single puts), else None:
        the checks of `columns_valid` on one row, which the replay then applies as it is."""
        if type(change) is not dict or not is_plain_ready(change):
            return None
        row: PlainReadyRow = plain_ready_row(change)
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


def puts_valid(change: Mapping[str, Any], tube_ok: Callable[[str], bool]) -> bool:
    """Whether a `puts` change is certainly valid (`columns_valid` over its columns)."""
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
        and columns_valid(columns, tube_ok)
    )


def columns_valid(columns: Sequence[Sequence[Any]], tube_ok: Callable[[str], bool]) -> bool:
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


def tube_name_ok(value: str) -> bool:
    return _tube_match(value) is not None
