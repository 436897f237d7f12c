"""What the deploy/ files may refer to: the metric names our metric modules
register (built on fresh registries, as the processes build them), and the
touchstream_* names a PromQL expression uses."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from touchstream.producers import metrics as emitter_metrics
from touchstream.sinks import metrics as sink_metrics
from touchstream.streams import metrics as worker_metrics

# Series Prometheus itself adds to every scraped target.
SCRAPE_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
}
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_METRIC = re.compile(r"\btouchstream_[a-z0-9_]+\b")


def registered_metric_names(namespace: str = "touchstream") -> set[str]:
    """Every sample name the worker, sink (and `up`) and emitter registries expose."""
    names: set[str] = set()
    for create in (worker_metrics.create, sink_metrics.create, emitter_metrics.create):
        registry = CollectorRegistry()
        create(registry, namespace)
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def promql_metric_names(expr: str) -> set[str]:
    """The touchstream_* metric names in a PromQL expression (label values ignored)."""
    return set(_METRIC.findall(_QUOTED.sub('""', expr)))


def label_values(expr: str, label: str) -> set[str]:
    """Values an expression matches ``label`` against with ``=``."""
    return set(re.findall(rf'\b{label}\s*=\s*"([^"]*)"', expr))
