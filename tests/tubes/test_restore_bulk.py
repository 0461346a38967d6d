"""The bulk paths of `restore()` (performance.md B8): jobs placed at the end with one sort
per heap (`JobHeap.extend`, tested in test_jobheap.py), jobs the engine already held kept on
the one-change-at-a-time path, the garbage collector paused around the load.
"""

from __future__ import annotations

import gc
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allq import gcpause
from allq.tubes.changes import dump
from allq.tubes.replay import restore
from tests.helpers.engines import make_engine
from tests.tubes.test_changes import Recorder, assert_same, restored, step


@given(st.lists(step, max_size=80), st.integers(0, 100))
@settings(max_examples=100, deadline=None)
def test_restore_in_two_calls_equals_one(actions: list[tuple[Any, ...]], cut: int) -> None:
    """The second call finds jobs the engine already holds (placed) next to its own
    (pending until the end): state changes, deletes and clears of both kinds."""
    recorder = Recorder()
    for action in actions:
        recorder.run(action)
    live = recorder.engine
    log = [change for record in recorder.records for change in record]
    cut = min(cut, len(log))
    engine = make_engine(now=live.now, dedup_window=60)
    restore(engine, log[:cut])
    restore(engine, log[cut:])
    engine.check_invariants()
    assert_same(live, engine)


def test_fair_shards_join_the_rotation_in_ready_seq_order_of_their_heads() -> None:
    recorder = Recorder()
    for shard in ("s3", "s1", "s2"):
        recorder.call("put", tube="fq-c", shard_key=shard, body=b"x")
    recorder.call("put", tube="fq-c", shard_key="s1", body=b"y", priority=0)
    live = recorder.engine
    assert len(live.jobs) == 4
    back = restored([{"t": "meta", "seqs": live.sequences()}, *dump(live)], live.now)
    tube = back.tubes["fq-c"]
    heads = {shard: heap.peek_key() for shard, heap in tube.shards.items()}
    assert list(tube.rotation) == sorted(heads, key=lambda shard: heads[shard][1])  # type: ignore[index]
    assert list(tube.rotation) == ["s3", "s2", "s1"]  # s1's head is its newest (priority 0)


def test_paused_gc_restores_the_collector_state() -> None:
    assert gc.isenabled()
    with gcpause.paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gcpause.paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), gcpause.paused_gc():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_paused_gc_freezes_only_a_large_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpause, "FREEZE_ABOVE", 1000)
    gc.collect()
    frozen = gc.get_freeze_count()
    try:
        with gcpause.paused_gc():
            small = [[n] for n in range(10)]
        assert gc.get_freeze_count() == frozen
        with gcpause.paused_gc():
            large = [[n] for n in range(5000)]
        assert gc.get_freeze_count() >= frozen + 5000
    finally:
        gc.unfreeze()
    assert len(small) + len(large) == 5010


def test_a_shuffled_large_restore_keeps_every_order() -> None:
    """Puts, then state changes in random order: heaps built by one sort stay valid."""
    recorder = Recorder()
    rng = random.Random(7)
    for n in range(300):
        recorder.call("put", tube=rng.choice(["a", "b", "fq-c"]), priority=rng.randint(0, 3),
                      shard_key=f"s{n % 5}", delay=rng.choice([0, 0, 5]))  # fmt: skip
    for _ in range(100):
        jobs = recorder.call("reserve", tubes=["a", "b", "fq-c"])
        if jobs:
            job = jobs[0]
            verb = rng.choice(["bury", "release", "done"])
            recorder.call(verb, job_id=job["id"], lease=job["lease"])
    live = recorder.engine
    states = {job.state.value for job in live.jobs.values()}
    assert len(live.jobs) > 250
    assert states >= {"ready", "delayed", "buried"}
    log = [change for record in recorder.records for change in record]
    assert_same(live, restored(log, live.now))
