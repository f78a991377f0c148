"""Cloud Monitoring API v3 (REST): `GET /v3/projects/P/timeSeries`, answered from seeded series, and
alert policies and notification channels, kept in `policies` and `channels` (see `resource`).

Every GCP client mldeploy makes reaches one MLDEPLOY_GCP_API_ENDPOINT, so this is not a server of its
own: the Vertex AI and Cloud Run fakes route /v3/projects/P/timeSeries here (`monitoring` on each).

Tests seed series with `add(metric type, metric labels, resource type, resource labels, value)`, a
value being a count (INT64) or a distribution made by `distribution(...)`, all inside the window.
A list answers what its `filter` selects (clauses `key = "v"` or `key = one_of("a", "b")` joined by
AND; keys metric.type, resource.type, metric.labels.X, resource.labels.X), each series summed over
the interval (ALIGN_DELTA) and summed across series into the groupByFields (REDUCE_SUM; only the
grouped labels stay), as one point, in the JSON Google sends (int64 as strings, camelCase). It refuses
with 400 what the real API refuses (no or several metric types, a clause it cannot read, an interval
or alignment period that is not one, group-by fields not spelled metric.label.X / resource.label.X)
and with 501 what it does not model (other aligners and reducers). `queries` keeps the query
parameters of every list as received (lists of values).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

PATH = re.compile(r"/v3/projects/(?P<project>[^/]+)/timeSeries")
RESOURCES = re.compile(r"/v3/projects/(?P<project>[^/]+)/(?P<kind>alertPolicies|notificationChannels)(?:/(?P<id>\d+))?")
CLAUSE = re.compile(r'^(metric\.type|resource\.type|(?:metric|resource)\.labels\.\w+)\s*=\s*'
                    r'(?:"([^"]*)"|one_of\(((?:\s*"[^"]*"\s*,?)+)\))$')
GROUP = re.compile(r"^(metric|resource)\.label\.(\w+)$")


class BadRequest(Exception):
    def __init__(self, code: int, status: str, message: str):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


def distribution(counts: list[int], *, bounds: list[float] | None = None,
                 exponential: tuple[int, float, float] | None = None) -> dict[str, Any]:
    """A distribution value: bucket counts (underflow first) over explicit bounds, or exponential
    buckets (num_finite_buckets, growth_factor, scale)."""
    options = ({"explicitBuckets": {"bounds": bounds}} if bounds is not None else
               {"exponentialBuckets": dict(zip(("numFiniteBuckets", "growthFactor", "scale"), exponential))})
    return {"bucketOptions": options, "bucketCounts": list(counts)}


class CloudMonitoring:
    def __init__(self) -> None:
        self.series: list[dict[str, Any]] = []
        self.queries: list[dict[str, list[str]]] = []
        self.policies: dict[str, dict[str, Any]] = {}   # alertPolicies by name
        self.channels: dict[str, dict[str, Any]] = {}   # notificationChannels by name
        self._ids = iter(range(1001, 10**6))

    def resource(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]
                 ) -> tuple[int, dict[str, Any]] | None:
        """Alert policies and notification channels (list with an optional `type = "x"` filter, one
        page; create; get; PATCH with an updateMask), or None when `path` is neither."""
        m = RESOURCES.fullmatch(path)
        if not m:
            return None
        kind, store = m["kind"], self.policies if m["kind"] == "alertPolicies" else self.channels
        if m["id"] is None and method == "GET":
            where = _filter_terms(query.get("filter", [""])[-1])
            return 200, {kind: [r for r in store.values() if all(r.get(k) == v for k, v in where.items())]}
        if m["id"] is None and method == "POST":
            if "name" in body:
                raise BadRequest(400, "INVALID_ARGUMENT", f"a new {kind[:-1]} must not have a name")
            _check_policy(body, self.channels) if kind == "alertPolicies" else _check_channel(body)
            name = f"projects/{m['project']}/{kind}/{next(self._ids)}"
            store[name] = _as_answered({**body, "name": name})
            return 200, store[name]
        name = f"projects/{m['project']}/{kind}/{m['id']}"
        if name not in store:
            raise BadRequest(404, "NOT_FOUND", f"Requested entity was not found: {name}")
        if method == "GET":
            return 200, store[name]
        if method == "PATCH":
            mask = [f for f in query.get("updateMask", [""])[-1].split(",") if f]
            if not mask:
                raise BadRequest(400, "INVALID_ARGUMENT", "the fake needs an updateMask")
            updated = {**store[name], **{f: body.get(f) for f in mask}}
            _check_policy(updated, self.channels) if kind == "alertPolicies" else _check_channel(updated)
            store[name] = updated = _as_answered(updated)
            return 200, updated
        raise BadRequest(501, "UNIMPLEMENTED", f"the fake does not {method} {kind}")

    def add(self, metric: str, labels: dict[str, str], resource: str, resource_labels: dict[str, str],
            value: int | dict[str, Any]) -> None:
        self.series.append({"metric": {"type": metric, "labels": dict(labels)},
                            "resource": {"type": resource, "labels": dict(resource_labels)}, "value": value})

    def list(self, project: str, query: dict[str, list[str]]) -> dict[str, Any]:
        self.queries.append(query)
        one = {k: v[-1] for k, v in query.items()}
        wanted = _filter(one.get("filter", ""))
        try:
            start, end = (dt.datetime.fromisoformat(one[f"interval.{k}"].replace("Z", "+00:00"))
                          for k in ("startTime", "endTime"))
        except (KeyError, ValueError):
            raise BadRequest(400, "INVALID_ARGUMENT",
                             "interval.startTime and interval.endTime must be RFC 3339 times") from None
        period = re.fullmatch(r"(\d+)s", one.get("aggregation.alignmentPeriod", ""))
        if not period or int(period.group(1)) < 60 or start >= end:
            raise BadRequest(400, "INVALID_ARGUMENT", "The alignment period must be at least 60s, the interval not empty")
        if (one.get("aggregation.perSeriesAligner"), one.get("aggregation.crossSeriesReducer")) != (
                "ALIGN_DELTA", "REDUCE_SUM"):
            raise BadRequest(501, "UNIMPLEMENTED", "the fake sums only: ALIGN_DELTA with REDUCE_SUM")
        fields = query.get("aggregation.groupByFields", [])
        groups = [GROUP.match(f) for f in fields]
        if not all(groups):
            raise BadRequest(400, "INVALID_ARGUMENT", f"Field {fields} is not a valid group-by field")
        merged: dict[tuple, dict[str, Any]] = {}
        for s in self.series:
            if not all(_value_of(s, key) in values for key, values in wanted.items()):
                continue
            key = tuple(s[kind]["labels"].get(name, "") for kind, name in (g.groups() for g in groups))
            into = merged.setdefault(key, {"metric": {"type": s["metric"]["type"], "labels": {}},
                                           "resource": {"type": s["resource"]["type"], "labels": {}}, "value": None})
            for (kind, name), value in zip((g.groups() for g in groups), key):
                into[kind]["labels"][name] = value
            into["value"] = _sum(into["value"], s["value"])
        when = {"startTime": one["interval.startTime"], "endTime": one["interval.endTime"]}
        return {"timeSeries": [_series(s, when) for s in merged.values()]}


def _filter_terms(text: str) -> dict[str, str]:
    """`type = "email"` (and more such clauses joined by AND) as {field: value}; fields in snake_case."""
    terms = [re.fullmatch(r'\s*(\w+)\s*=\s*"([^"]*)"\s*', c) for c in text.split(" AND ")] if text else []
    if not all(terms):
        raise BadRequest(400, "INVALID_ARGUMENT", f"Could not parse the filter {text!r}")
    return {re.sub(r"_(\w)", lambda x: x.group(1).upper(), t.group(1)): t.group(2) for t in terms}


def _check_policy(policy: dict[str, Any], channels: dict[str, Any]) -> None:
    """What the API refuses: no display name or combiner, no conditions, a condition without a metric
    type in its filter or a comparison, a channel that does not exist."""
    if not policy.get("displayName") or policy.get("combiner") not in ("AND", "OR", "AND_WITH_MATCHING_RESOURCE"):
        raise BadRequest(400, "INVALID_ARGUMENT", "an alert policy needs a displayName and a combiner")
    conditions = policy.get("conditions") or []
    if not 1 <= len(conditions) <= 6:
        raise BadRequest(400, "INVALID_ARGUMENT", "an alert policy needs 1 to 6 conditions")
    for c in conditions:
        threshold = c.get("conditionThreshold") or {}
        if "metric.type" not in threshold.get("filter", "") or not threshold.get("comparison", "").startswith(
                "COMPARISON_") or "thresholdValue" not in threshold:
            raise BadRequest(400, "INVALID_ARGUMENT", f"condition {c.get('displayName')!r}: a filter naming "
                                                      "metric.type, a comparison and a thresholdValue")
    for channel in policy.get("notificationChannels") or []:
        if channel not in channels:
            raise BadRequest(404, "NOT_FOUND", f"notification channel {channel} was not found")


def _as_answered(resource: dict[str, Any]) -> dict[str, Any]:
    """As Google answers it: each condition named, a zero thresholdValue left out (proto3 JSON)."""
    for i, c in enumerate(resource.get("conditions") or []):
        c.setdefault("name", f"{resource['name']}/conditions/{i + 1}")
        if not (c.get("conditionThreshold") or {}).get("thresholdValue", 1):
            del c["conditionThreshold"]["thresholdValue"]
    return resource


def _check_channel(channel: dict[str, Any]) -> None:
    if channel.get("type") != "email" or "@" not in (channel.get("labels") or {}).get("email_address", ""):
        raise BadRequest(400, "INVALID_ARGUMENT", "the fake makes email channels with labels.email_address only")


def _filter(text: str) -> dict[str, set[str]]:
    wanted: dict[str, set[str]] = {}
    for clause in (c.strip() for c in text.split(" AND ")):
        m = CLAUSE.match(clause)
        if not m:
            raise BadRequest(400, "INVALID_ARGUMENT", f"Could not parse the filter at {clause!r}")
        key, one, many = m.groups()
        wanted[key] = {one} if one is not None else set(re.findall(r'"([^"]*)"', many))
    if len(wanted.get("metric.type", ())) != 1:
        raise BadRequest(400, "INVALID_ARGUMENT", "A filter must name exactly one metric type")
    return wanted


def _value_of(series: dict[str, Any], key: str) -> str | None:
    kind, _, rest = key.partition(".")
    return series[kind]["type"] if rest == "type" else series[kind]["labels"].get(rest.removeprefix("labels."))


def _sum(total: int | dict | None, value: int | dict) -> int | dict:
    if total is None:
        return value if isinstance(value, int) else {**value, "bucketCounts": list(value["bucketCounts"])}
    if isinstance(value, int):
        return total + value
    assert total["bucketOptions"] == value["bucketOptions"], "REDUCE_SUM needs the same buckets"
    counts = total["bucketCounts"] + [0] * (len(value["bucketCounts"]) - len(total["bucketCounts"]))
    return {**total, "bucketCounts": [c + (value["bucketCounts"][i] if i < len(value["bucketCounts"]) else 0)
                                      for i, c in enumerate(counts)]}


def _series(s: dict[str, Any], when: dict[str, str]) -> dict[str, Any]:
    if isinstance(s["value"], int):
        kind, value = "INT64", {"int64Value": str(s["value"])}
    else:
        counts = s["value"]["bucketCounts"]
        while counts and not counts[-1]:  # Google leaves trailing empty buckets out
            counts = counts[:-1]
        kind, value = "DISTRIBUTION", {"distributionValue": {
            "count": str(sum(counts)), "bucketOptions": s["value"]["bucketOptions"],
            "bucketCounts": [str(c) for c in counts]}}
    return {"metric": s["metric"], "resource": s["resource"], "metricKind": "DELTA", "valueType": kind,
            "points": [{"interval": when, "value": value}]}
