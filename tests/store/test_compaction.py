"""Compaction (persistence.md §7, §12 P8) over the storage double and real files.

Rules: logs are written by the real engine (change log on, `Recorder` of the change-map
tests) through the real `LogWriter`; the state "before" is what recovery gives from the
logs, "after" what it gives from the compacted directory; both are compared through
`dump()` of an engine restored from them. Crashes are taken as `survivor()` copies of the
double before and after every rename, unlink and directory sync of a compaction.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from allq.store.compaction import (
    COMPACTION_NICENESS,
    CompactionError,
    Compactor,
    compact,
    lower_priority,
)
from allq.store.format import (
    TMP_SUFFIX,
    log_name,
    parse_name,
    snap_name,
)
from allq.store.log import LogWriter, open_log_writer
from allq.store.recovery import recover
from allq.store.storage import MemoryStorage, OsStorage, Storage
from allq.tubes.changes import dump
from allq.tubes.config import EngineConfig
from allq.tubes.replay import restore
from tests.helpers.engines import make_engine
from tests.tubes.test_changes import TUBES, Recorder

CONFIG = EngineConfig(server_id="s1", dedup_window=60)


def random_action(rng: random.Random) -> tuple[Any, ...]:
    kind = rng.choice(
        ["put", "put", "put", "parent", "child", "reserve", "act", "act", "kick", "delete_any"]
        + ["setting", "children_started", "advance"]
        + (["clear"] if rng.random() < 0.05 else [])
    )
    tube = rng.choice(TUBES)
    if kind == "put":
        return (kind, tube, rng.randint(0, 3), rng.choice([0, 0, 2.5]), rng.random() < 0.3)
    if kind == "parent":
        return (kind, tube, rng.randint(0, 2), rng.random() < 0.5, rng.random() < 0.5)
    if kind == "child":
        return (kind, tube, rng.randint(0, 5))
    if kind == "reserve":
        return (kind, tube, rng.randint(1, 2))
    if kind == "act":
        what = rng.choice(["done", "release", "release_later", "bury", "touch", "delete"])
        return (kind, what, rng.randint(0, 9))
    if kind == "kick":
        return (kind, tube, rng.randint(1, 3))
    if kind == "delete_any":
        return (kind, rng.randint(0, 20))
    if kind == "setting":
        return (kind, tube, rng.choice(["pause_for", "unpause", "throttle", "drain", "undrain"]))
    if kind == "children_started":
        return (kind, rng.randint(0, 5))
    if kind == "clear":
        return (kind, tube)
    return ("advance", rng.choice([0.5, 1.0, 3.0]))


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """Storage calls on the Trio thread: rotations happen at the same steps every run."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


async def open_writer(storage: Storage, recorder: Recorder, **kw: Any) -> Any:
    kw.setdefault("to_thread", inline)
    return open_log_writer(
        storage,
        server_id="s1",
        version="test",
        seqs=recorder.engine.sequences,
        sync=kw.pop("sync", "never"),
        segment_bytes=kw.pop("segment_bytes", 1500),
        first_seq=kw.pop("first_seq", 1),
        prev=kw.pop("prev", 0),
        **kw,
    )


def flush(recorder: Recorder, writer: LogWriter) -> None:
    for record in recorder.records:
        if record and record[0]["t"] != "meta":
            writer.append(record)
    recorder.records.clear()


async def churn(writer: LogWriter, recorder: Recorder, rng: random.Random, steps: int) -> None:
    for _ in range(steps):
        recorder.run(random_action(rng))
        flush(recorder, writer)
        await trio.lowlevel.checkpoint()


def state(storage: Storage, now: float) -> list[Any]:
    """The recovered live state, normalised (tube order may differ after a snapshot).

    The sequence high-water marks are left out: they may only grow (restoring an
    idempotency record draws one `put` number); `seqs()` compares them."""
    result = recover(storage)
    engine = make_engine(now=now, dedup_window=60)
    restore(engine, result.changes)
    engine.restore_sequences(result.seqs)
    storage.unlock()
    changes = dump(engine)
    key = {"tube": "tube", "put": "id", "idem": "key"}
    return sorted(
        ([c["t"], str(c[key[c["t"]]]), sorted(c.items())] for c in changes), key=lambda x: x[:2]
    )


def seqs(storage: Storage) -> dict[str, int]:
    result = recover(storage)
    storage.unlock()
    engine = make_engine(dedup_window=60)
    restore(engine, result.changes)
    engine.restore_sequences(result.seqs)
    return engine.sequences()


def grew(before: dict[str, int], after: dict[str, int]) -> bool:
    return all(after[key] >= value for key, value in before.items())


def names(storage: Storage) -> list[str]:
    return [n for n in storage.list() if parse_name(n) is not None or n.endswith(TMP_SUFFIX)]


async def written(storage: Storage, seed: int, steps: int = 300) -> tuple[Recorder, int]:
    """Churn through a writer; returns the recorder and the newest closed segment."""
    recorder = Recorder()
    rng = random.Random(seed)
    async with await open_writer(storage, recorder) as writer:
        await churn(writer, recorder, rng, steps)
        closed = await writer.close_segment()
    return recorder, closed


@pytest.mark.parametrize("seed", range(4))
async def test_compaction_keeps_the_state_and_removes_the_covered_files(seed: int) -> None:
    storage = MemoryStorage(seed)
    recorder, closed = await written(storage, seed)
    assert closed > 3
    before = state(storage, recorder.now)
    marks = seqs(storage)
    result = compact(
        storage, upto=closed, config=CONFIG, server_id="s1", version="t", now=recorder.now
    )
    assert result is not None
    assert grew(marks, seqs(storage))
    assert result.snapshot == closed
    assert result.previous == 0
    newer = [log_name(s) for s in range(closed + 1, closed + 3) if log_name(s) in storage.files]
    assert names(storage) == [*newer, snap_name(closed)]
    assert state(storage, recorder.now) == before
    assert result.removed_bytes > result.snapshot_bytes
    # nothing new closed: nothing to do
    assert compact(storage, upto=closed, config=CONFIG, server_id="s1", version="t") is None


async def test_second_compaction_replaces_the_snapshot() -> None:
    storage = MemoryStorage(7)
    recorder = Recorder()
    rng = random.Random(7)
    async with await open_writer(storage, recorder) as writer:
        await churn(writer, recorder, rng, 200)
        first = await writer.close_segment()
        assert compact(
            storage, upto=first, config=CONFIG, server_id="s1", version="t", now=recorder.now
        )
        await churn(writer, recorder, rng, 200)
        second = await writer.close_segment()
        before = state(storage, recorder.now)
        result = compact(
            storage, upto=second, config=CONFIG, server_id="s1", version="t", now=recorder.now
        )
        assert result is not None
        assert result.previous == first
        assert snap_name(first) in result.removed
        await churn(writer, recorder, rng, 50)
    assert snap_name(first) not in storage.files
    assert snap_name(second) in storage.files
    assert state(storage, recorder.now) != before  # the last churn is there too
    recovered = recover(storage)
    storage.unlock()
    assert recovered.snapshot == second


class CuttingStorage(MemoryStorage):
    """Keeps what a power loss would leave before and after each namespace operation."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.cuts: list[tuple[str, MemoryStorage]] = []
        self.armed = False

    def _cut(self, what: str) -> None:
        if self.armed:
            self.cuts.append((what, self.survivor()))

    def rename(self, src: str, dst: str) -> None:
        self._cut(f"before rename {src}")
        super().rename(src, dst)
        self._cut(f"after rename {src}")

    def unlink(self, name: str) -> None:
        self._cut(f"before unlink {name}")
        super().unlink(name)
        self._cut(f"after unlink {name}")

    def sync_dir(self, subdir: str = "") -> None:
        super().sync_dir(subdir)
        self._cut("after sync_dir")


@pytest.mark.parametrize("seed", range(3))
async def test_power_loss_at_every_step_of_a_compaction_recovers_the_same_state(
    seed: int,
) -> None:
    storage = CuttingStorage(seed)
    recorder = Recorder()
    rng = random.Random(seed)
    async with await open_writer(storage, recorder) as writer:
        await churn(writer, recorder, rng, 150)
        first = await writer.close_segment()
        compact(storage, upto=first, config=CONFIG, server_id="s1", version="t", now=recorder.now)
        await churn(writer, recorder, rng, 150)
        upto = await writer.close_segment()
    before = state(storage, recorder.now)
    storage.armed = True
    assert compact(storage, upto=upto, config=CONFIG, server_id="s1", version="t", now=recorder.now)
    storage.armed = False
    steps = [what for what, _ in storage.cuts]
    assert any(w.startswith("before rename") for w in steps)
    assert sum(w.startswith("after unlink log-") for w in steps) >= 2
    for what, survivor in storage.cuts:
        assert state(survivor, recorder.now) == before, what
        assert not any(n.endswith(TMP_SUFFIX) for n in survivor.list()), what


async def test_compaction_on_real_files(tmp_path: Any) -> None:
    storage = OsStorage(tmp_path / "data")
    storage.lock()
    storage.unlock()
    recorder, closed = await written(storage, 11, steps=250)
    before = state(storage, recorder.now)
    result = compact(
        storage, upto=closed, config=CONFIG, server_id="s1", version="t", now=recorder.now
    )
    assert result is not None
    files = names(storage)
    assert snap_name(closed) in files
    assert all(parse_name(n) is not None and parse_name(n)[1] >= closed for n in files)  # type: ignore[index]
    assert state(storage, recorder.now) == before


async def test_a_bad_record_in_a_closed_file_fails_and_leaves_every_file() -> None:
    storage = MemoryStorage(3)
    recorder, closed = await written(storage, 3, steps=150)
    victim = log_name(2)
    data = bytearray(storage.contents(victim))
    data[-3] ^= 0x40
    storage.put_file(victim, bytes(data))
    files = names(storage)
    with pytest.raises(CompactionError, match=r"log-0+2\.aql at offset"):
        compact(storage, upto=closed, config=CONFIG, server_id="s1", version="t", now=recorder.now)
    assert names(storage) == files


async def test_a_failed_write_deletes_the_tmp_and_leaves_every_file() -> None:
    storage = MemoryStorage(4)
    recorder, closed = await written(storage, 4, steps=150)
    files = names(storage)
    storage.fail_fdatasync(1, errno.EIO)
    with pytest.raises(OSError, match="injected"):
        compact(storage, upto=closed, config=CONFIG, server_id="s1", version="t", now=recorder.now)
    assert names(storage) == files


def file_bytes(storage: MemoryStorage) -> int:
    return sum(len(storage.contents(n)) for n in names(storage))


async def test_compactor_triggers_after_rotation_and_keeps_the_byte_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "allq.store")
    storage = MemoryStorage(5)
    recorder = Recorder()
    rng = random.Random(5)
    async with await open_writer(storage, recorder, segment_bytes=2000) as writer:
        compactor = Compactor(
            storage,
            writer,
            config=CONFIG,
            server_id="s1",
            version="t",
            floor_bytes=8000,
            check_interval_s=0.05,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(compactor.run)
            for _ in range(30):
                await churn(writer, recorder, rng, 40)
                await trio.sleep(0.01)
            with trio.fail_after(10):
                while compactor.compactions < 2:  # noqa: ASYNC110 (polls a counter)
                    await trio.sleep(0.01)
            # A third compaction may be under way: the files change before the writer's
            # count does, so compare them while no compaction runs (its lock held).
            async with compactor._lock:
                assert compactor.due() is False or compactor.threshold() >= 8000
                assert writer.statistics().log_bytes == file_bytes(storage)
            nursery.cancel_scope.cancel()
        assert not compactor.failed
        assert "compaction: snap-" in caplog.text
    recovered = recover(storage)
    storage.unlock()
    assert recovered.snapshot > 0


async def test_compactor_failure_logs_error_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = MemoryStorage(6)
    recorder = Recorder()
    rng = random.Random(6)
    async with await open_writer(storage, recorder) as writer:
        await churn(writer, recorder, rng, 100)
        compactor = Compactor(storage, writer, config=CONFIG, server_id="s1", version="t")
        await writer.close_segment()
        # Let the writer's preparer finish any next segment (its create would otherwise
        # take the injected fault): the next create is then the snapshot's .tmp.
        await trio.testing.wait_all_tasks_blocked()
        storage.fail_create(1)
        assert await compactor.compact_now() is None
        assert compactor.failed
        assert "compaction failed, retrying in 60 s" in caplog.text
        assert compactor._retry_s == 120
        assert not writer.write_failed
        await churn(writer, recorder, rng, 30)
        result = await compactor.compact_now()
        assert result is not None
        assert compactor.stats()["compaction_failed"] is False
        assert compactor._retry_s == 60
        assert writer.statistics().log_bytes == file_bytes(storage)


async def test_a_real_server_compacts_under_load_and_restarts_with_the_same_jobs(
    tmp_path: Path,
) -> None:
    from allq.wire.keyfiles import keygen
    from tests.helpers.processes import AllqProcess, server_args
    from tests.test_persistence_process import client_of

    keygen(tmp_path / "keys", clients=1, force=False)
    keys, data = tmp_path / "keys", tmp_path / "data"
    extra = ("--data-dir", str(data), "--segment-bytes", "8192", "--sync", "always",
             "--compaction-floor-bytes", "30000")  # fmt: skip
    server = AllqProcess(tmp_path / "a.log", *server_args(keys, "p1"), *extra)
    try:
        async with client_of(keys, server) as client:
            live: set[str] = set()
            for n in range(600):
                job = await client.request("put", tube=f"t{n % 3}", body=b"b" * 200)
                live.add(str(job["id"]))
                if n % 3 == 0:
                    gone = min(live)
                    await client.request("delete", job_id=gone)
                    live.discard(gone)
            with trio.fail_after(30):
                while True:
                    stats = (await client.request("stats"))["persistence"]
                    if stats["compactions"] >= 2:
                        break
                    await trio.sleep(0.05)
            assert stats["compaction_failed"] is False
        assert server.stop() == 0
        snaps = [n for n in os.listdir(data) if n.startswith("snap-")]
        assert len(snaps) == 1
        restarted = AllqProcess(tmp_path / "b.log", *server_args(keys, "p1"), *extra)
        try:
            async with client_of(keys, restarted) as client:
                for job_id in live:
                    assert (await client.request("stats_job", job_id=job_id))["id"] == job_id
                total = 0
                for i in range(3):
                    total += (await client.request("stats_tube", tube=f"t{i}"))["ready"]
                assert total == len(live)
        finally:
            restarted.stop()
    finally:
        server.kill()


def _niceness_after_lowering() -> tuple[int, int]:
    before = os.nice(0)
    lower_priority()
    return before, os.nice(0)


def test_the_compaction_child_runs_at_a_lower_priority() -> None:
    # In a spawned process like the compaction child, so this test process keeps its own.
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        before, after = pool.apply(_niceness_after_lowering)
    assert after == min(19, before + COMPACTION_NICENESS)
