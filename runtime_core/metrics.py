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
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from runtime_core import errors
from runtime_core.envelope import Outcome
from runtime_core.pools.residency import COLD_START_BUCKETS
from runtime_core.repository import ModelRepository, ModelState, split_key
from runtime_core.scheduler import FairScheduler

log = logging.getLogger("runtime_core.metrics")

PREFIX = "runtime_core"

#: Values of the ``outcome`` label of ``runtime_core_requests_total``.
OUTCOMES = ("success", "client_error", "server_error", "rejected", "deadline_expired")
SUCCESS, CLIENT_ERROR, SERVER_ERROR, REJECTED, DEADLINE_EXPIRED = range(5)

#: Error codes answered with a 4xx status: the caller's fault.
_CLIENT_CODES = frozenset(
    cls.code
    for cls in (
        errors.InvalidRequest,
        errors.ModelNotFound,
        errors.PayloadTooLarge,
        errors.Unauthorized,
        errors.Forbidden,
        errors.SettingsError,
        errors.RuntimeNotFound,
    )
)

#: Upper bounds (seconds) of the latency histograms' buckets.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


def outcome_index(result: Outcome | int) -> int:
    """Which ``outcome`` label a scheduler result counts under (an index into :data:`OUTCOMES`)."""
    code = result.code if isinstance(result, Outcome) else result
    if code == 0:
        return SUCCESS
    if code == errors.QueueFull.code:
        return REJECTED
    if code == errors.DeadlineExceeded.code:
        return DEADLINE_EXPIRED
    if code in _CLIENT_CODES:
        return CLIENT_ERROR
    return SERVER_ERROR


class Histogram:
    """A lock-free histogram for one series (the event loop is its only writer)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # "le" buckets include their bound
        self.count += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class Series:
    """Per-request figures of one (model, version)."""

    __slots__ = ("compute", "counts", "queue", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(OUTCOMES)
        self.queue = Histogram()
        self.compute = Histogram()
        self.total = Histogram()


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
        self._globals.register(_Globals(self))
        if process:
            ProcessCollector(registry=self.registry)  # process_* of the main process
            ProcessCollector(registry=self._globals)
        #: ``model="...",version="..."`` of each (model, version), made once.
        self._labels: dict[tuple[str, str], str] = {}
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

        The per-model families are written here, straight to text, with each model's label
        text made once (:meth:`_label`); the few server-wide ones and ``process_*`` go through
        ``prometheus_client``. At 10,000 models (730,000 samples) the exposition through
        ``prometheus_client`` alone took 5-9 s per scrape (issue 23)."""
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        text = "".join(self._render_models(openmetrics)).encode()
        return text + encoder(self._globals), content_type

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())

    def _label(self, model: str, version: str) -> str:
        key = (model, version)
        text = self._labels.get(key)
        if text is None:
            text = self._labels[key] = f'model="{_escape(model)}",version="{_escape(version)}"'
        return text

    def _render_models(self, openmetrics: bool) -> Iterator[str]:
        """The per-model families of :meth:`_collect`, as exposition text, in the same order."""
        records = {r.key: r for r in self.repository.records()}
        keys = set(self._series)
        keys.update((r.name, r.version or "") for r in records.values() if r.state is ModelState.READY)
        order = sorted(keys)
        counter = _CounterHead(openmetrics)

        name = f"{PREFIX}_requests"
        yield counter.head(name, _HELP["requests"])
        # Counts are written as integers ("3", not prometheus_client's "3.0"): formatting
        # integers is half the cost, and both formats read them as the same number.
        requests = "".join(f'{name}_total{{\x00,outcome="{outcome}"}} %d\n' for outcome in OUTCOMES)
        zero_requests = requests.replace("%d", "0")
        for key in order:
            label = self._label(*key)
            series = self._series.get(key)
            if series is None:
                yield zero_requests.replace("\x00", label)
                continue
            yield (requests % tuple(series.counts)).replace("\x00", label)
        for attr, family in (
            ("queue", "request_queue_seconds"),
            ("compute", "request_compute_seconds"),
            ("total", "request_duration_seconds"),
        ):
            name = f"{PREFIX}_{family}"
            yield f"# HELP {name} {_HELP[family]}\n# TYPE {name} histogram\n"
            template = _histogram_template(name)
            for key in order:
                label = self._label(*key)
                series = self._series.get(key)
                if series is None:
                    yield _ZERO_HISTOGRAMS[name].replace("\x00", label)
                    continue
                hist: Histogram = getattr(series, attr)
                values = (*accumulate(hist.counts), hist.count, float(hist.sum))
                yield (template % values).replace("\x00", label)

        stats = sorted(self.scheduler.stats().items())
        gauges = (
            ("queue_depth", "gauge", "queued"),
            ("inflight_requests", "gauge", "inflight"),
            ("cancelled_requests", "counter", "cancelled"),
        )
        for family, kind, attr in gauges:
            name = f"{PREFIX}_{family}"
            sample = name
            if kind == "counter":
                yield counter.head(name, _HELP[family])
                sample = name + "_total"
            else:
                yield f"# HELP {name} {_HELP[family]}\n# TYPE {name} gauge\n"
            for scheduled, st in stats:
                model, version = split_key(scheduled)
                yield f"{sample}{{{self._label(model, version or '')}}} {float(getattr(st, attr))!r}\n"

        ordered = list(records.values())
        name = f"{PREFIX}_model_state"
        yield f"# HELP {name} {_HELP['model_state']}\n# TYPE {name} gauge\n"
        states = {
            state: "".join(
                f'{name}{{\x00,state="{value.value}"}} {"1.0" if value is state else "0.0"}\n' for value in ModelState
            )
            for state in ModelState
        }
        for record in ordered:
            yield states[record.state].replace("\x00", self._label(record.name, record.version or ""))
        name = f"{PREFIX}_model_load_seconds"
        yield f"# HELP {name} {_HELP['model_load_seconds']}\n# TYPE {name} gauge\n"
        for record in ordered:
            yield f"{name}{{{self._label(record.name, record.version or '')}}} {float(record.load_time)!r}\n"
        healths = [(r, r.pool.health()) for r in ordered if r.pool is not None]
        name = f"{PREFIX}_worker_restarts"
        yield counter.head(name, _HELP["worker_restarts"])
        for record, health in healths:
            label = self._label(record.name, record.version or "")
            yield f"{name}_total{{{label}}} {float(health.restarts)!r}\n"
        name = f"{PREFIX}_workers_ready"
        yield f"# HELP {name} {_HELP['workers_ready']}\n# TYPE {name} gauge\n"
        for record, health in healths:
            yield f"{name}{{{self._label(record.name, record.version or '')}}} {float(health.ready)!r}\n"

    def _collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        records = {r.key: r for r in self.repository.records()}  # one per version
        for record in records.values():  # series for every served model, before its first request
            if record.state is ModelState.READY:
                self.series(record.name, record.version or "")

        requests = CounterMetricFamily(
            f"{PREFIX}_requests",
            "Inference requests that reached a model's queue, by outcome: success, client_error (4xx), "
            "server_error (5xx), rejected (queue full), deadline_expired (Request-Timeout passed).",
            labels=[*labels, "outcome"],
        )
        histograms = {
            "queue": HistogramMetricFamily(
                f"{PREFIX}_request_queue_seconds",
                "Seconds requests waited in the model's queue before being sent to a worker.",
                labels=labels,
            ),
            "compute": HistogramMetricFamily(
                f"{PREFIX}_request_compute_seconds",
                "Seconds a worker spent on a request (decode, predict, encode), as the worker reports it.",
                labels=labels,
            ),
            "total": HistogramMetricFamily(
                f"{PREFIX}_request_duration_seconds",
                "Seconds from a request entering the model's queue to its answer (queue, transfer, compute).",
                labels=labels,
            ),
        }
        for (model, version), series in sorted(self._series.items()):
            for name, count in zip(OUTCOMES, series.counts, strict=True):
                requests.add_metric([model, version, name], count)
            for attr, family in histograms.items():
                hist: Histogram = getattr(series, attr)
                family.add_metric([model, version], hist.buckets(), hist.sum)
        yield requests
        yield from histograms.values()

        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Requests waiting in the model's queue.", labels=labels)
        inflight = GaugeMetricFamily(
            f"{PREFIX}_inflight_requests", "Requests sent to the model's workers and not answered yet.", labels=labels
        )
        cancelled = CounterMetricFamily(
            f"{PREFIX}_cancelled_requests",
            "Requests whose client went away before the answer (dropped from the queue if still there).",
            labels=labels,
        )
        for key, stats in sorted(self.scheduler.stats().items()):
            model, version_of = split_key(key)
            values = [model, version_of or ""]
            depth.add_metric(values, stats.queued)
            inflight.add_metric(values, stats.inflight)
            cancelled.add_metric(values, stats.cancelled)
        yield depth
        yield inflight
        yield cancelled

        state = GaugeMetricFamily(
            f"{PREFIX}_model_state",
            "1 for the model's current state (READY, LOADING, UNLOADING, UNAVAILABLE, UNKNOWN), 0 for the others.",
            labels=[*labels, "state"],
        )
        load = GaugeMetricFamily(
            f"{PREFIX}_model_load_seconds", "Seconds the model's last successful load took.", labels=labels
        )
        restarts = CounterMetricFamily(
            f"{PREFIX}_worker_restarts",
            "Workers of the model that died and were replaced (since the model's last load).",
            labels=labels,
        )
        workers = GaugeMetricFamily(
            f"{PREFIX}_workers_ready",
            "Worker processes of the model ready to take requests (1 for a model served in the main process).",
            labels=labels,
        )
        for record in records.values():
            values = [record.name, record.version or ""]
            for value in ModelState:
                state.add_metric([*values, value.value], 1.0 if record.state is value else 0.0)
            load.add_metric(values, record.load_time)
            if record.pool is not None:
                health = record.pool.health()
                restarts.add_metric(values, health.restarts)
                workers.add_metric(values, health.ready)
        yield state
        yield load
        yield restarts
        yield workers
        yield from self._residency_metrics()

    def residency_metrics(self) -> Iterator[Metric]:
        return self._residency_metrics()

    def _residency_metrics(self) -> Iterator[Metric]:
        """Density figures: resident models, live workers, spawns, retirements, evictions and
        the cold-start (load on demand) latency, from the pools' residency book."""
        residency = self.repository.residency
        resident = GaugeMetricFamily(f"{PREFIX}_models_resident", "Models loaded in a host process now.")
        resident.add_metric([], residency.resident)
        resident_bytes = GaugeMetricFamily(
            f"{PREFIX}_models_resident_bytes",
            "Memory the host processes hold beyond what they held at start (resident set size): the"
            " resident models and what loading and unloading left behind.",
        )
        resident_bytes.add_metric([], residency.held())
        accounted = GaugeMetricFamily(
            f"{PREFIX}_models_accounted_bytes",
            "Memory counted against memory_budget: what each resident model took when it loaded.",
        )
        accounted.add_metric([], residency.used)
        recycles = CounterMetricFamily(
            f"{PREFIX}_host_recycles", "Hosts replaced because their memory grew past memory_budget plus slack."
        )
        recycles.add_metric([], residency.recycles)
        live = GaugeMetricFamily(f"{PREFIX}_workers_live", "Dedicated worker processes of all models now.")
        live.add_metric([], sum(r.pool.health().ready for r in self.repository.records() if r.pool is not None))
        spawns = CounterMetricFamily(f"{PREFIX}_worker_spawns", "Dedicated workers started on demand.")
        spawns.add_metric([], residency.spawns)
        spawn_seconds = CounterMetricFamily(
            f"{PREFIX}_worker_spawn_seconds", "Seconds from asking for a dedicated worker to its being ready, summed."
        )
        spawn_seconds.add_metric([], residency.spawn_seconds)
        retirements = CounterMetricFamily(f"{PREFIX}_worker_retirements", "Dedicated workers retired when idle.")
        retirements.add_metric([], residency.retirements)
        evictions = CounterMetricFamily(f"{PREFIX}_evictions", "Models evicted to stay within memory_budget.")
        evictions.add_metric([], residency.evictions)
        cold = HistogramMetricFamily(
            f"{PREFIX}_cold_start_seconds", "Seconds a model took to load into its host (at start or on demand)."
        )
        cumulative, buckets = 0, []
        for bound, count in zip([*COLD_START_BUCKETS, float("inf")], residency.cold_starts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        cold.add_metric([], buckets, residency.cold_start_seconds)
        yield from (resident, resident_bytes, accounted, live, spawns, spawn_seconds, retirements, evictions, recycles)
        yield cold


class _Globals:
    """The server-wide families of a :class:`ServerMetrics`, as a ``prometheus_client`` collector."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self.metrics.residency_metrics())


def _escape(value: str) -> str:
    """A label value as the exposition formats write it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _CounterHead:
    """``# HELP``/``# TYPE`` of a counter: the text format names the family ``<name>_total``,
    OpenMetrics ``<name>`` (its samples are ``<name>_total`` in both)."""

    def __init__(self, openmetrics: bool) -> None:
        self.openmetrics = openmetrics

    def head(self, name: str, help_text: str) -> str:
        family = name if self.openmetrics else name + "_total"
        return f"# HELP {family} {help_text}\n# TYPE {family} counter\n"


_BOUNDS = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]


def _histogram_template(name: str) -> str:
    """``%``-format text of one histogram series (a value per bucket, count, sum), ``\\x00``
    standing for its labels."""
    lines = [f'{name}_bucket{{\x00,le="{bound}"}} %d\n' for bound in _BOUNDS]
    lines.append(f"{name}_count{{\x00}} %d\n")
    lines.append(f"{name}_sum{{\x00}} %r\n")
    return "".join(lines)


#: Every latency histogram of a model without requests yet, ``\x00`` standing for its labels.
_ZERO_HISTOGRAMS = {
    f"{PREFIX}_{family}": _histogram_template(f"{PREFIX}_{family}").replace("%d", "0").replace("%r", "0.0")
    for family in ("request_queue_seconds", "request_compute_seconds", "request_duration_seconds")
}

_HELP = {
    "requests": "Inference requests that reached a model's queue, by outcome: success, client_error (4xx), "
    "server_error (5xx), rejected (queue full), deadline_expired (Request-Timeout passed).",
    "request_queue_seconds": "Seconds requests waited in the model's queue before being sent to a worker.",
    "request_compute_seconds": "Seconds a worker spent on a request (decode, predict, encode), as the worker "
    "reports it.",
    "request_duration_seconds": "Seconds from a request entering the model's queue to its answer (queue, "
    "transfer, compute).",
    "queue_depth": "Requests waiting in the model's queue.",
    "inflight_requests": "Requests sent to the model's workers and not answered yet.",
    "cancelled_requests": "Requests whose client went away before the answer (dropped from the queue if still there).",
    "model_state": "1 for the model's current state (READY, LOADING, UNLOADING, UNAVAILABLE, UNKNOWN), 0 for the "
    "others.",
    "model_load_seconds": "Seconds the model's last successful load took.",
    "worker_restarts": "Workers of the model that died and were replaced (since the model's last load).",
    "workers_ready": "Worker processes of the model ready to take requests (1 for a model served in the main process).",
}
