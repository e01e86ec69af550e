"""What is counted per request, for /metrics and the statistics: the outcome an answer counts
under, and the latency histograms of one (model, version).

The event loop is the only writer (the scheduler's observers run on it), so nothing here
takes a lock.
"""

from __future__ import annotations

from bisect import bisect_left

from runtime_core import errors
from runtime_core.envelope import Outcome

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
