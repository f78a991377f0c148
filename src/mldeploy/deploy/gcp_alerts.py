"""Cloud Monitoring alert policies for a GCP target (its series given by the target): 5xx answers and
latency p99 above monitoring.alerts, each notifying one email channel per address. Policies are found
again by display name and updated in place; channels are found by address and shared. The calls go
through the Monitoring REST API v3 (deploy/gcp.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mldeploy.deploy import gcp

if TYPE_CHECKING:
    from mldeploy.config import Config
    from mldeploy.monitor.setup import SetupPlan

# A target's series: {"5xx": (metric type, what else selects errors), "latency p99": (metric type, filter)}
Series = dict[str, tuple[str, str]]
PERIOD = "300s"


def policies(cfg: Config, endpoint: str, target: str, series: Series, resource: str) -> list[dict[str, Any]]:
    """The policies wanted, without their notification channels (those are added when applied)."""
    alerts = cfg.monitoring.alerts
    found = []
    threshold: float
    for kind, (metric, extra) in series.items():
        if kind == "5xx":
            title, threshold = f"{alerts.errors_5xx} or more 5xx answers in 5 minutes", alerts.errors_5xx - 1
            aggregation = {"alignmentPeriod": PERIOD, "perSeriesAligner": "ALIGN_SUM", "crossSeriesReducer": "REDUCE_SUM"}
        else:
            title, threshold = f"latency p99 above {alerts.latency_p99_ms:g} ms over 5 minutes", alerts.latency_p99_ms
            aggregation = {"alignmentPeriod": PERIOD, "perSeriesAligner": "ALIGN_PERCENTILE_99",
                           "crossSeriesReducer": "REDUCE_MAX"}
        found.append({
            "displayName": f"mldeploy {endpoint} {kind}", "combiner": "OR", "enabled": True,
            "userLabels": {"mldeploy-endpoint": gcp.label_value(endpoint)},
            "documentation": {"mimeType": "text/markdown",
                              "content": f"Set up by `mldeploy monitor setup` for {target} `{endpoint}`."},
            "conditions": [{"displayName": title, "conditionThreshold": {
                "filter": f'metric.type = "{metric}" AND {resource}{extra}', "aggregations": [aggregation],
                "comparison": "COMPARISON_GT", "thresholdValue": threshold, "duration": "0s",
                "trigger": {"count": 1}}}]})
    return found


def plan(cfg: Config, endpoint: str, project_id: str, target: str, series: Series, resource: str,
         result: SetupPlan) -> None:
    """Add the channel and policy changes to `result` (reads only; the changes run when applied)."""
    channels_now, channels = _channels(project_id, cfg.monitoring.alerts.emails, result)
    existing = {p.get("displayName"): p for p in _list(project_id, "alertPolicies")}
    wanted = policies(cfg, endpoint, target, series, resource)
    for policy in wanted:
        name, found = policy["displayName"], existing.get(policy["displayName"])
        if found is None:
            def create(p: dict[str, Any] = policy) -> None:
                gcp.monitoring_call("POST", project_id, "alertPolicies", f"create the alert policy {p['displayName']}",
                                    body={**p, "notificationChannels": channels()})
            result.add("create", f"cloud monitoring alert policy {name}", create, "threshold", new=_threshold(policy))
        elif _essence(found) != _essence(policy) or sorted(found.get("notificationChannels", [])) != channels_now:
            def update(p: dict[str, Any] = policy, f: dict[str, Any] = found) -> None:
                gcp.monitoring_call(
                    "PATCH", project_id, f["name"].split("/", 2)[2], f"update the alert policy {p['displayName']}",
                    params={"updateMask": "conditions,notificationChannels,combiner,enabled,documentation,userLabels"},
                    body={**p, "notificationChannels": channels()})
            result.add("update", f"cloud monitoring alert policy {name}", update, "threshold or channels",
                       _threshold(found), _threshold(policy))
    result.outputs["alert-policies"] = ", ".join(p["displayName"] for p in wanted)


def _threshold(policy: dict[str, Any]) -> float:
    conditions = policy.get("conditions") or [{}]
    return conditions[0].get("conditionThreshold", {}).get("thresholdValue", 0)  # proto3 JSON leaves 0 out


def _channels(project_id: str, emails: list[str], result: SetupPlan
              ) -> tuple[list[str] | None, Callable[[], list[str]]]:
    """Plan an email channel for each address without one. Returns the channels' names as they are
    now (None when one is still to be made) and a function giving them once the plan has run."""
    found = _list(project_id, "notificationChannels", 'type = "email"')
    by_email = {c.get("labels", {}).get("email_address"): c["name"] for c in found}
    names = {e: by_email[e] for e in emails if e in by_email}
    for email in emails:
        if email not in names:
            def create(address: str = email) -> None:
                names[address] = gcp.monitoring_call(
                    "POST", project_id, "notificationChannels", f"create the email channel for {address}",
                    body={"type": "email", "displayName": f"mldeploy {address}", "enabled": True,
                          "labels": {"email_address": address}})["name"]
            result.add("create", f"cloud monitoring email channel {email}", create)
    now = sorted(names.values()) if len(names) == len(emails) else None
    return now, lambda: sorted(names.values())


def _list(project_id: str, kind: str, where: str | None = None) -> list[dict[str, Any]]:
    """Every alert policy or notification channel of the project (page by page)."""
    params: dict[str, Any] = {"pageSize": 1000, **({"filter": where} if where else {})}
    found: list[dict[str, Any]] = []
    while True:
        page = gcp.monitoring_call("GET", project_id, kind, f"list the Cloud Monitoring {kind}", params=params)
        found += page.get(kind, [])
        if not page.get("nextPageToken"):
            return found
        params["pageToken"] = page["nextPageToken"]


def _essence(policy: dict[str, Any]) -> list:
    """What a policy does, in a form the API's answer and ours compare in (it adds names and records,
    and leaves a zero thresholdValue out, as proto3 JSON does)."""
    return [policy.get("combiner"), policy.get("enabled", True),
            [(c.get("displayName"), float(c.get("conditionThreshold", {}).get("thresholdValue", 0)),
              {k: c.get("conditionThreshold", {}).get(k) for k in ("filter", "aggregations", "comparison", "duration")})
             for c in policy.get("conditions", [])]]
