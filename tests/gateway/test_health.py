"""HealthBook: transitions with explicit `now`; no trio, no clock."""

from __future__ import annotations

from allq.gateway.health import Health, HealthBook, HealthPolicy


def book() -> HealthBook:
    health = HealthBook(HealthPolicy(fail_after=3, recover_after=2, stale_after_s=10))
    health.add("a")
    return health


def test_new_server_is_down_until_probes_succeed() -> None:
    health = book()
    assert health.get("a").state is Health.DOWN
    assert not health.routable("a", 0.0)
    assert health.record_success("a", 0.001, 1.0) is None  # one success is not enough
    transition = health.record_success("a", 0.002, 2.0)
    assert transition is not None
    assert (transition.old, transition.new) == (Health.DOWN, Health.UP)
    assert health.routable("a", 2.0)
    assert health.get("a").rtt_s == 0.002


def test_failures_make_it_suspect_then_down() -> None:
    health = book()
    health.record_success("a", 0.001, 1.0)
    health.record_success("a", 0.001, 2.0)
    first = health.record_failure("a", "timeout", 3.0)
    assert first is not None
    assert first.new is Health.SUSPECT
    assert health.routable("a", 3.0)  # suspect still takes traffic
    assert health.record_failure("a", "timeout", 4.0) is None
    down = health.record_failure("a", "timeout", 5.0)
    assert down is not None
    assert (down.old, down.new, down.reason) == (Health.SUSPECT, Health.DOWN, "timeout")
    assert not health.routable("a", 5.0)
    assert health.record_failure("a", "again", 6.0) is None  # already down


def test_suspect_recovers_on_one_success_and_counts_reset() -> None:
    health = book()
    health.record_success("a", 0.001, 1.0)
    health.record_success("a", 0.001, 2.0)
    health.record_failure("a", "blip", 3.0)
    transition = health.record_success("a", 0.001, 4.0)
    assert transition is not None
    assert transition.new is Health.UP
    health.record_failure("a", "blip", 5.0)
    health.record_failure("a", "blip", 6.0)
    assert health.get("a").state is Health.SUSPECT  # the earlier failure was forgotten


def test_lost_connection_is_down_at_once() -> None:
    health = book()
    health.record_success("a", 0.001, 1.0)
    health.record_success("a", 0.001, 2.0)
    transition = health.record_failure("a", "connection lost", 3.0, fatal=True)
    assert transition is not None
    assert transition.new is Health.DOWN


def test_stale_server_is_not_routable() -> None:
    health = book()
    health.record_success("a", 0.001, 1.0)
    health.record_success("a", 0.001, 2.0)
    assert health.routable("a", 12.0)
    assert not health.routable("a", 12.001)
    assert not health.routable("unknown", 2.0)


def test_snapshot_and_remove() -> None:
    health = book()
    health.record_success("a", 0.0015, 1.0)
    assert health.statistics()["a"]["rtt_ms"] == 1.5
    health.remove("a")
    assert "a" not in health
