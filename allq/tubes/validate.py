"""Request validation (semantics.md §1, §4.1, §5.1, §13): raw argument maps -> clean values.

Charter: every operation has a signature, an ordered list of fields. `validate(op, args)`
checks, in the precedence of §13.3, unknown fields and missing required fields (in input
order), then each value in signature order, and returns a dict of normalized values
(durations rounded to the millisecond, ids reduced to local ids). The first failure raises
BAD_TUBE, JOB_TOO_BIG or BAD_FORMAT with the `field` path. No state is read here except
the configuration and `now` (for `run_at`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

from allq.errors import BadFormat, BadTube, JobTooBig
from allq.tubes.config import SERVER_ID_RE, UINT32_MAX, EngineConfig

TUBE_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.:@$!#=+][A-Za-z0-9_.:@$!#=+\-]{0,199}")
LOCAL_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{22}")
IDEMPOTENCY_KEY_RE: Final = re.compile(r"[\x21-\x7e]{1,200}")
MAX_BATCH: Final = 1000
MAX_RESERVE_COUNT: Final = 1000
MAX_RESERVE_TUBES: Final = 100
MAX_RESERVE_TIMEOUT: Final = 300
_MS: Final = Decimal("0.001")


@dataclass(frozen=True, slots=True)
class Context:
    """What validation may read: the configuration and the time."""

    config: EngineConfig
    now: float


Validator = Callable[[object, str, Context], object]


# -- scalar rules -----------------------------------------------------------------------


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(value: object, field: str, low: int, high: int) -> int:
    """An integer in [low, high]; `5.0` is accepted, booleans and fractions are not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadFormat(f"{field} must be an integer, not {type(value).__name__}", field=field)
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise BadFormat(f"{field} must be an integer, got {value!r}", field=field)
        value = int(value)
    if not low <= value <= high:
        raise BadFormat(f"{field} must be in {low} … {high}, got {value}", field=field)
    return value


def duration(value: object, field: str, low: float, high: float) -> float:
    """Seconds as an integer or finite float, rounded to the millisecond (halves away)."""
    if not is_number(value):
        raise BadFormat(f"{field} must be a number of seconds", field=field)
    assert isinstance(value, int | float)
    if isinstance(value, float) and not math.isfinite(value):
        raise BadFormat(f"{field} must be finite, got {value!r}", field=field)
    out_of_range = BadFormat(
        f"{field} must be in {low:g} … {high:g} seconds, got {value}", field=field
    )
    if not low - 1 <= value <= high + 1:  # before rounding: huge values overflow Decimal
        raise out_of_range
    rounded = float(Decimal(repr(value)).quantize(_MS, rounding=ROUND_HALF_UP))
    if not low <= rounded <= high:
        raise out_of_range
    return rounded


def boolean(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise BadFormat(f"{field} must be true or false", field=field)
    return value


def tube_name(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise BadTube(f"{field} must be a tube name string", field=field)
    if not TUBE_NAME_RE.fullmatch(value) or value.strip(".") == "":
        raise BadTube(
            f"{field} {value[:64]!r} is not a tube name: 1-200 bytes of letters, digits and "
            "- _ . : @ $ ! # = +, not starting with '-', not only dots",
            field=field,
        )
    return value


def shard_key(value: object, field: str) -> str:
    if not isinstance(value, str) or not TUBE_NAME_RE.fullmatch(value):
        raise BadFormat(f"{field} must be 1-200 bytes of the tube-name charset", field=field)
    return value


def job_id(value: object, field: str, server_id: str) -> str:
    """A local id, or `<server_id>,<local_id>`. A foreign server id yields an id no job has."""
    if isinstance(value, str):
        if LOCAL_ID_RE.fullmatch(value):
            return value
        server, sep, local = value.partition(",")
        if sep and SERVER_ID_RE.fullmatch(server) and LOCAL_ID_RE.fullmatch(local):
            # A foreign id keeps its comma, so it can never match a local id: NOT_FOUND later.
            return local if server == server_id else value
    raise BadFormat(f"{field} must be a 22-character job id or '<server_id>,<job id>'", field=field)


def lease(value: object, field: str) -> str:
    if not isinstance(value, str) or not LEASE_RE.fullmatch(value):
        raise BadFormat(f"{field} must be a 22-character lease", field=field)
    return value


LEASE_RE: Final = LOCAL_ID_RE


def text(value: object, field: str, max_bytes: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value.encode()) <= max_bytes:
        raise BadFormat(f"{field} must be a string of 1-{max_bytes} bytes", field=field)
    return value


# -- field validators (value, field path, context) ----------------------------------------


def _tube(v: object, f: str, c: Context) -> object:
    return tube_name(v, f)


def _body(v: object, f: str, c: Context) -> object:
    if not isinstance(v, bytes):
        raise BadFormat(f"{f} must be a byte string", field=f)
    if len(v) > c.config.max_job_bytes:
        raise JobTooBig(f"{f} has {len(v)} bytes; the limit is {c.config.max_job_bytes}", field=f)
    return v


def _priority(v: object, f: str, c: Context) -> object:
    return integer(v, f, 0, UINT32_MAX)


def _delay(v: object, f: str, c: Context) -> object:
    return duration(v, f, 0, UINT32_MAX)


def _run_at(v: object, f: str, c: Context) -> object:
    if not is_number(v) or not math.isfinite(float(v)) or float(v) < 0:  # type: ignore[arg-type]
        raise BadFormat(f"{f} must be a finite unix time ≥ 0", field=f)
    at = float(v)  # type: ignore[arg-type]
    if at - c.now > UINT32_MAX:
        raise BadFormat(f"{f} is more than {UINT32_MAX} seconds ahead", field=f)
    return at


def _ttr(v: object, f: str, c: Context) -> object:
    return duration(v, f, 1, UINT32_MAX)


def _expired_limit(v: object, f: str, c: Context) -> object:
    return integer(v, f, 1, 1_000_000)


def _max_releases(v: object, f: str, c: Context) -> object:
    return integer(v, f, 0, 2_000_000)


def _job_id(v: object, f: str, c: Context) -> object:
    return job_id(v, f, c.config.server_id)


def _lease(v: object, f: str, c: Context) -> object:
    return lease(v, f)


def _shard_key(v: object, f: str, c: Context) -> object:
    return shard_key(v, f)


def _idempotency_key(v: object, f: str, c: Context) -> object:
    if not isinstance(v, str) or not IDEMPOTENCY_KEY_RE.fullmatch(v):
        raise BadFormat(f"{f} must be 1-200 printable ASCII characters (0x21-0x7E)", field=f)
    return v


def _parent_timeout(v: object, f: str, c: Context) -> object:
    return duration(v, f, 1, UINT32_MAX)


def _bool(v: object, f: str, c: Context) -> object:
    return boolean(v, f)


def _parent_limit(v: object, f: str, c: Context) -> object:
    return integer(v, f, 1, 1_000_000)


def _on_child_failure(v: object, f: str, c: Context) -> object:
    if v not in ("wait", "bury") or not isinstance(v, str):
        raise BadFormat(f'{f} must be "wait" or "bury"', field=f)
    return v


def tube_list(v: object, f: str) -> list[str]:
    """A reserve's `tubes`: 1 … 100 distinct valid names (duplicates dropped, order kept)."""
    if not isinstance(v, list):
        raise BadFormat(f"{f} must be a list of tube names", field=f)
    if len(v) > 10 * MAX_RESERVE_TUBES:
        raise BadFormat(f"{f} has {len(v)} entries; at most {MAX_RESERVE_TUBES} tubes", field=f)
    names = [tube_name(name, f"{f}[{i}]") for i, name in enumerate(v)]
    unique = list(dict.fromkeys(names))
    if not 1 <= len(unique) <= MAX_RESERVE_TUBES:
        raise BadFormat(f"{f} must name 1 … {MAX_RESERVE_TUBES} distinct tubes", field=f)
    return unique


def _tubes(v: object, f: str, c: Context) -> object:
    return tube_list(v, f)


def _count(v: object, f: str, c: Context) -> object:
    return integer(v, f, 1, MAX_RESERVE_COUNT)


def _reserve_timeout(v: object, f: str, c: Context) -> object:
    return duration(v, f, 0, MAX_RESERVE_TIMEOUT)


def _owner(v: object, f: str, c: Context) -> object:
    return text(v, f, 128)


def _bound(v: object, f: str, c: Context) -> object:
    return integer(v, f, 1, 1_000_000)


def _pause_duration(v: object, f: str, c: Context) -> object:
    return duration(v, f, 0, UINT32_MAX)


def _tps(v: object, f: str, c: Context) -> object:
    if not is_number(v) or not math.isfinite(float(v)) or float(v) > 1_000_000:  # type: ignore[arg-type]
        raise BadFormat(f"{f} must be a finite number ≤ 1000000", field=f)
    return float(v)  # type: ignore[arg-type]


def _shard_limit(v: object, f: str, c: Context) -> object:
    return integer(v, f, 0, 1_000_000)


def _after(v: object, f: str, c: Context) -> object:
    return tube_name(v, f)


def _list_limit(v: object, f: str, c: Context) -> object:
    return integer(v, f, 1, 10_000)


# -- signatures -------------------------------------------------------------------------

Field = tuple[str, Validator, bool]  # (name, validator, required)

_PUT_COMMON: Final[list[Field]] = [
    ("tube", _tube, True),
    ("body", _body, False),
    ("priority", _priority, False),
]
_PUT_TAIL: Final[list[Field]] = [
    ("ttr", _ttr, False),
    ("expired_limit", _expired_limit, False),
    ("max_releases", _max_releases, False),
    ("parent_id", _job_id, False),
    ("shard_key", _shard_key, False),
    ("idempotency_key", _idempotency_key, False),
]
_JOB: Final[list[Field]] = [("job_id", _job_id, True)]
_JOB_LEASE: Final[list[Field]] = [("job_id", _job_id, True), ("lease", _lease, False)]
_TUBE: Final[list[Field]] = [("tube", _tube, True)]

SIGNATURES: Final[dict[str, list[Field]]] = {
    "put": [*_PUT_COMMON, ("delay", _delay, False), ("run_at", _run_at, False), *_PUT_TAIL],
    "put_parent": [
        *_PUT_COMMON,
        *_PUT_TAIL,
        ("timeout", _parent_timeout, False),
        ("run_on_timeout", _bool, False),
        ("limit", _parent_limit, False),
        ("noop", _bool, False),
        ("on_child_failure", _on_child_failure, False),
    ],
    "reserve": [
        ("tubes", _tubes, True),
        ("count", _count, False),
        ("timeout", _reserve_timeout, False),
        ("owner", _owner, False),
    ],
    "done": _JOB_LEASE,
    "delete": _JOB_LEASE,
    "touch": _JOB_LEASE,
    "release": [*_JOB_LEASE, ("priority", _priority, False), ("delay", _delay, False)],
    "bury": [*_JOB_LEASE, ("priority", _priority, False)],
    "unreserve": [("job_id", _job_id, True), ("lease", _lease, True)],
    "kick": [*_TUBE, ("bound", _bound, False)],
    "kick_job": _JOB,
    "set_children_started": _JOB,
    "peek": _JOB,
    "peek_ready": _TUBE,
    "peek_delayed": _TUBE,
    "peek_buried": _TUBE,
    "stats_job": _JOB,
    "stats_tube": _TUBE,
    "stats": [],
    "list_tubes": [("after", _after, False), ("limit", _list_limit, False)],
    "ping": [],
    "pause": [*_TUBE, ("duration", _pause_duration, False)],
    "unpause": _TUBE,
    "throttle": [*_TUBE, ("tps", _tps, True)],
    "drain": [("tube", _tube, False)],
    "undrain": [("tube", _tube, False)],
    "set_shard_limit": [*_TUBE, ("limit", _shard_limit, True)],
    "clear": _TUBE,
}

#: Operations that take the `jobs` envelope instead of plain fields.
BATCH_OPS: Final = frozenset({"put_batch"})
OPERATIONS: Final = frozenset(SIGNATURES) | BATCH_OPS
_NAMES: Final = {op: {name for name, _, _ in fields} for op, fields in SIGNATURES.items()}


def validate(
    op: str, args: Mapping[str, object], ctx: Context, *, prefix: str = ""
) -> dict[str, object]:
    """Check `args` against `op`'s signature; return normalized values of present fields."""
    fields = SIGNATURES.get(op)
    if fields is None:
        raise BadFormat(f"unknown operation {op!r}", field="op")
    allowed = _NAMES[op]
    for name in args:
        if name not in allowed:
            raise BadFormat(f"{op} takes no field {name!r}", field=f"{prefix}{name}")
    for name, _, required in fields:
        if required and name not in args:
            raise BadFormat(f"{op} needs the field {name!r}", field=f"{prefix}{name}")
    clean: dict[str, object] = {}
    for name, check, _ in fields:
        if name in args:
            clean[name] = check(args[name], f"{prefix}{name}", ctx)
    if "delay" in clean and "run_at" in clean:
        raise BadFormat("give either delay or run_at, not both", field=f"{prefix}run_at")
    return clean


def batch_items(args: Mapping[str, object]) -> list[object]:
    """The `jobs` envelope of put_batch (§13.1): a list of 1 … 1,000 items."""
    for name in args:
        if name != "jobs":
            raise BadFormat(f"put_batch takes no field {name!r}", field=name)
    jobs = args.get("jobs")
    if jobs is None:
        raise BadFormat("put_batch needs the field 'jobs'", field="jobs")
    if not isinstance(jobs, list):
        raise BadFormat("jobs must be a list of put records", field="jobs")
    if not 1 <= len(jobs) <= MAX_BATCH:
        raise BadFormat(f"jobs must hold 1 … {MAX_BATCH} items, not {len(jobs)}", field="jobs")
    return jobs
