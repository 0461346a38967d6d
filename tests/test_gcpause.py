"""`allq.gcpause.GrowthFreezer`: the heap is frozen as live jobs grow, unfrozen when they
shrink, so full collections walk only what was put since the last freeze."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from allq.gcpause import GrowthFreezer


@pytest.fixture
def clean_freeze() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class Node:
    """A container the collector tracks."""

    def __init__(self) -> None:
        self.other: object = None


@pytest.mark.usefixtures("clean_freeze")
def test_freezes_every_step_of_growth_and_unfreezes_when_drained() -> None:
    freezer = GrowthFreezer(step=100)
    kept = [Node() for _ in range(1000)]
    freezer.note(99)
    assert gc.get_freeze_count() == 0
    freezer.note(100)
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept)  # everything alive went to the permanent generation
    freezer.note(150)  # less than a step more: nothing new
    assert gc.get_freeze_count() == frozen
    kept += [Node() for _ in range(500)]
    freezer.note(200)
    assert gc.get_freeze_count() >= frozen + 500
    assert freezer.freezes == 2
    freezer.note(60)  # a quarter of 200 is 50: not yet
    assert gc.get_freeze_count() > 0
    freezer.note(49)
    assert gc.get_freeze_count() == 0
    assert freezer.frozen_at == 0


@pytest.mark.usefixtures("clean_freeze")
def test_a_cycle_caught_by_a_freeze_is_collected_after_the_unfreeze() -> None:
    freezer = GrowthFreezer(step=10)
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle, alive when the heap is frozen
    freezer.note(10)
    probe = weakref.ref(a)
    del a, b
    gc.collect()
    assert probe() is not None  # frozen: the collector does not look at it
    freezer.note(1)  # drained: unfreeze
    gc.collect()
    assert probe() is None
