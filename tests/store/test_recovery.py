"""Recovery (persistence.md §6): replay, torn tails (P4), corruption (P5), repair, lock."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from allq.store.format import (
    HEADER_SIZE,
    Change,
    encode_header,
    log_name,
    snap_name,
)
from allq.store.recovery import Recovered, RecoveryError, recover
from allq.store.scanning import scan
from allq.store.storage import DirectoryInUse, MemoryStorage, OsStorage
from allq.tubes.engine import Engine
from allq.tubes.replay import Replayer
from tests.helpers.engines import make_engine
from tests.store.builders import (
    bury,
    chain,
    delete,
    jid,
    log_bytes,
    parent,
    put,
    snap_bytes,
    storage_with,
)
from tests.tubes.test_changes import assert_same, restored

L1, L2, L3 = log_name(1), log_name(2), log_name(3)


def _ids(changes: list[Change]) -> list[tuple[object, object]]:
    return [(c["t"], c.get("id", c.get("tube"))) for c in changes]


def _refusal(storage: MemoryStorage, **kw: object) -> str:
    with pytest.raises(RecoveryError) as caught:
        recover(storage, **kw)  # type: ignore[arg-type]
    return str(caught.value)


# --- replay ------------------------------------------------------------------------------


def test_empty_directory() -> None:
    storage = MemoryStorage()
    result = recover(storage, server_id="s1")
    assert storage.locked
    assert (result.changes, result.next_seq, result.prev, result.files) == ([], 1, 0, 0)


def test_replays_the_chain_in_order_and_skips_orphans() -> None:
    files = chain(
        [[put(1), put(2)], [bury(2)]],
        [[delete(1)], [bury(9), delete(9)], [{"t": "clear", "tube": "t"}], [bury(2)]],
        [[put(3, tube="u")]],
    )
    result = recover(storage_with(files))
    assert _ids(result.changes) == [
        ("put", jid(1)),
        ("put", jid(2)),
        ("state", jid(2)),
        ("delete", jid(1)),
        ("clear", "t"),
        ("put", jid(3)),
    ]
    assert result.orphan_changes == 3  # bury(9), delete(9), bury(2) after the clear
    assert any("3 orphan changes" in w for w in result.warnings)
    assert (result.server_id, result.next_seq, result.prev, result.snapshot) == ("s1", 4, 3, 0)
    assert (result.files, result.records, result.segments) == (3, 10, 3)
    assert result.bytes_read == result.log_bytes == sum(map(len, files.values()))
    assert result.seqs == {"ready_seq": 0}


def test_snapshot_then_logs_and_leftovers_deleted() -> None:
    files = {
        **chain([[put(1)]], [[put(2)]]),  # covered by snap-2
        snap_name(1): snap_bytes(1, [put(1)]),
        snap_name(2): snap_bytes(2, [put(1), put(2), parent(5)]),
        **chain([[delete(2)]], first=3, prev=2),
        "snap-00000000000000000004.aql.tmp": b"half",
        "notes.txt": b"",
    }
    storage = storage_with(files)
    result = recover(storage)
    assert _ids(result.changes) == [
        ("put", jid(1)),
        ("put", jid(2)),
        ("put", jid(5)),
        ("delete", jid(2)),
    ]
    assert (result.snapshot, result.next_seq, result.prev) == (2, 4, 3)
    assert storage.list() == [L3, "notes.txt", snap_name(2)]
    assert result.warnings == ["ignoring unknown file notes.txt"]


def test_snapshot_without_logs_sets_prev() -> None:
    result = recover(storage_with({snap_name(6): snap_bytes(6, [put(1)])}))
    assert (result.next_seq, result.prev) == (7, 6)


def test_server_id_mismatch_refuses_naming_both() -> None:
    storage = storage_with(chain([[put(1)]]))
    message = _refusal(storage, server_id="s2")
    assert message.startswith(f"{L1} was written by server_id 's1', this server is 's2'")
    other = {**chain([[put(1)]]), L2: log_bytes(2, 1, [[put(2)]], server_id="zz")}
    assert "server_id 'zz', earlier files by 's1'" in _refusal(storage_with(other))
    assert "server_id 'zz'" in _refusal(storage_with(other), repair=True)


# --- P4: torn tails ------------------------------------------------------------------------


def _segments_with_tail() -> tuple[dict[str, bytes], list[Change]]:
    records = [[put(1)], [put(2), bury(2)], [put(3, body=b"x" * 700)], [delete(1)]]
    files = chain([[put(10)]], records)
    return files, [put(10), *[c for r in records for c in r]]


def test_cut_at_every_offset_of_the_last_two_records(caplog: pytest.LogCaptureFixture) -> None:
    files, changes = _segments_with_tail()
    whole = files[L2]
    records = scan(L2, whole).records
    start = records[-2].offset
    for cut in range(start, len(whole) + 1):
        files[L2] = whole[:cut]
        caplog.clear()
        with caplog.at_level(logging.WARNING, "allq.store"):
            storage = storage_with(files)
            result = recover(storage)
        kept = [r for r in records if r.end <= cut]
        expected = [put(10), *[c for r in kept[1:] for c in r.changes]]
        assert result.changes == expected, cut
        good_end = kept[-1].end
        dropped = cut - good_end
        assert result.torn_bytes_dropped == dropped
        assert storage.read(L2) == whole[:good_end]
        messages = [r.getMessage() for r in caplog.records]
        if dropped:
            assert messages == [f"torn tail in {L2} at {good_end}: dropped {dropped} bytes"]
        else:
            assert messages == []
    assert len(changes) == 6


def test_zero_filled_tail_is_dropped() -> None:
    files, changes = _segments_with_tail()
    size = len(files[L2])
    files[L2] += bytes(4096)
    storage = storage_with(files)
    result = recover(storage)
    assert result.changes == changes
    assert result.torn_bytes_dropped == 4096
    assert storage.read(L2) == files[L2][:size]


def test_zero_block_inside_the_last_record_is_a_torn_tail() -> None:
    files = chain([[put(1)], [put(2, body=b"y" * 3000)]])
    data = files[L1]
    last = scan(L1, data).records[-1]
    block = (last.offset // 512 + 2) * 512
    files[L1] = data[:block] + bytes(512) + data[block + 512 :]
    result = recover(storage_with(files))
    assert _ids(result.changes) == [("put", jid(1))]
    assert result.torn_bytes_dropped == len(data) - last.offset


@pytest.mark.parametrize(
    "newest",
    [
        encode_header(1, 3, 0),  # header only
        encode_header(1, 3, 0)[:17],  # incomplete header
        bytes(4096),  # all zero
        encode_header(1, 3, 0)[:20] + bytes(100),
        b"",
        log_bytes(3, 2, [])[:-5],  # meta incomplete
        encode_header(1, 3, 0) + bytes(600),  # meta all zero
    ],
)
def test_torn_creation_of_the_newest_file_is_deleted(newest: bytes) -> None:
    files = {**chain([[put(1)]], [[put(2)], [put(3)]]), L3: newest}
    files[L2] = files[L2][:-3]  # the tail segment is torn too
    storage = storage_with(files)
    result = recover(storage)
    assert _ids(result.changes) == [("put", jid(1)), ("put", jid(2))]
    assert L3 not in storage.list()
    assert (result.next_seq, result.prev) == (4, 2)
    assert f"torn creation of {L3} ({len(newest)} bytes): deleted" in result.warnings


def test_header_and_meta_only_newest_file_is_kept_and_tail_is_the_one_before() -> None:
    files = {**chain([[put(1)], [put(2)]]), L2: log_bytes(2, 1, [])}
    files[L1] = files[L1][:-4]
    storage = storage_with(files)
    result = recover(storage)
    assert _ids(result.changes) == [("put", jid(1))]
    assert (result.next_seq, result.prev, storage.list()) == (3, 2, [L1, L2])


# --- P5: corruption --------------------------------------------------------------------------


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x10]) + data[offset + 1 :]


def _corrupt_files() -> tuple[dict[str, bytes], int]:
    """Two segments; returns the files and the offset of log 2's second record."""
    files = chain([[put(1)], [put(2)]], [[put(3)], [put(4, body=b"secret body")], [put(5)]])
    return files, scan(L2, files[L2]).records[2].offset


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("body", "record CRC mismatch"),
        ("length", "record CRC mismatch|runs past|invalid record length"),
        ("crc", "record CRC mismatch"),
    ],
)
def test_flipped_bit_in_a_middle_record(where: str, reason: str) -> None:
    files, offset = _corrupt_files()
    data = files[L2]
    position = {"body": len(data) - 40, "length": offset + 2, "crc": offset + 5}[where]
    if where == "body":
        offset = scan(L2, data).records[-1].offset
        files[L2] = _flip(data, position) + files[L2][len(data) :]
        files[L2] = files[L2] + log_bytes(9, 0, [])[HEADER_SIZE:]  # followed by more data
    else:
        files[L2] = _flip(data, position)
    message = _refusal(storage_with(files))
    assert message.startswith(f"corruption in {L2} at offset {offset}: ")
    assert "refusing to start. --repair would move the " in message
    assert "Traceback" not in message


def test_flipped_bit_in_last_record_without_zero_block_is_corruption() -> None:
    files, _ = _corrupt_files()
    last = scan(L2, files[L2]).records[-1].offset
    files[L2] = _flip(files[L2], len(files[L2]) - 3)
    message = _refusal(storage_with(files))
    assert message.startswith(f"corruption in {L2} at offset {last}: record CRC mismatch")
    assert f"move the {len(files[L2]) - last} bytes from offset {last}" in message


def test_flipped_bit_in_a_header() -> None:
    files, _ = _corrupt_files()
    files[L1] = _flip(files[L1], 14)
    assert _refusal(storage_with(files)).startswith(
        f"corruption in {L1} at offset 0: file header CRC mismatch"
    )


def test_bad_record_in_an_older_segment() -> None:
    files, _ = _corrupt_files()
    files[L1] = files[L1][:-2]  # torn, but not the tail: log 2 has records
    last = scan(L1, files[L1]).records[-1].end
    assert _refusal(storage_with(files)).startswith(f"corruption in {L1} at offset {last}: ")


def test_bad_record_in_a_snapshot() -> None:
    data = snap_bytes(2, [put(1), put(2)])
    records = scan(snap_name(2), data).records
    message = _refusal(storage_with({snap_name(2): data[:-1]}))
    assert message.startswith(f"corruption in {snap_name(2)} at offset {records[-1].offset}: ")


def test_garbage_file() -> None:
    files = {**chain([[put(1)]]), L2: b"this is not a log file at all" * 20}
    files[L3] = log_bytes(3, 2, [[put(3)]])
    assert _refusal(storage_with(files)).startswith(f"corruption in {L2} at offset 0: ")


def test_missing_segment() -> None:
    files = chain([[put(1)]], [[put(2)]], [[put(3)]])
    del files[L2]
    message = _refusal(storage_with(files))
    assert message.startswith(
        f"corruption in {L3} at offset {HEADER_SIZE}: broken chain: this log segment follows "
        "segment 2, expected 1 (a file is missing)"
    )
    assert "--repair would go on without it" in message


def test_missing_snapshot() -> None:
    files = chain([[put(3)]], first=7, prev=6)
    message = _refusal(storage_with(files))
    assert "follows segment 6, expected 0" in message


def test_snapshot_without_end() -> None:
    data = snap_bytes(2, [put(1)], end=False)
    message = _refusal(storage_with({snap_name(2): data}))
    assert message.startswith(
        f"corruption in {snap_name(2)} at offset {len(data)}: snapshot without a matching end"
    )


@pytest.mark.parametrize(
    ("records", "reason"),
    [
        ([[put(1)], [put(1)]], "duplicate put of job"),
        ([[put(1), put(1)]], "duplicate put of job"),
        ([[{"t": "end", "changes": 1}]], "end change in a log segment"),
        ([[put(2), {"t": "meta", "format": 2, "server_id": "s1", "prev": 0, "seqs": {},
                    "version": "x"}]], "meta change not first"),
    ],
)  # fmt: skip
def test_semantic_corruption(records: list[list[Change]], reason: str) -> None:
    files = chain(records)
    message = _refusal(storage_with(files))
    assert reason in message
    assert f"corruption in {L1} at offset " in message


def test_snapshot_end_count_mismatch_and_wrong_types() -> None:
    data = snap_bytes(2, [put(1)], end=False)
    from allq.store.format import (
        encode_record,
    )

    wrong = data + encode_record([{"t": "end", "changes": 9}])
    assert "end counts 9 changes, the file holds 2" in _refusal(storage_with({snap_name(2): wrong}))
    typed = snap_bytes(2, [put(1), delete(1)])
    assert "delete change in a snapshot" in _refusal(storage_with({snap_name(2): typed}))


# --- repair (§6.5) -----------------------------------------------------------------------------


def test_repair_quarantines_and_never_serves_the_damaged_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    files, offset = _corrupt_files()
    data = files[L2]
    files[L2] = _flip(data, offset + 20)  # inside put(4)'s record
    storage = storage_with(files)
    with caplog.at_level(logging.ERROR, "allq.store"):
        result = recover(storage, repair=True)
    assert _ids(result.changes) == [("put", jid(1)), ("put", jid(2)), ("put", jid(3))]
    assert all(c.get("body") != b"secret body" for c in result.changes)
    dropped = len(data) - offset
    assert result.quarantined == [(L2, offset, dropped)]
    assert result.repaired
    assert storage.read(f"quarantine/{L2}.{offset}") == files[L2][offset:]
    assert storage.read(L2) == data[:offset]
    assert storage.list() == [L1, L2, "quarantine"]
    assert f"quarantined {dropped} bytes" in caplog.text
    # the directory now recovers without --repair
    assert _ids(recover(storage_with({L1: files[L1], L2: storage.read(L2)})).changes) == _ids(
        result.changes
    )


def test_repair_of_a_bad_header_removes_the_file_and_tolerates_the_chain() -> None:
    files = chain([[put(1)]], [[put(2)]], [[put(3)]])
    files[L2] = _flip(files[L2], 3)
    storage = storage_with(files)
    result = recover(storage, repair=True)
    assert _ids(result.changes) == [("put", jid(1)), ("put", jid(3))]
    assert storage.list() == [L1, L3, "quarantine"]
    assert storage.read(f"quarantine/{L2}.0") == files[L2]
    assert (result.prev, result.next_seq) == (3, 4)


def test_repair_of_a_snapshot_without_end_and_orphans() -> None:
    files = {snap_name(2): snap_bytes(2, [put(1)], end=False)}
    files.update(chain([[delete(7)], [delete(1)]], first=3, prev=2))
    result = recover(storage_with(files), repair=True)
    assert _ids(result.changes) == [("put", jid(1)), ("delete", jid(1))]
    assert result.orphan_changes == 1
    assert result.repaired


# --- lock (§8) -------------------------------------------------------------------------------


def test_recovery_takes_the_lock_and_a_second_one_fails(tmp_path: Path) -> None:
    first = OsStorage(tmp_path / "d")
    recover(first)
    second = OsStorage(tmp_path / "d")
    with pytest.raises(DirectoryInUse, match=r"\(pid \d+\)$"):
        recover(second)
    first.unlock()
    assert recover(second).changes == []
    second.unlock()


def test_recovery_on_a_real_directory(tmp_path: Path) -> None:
    files = chain([[put(1)]], [[put(2)], [bury(2)]])
    files[L2] = files[L2][:-7]
    directory = tmp_path / "d"
    directory.mkdir()
    for name, data in files.items():
        (directory / name).write_bytes(data)
    (directory / "x.tmp").write_bytes(b"")
    storage = OsStorage(directory)
    result = recover(storage)
    assert _ids(result.changes) == [("put", jid(1)), ("put", jid(2))]
    assert sorted(p.name for p in directory.iterdir()) == ["LOCK", L1, L2]
    assert result.warnings[0].startswith(f"torn tail in {directory / L2} at ")
    storage.unlock()


# --- streaming into the engine (performance.md B8) -------------------------------------------


def _engine_recovery(storage: MemoryStorage, **kw: object) -> tuple[Engine, Recovered]:
    engine = make_engine(now=5000.0, dedup_window=60)
    replayer = Replayer(engine)
    recovered = recover(storage, sink=replayer, **kw)  # type: ignore[arg-type]
    replayer.finish()
    engine.check_invariants()
    return engine, recovered


def test_an_engine_sink_ends_where_collecting_then_restoring_ends() -> None:
    batch = [put(n, tube=f"t{n % 3}", priority=n % 4) for n in range(10, 40)]
    files = chain(
        [[put(1)], [put(2), bury(2)], [delete(7)], batch, [delete(11), bury(12)]],
        [[put(3, tube="c")], [{"t": "clear", "tube": "c"}], [put(4, tube="c")], [delete(1)]],
    )
    collected = recover(storage_with(files))
    expected = restored(collected.changes, 5000.0)
    engine, streamed = _engine_recovery(storage_with(files))
    assert_same(expected, engine)
    assert streamed.changes == []
    assert streamed.orphan_changes == collected.orphan_changes == 1
    assert streamed.records == collected.records


@pytest.mark.parametrize("sink", ["collect", "engine"])
@pytest.mark.parametrize(
    "records",
    [
        [[put(1)], [put(1)]],  # a plain put alone: built from its row
        [[put(1), put(1)]],
        [[put(1)], [put(2), put(1)]],
        [[parent(1)], [parent(1)]],  # not a plain put: the general path
    ],
)
def test_a_duplicate_put_is_corruption_with_either_sink(
    records: list[list[Change]], sink: str
) -> None:
    storage = storage_with(chain(records))
    run = _engine_recovery if sink == "engine" else recover
    with pytest.raises(RecoveryError, match=f"corruption in {L1} at offset .*duplicate put"):
        run(storage)


def test_repair_drops_a_record_with_a_duplicate_put_whole() -> None:
    """Nothing of the bad record reaches the engine: not even the put before the duplicate."""
    storage = storage_with(chain([[put(1)], [put(2), put(1)], [put(3)]]))
    engine, recovered = _engine_recovery(storage, repair=True)
    assert set(engine.jobs) == {jid(1)}
    assert recovered.repaired


def test_a_change_the_engine_cannot_apply_refuses_even_with_repair() -> None:
    count: Change = {"t": "count", "id": jid(1), "limit": None, "children_started": 1,
             "children_completed": 0, "children_failed": 0}  # fmt: skip
    files = chain([[put(1)], [count]])
    assert recover(storage_with(files)).changes[-1] == count  # the collector cannot tell
    for repair in (False, True):
        with pytest.raises(RecoveryError) as caught:
            _engine_recovery(storage_with(files), repair=repair)
        message = str(caught.value)
        assert message.startswith(f"{L1} at offset ")
        assert "a change cannot be applied: count change for" in message
        assert "--repair does not change this" in message


@pytest.mark.parametrize("twice", ["a live job", "a job of the same batch"])
def test_repair_drops_a_batch_record_with_a_duplicate_put_whole(twice: str) -> None:
    """A put_batch record (applied from its rows): the jobs before the duplicate are taken
    out again, and the engine's sequence numbers are as before the record."""
    batch = [put(n) for n in range(100, 130)]
    batch[20] = put(1) if twice == "a live job" else put(105)
    storage = storage_with(chain([[put(1)], batch, [put(2)]]))
    engine, recovered = _engine_recovery(storage, repair=True)
    assert set(engine.jobs) == {jid(1)}
    assert recovered.repaired
    fresh, _ = _engine_recovery(storage_with(chain([[put(1)]])))
    assert engine.sequences() == fresh.sequences()
