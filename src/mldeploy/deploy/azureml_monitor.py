"""Azure ML's monitoring of an online endpoint: Azure Monitor metric alerts and an action group.

    action group <monitoring.alerts.action_group> (a resource id, or a name created) with email receivers
    metric alert mldeploy-<endpoint>-latency-p99    RequestLatency_P99 (endpoint) above alerts.latency_p99_ms
    metric alert mldeploy-<endpoint>-5xx            RequestsPerMinute, statusCodeClass 5xx (endpoint), over 5 minutes
    metric alert mldeploy-<endpoint>-<slot>-cpu     CpuUtilizationPercentage (the slot's deployment)
    metric alert mldeploy-<endpoint>-<slot>-memory  CpuMemoryUtilizationPercentage (the slot's deployment)

Alerts are named by slot, so a re-run after a deploy that replaced a deployment moves them to the new
one. Azure ML model monitoring (azure-ai-ml MonitorSchedule) needs registered data assets for the
reference data, which mldeploy does not make: left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mldeploy.deploy.azure import monitor_client, translated, workspace
from mldeploy.errors import UsageError
from mldeploy.monitor.setup import SetupPlan

if TYPE_CHECKING:
    from mldeploy.config import Config
    from mldeploy.deploy.azureml import AzureMLTarget

ENDPOINT_METRICS = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
DEPLOYMENT_METRICS = ENDPOINT_METRICS + "/deployments"
# what setup decides about an alert (compared on re-runs; anything else Azure adds is left alone)
COMPARED = ("scopes", "criteria", "actions", "window_size", "evaluation_frequency", "severity", "enabled")


def plan(cfg: Config, target: AzureMLTarget) -> SetupPlan:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.mgmt.monitor import models as m

    name = target.endpoint
    result = SetupPlan(f"azure {target.name}", name)
    sub, rg, _ = workspace(cfg.deploy)
    current = target.read()
    if current is None:
        raise UsageError(f"the Azure ML endpoint {name} does not exist", hint="deploy it first (`mldeploy deploy`)")
    monitor = monitor_client(sub)
    alerts = cfg.monitoring.alerts
    tags = {"mldeploy-endpoint": name}

    group_id = None
    wanted = alerts.action_group or (f"mldeploy-{name}-alerts" if alerts.emails else None)
    if wanted and wanted.startswith("/subscriptions/"):
        group_id = wanted
    elif wanted:
        group_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Insights/actionGroups/{wanted}"
        receivers = [m.EmailReceiver(name=f"email-{i}", email_address=e, use_common_alert_schema=True)
                     for i, e in enumerate(alerts.emails)]
        with translated(f"read the action group {wanted}"):
            try:
                found = monitor.action_groups.get(rg, wanted)
            except ResourceNotFoundError:
                found = None
        have = sorted(r.email_address for r in (found.email_receivers or [])) if found else None
        if have != sorted(alerts.emails):
            group = m.ActionGroupResource(location="Global", group_short_name=wanted[-12:], enabled=True,
                                          email_receivers=receivers, tags=tags)
            result.add("create" if found is None else "update", f"azure action group {wanted}", lambda: _call(
                f"create the action group {wanted}", monitor.action_groups.create_or_update, rg, wanted, group),
                "emails", have, sorted(alerts.emails))
        result.outputs["action-group"] = group_id

    endpoint_id = current["entity"].id
    rules = {f"mldeploy-{name}-latency-p99": (endpoint_id, ENDPOINT_METRICS, "RequestLatency_P99", "Average",
                                              "GreaterThan", alerts.latency_p99_ms, None, 2),
             f"mldeploy-{name}-5xx": (endpoint_id, ENDPOINT_METRICS, "RequestsPerMinute", "Total",
                                      "GreaterThanOrEqual", alerts.errors_5xx, ("statusCodeClass", "5xx"), 1)}
    for slot, entry in sorted(current["slots"].items()):
        scope = f"{endpoint_id}/deployments/{entry['deployment']}"
        rules[f"mldeploy-{name}-{slot}-cpu"] = (scope, DEPLOYMENT_METRICS, "CpuUtilizationPercentage", "Average",
                                                "GreaterThan", alerts.cpu_percent, None, 2)
        rules[f"mldeploy-{name}-{slot}-memory"] = (scope, DEPLOYMENT_METRICS, "CpuMemoryUtilizationPercentage",
                                                   "Average", "GreaterThan", alerts.memory_percent, None, 2)
    for rule, (scope, namespace, metric, aggregation, operator, threshold, dimension, severity) in rules.items():
        criterion = m.MetricCriteria(name="c1", metric_name=metric, metric_namespace=namespace, operator=operator,
                                     time_aggregation=aggregation, threshold=float(threshold),
                                     dimensions=[m.MetricDimension(name=dimension[0], operator="Include",
                                                                   values=[dimension[1]])] if dimension else [])
        alert = m.MetricAlertResource(
            location="global", description=f"mldeploy: {metric} of {name}", severity=severity, enabled=True,
            # the SDK's models say timedelta; they send an ISO 8601 duration string as it is
            scopes=[scope], evaluation_frequency="PT1M", window_size="PT5M", auto_mitigate=True, tags=tags,  # type: ignore[arg-type]
            criteria=m.MetricAlertSingleResourceMultipleMetricCriteria(all_of=[criterion]),
            actions=[m.MetricAlertAction(action_group_id=group_id)] if group_id else [])
        with translated(f"read the metric alert {rule}"):
            try:
                old = monitor.metric_alerts.get(rg, rule)
            except ResourceNotFoundError:
                old = None
        if old is None:
            def create(r: str = rule, a: Any = alert) -> None:
                _call(f"create the metric alert {r}", monitor.metric_alerts.create_or_update, rg, r, a)
            result.add("create", f"azure metric alert {rule}", create, "metric", new=f"{metric} {operator} {threshold}")
        else:
            changed = _changed(old.as_dict(), alert.as_dict())
            if changed:
                def update(r: str = rule, a: Any = alert) -> None:
                    _call(f"update the metric alert {r}", monitor.metric_alerts.create_or_update, rg, r, a)
                result.add("update", f"azure metric alert {rule}", update, ", ".join(changed))
    result.notes.append("Azure ML model monitoring (MonitorSchedule) is not set up: it needs the reference data "
                        "registered as an Azure ML data asset; use `mldeploy monitor drift` on a schedule")
    return result


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    def norm(value: Any) -> Any:
        if isinstance(value, dict):
            return {k.lower(): norm(v) for k, v in value.items() if v not in (None, [], {})}
        if isinstance(value, list):
            return [norm(v) for v in value]
        return value.lower() if isinstance(value, str) else value
    return [k for k in COMPARED if norm(old.get(k)) != norm(new.get(k))]


def _call(doing: str, call: Callable[..., Any], *args: Any) -> Any:
    with translated(doing):
        return call(*args)
