"""IndexedHeap: a binary min-heap with a position map (beanstalkd's heap.c idea).

Charter: items are hashable handles (job ids, waiter ids, tube names); keys are tuples
that never compare payloads. `push`, `pop`, `remove(item)` and `update(item, key)` are
O(log n); `peek`, `__contains__` and `key_of` are O(1). No I/O, no clock, no trio.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)

# Keys are tuples of numbers (and occasionally strings); typed loosely on purpose.
Key = tuple[Any, ...]


class IndexedHeap(Generic[K]):
    """Min-heap of `(key, item)` pairs with O(log n) removal of any item."""

    __slots__ = ("_entries", "_pos")

    def __init__(self) -> None:
        self._entries: list[tuple[Key, K]] = []
        self._pos: dict[K, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __contains__(self, item: object) -> bool:
        return item in self._pos

    def __iter__(self) -> Iterator[K]:
        """Items in arbitrary (heap) order."""
        return (item for _, item in self._entries)

    def key_of(self, item: K) -> Key:
        return self._entries[self._pos[item]][0]

    def peek(self) -> tuple[Key, K] | None:
        return self._entries[0] if self._entries else None

    def peek_item(self) -> K | None:
        return self._entries[0][1] if self._entries else None

    def peek_key(self) -> Key | None:
        return self._entries[0][0] if self._entries else None

    def push(self, item: K, key: Key) -> None:
        if item in self._pos:
            raise KeyError(f"{item!r} is already in the heap")
        self._entries.append((key, item))
        self._pos[item] = len(self._entries) - 1
        self._sift_up(len(self._entries) - 1)

    def pop(self) -> tuple[Key, K]:
        if not self._entries:
            raise IndexError("pop from an empty heap")
        top = self._entries[0]
        self._remove_at(0)
        return top

    def remove(self, item: K) -> Key:
        """Remove `item` wherever it is; returns its key. KeyError if absent."""
        index = self._pos[item]
        key = self._entries[index][0]
        self._remove_at(index)
        return key

    def discard(self, item: K) -> None:
        if item in self._pos:
            self._remove_at(self._pos[item])

    def update(self, item: K, key: Key) -> None:
        """Change the key of `item` (push it when absent)."""
        index = self._pos.get(item)
        if index is None:
            self.push(item, key)
            return
        old = self._entries[index][0]
        self._entries[index] = (key, item)
        if key < old:
            self._sift_up(index)
        else:
            self._sift_down(index)

    def due(self, bound: object) -> list[tuple[Key, K]]:
        """Entries whose key starts with a value <= `bound`, in key order: O(k log k).

        Walks only the top of the heap (children of a larger key are larger too).
        """
        found: list[tuple[Key, K]] = []
        entries = self._entries
        stack = [0] if entries else []
        while stack:
            index = stack.pop()
            entry = entries[index]
            if entry[0][0] <= bound:
                found.append(entry)
                child = 2 * index + 1
                if child < len(entries):
                    stack.append(child)
                    if child + 1 < len(entries):
                        stack.append(child + 1)
        found.sort(key=lambda entry: entry[0])
        return found

    def sorted_items(self) -> list[tuple[Key, K]]:
        """All entries in key order (O(n log n)); for stats and tests."""
        return sorted(self._entries, key=lambda entry: entry[0])

    def clear(self) -> None:
        self._entries.clear()
        self._pos.clear()

    def check_invariants(self) -> None:
        entries = self._entries
        assert len(entries) == len(self._pos)
        for index, (key, item) in enumerate(entries):
            assert self._pos[item] == index
            if index:
                assert entries[(index - 1) // 2][0] <= key

    # -- internals -------------------------------------------------------------------

    def _remove_at(self, index: int) -> None:
        entries = self._entries
        removed = entries[index]
        last = entries.pop()
        del self._pos[removed[1]]
        if index < len(entries):
            entries[index] = last
            self._pos[last[1]] = index
            self._sift_up(index)
            self._sift_down(self._pos[last[1]])

    def _sift_up(self, index: int) -> None:
        entries = self._entries
        pos = self._pos
        entry = entries[index]
        while index > 0:
            parent = (index - 1) >> 1
            parent_entry = entries[parent]
            if entry[0] < parent_entry[0]:
                entries[index] = parent_entry
                pos[parent_entry[1]] = index
                index = parent
            else:
                break
        entries[index] = entry
        pos[entry[1]] = index

    def _sift_down(self, index: int) -> None:
        entries = self._entries
        pos = self._pos
        size = len(entries)
        entry = entries[index]
        while True:
            child = 2 * index + 1
            if child >= size:
                break
            right = child + 1
            if right < size and entries[right][0] < entries[child][0]:
                child = right
            if entries[child][0] < entry[0]:
                entries[index] = entries[child]
                pos[entries[index][1]] = index
                index = child
            else:
                break
        entries[index] = entry
        pos[entry[1]] = index
