"""The :class:`ModelPool` interface: where one model's requests run.

The scheduler only knows this interface: ``start`` (make the model servable),
``submit`` (one request envelope, returns a future of its outcome), ``capacity`` and
``inflight`` (the scheduler never submits past capacity), ``parallelism``, ``health``,
``set_background``/``set_nice`` (CPU priority) and ``aclose`` (drain and unload). A pool
calls ``on_capacity`` whenever capacity frees up or grows.

Backends: local worker processes (:mod:`runtime_core.pools.process`), the main process
(:mod:`runtime_core.pools.inprocess`), and remote actors: a backend implements this
module's class and imports no process code.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from runtime_core.envelope import Envelope, Outcome
from runtime_core.runtime import ModelMetadata

#: Seconds of service per request (measured) from which a model counts as costly: it does not
#: run on its runtime's shared host (``pools/process.py``), and while a cheap model has work its
#: workers give way on the CPU (``scheduler.py``). A cheap model's call is a fraction of a
#: millisecond; one over this, run in line with cheap ones, doubles their latency.
COSTLY_REQUEST = 0.002


@dataclass(slots=True)
class PoolHealth:
    """A snapshot for readiness, the repository index and metrics."""

    workers: int
    """Most workers the model may have (``parallel_workers``)."""
    ready: int
    """Workers able to take requests now."""
    restarts: int
    """Workers replaced after they died or hung."""
    residency: str = "resident"
    """``resident`` (loaded, servable at once), ``loading`` or ``evicted`` (brought back on
    its next request)."""
    serving: bool = True
    """False while the process that holds the model is known to be stopped or killed and not
    yet replaced: readiness says not ready (issue 20)."""
    placement: str | None = None
    """Where the model's requests run now, for pools that choose: ``host`` (its runtime's
    shared host) or ``workers`` (dedicated workers of its own)."""
    decisions: Mapping[str, int] | None = None
    """How many times the pool chose each move so far (``worker_started``, ``worker_retired``,
    ``moved_host``), so that a steady load can be seen to have settled."""


class ModelPool(abc.ABC):
    """Where one model's requests run. Constructors do not start processes; ``start`` does."""

    # No instance dict here: a backend with one pool per model of thousands may list its
    # attributes in ``__slots__`` (issue 23); the others get a ``__dict__`` as usual.
    __slots__ = ()

    #: Called (with no arguments) whenever capacity frees up or grows; set by the scheduler.
    on_capacity: Callable[[], None] = staticmethod(lambda: None)
    metadata: ModelMetadata | None = None

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model everywhere it runs; raise :class:`ModelLoadError` on failure."""

    @abc.abstractmethod
    def submit(self, envelope: Envelope) -> asyncio.Future[Outcome]:
        """Send one request; only called while ``inflight < capacity``."""

    @property
    @abc.abstractmethod
    def capacity(self) -> int: ...

    @property
    @abc.abstractmethod
    def inflight(self) -> int: ...

    @property
    def parallelism(self) -> int:
        """How many requests the pool can compute at the same time (its live workers)."""
        return 1

    @abc.abstractmethod
    def health(self) -> PoolHealth: ...

    def set_background(self, background: bool) -> bool:
        """Lower (or restore) the CPU priority of the pool's workers; returns whether it applied."""
        return False

    def set_nice(self, nice: int) -> None:  # noqa: B027 - optional for backends
        """Set the workers' nice value: the kernel shares CPU among busy models by it."""

    @abc.abstractmethod
    async def aclose(self, grace: float = 30.0) -> None:
        """Finish in-flight work (up to ``grace`` seconds), unload and stop."""
