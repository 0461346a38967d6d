"""Format 2's columnar `puts` change keeps every guarantee the `put` maps of format 1 gave.

* `fold_puts` / `unfold_puts` are inverse: only runs of at least `PUTS_MIN` plain ready
  puts are folded, every other change keeps its place, a folded list validates and replays
  to the same engine as the maps it came from;
* a `puts` change is validated as strictly as the maps: the fast column checks
  (`puts_valid`, `fast_valid`) never accept what `validate_change` refuses, and
  `validate_change` names the field and the index (or the structural fault);
* format 1 files still recover (alone, or followed by format 2 files after an upgrade) to
  the same state; a `puts` change in a format 1 file and an unknown version are refused;
* a duplicate put inside or against a `puts` change is corruption with nothing of its
  record applied (either sink, `--repair` drops and quarantines it whole); the collecting
  sink knows the jobs a `puts` change put (no false orphans, `clear` removes them);
* the log writer and compaction write `puts` changes that recover to the same state.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allq.store.compaction import compact
from allq.store.fastcheck import puts_valid, tube_name_ok
from allq.store.format import (
    HEADER_SIZE,
    KIND_LOG,
    KIND_SNAPSHOT,
    _Reader,
    decode_header,
    decode_payload,
    encode_header,
    encode_record,
    log_name,
    snap_name,
)
from allq.store.recovery import QUARANTINE, Recovered, RecoveryError, recover
from allq.store.scanning import scan
from allq.store.storage import MemoryStorage
from allq.store.validation import (
    FormatError,
    validate_change,
)
from allq.tubes.changes import (
    PLAIN_READY_FIELDS,
    PUTS_MIN,
    Change,
    dump,
    fold_puts,
    is_plain_ready,
    unfold_puts,
)
from allq.tubes.config import EngineConfig
from allq.tubes.engine import Engine
from allq.tubes.replay import (
    DuplicatePut,
    Replayer,
    restore,
)
from tests.helpers.engines import diff, make_engine, snapshot
from tests.store.builders import (
    bury,
    chain,
    delete,
    jid,
    log_bytes,
    meta,
    parent,
    put,
    storage_with,
)
from tests.store.test_log import writer

L1, L2 = log_name(1), log_name(2)
NOW = 3000.0  # after every created_at and buried_at, before every timeout_at and due_at
CLEAR_U: Change = {"t": "clear", "tube": "u"}
TUBE_T: Change = {
    "t": "tube", "tube": "t", "paused": True, "pause_until": None, "throttle_tps": 2.5,
    "draining": False, "shard_reservation_limit": None,
}  # fmt: skip


# --- builders ----------------------------------------------------------------------------------


def delayed(n: int) -> Change:
    change = {**put(n), "state": "delayed", "due_at": 9000.0 + n}
    del change["ready_since"]
    return change


def buried(n: int) -> Change:
    change = {**put(n), "state": "buried", "buried_at": 2000.0 + n}
    del change["ready_since"]
    return change


def keyed(n: int) -> Change:
    """A ready put with both optional fields: not plain, so never folded."""
    return {**put(n), "shard_key": "s.1", "idempotency_key": f"key-{n}"}


def child(n: int, of: int) -> Change:
    return {**put(n), "parent_id": jid(of)}


def counted(n: int, tube: str = "u") -> Change:
    """A plain ready put with non-zero counters (a released, kicked job)."""
    return {**put(n, tube=tube, priority=n % 7), "releases": 2, "kicks": 1, "buries": 1}


def columns(puts: list[Change]) -> Change:
    """The `puts` change of `puts`, built field by field here (not by `fold_puts`)."""
    assert all(is_plain_ready(change) for change in puts)
    return {"t": "puts", **{name: [change[name] for change in puts] for name in PLAIN_READY_FIELDS}}


def puts_of(*numbers: int, tube: str = "t") -> Change:
    return columns([put(n, tube=tube) for n in numbers])


def folded(changes: list[Change]) -> list[Change]:
    return [dict(change) for change in fold_puts(changes)]


def good_puts() -> Change:
    """Five valid rows: two tubes, int and float numbers, a counter, an empty body."""
    rows = [put(1), put(2, tube="u", body=b""), counted(3), put(4, priority=0), put(5)]
    rows[3]["ttr"] = 0.25
    rows[4]["created_at"] = 7
    return columns(rows)


# --- 1. fold_puts / unfold_puts --------------------------------------------------------------


def test_fold_puts_folds_each_run_and_keeps_everything_else_in_place() -> None:
    changes = [
        TUBE_T,
        put(1), put(2, tube="u"), counted(3),  # a run of three, across tubes
        delayed(4),
        put(5),  # a run of one: stays a map
        keyed(6),
        put(7), put(8),  # a run of two (PUTS_MIN)
        bury(1), delete(2), CLEAR_U, parent(9), child(10, 9), buried(11),
        put(12), put(13), put(14),  # a run at the very end
    ]  # fmt: skip
    expected = [
        TUBE_T,
        columns([put(1), put(2, tube="u"), counted(3)]),
        delayed(4),
        put(5),
        keyed(6),
        columns([put(7), put(8)]),
        bury(1), delete(2), CLEAR_U, parent(9), child(10, 9), buried(11),
        columns([put(12), put(13), put(14)]),
    ]  # fmt: skip
    result = fold_puts(changes)
    assert result == expected
    assert unfold_puts(folded(changes)) == changes
    for change in result:
        validate_change(change)
    assert decode_payload(encode_record(result)[8:]) == expected


@pytest.mark.parametrize("size", range(PUTS_MIN + 3))
def test_only_runs_of_at_least_puts_min_are_folded(size: int) -> None:
    run = [put(n, tube=f"t{n % 2}") for n in range(1, size + 1)]
    for changes in (run, [bury(99), *run, delete(98)]):
        result = folded(changes)
        kinds = [change["t"] for change in result]
        if size >= PUTS_MIN:
            assert kinds.count("puts") == 1
            assert kinds.count("put") == 0
            (puts,) = (change for change in result if change["t"] == "puts")
            assert puts["id"] == [jid(n) for n in range(1, size + 1)]
        else:
            assert result == changes
        assert unfold_puts(result) == changes


@pytest.mark.parametrize(
    "change",
    [
        delayed(1),
        buried(1),
        keyed(1),
        {**put(1), "shard_key": "s"},
        {**put(1), "idempotency_key": "k"},
        child(1, 9),
        parent(1),
        bury(1),
        # as many keys as a plain ready put, but not its keys
        {**{k: v for k, v in put(1).items() if k != "kicks"}, "shard_key": "s"},
    ],
    ids=["delayed", "buried", "keyed", "shard", "idem", "child", "parent", "state", "swapped"],
)
def test_a_change_that_is_not_a_plain_ready_put_is_never_folded(change: Change) -> None:
    assert not is_plain_ready(change)
    changes = [put(1), change, put(2), change, put(3), put(4)]
    changes[3] = {**change, "id": jid(20)}
    result = folded(changes)
    assert result == [put(1), change, put(2), changes[3], columns([put(3), put(4)])]
    assert unfold_puts(result) == changes


# Hypothesis: random mixes of every kind of change, ids unique per position.
KINDS = [
    "plain", "plain", "plain", "counted", "delayed", "buried", "keyed", "parent", "child",
    "state", "delete", "clear", "tube", "idem",
]  # fmt: skip


def make_change(kind: str, n: int) -> Change:
    if kind == "plain":
        return put(n, tube=("t", "u", "v")[n % 3], priority=n % 4)
    if kind == "counted":
        return counted(n)
    if kind == "delayed":
        return delayed(n)
    if kind == "buried":
        return buried(n)
    if kind == "keyed":
        return keyed(n)
    if kind == "parent":
        return parent(n)
    if kind == "child":
        return child(n, max(n - 1, 1))
    if kind == "state":
        return bury(max(n - 2, 1))
    if kind == "delete":
        return delete(max(n - 3, 1))
    if kind == "clear":
        return CLEAR_U
    if kind == "tube":
        return TUBE_T
    return {"t": "idem", "key": f"idem-{n}", "id": jid(n), "first_seen": 4990.0}


def restored_snapshot(changes: list[Change]) -> dict[str, object]:
    engine = make_engine(now=NOW, dedup_window=60)
    restore(engine, changes)
    return snapshot(engine)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(KINDS), max_size=40))
def test_fold_then_unfold_is_the_identity_and_replays_the_same(kinds: list[str]) -> None:
    changes = [make_change(kind, n) for n, kind in enumerate(kinds, start=1)]
    result = folded(changes)
    assert unfold_puts(result) == changes
    assert folded(result) == result  # a `puts` change is never folded again
    rows = 0
    for index, change in enumerate(result):
        validate_change(change)
        if change["t"] == "puts":
            assert len(change["id"]) >= PUTS_MIN
            rows += len(change["id"])
        # folding is maximal: no two plain ready puts remain side by side
        if index and is_plain_ready(change):
            assert not is_plain_ready(result[index - 1])
    assert rows + sum(change["t"] != "puts" for change in result) == len(changes)
    if changes:
        assert decode_payload(encode_record(result)[8:]) == result
    assert restored_snapshot(result) == restored_snapshot(changes)


# --- 2. validation of a `puts` change -----------------------------------------------------------

BAD_VALUES: list[Any] = [
    None, True, False, -1, 0, 2**32, 2**64, -(2**64), 0.5, 0.0, -0.0, -0.5, float("nan"),
    float("inf"), float("-inf"), "", "x", "ready", "-bad", "A" * 22, "A" * 23, b"", b"x",
    [], {}, [1], {"a": 1},
]  # fmt: skip
#: Values of the table each field must refuse (so the table is known to reach each check).
MUST_REFUSE: dict[str, list[Any]] = {
    "id": [None, "", "A" * 23, "-bad!" * 5, b"x", 1],
    "tube": [None, "", "-bad", 1, b"t"],
    "body": [None, "", "x", 1, []],
    "priority": [-1, 2**32, True, 0.5, None],
    "ttr": [0, 0.0, -0.0, -0.5, -1, float("nan"), float("inf"), True, "1", None],
    "created_at": [float("nan"), float("inf"), float("-inf"), True, None, "1"],
    "ready_since": [float("nan"), float("-inf"), False, None, b""],
    **{
        name: [-1, 2**64, 0.0, 0.5, True, None, "0"]
        for name in ("expired_limit", "max_releases", "seq", "reserves", "timeouts", "releases",
                     "buries", "kicks", "timeouts_since_kick", "releases_since_kick")
    },
}  # fmt: skip


def refusal(change: dict[str, Any]) -> str | None:
    try:
        validate_change(change)
    except FormatError as exc:
        return str(exc)
    return None


def fast(change: dict[str, Any]) -> bool:
    """Whether a format 2 reader's fast path takes `change`; for a `puts` change,
    `fast_valid` and `puts_valid` must agree."""
    accepted = _Reader(b"").fast_valid(change)
    if change.get("t") == "puts":
        assert puts_valid(change, tube_name_ok) is accepted
    return accepted


def with_value(change: Change, name: str, index: int, value: object) -> Change:
    column = list(change[name])
    column[index] = value
    return {**change, name: column}


def test_a_good_puts_change_is_accepted_by_every_check_of_format_2_only() -> None:
    change = good_puts()
    validate_change(change)
    assert fast(change)
    assert _Reader(b"").fast_valid(puts_of(1, 2))
    # a format 1 reader never takes a `puts` change on the fast path
    assert not _Reader(b"", 1).fast_valid(change)


def test_must_refuse_covers_every_field() -> None:
    assert sorted(MUST_REFUSE) == sorted(PLAIN_READY_FIELDS)


@pytest.mark.parametrize("name", PLAIN_READY_FIELDS)
@pytest.mark.parametrize("index", [0, 2, 4])
def test_a_bad_value_in_any_column_at_any_index_is_refused_by_both(name: str, index: int) -> None:
    for bad in MUST_REFUSE[name]:
        mutated = with_value(good_puts(), name, index, bad)
        assert refusal(mutated) is not None, (name, bad)
    for bad in [*BAD_VALUES, *MUST_REFUSE[name]]:
        mutated = with_value(good_puts(), name, index, bad)
        reason = refusal(mutated)
        if reason is not None:
            assert not fast(mutated), (name, index, bad)
            assert reason.startswith(f"puts: invalid {name}[{index}] "), reason
        else:  # what validation accepts is valid: the fast path may take it or not
            fast(mutated)


def short(change: Change, name: str) -> Change:
    return {**change, name: change[name][:-1]}


def longer(change: Change, name: str) -> Change:
    return {**change, name: [*change[name], change[name][0]]}


def without(change: Change, name: str) -> Change:
    return {key: value for key, value in change.items() if key != name}


def with_int_key(change: Change) -> Change:
    """`change` with one more column under the key 1 (CBOR allows any key type)."""
    odd: dict[Any, Any] = dict(change)
    odd[1] = [0] * 5
    return odd


STRUCTURAL: list[tuple[str, Change, str]] = [
    ("missing body", without(good_puts(), "body"), "puts: missing field 'body'"),
    ("missing last", without(good_puts(), "releases_since_kick"),
     "puts: missing field 'releases_since_kick'"),
    ("only t", {"t": "puts"}, "puts: missing field 'id'"),
    ("extra x", {**good_puts(), "x": [1] * 5}, "puts: unexpected field 'x'"),
    ("extra state", {**good_puts(), "state": ["ready"] * 5}, "puts: unexpected field 'state'"),
    ("extra shard_key", {**good_puts(), "shard_key": ["s"] * 5},
     "puts: unexpected field 'shard_key'"),
    ("extra due_at", {**good_puts(), "due_at": [1.0] * 5}, "puts: unexpected field 'due_at'"),
    ("a key swapped", {**without(good_puts(), "kicks"), "x": [0] * 5},
     "puts: unexpected field 'x'"),
    ("not a text key", with_int_key(good_puts()), "puts: map keys must be text strings"),
    ("short tube", short(good_puts(), "tube"), "puts: tube has 4 values, other fields 5"),
    ("long last", longer(good_puts(), "releases_since_kick"),
     "puts: releases_since_kick has 6 values, other fields 5"),
    ("short id", short(good_puts(), "id"), "puts: tube has 5 values, other fields 4"),
    ("empty", {"t": "puts", **{name: [] for name in PLAIN_READY_FIELDS}},
     "puts: id is not a non-empty array"),
    ("empty body", {**good_puts(), "body": []}, "puts: body is not a non-empty array"),
    ("text column", {**good_puts(), "tube": "t"}, "puts: tube is not a non-empty array"),
    ("bytes column", {**good_puts(), "body": b"xxxxx"}, "puts: body is not a non-empty array"),
    ("tuple column", {**good_puts(), "seq": (1, 2, 3, 4, 5)}, "puts: seq is not a non-empty"),
    ("map column", {**good_puts(), "ttr": {"a": 1}}, "puts: ttr is not a non-empty array"),
    ("none column", {**good_puts(), "priority": None}, "puts: priority is not a non-empty"),
    ("scalar column", {**good_puts(), "ready_since": 1.0}, "puts: ready_since is not a non-empty"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"), [c[1:] for c in STRUCTURAL], ids=[c[0] for c in STRUCTURAL]
)
def test_a_structural_fault_is_refused_by_both_with_a_clear_message(
    change: Change, message: str
) -> None:
    assert not fast(change)
    with pytest.raises(FormatError) as caught:
        validate_change(change)
    assert str(caught.value).startswith(message)


MUTATION_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=24),
    st.sampled_from([jid(7), "t", "fq-a", "A" * 22, b"", b"x"]),
    st.binary(max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 4),
    st.sampled_from([*PLAIN_READY_FIELDS, "t", "x", "state", "shard_key"]),
    MUTATION_VALUES | st.lists(MUTATION_VALUES, max_size=6),
    st.booleans(),
)
def test_the_fast_check_is_never_laxer_than_validation(
    index: int, name: str, value: object, whole: bool
) -> None:
    change = good_puts()
    if whole or name not in PLAIN_READY_FIELDS:
        change[name] = value  # a whole column (or field) replaced
    else:
        change = with_value(change, name, index, value)
    if fast(change):
        validate_change(change)


ROWS = st.builds(
    lambda n, tube, body, priority, ttr, numbers, ints: {
        **put(n, tube=tube, body=body, priority=priority), "ttr": ttr,
        "created_at": numbers[0], "ready_since": numbers[1], "seq": ints[0], "kicks": ints[1],
        "max_releases": ints[2],
    },
    st.integers(0, 10**6),
    st.sampled_from(["t", "u", "fq-a", "A.b:c@d$e!f#g=h+i-j", "x" * 200]),
    st.binary(max_size=8),
    st.integers(0, 2**32 - 1),
    st.floats(min_value=1e-300, allow_infinity=False) | st.integers(1, 2**64),
    st.tuples(*[
        st.floats(allow_infinity=False, allow_nan=False) | st.integers(-(2**64), 2**64)
    ] * 2),
    st.tuples(*[st.integers(0, 2**64 - 1)] * 3),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.lists(ROWS, min_size=1, max_size=8))
def test_the_fast_check_accepts_every_valid_puts_change(rows: list[Change]) -> None:
    change = columns(rows)
    validate_change(change)
    assert fast(change)


def test_a_record_with_a_bad_puts_change_is_refused_naming_the_change() -> None:
    good = [delete(9), good_puts(), bury(2)]
    payload = cbor2.dumps(good)
    assert _Reader(payload).decode(0, len(payload)) == good
    for bad, message in [
        (with_value(good_puts(), "priority", 3, 2**32), "change 1: puts: invalid priority[3] "),
        (with_value(good_puts(), "ttr", 0, 0), "change 1: puts: invalid ttr[0] 0"),
        (short(good_puts(), "body"), "change 1: puts: body has 4 values, other fields 5"),
        (without(good_puts(), "body"), "change 1: puts: missing field 'body'"),
        ({"t": "puts"}, "change 1: puts: missing field 'id'"),
    ]:
        payload = cbor2.dumps([delete(9), bad, bury(2)])
        with pytest.raises(FormatError, match=re.escape(message)):
            _Reader(payload).decode(0, len(payload))
    # a record of many put maps with one `puts` change: checked change by change, no rows
    many = [*[put(n) for n in range(10, 30)], puts_of(1, 2)]
    payload = cbor2.dumps(many)
    reader = _Reader(payload)
    assert reader.decode(0, len(payload)) == many
    assert reader.rows is None
    many[-1] = with_value(puts_of(1, 2), "seq", 1, -1)
    payload = cbor2.dumps(many)
    with pytest.raises(FormatError, match=re.escape("change 20: puts: invalid seq[1] -1")):
        _Reader(payload).decode(0, len(payload))


def test_a_format_1_reader_refuses_even_a_valid_puts_change() -> None:
    payload = cbor2.dumps([put(1), puts_of(2, 3)])
    assert decode_payload(payload) == [put(1), puts_of(2, 3)]
    with pytest.raises(FormatError, match="change 1: a puts change in a format 1 file"):
        decode_payload(payload, 1)
    with pytest.raises(FormatError, match="change 1: a puts change in a format 1 file"):
        _Reader(payload, 1).decode(0, len(payload))


# --- 3. files: format 1, format 2, both, and neither -------------------------------------------


def engine_recovery(storage: MemoryStorage, **kw: Any) -> tuple[Engine, Recovered]:
    engine = make_engine(now=NOW, dedup_window=60)
    replayer = Replayer(engine)
    recovered = recover(storage, sink=replayer, **kw)
    replayer.finish()
    engine.check_invariants()
    storage.unlock()
    return engine, recovered


def assert_same_engine(one: Engine, other: Engine) -> None:
    first, second = snapshot(one), snapshot(other)
    assert first == second, diff(first, second)


BATCH = [put(n, tube=f"t{n % 3}", priority=n % 4) for n in range(20, 50)]  # the rows path
RECORDS: list[list[Change]] = [
    [put(1), put(2), counted(3)],
    BATCH,
    [put(4), delayed(5), put(6), put(7), keyed(8)],
    [parent(9), child(10, 9), put(11), put(12)],
    [bury(2), delete(21), bury(22), delete(99)],
    [{"t": "clear", "tube": "t1"}, TUBE_T],
    [buried(13), put(14, tube="t1"), put(15, tube="t1")],
]
LATER: list[list[Change]] = [
    [delete(1), bury(3), delete(23)],  # jobs put by format 1 maps
    [put(60), put(61, tube="u"), delete(62)],
    [bury(60), delete(14), put(63), put(64), delayed(65)],
]


def test_format_1_maps_and_format_2_columns_recover_to_the_same_engine() -> None:
    old = {L1: log_bytes(1, 0, RECORDS, version=1)}
    new = {L1: log_bytes(1, 0, [folded(r) for r in RECORDS])}
    assert decode_header(old[L1]).version == 1
    assert decode_header(new[L1]).version == 2
    kinds = [c["t"] for r in scan(L1, new[L1]).records for c in r.changes]
    assert kinds.count("puts") == 5
    assert "puts" not in [c["t"] for r in scan(L1, old[L1]).records for c in r.changes]
    assert scan(L1, old[L1]).records[2].rows is not None  # format 1's batch: the rows path
    old_engine, old_out = engine_recovery(storage_with(old))
    new_engine, new_out = engine_recovery(storage_with(new))
    assert_same_engine(old_engine, new_engine)
    assert len(new_engine.jobs) == 34  # 45 put, delete(21), clear of t1 (10 jobs)
    assert old_out.orphan_changes == new_out.orphan_changes == 1  # delete(99)
    old_collected = recover(storage_with(old)).changes
    new_collected = recover(storage_with(new)).changes
    assert unfold_puts(new_collected) == old_collected
    assert [c for c in old_collected if c["t"] == "puts"] == []


def test_a_format_1_segment_followed_by_format_2_segments_recovers() -> None:
    """After an upgrade: the old server's last segment, then the new server's."""
    mixed = {
        L1: log_bytes(1, 0, RECORDS, version=1),
        L2: log_bytes(2, 1, [folded(r) for r in LATER]),
    }
    maps = chain(RECORDS, LATER)  # the same changes, all as maps
    engine, out = engine_recovery(storage_with(mixed))
    reference, _ = engine_recovery(storage_with(maps))
    assert_same_engine(engine, reference)
    assert out.orphan_changes == 2  # delete(99), delete(62)
    assert jid(1) not in engine.jobs
    assert {jid(60), jid(64)} <= set(engine.jobs)
    collected = recover(storage_with(mixed))
    assert collected.orphan_changes == 2
    assert unfold_puts(collected.changes) == recover(storage_with(maps)).changes
    # and a compaction of both writes one format 2 snapshot of the same state
    storage = storage_with(mixed)
    result = compact(storage, upto=2, config=CONFIG, server_id="s1", version="t", now=NOW)
    assert result is not None
    data = storage.read(snap_name(2))
    assert decode_header(data).version == 2
    assert any(c["t"] == "puts" for r in scan(snap_name(2), data).records for c in r.changes)
    assert live_state(storage) == live_state(storage_with(maps))


def format_1_snapshot(seq: int, changes: list[Change]) -> bytes:
    data = encode_header(KIND_SNAPSHOT, seq, 1_700_000_000_000, 1)
    data += encode_record([meta(0, version=1), *changes])
    return data + encode_record([{"t": "end", "changes": len(changes) + 1}])


def test_a_format_1_snapshot_followed_by_format_2_logs_recovers() -> None:
    snap = [TUBE_T, put(1), put(2), buried(3), put(4), put(5, tube="u")]
    files = {
        snap_name(1): format_1_snapshot(1, snap),
        **chain(*[[folded(r)] for r in LATER], first=2, prev=1),
    }
    reference = chain([snap], *[[r] for r in LATER])
    engine, _ = engine_recovery(storage_with(files))
    expected, _ = engine_recovery(storage_with(reference))
    assert_same_engine(engine, expected)
    assert sorted(engine.jobs) == sorted(jid(n) for n in (2, 3, 4, 5, 60, 61, 63, 64, 65))


@pytest.mark.parametrize("repair", [False, True])
def test_a_puts_change_in_a_format_1_log_is_refused(repair: bool) -> None:
    files = {L1: log_bytes(1, 0, [[put(1)], [bury(1), puts_of(2, 3)], [put(4)]], version=1)}
    offset = HEADER_SIZE + len(encode_record([meta(version=1)])) + len(encode_record([put(1)]))
    assert scan(L1, files[L1]).problem is not None
    storage = storage_with(files)
    if not repair:
        with pytest.raises(RecoveryError) as caught:
            recover(storage)
        assert str(caught.value).startswith(
            f"corruption in {L1} at offset {offset}: invalid record: change 1: "
            "a puts change in a format 1 file; refusing to start"
        )
        return
    out = recover(storage, repair=True)
    assert out.changes == [put(1)]  # the bury before it in the record is dropped too
    assert out.quarantined == [(L1, offset, len(files[L1]) - offset)]
    assert storage.read(f"{QUARANTINE}/{L1}.{offset}") == files[L1][offset:]


def test_a_puts_change_in_a_format_1_snapshot_is_refused() -> None:
    data = format_1_snapshot(3, [put(1), puts_of(2, 3)])
    assert scan(snap_name(3), data).records == []  # its first record holds the puts
    with pytest.raises(RecoveryError) as caught:
        recover(storage_with({snap_name(3): data}))
    assert str(caught.value).startswith(
        f"corruption in {snap_name(3)} at offset {HEADER_SIZE}: invalid record: change 2: "
        "a puts change in a format 1 file"
    )


@pytest.mark.parametrize("version", [3, 0, 256])
def test_a_file_of_an_unknown_version_is_refused_naming_the_version(version: int) -> None:
    newer = encode_header(KIND_LOG, 2, 1_700_000_000_000, version)
    newer += encode_record([meta(1)]) + encode_record([put(2)])
    files = {L1: log_bytes(1, 0, [[put(1)]]), L2: newer}
    with pytest.raises(FormatError, match=f"unsupported format version {version} "):
        decode_header(newer)
    with pytest.raises(RecoveryError) as caught:
        recover(storage_with(files))
    message = str(caught.value)
    assert message.startswith(
        f"corruption in {L2} at offset 0: unsupported format version {version} "
        "(this allq reads versions 1, 2: a newer allq wrote this file?)"
    )


@pytest.mark.parametrize(("header", "said"), [(1, 2), (2, 1)])
def test_a_meta_whose_format_differs_from_the_header_is_refused(header: int, said: int) -> None:
    data = encode_header(KIND_LOG, 1, 1_700_000_000_000, header)
    data += encode_record([meta(0, version=said)]) + encode_record([put(1)])
    with pytest.raises(RecoveryError) as caught:
        recover(storage_with({L1: data}))
    assert str(caught.value).startswith(
        f"corruption in {L1} at offset {HEADER_SIZE}: invalid record: change 0: "
        f"meta says format {said}, the file header {header}"
    )
    agreeing = encode_header(KIND_LOG, 1, 1_700_000_000_000, header)
    agreeing += encode_record([meta(0, version=header)]) + encode_record([put(1)])
    assert recover(storage_with({L1: agreeing})).changes == [put(1)]


# --- 4. replay: duplicate puts in and against `puts` changes ------------------------------------


def replay_state(engine: Engine, replayer: Replayer) -> tuple[object, ...]:
    return (
        sorted(engine.jobs),
        engine.sequences(),
        {name: list(group) for name, group in replayer.pending.items()},
        {job_id: job.state for job_id, job in engine.jobs.items()},
    )


DUPLICATES: list[tuple[str, list[Change], str]] = [
    ("a live job first", [columns([put(1), put(10), put(11)])], jid(1)),
    ("a live job last", [columns([put(10), put(11), put(1)])], jid(1)),
    ("twice in one puts", [columns([put(10), put(11), put(12), put(10)])], jid(10)),
    ("a puts then a put map", [puts_of(10, 11), put(11)], jid(11)),
    ("a puts then a delayed put", [puts_of(10, 11), delayed(10)], jid(10)),
    ("a put map then a puts", [put(12), puts_of(12, 13)], jid(12)),
    ("a parent then a puts", [parent(12), puts_of(11, 12)], jid(12)),
    ("two puts", [puts_of(10, 11), bury(1), puts_of(12, 10)], jid(10)),
    ("a change before a puts", [bury(1), delete(1), puts_of(10, 1)], jid(1)),
]


@pytest.mark.parametrize(
    ("record", "duplicate"), [c[1:] for c in DUPLICATES], ids=[c[0] for c in DUPLICATES]
)
def test_replayer_feed_refuses_a_duplicate_applying_nothing(
    record: list[Change], duplicate: str
) -> None:
    engine = make_engine(now=NOW, dedup_window=60)
    replayer = Replayer(engine)
    replayer.feed([put(1)])
    replayer.feed([puts_of(2, 3)])
    before = replay_state(engine, replayer)
    assert replayer.duplicate_put(record) == duplicate
    with pytest.raises(DuplicatePut, match=f"duplicate put of job {duplicate}"):
        replayer.feed(record)
    assert replay_state(engine, replayer) == before
    replayer.feed([puts_of(20, 21)])
    replayer.finish()
    engine.check_invariants()
    reference = make_engine(now=NOW, dedup_window=60)
    restore(reference, [put(1), puts_of(2, 3), puts_of(20, 21)])
    assert_same_engine(engine, reference)


@pytest.mark.parametrize("sink", ["collect", "engine"])
@pytest.mark.parametrize(
    ("record", "duplicate"), [c[1:] for c in DUPLICATES], ids=[c[0] for c in DUPLICATES]
)
def test_recovery_refuses_a_duplicate_and_repair_drops_its_record_whole(
    record: list[Change], duplicate: str, sink: str
) -> None:
    files = chain([[put(1)], [puts_of(2, 3)], record], [[put(4)], [bury(2)]])
    offset = scan(L1, files[L1]).records[3].offset
    with pytest.raises(RecoveryError) as caught:
        recover(storage_with(files)) if sink == "collect" else engine_recovery(storage_with(files))
    assert str(caught.value).startswith(
        f"corruption in {L1} at offset {offset}: duplicate put of job {duplicate}; "
    )
    storage = storage_with(files)
    good = chain([[put(1)], [puts_of(2, 3)]], [[put(4)], [bury(2)]])
    if sink == "collect":
        out = recover(storage, repair=True)
        assert out.changes == [put(1), puts_of(2, 3), put(4), bury(2)]
    else:
        engine, out = engine_recovery(storage, repair=True)
        expected, _ = engine_recovery(storage_with(good))
        assert_same_engine(engine, expected)
    assert out.repaired
    assert out.quarantined == [(L1, offset, len(files[L1]) - offset)]
    assert storage.read(f"{QUARANTINE}/{L1}.{offset}") == files[L1][offset:]
    assert len(storage.read(L1)) == offset


@pytest.mark.parametrize("sink", ["collect", "engine"])
def test_a_put_of_a_job_a_puts_change_put_earlier_is_a_duplicate(sink: str) -> None:
    for later in ([put(3)], [puts_of(4, 3)], [delayed(3)]):
        files = chain([[puts_of(2, 3)]], [later])
        with pytest.raises(RecoveryError, match=f"{L2} at offset .*duplicate put of job {jid(3)}"):
            recover(storage_with(files)) if sink == "collect" else engine_recovery(
                storage_with(files)
            )


def test_the_collecting_sink_knows_the_jobs_of_puts_changes() -> None:
    """No false orphans: a later `state` or `delete` of a job a `puts` change put is kept;
    `clear` of its tube takes its jobs, after which their changes are orphans."""
    files = chain(
        [[puts_of(1, 2, 3, 4), puts_of(5, 6, tube="u")], [delete(1)], [bury(2)]],
        [[bury(3), delete(3)], [CLEAR_U], [delete(5)], [bury(6)], [delete(99)], [bury(4)]],
    )
    out = recover(storage_with(files))
    assert [c for c in out.changes if c["t"] != "puts"] == [
        delete(1), bury(2), bury(3), delete(3), CLEAR_U, bury(4)
    ]  # fmt: skip
    assert out.orphan_changes == 3  # delete(5), bury(6) after the clear; delete(99)
    engine, streamed = engine_recovery(storage_with(files))
    assert streamed.orphan_changes == 3
    assert sorted(engine.jobs) == [jid(2), jid(4)]
    restored = make_engine(now=NOW, dedup_window=60)
    restore(restored, out.changes)
    assert_same_engine(engine, restored)
    # a job whose tube was cleared may be put again
    files[L2] = log_bytes(2, 1, [[CLEAR_U], [puts_of(5, 6, tube="u")]])
    assert recover(storage_with(files)).orphan_changes == 0


# --- 5. writers: the log writer and compaction -----------------------------------------------


def put_batch_changes(size: int) -> list[Change]:
    """The changes a real `put_batch` of `size` ready jobs logs (one record)."""
    engine = make_engine(now=NOW)
    engine.changelog.enabled = True
    jobs = [{"tube": f"t{n % 3}", "body": b"x" * n, "priority": n} for n in range(size)]
    engine.handle("put_batch", {"jobs": jobs}, NOW)
    engine.take_effects()
    return [dict(change) for change in engine.take_changes()]


async def test_the_log_writer_writes_a_put_batch_as_one_puts_change() -> None:
    batch = put_batch_changes(50)
    assert len(batch) == 50
    assert all(is_plain_ready(change) for change in batch)
    mixed = [parent(1), put(2), put(3), delete(7), put(4)]
    storage = MemoryStorage()
    async with writer(storage, "never") as log:
        await log.commit(log.append(batch))
        log.append(mixed)
        log.append([put(5)])
    records = scan(L1, storage.read(L1)).records
    assert len(records) == 4
    (change,) = records[1].changes
    assert change == columns(batch)
    assert records[1].rows is None
    assert records[2].changes == [parent(1), puts_of(2, 3), delete(7), put(4)]
    assert records[3].changes == [put(5)]
    as_maps = len(encode_record(batch))
    written = records[1].end - records[1].offset
    assert written < as_maps * 0.75, (written, as_maps)
    out = recover(storage)
    assert unfold_puts(out.changes) == [*batch, parent(1), put(2), put(3), put(4), put(5)]
    assert out.orphan_changes == 1  # delete(7)


CONFIG = EngineConfig(server_id="s1", dedup_window=60)


def live_state(storage: MemoryStorage) -> list[tuple[str, str, list[tuple[str, Any]]]]:
    """The recovered live state, through the engine sink, as sorted `dump()` items."""
    engine, _ = engine_recovery(storage)
    key = {"tube": "tube", "put": "id", "idem": "key"}
    return sorted((c["t"], str(c[key[c["t"]]]), sorted(c.items())) for c in dump(engine))


def test_compaction_writes_puts_changes_that_recover_to_the_same_state() -> None:
    many = [put(n, tube=f"t{n % 3}", priority=n % 5, body=b"b" * (n % 9)) for n in range(100, 400)]
    files = chain(
        [[put(1), put(2), put(3)], many[:150], [bury(2), delete(101), keyed(4)]],
        [many[150:], [delayed(5), parent(6), child(7, 6)], [bury(200), TUBE_T], [put(8)]],
    )
    storage = storage_with(files)
    before = live_state(storage)
    result = compact(storage, upto=2, config=CONFIG, server_id="s1", version="t", now=NOW)
    assert result is not None
    assert storage.list() == [snap_name(2)]
    data = storage.read(snap_name(2))
    item = scan(snap_name(2), data)
    assert item.problem is None
    assert item.header is not None
    assert item.header.version == 2
    changes: list[Change] = [c for r in item.records for c in r.changes]
    assert changes[-1]["t"] == "end"
    assert changes[-1]["changes"] == len(changes) - 1 == result.changes - 1
    puts = [c for c in changes if c["t"] == "puts"]
    assert len(puts) >= 2
    assert sum(len(c["id"]) for c in puts) > 290
    assert not any(is_plain_ready(a) and is_plain_ready(b) for a, b in pairwise(changes))
    # the snapshot holds exactly the live state, folded
    engine, _ = engine_recovery(storage_with(files))
    assert result.jobs == len(engine.jobs) == 307
    assert unfold_puts(changes[1:-1]) == dump(engine)
    assert live_state(storage) == before
    assert len(data) < sum(map(len, files.values())) / 1.5


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("priority", 2**32, r"puts: invalid priority\[2\]"),
        ("ttr", 0, r"puts: invalid ttr\[2\]"),
        ("tube", "-bad", r"puts: invalid tube\[2\]"),
        ("created_at", 2**70, "integer out of the CBOR range"),  # a number, but no CBOR int
    ],
)
def test_the_writer_refuses_a_bad_puts_change(field: str, value: object, reason: str) -> None:
    """`encode_record` skips the per-value checks only for a `puts` change the column checks
    prove valid; anything else is refused, naming it, and nothing is encoded."""
    change = puts_of(1, 2, 3, 4)
    encode_record([change])
    bad = {**change, field: [*change[field][:2], value, change[field][3]]}
    with pytest.raises(FormatError, match=reason):
        encode_record([bad])
