"""JobHeap: a binary min-heap of jobs that keeps each job's position in the job itself.

Charter: beanstalkd's `heap.c` with its `heap_index`: the heap is a list of jobs, a job's
key is read from the job, and its index is kept in one of its slots (`_pos`, or `_age_pos`
for the `by_age` heap), so an entry costs one list slot and one int instead of a key
tuple, an entry tuple and a map entry (performance.md B7). Same operations and costs as
`IndexedHeap`: `push`, `pop`, `remove(job)` and `update(job)` are O(log n); `peek`,
`__contains__` and `key_of` are O(1); `extend` adds many jobs with one sort (recovery).
Keys are tuples of numbers whose last element is a unique sequence number, so jobs are
never compared. A job's key fields must not change while it is in a heap, except through
`update` right after the change. A job is in at most one heap per position slot (`push`
refuses a second). `JobHeap(key)` serves any key (delayed, reserved, waiting);
`ReadyHeap` (`READY_KEY`) and `AgeHeap` (`AGE_KEY`) compare the job fields in place, the
hot path of every reserve. No I/O, no clock, no trio.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from operator import attrgetter, eq, itemgetter
from typing import Any, Final

from allq.tubes.job import Job

Key = tuple[Any, ...]
KeyOf = Callable[[Job], Key]

#: ready (non-fair heap, or one shard's heap): priority, then ready order.
READY_KEY: Final[KeyOf] = attrgetter("priority", "ready_seq")
# The keys below read a job's `JobExtra` (`_x`) directly: a delayed, reserved or waiting
# job always has one (its due_at, reserve_seq or parent is set).
#: delayed: due time, then put order.
DELAY_KEY: Final[KeyOf] = attrgetter("_x.due_at", "put_seq")
#: reserved: TTR deadline, then reserve order.
TTR_KEY: Final[KeyOf] = attrgetter("_x.ttr_deadline", "_x.reserve_seq")
#: waiting parents: timeout, then put order.
PARENT_KEY: Final[KeyOf] = attrgetter("_x.parent.timeout_at", "put_seq")
_FIRST: Final = itemgetter(0)
_READY_SEQ: Final = attrgetter("ready_seq")


def AGE_KEY(job: Job) -> Key:
    """by_age: every ready job in ready order (the heap orders by `ready_seq` itself)."""
    return (job.ready_seq,)


_POS: Final[Any] = Job.__dict__["_pos"]  # member descriptors of the position slots
_AGE_POS: Final[Any] = Job.__dict__["_age_pos"]


class JobHeap:
    """Min-heap of jobs by `key(job)`, with O(log n) removal of any job."""

    __slots__ = ("_entries", "_get", "_key", "_set")
    _SLOT: Any = _POS

    def __init__(self, key: KeyOf) -> None:
        self._entries: list[Job] = []
        self._key = key
        slot = type(self)._SLOT  # through the class: the descriptor itself
        self._get: Callable[[Job], int] = slot.__get__
        self._set: Callable[[Job, int], None] = slot.__set__

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, Job):
            return False
        index = self._get(item)
        entries = self._entries
        return 0 <= index < len(entries) and entries[index] is item

    def __iter__(self) -> Iterator[Job]:
        """Jobs in arbitrary (heap) order."""
        return iter(self._entries)

    def key_of(self, item: Job) -> Key:
        if item not in self:
            raise KeyError(item.id)
        return self._key(item)

    def peek(self) -> tuple[Key, Job] | None:
        if not self._entries:
            return None
        top = self._entries[0]
        return self._key(top), top

    def peek_item(self) -> Job | None:
        return self._entries[0] if self._entries else None

    def peek_key(self) -> Key | None:
        return self._key(self._entries[0]) if self._entries else None

    def push(self, item: Job, key: Key | None = None) -> None:
        """Add `item`; `key`, when given, must be its key (a check for the caller)."""
        if self._get(item) != -1:
            raise KeyError(f"job {item.id} is already in a heap")
        if key is not None and key != self._key(item):
            raise ValueError(f"key {key!r} is not the key of job {item.id}")
        entries = self._entries
        entries.append(item)
        self._sift_up(len(entries) - 1)

    def extend(self, jobs: Iterable[Job]) -> None:
        """Add many jobs at once: one sort by key (a sorted list is a valid heap), O(n) when
        they come (nearly) in key order, as recovery's do. The checks and the sort run in C
        (`map`, `set`, `list.sort`): recovery adds a million jobs here.

        Raises:
            KeyError: a job already in a heap or given twice (the heap is unchanged).
        """
        added = list(jobs)
        if not added:
            return
        get = self._get
        if max(map(get, added)) != -1:
            raise KeyError("a job is already in a heap")
        before = self._entries
        merged = before + added
        merged.sort(key=self._sort_key())
        self._entries = merged
        self._place_all()
        # A job given twice holds the position of one of its two places only.
        if not all(map(eq, map(get, merged), range(len(merged)))):
            for job in added:
                self._set(job, -1)
            self._entries = before
            self._place_all()
            raise KeyError("a job is given twice")

    def _sort_key(self) -> Callable[[Job], Any]:
        """A key that sorts jobs as `key` does (`extend`)."""
        return self._key

    def _place_all(self) -> None:
        """Write every job's position after the list was rebuilt."""
        entries = self._entries
        deque(map(self._set, entries, range(len(entries))), maxlen=0)

    def pop(self) -> tuple[Key, Job]:
        if not self._entries:
            raise IndexError("pop from an empty heap")
        top = self._entries[0]
        key = self._key(top)
        self._remove_at(0)
        return key, top

    def remove(self, item: Job) -> Key:
        """Remove `item` wherever it is; returns its key. KeyError if absent."""
        index = self._get(item)
        entries = self._entries
        if not (0 <= index < len(entries) and entries[index] is item):
            raise KeyError(item.id)
        key = self._key(item)
        self._remove_at(index)
        return key

    def discard(self, item: Job) -> None:
        if item in self:
            self._remove_at(self._get(item))

    def update(self, item: Job, key: Key | None = None) -> None:
        """Restore the order after `item`'s key fields changed (push it when absent)."""
        if item not in self:
            self.push(item, key)
            return
        if key is not None and key != self._key(item):
            raise ValueError(f"key {key!r} is not the key of job {item.id}")
        index = self._get(item)
        self._sift_up(index)
        self._sift_down(self._get(item))

    def due(self, bound: object) -> list[tuple[Key, Job]]:
        """Entries whose key starts with a value <= `bound`, in key order: O(k log k).

        Walks only the top of the heap (children of a larger key are larger too).
        """
        found: list[tuple[Key, Job]] = []
        entries = self._entries
        keyfn = self._key
        stack = [0] if entries else []
        while stack:
            index = stack.pop()
            job = entries[index]
            key = keyfn(job)
            if key[0] <= bound:
                found.append((key, job))
                child = 2 * index + 1
                if child < len(entries):
                    stack.append(child)
                    if child + 1 < len(entries):
                        stack.append(child + 1)
        found.sort(key=_FIRST)
        return found

    def sorted_items(self) -> list[tuple[Key, Job]]:
        """All entries in key order (O(n log n)); for stats and tests."""
        keyfn = self._key
        return sorted(((keyfn(job), job) for job in self._entries), key=_FIRST)

    def clear(self) -> None:
        setpos = self._set
        for job in self._entries:
            setpos(job, -1)
        self._entries.clear()

    def check_invariants(self) -> None:
        entries = self._entries
        keyfn = self._key
        for index, job in enumerate(entries):
            assert self._get(job) == index
            if index:
                assert keyfn(entries[(index - 1) // 2]) <= keyfn(job)
        assert len({id(job) for job in entries}) == len(entries)

    # -- internals -------------------------------------------------------------------

    def _remove_at(self, index: int) -> None:
        entries = self._entries
        removed = entries[index]
        last = entries.pop()
        self._set(removed, -1)
        if index < len(entries):
            entries[index] = last
            self._set(last, index)
            self._sift_up(index)
            self._sift_down(self._get(last))

    def _sift_up(self, index: int) -> None:
        entries = self._entries
        keyfn = self._key
        setpos = self._set
        job = entries[index]
        key = keyfn(job)
        while index > 0:
            parent = (index - 1) >> 1
            parent_job = entries[parent]
            if key < keyfn(parent_job):
                entries[index] = parent_job
                setpos(parent_job, index)
                index = parent
            else:
                break
        entries[index] = job
        setpos(job, index)

    def _sift_down(self, index: int) -> None:
        entries = self._entries
        keyfn = self._key
        setpos = self._set
        size = len(entries)
        job = entries[index]
        key = keyfn(job)
        while True:
            child = 2 * index + 1
            if child >= size:
                break
            child_key = keyfn(entries[child])
            right = child + 1
            if right < size:
                right_key = keyfn(entries[right])
                if right_key < child_key:
                    child, child_key = right, right_key
            if child_key < key:
                moved = entries[child]
                entries[index] = moved
                setpos(moved, index)
                index = child
            else:
                break
        entries[index] = job
        setpos(job, index)


class ReadyHeap(JobHeap):
    """The ready heap of a tube or of a shard: `READY_KEY`, compared in place."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(READY_KEY)

    def _sift_up(self, index: int) -> None:
        entries = self._entries
        job = entries[index]
        priority, seq = job.priority, job.ready_seq
        while index > 0:
            parent = (index - 1) >> 1
            above = entries[parent]
            if priority < above.priority or (priority == above.priority and seq < above.ready_seq):
                entries[index] = above
                above._pos = index
                index = parent
            else:
                break
        entries[index] = job
        job._pos = index

    def _sift_down(self, index: int) -> None:
        entries = self._entries
        size = len(entries)
        job = entries[index]
        priority, seq = job.priority, job.ready_seq
        while True:
            child = 2 * index + 1
            if child >= size:
                break
            below = entries[child]
            if child + 1 < size:
                right = entries[child + 1]
                if right.priority < below.priority or (
                    right.priority == below.priority and right.ready_seq < below.ready_seq
                ):
                    child, below = child + 1, right
            if below.priority < priority or (below.priority == priority and below.ready_seq < seq):
                entries[index] = below
                below._pos = index
                index = child
            else:
                break
        entries[index] = job
        job._pos = index


class AgeHeap(JobHeap):
    """A tube's `by_age` heap: every ready job by `ready_seq` (`AGE_KEY`), compared in
    place, with its position in the `_age_pos` slot (a ready job is in two heaps).

    When a job's place here equals its place in the ready heap (always so on a tube whose
    ready jobs share one priority: both heaps then order by `ready_seq` alike), `_age_pos`
    takes the very int object of `_pos`, one int per job instead of two.
    """

    __slots__ = ()
    _SLOT = _AGE_POS

    def __init__(self) -> None:
        super().__init__(AGE_KEY)

    def _sort_key(self) -> Callable[[Job], Any]:
        return _READY_SEQ  # the int itself: no Python call nor tuple per job

    def _place_all(self) -> None:
        for index, job in enumerate(self._entries):
            position = job._pos
            job._age_pos = position if position == index else index

    def _sift_up(self, index: int) -> None:
        entries = self._entries
        job = entries[index]
        seq = job.ready_seq
        while index > 0:
            parent = (index - 1) >> 1
            above = entries[parent]
            if seq < above.ready_seq:
                entries[index] = above
                above._age_pos = above._pos if above._pos == index else index
                index = parent
            else:
                break
        entries[index] = job
        job._age_pos = job._pos if job._pos == index else index

    def _sift_down(self, index: int) -> None:
        entries = self._entries
        size = len(entries)
        job = entries[index]
        seq = job.ready_seq
        while True:
            child = 2 * index + 1
            if child >= size:
                break
            below = entries[child]
            if child + 1 < size:
                right = entries[child + 1]
                if right.ready_seq < below.ready_seq:
                    child, below = child + 1, right
            if below.ready_seq < seq:
                entries[index] = below
                below._age_pos = below._pos if below._pos == index else index
                index = child
            else:
                break
        entries[index] = job
        job._age_pos = job._pos if job._pos == index else index
