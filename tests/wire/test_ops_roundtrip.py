"""Every op over the codec into the engine, with generated arguments (semantics.md §13, wire.md §4).

Rules: argument strategies are built from the field rules of semantics.md §13.2 (keyed by op
and field; a test checks that every field of `SIGNATURES` has one). Each generated request is
encoded with `codec.encode`, decoded with `codec.decode` (must give the same map, types and
NaN included) and handed to the engine of a busy `Driver`:

* valid arguments never fail validation (BAD_FORMAT, BAD_TUBE, JOB_TOO_BIG); state outcomes
  (NOT_FOUND, TIMED_OUT, LEASE_EXPIRED, …) are fine, and the invariants hold afterwards;
* invalid ones (one rule broken: wrong type, out of range, bool as integer, NaN/infinity,
  unknown field, missing field, delay with run_at, put_batch envelope) fail with the expected
  code and `field`, following the precedence of §13.3, and leave the engine snapshot unchanged.

Two domain rules decide BAD_FORMAT after validation and are respected by the valid strategies:
a put into a fair tube needs `shard_key` (§10.1) and `set_shard_limit` needs a fair tube
(§10.3). `cancel` is a session op: it runs through the in-memory server.
"""

from __future__ import annotations

import functools
import math
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allq.errors import AllQError
from allq.tubes.config import UINT32_MAX
from allq.tubes.validate import MAX_BATCH, SIGNATURES
from allq.wire import codec
from tests.helpers.engines import START, Driver, diff, make_engine, snapshot
from tests.helpers.servers import memory_server

VALIDATION_CODES = frozenset({"BAD_FORMAT", "BAD_TUBE", "JOB_TOO_BIG"})
MAX_JOB_BYTES = 64  # small, so JOB_TOO_BIG is cheap to reach
NOW = START
INT_MIN, INT_MAX = -(2**64), 2**64 - 1  # the CBOR integer range
#: validate.duration breaks at |value| >= 1e25 (see test_huge_durations_are_bad_format);
#: the generated out-of-range durations stay below that; a regression test covers the rest.
DURATION_SANE = 1e24
FAIR = "fq-"

TUBE_FIRST = string.ascii_letters + string.digits + "_.:@$!#=+"
TUBE_REST = TUBE_FIRST + "-"
ID_CHARS = string.ascii_letters + string.digits + "_-"
KEY_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))

VALID_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
INVALID_SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FIELD_SETTINGS = settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

Args = dict[str, object]
Bad = tuple[object, str]  # (value, code)


# -- the busy engine ------------------------------------------------------------------------


def busy() -> Driver:
    """Jobs in every state, a waiter, an idempotency key and tube settings (deterministic)."""
    d = Driver(make_engine(NOW, max_job_bytes=MAX_JOB_BYTES))
    d.put("t", priority=3)
    d.put("t", delay=50)
    d.put("r")
    buried = d.put("b")
    d.reserve_one("r", owner="o")
    old_lease = d.reserve_one("b")["lease"]
    d("bury", job_id=buried, lease=old_lease)
    d.parent("p", limit=2)
    d.put("fq-f", shard_key="A", idempotency_key="key")
    d("pause", tube="paused", duration=100)
    d("throttle", tube="t", tps=0.5)
    d("set_shard_limit", tube="fq-f", limit=1)
    d.wait("w", timeout=100)
    return d


def _known() -> tuple[list[str], list[str], list[str]]:
    engine = busy().engine
    ids = sorted(engine.jobs)
    leases = sorted(job.lease for job in engine.jobs.values() if job.lease is not None)
    return ids, [*leases, "A" * 22], sorted(engine.tubes)


KNOWN_IDS, KNOWN_LEASES, KNOWN_TUBES = _known()


# -- value strategies -----------------------------------------------------------------------

WRONG_TYPES: list[object] = [None, b"5", [1], {"a": 1}]
NOT_NUMBERS: list[object] = [*WRONG_TYPES, "5"]
NON_FINITE: list[object] = [math.nan, math.inf, -math.inf]


def one_of_values(values: list[object], code: str = "BAD_FORMAT") -> st.SearchStrategy[Bad]:
    return st.sampled_from(values).map(lambda value: (value, code))


def tagged(strategy: st.SearchStrategy[Any], code: str = "BAD_FORMAT") -> st.SearchStrategy[Bad]:
    return strategy.map(lambda value: (value, code))


@functools.cache
def generated_tube_names(prefix: str = "") -> st.SearchStrategy[str]:
    """Names of 1-200 bytes (after `prefix`): a first byte that is not '-', then any."""
    names = st.builds(
        lambda head, tail: prefix + head + tail,
        st.sampled_from(TUBE_FIRST),
        st.text(TUBE_REST, max_size=199 - len(prefix)),
    )
    return names.filter(lambda name: name.strip(".") != "")


@functools.cache
def tube_names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(KNOWN_TUBES),
        generated_tube_names(),
        st.just("." + "a" * 199),  # 200 bytes
        st.just("a" + "-" * 199),
    )


@functools.cache
def fair_tube_names() -> st.SearchStrategy[str]:
    return st.one_of(st.just("fq-f"), st.just(FAIR), generated_tube_names(FAIR))


@functools.cache
def bad_texts(valid_chars: str, max_len: int) -> st.SearchStrategy[str]:
    """Strings breaking a charset or a length: empty, too long, one foreign character."""
    foreign = st.sampled_from([" ", "/", "\n", "é", "\x00", ",", "%", "\u2603", "\x7f"])
    foreign = foreign.filter(lambda char: char not in valid_chars)
    return st.one_of(
        st.just(""),
        st.just(valid_chars[0] * (max_len + 1)),
        st.builds(
            lambda head, char, tail: head + char + tail,
            st.text(valid_chars, max_size=5),
            foreign,
            st.text(valid_chars, max_size=5),
        ),
    )


@functools.cache
def bad_tube_names() -> st.SearchStrategy[Bad]:
    return st.one_of(
        tagged(bad_texts(TUBE_REST, 200), "BAD_TUBE"),
        tagged(st.text(TUBE_REST, max_size=10).map(lambda tail: "-" + tail), "BAD_TUBE"),
        tagged(st.integers(1, 5).map(lambda n: "." * n), "BAD_TUBE"),
        one_of_values([*WRONG_TYPES, 5, True, 1.5], "BAD_TUBE"),
    )


@functools.cache
def integers(low: int, high: int) -> st.SearchStrategy[object]:
    """An integer in range, sometimes as a float with no fraction (§1)."""
    values = st.integers(low, high)
    return st.one_of(values, values.map(float), st.sampled_from([low, high]))


@functools.cache
def bad_integers(low: int, high: int) -> st.SearchStrategy[Bad]:
    return st.one_of(
        tagged(st.integers(INT_MIN, low - 1)),
        tagged(st.integers(high + 1, INT_MAX)),
        tagged(st.sampled_from([low - 1, high + 1, float(high + 1)])),
        tagged(st.booleans()),
        tagged(
            st.floats(low - 10, high + 10, allow_nan=False).filter(lambda f: not f.is_integer())
        ),
        one_of_values([*NON_FINITE, *NOT_NUMBERS]),
    )


@functools.cache
def durations(low: int, high: int) -> st.SearchStrategy[object]:
    """Seconds in range after rounding to the millisecond, integer or float (§1)."""
    return st.one_of(
        st.integers(low, high),
        st.floats(low, high),
        st.sampled_from([low, high, low - 0.0004, high + 0.0004, float(high)]),
    )


@functools.cache
def bad_durations(low: int, high: int) -> st.SearchStrategy[Bad]:
    return st.one_of(
        tagged(st.floats(-DURATION_SANE, low - 0.001)),
        tagged(st.floats(high + 0.001, DURATION_SANE)),
        tagged(st.integers(INT_MIN, low - 1)),
        tagged(st.integers(high + 1, INT_MAX)),
        tagged(st.sampled_from([low - 0.001, high + 0.001, low - 1])),
        tagged(st.booleans()),
        one_of_values([*NON_FINITE, *NOT_NUMBERS]),
    )


@functools.cache
def local_ids() -> st.SearchStrategy[str]:
    return st.text(ID_CHARS, min_size=22, max_size=22)


def one_foreign_character(texts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A 22-character id with one character replaced by one outside `[A-Za-z0-9_-]`."""
    return st.builds(
        lambda text, char, i: text[:i] + char + text[i + 1 :],
        texts,
        st.sampled_from([" ", ".", "/", "é", ",", "\x00", "+", "="]),
        st.integers(0, 21),
    )


@functools.cache
def job_ids() -> st.SearchStrategy[object]:
    return st.one_of(
        st.sampled_from(KNOWN_IDS),
        st.sampled_from(KNOWN_IDS).map(lambda local: "s1," + local),
        local_ids(),
        st.builds(
            lambda server, local: f"{server},{local}",
            st.text(ID_CHARS, min_size=1, max_size=32),
            local_ids(),
        ),
    )


@functools.cache
def bad_job_ids() -> st.SearchStrategy[Bad]:
    wrong_length = st.text(ID_CHARS, max_size=30).filter(lambda text: len(text) != 22)
    return st.one_of(
        tagged(wrong_length),
        tagged(wrong_length.map(lambda local: "s1," + local)),
        tagged(st.just("")),
        tagged(one_foreign_character(local_ids())),
        tagged(local_ids().map(lambda local: "," + local)),  # empty server id
        tagged(local_ids().map(lambda local: "x" * 33 + "," + local)),  # server id too long
        tagged(local_ids().map(lambda local: "s 1," + local)),
        tagged(local_ids().map(lambda local: f"s1,{local},x")),
        one_of_values([*WRONG_TYPES, 5, True]),
    )


@functools.cache
def leases() -> st.SearchStrategy[object]:
    return st.one_of(st.sampled_from(KNOWN_LEASES), local_ids())


@functools.cache
def bad_leases() -> st.SearchStrategy[Bad]:
    return st.one_of(
        tagged(st.text(ID_CHARS, max_size=30).filter(lambda text: len(text) != 22)),
        tagged(local_ids().map(lambda lease: "s1," + lease)),
        tagged(one_foreign_character(local_ids())),
        one_of_values([*WRONG_TYPES, 5, True]),
    )


@functools.cache
def texts_of_bytes(low: int, high: int) -> st.SearchStrategy[str]:
    return st.text(min_size=low, max_size=high).filter(
        lambda text: low <= len(text.encode()) <= high
    )


class Rule:
    """A field rule: strategies of valid values and of (invalid value, expected code)."""

    def __init__(
        self,
        valid: Callable[[], st.SearchStrategy[Any]],
        invalid: Callable[[], st.SearchStrategy[Bad]],
    ) -> None:
        self.valid = functools.cache(valid)
        self.invalid = functools.cache(invalid)


def integer_rule(low: int, high: int) -> Rule:
    return Rule(lambda: integers(low, high), lambda: bad_integers(low, high))


def duration_rule(low: int, high: int) -> Rule:
    return Rule(lambda: durations(low, high), lambda: bad_durations(low, high))


BOOLEAN = Rule(st.booleans, lambda: one_of_values([0, 1, 1.0, "true", "false", None]))
TUBE = Rule(tube_names, bad_tube_names)
JOB_ID = Rule(job_ids, bad_job_ids)

#: semantics.md §13.2, by field name; RULE_OVERRIDES for names whose rule depends on the op.
RULES: dict[str, Rule] = {
    "tube": TUBE,
    "after": TUBE,
    "body": Rule(
        lambda: st.binary(max_size=MAX_JOB_BYTES),
        lambda: st.one_of(
            tagged(
                st.binary(min_size=MAX_JOB_BYTES + 1, max_size=4 * MAX_JOB_BYTES), "JOB_TOO_BIG"
            ),
            tagged(st.text(max_size=5)),
            one_of_values([None, 5, [b"x"], True]),
        ),
    ),
    "priority": integer_rule(0, UINT32_MAX),
    "delay": duration_rule(0, UINT32_MAX),
    "run_at": Rule(
        lambda: st.one_of(
            st.floats(0, NOW + UINT32_MAX),
            st.integers(0, int(NOW) + UINT32_MAX),
            st.sampled_from([0, -0.0, NOW, NOW + UINT32_MAX]),
        ),
        lambda: st.one_of(
            tagged(st.floats(max_value=-5e-324, allow_nan=False)),
            tagged(st.floats(min_value=NOW + UINT32_MAX + 1, allow_nan=False)),
            tagged(st.integers(INT_MIN, -1)),
            tagged(st.integers(int(NOW) + UINT32_MAX + 1, INT_MAX)),
            tagged(st.booleans()),
            one_of_values([*NON_FINITE, *NOT_NUMBERS]),
        ),
    ),
    "ttr": duration_rule(1, UINT32_MAX),
    "expired_limit": integer_rule(1, 1_000_000),
    "max_releases": integer_rule(0, 2_000_000),
    "parent_id": JOB_ID,
    "job_id": JOB_ID,
    "lease": Rule(leases, bad_leases),
    "shard_key": Rule(
        lambda: st.one_of(st.text(TUBE_REST, min_size=1, max_size=199).map(lambda t: "A" + t)),
        lambda: st.one_of(
            tagged(bad_texts(TUBE_REST, 200)),
            tagged(st.text(TUBE_REST, max_size=5).map(lambda tail: "-" + tail)),
            one_of_values([*WRONG_TYPES, 5, True]),
        ),
    ),
    "idempotency_key": Rule(
        lambda: st.text(KEY_CHARS, min_size=1, max_size=200),
        lambda: st.one_of(
            tagged(bad_texts(KEY_CHARS, 200)),
            one_of_values([*WRONG_TYPES, 5, True]),
        ),
    ),
    "run_on_timeout": BOOLEAN,
    "noop": BOOLEAN,
    "on_child_failure": Rule(
        lambda: st.sampled_from(["wait", "bury"]),
        lambda: st.one_of(
            tagged(st.text(max_size=6).filter(lambda text: text not in ("wait", "bury"))),
            one_of_values(["WAIT", "bury ", None, 1, True, ["wait"]]),
        ),
    ),
    "tubes": Rule(
        lambda: st.one_of(
            st.lists(tube_names(), min_size=1, max_size=6),
            st.lists(tube_names(), min_size=1, max_size=3).map(lambda names: names * 3),
            st.just([f"t{i}" for i in range(100)] * 2),  # 100 distinct after duplicates
        ),
        lambda: st.one_of(
            one_of_values([[], "t", None, {"t": 1}, 5]),
            st.just(([f"t{i}" for i in range(101)], "BAD_FORMAT")),
        ),
    ),  # a bad name inside the list is generated by bad_tube_in_list (field tubes[i])
    "count": integer_rule(1, 1000),
    "owner": Rule(
        lambda: st.one_of(texts_of_bytes(1, 128), st.just("é" * 64)),
        lambda: st.one_of(
            one_of_values(["", "x" * 129, "é" * 65, None, 5, True, [b"o"]]),
            tagged(st.text(min_size=129, max_size=150)),
            tagged(st.text("é☃", min_size=65, max_size=70)),
        ),
    ),
    "bound": integer_rule(1, 1_000_000),
    "duration": duration_rule(0, UINT32_MAX),
    "tps": Rule(
        lambda: st.one_of(
            st.floats(max_value=1_000_000, allow_nan=False, allow_infinity=False),
            st.integers(INT_MIN, 1_000_000),
        ),
        lambda: st.one_of(
            tagged(st.floats(min_value=1_000_000, exclude_min=True, allow_infinity=False)),
            tagged(st.integers(1_000_001, INT_MAX)),
            tagged(st.booleans()),
            one_of_values([*NON_FINITE, *NOT_NUMBERS]),
        ),
    ),
}
RULE_OVERRIDES: dict[tuple[str, str], Rule] = {
    ("put_parent", "timeout"): duration_rule(1, UINT32_MAX),
    ("put_parent", "limit"): integer_rule(1, 1_000_000),
    ("reserve", "timeout"): duration_rule(0, 300),
    ("set_shard_limit", "limit"): integer_rule(0, 1_000_000),
    ("set_shard_limit", "tube"): Rule(fair_tube_names, bad_tube_names),
    ("list_tubes", "limit"): integer_rule(1, 10_000),
}


def rule(op: str, field: str) -> Rule:
    override = RULE_OVERRIDES.get((op, field))
    return RULES[field] if override is None else override


def fields_of(op: str) -> list[tuple[str, bool]]:
    return [(name, required) for name, _, required in SIGNATURES[op]]


# -- request strategies ----------------------------------------------------------------------


@st.composite
def valid_args(draw: st.DrawFn, op: str) -> Args:
    args: Args = {}
    for name, required in fields_of(op):
        if required or draw(st.booleans()):
            args[name] = draw(rule(op, name).valid())
    if "delay" in args and "run_at" in args:
        del args[draw(st.sampled_from(["delay", "run_at"]))]
    tube = args.get("tube")
    if op in ("put", "put_parent") and isinstance(tube, str) and tube.startswith(FAIR):
        args.setdefault("shard_key", draw(rule(op, "shard_key").valid()))  # §10.1
    return args


@st.composite
def valid_batches(draw: st.DrawFn) -> Args:
    return {"jobs": draw(st.lists(valid_requests("put"), min_size=1, max_size=5))}


@functools.cache
def valid_requests(op: str) -> st.SearchStrategy[Args]:
    return valid_batches() if op == "put_batch" else valid_args(op)


@dataclass(frozen=True)
class Invalid:
    args: Args
    code: str
    field: str
    how: str


def unknown_names(op: str) -> st.SearchStrategy[str]:
    taken = {name for name, _ in fields_of(op)} | {"id", "op"}
    return st.text(max_size=12).filter(lambda name: name not in taken)


@st.composite
def invalid_args(draw: st.DrawFn, op: str) -> Invalid:
    """`op`'s valid arguments with one rule broken; the expected code and field (§13.3)."""
    args = draw(valid_requests(op))
    fields = fields_of(op)
    names = [name for name, _ in fields]
    required = [name for name, needed in fields if needed]
    kinds = ["unknown", "unknown + bad value"]
    if names:
        kinds += ["bad value"] * 4
    if "tubes" in names:
        kinds += ["bad tube in list"] * 2
    if required:
        kinds += ["missing", "missing + bad value"]
    if op == "put":
        kinds.append("delay and run_at")
    kind = draw(st.sampled_from(kinds))

    def break_one(exclude: str = "") -> tuple[str, str]:
        name = draw(st.sampled_from([n for n in names if n != exclude]))
        value, code = draw(rule(op, name).invalid())
        args[name] = value
        return name, code

    if kind == "bad value":
        name, code = break_one()
        return Invalid(args, code, name, f"bad {name}")
    if kind == "bad tube in list":
        tubes: list[object] = list(draw(st.lists(tube_names(), max_size=5)))
        index = draw(st.integers(0, len(tubes)))
        value, code = draw(bad_tube_names())
        tubes.insert(index, value)
        args["tubes"] = tubes
        return Invalid(args, code, f"tubes[{index}]", "bad name in tubes")
    if kind == "delay and run_at":
        args["delay"] = draw(rule(op, "delay").valid())
        args["run_at"] = draw(rule(op, "run_at").valid())
        return Invalid(args, "BAD_FORMAT", "run_at", "delay and run_at")
    if kind.startswith("missing"):
        missing = draw(st.sampled_from(required))
        del args[missing]
        if kind.endswith("bad value") and len(names) > 1:
            break_one(exclude=missing)  # step 2 of §13.3 comes before field values
        return Invalid(args, "BAD_FORMAT", missing, kind)
    unknown = draw(unknown_names(op))
    if kind.endswith("bad value") and names:
        break_one()
    args[unknown] = draw(st.sampled_from([1, "x", None, True, b""]))
    return Invalid(args, "BAD_FORMAT", unknown, kind)


@st.composite
def invalid_batches(draw: st.DrawFn) -> Invalid:
    """Envelope errors (the whole request fails, §13.1)."""
    kind = draw(st.sampled_from(["missing", "not a list", "empty", "too many", "unknown"]))
    if kind == "missing":
        return Invalid({}, "BAD_FORMAT", "jobs", kind)
    if kind == "not a list":
        value = draw(st.sampled_from([None, {"tube": "t"}, "t", 5, True]))
        return Invalid({"jobs": value}, "BAD_FORMAT", "jobs", kind)
    if kind == "empty":
        return Invalid({"jobs": []}, "BAD_FORMAT", "jobs", kind)
    if kind == "too many":
        return Invalid({"jobs": [{"tube": "t"}] * (MAX_BATCH + 1)}, "BAD_FORMAT", "jobs", kind)
    name = draw(st.text(max_size=8).filter(lambda n: n not in ("jobs", "id", "op")))
    jobs = draw(valid_batches())["jobs"]
    return Invalid({"jobs": jobs, name: 1}, "BAD_FORMAT", name, kind)


@functools.cache
def invalid_requests(op: str) -> st.SearchStrategy[Invalid]:
    return invalid_batches() if op == "put_batch" else invalid_args(op)


# -- checks ----------------------------------------------------------------------------------


def same(a: object, b: object) -> bool:
    """Equal with the same types all the way down (True is not 1, 5.0 is not 5, NaN is NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        assert isinstance(b, float)
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    return a == b


def over_the_wire(op: str, args: Mapping[str, object]) -> dict[str, object]:
    """Encode `{id, op, …args}`, decode it, check the round trip; the decoded arguments."""
    message = {"id": 1, "op": op, **args}
    decoded = codec.decode(codec.encode(message))
    assert same(decoded, message), f"round trip changed {message!r} into {decoded!r}"
    assert codec.request_envelope_problem(decoded) is None
    return {key: value for key, value in decoded.items() if key not in ("id", "op")}


def item_error(result: object, index: int) -> dict[str, object]:
    """`{code, field}` of put_batch item `index`, or {} when the item succeeded."""
    assert isinstance(result, list)
    item = result[index]
    assert isinstance(item, dict)
    record = item.get("error")
    if record is None:
        return {}
    assert isinstance(record, dict)
    return {"code": record["code"], "field": record.get("field")}


def settled(d: Driver) -> Driver:
    d.engine.tick(d.now)
    d.engine.take_effects()
    return d


ENGINE_OPS = sorted([*SIGNATURES, "put_batch"])


def test_every_field_has_a_rule() -> None:
    for op in SIGNATURES:
        for name, _ in fields_of(op):
            assert isinstance(rule(op, name), Rule), (op, name)


@pytest.mark.parametrize("op", ENGINE_OPS)
@VALID_SETTINGS
@given(data=st.data())
def test_valid_requests_pass_validation(op: str, data: st.DataObject) -> None:
    args = over_the_wire(op, data.draw(valid_requests(op), label="args"))
    d = settled(busy())
    refused: AllQError | None = None
    try:
        result = d(op, **args)
    except AllQError as error:
        refused = error
    if refused is not None:
        assert refused.code not in VALIDATION_CODES, f"{op}({args!r}) refused: {refused!r}"
    else:
        if op == "put_batch":
            jobs = args["jobs"]
            assert isinstance(result, list)
            assert isinstance(jobs, list)
            assert len(result) == len(jobs)
            codes = [item_error(result, i).get("code") for i in range(len(result))]
            assert not VALIDATION_CODES.intersection(codes), codes


def rejected(d: Driver, op: str, args: Mapping[str, object]) -> AllQError:
    before = snapshot(d.engine)
    try:
        result = d.engine.handle(op, args, d.now)
    except AllQError as error:
        after = snapshot(d.engine)
        assert after == before, "a rejected request changed: " + "; ".join(diff(before, after))
        assert d.engine.take_effects() == []
        d.engine.check_invariants()
        return error
    raise AssertionError(f"{op}({args!r}) was accepted: {result!r}")


OP_FIELDS = [(op, name) for op in SIGNATURES for name, _ in fields_of(op)]


@pytest.mark.parametrize(("op", "field"), OP_FIELDS, ids=[f"{op}.{f}" for op, f in OP_FIELDS])
@FIELD_SETTINGS
@given(data=st.data())
def test_each_field_refuses_its_bad_values(op: str, field: str, data: st.DataObject) -> None:
    """Wrong type, out of range, bool as integer, NaN and infinities, per field (§13.2)."""
    value, code = data.draw(rule(op, field).invalid(), label="bad value")
    args = over_the_wire(op, {**data.draw(valid_requests(op), label="args"), field: value})
    error = rejected(settled(busy()), op, args)
    assert (error.code, error.field) == (code, field)


@pytest.mark.parametrize("op", ENGINE_OPS)
@INVALID_SETTINGS
@given(data=st.data())
def test_invalid_requests_are_refused_and_change_nothing(op: str, data: st.DataObject) -> None:
    case = data.draw(invalid_requests(op), label="case")
    args = over_the_wire(op, case.args)
    d = settled(busy())
    error = rejected(d, op, args)
    assert (error.code, error.field) == (case.code, case.field), f"{case.how}: {error!r}"


@INVALID_SETTINGS
@given(data=st.data())
def test_invalid_batch_items_fail_alone_with_their_path(data: st.DataObject) -> None:
    """Items are validated one by one (§13.1): each bad item gets its own error and path."""
    cases = data.draw(
        st.lists(
            invalid_requests("put"),
            min_size=1,
            max_size=4,
        ),
        label="items",
    )
    args = over_the_wire("put_batch", {"jobs": [case.args for case in cases]})
    d = settled(busy())
    before = snapshot(d.engine)
    result = d.engine.handle("put_batch", args, d.now)
    assert isinstance(result, list)
    assert len(result) == len(cases)
    for index, case in enumerate(cases):
        expected = {"code": case.code, "field": f"jobs[{index}].{case.field}"}
        assert item_error(result, index) == expected, case.how
    after = snapshot(d.engine)
    assert after == before, "refused items changed: " + "; ".join(diff(before, after))


@pytest.mark.parametrize("item", [None, 5, "t", ["t"], b"x"], ids=repr)
def test_batch_item_that_is_not_a_map(item: object) -> None:
    args = over_the_wire("put_batch", {"jobs": [item, {"tube": "t"}]})
    result = settled(busy()).engine.handle("put_batch", args, NOW)
    assert item_error(result, 0) == {"code": "BAD_FORMAT", "field": "jobs[0]"}
    assert item_error(result, 1) == {}


# -- cancel (a session op, wire.md §5.3) ----------------------------------------------------


def cancel_answer(fields: Mapping[str, object]) -> dict[str, Any]:
    message = {"id": 1, "op": "cancel", **fields}
    decoded = codec.decode(codec.encode(message))
    assert same(decoded, message)

    async def run() -> dict[str, Any]:
        async with memory_server() as server:
            client = await server.client()
            await client.stream.send(decoded)
            answer = await client.answer(1)
            await client.aclose()
            return answer

    return trio.run(run)


@settings(max_examples=15, deadline=None)
@given(target=st.integers(1, UINT32_MAX))
def test_cancel_valid(target: int) -> None:
    assert cancel_answer({"target": target}) == {"id": 1, "result": {"outcome": "unknown"}}


@settings(max_examples=15, deadline=None)
@given(
    fields=st.one_of(
        st.just({}),
        st.sampled_from([None, "7", 7.5, True, False, b"\x07", [7], math.nan]).map(
            lambda target: {"target": target}
        ),
    )
)
def test_cancel_invalid(fields: dict[str, object]) -> None:
    answer = cancel_answer(fields)
    assert (answer.get("error"), answer.get("field")) == ("BAD_FORMAT", "target")


# -- defects found by these tests, fixed: kept as regression tests ----------------------------

HUGE_DURATIONS = [
    ("put", {"tube": "t"}, "delay", 1e25),
    ("put", {"tube": "t"}, "ttr", 1e300),
    ("put_parent", {"tube": "t"}, "timeout", 1e30),
    ("reserve", {"tubes": ["t"]}, "timeout", -1e25),
    ("release", {"job_id": "A" * 22}, "delay", 1e100),
    ("pause", {"tube": "t"}, "duration", 1e25),
]


@pytest.mark.parametrize(("op", "base", "field", "value"), HUGE_DURATIONS, ids=str)
def test_huge_durations_are_bad_format(
    op: str, base: dict[str, object], field: str, value: float
) -> None:
    """Decimal.quantize in the 28-digit context fails; over the wire the connection drops."""
    d = settled(busy())
    error = rejected(d, op, over_the_wire(op, {**base, field: value}))
    assert (error.code, error.field) == ("BAD_FORMAT", field)


def test_huge_duration_in_a_batch_item() -> None:
    args = over_the_wire("put_batch", {"jobs": [{"tube": "t", "delay": 1e30}]})
    result = settled(busy()).engine.handle("put_batch", args, NOW)
    assert item_error(result, 0) == {"code": "BAD_FORMAT", "field": "jobs[0].delay"}


def test_cancel_unknown_field_is_named() -> None:
    answer = cancel_answer({"target": 1, "extra": 1})
    assert (answer.get("error"), answer.get("field")) == ("BAD_FORMAT", "extra")


@pytest.mark.parametrize("target", [-1, UINT32_MAX + 1, INT_MAX], ids=repr)
def test_cancel_target_outside_u32_is_bad_format(target: int) -> None:
    answer = cancel_answer({"target": target})
    assert (answer.get("error"), answer.get("field")) == ("BAD_FORMAT", "target")
