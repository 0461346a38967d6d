"""The log writer (persistence.md §5, §9) over the storage double."""

from __future__ import annotations

import errno
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from allq.store.format import (
    log_name,
    parse_name,
)
from allq.store.log import LogWriter, SyncMode, WriteFailed, open_log_writer
from allq.store.recovery import recover
from allq.store.scanning import scan
from allq.store.storage import MemoryStorage
from tests.store.builders import jid, put


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a storage call on the Trio thread, so a mock clock does not jump meanwhile."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


@asynccontextmanager
async def writer(storage: MemoryStorage, sync: SyncMode, **kw: Any) -> AsyncIterator[LogWriter]:
    async with open_log_writer(
        storage,
        server_id="s1",
        version="test",
        seqs=lambda: {"ready_seq": 7},
        first_seq=kw.pop("first_seq", 1),
        prev=kw.pop("prev", 0),
        sync=sync,
        **kw,
    ) as log:
        yield log


def recovered_ids(storage: MemoryStorage) -> list[str]:
    return [str(c["id"]) for c in recover(storage).changes]


async def test_append_commit_close_and_recover() -> None:
    storage = MemoryStorage()
    async with writer(storage, "interval") as log:
        positions = [log.append([put(i)]) for i in range(20)]
        assert positions == sorted(positions)
        await log.commit(positions[-1])
        stats = log.statistics()
        assert (stats.sync, stats.segments, stats.active_segment) == ("interval", 1, 1)
        assert stats.log_bytes == len(storage.read(log_name(1)))
    assert storage.unsynced_bytes(log_name(1)) == 0  # clean shutdown syncs
    result = recover(storage)
    assert [c["id"] for c in result.changes] == [jid(i) for i in range(20)]
    assert result.seqs == {"ready_seq": 7}
    with pytest.raises(WriteFailed, match="closed"):
        log.append([put(99)])


async def test_rotation_chains_segments() -> None:
    storage = MemoryStorage()
    async with writer(storage, "never", segment_bytes=1000) as log:
        for i in range(40):
            await log.commit(log.append([put(i)]))
            await trio.lowlevel.checkpoint()
    stats = log.statistics()
    names = [n for n in storage.list() if parse_name(n)]
    assert len(names) == stats.segments >= 5
    assert stats.log_bytes == sum(len(storage.read(n)) for n in names)
    for name in names:
        assert scan(name, storage.read(name)).problem is None
        assert len(storage.read(name)) <= 1000 + 250
        assert storage.unsynced_bytes(name) == 0
    result = recover(storage)
    assert [c["id"] for c in result.changes] == [jid(i) for i in range(40)]
    assert result.next_seq == len(names) + 1


async def test_first_segment_names_its_predecessor() -> None:
    storage = MemoryStorage()
    async with writer(storage, "never", first_seq=5, prev=3):
        pass
    [meta] = scan(log_name(5), storage.read(log_name(5))).records[0].changes
    assert (meta["t"], meta["prev"], meta["server_id"], meta["seqs"]) == (
        "meta",
        3,
        "s1",
        {"ready_seq": 7},
    )


async def test_group_commit_many_committers_few_fdatasyncs() -> None:
    storage = MemoryStorage()
    gate = threading.Event()
    done: list[int] = []
    async with writer(storage, "always") as log:
        base = storage.fdatasyncs

        def hold() -> None:
            gate.wait(10)

        storage.fdatasync_hook = hold

        async def one(i: int) -> None:
            await log.commit(log.append([put(i)]))
            done.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
            assert done == []  # nobody is answered before an fdatasync covers them
            gate.set()
        assert sorted(done) == list(range(50))
        assert storage.fdatasyncs - base <= 2
        assert log.statistics().unsynced_bytes == 0
    assert sorted(recovered_ids(storage)) == [jid(i) for i in range(50)]


async def test_interval_mode_bounds_the_unsynced_age(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = MemoryStorage()
    async with writer(storage, "interval", sync_interval_ms=50, to_thread=inline) as log:
        base = storage.fdatasyncs
        for i in range(100):
            before = trio.current_time()
            await log.commit(log.append([put(i)]))
            assert trio.current_time() == before  # answers do not wait for the sync
            await trio.sleep(0.007)
        stats = log.statistics()
        assert stats.max_unsynced_age_s <= 0.05 + 1e-9
        assert 12 <= storage.fdatasyncs - base <= 16
        await trio.sleep(1)
        idle = storage.fdatasyncs
        await trio.sleep(10)
        assert storage.fdatasyncs == idle  # nothing unsynced, no fdatasync
        assert log.statistics().unsynced_bytes == 0


async def test_never_mode_syncs_only_at_close() -> None:
    storage = MemoryStorage()
    async with writer(storage, "never") as log:
        base = storage.fdatasyncs
        for i in range(10):
            await log.commit(log.append([put(i)]))
        await trio.sleep(0.1)
        assert storage.fdatasyncs == base
        assert log.statistics().unsynced_bytes > 0
    assert storage.unsynced_bytes(log_name(1)) == 0


async def _power_loss_run(
    sync: SyncMode, seed: int
) -> list[tuple[MemoryStorage, set[int], float, dict[int, float]]]:
    """Producers append and commit; at random moments a power-loss copy is taken."""
    rng = random.Random(seed)
    storage = MemoryStorage(seed)
    appended: dict[int, float] = {}
    acked: set[int] = set()
    cuts: list[tuple[MemoryStorage, set[int], float, dict[int, float]]] = []
    counter = iter(range(10**6))
    async with writer(
        storage, sync, sync_interval_ms=50, segment_bytes=2000, to_thread=inline
    ) as log:

        async def producer() -> None:
            for _ in range(40):
                i = next(counter)
                position = log.append([put(i, body=b"p" * rng.randrange(200))])
                appended[i] = trio.current_time()
                await log.commit(position)
                acked.add(i)
                await trio.sleep(rng.random() * 0.02)

        async def cutter() -> None:
            for _ in range(8):
                await trio.sleep(rng.random() * 0.1)
                copy = storage.survivor(zero_fill=rng.random() < 0.5)
                cuts.append((copy, set(acked), trio.current_time(), dict(appended)))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(producer)
            nursery.start_soon(cutter)
    return cuts


def _check_prefix(copy: MemoryStorage, appended: dict[int, float]) -> list[int]:
    ids = [int(str(c["id"])[3:]) for c in recover(copy).changes]
    order = sorted(appended, key=lambda i: (appended[i], i))
    assert ids == [i for i in order if i in set(ids)]
    return ids


@pytest.mark.parametrize("seed", range(4))
async def test_power_loss_always_loses_nothing_acknowledged(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    for copy, acked, _, appended in await _power_loss_run("always", seed):
        ids = _check_prefix(copy, appended)
        assert acked <= set(ids)


@pytest.mark.parametrize("seed", range(4))
async def test_power_loss_interval_loses_only_the_last_interval(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    lost_any = False
    for copy, _, cut_at, appended in await _power_loss_run("interval", seed):
        ids = set(_check_prefix(copy, appended))
        lost = [i for i in appended if i not in ids]
        lost_any |= bool(lost)
        assert all(appended[i] >= cut_at - 0.05 - 1e-9 for i in lost), (cut_at, lost)
    assert lost_any or seed > 0


# --- write failures (§9) ------------------------------------------------------------------


async def test_failed_write_truncates_and_fails_for_good(caplog: pytest.LogCaptureFixture) -> None:
    storage = MemoryStorage()
    async with writer(storage, "interval") as log:
        await log.commit(log.append([put(1)]))
        size = len(storage.read(log_name(1)))
        storage.short_writes = True
        storage.fail_write(2, errno.ENOSPC)
        with caplog.at_level(logging.ERROR, "allq.store"), pytest.raises(WriteFailed) as caught:
            log.append([put(2, body=b"z" * 500)])
        assert "No space left on device" in str(caught.value)
        assert str(caught.value).startswith("persistence failed; restart required")
        assert storage.read(log_name(1))[size:] == b""  # back to the last whole record
        assert log.statistics().write_failed
        with pytest.raises(WriteFailed):
            log.append([put(3)])
        with pytest.raises(WriteFailed):
            await log.commit(10**9)
    assert "persistence failed; restart required" in caplog.text
    assert recovered_ids(storage) == [jid(1)]


async def test_short_writes_are_completed() -> None:
    storage = MemoryStorage(3)
    storage.short_writes = True
    async with writer(storage, "always", segment_bytes=3000) as log:
        for i in range(30):
            await log.commit(log.append([put(i, body=b"q" * 100)]))
    assert recovered_ids(storage) == [jid(i) for i in range(30)]


async def test_write_making_no_progress_fails() -> None:
    storage = MemoryStorage()
    async with writer(storage, "interval") as log:
        storage.write_limit = 0
        with pytest.raises(WriteFailed, match="made no progress"):
            log.append([put(1)])
        assert log.write_failed


async def test_failed_fdatasync_fails_waiters_and_later_appends() -> None:
    storage = MemoryStorage()
    async with writer(storage, "always") as log:
        storage.fail_fdatasync(1, errno.EIO)
        position = log.append([put(1)])
        with pytest.raises(WriteFailed, match=r"fdatasync .* failed"):
            await log.commit(position)
        with pytest.raises(WriteFailed):
            log.append([put(2)])
        assert log.statistics().write_failed


async def test_failed_segment_preparation_fails_the_writer() -> None:
    storage = MemoryStorage()
    async with writer(storage, "interval", segment_bytes=1000) as log:
        storage.fail_create(1, errno.EDQUOT)

        async def fill() -> None:
            for i in range(100):
                await log.commit(log.append([put(i)]))
                await trio.lowlevel.checkpoint()

        with pytest.raises(WriteFailed, match="cannot prepare log segment"):
            await fill()
        assert log.write_failed
    assert storage.list() == [log_name(1)]


async def test_open_fails_when_the_first_segment_cannot_be_created() -> None:
    storage = MemoryStorage()
    storage.fail_create()
    with pytest.raises(WriteFailed, match="cannot prepare"):
        async with writer(storage, "interval"):
            pass  # pragma: no cover
