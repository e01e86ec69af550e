"""ModelFamilyText: the per-model families of /metrics written straight to exposition text.

It writes the same families, help texts and samples, in the same order, as
``prometheus_client`` writes from :func:`~runtime_core.metricfamilies.model_families`, but
without building a sample object per value: the text of each model's labels is made once and
kept, and each series is one ``%``-format of a template. ``prometheus_client``'s exposition
was too slow to scrape at ten thousand models (issue 23).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import accumulate

from runtime_core.lanes import LaneStats
from runtime_core.metricfamilies import HELP, HISTOGRAMS, PREFIX
from runtime_core.metricseries import LATENCY_BUCKETS, OUTCOMES, Histogram, Series
from runtime_core.repository import ModelRecord, ModelState, split_key


class ModelFamilyText:
    """Writes the per-model families; keeps the label text of every (model, version) it wrote."""

    def __init__(self) -> None:
        #: ``model="...",version="..."`` of each (model, version), made once.
        self._labels: dict[tuple[str, str], str] = {}

    def label(self, model: str, version: str) -> str:
        key = (model, version)
        text = self._labels.get(key)
        if text is None:
            text = self._labels[key] = f'model="{_escape(model)}",version="{_escape(version)}"'
        return text

    def write(
        self,
        series: Mapping[tuple[str, str], Series],
        lanes: Mapping[str, LaneStats],
        records: Iterable[ModelRecord],
        openmetrics: bool,
    ) -> Iterator[str]:
        """The text of :func:`~runtime_core.metricfamilies.model_families` for the same
        arguments, plus a zero series for every READY model without requests yet."""
        by_key = {r.key: r for r in records}
        keys = set(series)
        keys.update((r.name, r.version or "") for r in by_key.values() if r.state is ModelState.READY)
        order = sorted(keys)
        counter = _CounterHead(openmetrics)

        name = f"{PREFIX}_requests"
        yield counter.head(name, HELP["requests"])
        # Counts are written as integers ("3", not prometheus_client's "3.0"): cheaper to format,
        # and both formats read them as the same number.
        requests = "".join(f'{name}_total{{\x00,outcome="{outcome}"}} %d\n' for outcome in OUTCOMES)
        zero_requests = requests.replace("%d", "0")
        for key in order:
            label = self.label(*key)
            one = series.get(key)
            if one is None:
                yield zero_requests.replace("\x00", label)
                continue
            yield (requests % tuple(one.counts)).replace("\x00", label)
        for attr, family in HISTOGRAMS:
            name = f"{PREFIX}_{family}"
            yield f"# HELP {name} {HELP[family]}\n# TYPE {name} histogram\n"
            template = _histogram_template(name)
            for key in order:
                label = self.label(*key)
                one = series.get(key)
                if one is None:
                    yield _ZERO_HISTOGRAMS[name].replace("\x00", label)
                    continue
                hist: Histogram = getattr(one, attr)
                values = (*accumulate(hist.counts), hist.count, float(hist.sum))
                yield (template % values).replace("\x00", label)

        stats = sorted(lanes.items())
        gauges = (
            ("queue_depth", "gauge", "queued"),
            ("inflight_requests", "gauge", "inflight"),
            ("cancelled_requests", "counter", "cancelled"),
        )
        for family, kind, attr in gauges:
            name = f"{PREFIX}_{family}"
            sample = name
            if kind == "counter":
                yield counter.head(name, HELP[family])
                sample = name + "_total"
            else:
                yield f"# HELP {name} {HELP[family]}\n# TYPE {name} gauge\n"
            for scheduled, st in stats:
                model, version = split_key(scheduled)
                yield f"{sample}{{{self.label(model, version or '')}}} {float(getattr(st, attr))!r}\n"

        ordered = list(by_key.values())
        name = f"{PREFIX}_model_state"
        yield f"# HELP {name} {HELP['model_state']}\n# TYPE {name} gauge\n"
        states = {
            state: "".join(
                f'{name}{{\x00,state="{value.value}"}} {"1.0" if value is state else "0.0"}\n' for value in ModelState
            )
            for state in ModelState
        }
        for record in ordered:
            yield states[record.state].replace("\x00", self.label(record.name, record.version or ""))
        name = f"{PREFIX}_model_load_seconds"
        yield f"# HELP {name} {HELP['model_load_seconds']}\n# TYPE {name} gauge\n"
        for record in ordered:
            yield f"{name}{{{self.label(record.name, record.version or '')}}} {float(record.load_time)!r}\n"
        healths = [(r, r.pool.health()) for r in ordered if r.pool is not None]
        name = f"{PREFIX}_worker_restarts"
        yield counter.head(name, HELP["worker_restarts"])
        for record, health in healths:
            label = self.label(record.name, record.version or "")
            yield f"{name}_total{{{label}}} {float(health.restarts)!r}\n"
        name = f"{PREFIX}_workers_ready"
        yield f"# HELP {name} {HELP['workers_ready']}\n# TYPE {name} gauge\n"
        for record, health in healths:
            yield f"{name}{{{self.label(record.name, record.version or '')}}} {float(health.ready)!r}\n"


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
    for _, family in HISTOGRAMS
}
