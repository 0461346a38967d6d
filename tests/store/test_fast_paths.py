"""The fast recovery paths (performance.md B8) keep every guarantee of persistence.md §4, §6.4.

* `_Reader.fast_valid` never accepts a change `validate_change` refuses;
* one decoder per file still refuses an item that runs past its record or stops short;
* a record whose CRC failed is never decoded (its body is never served), mid-log
  corruption is still refused with the file and offset.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from allq.store.format import (
    HEADER_SIZE,
    _Reader,
    encode_record,
    log_name,
)
from allq.store.recovery import RecoveryError, recover
from allq.store.scanning import scan
from allq.store.validation import (
    FormatError,
    validate_change,
)
from allq.tubes.changes import plain_ready_row
from tests.store.builders import bury, chain, delete, jid, log_bytes, parent, put, storage_with

BAD_VALUES: list[Any] = [
    None, True, False, -1, 2**32, 2**64, -(2**64), 0.5, 0.0, -0.5, float("nan"), float("inf"),
    "", "x", "ready", "-bad", "A" * 22, b"", b"x", [], {}, [1], {"a": 1},
]  # fmt: skip


def _plain_changes() -> list[dict[str, Any]]:
    delayed = {**put(4), "state": "delayed", "due_at": 5.0}
    del delayed["ready_since"]
    buried = {**put(5), "state": "buried", "buried_at": 5}
    del buried["ready_since"]
    keyed = {**put(6), "parent_id": jid(1), "shard_key": "s.1", "idempotency_key": "k!"}
    return [put(1), put(2, tube="other", priority=0), delayed, buried, keyed, bury(3), delete(3)]


def _refused(change: dict[str, Any]) -> bool:
    try:
        validate_change(change)
    except FormatError:
        return True
    return False


@pytest.mark.parametrize("change", _plain_changes(), ids=lambda c: f"{c['t']}-{c.get('state')}")
def test_fast_path_accepts_plain_changes(change: dict[str, Any]) -> None:
    assert _Reader(b"").fast_valid(change)
    validate_change(change)


@pytest.mark.parametrize("change", _plain_changes(), ids=lambda c: f"{c['t']}-{c.get('state')}")
def test_fast_path_never_accepts_what_validation_refuses(change: dict[str, Any]) -> None:
    reader = _Reader(b"")
    for key in change:
        for bad in BAD_VALUES:
            mutated = {**change, key: bad}
            if _refused(mutated):
                assert not reader.fast_valid(mutated), (key, bad)
        missing = {k: v for k, v in change.items() if k != key}
        if _refused(missing):
            assert not reader.fast_valid(missing), key
        else:  # an optional field
            assert key in ("parent_id", "shard_key", "idempotency_key")
    for extra in ("extra", "due_at", "ready_since", "timeout", "limit", "noop"):
        if extra not in change:
            added = {**change, extra: 1.0}
            assert _refused(added)
            assert not reader.fast_valid(added), extra


@given(
    st.sampled_from(_plain_changes()),
    st.text(max_size=3),
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary()),
)
def test_fast_path_is_never_laxer(change: dict[str, Any], key: str, value: object) -> None:
    mutated = {**change, key: value}
    if _Reader(b"").fast_valid(mutated):
        validate_change(mutated)


def _batch(size: int = 20) -> list[dict[str, Any]]:
    return [put(n, tube=f"t{n % 3}", priority=n) for n in range(1, size + 1)]


def test_column_checks_accept_a_batch_of_plain_ready_puts() -> None:
    batch = _batch()
    assert _Reader(b"").plain_ready_puts(batch) == [plain_ready_row(c) for c in batch]
    for change in batch:
        validate_change(change)
    # a scanned record carries the rows (the replay applies them), only when all are plain
    data = log_bytes(1, 0, [batch, batch[:3], [*batch, bury(3)]])
    records = scan(log_name(1), data).records
    assert records[1].rows == [plain_ready_row(c) for c in batch]
    assert records[2].rows is None  # below COLUMN_CHECK_MIN: checked change by change
    assert records[3].rows is None


@pytest.mark.parametrize("position", [0, 7, 19])
def test_column_checks_never_accept_what_validation_refuses(position: int) -> None:
    """One bad change anywhere in a batch: the column checks refuse the batch (the
    per-change checks then name it); an accepted mutation must be valid."""
    reader = _Reader(b"")
    template = _batch()[position]
    for key in template:
        for bad in BAD_VALUES:
            batch = _batch()
            batch[position] = {**template, key: bad}
            if _refused(batch[position]):
                assert not reader.plain_ready_puts(batch), (key, bad)
        batch = _batch()
        batch[position] = {k: v for k, v in template.items() if k != key}
        assert not reader.plain_ready_puts(batch), key
    for extra in ("extra", "due_at", "parent_id", "shard_key", "timeout"):
        batch = _batch()
        batch[position] = {**template, extra: "s"}
        assert not reader.plain_ready_puts(batch), extra
    batch = _batch()
    batch[position] = bury(3)
    assert not reader.plain_ready_puts(batch)
    batch[position] = [1]  # type: ignore[call-overload]
    assert not reader.plain_ready_puts(batch)


@given(
    st.integers(0, 19),
    st.text(max_size=3) | st.sampled_from(sorted(put(1))),
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary()),
)
def test_column_checks_are_never_laxer(position: int, key: str, value: object) -> None:
    batch = _batch()
    batch[position] = {**batch[position], key: value}
    if _Reader(b"").plain_ready_puts(batch):
        for change in batch:
            validate_change(change)


def test_a_batch_record_with_a_bad_change_is_refused_naming_it() -> None:
    batch = _batch()
    batch[5] = {**batch[5], "priority": 2**32}
    payload = cbor2.dumps(batch)
    with pytest.raises(FormatError, match="change 5: put: invalid priority"):
        _Reader(payload).decode(0, len(payload))
    good = cbor2.dumps(_batch())
    assert _Reader(good).decode(0, len(good)) == _batch()


def test_parents_go_through_full_validation() -> None:
    change = parent(1)
    assert not _Reader(b"").fast_valid(change)
    validate_change(change)


def test_tube_cache_does_not_let_a_bad_name_through() -> None:
    reader = _Reader(b"")
    assert reader.fast_valid(put(1, tube="good"))
    assert reader.fast_valid(put(2, tube="good"))
    assert not reader.fast_valid(put(3, tube="-bad"))


def _raw_record(payload: bytes) -> bytes:
    length = struct.pack(">I", len(payload))
    return length + struct.pack(">I", zlib.crc32(payload, zlib.crc32(length))) + payload


def test_an_item_running_past_its_record_is_refused() -> None:
    """The decoder reads the whole file: a CRC-valid record whose CBOR claims more bytes
    than its payload must not borrow them from the next record."""
    full = cbor2.dumps([put(1)])
    cut = full[:-10]  # the body's byte string now runs past the payload
    data = log_bytes(1, 0, []) + _raw_record(cut) + encode_record([put(2)]) + b"\0" * 64
    item = scan(log_name(1), data)
    assert item.problem is not None
    assert "invalid CBOR" in item.problem.reason
    assert len(item.records) == 1  # the meta record only


def test_the_reader_decodes_correctly_after_a_failure_and_in_any_order() -> None:
    """cbor2 reads ahead; after a failed decode its buffer is stale unless replaced."""
    good = cbor2.dumps([put(1)])
    bad = cbor2.dumps([put(2)])[:-10]
    other = cbor2.dumps([delete(3)])
    data = good + bad + other + b"\0" * 64
    reader = _Reader(data)
    spans = {"good": (0, len(good)), "other": (len(good) + len(bad), len(data) - 64)}
    for _ in range(3):
        with pytest.raises(FormatError, match="invalid CBOR"):
            reader.decode(len(good), len(good) + len(bad))
        assert reader.decode(*spans["other"]) == [delete(3)]
        assert reader.decode(*spans["good"]) == [put(1)]


def test_trailing_bytes_inside_a_record_are_refused() -> None:
    data = log_bytes(1, 0, []) + _raw_record(cbor2.dumps([delete(1)]) + b"\x00")
    data += encode_record([put(2)])
    item = scan(log_name(1), data)
    assert item.problem is not None
    assert "trailing bytes" in item.problem.reason


def test_records_decode_in_order_with_one_decoder() -> None:
    records = [[put(n)] for n in range(1, 50)] + [[bury(3), delete(4)]]
    item = scan(log_name(1), log_bytes(1, 0, records))
    assert item.problem is None
    assert [r.changes for r in item.records[1:]] == records
    assert item.records[1].offset > HEADER_SIZE


def test_a_flipped_body_bit_mid_log_is_refused_and_never_decoded() -> None:
    files = chain([[put(1)], [put(2)], [put(3)]])
    name = log_name(1)
    data = bytearray(files[name])
    offset = data.index(b"body-2")
    data[offset] ^= 0x01
    files[name] = bytes(data)
    item = scan(name, files[name])
    assert item.problem is not None
    assert item.problem.reason == "record CRC mismatch"
    bodies = [c["body"] for r in item.records for c in r.changes if c["t"] == "put"]
    assert bodies == [b"body-1"]  # the damaged record and everything after it: not decoded
    with pytest.raises(RecoveryError, match=rf"{name}.* at offset {item.problem.offset}"):
        recover(storage_with(files))
    recovered = recover(storage_with(files), repair=True)
    assert [c["body"] for c in recovered.changes if c["t"] == "put"] == [b"body-1"]


def test_a_record_of_one_plain_ready_put_carries_its_row() -> None:
    data = log_bytes(1, 0, [[put(1)], [put(2, tube="other", priority=0)], [bury(1)], [parent(3)]])
    records = scan(log_name(1), data).records
    assert records[1].rows == [plain_ready_row(put(1))]
    assert records[2].rows == [plain_ready_row(put(2, tube="other", priority=0))]
    assert records[3].rows is None  # not a put
    assert records[4].rows is None  # a parent: checked by the per-change path


def test_the_one_row_check_never_accepts_what_validation_refuses() -> None:
    reader = _Reader(b"")
    template = put(7)
    assert reader.plain_ready_row(template) == plain_ready_row(template)
    for key in template:
        for bad in BAD_VALUES:
            mutated = {**template, key: bad}
            if _refused(mutated):
                assert reader.plain_ready_row(mutated) is None, (key, bad)
        assert reader.plain_ready_row({k: v for k, v in template.items() if k != key}) is None
        # the same number of fields, one of them unknown
        swapped = {**{k: v for k, v in template.items() if k != key}, "extra": 1}
        assert reader.plain_ready_row(swapped) is None, key
    for extra in ("extra", "due_at", "parent_id", "shard_key", "timeout"):
        assert reader.plain_ready_row({**template, extra: "s"}) is None, extra
    for other in (bury(3), delete(3), parent(3), [1], "put"):
        assert reader.plain_ready_row(other) is None
    # a number that is finite alone but whose sum with the others is not: still valid,
    # so the one-row check may send it on, never wrongly refuse it
    big = {**template, "created_at": 1.5e308, "ready_since": 1.5e308}
    validate_change(big)
    assert reader.plain_ready_row(big) is None


@given(
    st.text(max_size=3) | st.sampled_from(sorted(put(1))),
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary()),
)
def test_the_one_row_check_is_never_laxer(key: str, value: object) -> None:
    mutated = {**put(1), key: value}
    if _Reader(b"").plain_ready_row(mutated) is not None:
        validate_change(mutated)


def test_a_bad_single_put_record_is_still_named() -> None:
    bad = {**put(1), "priority": 2**32}
    payload = cbor2.dumps([bad])
    with pytest.raises(FormatError, match="change 0: put: invalid priority"):
        _Reader(payload).decode(0, len(payload))
