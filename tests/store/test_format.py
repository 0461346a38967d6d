"""The file format of persistence.md §4 and the bad-record facts of §6.4 (allq.store.format)."""

from __future__ import annotations

import ast
import struct
import zlib
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from allq.store import format as fmt
from allq.store.format import (
    HEADER_SIZE,
    KIND_LOG,
    KIND_SNAPSHOT,
    decode_header,
    decode_payload,
    encode_header,
    encode_record,
    log_name,
    parse_name,
    snap_name,
)
from allq.store.scanning import (
    Problem,
    Verdict,
    scan,
)
from allq.store.validation import (
    FormatError,
    validate_change,
)
from tests.store.builders import bury, delete, log_bytes, meta, parent, put


def test_format_module_is_sans_io() -> None:
    tree = ast.parse(Path(fmt.__file__).read_text())
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert not roots & {"trio", "time", "logging", "random", "os", "socket", "threading"}


# --- names and header ---------------------------------------------------------------------


def test_names() -> None:
    assert log_name(7) == "log-00000000000000000007.aql"
    assert snap_name(6) == "snap-00000000000000000006.aql"
    assert parse_name(log_name(7)) == (KIND_LOG, 7)
    assert parse_name(snap_name(2**64 - 1)) == (KIND_SNAPSHOT, 2**64 - 1)
    for other in ("LOCK", "log-7.aql", "snap-00000000000000000006.aql.tmp", "x.aql"):
        assert parse_name(other) is None


@given(
    st.sampled_from([KIND_LOG, KIND_SNAPSHOT]),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)
def test_header_round_trip(kind: int, seq: int, created: int) -> None:
    data = encode_header(kind, seq, created)
    assert len(data) == HEADER_SIZE
    assert data[:8] == b"ALQLOG\r\n"
    assert data[8:12] == b"\x00\x02" + bytes([kind]) + b"\x00"
    assert struct.unpack(">I", data[28:])[0] == zlib.crc32(data[:28])
    header = decode_header(data)
    assert (header.kind, header.seq, header.created_ms, header.version) == (kind, seq, created, 2)


def _resealed(head: bytes) -> bytes:
    return head[:28] + struct.pack(">I", zlib.crc32(head[:28]))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: h[:31], "incomplete file header"),
        (lambda h: h[:5] + bytes([h[5] ^ 1]) + h[6:], "CRC mismatch"),
        (lambda h: _resealed(b"ALQLOX\r\n" + h[8:]), "wrong magic"),
        (
            lambda h: _resealed(h[:8] + b"\x00\x03" + h[10:]),
            "version 3 .this allq reads versions 1, 2",
        ),
        (lambda h: _resealed(h[:8] + b"\x00\x00" + h[10:]), "version 0"),
        (lambda h: _resealed(h[:10] + b"\x03" + h[11:]), "kind 3"),
        (lambda h: _resealed(h[:11] + b"\x01" + h[12:]), "kind 1/1"),
    ],
)
def test_bad_headers(mutate: object, reason: str) -> None:
    assert callable(mutate)
    with pytest.raises(FormatError, match=reason):
        decode_header(mutate(encode_header(KIND_LOG, 3, 5)))


# --- records and changes ------------------------------------------------------------------

_puts = st.builds(
    lambda n, body, priority, tube: put(n, body=body, priority=priority, tube=tube),
    st.integers(0, 10**6),
    st.binary(max_size=300),
    st.integers(0, 2**32 - 1),
    st.from_regex(r"[a-z][a-z0-9_.-]{0,20}", fullmatch=True),
)
_changes = st.one_of(
    _puts,
    st.integers(0, 10**6).map(bury),
    st.integers(0, 10**6).map(delete),
    st.just(parent(9)),
    st.just(meta(4)),
)


@given(st.lists(_changes, min_size=1, max_size=8))
def test_record_round_trip(changes: list[fmt.Change]) -> None:
    data = encode_record(changes)
    length, crc = struct.unpack(">II", data[:8])
    assert length == len(data) - 8
    assert crc == zlib.crc32(data[:4] + data[8:])
    assert decode_payload(data[8:]) == changes
    item = scan(log_name(1), encode_header(KIND_LOG, 1, 0) + data)
    assert item.problem is None
    assert [r.changes for r in item.records] == [changes]
    assert item.records[0].offset == HEADER_SIZE


def test_float_and_int_times_kept_exactly() -> None:
    change = put(1)
    change["created_at"] = 1234
    change["ready_since"] = 0.1 + 0.2
    [back] = decode_payload(encode_record([change])[8:])
    assert type(back["created_at"]) is int
    assert back["ready_since"] == 0.1 + 0.2


def _without(change: fmt.Change, key: str) -> fmt.Change:
    return {k: v for k, v in change.items() if k != key}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"t": "nope"}, "unknown change type"),
        ({**put(1), "extra": 1}, "unexpected field 'extra'"),
        (_without(put(1), "body"), "missing field 'body'"),
        (_without(put(1), "ready_since"), "missing field 'ready_since'"),
        ({**put(1), "due_at": 5.0}, "unexpected field 'due_at'"),
        ({**put(1), "body": "text"}, "invalid body"),
        ({**put(1), "priority": 2**32}, "invalid priority"),
        ({**put(1), "priority": True}, "invalid priority"),
        ({**put(1), "id": "short"}, "invalid id"),
        ({**put(1), "ttr": 0}, "invalid ttr"),
        ({**put(1), "created_at": float("nan")}, "invalid created_at"),
        ({**put(1), "state": "reserved"}, "invalid state"),
        ({**put(1), "noop": True}, "missing field 'timeout'"),
        (_without(parent(1), "limit"), "missing field 'limit'"),
        ({**bury(1), "state": "waiting"}, "invalid state"),
        (_without(bury(1), "kicks"), "missing field 'kicks'"),
        ({"t": "delete"}, "missing field 'id'"),
        ({**meta(), "format": 3}, "invalid format"),
        ({**meta(), "format": True}, "invalid format"),
        ({**meta(), "seqs": {"a": -1}}, "invalid seqs"),
        (
            {
                "t": "tube",
                "tube": "t",
                "paused": 1,
                "pause_until": None,
                "throttle_tps": None,
                "draining": False,
                "shard_reservation_limit": None,
            },
            "invalid paused",
        ),
        ({"t": "end", "changes": -1}, "invalid changes"),
    ],
)
def test_invalid_changes(change: fmt.Change, reason: str) -> None:
    with pytest.raises(FormatError, match=reason):
        validate_change(change)
    with pytest.raises(FormatError, match=reason):
        encode_record([change])


def test_valid_other_changes() -> None:
    for change in (
        {
            "t": "count",
            "id": put(1)["id"],
            "limit": 3,
            "children_started": 4,
            "children_completed": 1,
            "children_failed": 0,
        },
        {"t": "clear", "tube": "t"},
        {
            "t": "tube",
            "tube": "t",
            "paused": True,
            "pause_until": 12.5,
            "throttle_tps": 3.0,
            "draining": True,
            "shard_reservation_limit": 4,
        },
        {"t": "idem", "key": "k-1", "id": put(1)["id"], "first_seen": 9.0},
        {"t": "end", "changes": 4},
        {**put(1), "parent_id": put(2)["id"], "shard_key": "a", "idempotency_key": "k"},
    ):
        validate_change(change)


def test_record_needs_a_change() -> None:
    with pytest.raises(FormatError, match="at least one"):
        encode_record([])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xd8\x2a" + cbor2.dumps([put(1)]), "tag"),  # tag 42
        (b"\x9f" + cbor2.dumps(put(1)) + b"\xff", "invalid CBOR"),  # indefinite array
        (cbor2.dumps([put(1)]) + b"\x00", "trailing bytes"),
        (cbor2.dumps(put(1)), "not a non-empty CBOR array"),
        (cbor2.dumps([]), "not a non-empty CBOR array"),
        (cbor2.dumps([1]), "change 0 is not a map"),
        (b"\x81\xa2\x61t\x66delete\x61t\x66delete", "invalid CBOR"),  # duplicate key
        (cbor2.dumps([{"t": "clear", "tube": [[[[[[[[[1]]]]]]]]]}]), "invalid CBOR|deeper"),
        (cbor2.dumps([{"t": "clear", "tube": "a", 1: 2}]), "text string"),
        (b"\x81\xa2\x61t\x65clear\x64tube\x61\xff", "invalid CBOR"),
    ],
)
def test_strict_payload_decoding(payload: bytes, reason: str) -> None:
    with pytest.raises(FormatError, match=reason):
        decode_payload(payload)


# --- scanning (§6.4 facts) -----------------------------------------------------------------

GOOD = log_bytes(1, 0, [[put(1)], [put(2), bury(2)], [delete(1)]])


def _problem(data: bytes, name: str = log_name(1)) -> Problem:
    problem = scan(name, data).problem
    assert problem is not None
    return problem


def test_scan_good_file() -> None:
    item = scan(log_name(1), GOOD)
    assert item.problem is None
    assert [len(r.changes) for r in item.records] == [1, 1, 2, 1]
    assert item.good_end == len(GOOD)
    assert item.records[1].offset == item.records[0].end


def test_scan_header_name_mismatch() -> None:
    problem = _problem(GOOD, log_name(2))
    assert (problem.offset, problem.in_header, problem.torn_like) == (0, True, False)
    assert "sequence 1" in problem.reason
    assert "kind 1" in _problem(GOOD, snap_name(1)).reason


def test_scan_cut_records_are_torn_like() -> None:
    last = scan(log_name(1), GOOD).records[-1].offset
    for cut in range(last + 1, len(GOOD)):
        problem = _problem(GOOD[:cut])
        assert (problem.offset, problem.torn_like) == (last, True), cut


def test_scan_zero_rest_is_torn_like_and_garbage_is_not() -> None:
    assert _problem(GOOD + bytes(100)).torn_like
    assert _problem(GOOD + bytes(100)).reason == "invalid record length 0"
    assert not _problem(GOOD + b"\x00\x00\x00\x05" + bytes(96) + b"x").torn_like


def test_scan_crc_mismatch_torn_only_with_zero_block_at_eof() -> None:
    big = log_bytes(1, 0, [[put(1)], [put(2, body=b"b" * 3000)]])
    last = scan(log_name(1), big).records[-1].offset
    block = (last // 512 + 2) * 512
    zeroed = big[:block] + bytes(512) + big[block + 512 :]
    assert _problem(zeroed).torn_like
    assert _problem(zeroed).reason == "record CRC mismatch"
    flipped = big[:-10] + bytes([big[-10] ^ 4]) + big[-9:]
    assert not _problem(flipped).torn_like
    assert not _problem(zeroed + b"more").torn_like  # not ending at EOF


def test_scan_header_only_and_zero_files() -> None:
    header_only = _problem(GOOD[:HEADER_SIZE])
    assert (header_only.offset, header_only.torn_like) == (HEADER_SIZE, True)
    assert _problem(GOOD[:20]).torn_like
    assert _problem(GOOD[:20] + bytes(4000)).torn_like
    assert _problem(bytes(4096)).in_header
    assert _problem(bytes(4096)).torn_like
    assert not _problem(b"garbage" * 100).torn_like


@pytest.mark.parametrize(
    ("problem", "tail", "newest", "records", "verdict"),
    [
        (Problem(50, "x", True, False), True, False, 1, Verdict.TORN_TAIL),
        (Problem(50, "x", True, False), False, False, 1, Verdict.CORRUPT),
        (Problem(50, "x", False, False), True, True, 1, Verdict.CORRUPT),
        (Problem(0, "x", True, True), False, True, 0, Verdict.TORN_CREATION),
        (Problem(0, "x", True, True), True, False, 0, Verdict.CORRUPT),
        (Problem(32, "x", True, False), True, True, 0, Verdict.TORN_CREATION),
        (Problem(32, "x", True, False), True, False, 0, Verdict.CORRUPT),
        (Problem(0, "x", False, True), True, True, 0, Verdict.CORRUPT),
    ],
)
def test_verdicts(
    problem: Problem, tail: bool, newest: bool, records: int, verdict: Verdict
) -> None:
    assert problem.verdict(tail=tail, newest=newest, records=records) is verdict


def test_scan_flipped_length_bit_is_not_torn_like() -> None:
    last = scan(log_name(1), GOOD).records[-2].offset
    for bit in range(8, 24):
        byte, mask = last + 3 - bit // 8, 1 << (bit % 8)
        data = GOOD[:byte] + bytes([GOOD[byte] ^ mask]) + GOOD[byte + 1 :]
        problem = _problem(data)
        assert problem.offset == last
        if "runs past" in problem.reason:
            assert "the length is damaged" in problem.reason
            assert not problem.torn_like


def test_scan_zeros_from_a_block_boundary_to_eof_are_torn_like() -> None:
    big = log_bytes(1, 0, [[put(1, body=b"a" * 900)], [put(2, body=b"b" * 900)]])
    records = scan(log_name(1), big).records
    first = records[1]  # zeros start inside this record and cover the next one
    boundary = (first.offset // 512 + 1) * 512
    assert boundary < first.end
    zeroed = big[:boundary] + bytes(len(big) - boundary)
    assert _problem(zeroed).offset == first.offset
    assert _problem(zeroed).torn_like
    # a final block that EOF cuts short
    last = records[-1]
    cut = ((len(big) - 1) // 512) * 512
    assert last.offset < cut
    partial = big[:cut] + bytes(len(big) - cut)
    assert _problem(partial).torn_like
