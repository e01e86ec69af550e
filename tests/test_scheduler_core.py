"""FairScheduler on its own, in one event loop, with pools whose requests the test finishes
by hand: shares, the budget and its idle pass, queue bounds, deadlines, cancellation,
removal, drain and CPU priorities, each checked by counting what reached which pool.

The scheduler's cost must not depend on the number of models (#9): with ten thousand idle
models, dispatch reads only the pools of the models that have work.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from runtime_core.cpupriority import CHEAP_HOLD
from runtime_core.envelope import Envelope, Outcome
from runtime_core.errors import DeadlineExceeded, ModelNotReady, QueueFull
from runtime_core.scheduler import FairScheduler


class Cpu:
    """The requests in flight in every pool of a test, in the order they were sent: the
    test finishes the oldest, as one processor running them in turn would."""

    def __init__(self) -> None:
        self.running: list[tuple[FakePool, Envelope, asyncio.Future[Outcome]]] = []
        self.done: list[str] = []

    def finish(self, cost: float | None = None) -> str:
        pool, envelope, future = self.running.pop(0)
        pool.finish(envelope, future, pool.cost if cost is None else cost)
        self.done.append(pool.name)
        return pool.name


class FakePool:
    """A pool that only records: reads of its sizes, what was sent, priority changes.

    It has the methods of ``runtime_core.pools.base.ModelPool`` (the scheduler's whole view of
    a pool), written out so that each read can be counted."""

    on_capacity: Callable[[], None] = staticmethod(lambda: None)

    def __init__(self, name: str, cpu: Cpu, *, capacity: int = 1, parallelism: int = 1, cost: float = 0.01) -> None:
        self.name = name
        self.cpu = cpu
        self.cost = cost
        self._capacity = capacity
        self._parallelism = parallelism
        self._inflight = 0
        self.sent: list[bytes] = []
        self.reads = 0
        self.background = False
        self.priority_calls = 0

    async def start(self) -> None:
        pass

    def submit(self, envelope: Envelope) -> asyncio.Future[Outcome]:
        assert self._inflight < self._capacity, "the scheduler sent past the pool's capacity"
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._inflight += 1
        self.sent.append(bytes(envelope.payload))
        self.cpu.running.append((self, envelope, future))
        return future

    def finish(self, envelope: Envelope, future: asyncio.Future[Outcome], cost: float) -> None:
        self._inflight -= 1
        future.set_result(Outcome(0, b"ok:" + bytes(envelope.payload), compute=cost, cpu=cost))
        self.on_capacity()

    @property
    def capacity(self) -> int:
        self.reads += 1
        return self._capacity

    @property
    def inflight(self) -> int:
        self.reads += 1
        return self._inflight

    @property
    def parallelism(self) -> int:
        self.reads += 1
        return self._parallelism

    def health(self) -> None:
        pass

    def set_background(self, background: bool) -> bool:
        self.priority_calls += 1
        self.background = background
        return True

    def set_nice(self, nice: int) -> None:
        self.priority_calls += 1

    async def aclose(self, grace: float = 30.0) -> None:
        pass


async def settle() -> None:
    """Let the loop run every callback already scheduled (done callbacks, woken tasks)."""
    for _ in range(5):
        await asyncio.sleep(0)


def start(scheduler: FairScheduler, key: str, payload: str = "x", deadline: float = 0.0) -> asyncio.Task[Outcome]:
    return asyncio.get_running_loop().create_task(scheduler.submit(key, Envelope(payload.encode(), deadline=deadline)))


def test_weights_split_executions_of_equal_cost_two_to_one() -> None:
    async def main() -> None:
        cpu = Cpu()
        scheduler = FairScheduler(budget=1, cpu_priority=False)
        scheduler.add("gold", FakePool("gold", cpu), weight=2)
        scheduler.add("iron", FakePool("iron", cpu), weight=1)
        tasks = [start(scheduler, m) for _ in range(60) for m in ("gold", "iron")]
        await settle()
        for _ in range(6):  # the idle passes and the cost estimates settle
            cpu.finish()
            await settle()
        cpu.done.clear()
        for _ in range(60):
            cpu.finish()
            await settle()
        shares = Counter(cpu.done)
        assert 39 <= shares["gold"] <= 41, cpu.done
        for task in tasks:
            task.cancel()
        await settle()

    asyncio.run(main())


def test_equal_weights_share_compute_not_requests() -> None:
    async def main() -> None:
        cpu = Cpu()
        scheduler = FairScheduler(budget=1, cpu_priority=False)
        scheduler.add("cheap", FakePool("cheap", cpu, cost=0.01))
        scheduler.add("dear", FakePool("dear", cpu, cost=0.03))
        tasks = [start(scheduler, m) for _ in range(80) for m in ("cheap", "dear")]
        await settle()
        for _ in range(8):
            cpu.finish()
            await settle()
        cpu.done.clear()
        for _ in range(60):
            cpu.finish()
            await settle()
        shares = Counter(cpu.done)
        # One 30 ms request counts as much as three 10 ms ones: 45 cheap to 15 dear.
        assert 43 <= shares["cheap"] <= 47, cpu.done
        for task in tasks:
            task.cancel()
        await settle()

    asyncio.run(main())


def test_a_newly_active_model_is_served_at_once_and_banks_no_credit() -> None:
    async def main() -> None:
        cpu = Cpu()
        scheduler = FairScheduler(budget=1, cpu_priority=False)
        busy, late = FakePool("busy", cpu), FakePool("late", cpu)
        scheduler.add("busy", busy)
        scheduler.add("late", late)
        flood = [start(scheduler, "busy") for _ in range(100)]
        await settle()
        for _ in range(40):  # "late" sits idle while "busy" runs alone
            cpu.finish()
            await settle()
        newcomers = [start(scheduler, "late") for _ in range(10)]
        await settle()
        assert len(late.sent) == 1  # past the budget, behind no completion at all
        cpu.done.clear()
        for _ in range(10):
            cpu.finish()
            await settle()
        # Its idle time bought it nothing: the two models alternate instead of "late"
        # running its whole backlog first.
        assert 4 <= Counter(cpu.done)["busy"] <= 6, cpu.done
        for task in flood + newcomers:
            task.cancel()
        await settle()

    asyncio.run(main())


def test_the_budget_holds_busy_models_and_lets_an_idle_models_first_request_pass() -> None:
    async def main() -> None:
        cpu = Cpu()
        scheduler = FairScheduler(budget=2, cpu_priority=False)
        heavy, light = FakePool("heavy", cpu, capacity=4), FakePool("light", cpu, capacity=4)
        scheduler.add("heavy", heavy)
        scheduler.add("light", light)
        flood = [start(scheduler, "heavy") for _ in range(6)]
        await settle()
        assert len(heavy.sent) == 4  # alone, a model may fill its pool
        probes = [start(scheduler, "light", f"p{i}") for i in range(3)]
        await settle()
        assert light.sent == [b"p0"]  # the idle model's first request passes the budget ...
        for _ in range(3):
            cpu.finish()
            await settle()
        # ... its next ones do not: 5 -> 2 in flight, and nothing new was sent until then.
        assert len(heavy.sent) + len(light.sent) == 5
        cpu.finish()
        await settle()
        assert len(heavy.sent) + len(light.sent) == 6
        while cpu.running:
            cpu.finish()
            await settle()
        assert [t.result().body for t in probes] == [b"ok:p0", b"ok:p1", b"ok:p2"]
        assert all(t.done() for t in flood)

    asyncio.run(main())


def test_a_full_queue_is_refused_at_once_with_retry_after() -> None:
    async def main() -> None:
        cpu = Cpu()
        scheduler = FairScheduler(cpu_priority=False)
        scheduler.add("narrow", FakePool("narrow", cpu), max_queue=2)
        tasks = [start(scheduler, "narrow") for _ in range(3)]  # one sent, two queued
        await settle()
        with pytest.raises(QueueFull) as refused:
            await scheduler.submit("narrow", Envelope(b"x"))
        assert "'narrow'" in str(refused.value) and refused.value.retry_after >= 1
        assert scheduler.stats()["narrow"].rejected == 1
        while cpu.running:
            cpu.finish()
            await settle()
        assert [t.result().code for t in tasks] == [0, 0, 0]

    asyncio.run(main())


def test_a_request_whose_deadline_passed_in_the_queue_never_reaches_the_pool() -> None:
    async def main() -> None:
        cpu = Cpu()
        pool = FakePool("slow", cpu)
        scheduler = FairScheduler(cpu_priority=False)
        scheduler.add("slow", pool)
        seen: list[Any] = []
        scheduler.observers.append(lambda model, result, *_: seen.append(result))
        first = start(scheduler, "slow", "first")
        await settle()
        late = start(scheduler, "slow", "late", deadline=1.0)  # long past
        after = start(scheduler, "slow", "after")
        await settle()
        cpu.finish()
        await settle()
        with pytest.raises(DeadlineExceeded, match="'slow'"):
            await late
        assert pool.sent == [b"first", b"after"]
        cpu.finish()
        assert (await first).code == 0 and (await after).code == 0
        assert DeadlineExceeded.code in seen and scheduler.stats()["slow"].expired == 1

    asyncio.run(main())


def test_a_cancelled_queued_request_never_reaches_the_pool() -> None:
    async def main() -> None:
        cpu = Cpu()
        pool = FakePool("slow", cpu)
        scheduler = FairScheduler(cpu_priority=False)
        scheduler.add("slow", pool)
        first = start(scheduler, "slow", "first")
        gone = start(scheduler, "slow", "gone")
        await settle()
        gone.cancel()
        await settle()
        cpu.finish()
        await settle()
        following = start(scheduler, "slow", "next")
        await settle()
        cpu.finish()
        assert (await first).code == 0 and (await following).code == 0
        assert pool.sent == [b"first", b"next"] and gone.cancelled()
        assert scheduler.stats()["slow"].cancelled == 1

    asyncio.run(main())


def test_removing_a_model_fails_its_queued_requests_and_finishes_the_sent_one() -> None:
    async def main() -> None:
        cpu = Cpu()
        pool, other = FakePool("gone", cpu), FakePool("other", cpu)
        scheduler = FairScheduler(cpu_priority=False)
        scheduler.add("gone", pool)
        scheduler.add("other", other)
        sent = start(scheduler, "gone", "sent")
        queued = [start(scheduler, "gone", f"q{i}") for i in range(3)]
        await settle()
        assert scheduler.remove("gone") is pool
        await settle()
        for task in queued:
            with pytest.raises(ModelNotReady, match="'gone' was unloaded"):
                await task
        with pytest.raises(ModelNotReady):
            await scheduler.submit("gone", Envelope(b"x"))
        cpu.finish()
        assert (await sent).body == b"ok:sent"
        assert pool.sent == [b"sent"]
        probe = start(scheduler, "other")
        await settle()
        cpu.finish()
        assert (await probe).code == 0

    asyncio.run(main())


def test_drain_waits_for_queued_and_sent_requests() -> None:
    async def main() -> None:
        cpu = Cpu()
        scheduler = FairScheduler(cpu_priority=False)
        scheduler.add("m", FakePool("m", cpu))
        tasks = [start(scheduler, "m") for _ in range(2)]
        await settle()
        scheduler.close()
        assert not await scheduler.drain(0.01)  # nothing can finish while the test holds them
        draining = asyncio.get_running_loop().create_task(scheduler.drain(30))
        cpu.finish()
        await settle()
        assert not draining.done()
        cpu.finish()
        assert await draining
        assert [t.result().code for t in tasks] == [0, 0]

    asyncio.run(main())


def test_a_modest_model_puts_saturated_ones_in_the_background_until_it_is_done() -> None:
    async def main() -> None:
        cpu = Cpu()
        flooded, modest = FakePool("flooded", cpu, capacity=4), FakePool("modest", cpu, capacity=4)
        scheduler = FairScheduler()
        scheduler.add("flooded", flooded)
        scheduler.add("modest", modest)
        flood = [start(scheduler, "flooded") for _ in range(4)]
        await settle()
        assert not flooded.background  # alone, a busy model keeps normal priority
        probe = start(scheduler, "modest")
        await settle()
        assert flooded.background and not modest.background
        while cpu.running[0][0] is not modest:  # run the probe first
            cpu.running.append(cpu.running.pop(0))
        cpu.finish()
        await probe
        await settle()
        assert not flooded.background
        while cpu.running:
            cpu.finish()
            await settle()
        assert all(t.done() for t in flood)

    asyncio.run(main())


def test_a_flooded_costly_model_yields_to_a_cheap_one_between_its_requests_too() -> None:
    """A cheap model at a steady rate is idle between its requests: the costly model's workers
    stay at SCHED_IDLE through those gaps (CHEAP_HOLD) instead of flipping twice per request,
    and return to normal priority once the cheap model has stopped."""

    async def main() -> None:
        cpu = Cpu()
        forest = FakePool("forest", cpu, capacity=4, parallelism=2, cost=0.05)
        light = FakePool("light", cpu, capacity=4, cost=0.0005)
        scheduler = FairScheduler()
        scheduler.add("forest", forest)
        scheduler.add("light", light)
        first = start(scheduler, "forest")  # measure both models' costs
        await settle()
        cpu.finish()
        await first
        probe = start(scheduler, "light")
        await settle()
        cpu.finish()
        await probe
        await asyncio.sleep(CHEAP_HOLD)
        flood = [start(scheduler, "forest") for _ in range(4)]  # saturated: 4 > 2 workers
        await settle()
        assert not forest.background  # alone, a busy model keeps normal priority
        calls = forest.priority_calls
        for _ in range(3):  # light's requests come one at a time, with gaps between them
            probe = start(scheduler, "light")
            await settle()
            assert forest.background
            while cpu.running[0][0] is not light:
                cpu.running.append(cpu.running.pop(0))
            cpu.finish()
            await probe
            await settle()
            assert forest.background  # still yielding in the gap
        assert forest.priority_calls - calls == 1  # into SCHED_IDLE once, not once per request
        await asyncio.sleep(CHEAP_HOLD)
        await settle()
        assert not forest.background
        while cpu.running:
            cpu.finish()
            await settle()
        assert all(t.done() for t in flood)

    asyncio.run(main())


def test_dispatch_reads_only_the_pools_of_models_with_work() -> None:
    async def main() -> None:
        cpu = Cpu()
        scheduler = FairScheduler(budget=2)
        idle = [FakePool(f"idle{i}", cpu) for i in range(10_000)]
        for i, pool in enumerate(idle):
            scheduler.add(f"idle{i}", pool)
        assert {pool.priority_calls for pool in idle} == {1}  # one nice value each, when added
        a, b = FakePool("a", cpu), FakePool("b", cpu)
        scheduler.add("a", a)
        scheduler.add("b", b)
        before = sum(pool.reads + pool.priority_calls for pool in idle)
        tasks = [start(scheduler, m) for _ in range(50) for m in ("a", "b")]
        await settle()
        while cpu.running:
            cpu.finish()
            await settle()
        assert [t.result().code for t in tasks] == [0] * 100
        assert a.reads and b.reads
        assert sum(pool.reads + pool.priority_calls for pool in idle) == before == 10_000

    asyncio.run(main())


def test_a_model_measured_costly_on_its_first_reply_does_not_yield_to_its_own_first_call() -> None:
    """Until its first reply a model counts as cheap; that call is no cheap model's work, so
    the model's next requests, alone on the server, run at normal priority."""

    async def main() -> None:
        cpu = Cpu()
        forest = FakePool("forest", cpu, capacity=4, parallelism=2, cost=0.05)
        scheduler = FairScheduler()
        scheduler.add("forest", forest)
        first = start(scheduler, "forest")
        await settle()
        cpu.finish()
        await first
        second = start(scheduler, "forest")
        await settle()
        assert not forest.background
        cpu.finish()
        await second

    asyncio.run(main())
