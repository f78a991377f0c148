"""Container Apps' monitoring of an app: Azure Monitor metric alerts and an action group.

    action group <monitoring.alerts.action_group> (a resource id, or a name created) with email receivers
    metric alert mldeploy-<app>-5xx            Requests with statusCodeCategory 5xx, over 5 minutes
    metric alert mldeploy-<app>-response-time  ResponseTime (average) above alerts.latency_p99_ms

Container Apps keeps no percentile of response time, so the latency alert is on the average; it has no
model monitoring, so drift is checked on a schedule (`mldeploy monitor drift`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mldeploy.deploy.azure import monitor_client
from mldeploy.deploy.azure_alerts import Rule, action_group, metric_alerts
from mldeploy.errors import UsageError
from mldeploy.monitor.setup import SetupPlan, schedule_snippets

if TYPE_CHECKING:
    from mldeploy.config import Config
    from mldeploy.deploy.containerapps import ContainerAppsTarget

METRICS = "Microsoft.App/containerApps"


def plan(cfg: Config, target: ContainerAppsTarget, config_file: str | None = None) -> SetupPlan:
    name, sub, rg = target.app, target.subscription, target.group
    result = SetupPlan(f"azure {target.name}", name)
    current = target.read()
    if current is None:
        raise UsageError(f"the container app {name} does not exist", hint="deploy it first (`mldeploy deploy`)")
    monitor = monitor_client(sub)
    alerts = cfg.monitoring.alerts
    tags = {"mldeploy-endpoint": name}
    group_id = action_group(result, monitor, sub, rg, name, alerts, tags)

    scope = current["app"].id
    rules = {f"mldeploy-{name}-5xx": Rule(scope, METRICS, "Requests", "Total", "GreaterThanOrEqual",
                                          alerts.errors_5xx, ("statusCodeCategory", "5xx"), 1),
             f"mldeploy-{name}-response-time": Rule(scope, METRICS, "ResponseTime", "Average", "GreaterThan",
                                                    alerts.latency_p99_ms, None, 2)}
    metric_alerts(result, monitor, rg, name, rules, group_id, tags)
    result.notes.append("Container Apps has no model monitoring: run `mldeploy monitor drift` on a schedule (below)")
    result.notes += schedule_snippets(cfg, config_file)
    return result
