"""The worker group both backends share, with fake connections: which workers are ready, what
becomes of a lost worker's requests (retry once, 503, 504), hang verdicts, unload and drain."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from pool_fakes import FakeConn, pending, run

from runtime_core.control import Unload, WorkerLoadFailed, WorkerReady
from runtime_core.errors import DeadlineExceeded, RuntimeCoreError, WorkerDied
from runtime_core.messages import control_frame
from runtime_core.pools.connection import HEARTBEAT, Connection, Pending
from runtime_core.pools.dispatch import BATCH_DEPTH
from runtime_core.pools.workers import WorkerGroup, dispatch_for


def group(size: int = 2) -> WorkerGroup:
    return WorkerGroup("m", size, worker_timeout=10.0, overdue_after=1.0)


class Fate:
    """What ``requeue`` decided, per request."""

    def __init__(self, retry_ok: bool = True) -> None:
        self.retry_ok = retry_ok
        self.retried: list[Pending] = []
        self.failed: list[tuple[Pending, RuntimeCoreError]] = []
        self.settled: list[Pending] = []

    def kw(self) -> dict[str, Any]:
        return {"retry": self.retry, "fail": self.fail, "settled": self.settled.append}

    def retry(self, p: Pending) -> bool:
        if self.retry_ok:
            p.retried = True
            self.retried.append(p)
        return self.retry_ok

    def fail(self, p: Pending, error: RuntimeCoreError) -> None:
        self.failed.append((p, error))
        p.future.set_exception(error)


def test_ready_lists_only_ready_connections_by_index() -> None:
    g = group(3)
    assert g.ready() == []  # no worker at all: the host-served model's case
    a, b = FakeConn(0), FakeConn(2, ready=False)
    g.workers[0], g.workers[2] = cast(Connection, a), cast(Connection, b)
    assert g.ready() == [a]
    assert g.has_live and g.live() == [a, b]
    b.ready = True
    assert g.ready() == [a, b]


def test_a_lost_workers_requests_retry_once_else_503_and_the_overdue_one_504() -> None:
    async def main() -> None:
        g = group()
        fresh, again, late, cancelled = pending(), pending(retried=True), pending(), pending()
        cancelled.future.cancel()
        fate = Fate()
        g.requeue([fresh, again, late, cancelled], {id(late)}, closing=False, **fate.kw())
        assert fate.retried == [fresh] and fresh.retried
        assert fate.settled == [cancelled]
        errors = {id(p): e for p, e in fate.failed}
        assert isinstance(errors[id(again)], WorkerDied)
        assert str(errors[id(again)]) == "model 'm': the worker running the request died"
        assert isinstance(errors[id(late)], DeadlineExceeded)
        assert "ran longer than worker_timeout (10 s); its worker was replaced" in str(errors[id(late)])

    run(main)


def test_nothing_is_retried_while_closing_or_when_no_worker_can_take_it() -> None:
    async def main() -> None:
        g = group()
        closing = Fate()
        a = pending()
        g.requeue([a], set(), closing=True, **closing.kw())
        assert not closing.retried and isinstance(closing.failed[0][1], WorkerDied)
        nowhere = Fate(retry_ok=False)
        b = pending()
        g.requeue([b], set(), closing=False, **nowhere.kw())
        assert not b.retried and isinstance(nowhere.failed[0][1], WorkerDied)

    run(main)


def test_watch_kills_a_worker_whose_request_ran_past_worker_timeout(caplog: Any) -> None:
    async def main() -> None:
        g = group()
        conn = Connection(0, lambda _: None)
        p = pending()
        conn.pending[1] = p
        p.sent_at = 100.0
        assert not g.watch(100.5, conn, "worker 0 (pid 1)")
        assert not conn.overdue
        assert not g.watch(102.0, conn, "worker 0 (pid 1)")
        assert conn.overdue  # past overdue_after: dispatch prefers its siblings
        assert g.watch(111.0, conn, "worker 0 (pid 1)")
        assert conn.timed_out == {id(p)}

    run(main)
    assert "model 'm': worker 0 (pid 1) gave no answer in 10 s; killing it" in caplog.text


def test_watch_kills_an_idle_worker_that_leaves_a_heartbeat_unanswered(caplog: Any) -> None:
    async def main() -> None:
        g = group()
        conn = Connection(0, lambda _: None)
        conn.ready = True
        assert not g.watch(HEARTBEAT + 1, conn, "Ray actor m/1")  # sends a Ping
        assert conn.ping_sent
        assert g.watch(HEARTBEAT + 100, conn, "Ray actor m/1")

    run(main)
    assert "model 'm': Ray actor m/1 stopped answering heartbeats; killing it" in caplog.text


def test_load_error_reads_a_workers_hello() -> None:
    assert WorkerGroup.load_error(WorkerReady(pid=1, index=0, seconds=0.0)) is None
    assert WorkerGroup.load_error(WorkerLoadFailed("boom")) == "boom"
    assert WorkerGroup.load_error(object()) == "unexpected reply"


def test_unload_asks_every_live_worker_then_kills_those_that_stay() -> None:
    async def main() -> None:
        g = group(3)
        quits, stays, dead = FakeConn(0), FakeConn(1), FakeConn(2)
        dead.alive = False
        conns = [quits, stays, dead]

        def exit_on_unload(frame: bytes) -> None:
            quits.frames.append(frame)
            quits.alive = False

        quits.write = exit_on_unload  # type: ignore[method-assign]
        started = time.monotonic()
        await g.unload(lambda: cast(list[Connection | None], conns), 0.1)
        assert time.monotonic() - started < 2
        unload = control_frame(0, Unload())
        assert quits.frames == [unload] and stays.frames == [unload] and dead.frames == []
        assert not quits.killed and stays.killed and not dead.killed
        assert not stays.ready

    run(main)


def test_drain_waits_while_busy_up_to_grace() -> None:
    async def main() -> None:
        left = [3]

        def busy() -> bool:
            left[0] -= 1
            return left[0] > 0

        await WorkerGroup.drain(5.0, busy, poll=0.001)
        assert left[0] == 0
        started = time.monotonic()
        await WorkerGroup.drain(0.05, lambda: True, poll=0.01)
        assert time.monotonic() - started < 1

    run(main)


def test_background_tasks_are_kept_then_cancelled() -> None:
    async def main() -> None:
        g = group()
        g.background(asyncio.sleep(10))
        assert len(g.tasks) == 1
        g.cancel_background()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not g.tasks

    run(main)


@pytest.mark.parametrize(
    ("batchable", "pipeline", "batch", "per_worker"),
    [(False, 2, 1, 2), (True, 2, 1, BATCH_DEPTH), (True, 2, 32, 32), (False, 2, 4, 4)],
)
def test_dispatch_depths_are_the_same_rule_for_both_backends(
    batchable: bool, pipeline: int, batch: int, per_worker: int
) -> None:
    assert dispatch_for(batchable, pipeline, batch, cores=2).per_worker == per_worker


def test_no_worker_error_names_the_model() -> None:
    error = group().no_worker()
    assert isinstance(error, WorkerDied) and str(error) == "model 'm': no worker can take the request"
