"""Prometheus metrics, aggregated in the main process (no multiprocess folder).

Two sources feed one :class:`~prometheus_client.CollectorRegistry` of our own
(never the global one, so that embedding the server or running two in a test
process does not mix figures):

* a per-request hook on the scheduler (:data:`runtime_core.scheduler.Observer`):
  outcome counts and latency histograms (queue wait, worker compute, total).
  Workers already report their compute seconds in every reply, so nothing is
  measured twice. The hook runs on the event loop and does a handful of list
  increments: no locks, no label lookups;
* figures that already exist, read at scrape time: queue depth and in-flight
  requests (:meth:`FairScheduler.stats`), worker restarts and ready workers
  (:meth:`ModelPool.health`), model state and load time (repository records).

Every per-model series has the labels ``model`` and ``version`` (empty when the
model has none): each version of a model is its own series. See ``docs/operations.md`` for the list of metrics.

The parts: what is counted per request (:mod:`runtime_core.metricseries`), the families as
``prometheus_client`` builds them (:mod:`runtime_core.metricfamilies`) and the same per-model
families written straight to text for a scrape (:mod:`runtime_core.metrictext`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from runtime_core.envelope import Outcome
from runtime_core.metricfamilies import model_families, residency_families
from runtime_core.metricseries import REJECTED, Series, outcome_index
from runtime_core.metrictext import ModelFamilyText, Tally
from runtime_core.repository import ModelRepository, ModelState, split_key
from runtime_core.scheduler import FairScheduler


class ServerMetrics:
    """The server's metrics: a scheduler observer plus a scrape-time collector.

    Requests count under the ``outcome`` of their answer; the queue-wait and total
    histograms observe every request that entered a queue and got an answer from it
    (everything but ``rejected``), the compute histogram every request a worker
    answered (including the ones it answered with an error).
    """

    def __init__(self, scheduler: FairScheduler, repository: ModelRepository, *, process: bool = True) -> None:
        self.scheduler = scheduler
        self.repository = repository
        self._series: dict[tuple[str, str], Series] = {}
        #: Every metric, through ``prometheus_client`` (slow at many models; :meth:`render`
        #: writes the same exposition faster).
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        #: The server-wide families and ``process_*``: what :meth:`render` does not write itself.
        self._globals = CollectorRegistry(auto_describe=False)
        self._globals_collector = _Globals(repository)
        self._globals.register(self._globals_collector)
        if process:
            ProcessCollector(registry=self.registry)  # process_* of the main process
            ProcessCollector(registry=self._globals)
        self._text = ModelFamilyText()
        scheduler.observers.append(self.observe)

    # ------------------------------------------------------------------ per request

    def series(self, model: str, version: str) -> Series:
        key = (model, version)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = Series()
        return found

    def observe(self, model: str, result: Outcome | int, wait: float, compute: float, total: float) -> None:
        """The scheduler observer: one call per request (see :data:`runtime_core.scheduler.Observer`);
        ``model`` is the version's key, ``name`` or ``name/version``."""
        name, version = split_key(model)
        series = self.series(name, version or "")
        index = outcome_index(result)
        series.counts[index] += 1
        if index == REJECTED:
            return
        series.queue.observe(wait)
        series.total.observe(total)
        if isinstance(result, Outcome):
            series.compute.observe(compute)

    # ------------------------------------------------------------------ scrape

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics if ``accept`` asks for it) and its content type.

        The per-model families are written by :class:`~runtime_core.metrictext.ModelFamilyText`,
        straight to text; the few server-wide ones and ``process_*`` go through
        ``prometheus_client``, whose exposition was too slow at many models (issue 23)."""
        chunks, content_type = self.chunks(accept)
        return b"".join(chunks), content_type

    def chunks(self, accept: str = "") -> tuple[Iterator[bytes], str]:
        """:meth:`render`'s text in chunks, each written when it is asked for (see
        :meth:`~runtime_core.metrictext.ModelFamilyText.chunks`), and its content type: what
        GET /metrics sends, a chunk at a time."""
        encoder, content_type = choose_encoder(accept)
        return self._chunks(encoder, content_type.startswith("application/openmetrics-text")), content_type

    def _chunks(self, encoder: Callable[[CollectorRegistry], bytes], openmetrics: bool) -> Iterator[bytes]:
        tally = Tally()
        lanes = self.scheduler.stats()
        yield b""  # a pause: sorting the records takes a few ms at ten thousand models
        records = self.repository.records()
        yield b""
        yield from self._text.chunks(self._series, lanes, records, openmetrics, tally)
        self._globals_collector.workers_live = tally.workers_live  # pools are not asked again
        try:
            rest = encoder(self._globals)
        finally:
            self._globals_collector.workers_live = None
        yield rest

    def collect(self) -> Iterable[Metric]:
        records = self.repository.records()  # one per version
        for record in records:  # series for every served model, before its first request
            if record.state is ModelState.READY:
                self.series(record.name, record.version or "")
        return [
            *model_families(self._series, self.scheduler.stats(), records),
            *residency_families(self.repository),
        ]


class _Globals:
    """The server-wide families of a :class:`ServerMetrics`, as a ``prometheus_client`` collector."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository
        #: The ready workers the scrape being written counted, if it did (see :class:`Tally`).
        self.workers_live: int | None = None

    def collect(self) -> Iterable[Metric]:
        return list(residency_families(self.repository, self.workers_live))
