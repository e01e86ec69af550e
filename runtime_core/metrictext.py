"""ModelFamilyText: the per-model families of /metrics written straight to exposition text.

It writes the same families, help texts and samples as ``prometheus_client`` writes from
:func:`~runtime_core.metricfamilies.model_families`, but without building a sample object per
value: each series is one ``%``-format of a template, as bytes, its labels put in by one
``replace`` (on bytes these cost about 60 % of what they cost on ``str``, and leave nothing to
encode). ``prometheus_client``'s exposition was too slow to scrape at ten thousand models
(issue 23).

The text comes in chunks of at most :data:`CHUNK` models of one family
(:meth:`ModelFamilyText.chunks`), each written when it is asked for, from the figures as they
are then: GET /metrics sends each chunk as soon as it is written and lets the event loop serve
other requests between chunks, so that the whole text (about 5 KB per model, 55 MB at ten
thousand models) is never held at once, and no request waits for all of it. Nothing is kept
from one scrape's figures to the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import accumulate
from typing import TypeVar

from runtime_core.lanes import LaneStats
from runtime_core.metricfamilies import HELP, HISTOGRAMS, PREFIX
from runtime_core.metricseries import LATENCY_BUCKETS, OUTCOMES, Series
from runtime_core.repository import ModelRecord, ModelState, split_key

#: Models per chunk of :meth:`ModelFamilyText.chunks`: at most about 1 ms of work, 0.7 MB of text.
CHUNK = 500

T = TypeVar("T")


class Tally:
    """What a scrape counts on the way, for the server-wide families: the ready workers of
    every model (``runtime_core_workers_live``), so that no pool is asked twice."""

    __slots__ = ("workers_live",)

    def __init__(self) -> None:
        self.workers_live = 0


class ModelFamilyText:
    """Writes the per-model families; keeps the label text of every (model, version) it wrote,
    and the order it wrote the models in, for as long as the same models are listed."""

    def __init__(self) -> None:
        #: ``model="...",version="..."`` of each (model, version), made once.
        self._labels: dict[tuple[str, str], bytes] = {}
        #: The last scrape's models of the request and histogram families; sorted, with their labels.
        self._models: set[tuple[str, str]] = set()
        self._model_order: list[tuple[tuple[str, str], bytes]] = []
        #: The last scrape's scheduler keys, as the scheduler listed them; sorted, with their labels.
        self._lane_keys: list[str] = []
        self._lane_order: tuple[list[str], list[bytes]] = ([], [])

    def label(self, model: str, version: str) -> bytes:
        key = (model, version)
        text = self._labels.get(key)
        if text is None:
            text = self._labels[key] = f'model="{_escape(model)}",version="{_escape(version)}"'.encode()
        return text

    def write(
        self,
        series: Mapping[tuple[str, str], Series],
        lanes: Mapping[str, LaneStats],
        records: Sequence[ModelRecord],
        openmetrics: bool,
    ) -> bytes:
        """The text of :func:`~runtime_core.metricfamilies.model_families` for the same
        arguments, plus a zero series for every READY model without requests yet."""
        return b"".join(self.chunks(series, lanes, records, openmetrics, Tally()))

    def chunks(
        self,
        series: Mapping[tuple[str, str], Series],
        lanes: Mapping[str, LaneStats],
        records: Sequence[ModelRecord],
        openmetrics: bool,
        tally: Tally,
    ) -> Iterator[bytes]:
        """The text of :meth:`write`, in order, in chunks of at most :data:`CHUNK` models of
        one family. Each is written when it is asked for, from the figures as they are then
        (``lanes`` as they were when the scrape began); a model that appears meanwhile is in
        the next scrape. ``tally`` has its counts once the last chunk is written."""
        counter = _counter_head(openmetrics)
        yield from self._series_families(series, self._order(series, records), counter)
        yield from self._lane_families(lanes, counter)
        yield from self._record_families(records, counter, tally)

    @staticmethod
    def _series_families(
        series: Mapping[tuple[str, str], Series],
        order: list[tuple[tuple[str, str], bytes]],
        counter: Callable[[str], bytes],
    ) -> Iterator[bytes]:
        """Requests by outcome and the latency histograms, from the per-request series."""
        yield counter("requests")
        template, zero = _REQUESTS
        for part in _parts(order):
            pieces = []
            for key, label in part:
                one = series.get(key)
                pieces.append((zero if one is None else template % tuple(one.counts)).replace(b"\x00", label))
            yield b"".join(pieces)

        for (attr, family), template, zero in zip(HISTOGRAMS, _HISTOGRAMS, _ZERO_HISTOGRAMS, strict=True):
            yield _head(family, "histogram")
            for part in _parts(order):
                pieces = []
                for key, label in part:
                    one = series.get(key)
                    if one is None:
                        pieces.append(zero.replace(b"\x00", label))
                        continue
                    h = getattr(one, attr)
                    pieces.append((template % (*accumulate(h.counts), h.count, h.sum)).replace(b"\x00", label))
                yield b"".join(pieces)

    def _lane_families(self, lanes: Mapping[str, LaneStats], counter: Callable[[str], bytes]) -> Iterator[bytes]:
        """Queue depth, in-flight and cancelled requests, from the scheduler's figures by its key."""
        keys, labels = self._lanes(lanes)
        stats = [lanes[key] for key in keys]
        for family, attr, head in (
            ("queue_depth", "queued", _head("queue_depth")),
            ("inflight_requests", "inflight", _head("inflight_requests")),
            ("cancelled_requests_total", "cancelled", counter("cancelled_requests")),
        ):
            yield head
            line = _line(family, b"%d")
            for part in _pairs(stats, labels):
                yield b"".join([(line % getattr(st, attr)).replace(b"\x00", label) for st, label in part])

    def _record_families(
        self, records: Sequence[ModelRecord], counter: Callable[[str], bytes], tally: Tally
    ) -> Iterator[bytes]:
        """State, load time, worker restarts and ready workers, from the repository's records."""
        labels = [self.label(r.name, r.version or "") for r in records]
        yield _head("model_state")
        for part in _pairs(records, labels):
            yield b"".join([_STATES[record.state].replace(b"\x00", label) for record, label in part])
        yield _head("model_load_seconds")
        line = _line("model_load_seconds", b"%r")
        for part in _pairs(records, labels):
            yield b"".join([(line % float(record.load_time)).replace(b"\x00", label) for record, label in part])
        yield counter("worker_restarts")
        line = _line("worker_restarts_total", b"%d")
        ready: list[int] = []  # each pool's ready workers, for the next family
        pooled: list[bytes] = []  # and its labels
        for part in _pairs(records, labels):
            pieces = []
            for record, label in part:
                if record.pool is not None:
                    health = record.pool.health()
                    ready.append(health.ready)
                    pooled.append(label)
                    pieces.append((line % health.restarts).replace(b"\x00", label))
            yield b"".join(pieces)
        yield _head("workers_ready")
        line = _line("workers_ready", b"%d")
        for pair in _pairs(ready, pooled):
            yield b"".join([(line % n).replace(b"\x00", label) for n, label in pair])
        tally.workers_live = sum(ready)

    def _order(
        self, series: Mapping[tuple[str, str], Series], records: Sequence[ModelRecord]
    ) -> list[tuple[tuple[str, str], bytes]]:
        """The models of the request and histogram families, sorted, with their labels: every
        one with requests, and every READY one. Sorted again only when they are not the same
        models as at the last scrape."""
        models = set(series)
        models.update((r.name, r.version or "") for r in records if r.state is ModelState.READY)
        if models != self._models:
            self._models = models
            self._model_order = [(key, self.label(*key)) for key in sorted(models)]
        return self._model_order

    def _lanes(self, lanes: Mapping[str, LaneStats]) -> tuple[list[str], list[bytes]]:
        """The scheduler's keys, sorted, and their labels; sorted again only when the
        scheduler's keys changed since the last scrape."""
        keys = list(lanes)
        if keys != self._lane_keys:
            self._lane_keys = keys
            ordered = sorted(keys)
            labels = []
            for key in ordered:
                model, version = split_key(key)
                labels.append(self.label(model, version or ""))
            self._lane_order = (ordered, labels)
        return self._lane_order


def _parts(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in runs of :data:`CHUNK`."""
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _pairs(items: Sequence[T], labels: Sequence[bytes]) -> Iterator[Iterator[tuple[T, bytes]]]:
    """``items`` with their ``labels``, in runs of :data:`CHUNK` (no tuple is kept)."""
    for start in range(0, len(items), CHUNK):
        yield zip(items[start : start + CHUNK], labels[start : start + CHUNK], strict=True)


def _escape(value: str) -> str:
    """A label value as the exposition formats write it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _counter_head(openmetrics: bool) -> Callable[[str], bytes]:
    """``# HELP``/``# TYPE`` of a counter family (by name without :data:`PREFIX`): the text
    format names the family ``<name>_total``, OpenMetrics ``<name>`` (its samples are
    ``<name>_total`` in both)."""

    def head(family: str) -> bytes:
        name = f"{PREFIX}_{family}" + ("" if openmetrics else "_total")
        return f"# HELP {name} {HELP[family]}\n# TYPE {name} counter\n".encode()

    return head


def _head(family: str, kind: str = "gauge") -> bytes:
    """``# HELP``/``# TYPE`` of a gauge or histogram family, by name without :data:`PREFIX`."""
    name = f"{PREFIX}_{family}"
    return f"# HELP {name} {HELP[family]}\n# TYPE {name} {kind}\n".encode()


def _line(sample: str, value: bytes) -> bytes:
    """``%``-format text of one sample with no labels but the model's (``\\x00``)."""
    return f"{PREFIX}_{sample}{{\x00}} ".encode() + value + b"\n"


_BOUNDS = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]


def _histogram_template(name: str) -> bytes:
    """``%``-format text of one histogram series (a value per bucket, count, sum), ``\\x00``
    standing for its labels."""
    lines = [f'{name}_bucket{{\x00,le="{bound}"}} %d\n' for bound in _BOUNDS]
    lines.append(f"{name}_count{{\x00}} %d\n")
    lines.append(f"{name}_sum{{\x00}} %r\n")  # a float: its repr, as prometheus_client writes it
    return "".join(lines).encode()


def _requests_template() -> bytes:
    # Counts are written as integers ("3", not prometheus_client's "3.0"): cheaper to format,
    # and both formats read them as the same number. The same for the other integer figures.
    name = f"{PREFIX}_requests"
    return "".join(f'{name}_total{{\x00,outcome="{outcome}"}} %d\n' for outcome in OUTCOMES).encode()


#: The requests counter of one model, and of one without requests yet (``\x00``: its labels).
_REQUESTS = (_requests_template(), _requests_template().replace(b"%d", b"0"))
#: The latency histograms of one model, in the order of :data:`HISTOGRAMS` (``\x00``: its labels).
_HISTOGRAMS = tuple(_histogram_template(f"{PREFIX}_{family}") for _, family in HISTOGRAMS)
#: The same for a model without requests yet.
_ZERO_HISTOGRAMS = tuple(t.replace(b"%d", b"0").replace(b"%r", b"0.0") for t in _HISTOGRAMS)
#: The ``model_state`` series of a model in each state.
_STATES = {
    state: "".join(
        f'{PREFIX}_model_state{{\x00,state="{value.value}"}} {"1.0" if value is state else "0.0"}\n'
        for value in ModelState
    ).encode()
    for state in ModelState
}
