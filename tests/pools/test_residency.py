"""Residency with fake pools and hosts: LRU order, eviction under the memory budget (never a
model with requests in flight, never the one just loaded), the recycling decision for a host
whose memory drifted, and the bookkeeping behind the metrics."""

from __future__ import annotations

from typing import Any

from runtime_core.pools.residency import COLD_START_BUCKETS, RECYCLE_SLACK_MIN, Residency

MiB = 1 << 20


class FakeHost:
    def __init__(self, grown: int = 0) -> None:
        self.import_path = "toy:Runtime"
        self.pid = 4242
        self.retiring = False
        self._grown = grown

    def grown(self) -> int:
        return self._grown


class Book:
    """The templates' side: the live hosts, and the hosts released."""

    def __init__(self, *hosts: FakeHost) -> None:
        self._hosts = list(hosts)
        self.released: list[FakeHost] = []

    def hosts(self) -> list[Any]:
        return list(self._hosts)

    def release(self, host: Any) -> None:
        self.released.append(host)

    def kill_stopped_root(self) -> None:
        pass


class FakePool:
    def __init__(self, name: str, memory: int, residency: Residency, host: FakeHost | None = None) -> None:
        self.name = name
        self.memory = memory
        self.residency = residency
        self.host = host
        self.inflight = 0
        self.has_workers = False
        self.evicted = 0
        self.moved: list[str] = []

    def evict(self) -> None:
        self.evicted += 1
        self.residency.dropped(self)  # as ProcessPool.evict does

    def move_off(self, host: Any, why: str) -> None:
        if host is self.host:
            self.moved.append(why)

    def check_hangs(self, now: float) -> None: ...
    def expire_parked(self, now: float) -> None: ...
    def retire_idle(self, now: float) -> None: ...


def test_loads_past_the_budget_evict_the_least_recently_used_idle_models() -> None:
    residency = Residency(300 * MiB, Book(), worker_timeout=60)
    a, b, c, d = (FakePool(n, 100 * MiB, residency) for n in "abcd")
    for pool in (a, b, c):
        residency.loaded(pool, 0.01)
    assert residency.used == 300 * MiB and residency.resident == 3
    residency.touch(a)  # a is now the most recently used: b goes first
    b.inflight = 1  # ...but b has a request in flight: never evicted, c goes
    residency.loaded(d, 0.01)
    assert (a.evicted, b.evicted, c.evicted, d.evicted) == (0, 0, 1, 0)
    assert residency.used == 300 * MiB and residency.evictions == 1


def test_the_model_just_loaded_is_never_its_own_victim() -> None:
    residency = Residency(50 * MiB, Book(), worker_timeout=60)
    big = FakePool("big", 100 * MiB, residency)
    residency.loaded(big, 0.01)
    assert big.evicted == 0 and residency.used == 100 * MiB


def test_resized_and_dropped_keep_the_books() -> None:
    residency = Residency(1 << 40, Book(), worker_timeout=60)
    a = FakePool("a", 10 * MiB, residency)
    residency.loaded(a, 0.01)
    residency.resized(a, 30 * MiB)
    assert residency.used == 30 * MiB and a.memory == 30 * MiB
    residency.dropped(a)
    residency.dropped(a)  # twice is harmless
    assert residency.used == 0 and residency.resident == 0


def test_cold_starts_are_counted_in_their_bucket() -> None:
    residency = Residency(1 << 40, Book(), worker_timeout=60)
    residency.loaded(FakePool("a", MiB, residency), 0.004)
    residency.loaded(FakePool("b", MiB, residency), 100.0)
    assert residency.cold_starts[0] == 1 and residency.cold_starts[len(COLD_START_BUCKETS)] == 1
    assert residency.cold_start_seconds == 100.004


def test_a_host_that_grew_past_its_models_plus_slack_is_recycled() -> None:
    budget = 100 * MiB
    assert Residency(budget, Book(), 60).slack == RECYCLE_SLACK_MIN  # half the budget is less
    drifted, fine = FakeHost(grown=budget + RECYCLE_SLACK_MIN + MiB), FakeHost(grown=budget)
    book = Book(drifted, fine)
    residency = Residency(budget, book, worker_timeout=60)
    on_drifted = FakePool("a", 10 * MiB, residency, drifted)
    on_fine = FakePool("b", 10 * MiB, residency, fine)
    residency.loaded(on_drifted, 0.01)
    residency.loaded(on_fine, 0.01)
    assert drifted.retiring and not fine.retiring and residency.recycles == 1
    assert on_drifted.moved and not on_fine.moved
    assert drifted in book.released
    residency.check_memory()  # already retiring: counted once, its models asked again to move
    assert residency.recycles == 1


def test_models_kept_past_the_budget_by_requests_raise_their_hosts_limit() -> None:
    budget = 100 * MiB
    host = FakeHost()
    residency = Residency(budget, Book(host), worker_timeout=60)
    a, b = (FakePool(n, 60 * MiB, residency, host) for n in "ab")
    a.inflight = 1  # it cannot be evicted: 120 MiB are accounted on the host
    residency.loaded(a, 0.01)
    host._grown = budget + RECYCLE_SLACK_MIN + 10 * MiB  # past budget + slack, within 120 MiB + slack
    residency.loaded(b, 0.01)
    assert a.evicted == 0 and residency.used == 120 * MiB
    assert not host.retiring and residency.recycles == 0
