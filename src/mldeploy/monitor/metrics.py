"""What canary analysis reads, whatever the target: both slots' statistics over one window
(`Collected`, which each target's `slot_metrics` returns: see deploy/<target>.py for where its
numbers come from), and the serving runtime's Prometheus text, parsed and differenced between two
scrapes (the local target's source, and any target that scrapes the runtime's /metrics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mldeploy.monitor.canary import SlotStats, histogram_quantile

DURATION = "mldeploy_request_duration_seconds"
REQUESTS = "mldeploy_requests_total"
# Routes that are not predictions: probes, metadata, the scrape itself, and paths nobody serves.
NOT_PREDICTIONS = {"/", "/ping", "/health", "/v2", "/v2/health/live", "/v2/health/ready", "/metrics",
                   "/openapi.json", "unknown"}
SAMPLE = re.compile(r'^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
POLL_SECONDS = 1.0


@dataclass
class Collected:
    production: SlotStats
    canary: SlotStats
    window_seconds: float
    source: str
    unavailable: str | None = None     # why there are no numbers at all
    notes: list[str] = field(default_factory=list)


# -- the serving runtime's Prometheus metrics ----------------------------------------------
def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format -> {(name, sorted label pairs): value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if m:
            name, labels, value = m.groups()
            pairs = tuple(sorted((k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                                 for k, v in LABEL.findall(labels or "")))
            samples[(name, pairs)] = float(value)
    return samples


def _is_prediction(route: str) -> bool:
    return route not in NOT_PREDICTIONS and not (route.startswith("/v2/models/") and not route.endswith("/infer"))


def runtime_counts(samples: dict) -> tuple[float, float, dict[float, float]]:
    """(prediction requests, 5xx answers, duration buckets upper bound -> cumulative count), summed
    over every prediction route of one serving runtime's /metrics."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for (name, labels), value in samples.items():
        tags = dict(labels)
        if not _is_prediction(tags.get("route", "")):
            continue
        if name == REQUESTS:
            requests += value
            errors += value if tags.get("code", "").startswith("5") else 0
        elif name == DURATION + "_bucket":
            le = float(tags["le"])  # float("+Inf") is inf
            buckets[le] = buckets.get(le, 0.0) + value
    return requests, errors, buckets


def window_stats(slot: str, before: dict | None, after: dict) -> SlotStats:
    """A slot's statistics between two scrapes (before None: since the runtime started). A counter
    that went down means the container restarted: its value after is all of the window we know."""
    r1, e1, b1 = runtime_counts(after)
    r0, e0, b0 = runtime_counts(before) if before is not None else (0.0, 0.0, {})
    if r1 < r0:
        r0 = e0 = 0.0
        b0 = {}
    buckets = [(le, count - b0.get(le, 0.0)) for le, count in b1.items()]
    stats = SlotStats(slot, int(r1 - r0), int(e1 - e0))
    for q in (0.5, 0.99):
        seconds = histogram_quantile(q, buckets)
        setattr(stats, f"p{int(q * 100)}_ms", None if seconds is None else seconds * 1000)
    return stats
