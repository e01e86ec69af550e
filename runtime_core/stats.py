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

What is bounded: per model, the counters and timeline of its
:class:`~runtime_core.modelfigures.ModelFigures` (see there); the status page's own memory
and limits are in :mod:`runtime_core.statuspage`. Nothing here runs on a timer, so there is
nothing to cancel; a worker's death shows as failed requests and as the pool's restart count.

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

import time
from collections.abc import Callable
from typing import Any

from runtime_core.envelope import Outcome
from runtime_core.modelfigures import ModelFigures
from runtime_core.repository import ModelRecord, ModelRepository
from runtime_core.scheduler import FairScheduler
from runtime_core.statuspage import StatusPage


class ServerStatistics:
    """The statistics of every model: a scheduler observer plus readers for the front ends."""

    def __init__(
        self,
        scheduler: FairScheduler,
        repository: ModelRepository,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repository = repository
        self.clock = clock
        self._models: dict[str, ModelFigures] = {}
        #: The status page, over the same figures.
        self.page = StatusPage(scheduler, repository, self._models, clock=clock)
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
        self.figures(model).record(result, wait, total, self.clock())

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
        """The live figures of the status page: see :meth:`StatusPage.document`."""
        return self.page.document(reasons=reasons, model=model, limit=limit, offset=offset)
