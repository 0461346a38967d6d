"""The compact job representation (performance.md B7): `JobHeap` against `IndexedHeap` with
explicit keys, the position slots, `Job`'s lazily made `JobExtra`, and shared `_terms`.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allq.tubes import job as job_module
from allq.tubes.heap import IndexedHeap
from allq.tubes.job import EXTRA_FIELDS, FIELDS, Job, JobState
from allq.tubes.jobheap import DELAY_KEY, READY_KEY, AgeHeap, JobHeap, ReadyHeap
from tests.helpers.engines import Driver


def make_job(n: int, *, priority: int = 5, ready_seq: int = 0, **extra: Any) -> Job:
    return Job(
        id=f"j{n}",
        tube="t",
        body=b"",
        priority=priority,
        ttr=60.0,
        expired_limit=3,
        max_releases=6,
        created_at=0.0,
        put_seq=n,
        state=JobState.READY,
        ready_seq=ready_seq,
        **extra,
    )


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 3)),
        st.tuples(st.just("pop")),
        st.tuples(st.just("remove"), st.integers(0, 40)),
        st.tuples(st.just("reprioritise"), st.integers(0, 40), st.integers(0, 3)),
        st.tuples(st.just("extend"), st.lists(st.integers(0, 3), max_size=6)),
        st.tuples(st.just("due"), st.integers(0, 4)),
    ),
    max_size=60,
)


@given(ops)
@settings(max_examples=300, deadline=None)
def test_job_heap_behaves_like_an_indexed_heap_with_explicit_keys(steps: list[Any]) -> None:
    heap = JobHeap(READY_KEY)
    model: IndexedHeap[Job] = IndexedHeap()
    jobs: list[Job] = []
    seq = 0

    def fresh(priority: int) -> Job:
        nonlocal seq
        seq += 1
        job = make_job(seq, priority=priority, ready_seq=seq)
        jobs.append(job)
        return job

    for step in steps:
        kind = step[0]
        if kind == "push":
            job = fresh(step[1])
            heap.push(job)
            model.push(job, (job.priority, job.ready_seq))
        elif kind == "pop":
            if model:
                assert heap.pop() == model.pop()
            else:
                with pytest.raises(IndexError):
                    heap.pop()
        elif kind == "remove":
            if jobs:
                job = jobs[step[1] % len(jobs)]
                if job in model:
                    assert heap.remove(job) == model.remove(job)
                else:
                    assert job not in heap
                    with pytest.raises(KeyError):
                        heap.remove(job)
        elif kind == "reprioritise":
            if jobs:
                job = jobs[step[1] % len(jobs)]
                job.priority = step[2]
                if job in model:
                    heap.update(job)
                    model.update(job, (job.priority, job.ready_seq))
        elif kind == "extend":
            added = [fresh(priority) for priority in step[1]]
            heap.extend(added)
            for job in added:
                model.push(job, (job.priority, job.ready_seq))
        else:
            assert heap.due(step[1]) == model.due(step[1])
        heap.check_invariants()
        assert len(heap) == len(model)
        assert heap.peek() == model.peek()
        assert heap.sorted_items() == model.sorted_items()
        for job in jobs:
            assert (job in heap) == (job in model)
            if job in model:
                assert heap.key_of(job) == model.key_of(job)
            else:
                assert job._pos == -1


def test_a_ready_job_is_in_its_ready_heap_and_in_by_age_at_once() -> None:
    ready, by_age = ReadyHeap(), AgeHeap()
    first, second = make_job(1, priority=9, ready_seq=1), make_job(2, priority=0, ready_seq=2)
    for job in (first, second):
        ready.push(job)
        by_age.push(job)
    assert ready.peek_item() is second
    assert by_age.peek_item() is first
    ready.check_invariants()
    by_age.check_invariants()
    delayed = JobHeap(DELAY_KEY)
    with pytest.raises(KeyError):
        delayed.push(first, (None, 1))  # the same position slot as `ready`: one heap at a time
    ready.remove(first)
    by_age.remove(first)
    assert (first._pos, first._age_pos) == (-1, -1)
    by_age.clear()
    assert second._age_pos == -1
    assert second in ready


def test_keys_given_to_a_job_heap_must_be_the_jobs_keys() -> None:
    heap = JobHeap(READY_KEY)
    job = make_job(1, ready_seq=1)
    other = make_job(2, ready_seq=2)
    with pytest.raises(ValueError):
        heap.push(job, (4, 1))
    with pytest.raises(KeyError):
        heap.extend([other, job, job])
    assert not heap
    assert (job._pos, other._pos) == (-1, -1)
    heap.push(job, (5, 1))
    with pytest.raises(KeyError):
        heap.extend([other, job])
    assert list(heap) == [job]
    assert other._pos == -1


def test_rare_fields_read_as_defaults_until_written() -> None:
    job = make_job(1)
    assert not has_extra(job)
    for name, default in EXTRA_FIELDS.items():
        assert getattr(job, name) == default
        setattr(job, name, default)  # writing a default makes no record
    assert not has_extra(job)
    job.prev_ready_since = 0  # an int 0 is not the float default: kept as written
    assert has_extra(job)
    assert type(job.prev_ready_since) is int
    job.reserves += 1
    assert (job.reserves, job.timeouts, job.lease) == (1, 0, None)


def test_the_constructor_takes_every_field_by_keyword() -> None:
    values: dict[str, Any] = {name: f"v-{name}" for name in FIELDS}
    values.update(ttr=1.5, expired_limit=2, max_releases=4, state=JobState.BURIED)
    job = Job(**values)
    assert {name: getattr(job, name) for name in FIELDS} == values
    with pytest.raises(TypeError):
        Job(**values, colour="red")


def test_equal_terms_are_one_object_and_keep_their_types() -> None:
    a, b = make_job(1), make_job(2)
    assert a._terms is b._terms
    c = Job(**{**_fields(a), "ttr": 60})  # an int ttr is kept as an int, never shared
    assert type(c.ttr) is int
    assert c._terms is not a._terms
    a.max_releases = 7
    assert (a.ttr, a.expired_limit, a.max_releases) == (60.0, 3, 7)
    assert (b.ttr, b.expired_limit, b.max_releases) == (60.0, 3, 6)


def test_shared_terms_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_module, "_shared_terms", {})
    monkeypatch.setattr(job_module, "SHARED_TERMS_MAX", 2)
    jobs = [Job(**{**_fields(make_job(n)), "ttr": float(n)}) for n in range(4)]
    assert len(job_module._shared_terms) == 2
    assert [job.ttr for job in jobs] == [0.0, 1.0, 2.0, 3.0]


def test_a_plain_put_makes_no_extra_record() -> None:
    d = Driver()
    job = d.engine.jobs[d.put()]
    assert not has_extra(job), "a queued ready job carries only its core slots"
    d.reserve_one()
    assert has_extra(job)
    assert job.reserves == 1


def _fields(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in FIELDS}


def has_extra(job: Job) -> bool:
    return job._x is not None
