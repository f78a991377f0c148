"""AWS monitoring of a deployed endpoint: SageMaker Model Monitor (data quality) and CloudWatch alarms.

    s3://<prefix>/baseline/<hash>/statistics.json, constraints.json, preprocessor.py   (from our baseline)
    data-quality job definition <endpoint>-dq-<hash of its spec>     (immutable: a new spec is a new name)
    monitoring schedule <endpoint>-data-quality                      (created, or updated to the new definition)
    SNS topic (monitoring.alerts.sns_topic: an ARN, or a name created) + email subscriptions
    the alarms `mldeploy deploy` made (5XX, ModelLatency p99 per variant) notify the topic
    an invocations anomaly-detection alarm (PutAnomalyDetector, ANOMALY_DETECTION_BAND)

Data capture is the deploy's business (deploy.aws.sagemaker.data_capture_*): setup checks it is on and
says what to change if not; it never redeploys an endpoint. Lambda gets the alarms and SNS only (no
Model Monitor for Lambda). Only this module (and deploy/aws.py) imports boto3, lazily.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from mldeploy.deploy.aws import client, error_code, resource_name, tag_list, tags, translated
from mldeploy.errors import UsageError
from mldeploy.monitor.setup import SetupPlan, cron_hours, load_baseline, schedule_snippets

# The region's SageMaker Model Monitor analyzer image (sagemaker-python-sdk image_uri_config/model-monitor.json).
ANALYZER_ACCOUNTS = {
    "eu-north-1": "895015795356", "me-south-1": "607024016150", "ap-south-1": "126357580389",
    "us-east-2": "777275614652", "eu-west-1": "468650794304", "eu-central-1": "048819808253",
    "sa-east-1": "539772159869", "ap-east-1": "001633400207", "us-east-1": "156813124566",
    "ap-northeast-2": "709848358524", "eu-west-2": "749857270468", "eu-west-3": "680080141114",
    "ap-northeast-1": "574779866223", "us-west-2": "159807026194", "us-west-1": "890145073186",
    "ap-southeast-1": "245545462676", "ap-southeast-2": "563025443158", "ca-central-1": "536280801234",
    "cn-north-1": "453000072557", "cn-northwest-1": "453252182341"}
KLL_PARAMETERS = {"c": 0.64, "k": 2048.0}   # what Model Monitor's own baselining job writes
JOB_INSTANCE = {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 20}
PREPROCESSOR = Path(__file__).with_name("sagemaker_preprocessor.py")


# -- our baseline -> SageMaker's statistics.json and constraints.json -------------------------------------
def _integer_categories(categories: dict[str, float]) -> dict[int, float] | None:
    try:
        return {int(k): v for k, v in categories.items() if k != "__other__"} if "__other__" not in categories else None
    except ValueError:
        return None


def _numbers(f: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(inferred_type, numerical_statistics) of a numeric feature, or of a categorical one whose
    categories are all integers (the capture holds them as numbers, so Model Monitor infers Integral)."""
    present = f["count"] - f["missing"]
    common = {"num_present": present, "num_missing": f["missing"]}
    if f["kind"] == "categorical":
        freq = _integer_categories(f["categories"])
        mean = sum(v * p for v, p in freq.items())
        std = math.sqrt(max(sum(p * (v - mean) ** 2 for v, p in freq.items()), 0.0))
        buckets = [{"lower_bound": v - 0.5, "upper_bound": v + 0.5, "count": round(p * present)}
                   for v, p in sorted(freq.items())]
        stats = {"common": common, "mean": mean, "sum": mean * present, "std_dev": std,
                 "min": float(min(freq)), "max": float(max(freq)), "distribution": {"kll": {"buckets": buckets}}}
        return "Integral", stats
    edges, counts = f["histogram"]["edges"], f["histogram"]["counts"]
    buckets = [{"lower_bound": edges[i], "upper_bound": edges[i + 1], "count": counts[i]} for i in range(len(counts))]
    sample = sorted(f.get("sample") or [])
    kll: dict[str, Any] = {"buckets": buckets}
    if sample:  # a KLL sketch whose one full level holds the sample; its weight 2^level stands for the records
        level = max(0, round(math.log2(max(present, 1) / len(sample))))
        kll["sketch"] = {"parameters": KLL_PARAMETERS, "data": [[] for _ in range(level)] + [sample]}
    integral = bool(sample) and all(float(v).is_integer() for v in sample) and float(f["min"]).is_integer()
    stats = {"common": common, "mean": f["mean"], "sum": f["mean"] * present, "std_dev": f["std"],
             "min": f["min"], "max": f["max"], "distribution": {"kll": kll}}
    return ("Integral" if integral else "Fractional"), stats


def statistics(baseline: dict[str, Any]) -> dict[str, Any]:
    """Model Monitor's statistics.json for the baseline's input features."""
    features = []
    for f in baseline["features"]:
        if f["kind"] == "numeric" or _integer_categories(f["categories"]):
            kind, stats = _numbers(f)
            features.append({"name": f["name"], "inferred_type": kind, "numerical_statistics": stats})
        else:
            present = f["count"] - f["missing"]
            buckets = [{"value": v, "count": round(p * present)} for v, p in f["categories"].items()]
            features.append({"name": f["name"], "inferred_type": "String", "string_statistics": {
                "common": {"num_present": present, "num_missing": f["missing"]},
                "distinct_count": float(len(f["categories"])), "distribution": {"categorical": {"buckets": buckets}}}})
    return {"version": 0.0, "dataset": {"item_count": baseline["records"]}, "features": features}


def constraints(baseline: dict[str, Any], drift) -> dict[str, Any]:
    """Model Monitor's constraints.json: each feature's type, completeness and range rules, and the
    distribution comparison at monitoring.drift.jensen_shannon."""
    features = []
    for f, stat in zip(baseline["features"], statistics(baseline)["features"]):
        entry: dict[str, Any] = {"name": f["name"], "inferred_type": stat["inferred_type"],
                                 "completeness": (f["count"] - f["missing"]) / f["count"] if f["count"] else 1.0}
        if "numerical_statistics" in stat:
            entry["num_constraints"] = {"is_non_negative": stat["numerical_statistics"]["min"] >= 0}
        elif "__other__" not in f["categories"]:  # every value seen is listed: anything else is out of domain
            entry["string_constraints"] = {"domains": sorted(f["categories"])}
        features.append(entry)
    return {"version": 0.0, "features": features, "monitoring_config": {
        "evaluate_constraints": "Enabled", "emit_metrics": "Enabled", "datatype_check_threshold": 1.0,
        "domain_content_threshold": 1.0,
        "distribution_constraints": {"perform_comparison": "Enabled", "comparison_threshold": drift.jensen_shannon,
                                     "comparison_method": "Robust"}}}


def schedule_expression(schedule: str) -> str:
    """monitoring.drift.schedule (cron) as SageMaker's cron(...): hourly, every N hours, or daily."""
    hours, at = cron_hours(schedule)
    if at is not None:
        return f"cron(0 {at} ? * * *)"
    return "cron(0 * ? * * *)" if hours == 1 else f"cron(0 0/{hours} ? * * *)"


def analyzer_image(region: str) -> str:
    if region not in ANALYZER_ACCOUNTS:
        raise UsageError(f"SageMaker Model Monitor has no analyzer image in {region}",
                         hint=f"regions with one: {', '.join(sorted(ANALYZER_ACCOUNTS))}")
    suffix = ".com.cn" if region.startswith("cn-") else ".com"
    return f"{ANALYZER_ACCOUNTS[region]}.dkr.ecr.{region}.amazonaws{suffix}/sagemaker-model-monitor-analyzer"


def _s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


# -- the plan ------------------------------------------------------------------------------------------
def plan(cfg, endpoint: str, config_file: str | None = None) -> SetupPlan:
    target = cfg.deploy.target
    name = resource_name(endpoint, limit=64 if target == "lambda" else 63)
    result = SetupPlan(f"aws {target}", name)
    region = client("sts", cfg.deploy.region).meta.region_name
    if target == "sagemaker":
        _model_monitor(cfg, name, region, result)
        metric = ("AWS/SageMaker", {"EndpointName": name, "VariantName": "production"})
    else:
        result.notes.append("Lambda has no SageMaker Model Monitor: alarms and SNS only; check drift with "
                            "`mldeploy monitor drift` on a schedule")
        result.notes += schedule_snippets(cfg, config_file)
        metric = ("AWS/Lambda", {"FunctionName": name})
    _alarms(cfg, name, region, metric, result)
    return result


def _model_monitor(cfg, endpoint: str, region: str, result: SetupPlan) -> None:
    sm = client("sagemaker", region)
    with translated(f"describe the SageMaker endpoint {endpoint}"):
        try:
            ep = sm.describe_endpoint(EndpointName=endpoint)
        except sm.exceptions.ClientError as e:
            if error_code(e) == "ValidationException":
                raise UsageError(f"the SageMaker endpoint {endpoint} does not exist",
                                 hint="deploy it first (`mldeploy deploy`)") from None
            raise
    capture = ep.get("DataCaptureConfig") or {}
    if not capture.get("EnableCapture"):
        result.notes.append(f"data capture is off on {endpoint}, so Model Monitor has nothing to read: set "
                            "deploy.aws.sagemaker.data_capture_percent (e.g. 10) and data_capture_s3, deploy again, "
                            "then run setup again (setup never redeploys an endpoint); Model Monitor left out")
        return
    baseline = load_baseline(cfg)
    if baseline is None:
        result.notes.append("no baseline (monitoring.baseline, or baseline.json in the bundle): run `mldeploy monitor "
                            "baseline` and setup again; Model Monitor left out")
        return
    prefix = (cfg.monitoring.s3 or "s3://{}/mldeploy-monitoring/{}".format(
        _s3(capture["DestinationS3Uri"])[0], endpoint)).rstrip("/")
    files = {"statistics.json": json.dumps(statistics(baseline), indent=1).encode(),
             "constraints.json": json.dumps(constraints(baseline, cfg.monitoring.drift), indent=1).encode(),
             "preprocessor.py": PREPROCESSOR.read_bytes()}
    version = hashlib.sha256(b"".join(files.values())).hexdigest()[:12]
    uris = {f: f"{prefix}/baseline/{version}/{f}" for f in files}
    s3 = client("s3", region)
    for file, uri in uris.items():
        bucket, key = _s3(uri)
        with translated(f"look up {uri}"):
            try:
                s3.head_object(Bucket=bucket, Key=key)
                continue
            except s3.exceptions.ClientError as e:
                if error_code(e) not in ("404", "NoSuchKey", "NotFound"):
                    raise
        result.add("create", f"s3 object {uri}", lambda b=bucket, k=key, f=file: _put(s3, b, k, files[f]))

    spec = {
        "DataQualityBaselineConfig": {"ConstraintsResource": {"S3Uri": uris["constraints.json"]},
                                      "StatisticsResource": {"S3Uri": uris["statistics.json"]}},
        "DataQualityAppSpecification": {"ImageUri": analyzer_image(region),
                                        "RecordPreprocessorSourceUri": uris["preprocessor.py"],
                                        "Environment": {"publish_cloudwatch_metrics": "Enabled"}},
        "DataQualityJobInput": {"EndpointInput": {"EndpointName": endpoint, "LocalPath": "/opt/ml/processing/input",
                                                  "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated"}},
        "DataQualityJobOutputConfig": {"MonitoringOutputs": [{"S3Output": {
            "S3Uri": f"{prefix}/reports", "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}]},
        "JobResources": {"ClusterConfig": JOB_INSTANCE},
        "RoleArn": cfg.deploy.aws.role,
        "StoppingCondition": {"MaxRuntimeInSeconds": 1800},
    }
    definition = resource_name(endpoint, "dq", hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12])
    if not _exists(sm, "describe_data_quality_job_definition", JobDefinitionName=definition):
        result.add("create", f"sagemaker data-quality job definition {definition}", lambda: _call(
            sm, "create_data_quality_job_definition", f"create the job definition {definition}",
            JobDefinitionName=definition, Tags=tag_list(tags(endpoint)), **spec), "baseline", new=version)

    schedule = resource_name(endpoint, "data-quality")
    config = {"ScheduleConfig": {"ScheduleExpression": schedule_expression(cfg.monitoring.drift.schedule)},
              "MonitoringJobDefinitionName": definition, "MonitoringType": "DataQuality"}
    current = _exists(sm, "describe_monitoring_schedule", MonitoringScheduleName=schedule)
    if not current:
        result.add("create", f"sagemaker monitoring schedule {schedule}", lambda: _call(
            sm, "create_monitoring_schedule", f"create the monitoring schedule {schedule}",
            MonitoringScheduleName=schedule, MonitoringScheduleConfig=config, Tags=tag_list(tags(endpoint))),
            "schedule", new=config["ScheduleConfig"]["ScheduleExpression"])
    else:
        old = current["MonitoringScheduleConfig"]
        for key, label in (("MonitoringJobDefinitionName", "job definition"), ("ScheduleConfig", "schedule")):
            if old.get(key) != config[key]:
                result.add("update", f"sagemaker monitoring schedule {schedule}", lambda: _call(
                    sm, "update_monitoring_schedule", f"update the monitoring schedule {schedule}",
                    MonitoringScheduleName=schedule, MonitoringScheduleConfig=config), label, old.get(key), config[key])
                break
        superseded = old.get("MonitoringJobDefinitionName") or ""
        if superseded != definition and superseded.startswith(resource_name(endpoint, "dq") + "-"):  # ours, now unused
            result.add("delete", f"sagemaker data-quality job definition {superseded}", lambda: _call(
                sm, "delete_data_quality_job_definition", f"delete the job definition {superseded}",
                JobDefinitionName=superseded))
    result.outputs |= {"monitoring-schedule": schedule, "job-definition": definition, "baseline-s3": prefix}


def _put(s3, bucket: str, key: str, body: bytes) -> None:
    with translated(f"upload s3://{bucket}/{key}"):
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def _call(api, call: str, doing: str, **kwargs: Any) -> Any:
    with translated(doing):
        return getattr(api, call)(**kwargs)


def _exists(sm, call: str, **kwargs: str) -> dict[str, Any] | None:
    """The description, or None when SageMaker knows no such resource."""
    with translated(f"{call.replace('_', ' ')} {next(iter(kwargs.values()))}"):
        try:
            return getattr(sm, call)(**kwargs)
        except sm.exceptions.ClientError as e:
            if error_code(e) in ("ValidationException", "ResourceNotFound"):
                return None
            raise


# -- alarms and SNS ----------------------------------------------------------------------------------------
ALARM_FIELDS = ("AlarmName", "AlarmDescription", "ActionsEnabled", "OKActions", "AlarmActions", "InsufficientDataActions",
                "MetricName", "Namespace", "Statistic", "ExtendedStatistic", "Dimensions", "Period", "Unit",
                "EvaluationPeriods", "DatapointsToAlarm", "Threshold", "ComparisonOperator", "TreatMissingData",
                "EvaluateLowSampleCountPercentile", "Metrics", "ThresholdMetricId")


def _alarms(cfg, endpoint: str, region: str, metric: tuple[str, dict[str, str]], result: SetupPlan) -> None:
    alerts = cfg.monitoring.alerts
    cw, sns = client("cloudwatch", region), client("sns", region)
    topic = {"arn": None}   # filled at plan time when it exists, at apply time when created
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
                    topic["arn"] = sns.create_topic(Name=wanted, Tags=tag_list(tags(endpoint)))["TopicArn"]
                result.outputs["sns-topic"] = topic["arn"]
            result.add("create", f"sns topic {wanted}", create_topic)
    if wanted:
        subscribed: set[str] = set()
        if topic["arn"]:
            with translated(f"list the subscriptions of {topic['arn']}"):
                subscribed = {s["Endpoint"] for page in sns.get_paginator("list_subscriptions_by_topic").paginate(
                    TopicArn=topic["arn"]) for s in page["Subscriptions"] if s["Protocol"] == "email"}
        for email in alerts.emails:
            if email not in subscribed:
                result.add("create", f"sns email subscription {email}", lambda e=email: _call(
                    sns, "subscribe", f"subscribe {e}", TopicArn=topic["arn"], Protocol="email", Endpoint=e),
                    "topic", new=wanted)
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
            result.add("update", f"cloudwatch alarm {name}", lambda a=alarm: _notify(cw, a, topic["arn"]),
                       "alarm actions", alarm.get("AlarmActions") or None, wanted)

    if not alerts.invocations_anomaly:
        return
    namespace, dims = metric
    detector = {"Namespace": namespace, "MetricName": "Invocations", "Stat": "Sum",
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()]}
    with translated("read the CloudWatch anomaly detectors"):
        detectors = cw.describe_anomaly_detectors(Namespace=namespace, MetricName="Invocations",
                                                  Dimensions=detector["Dimensions"])["AnomalyDetectors"]
    if not any(d.get("SingleMetricAnomalyDetector", {}).get("Stat", d.get("Stat")) == "Sum" for d in detectors):
        result.add("create", f"cloudwatch anomaly detector {namespace} Invocations", lambda: _call(
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


def _notify(cw, alarm: dict[str, Any], topic: str) -> None:
    """Put the alarm again as it is, with the topic among its actions (PutMetricAlarm replaces it whole)."""
    spec = {k: alarm[k] for k in ALARM_FIELDS if alarm.get(k) not in (None, [], "")}
    spec["AlarmActions"] = [*alarm.get("AlarmActions", []), topic]
    with translated(f"add the SNS topic to the alarm {alarm['AlarmName']}"):
        cw.put_metric_alarm(**spec)
