"""CloudWatch alarms and SNS for `mldeploy monitor setup` on AWS targets:

    SNS topic (monitoring.alerts.sns_topic: an ARN, or a name created) + email subscriptions
    the alarms `mldeploy deploy` made (5XX, latency p99 per slot) notify the topic
    an invocations anomaly-detection alarm (PutAnomalyDetector, ANOMALY_DETECTION_BAND)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mldeploy.deploy.aws import client, resource_name, tag_list, tags, translated

if TYPE_CHECKING:
    from mldeploy.config import Config
    from mldeploy.monitor.setup import SetupPlan


# -- alarms and SNS ----------------------------------------------------------------------------------------
ALARM_FIELDS = ("AlarmName", "AlarmDescription", "ActionsEnabled", "OKActions", "AlarmActions", "InsufficientDataActions",
                "MetricName", "Namespace", "Statistic", "ExtendedStatistic", "Dimensions", "Period", "Unit",
                "EvaluationPeriods", "DatapointsToAlarm", "Threshold", "ComparisonOperator", "TreatMissingData",
                "EvaluateLowSampleCountPercentile", "Metrics", "ThresholdMetricId")


def plan(cfg: Config, endpoint: str, region: str, metric: tuple[str, dict[str, str]], result: SetupPlan,
         metric_name: str = "Invocations") -> None:
    """Add to `result` the topic, subscriptions and alarm actions monitoring.alerts asks for; metric is
    the (namespace, dimensions) of the endpoint's request count (metric_name), for the anomaly alarm."""
    alerts = cfg.monitoring.alerts
    cw, sns = client("cloudwatch", region), client("sns", region)
    topic: dict[str, str | None] = {"arn": None}   # filled at plan time when it exists, at apply time when created
    wanted = alerts.sns_topic or (resource_name("mldeploy", endpoint, "alerts", limit=256) if alerts.emails else None)
    if wanted and wanted.startswith("arn:"):
        topic["arn"] = wanted
    elif wanted:
        with translated("list the SNS topics"):
            arns = [t["TopicArn"] for page in sns.get_paginator("list_topics").paginate() for t in page["Topics"]]
        topic["arn"] = next((a for a in arns if a.rsplit(":", 1)[-1] == wanted), None)
        if topic["arn"] is None:
            def create_topic() -> None:
                with translated(f"create the SNS topic {wanted}"):
                    arn: str = sns.create_topic(Name=wanted, Tags=tag_list(tags(endpoint)))["TopicArn"]
                topic["arn"] = arn
                result.outputs["sns-topic"] = arn
            result.add("create", f"sns topic {wanted}", create_topic)
    if wanted:
        subscribed: set[str] = set()
        if topic["arn"]:
            with translated(f"list the subscriptions of {topic['arn']}"):
                subscribed = {s["Endpoint"] for page in sns.get_paginator("list_subscriptions_by_topic").paginate(
                    TopicArn=topic["arn"]) for s in page["Subscriptions"] if s["Protocol"] == "email"}
        for email in alerts.emails:
            if email not in subscribed:
                def subscribe(e: str = email) -> None:
                    _call(sns, "subscribe", f"subscribe {e}", TopicArn=topic["arn"], Protocol="email", Endpoint=e)
                result.add("create", f"sns email subscription {email}", subscribe, "topic", new=wanted)
        result.outputs["sns-topic"] = topic["arn"] or wanted

    prefix = resource_name("mldeploy", endpoint, limit=255) + "-"
    anomaly = resource_name("mldeploy", endpoint, "invocations-anomaly", limit=255)
    with translated("read the CloudWatch alarms"):
        found = {a["AlarmName"]: a for page in cw.get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix)
                 for a in page["MetricAlarms"]}
    if not any(n != anomaly for n in found):
        result.notes.append(f"no alarms of {endpoint} from `mldeploy deploy` were found (deploy makes 5XX and "
                            "latency p99 alarms per slot)")
    for name, alarm in sorted(found.items()):
        if name != anomaly and wanted and topic["arn"] not in alarm.get("AlarmActions", []):
            def notify(a: dict[str, Any] = alarm) -> None:
                _notify(cw, a, topic["arn"])
            result.add("update", f"cloudwatch alarm {name}", notify, "alarm actions",
                       alarm.get("AlarmActions") or None, wanted)

    if not alerts.invocations_anomaly:
        return
    namespace, dims = metric
    detector = {"Namespace": namespace, "MetricName": metric_name, "Stat": "Sum",
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()]}
    with translated("read the CloudWatch anomaly detectors"):
        detectors = cw.describe_anomaly_detectors(Namespace=namespace, MetricName=metric_name,
                                                  Dimensions=detector["Dimensions"])["AnomalyDetectors"]
    if not any(d.get("SingleMetricAnomalyDetector", {}).get("Stat", d.get("Stat")) == "Sum" for d in detectors):
        result.add("create", f"cloudwatch anomaly detector {namespace} {metric_name}", lambda: _call(
            cw, "put_anomaly_detector", "create the invocations anomaly detector", SingleMetricAnomalyDetector=detector))
    spec = {"AlarmName": anomaly, "AlarmDescription": f"mldeploy: invocations of {endpoint} outside the expected band",
            "Metrics": [{"Id": "m1", "ReturnData": True, "MetricStat": {
                "Metric": {k: detector[k] for k in ("Namespace", "MetricName", "Dimensions")}, "Period": 300,
                "Stat": "Sum"}},
                {"Id": "band", "Expression": "ANOMALY_DETECTION_BAND(m1, 2)", "Label": "Invocations (expected)",
                 "ReturnData": True}],
            "ThresholdMetricId": "band", "ComparisonOperator": "LessThanLowerOrGreaterThanUpperThreshold",
            "EvaluationPeriods": 3, "DatapointsToAlarm": 3, "TreatMissingData": "ignore",
            "Tags": tag_list(tags(endpoint))}
    old = found.get(anomaly)
    if old is None:
        result.add("create", f"cloudwatch alarm {anomaly}", lambda: _call(  # the topic's ARN is known at apply time
            cw, "put_metric_alarm", f"create the alarm {anomaly}", **spec,
            AlarmActions=[topic["arn"]] if wanted else []), "metric", new="Invocations band")
    elif wanted and topic["arn"] not in old.get("AlarmActions", []):
        result.add("update", f"cloudwatch alarm {anomaly}", lambda: _notify(cw, old, topic["arn"]),
                   "alarm actions", old.get("AlarmActions") or None, wanted)
    result.outputs["anomaly-alarm"] = anomaly


def _call(api: Any, call: str, doing: str, **kwargs: Any) -> Any:
    with translated(doing):
        return getattr(api, call)(**kwargs)


def _notify(cw: Any, alarm: dict[str, Any], topic: str | None) -> None:
    """Put the alarm again as it is, with the topic among its actions (PutMetricAlarm replaces it whole)."""
    spec = {k: alarm[k] for k in ALARM_FIELDS if alarm.get(k) not in (None, [], "")}
    spec["AlarmActions"] = [*alarm.get("AlarmActions", []), topic]
    with translated(f"add the SNS topic to the alarm {alarm['AlarmName']}"):
        cw.put_metric_alarm(**spec)
