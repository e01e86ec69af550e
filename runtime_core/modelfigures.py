"""ModelFigures: what is recorded per model for the statistics extension and the status page.

Triton's counters (count and total time of successes, failures, queue waits and each compute
phase; inferences, executions, per batch size) and a timeline: the last :data:`SLOTS` slots of
:data:`SLOT_SECONDS` seconds, each with its successes, its errors by outcome and a latency
histogram over :data:`BOUNDS`, read back with :func:`percentile`.

What is bounded: a model's counters take a few hundred bytes; its timeline holds at most
:data:`SLOTS` slots (older ones are dropped as time passes), and a slot's histogram holds only
the buckets it counted. :meth:`ModelFigures.record` runs on the event loop and only adds
numbers: no locks, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from runtime_core.envelope import Outcome
from runtime_core.metricseries import OUTCOMES, SUCCESS, outcome_index

#: Width of one timeline slot, in seconds.
SLOT_SECONDS = 2.0
#: Slots kept per model: five minutes.
SLOTS = 150

#: Upper bounds (seconds) of the latency buckets: 10 us to about 100 s, four per octave,
#: so a percentile read from them is within 10 % of the true value.
BOUNDS: tuple[float, ...] = tuple(1e-5 * 2 ** (k / 4) for k in range(94))


def _ns(seconds: float) -> int:
    """``seconds`` in whole nanoseconds, as Triton counts time (never negative)."""
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


#: The errors of every slot that counted none, shared until its first (a list per slot was
#: 0.1 KB for each of ten thousand models, issue 23). Readers only sum and zip it.
_NO_ERRORS: tuple[int, ...] = (0,) * len(OUTCOMES)


@dataclass(slots=True)
class Slot:
    """One :data:`SLOT_SECONDS` slot of a model's timeline."""

    index: int
    success: int = 0
    #: Errors by outcome: :data:`_NO_ERRORS` until the slot counts one.
    errors: list[int] | tuple[int, ...] = _NO_ERRORS
    #: Latency histogram, sparse (bucket index -> count): a slot of a quiet model holds a
    #: request or two, and a dense list of every bucket per slot made the timelines of a
    #: thousand models large (issue 9).
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
    #: At most :data:`SLOTS` slots, oldest first. A list, not a deque of ``maxlen``: a deque
    #: takes 0.6 KB for its first slot, and most of ten thousand models hold one or two.
    timeline: list[Slot] = field(default_factory=list)

    def record(self, result: Outcome | int, wait: float, total: float, now: float) -> None:
        """One request answered at ``now`` (seconds since the epoch) with ``result``, after
        ``wait`` seconds in its queue and ``total`` from submit to answer (see
        :data:`runtime_core.scheduler.Observer`)."""
        index = outcome_index(result)
        self.outcomes[index] += 1
        self.last_inference = int(now * 1000)
        slot = self._slot(now)
        if index != SUCCESS or not isinstance(result, Outcome):
            self.fail.add(total)
            errors = slot.errors
            if not isinstance(errors, list):
                errors = slot.errors = list(errors)
            errors[index] += 1
            return
        self.success.add(total)
        self.queue.add(wait)
        self.compute_input.add(result.decode)
        self.compute_infer.add(result.predict)
        self.compute_output.add(result.encode)
        self.inferences += result.rows
        share = 1.0 / max(1, result.batch)
        self.executions += share
        batch = self.batches.get(result.batch_rows)
        if batch is None:
            batch = self.batches[result.batch_rows] = BatchFigures()
        batch.executions += share
        batch.compute_input += _ns(result.decode)
        batch.compute_infer += _ns(result.predict)
        batch.compute_output += _ns(result.encode)
        slot.success += 1
        bucket = _bucket(total)
        slot.latency[bucket] = slot.latency.get(bucket, 0) + 1

    def _slot(self, now: float) -> Slot:
        index = int(now // SLOT_SECONDS)
        timeline = self.timeline
        if not timeline or timeline[-1].index != index:
            timeline.append(Slot(index))
            if len(timeline) > SLOTS:
                del timeline[0]  # once per slot of SLOT_SECONDS at most
        return timeline[-1]


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


def dense(*sparse: dict[int, int]) -> list[int]:
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
