"""Per-model statistics: Triton's statistics extension and the live figures of the status page.

Transport-neutral: the REST front end serves :meth:`ServerStatistics.model_stats` as
``GET /v2/models[/{m}[/versions/{v}]]/stats`` and the status page's JSON from
:meth:`ServerStatistics.status`; a gRPC front end can serve ``ModelStatistics`` from the
same dictionaries.

Nothing is measured twice. One scheduler observer (see
:data:`runtime_core.scheduler.Observer`) receives, per request, the queue wait and the
submit-to-answer time measured in the main process and the worker's
:class:`~runtime_core.envelope.Outcome`, which carries the decode, predict and encode
seconds and the number of requests that shared the ``predict`` call. The observer runs on
the event loop and only adds numbers: no locks, no I/O.

What is bounded: the figures are counters per model (a few hundred bytes each) plus a
timeline of :data:`SLOTS` slots of :data:`SLOT_SECONDS` seconds per model, each with a
latency histogram over :data:`BOUNDS` that holds only the buckets it counted (a slot of a
quiet model costs a few hundred bytes); older slots are dropped as time passes. Process
figures (CPU, memory) are read from ``/proc`` when asked, at most once a second however
many pages poll. Nothing here runs on a timer, so there is nothing to cancel; a worker's
death shows as failed requests and as the pool's restart count.

Mapping to Triton's fields:

* ``success`` / ``fail``: count and total submit-to-answer time of requests answered with
  success / with an error (queue full, deadline passed, worker errors and deaths);
* ``queue``: time successful requests waited in the model's queue;
* ``compute_input`` / ``compute_infer`` / ``compute_output``: the worker's decode, the
  request's share of ``predict`` and its encode, for successful requests;
* ``inference_count``: inferences of successful requests, as Triton counts them: a request
  of ``n`` rows counts ``n`` (the worker counts them after decoding, see
  :attr:`~runtime_core.envelope.Outcome.rows`; the main process never parses tensors);
* ``execution_count``: ``predict`` calls: a call that served ``b`` requests counts once;
* ``batch_stats``: per batch size (the rows of one ``predict`` call, all its requests
  together), the executions and their decode, predict and encode times.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime_core.envelope import Outcome
from runtime_core.metricseries import OUTCOMES, SUCCESS, outcome_index
from runtime_core.repository import ModelRecord, ModelRepository, ModelState
from runtime_core.scheduler import FairScheduler

#: Width of one timeline slot, in seconds.
SLOT_SECONDS = 2.0
#: Slots kept per model: five minutes.
SLOTS = 150
#: Seconds over which the headline req/s, p50 and p99 are computed.
RECENT_SECONDS = 60.0
#: With more models than this, only the busiest ones (requests in the timeline) get charts,
#: so that a server with a thousand models sends and draws a bounded page.
MAX_CHARTS = 24
#: Rows of the status page (and of ``/status.json`` without ``limit``): with more models,
#: the troubled ones first, then the busiest, then the others by name, up to this many;
#: ``total`` says how many there are (issue 23: 10,000 rows made a 3.5 MB page).
STATUS_ROWS = 100

#: Upper bounds (seconds) of the latency buckets: 10 us to about 100 s, four per octave,
#: so a percentile read from them is within 10 % of the true value.
BOUNDS: tuple[float, ...] = tuple(1e-5 * 2 ** (k / 4) for k in range(94))


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


@dataclass(slots=True)
class Duration:
    """Triton's ``{count, ns}``."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += _ns(seconds)

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchFigures:
    """Executions of one batch size (rows per ``predict`` call). ``executions`` adds ``1/b`` per
    request of a call that served ``b`` requests."""

    executions: float = 0.0
    compute_input: int = 0
    compute_infer: int = 0
    compute_output: int = 0


@dataclass(slots=True)
class Slot:
    """One :data:`SLOT_SECONDS` slot of a model's timeline."""

    index: int
    success: int = 0
    errors: list[int] = field(default_factory=lambda: [0] * len(OUTCOMES))
    #: Latency histogram, sparse (bucket index -> count): a slot of a quiet model holds a
    #: request or two, and a dense list of every bucket per slot made a thousand models'
    #: timelines cost about a kilobyte per request that opened a slot (issue 9).
    latency: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class ModelFigures:
    """Everything recorded for one model."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    executions: float = 0.0
    inferences: int = 0
    last_inference: int = 0
    outcomes: list[int] = field(default_factory=lambda: [0] * len(OUTCOMES))
    batches: dict[int, BatchFigures] = field(default_factory=dict)
    timeline: deque[Slot] = field(default_factory=lambda: deque(maxlen=SLOTS))


def percentile(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram over :data:`BOUNDS`, in seconds (None if empty)."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    running = 0
    for i, n in enumerate(counts):
        running += n
        if running >= rank and n:
            upper = BOUNDS[min(i, len(BOUNDS) - 1)]
            lower = BOUNDS[i - 1] if 0 < i < len(BOUNDS) else upper / 2**0.25
            return math.sqrt(lower * upper)  # the bucket's geometric middle
    return BOUNDS[-1]


class ProcessTree:
    """CPU and memory of this process and all its descendants, read from ``/proc`` (Linux).

    Memory is the proportional set size (shared pages split among the processes that
    share them, so forked workers are not counted many times over) where the kernel
    offers it, else the resident set size.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._last: tuple[float, dict[int, int]] | None = None
        self._cached: tuple[float, dict[str, Any]] | None = None

    @staticmethod
    def _stat(pid: str) -> tuple[int, int, int, int] | None:
        """(parent pid, CPU ticks, resident pages, start in ticks after boot) of one process,
        or None if it is gone."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        fields = raw[raw.rfind(b")") + 2 :].split()  # the command name may hold spaces
        return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21]), int(fields[19])

    def _since_start(self, root: tuple[int, int, int, int], ticks: int) -> float | None:
        """Cores used on average since the root process started (the first sample has no
        previous one to compare with)."""
        try:
            with open("/proc/uptime", "rb") as f:
                uptime = float(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        alive = uptime - root[3] / self._ticks
        return ticks / self._ticks / alive if alive > 0 else None

    @staticmethod
    def _pss(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    def sample(self) -> dict[str, Any]:
        """``{"processes", "cpu_cores", "memory_bytes"}``. ``cpu_cores`` covers the time since the
        previous sample (the first: since the server started)."""
        now = self._clock()
        if self._cached is not None and now - self._cached[0] < 1.0:
            return self._cached[1]
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
        except OSError:  # pragma: no cover - not Linux
            return {"processes": 0, "cpu_cores": None, "memory_bytes": None}
        stats = {int(p): s for p in pids if (s := self._stat(p)) is not None}
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_) in stats.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            if pid in stats:
                tree.append(pid)
                todo.extend(children.get(pid, ()))
        ticks = {pid: stats[pid][1] for pid in tree}
        memory = 0
        for pid in tree:
            pss = self._pss(pid)
            memory += pss if pss is not None else stats[pid][2] * self._page
        cpu = None
        if self._last is None and os.getpid() in stats:
            cpu = self._since_start(stats[os.getpid()], sum(ticks.values()))
        elif self._last is not None and now > self._last[0]:
            before = self._last[1]
            used = sum(t - before.get(pid, t) for pid, t in ticks.items())  # new processes: from now on
            cpu = max(0.0, used / self._ticks / (now - self._last[0]))
        self._last = (now, ticks)
        out = {"processes": len(tree), "cpu_cores": cpu, "memory_bytes": memory}
        self._cached = (now, out)
        return out


class ServerStatistics:
    """The statistics of every model: a scheduler observer plus readers for the front ends."""

    def __init__(
        self,
        scheduler: FairScheduler,
        repository: ModelRepository,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scheduler = scheduler
        self.repository = repository
        self.clock = clock
        self.started = clock()
        self.processes = ProcessTree()
        self._models: dict[str, ModelFigures] = {}
        #: model -> (restart count last seen, when it last grew): "restarting" stands out a while.
        self._restarts: dict[str, tuple[int, float]] = {}
        scheduler.observers.append(self.observe)

    def figures(self, model: str) -> ModelFigures:
        found = self._models.get(model)
        if found is None:
            found = self._models[model] = ModelFigures()
        return found

    # ------------------------------------------------------------------ per request

    def observe(self, model: str, result: Outcome | int, wait: float, compute: float, total: float) -> None:
        """The scheduler observer: one call per request that reached a model's queue (``model``:
        the version's key, ``name`` or ``name/version``, so each version has its own figures)."""
        figures = self.figures(model)
        now = self.clock()
        index = outcome_index(result)
        figures.outcomes[index] += 1
        figures.last_inference = int(now * 1000)
        slot = self._slot(figures, now)
        if index != SUCCESS or not isinstance(result, Outcome):
            figures.fail.add(total)
            slot.errors[index] += 1
            return
        figures.success.add(total)
        figures.queue.add(wait)
        figures.compute_input.add(result.decode)
        figures.compute_infer.add(result.predict)
        figures.compute_output.add(result.encode)
        figures.inferences += result.rows
        share = 1.0 / max(1, result.batch)
        figures.executions += share
        batch = figures.batches.get(result.batch_rows)
        if batch is None:
            batch = figures.batches[result.batch_rows] = BatchFigures()
        batch.executions += share
        batch.compute_input += _ns(result.decode)
        batch.compute_infer += _ns(result.predict)
        batch.compute_output += _ns(result.encode)
        slot.success += 1
        bucket = _bucket(total)
        slot.latency[bucket] = slot.latency.get(bucket, 0) + 1

    def _slot(self, figures: ModelFigures, now: float) -> Slot:
        index = int(now // SLOT_SECONDS)
        timeline = figures.timeline
        if not timeline or timeline[-1].index != index:
            timeline.append(Slot(index))
        return timeline[-1]

    # ------------------------------------------------------------------ statistics extension

    def model_stats(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's ``{"model_stats": [...]}`` for one model (checked against the repository,
        so an unknown model or version raises :class:`~runtime_core.errors.ModelNotFound`) or,
        with no name, for every model the repository holds."""
        if name is not None:
            record = self.repository.get(name, version)
            records = [record]
        else:
            records = self.repository.records()  # by name, then version
        return {"model_stats": [self._model_stats(r, version) for r in records]}

    def _model_stats(self, record: ModelRecord, version: str | None) -> dict[str, Any]:
        f = self._models.get(record.key) or ModelFigures()
        batches = []
        for size, batch in sorted(f.batches.items()):
            count = round(batch.executions)
            batches.append(
                {
                    "batch_size": size,
                    "compute_input": {"count": count, "ns": batch.compute_input},
                    "compute_infer": {"count": count, "ns": batch.compute_infer},
                    "compute_output": {"count": count, "ns": batch.compute_output},
                }
            )
        return {
            "name": record.name,
            "version": version if version is not None else (record.version or ""),
            "last_inference": f.last_inference,
            "inference_count": f.inferences,
            "execution_count": round(f.executions),
            "inference_stats": {
                "success": f.success.to_json(),
                "fail": f.fail.to_json(),
                "queue": f.queue.to_json(),
                "compute_input": f.compute_input.to_json(),
                "compute_infer": f.compute_infer.to_json(),
                "compute_output": f.compute_output.to_json(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": batches,
        }

    # ------------------------------------------------------------------ status page

    def status(self, *, reasons: bool, model: str = "", limit: int | None = None, offset: int = 0) -> dict[str, Any]:
        """The live figures of the status page: the server, then one entry per model.

        ``reasons``: include each model's state reason (the caller passes whether the
        repository index, which shows them too, is open to the same reader). ``model``: only
        models whose name holds it (any case). ``limit``/``offset``: that page of the models
        by name then version; without ``limit``, at most :data:`STATUS_ROWS`, the troubled
        and the busiest first (shown by name). ``total``: models that ``model`` matches.
        """
        now = self.clock()
        lanes = self.scheduler.stats()
        records = self.repository.records()  # one row per version, by name then version
        if model:
            wanted = model.lower()
            records = [r for r in records if wanted in r.name.lower()]
        total = len(records)
        activity = {name: sum(s.success + sum(s.errors) for s in f.timeline) for name, f in self._models.items()}
        if limit is not None:
            records = records[offset : offset + limit]
        elif offset:
            records = records[offset : offset + STATUS_ROWS]
        elif total > STATUS_ROWS:
            rank = {r.key: i for i, r in enumerate(records)}
            chosen = sorted(records, key=lambda r: (not self._troubled(r, now), -activity.get(r.key, 0), rank[r.key]))
            records = sorted(chosen[:STATUS_ROWS], key=lambda r: rank[r.key])
        charted = {r.key for r in records}
        if len(records) > MAX_CHARTS:
            busiest = sorted((n for n in charted if activity.get(n)), key=lambda n: -activity[n])
            charted = set(busiest[:MAX_CHARTS])
        models = [self._model_status(record, lanes, now, reasons, record.key in charted) for record in records]
        return {
            "server": {
                "uptime": now - self.started,
                "time": now,
                **self.processes.sample(),
            },
            "slot_seconds": SLOT_SECONDS,
            "recent_seconds": RECENT_SECONDS,
            "total": total,
            "models": models,
        }

    def _troubled(self, record: ModelRecord, now: float) -> bool:
        """Cheaply, whether a model would show trouble: unavailable, workers restarted lately
        (as last seen by the page) or requests answered with an error in the last minute."""
        if record.state is ModelState.UNAVAILABLE:
            return True
        seen = self._restarts.get(record.key)
        if seen is not None and now - seen[1] < SLOTS * SLOT_SECONDS:
            return True
        f = self._models.get(record.key)
        if f is None:
            return False
        current = int(now // SLOT_SECONDS)
        return any(any(s.errors) for s in f.timeline if s.index > current - RECENT_SECONDS / SLOT_SECONDS)

    def _series(self, f: ModelFigures, current: int) -> dict[str, list[Any]]:
        """The chart data: per slot of the last :data:`SLOTS`, requests/s, p50 and p99 (ms)."""
        first = current - SLOTS + 1
        by_index = {s.index: s for s in f.timeline if s.index >= first}
        times: list[float] = []
        rates: list[float] = []
        p50s: list[float | None] = []
        p99s: list[float | None] = []
        for index in range(first, current + 1):
            slot = by_index.get(index)
            times.append(index * SLOT_SECONDS)
            if slot is None:
                rates.append(0.0)
                p50s.append(None)
                p99s.append(None)
                continue
            rates.append(slot.success / SLOT_SECONDS)
            counts = _dense(slot.latency)
            p50, p99 = percentile(counts, 0.5), percentile(counts, 0.99)
            p50s.append(None if p50 is None else p50 * 1000)
            p99s.append(None if p99 is None else p99 * 1000)
        return {"time": times, "requests_per_second": rates, "p50_ms": p50s, "p99_ms": p99s}

    def _model_status(
        self, record: ModelRecord, lanes: dict[str, Any], now: float, reasons: bool, chart: bool
    ) -> dict[str, Any]:
        f = self._models.get(record.key) or ModelFigures()
        current = int(now // SLOT_SECONDS)
        recent = [s for s in f.timeline if s.index > current - RECENT_SECONDS / SLOT_SECONDS]
        latency = _dense(*(s.latency for s in recent)) if recent else []
        # Over the last minute, or since start-up if that is shorter.
        span = min(RECENT_SECONDS, max(SLOT_SECONDS, now - self.started))
        recent_errors = [sum(column) for column in zip(*(s.errors for s in recent), strict=True)] if recent else []
        lane = lanes.get(record.key)
        health = record.pool.health() if record.pool is not None else None
        restarted = False
        if health is not None:
            seen, when = self._restarts.get(record.key, (health.restarts, 0.0))
            if health.restarts > seen:
                when = now
            self._restarts[record.key] = (health.restarts, when)
            restarted = now - when < SLOTS * SLOT_SECONDS
        trouble = []
        if record.state is ModelState.UNAVAILABLE:
            trouble.append("unavailable")
        if restarted:  # fewer ready workers than allowed is normal for pools that grow on demand
            trouble.append("workers restarting")
        if recent_errors and recent_errors[OUTCOMES.index("rejected")]:
            trouble.append("queue full")
        p50 = percentile(latency, 0.5) if latency else None
        p99 = percentile(latency, 0.99) if latency else None
        out: dict[str, Any] = {
            "name": record.name,
            "version": record.version or "",
            "runtime": record.runtime,
            "state": record.state.value,
            "weight": record.settings.weight if record.settings else None,
            "workers": None if health is None else {"ready": health.ready, "total": health.workers},
            "restarts": None if health is None else health.restarts,
            "queued": lane.queued if lane else 0,
            "inflight": lane.inflight if lane else 0,
            "requests_per_second": sum(s.success for s in recent) / span,
            "p50_ms": None if p50 is None else p50 * 1000,
            "p99_ms": None if p99 is None else p99 * 1000,
            "errors": {name: f.outcomes[i] for i, name in enumerate(OUTCOMES) if i != SUCCESS},
            "success": f.outcomes[SUCCESS],
            "trouble": trouble,
            "series": self._series(f, current) if chart else None,
        }
        if reasons:
            out["reason"] = record.reason
        residency = getattr(health, "residency", None)  # pools that load on demand and evict say so
        if residency is not None:
            out["residency"] = str(residency)
        return out


def _dense(*sparse: dict[int, int]) -> list[int]:
    """The dense histogram over :data:`BOUNDS` (for :func:`percentile`) of the sum of ``sparse`` ones."""
    counts = [0] * (len(BOUNDS) + 1)
    for histogram in sparse:
        for bucket, n in histogram.items():
            counts[bucket] += n
    return counts


def _bucket(seconds: float) -> int:
    # BOUNDS grow by 2**(1/4): the index is 4*log2(seconds/1e-5), rounded up.
    if seconds <= BOUNDS[0]:
        return 0
    return min(len(BOUNDS), math.ceil(4 * math.log2(seconds / BOUNDS[0]) - 1e-9))
