"""The metric families of /metrics, as ``prometheus_client`` builds them: their names and help
texts, the per-model families (from the per-request series, the scheduler's lanes and the
repository's records) and the server-wide residency families.

:mod:`runtime_core.metrictext` writes the per-model families again, straight to text, with the
same names and help texts; ``prometheus_client`` remains the reference it must match.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from runtime_core.lanes import LaneStats
from runtime_core.metricseries import OUTCOMES, Histogram, Series
from runtime_core.pools.residency import COLD_START_BUCKETS
from runtime_core.repository import ModelRecord, ModelRepository, ModelState, split_key

PREFIX = "runtime_core"

#: The help text of each per-model family, by name without :data:`PREFIX`.
HELP = {
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

#: The latency histograms of a :class:`~runtime_core.metricseries.Series`: attribute, family.
HISTOGRAMS = (
    ("queue", "request_queue_seconds"),
    ("compute", "request_compute_seconds"),
    ("total", "request_duration_seconds"),
)


def model_families(
    series: Mapping[tuple[str, str], Series],
    lanes: Mapping[str, LaneStats],
    records: Iterable[ModelRecord],
) -> Iterator[Metric]:
    """The per-model families: ``series`` by (model, version), ``lanes`` by the scheduler's key,
    ``records`` one per version."""
    labels = ["model", "version"]
    requests = CounterMetricFamily(f"{PREFIX}_requests", HELP["requests"], labels=[*labels, "outcome"])
    histograms = {
        attr: HistogramMetricFamily(f"{PREFIX}_{family}", HELP[family], labels=labels) for attr, family in HISTOGRAMS
    }
    for (model, version), one in sorted(series.items()):
        for name, count in zip(OUTCOMES, one.counts, strict=True):
            requests.add_metric([model, version, name], count)
        for attr, family in histograms.items():
            hist: Histogram = getattr(one, attr)
            family.add_metric([model, version], hist.buckets(), hist.sum)
    yield requests
    yield from histograms.values()

    depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", HELP["queue_depth"], labels=labels)
    inflight = GaugeMetricFamily(f"{PREFIX}_inflight_requests", HELP["inflight_requests"], labels=labels)
    cancelled = CounterMetricFamily(f"{PREFIX}_cancelled_requests", HELP["cancelled_requests"], labels=labels)
    for key, stats in sorted(lanes.items()):
        model, version_of = split_key(key)
        values = [model, version_of or ""]
        depth.add_metric(values, stats.queued)
        inflight.add_metric(values, stats.inflight)
        cancelled.add_metric(values, stats.cancelled)
    yield depth
    yield inflight
    yield cancelled

    state = GaugeMetricFamily(f"{PREFIX}_model_state", HELP["model_state"], labels=[*labels, "state"])
    load = GaugeMetricFamily(f"{PREFIX}_model_load_seconds", HELP["model_load_seconds"], labels=labels)
    restarts = CounterMetricFamily(f"{PREFIX}_worker_restarts", HELP["worker_restarts"], labels=labels)
    workers = GaugeMetricFamily(f"{PREFIX}_workers_ready", HELP["workers_ready"], labels=labels)
    for record in records:
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


def residency_families(repository: ModelRepository, workers_live: int | None = None) -> Iterator[Metric]:
    """Density figures: resident models, live workers, spawns, retirements, evictions and
    the cold-start (load on demand) latency, from the pools' residency book. ``workers_live``:
    the ready workers of every model, if the caller has counted them already."""
    residency = repository.residency
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
    if workers_live is None:
        workers_live = sum(r.pool.health().ready for r in repository.records() if r.pool is not None)
    live.add_metric([], workers_live)
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
