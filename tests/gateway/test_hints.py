"""`ReadyHints` (pure): counts per (server, tube), reset on a short answer, bounded."""

from __future__ import annotations

from allq.gateway.hints import ReadyHints


def test_puts_count_up_and_reserves_count_down() -> None:
    hints = ReadyHints()
    hints.added("a", "t", 3)
    hints.added("a", "u")
    hints.added("b", "t", 0)
    assert hints.likely("a", ["t"]) == 3
    assert hints.likely("a", ["t", "u"]) == 4
    assert hints.likely("b", ["t"]) == 0
    hints.taken("a", ["t", "u"], ["t", "u"], asked=2)  # got all it asked for
    assert (hints.likely("a", ["t"]), hints.likely("a", ["u"])) == (2, 0)
    assert len(hints) == 1


def test_a_short_answer_means_nothing_left_in_those_tubes() -> None:
    hints = ReadyHints()
    hints.added("a", "t", 5)
    hints.added("a", "u", 5)
    hints.added("b", "t", 5)
    hints.taken("a", ["t"], ["t"], asked=3)  # one of three: "a" has no more in "t"
    assert hints.likely("a", ["t"]) == 0
    assert hints.likely("a", ["u"]) == 5  # a tube not asked for keeps its count
    assert hints.likely("b", ["t"]) == 5  # another server's count too
    hints.taken("b", ["t"], [], asked=1)  # empty answer
    assert hints.likely("b", ["t"]) == 0


def test_entries_are_bounded() -> None:
    hints = ReadyHints(max_entries=3)
    for tube in ("a", "b", "c"):
        hints.added("s", tube)
    hints.added("s", "a")  # an existing entry: no reset
    assert len(hints) == 3
    hints.added("s", "d")  # a fourth: start over
    assert len(hints) == 1
    assert hints.likely("s", ["d"]) == 1
