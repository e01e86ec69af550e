"""The adaptive-batching holder and its one release rule, with fake workers: where a request
goes at once, when held requests leave (room, a full batch, max_batch_time), to which worker,
and what becomes of cancelled ones."""

from __future__ import annotations

import asyncio

from pool_fakes import FakeConn, pending, run

from runtime_core.pools.batching import BatchHolder, least_busy, room
from runtime_core.pools.connection import Pending
from runtime_core.pools.dispatch import BATCH_DEPTH


def test_costly_requests_go_to_an_idle_worker_among_the_first_cores() -> None:
    busy, idle, spare = FakeConn(0, 1), FakeConn(1), FakeConn(2)
    assert room([busy, idle, spare], cheap=False, cores=2) is idle
    # The third worker is past the first max(2, cores): never woken for a costly request.
    assert room([busy, FakeConn(1, 1), spare], cheap=False, cores=2) is None
    assert room([busy, FakeConn(1, 1), spare], cheap=False, cores=3) is spare
    assert room([FakeConn(0, overdue=True), FakeConn(1, 2)], cheap=False, cores=1) is None


def test_cheap_requests_go_to_the_busiest_worker_with_room() -> None:
    light, heavy, full = FakeConn(0, 1), FakeConn(1, 5), FakeConn(2, BATCH_DEPTH)
    assert room([light, heavy, full], cheap=True, cores=2) is heavy
    assert room([full], cheap=True, cores=2) is None
    assert room([FakeConn(0, 5, overdue=True), light], cheap=True, cores=2) is light


def test_least_busy_prefers_workers_not_overdue_then_load_then_index() -> None:
    a, b, c = FakeConn(0, 3), FakeConn(1, 1, overdue=True), FakeConn(2, 1)
    assert least_busy([a, b, c]) is c
    assert least_busy([]) is None


class Pool:
    """The pool's side of a holder: its ready workers and what it was asked to send."""

    def __init__(self, workers: list[FakeConn], *, size: int = 3, wait: float = 0.05, cheap: bool = False) -> None:
        self.workers = workers
        self.cheap = cheap
        self.sent: list[tuple[Pending, FakeConn | None]] = []
        self.settled: list[Pending] = []
        self.holder: BatchHolder[FakeConn] = BatchHolder(
            size,
            wait,
            2,
            ready=lambda: self.workers,
            cheap=lambda: self.cheap,
            send=self.send,
            settled=self.settled.append,
        )

    def send(self, p: Pending, worker: FakeConn | None) -> None:
        self.sent.append((p, worker))
        if worker is not None:
            worker.send(p)


def test_a_request_goes_at_once_when_a_worker_has_room() -> None:
    async def main() -> None:
        idle = FakeConn(0)
        pool = Pool([FakeConn(1, 1), idle])
        p = pending()
        pool.holder.add(p)
        assert pool.sent == [(p, idle)] and len(pool.holder) == 0

    run(main)


def test_held_requests_leave_as_one_batch_when_it_is_full() -> None:
    async def main() -> None:
        a, b = FakeConn(0, 1), FakeConn(1, 2)
        pool = Pool([a, b], size=3, wait=10.0)
        ps = [pending(bytes([i])) for i in range(4)]
        for p in ps[:2]:
            pool.holder.add(p)
        assert pool.sent == [] and len(pool.holder) == 2
        pool.holder.add(ps[2])
        # A full batch waits on the least busy worker.
        assert [(p, w) for p, w in pool.sent] == [(ps[0], a), (ps[1], a), (ps[2], a)]
        pool.holder.add(ps[3])
        assert len(pool.holder) == 1
        pool.holder.take_all()

    run(main)


def test_held_requests_leave_after_max_batch_time() -> None:
    async def main() -> None:
        a = FakeConn(0, 1)
        pool = Pool([a, FakeConn(1, 1)], size=8, wait=0.02)
        p, q = pending(), pending()
        pool.holder.add(p)
        await asyncio.sleep(0.01)
        pool.holder.add(q)  # the timer runs from the oldest request, not moved by later ones
        await asyncio.sleep(0.03)
        assert [x for x, _ in pool.sent] == [p, q]
        assert {w for _, w in pool.sent} == {a}
        assert len(pool.holder) == 0

    run(main)


def test_a_worker_with_room_again_takes_what_is_held() -> None:
    async def main() -> None:
        a, b = FakeConn(0, 1), FakeConn(1, 1)
        pool = Pool([a, b], size=8, wait=10.0)
        p = pending()
        pool.holder.add(p)
        pool.holder.on_room()
        assert pool.sent == []
        b._extra = 0  # its request is done
        pool.holder.on_room()
        assert pool.sent == [(p, b)]

    run(main)


def test_cancelled_requests_never_reach_a_worker() -> None:
    async def main() -> None:
        a = FakeConn(0, 1)
        pool = Pool([a, FakeConn(1, 1)], size=2, wait=10.0)
        gone, kept = pending(), pending()
        pool.holder.add(gone)
        gone.future.cancel()
        pool.holder.add(kept)
        assert pool.settled == [gone]
        assert [p for p, _ in pool.sent] == [kept]

    run(main)


def test_with_no_worker_left_the_pool_dispatches_held_requests_itself() -> None:
    async def main() -> None:
        pool = Pool([FakeConn(0, 1), FakeConn(1, 1)], size=8, wait=0.01)
        p = pending()
        pool.holder.add(p)
        pool.workers = []
        await asyncio.sleep(0.03)
        assert pool.sent == [(p, None)]

    run(main)


def test_take_all_stops_holding() -> None:
    async def main() -> None:
        pool = Pool([FakeConn(0, 1), FakeConn(1, 1)], size=8, wait=0.01)
        ps = [pending(), pending()]
        for p in ps:
            pool.holder.add(p)
        assert pool.holder.take_all() == ps
        await asyncio.sleep(0.03)
        assert pool.sent == [] and len(pool.holder) == 0

    run(main)
