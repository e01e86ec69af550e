"""The dispatch policy on fake workers: pack, cores and spread, overdue workers passed over,
full workers skipped unless the request is a retry."""

from __future__ import annotations

from pool_fakes import FakeConn

from runtime_core.pools.dispatch import BATCH_DEPTH, PACK_BELOW, Dispatch


def test_unmeasured_or_cheap_batching_requests_are_packed_onto_the_busiest_worker_with_room() -> None:
    policy = Dispatch(True, 2, BATCH_DEPTH, cores=2)
    assert policy.mode == "pack" and policy.per_worker == BATCH_DEPTH
    a, b, full = FakeConn(0, 1), FakeConn(1, 3), FakeConn(2, BATCH_DEPTH)
    assert policy.pick([a, b, full]) is b
    assert policy.pick([full]) is None
    assert policy.pick([full], full_ok=True) is full  # a retry takes a worker past its depth


def test_costly_batching_requests_go_to_the_least_busy_of_the_first_cores() -> None:
    policy = Dispatch(True, 2, BATCH_DEPTH, cores=2)
    for _ in range(40):
        policy.observe(PACK_BELOW * 10)
    assert policy.mode == "cores"
    first, second, extra = FakeConn(0, 2), FakeConn(1, 1), FakeConn(2, 0)
    assert policy.pick([first, second, extra]) is second  # not the idle third: past the cores
    second._extra = first._extra = BATCH_DEPTH
    assert policy.pick([first, second, extra]) is extra  # overflow once those are full


def test_requests_of_runtimes_that_do_not_batch_are_spread() -> None:
    policy = Dispatch(False, 2, BATCH_DEPTH, cores=2)
    assert policy.mode == "spread" and policy.per_worker == 2
    a, b = FakeConn(0, 1), FakeConn(1, 0)
    assert policy.pick([a, b]) is b
    assert policy.pick([FakeConn(0, 2), FakeConn(1, 2)]) is None


def test_an_overdue_worker_is_passed_over_while_a_sibling_has_room() -> None:
    policy = Dispatch(False, 2, BATCH_DEPTH, cores=2)
    stuck, busy = FakeConn(0, 0, overdue=True), FakeConn(1, 1)
    assert policy.pick([stuck, busy]) is busy
    assert policy.pick([stuck]) is stuck
