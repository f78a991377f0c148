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

from typing import TYPE_CHECKING

from mldeploy.deploy.azure import monitor_client, workspace
from mldeploy.deploy.azure_alerts import Rule, action_group, metric_alerts
from mldeploy.errors import UsageError
from mldeploy.monitor.setup import SetupPlan

if TYPE_CHECKING:
    from mldeploy.config import Config
    from mldeploy.deploy.azureml import AzureMLTarget

ENDPOINT_METRICS = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
DEPLOYMENT_METRICS = ENDPOINT_METRICS + "/deployments"


def plan(cfg: Config, target: AzureMLTarget) -> SetupPlan:
    name = target.endpoint
    result = SetupPlan(f"azure {target.name}", name)
    sub, rg, _ = workspace(cfg.deploy)
    current = target.read()
    if current is None:
        raise UsageError(f"the Azure ML endpoint {name} does not exist", hint="deploy it first (`mldeploy deploy`)")
    monitor = monitor_client(sub)
    alerts = cfg.monitoring.alerts
    tags = {"mldeploy-endpoint": name}
    group_id = action_group(result, monitor, sub, rg, name, alerts, tags)

    endpoint_id = current["entity"].id
    rules = {f"mldeploy-{name}-latency-p99": Rule(endpoint_id, ENDPOINT_METRICS, "RequestLatency_P99", "Average",
                                                  "GreaterThan", alerts.latency_p99_ms, None, 2),
             f"mldeploy-{name}-5xx": Rule(endpoint_id, ENDPOINT_METRICS, "RequestsPerMinute", "Total",
                                          "GreaterThanOrEqual", alerts.errors_5xx, ("statusCodeClass", "5xx"), 1)}
    for slot, entry in sorted(current["slots"].items()):
        scope = f"{endpoint_id}/deployments/{entry['deployment']}"
        rules[f"mldeploy-{name}-{slot}-cpu"] = Rule(scope, DEPLOYMENT_METRICS, "CpuUtilizationPercentage", "Average",
                                                    "GreaterThan", alerts.cpu_percent, None, 2)
        rules[f"mldeploy-{name}-{slot}-memory"] = Rule(scope, DEPLOYMENT_METRICS, "CpuMemoryUtilizationPercentage",
                                                       "Average", "GreaterThan", alerts.memory_percent, None, 2)
    metric_alerts(result, monitor, rg, name, rules, group_id, tags)
    result.notes.append("Azure ML model monitoring (MonitorSchedule) is not set up: it needs the reference data "
                        "registered as an Azure ML data asset; use `mldeploy monitor drift` on a schedule")
    return result
