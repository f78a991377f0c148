"""Canary analysis: judge the canary against production on the same window and decide
promote, hold or rollback, with the reasons.

Pure logic on per-slot statistics (requests, 5xx errors, latency p50/p99, the predictions seen);
where the numbers come from is mldeploy.monitor.metrics. The rules, in order:
  - no data, or fewer than `min_requests` canary requests: hold (too early to judge);
  - any threshold breached: rollback, naming each breach with its numbers;
  - production too thin to compare with (fewer than `min_requests`): hold;
  - else promote.
A latency ratio only counts when the canary is also slower by LATENCY_NOISE_MS or more: at a
millisecond, a ratio of 2 is scheduling noise (and one histogram bucket), not a regression.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mldeploy.config import CanaryAnalysisSection, Config
    from mldeploy.monitor.metrics import Collected

PROMOTE, HOLD, ROLLBACK = "promote", "hold", "rollback"
# Below this absolute difference a latency ratio is ignored. 5 ms is the width of the serving
# runtime's histogram buckets around a few milliseconds (2.5, 5, 10 ms), so smaller differences
# cannot be told apart from where an observation fell in a bucket.
LATENCY_NOISE_MS = 5.0
NUMERIC_BINS = 10  # numeric predictions: production's deciles are the bins both slots are counted in


@dataclass
class SlotStats:
    slot: str
    requests: int = 0
    errors: int = 0                          # 5xx answers (a client's 4xx is not the model's fault)
    p50_ms: float | None = None
    p99_ms: float | None = None
    predictions: list | None = None          # one value per predicted row: a class (str) or a number
    notes: list[str] = field(default_factory=list)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def to_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
                "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
                "predictions": None if self.predictions is None else len(self.predictions)}


@dataclass
class Analysis:
    decision: str
    reasons: list[str]
    production: SlotStats
    canary: SlotStats
    window_seconds: float
    divergence: float | None = None
    notes: list[str] = field(default_factory=list)
    source: str = ""                         # e.g. "local router 127.0.0.1:8080", "CloudWatch AWS/SageMaker"

    @property
    def window_text(self) -> str:
        return f"over the last {self.window_seconds:g} s" if self.window_seconds else "since the slots started"

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reasons": self.reasons, "window_seconds": self.window_seconds,
                "source": self.source, "prediction_divergence": self.divergence, "notes": self.notes,
                "slots": {s.slot: s.to_dict() for s in (self.production, self.canary)}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def _rows(self) -> list[tuple[str, str, str]]:
        p, c = self.production, self.canary
        div = "-" if self.divergence is None else f"{self.divergence:.3f}"
        return [("requests", str(p.requests), str(c.requests)),
                ("5xx errors", str(p.errors), str(c.errors)),
                ("error rate", _pct(p.error_rate), _pct(c.error_rate)),
                ("latency p50", _ms(p.p50_ms), _ms(c.p50_ms)),
                ("latency p99", _ms(p.p99_ms), _ms(c.p99_ms)),
                ("predictions seen", _n(p.predictions), _n(c.predictions)),
                ("prediction divergence (JS)", "", div)]

    def text(self) -> str:
        head = ("metric", self.production.slot, self.canary.slot)
        rows = [head, *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"canary analysis {self.window_text} ({self.source})"]
        lines += ["  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
                  for r in rows]
        lines.append(f"decision: {self.decision}")
        lines += [f"  - {r}" for r in self.reasons]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def markdown(self) -> str:
        icon = {PROMOTE: ":white_check_mark:", HOLD: ":hourglass:", ROLLBACK: ":x:"}[self.decision]
        out = [f"### Canary analysis: {icon} **{self.decision}**", "",
               f"Requests {self.window_text}, {self.source}.", "",
               f"| metric | {self.production.slot} | {self.canary.slot} |", "|---|---:|---:|"]
        out += [f"| {m} | {p} | {c} |" for m, p, c in self._rows()]
        out += ["", *[f"- {r}" for r in self.reasons]]
        if self.notes:
            out += ["", *[f"> {n}" for n in self.notes]]
        return "\n".join(out) + "\n"


def analyze(production: SlotStats, canary: SlotStats, thresholds: CanaryAnalysisSection, window_seconds: float, *,
            source: str = "", unavailable: str | None = None, notes: Sequence[str] = ()) -> Analysis:
    """The decision for this window. `thresholds`: a CanaryAnalysisSection (monitoring.canary);
    `unavailable`: why no metrics could be read at all (the decision is then hold)."""
    t = thresholds
    notes = [*notes, *production.notes, *canary.notes]
    result = Analysis(HOLD, [], production, canary, window_seconds, notes=notes, source=source)
    if unavailable:
        result.reasons.append(unavailable)
        return result
    if production.requests == 0 and canary.requests == 0:
        result.reasons.append(f"no requests reached either slot {result.window_text}: nothing to judge")
        return result
    if canary.requests < t.min_requests:
        result.reasons.append(f"the canary answered {canary.requests} requests, fewer than min_requests "
                              f"{t.min_requests}: too early to judge")
        return result

    breaches = []
    rate = canary.errors / canary.requests  # its error_rate: it answered min_requests (at least 1)
    if rate > t.max_error_rate:
        breaches.append(f"canary error rate {_pct(rate)} ({canary.errors} of {canary.requests}) is above "
                        f"max_error_rate {_pct(t.max_error_rate)}")
    comparable = production.requests >= t.min_requests
    if comparable:
        increase = rate - production.errors / production.requests  # as many again
        if increase > t.max_error_rate_increase:
            breaches.append(f"canary error rate {_pct(rate)} is {100 * increase:.2f} points above production's "
                            f"{_pct(production.error_rate)} (max_error_rate_increase {_pct(t.max_error_rate_increase)})")
        for name in ("p50", "p99"):
            breach = _latency_breach(name, getattr(production, f"{name}_ms"), getattr(canary, f"{name}_ms"),
                                     t.max_latency_ratio, notes)
            if breach:
                breaches.append(breach)
        if production.predictions and canary.predictions:
            result.divergence = divergence(production.predictions, canary.predictions)
            if result.divergence > t.max_prediction_divergence:
                breaches.append(f"prediction divergence {result.divergence:.3f} (Jensen-Shannon distance) is above "
                                f"max_prediction_divergence {t.max_prediction_divergence:g}")
        elif not any(n.startswith("prediction divergence") for n in notes):
            notes.append("prediction divergence not measured: no captured predictions for "
                         + " and ".join(s.slot for s in (production, canary) if not s.predictions))
    if breaches:
        result.decision, result.reasons = ROLLBACK, breaches
    elif not comparable:
        result.reasons.append(f"production answered {production.requests} requests, fewer than min_requests "
                              f"{t.min_requests}: too few to compare the canary with")
    else:
        result.decision = PROMOTE
        result.reasons.append(f"every check passed on {canary.requests} canary and {production.requests} "
                              "production requests")
    return result


def _latency_breach(name: str, prod: float | None, canary: float | None, limit: float, notes: list[str]) -> str | None:
    if prod is None or canary is None:
        if canary is not None or prod is not None:
            notes.append(f"latency {name} not compared: one slot has no latency figures")
        return None
    ratio = canary / prod if prod > 0 else math.inf
    if ratio <= limit:
        return None
    if canary - prod < LATENCY_NOISE_MS:
        notes.append(f"latency {name} ratio {ratio:.2f} ignored: the canary is only {canary - prod:.2f} ms slower "
                     f"(under {LATENCY_NOISE_MS:g} ms)")
        return None
    return (f"canary latency {name} {canary:.1f} ms is {ratio:.2f}x production's {prod:.1f} ms "
            f"(max_latency_ratio {limit:g})")


def judge(cfg: Config, got: Collected) -> Analysis:
    """Judge both slots' metrics as the target collected them (Target.slot_metrics)."""
    return analyze(got.production, got.canary, cfg.monitoring.canary, got.window_seconds, source=got.source,
                   unavailable=got.unavailable, notes=got.notes)


# -- numbers from raw material --------------------------------------------------------------------
def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: buckets are (upper bound, cumulative count), +Inf last; linear
    within the bucket the rank falls in; a rank in the +Inf bucket answers the largest finite bound."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank and cumulative > below:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    return lower


def prediction_values(records: list[dict], output: str | None = None) -> list:
    """One value per predicted row from capture records: the argmax class of a [batch, k>1] output,
    else the number itself. The first output unless `output` names one."""
    values: list = []
    for record in records:
        outputs = record.get("outputs") or {}
        name = output or next(iter(outputs), None)
        for row in outputs.get(name) or []:
            if isinstance(row, list):
                flat = _flatten(row)
                values.append(f"class {max(range(len(flat)), key=flat.__getitem__)}" if len(flat) > 1
                              else float(flat[0]) if flat else None)
            else:
                values.append(row if isinstance(row, str) else float(row))
    return [v for v in values if v is not None]


def divergence(production: list, canary: list) -> float:
    """Jensen-Shannon distance (base 2: 0 same, 1 disjoint) between two slots' predictions: classes
    are counted as they are, numbers in production's deciles (plus a bin each below and above
    production's range, so a canary predicting outside it diverges fully)."""
    if all(isinstance(v, (int, float)) for v in (*production, *canary)):
        edges = sorted({_quantile(production, i / NUMERIC_BINS) for i in range(1, NUMERIC_BINS)})
        low, high = min(production), max(production)
        production = [_bin(v, edges, low, high) for v in production]
        canary = [_bin(v, edges, low, high) for v in canary]
    from scipy.spatial.distance import jensenshannon  # as drift measures categorical features

    p, q = Counter(map(str, production)), Counter(map(str, canary))
    keys = sorted(set(p) | set(q))
    return float(jensenshannon([p[k] for k in keys], [q[k] for k in keys], base=2))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _bin(value: float, edges: list[float], low: float, high: float) -> int:
    return -1 if value < low else len(edges) + 1 if value > high else sum(value > e for e in edges)


def _flatten(row: list) -> list:
    out: list = []
    for v in row:
        out.extend(_flatten(v) if isinstance(v, list) else [v])
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def _n(values: list | None) -> str:
    return "-" if values is None else str(len(values))
