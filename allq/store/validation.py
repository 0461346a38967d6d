"""What a valid change is (persistence.md §4): the field set and value checks of every
change type, and `validate_change`, which names the first problem it finds.

Charter: pure functions, no I/O. The file format (`allq.store.format`) runs these on every
change it writes and, where `allq.store.fastcheck` does not prove a change valid, on every
change it reads; so the log never holds a change the next start would refuse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Final, cast

from allq.tubes.changes import PLAIN_READY_FIELDS
from allq.tubes.config import SERVER_ID_RE
from allq.tubes.job import COUNTERS
from allq.tubes.validate import IDEMPOTENCY_KEY_RE, LOCAL_ID_RE, TUBE_NAME_RE

#: The version this code writes; it reads `READABLE_VERSIONS` (format 2 adds the `puts`
#: change, see `allq.tubes.changes.fold_puts`).
FORMAT_VERSION: Final = 2
READABLE_VERSIONS: Final = (1, 2)
U32_MAX: Final = 0xFFFF_FFFF
U64_MAX: Final = 2**64 - 1


class FormatError(ValueError):
    """A header, record or change that breaks the format; the message is the reason."""


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

JOB_FIELDS: Final[dict[str, Check]] = {
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
STATE_FIELDS: Final[dict[str, Check]] = {
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
    name: _is_number if name == "ready_since" else JOB_FIELDS[name] for name in PLAIN_READY_FIELDS
}


def _expected_fields(change: Mapping[str, object]) -> tuple[dict[str, Check], dict[str, Check]]:
    """(required, optional) field checks of `change`, keyed by name, `t` excluded."""
    kind = change.get("t")
    if kind == "put":
        required = dict(JOB_FIELDS)
        state = change.get("state")
        if isinstance(state, str) and state in STATE_TIMES:
            required[STATE_TIMES[state]] = _is_number
        if state == "waiting" or any(key in change for key in _PARENT):
            required.update(_PARENT)
        return required, _JOB_OPTIONAL
    if kind == "state":
        required = dict(STATE_FIELDS)
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
