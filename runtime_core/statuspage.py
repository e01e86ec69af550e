"""StatusPage: the live figures of the status page (``/status`` and ``/status.json``).

One document per poll: the server (uptime, CPU and memory of its process tree) and one row per
model version, with its state, workers, queue, recent request rate and latency, errors, the
trouble it shows and, for the busiest, a chart of the last :data:`~runtime_core.modelfigures.SLOTS`
slots. The figures are the ones :class:`~runtime_core.stats.ServerStatistics` records; nothing
here is measured.

What is bounded: a page has at most :data:`STATUS_ROWS` rows unless the caller asks for a
page of its own (``limit``), and at most :data:`MAX_CHARTS` charts. The page remembers, per
model, the restart count it last saw and when it last grew (two numbers). Nothing runs on a
timer; a worker's death shows as "workers restarting" for as long as the timeline lasts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from runtime_core.lanes import LaneStats
from runtime_core.metricseries import OUTCOMES, SUCCESS
from runtime_core.modelfigures import SLOT_SECONDS, SLOTS, ModelFigures, dense, percentile
from runtime_core.proctree import ProcessTree
from runtime_core.repository import ModelRecord, ModelRepository, ModelState
from runtime_core.scheduler import FairScheduler

#: Seconds over which the headline req/s, p50 and p99 are computed.
RECENT_SECONDS = 60.0
#: With more models than this, only the busiest ones (requests in the timeline) get charts,
#: so that a server with a thousand models sends and draws a bounded page.
MAX_CHARTS = 24
#: Rows of the status page (and of ``/status.json`` without ``limit``): with more models,
#: the troubled ones first, then the busiest, then the others by name, up to this many;
#: ``total`` says how many there are (issue 23: a row for every model made the page too big
#: to send and draw).
STATUS_ROWS = 100


class StatusPage:
    """Builds the status page's document from the figures of ``models`` (by version key)."""

    def __init__(
        self,
        scheduler: FairScheduler,
        repository: ModelRepository,
        models: Mapping[str, ModelFigures],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scheduler = scheduler
        self.repository = repository
        self.clock = clock
        self.started = clock()
        self.processes = ProcessTree()
        self._models = models
        #: model -> (restart count last seen, when it last grew): "restarting" stands out a while.
        self._restarts: dict[str, tuple[int, float]] = {}

    def document(self, *, reasons: bool, model: str = "", limit: int | None = None, offset: int = 0) -> dict[str, Any]:
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
            counts = dense(slot.latency)
            p50, p99 = percentile(counts, 0.5), percentile(counts, 0.99)
            p50s.append(None if p50 is None else p50 * 1000)
            p99s.append(None if p99 is None else p99 * 1000)
        return {"time": times, "requests_per_second": rates, "p50_ms": p50s, "p99_ms": p99s}

    def _model_status(
        self, record: ModelRecord, lanes: Mapping[str, LaneStats], now: float, reasons: bool, chart: bool
    ) -> dict[str, Any]:
        f = self._models.get(record.key) or ModelFigures()
        current = int(now // SLOT_SECONDS)
        recent = [s for s in f.timeline if s.index > current - RECENT_SECONDS / SLOT_SECONDS]
        latency = dense(*(s.latency for s in recent)) if recent else []
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
            "placement": None if health is None else health.placement,
            "decisions": None if health is None else health.decisions,
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
