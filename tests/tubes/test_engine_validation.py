"""Engine validation (§1, §4.1, §5.1, §13): every error code on bad input, with its field.

Rules: every rejection runs against a busy engine (jobs in every state, a waiter, a key,
tube settings) through `Driver.fails`, which asserts the code, the `field` path and that a
full snapshot of the engine is unchanged (§13.1: only the ops and errors counters move).
Accepted edge values are shown accepted next to the rejected ones.
"""

from __future__ import annotations

import math

import pytest

from tests.helpers.engines import OTHER_LEASE, Driver

JOB = "A" * 22


def busy() -> Driver:
    """An engine with something in every structure a rejected request could disturb."""
    d = Driver()
    d.put("t", priority=3)
    d.put("t", delay=50)
    reserved = d.put("r")
    buried = d.put("b")
    d.reserve_one("r", owner="o")
    lease = d.reserve_one("b")["lease"]
    d("bury", job_id=buried, lease=lease)
    d.parent("p", limit=2)
    d.put("fq-f", shard_key="A", idempotency_key="key")
    d("pause", tube="paused", duration=100)
    d("throttle", tube="t", tps=0.5)
    d("set_shard_limit", tube="fq-f", limit=1)
    d.wait("w", timeout=100)
    assert reserved
    return d


# -- tube names (§4.1) ----------------------------------------------------------------------------

BAD_NAMES: list[object] = [
    "",
    "-x",
    "a" * 201,
    "/",
    "a/b",
    ".",
    "..",
    "...",
    "a b",
    "tab\t",
    "new\n",
    "é",
    "a%2F",
    "a,b",
    5,
    None,
    b"bytes",
    ["t"],
]
GOOD_NAMES = ["a" * 200, ".a", "a-", "x:@$!#=+_.", "A1", "..a", "-"[1:] + "z"]

TUBE_OPS: list[tuple[str, dict[str, object]]] = [
    ("put", {}),
    ("put_parent", {}),
    ("kick", {}),
    ("peek_ready", {}),
    ("peek_delayed", {}),
    ("peek_buried", {}),
    ("stats_tube", {}),
    ("pause", {}),
    ("unpause", {}),
    ("throttle", {"tps": 1}),
    ("drain", {}),
    ("undrain", {}),
    ("set_shard_limit", {"limit": 1}),
    ("clear", {}),
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
@pytest.mark.parametrize(("op", "extra"), TUBE_OPS, ids=[op for op, _ in TUBE_OPS])
def test_bad_tube_name_on_every_operation(op: str, extra: dict[str, object], name: object) -> None:
    d = busy()
    d.fails("BAD_TUBE", op, field="tube", tube=name, **extra)


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_tube_name_in_reserve_and_batch(name: object) -> None:
    d = busy()
    d.fails("BAD_TUBE", "reserve", field="tubes[2]", tubes=["t", "r", name])
    result = d("put_batch", jobs=[{"tube": "t"}, {"tube": name}])
    assert result[1]["error"]["code"] == "BAD_TUBE"
    assert result[1]["error"]["field"] == "jobs[1].tube"


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_tube_names(name: str) -> None:
    d = Driver()
    d.put(name)
    assert d.tube(name)["ready"] == 1


# -- integers ------------------------------------------------------------------------------------

NOT_INTEGERS: list[object] = [True, False, 5.5, math.nan, math.inf, -math.inf, "5", None, [5]]


@pytest.mark.parametrize("value", NOT_INTEGERS, ids=repr)
@pytest.mark.parametrize(
    ("op", "field", "base"),
    [
        ("put", "priority", {"tube": "t"}),
        ("put", "expired_limit", {"tube": "t"}),
        ("put", "max_releases", {"tube": "t"}),
        ("put_parent", "limit", {"tube": "t"}),
        ("reserve", "count", {"tubes": ["t"]}),
        ("kick", "bound", {"tube": "t"}),
        ("set_shard_limit", "limit", {"tube": "fq-f"}),
        ("list_tubes", "limit", {}),
        ("release", "priority", {"job_id": JOB}),
        ("bury", "priority", {"job_id": JOB}),
    ],
)
def test_integer_fields_reject_non_integers(
    op: str, field: str, base: dict[str, object], value: object
) -> None:
    d = busy()
    d.fails("BAD_FORMAT", op, field=field, **base, **{field: value})


@pytest.mark.parametrize(
    ("op", "field", "base", "low", "high"),
    [
        ("put", "priority", {"tube": "t"}, 0, 4_294_967_295),
        ("put", "expired_limit", {"tube": "t"}, 1, 1_000_000),
        ("put", "max_releases", {"tube": "t"}, 0, 2_000_000),
        ("put_parent", "limit", {"tube": "t"}, 1, 1_000_000),
        ("reserve", "count", {"tubes": ["many"]}, 1, 1000),
        ("kick", "bound", {"tube": "t"}, 1, 1_000_000),
        ("set_shard_limit", "limit", {"tube": "fq-f"}, 0, 1_000_000),
        ("list_tubes", "limit", {}, 1, 10_000),
    ],
)
def test_integer_ranges(op: str, field: str, base: dict[str, object], low: int, high: int) -> None:
    d = busy()
    d("put_batch", jobs=[{"tube": "many"}] * 1000)
    d.fails("BAD_FORMAT", op, field=field, **base, **{field: low - 1})
    d.fails("BAD_FORMAT", op, field=field, **base, **{field: high + 1})
    d(op, **base, **{field: low})
    d(op, **base, **{field: float(high)})


# -- durations -----------------------------------------------------------------------------------

NOT_DURATIONS: list[object] = [True, math.nan, math.inf, -math.inf, "1", None, -1, -0.001]


@pytest.mark.parametrize("value", NOT_DURATIONS, ids=repr)
@pytest.mark.parametrize(
    ("op", "field", "base"),
    [
        ("put", "delay", {"tube": "t"}),
        ("put", "ttr", {"tube": "t"}),
        ("put_parent", "timeout", {"tube": "t"}),
        ("reserve", "timeout", {"tubes": ["t"]}),
        ("pause", "duration", {"tube": "new"}),
        ("release", "delay", {"job_id": JOB}),
    ],
)
def test_duration_fields_reject_bad_values(
    op: str, field: str, base: dict[str, object], value: object
) -> None:
    d = busy()
    d.fails("BAD_FORMAT", op, field=field, **base, **{field: value})


def test_duration_ranges_after_rounding() -> None:
    d = busy()
    d.fails("BAD_FORMAT", "put", field="ttr", tube="t", ttr=0)
    d.fails("BAD_FORMAT", "put", field="ttr", tube="t", ttr=0.9994)
    assert d.job(d.put("new", ttr=0.9995))["ttr"] == 1
    d.fails("BAD_FORMAT", "put", field="delay", tube="t", delay=4_294_967_296)
    d.put("t", delay=4_294_967_295)
    d.fails("BAD_FORMAT", "reserve", field="timeout", tubes=["t"], timeout=300.001)
    d.fails("BAD_FORMAT", "put_parent", field="timeout", tube="t", timeout=0.4)
    d.fails("BAD_FORMAT", "pause", field="duration", tube="t", duration=4_294_967_296)


# -- run_at --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, True, "1", None], ids=repr)
def test_run_at_rejects(value: object) -> None:
    d = busy()
    d.fails("BAD_FORMAT", "put", field="run_at", tube="t", run_at=value)


def test_run_at_range_and_exclusive_with_delay() -> None:
    d = busy()
    d.fails("BAD_FORMAT", "put", field="run_at", tube="t", run_at=d.now + 4_294_967_296)
    d.put("t", run_at=d.now + 4_294_967_295)
    d.put("t", run_at=0)
    d.fails("BAD_FORMAT", "put", field="run_at", tube="t", run_at=d.now + 5, delay=1)
    d.fails("BAD_FORMAT", "put", field="run_at", tube="t", run_at=d.now + 5, delay=0)


# -- booleans and enums ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None], ids=repr)
@pytest.mark.parametrize("field", ["run_on_timeout", "noop"])
def test_booleans_are_true_or_false_only(field: str, value: object) -> None:
    d = busy()
    d.fails("BAD_FORMAT", "put_parent", field=field, tube="t", **{field: value})


@pytest.mark.parametrize("value", ["fail", "BURY", "", None, 1], ids=repr)
def test_on_child_failure(value: object) -> None:
    d = busy()
    d.fails("BAD_FORMAT", "put_parent", field="on_child_failure", tube="t", on_child_failure=value)


# -- strings: ids, leases, keys, owner ----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "short",
        "A" * 21,
        "A" * 23,
        "A" * 21 + "+",
        "A" * 21 + "=",
        ",",
        "s1," + "A" * 21,
        ",".join(["s1", "s1", JOB]),
        "bad id," + JOB,
        5,
        None,
        b"A" * 22,
    ],
    ids=repr,
)
@pytest.mark.parametrize(
    "op",
    [
        "done",
        "delete",
        "touch",
        "release",
        "bury",
        "kick_job",
        "set_children_started",
        "peek",
        "stats_job",
        "unreserve",
    ],
)
def test_bad_job_id(op: str, value: object) -> None:
    d = busy()
    args: dict[str, object] = {"job_id": value}
    if op == "unreserve":
        args["lease"] = OTHER_LEASE
    d.fails("BAD_FORMAT", op, field="job_id", **args)


@pytest.mark.parametrize("value", ["short", "A" * 21 + "/", 5, "s1;" + JOB, None], ids=repr)
def test_bad_parent_id(value: object) -> None:
    d = busy()
    d.fails("BAD_FORMAT", "put", field="parent_id", tube="t", parent_id=value)
    d.fails("BAD_FORMAT", "put_parent", field="parent_id", tube="t", parent_id=value)


def test_full_form_parent_id_is_accepted() -> None:
    d = busy()
    parent = d.parent("p2")
    d.put("t", parent_id=f"s1,{parent}")
    d.fails("NOT_FOUND", "put", field="parent_id", tube="t", parent_id=f"other,{parent}")


@pytest.mark.parametrize("value", ["short", "A" * 23, "A" * 21 + "+", 5], ids=repr)
@pytest.mark.parametrize("op", ["done", "delete", "touch", "release", "bury", "unreserve"])
def test_bad_lease(op: str, value: object) -> None:
    d = busy()
    d.fails("BAD_FORMAT", op, field="lease", job_id=JOB, lease=value)


@pytest.mark.parametrize("value", ["", "a b", "x" * 201, "é", "\x7f", 5, None], ids=repr)
def test_bad_idempotency_key(value: object) -> None:
    d = busy()
    d.fails("BAD_FORMAT", "put", field="idempotency_key", tube="t", idempotency_key=value)


def test_idempotency_key_charset_edges() -> None:
    d = busy()
    d.put("t", idempotency_key="!" + "~" * 199)


@pytest.mark.parametrize("value", ["", "a/b", "x" * 201, "-a", 5, None], ids=repr)
def test_bad_shard_key_on_any_tube(value: object) -> None:
    d = busy()
    d.fails("BAD_FORMAT", "put", field="shard_key", tube="t", shard_key=value)
    d.fails("BAD_FORMAT", "put", field="shard_key", tube="fq-f", shard_key=value)


@pytest.mark.parametrize("value", ["", "x" * 129, "é" * 65, 5, None], ids=repr)
def test_bad_owner(value: object) -> None:
    d = busy()
    d.fails("BAD_FORMAT", "reserve", field="owner", tubes=["t"], owner=value)


def test_owner_of_128_bytes() -> None:
    d = busy()
    d.fails("TIMED_OUT", "reserve", tubes=["empty"], owner="x" * 128)


# -- reserve tubes --------------------------------------------------------------------------------


def test_reserve_tubes_list_rules() -> None:
    d = busy()
    d.fails("BAD_FORMAT", "reserve", field="tubes", tubes=[])
    d.fails("BAD_FORMAT", "reserve", field="tubes", tubes="t")
    d.fails("BAD_FORMAT", "reserve", field="tubes", tubes=[f"t{i}" for i in range(101)])
    many = [f"t{i}" for i in range(100)] * 3
    d.fails("TIMED_OUT", "reserve", tubes=many)
    d.fails("BAD_FORMAT", "reserve", field="tubes", tubes=None)


# -- tps, body, unknown and missing fields --------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1_000_000.5, True, "1", None])
def test_bad_tps(value: object) -> None:
    d = busy()
    d.fails("BAD_FORMAT", "throttle", field="tps", tube="new", tps=value)


def test_tps_edges() -> None:
    d = busy()
    assert d("throttle", tube="x", tps=1_000_000) == {"throttle_tps": 1_000_000}
    assert d("throttle", tube="x", tps=-5) == {"throttle_tps": None}


@pytest.mark.parametrize("body", ["text", 5, None, bytearray(b"x"), [1]], ids=repr)
def test_body_must_be_bytes(body: object) -> None:
    d = busy()
    d.fails("BAD_FORMAT", "put", field="body", tube="t", body=body)


@pytest.mark.parametrize(
    ("op", "args", "field"),
    [
        ("put", {"tube": "t", "ttl": 5}, "ttl"),
        ("put", {"tube": "t", "timeout": 5}, "timeout"),
        ("put_parent", {"tube": "t", "delay": 1}, "delay"),
        ("put_parent", {"tube": "t", "run_at": 1}, "run_at"),
        ("reserve", {"tubes": ["t"], "tube": "t"}, "tube"),
        ("done", {"job_id": JOB, "priority": 1}, "priority"),
        ("touch", {"job_id": JOB, "delay": 1}, "delay"),
        ("kick_job", {"job_id": JOB, "lease": OTHER_LEASE}, "lease"),
        ("stats", {"x": 1}, "x"),
        ("ping", {"x": 1}, "x"),
        ("clear", {"tube": "t", "bound": 1}, "bound"),
    ],
)
def test_unknown_fields(op: str, args: dict[str, object], field: str) -> None:
    d = busy()
    d.fails("BAD_FORMAT", op, field=field, **args)


@pytest.mark.parametrize(
    ("op", "args", "field"),
    [
        ("put", {"priority": 1}, "tube"),
        ("put_parent", {}, "tube"),
        ("reserve", {"count": 1}, "tubes"),
        ("done", {}, "job_id"),
        ("delete", {"lease": OTHER_LEASE}, "job_id"),
        ("kick", {}, "tube"),
        ("kick_job", {}, "job_id"),
        ("throttle", {"tube": "t"}, "tps"),
        ("set_shard_limit", {"tube": "fq-f"}, "limit"),
        ("unreserve", {"job_id": JOB}, "lease"),
        ("stats_tube", {}, "tube"),
    ],
)
def test_missing_fields(op: str, args: dict[str, object], field: str) -> None:
    d = busy()
    d.fails("BAD_FORMAT", op, field=field, **args)


def test_unknown_operation() -> None:
    d = busy()
    d.fails("BAD_FORMAT", "frobnicate", tube="t")


def test_batch_item_errors_carry_paths() -> None:
    d = busy()
    results = d(
        "put_batch",
        jobs=[
            {"tube": "t", "priority": True},
            {"tube": "t", "delay": math.nan},
            {"tube": "t", "parent_id": "bad"},
            {"tube": "t", "idempotency_key": ""},
            {"priority": 1},
            {"tube": "t", "ttl": 1},
            {"tube": "fq-f"},
            {"tube": "t", "run_at": 1, "delay": 1},
            {"tube": "t", "parent_id": JOB},
        ],
    )
    assert [(r["error"]["code"], r["error"].get("field")) for r in results] == [
        ("BAD_FORMAT", "jobs[0].priority"),
        ("BAD_FORMAT", "jobs[1].delay"),
        ("BAD_FORMAT", "jobs[2].parent_id"),
        ("BAD_FORMAT", "jobs[3].idempotency_key"),
        ("BAD_FORMAT", "jobs[4].tube"),
        ("BAD_FORMAT", "jobs[5].ttl"),
        ("BAD_FORMAT", "jobs[6].shard_key"),
        ("BAD_FORMAT", "jobs[7].run_at"),
        ("NOT_FOUND", "jobs[8].parent_id"),
    ]
