"""IndexedHeap: order equals a sorted model; remove/update anywhere keep the heap valid."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from allq.tubes.heap import IndexedHeap

operations = st.lists(
    st.tuples(
        st.sampled_from(["push", "pop", "remove", "update"]),
        st.integers(0, 30),
        st.integers(-5, 5),
    ),
    max_size=200,
)


@given(operations)
def test_heap_matches_sorted_model(ops: list[tuple[str, int, int]]) -> None:
    heap: IndexedHeap[int] = IndexedHeap()
    model: dict[int, tuple[int, int]] = {}
    for seq, (op, item, pri) in enumerate(ops):
        if op == "push" and item not in model:
            heap.push(item, (pri, seq))
            model[item] = (pri, seq)
        elif op == "pop" and model:
            key, popped = heap.pop()
            expected = min(model.items(), key=lambda kv: kv[1])
            assert (popped, key) == expected
            del model[popped]
        elif op == "remove" and item in model:
            assert heap.remove(item) == model.pop(item)
        elif op == "update" and item in model:
            heap.update(item, (pri, seq))
            model[item] = (pri, seq)
        heap.check_invariants()
        assert len(heap) == len(model)
        if model:
            assert heap.peek_item() == min(model.items(), key=lambda kv: kv[1])[0]
        else:
            assert heap.peek() is None


def test_push_twice_is_an_error() -> None:
    heap: IndexedHeap[str] = IndexedHeap()
    heap.push("a", (1,))
    try:
        heap.push("a", (2,))
    except KeyError:
        pass
    else:
        raise AssertionError("pushing an item twice must fail")
    assert heap.key_of("a") == (1,)
