"""Effects the engine reports without being asked (semantics.md §8.2).

The shell collects them after every engine call and answers the waiters they name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Delivered:
    """A waiting reserve got jobs: reserved job views, each with its lease."""

    waiter: int
    jobs: list[dict[str, object]]


@dataclass(frozen=True, slots=True)
class WaitTimedOut:
    """A waiting reserve reached its timeout with nothing delivered (TIMED_OUT)."""

    waiter: int


@dataclass(frozen=True, slots=True)
class DeadlineSoon:
    """A waiter's owner holds a reservation within 1 s of its TTR deadline (§7.3)."""

    waiter: int


Effect = Delivered | WaitTimedOut | DeadlineSoon


@dataclass(frozen=True, slots=True)
class Waiting:
    """The result of a reserve that registered a waiter; the answer comes as an effect."""

    waiter: int
