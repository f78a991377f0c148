"""Azure Monitor alerting that Azure's targets share: an action group with email receivers, and metric
alerts on a target's series, each planned as create / update / nothing (a re-run changes nothing).

    action group <monitoring.alerts.action_group> (a resource id, or a name created) with email receivers
    metric alert <name>   one metric of one resource (the target says which), over 5 minutes
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from mldeploy.deploy.azure import translated

if TYPE_CHECKING:
    from mldeploy.config import AlertsSection
    from mldeploy.monitor.setup import SetupPlan

# what setup decides about an alert (compared on re-runs; anything else Azure adds is left alone)
COMPARED = ("scopes", "criteria", "actions", "window_size", "evaluation_frequency", "severity", "enabled")


class Rule(NamedTuple):
    scope: str                          # the resource id the metric belongs to
    namespace: str                      # its metric namespace, e.g. Microsoft.App/containerApps
    metric: str
    aggregation: str                    # Average, Total, ...
    operator: str                       # GreaterThan, GreaterThanOrEqual
    threshold: float
    dimension: tuple[str, str] | None   # (name, value) the alert is restricted to, e.g. a 5xx status class
    severity: int


def action_group(result: SetupPlan, monitor: Any, sub: str, rg: str, name: str, alerts: AlertsSection,
                 tags: dict[str, str]) -> str | None:
    """The action group the alerts notify (its id), planned into `result`; None when none is configured."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.mgmt.monitor import models as m

    wanted = alerts.action_group or (f"mldeploy-{name}-alerts" if alerts.emails else None)
    if not wanted:
        return None
    if wanted.startswith("/subscriptions/"):
        return wanted
    group_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Insights/actionGroups/{wanted}"
    with translated(f"read the action group {wanted}"):
        try:
            found = monitor.action_groups.get(rg, wanted)
        except ResourceNotFoundError:
            found = None
    have = sorted(r.email_address for r in (found.email_receivers or [])) if found else None
    if have != sorted(alerts.emails):
        group = m.ActionGroupResource(location="Global", group_short_name=wanted[-12:], enabled=True, tags=tags,
                                      email_receivers=[m.EmailReceiver(name=f"email-{i}", email_address=e,
                                                                       use_common_alert_schema=True)
                                                       for i, e in enumerate(alerts.emails)])
        result.add("create" if found is None else "update", f"azure action group {wanted}", lambda: _call(
            f"create the action group {wanted}", monitor.action_groups.create_or_update, rg, wanted, group),
            "emails", have, sorted(alerts.emails))
    result.outputs["action-group"] = group_id
    return group_id


def metric_alerts(result: SetupPlan, monitor: Any, rg: str, name: str, rules: dict[str, Rule],
                  group_id: str | None, tags: dict[str, str]) -> None:
    """Each rule as a metric alert, planned into `result` where it is missing or differs."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.mgmt.monitor import models as m

    for rule_name, rule in rules.items():
        dimensions = [m.MetricDimension(name=rule.dimension[0], operator="Include", values=[rule.dimension[1]])] \
            if rule.dimension else []
        criterion = m.MetricCriteria(name="c1", metric_name=rule.metric, metric_namespace=rule.namespace,
                                     operator=rule.operator, time_aggregation=rule.aggregation,
                                     threshold=float(rule.threshold), dimensions=dimensions)
        alert = m.MetricAlertResource(
            location="global", description=f"mldeploy: {rule.metric} of {name}", severity=rule.severity, enabled=True,
            # the SDK's models say timedelta; they send an ISO 8601 duration string as it is
            scopes=[rule.scope], evaluation_frequency="PT1M", window_size="PT5M", auto_mitigate=True, tags=tags,  # type: ignore[arg-type]
            criteria=m.MetricAlertSingleResourceMultipleMetricCriteria(all_of=[criterion]),
            actions=[m.MetricAlertAction(action_group_id=group_id)] if group_id else [])
        with translated(f"read the metric alert {rule_name}"):
            try:
                old = monitor.metric_alerts.get(rg, rule_name)
            except ResourceNotFoundError:
                old = None
        if old is None:
            def create(r: str = rule_name, a: Any = alert) -> None:
                _call(f"create the metric alert {r}", monitor.metric_alerts.create_or_update, rg, r, a)
            result.add("create", f"azure metric alert {rule_name}", create, "metric",
                       new=f"{rule.metric} {rule.operator} {rule.threshold}")
        elif changed := _changed(old.as_dict(), alert.as_dict()):
            def update(r: str = rule_name, a: Any = alert) -> None:
                _call(f"update the metric alert {r}", monitor.metric_alerts.create_or_update, rg, r, a)
            result.add("update", f"azure metric alert {rule_name}", update, ", ".join(changed))


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
