"""`mldeploy monitor setup --cloud aws`: SageMaker Model Monitor, CloudWatch alarms and SNS, with the
real boto3 against moto over HTTP (Model Monitor schedules and anomaly detectors: moto_patches)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.aws import CAPTURE_BUCKET as BUCKET
from tests.helpers.aws import ROLE, ecr_image
from tests.helpers.aws import SAGEMAKER_ENDPOINT as ENDPOINT
from tests.helpers.aws import sagemaker_monitoring_config as config
from tests.helpers.monitoring import baseline
from tests.helpers.need import need

need("moto", "the dev extra installs it")

import boto3  # noqa: E402

from tests.helpers import moto_patches  # noqa: E402

ANALYZER = "156813124566.dkr.ecr.us-east-1.amazonaws.com/sagemaker-model-monitor-analyzer"


@pytest.fixture
def project(tmp_path, bundle, aws, mldeploy):
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    (tmp_path / "baseline.json").write_text(json.dumps(baseline()))
    (tmp_path / "mldeploy.yaml").write_text(config())
    image = ecr_image("models/classifier", "a" * 64)
    r = mldeploy("deploy", "--bundle", bundle, "--image", image, cwd=tmp_path)
    assert r.code == 0, r.err
    aws.requests.clear()
    moto_patches.BODIES.clear()
    return tmp_path


def sent(service: str, operation: str) -> list[dict]:
    return [params for svc, op, params in moto_patches.BODIES if svc == service and op == operation]


def test_plan_changes_nothing_then_setup_creates_everything_then_a_rerun_is_a_no_op(mldeploy, project, aws):
    r = mldeploy("monitor", "setup", "--plan", cwd=project)
    assert r.code == 0, r.err
    assert aws.requests and aws.mutating() == []
    for line in ("create sagemaker monitoring schedule classifier-data-quality", "create sns topic ml-alerts",
                 "create sns email subscription ops@acme.example", "create cloudwatch alarm mldeploy-classifier-invocations-anomaly",
                 "update cloudwatch alarm mldeploy-classifier-production-5xx alarm actions"):
        assert line in r.out, r.out
    assert moto_patches.MONITORING_SCHEDULES == {}

    r = mldeploy("monitor", "setup", cwd=project)
    assert r.code == 0, r.err
    assert "set up (" in r.out
    assert {"CreateTopic", "Subscribe", "PutMetricAlarm"} <= {op for op, _, _ in aws.mutating()}  # the log sees SNS

    # the baseline went to S3 in SageMaker's formats, under the capture bucket
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mldeploy-monitoring/classifier/")["Contents"]]
    assert sorted(k.rsplit("/", 1)[-1] for k in keys) == ["constraints.json", "preprocessor.py", "statistics.json"]
    cons_key = next(k for k in keys if k.endswith("constraints.json"))
    cons = json.loads(s3.get_object(Bucket=BUCKET, Key=cons_key)["Body"].read())
    assert cons["monitoring_config"]["distribution_constraints"]["comparison_threshold"] == 0.15

    (job,) = sent("sagemaker", "CreateDataQualityJobDefinition")
    prefix = f"s3://{BUCKET}/mldeploy-monitoring/classifier"
    assert job["JobDefinitionName"].startswith("classifier-dq-")
    assert job["DataQualityBaselineConfig"] == {
        "ConstraintsResource": {"S3Uri": f"s3://{BUCKET}/{cons_key}"},
        "StatisticsResource": {"S3Uri": f"s3://{BUCKET}/{cons_key.replace('constraints', 'statistics')}"}}
    assert job["DataQualityAppSpecification"]["ImageUri"] == ANALYZER
    assert job["DataQualityAppSpecification"]["RecordPreprocessorSourceUri"].endswith("/preprocessor.py")
    assert job["DataQualityJobInput"]["EndpointInput"]["EndpointName"] == ENDPOINT
    assert job["DataQualityJobOutputConfig"]["MonitoringOutputs"][0]["S3Output"]["S3Uri"] == f"{prefix}/reports"
    assert job["JobResources"]["ClusterConfig"]["InstanceCount"] == 1
    assert job["RoleArn"] == ROLE
    (schedule,) = sent("sagemaker", "CreateMonitoringSchedule")
    assert schedule["MonitoringScheduleName"] == "classifier-data-quality"
    assert schedule["MonitoringScheduleConfig"] == {
        "ScheduleConfig": {"ScheduleExpression": "cron(0 0/6 ? * * *)"},
        "MonitoringJobDefinitionName": job["JobDefinitionName"], "MonitoringType": "DataQuality"}

    topic = boto3.client("sns").list_topics()["Topics"][0]["TopicArn"]
    assert topic.endswith(":ml-alerts")
    assert f"sns-topic: {topic}" in r.out and "monitoring-schedule: classifier-data-quality" in r.out  # outputs
    (sub,) = sent("sns", "Subscribe")
    assert sub == {"TopicArn": topic, "Protocol": "email", "Endpoint": "ops@acme.example"}
    (detector,) = sent("cloudwatch", "PutAnomalyDetector")
    assert detector["SingleMetricAnomalyDetector"] == {
        "Namespace": "AWS/SageMaker", "MetricName": "Invocations", "Stat": "Sum",
        "Dimensions": [{"Name": "EndpointName", "Value": ENDPOINT}, {"Name": "VariantName", "Value": "production"}]}
    alarms = {a["AlarmName"]: a for a in sent("cloudwatch", "PutMetricAlarm")}
    anomaly = alarms["mldeploy-classifier-invocations-anomaly"]
    assert anomaly["ThresholdMetricId"] == "band"
    assert anomaly["ComparisonOperator"] == "LessThanLowerOrGreaterThanUpperThreshold"
    assert anomaly["Metrics"][1]["Expression"] == "ANOMALY_DETECTION_BAND(m1, 2)"
    assert anomaly["AlarmActions"] == [topic]
    # the deploy's alarms now notify the topic, with their thresholds as they were
    five = alarms["mldeploy-classifier-production-5xx"]
    assert five["AlarmActions"] == [topic] and five["MetricName"] == "Invocation5XXErrors" and five["Threshold"] == 1.0
    latency = boto3.client("cloudwatch").describe_alarms(
        AlarmNames=["mldeploy-classifier-production-latency-p99"])["MetricAlarms"][0]
    assert latency["AlarmActions"] == [topic] and latency["ExtendedStatistic"] == "p99"

    aws.requests.clear()
    moto_patches.BODIES.clear()
    r = mldeploy("monitor", "setup", cwd=project)
    assert r.code == 0, r.err
    assert "up to date, nothing to change" in r.out
    assert aws.mutating() == []


def test_a_new_schedule_updates_the_schedule_only(mldeploy, project, aws):
    assert mldeploy("monitor", "setup", cwd=project).code == 0
    (project / "mldeploy.yaml").write_text(config(schedule="0 4 * * *"))
    moto_patches.BODIES.clear()
    r = mldeploy("monitor", "setup", cwd=project)
    assert r.code == 0, r.err
    assert "update sagemaker monitoring schedule classifier-data-quality schedule" in r.out
    (update,) = sent("sagemaker", "UpdateMonitoringSchedule")
    assert update["MonitoringScheduleConfig"]["ScheduleConfig"] == {"ScheduleExpression": "cron(0 4 ? * * *)"}
    assert sent("sagemaker", "CreateDataQualityJobDefinition") == []  # the job's spec did not change


def test_a_new_baseline_moves_the_schedule_to_a_new_job_definition_and_deletes_the_old_one(mldeploy, project, aws):
    assert mldeploy("monitor", "setup", cwd=project).code == 0
    (first,) = sent("sagemaker", "CreateDataQualityJobDefinition")
    (project / "mldeploy.yaml").write_text(config().replace("jensen_shannon: 0.15", "jensen_shannon: 0.2"))
    r = mldeploy("monitor", "setup", cwd=project)
    assert r.code == 0, r.err
    _, second = sent("sagemaker", "CreateDataQualityJobDefinition")
    old, new = first["JobDefinitionName"], second["JobDefinitionName"]
    assert old != new and f"delete sagemaker data-quality job definition {old}" in r.out
    schedule = moto_patches.MONITORING_SCHEDULES["classifier-data-quality"]["MonitoringScheduleConfig"]
    assert schedule["MonitoringJobDefinitionName"] == new
    left = [d["MonitoringJobDefinitionName"] for d in
            boto3.client("sagemaker").list_data_quality_job_definitions()["JobDefinitionSummaries"]]
    assert left == [new]  # the superseded definition is gone, the schedule's is kept
    assert "delete" not in mldeploy("monitor", "setup", cwd=project).out  # a re-run is a no-op


def test_capture_off_is_explained_and_model_monitor_left_out(mldeploy, tmp_path, bundle, aws):
    (tmp_path / "baseline.json").write_text(json.dumps(baseline()))
    (tmp_path / "mldeploy.yaml").write_text(config(capture=0, emails="[]"))
    assert mldeploy("deploy", "--bundle", bundle, "--image", ecr_image("models/classifier", "b" * 64),
                    cwd=tmp_path).code == 0
    r = mldeploy("monitor", "setup", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "data capture is off on classifier" in r.out and "data_capture_percent" in r.out
    assert moto_patches.MONITORING_SCHEDULES == {} and sent("sagemaker", "UpdateEndpoint") == []


def test_missing_endpoint_is_one_line_exit_2(mldeploy, tmp_path, aws):
    (tmp_path / "mldeploy.yaml").write_text(config())
    r = mldeploy("monitor", "setup", cwd=tmp_path)
    assert r.code == 2 and "the SageMaker endpoint classifier does not exist" in r.err
    assert len(r.err.strip().splitlines()) == 1 and aws.mutating() == []


def test_a_schedule_sagemaker_cannot_run_is_exit_2_before_any_write(mldeploy, project, aws):
    (project / "mldeploy.yaml").write_text(config(schedule="30 * * * *"))
    r = mldeploy("monitor", "setup", cwd=project)
    assert r.code == 2 and "monitoring.drift.schedule '30 * * * *'" in r.err
    assert aws.mutating() == []


def test_lambda_gets_alarms_and_sns_only(mldeploy, tmp_path, aws):
    (tmp_path / "mldeploy.yaml").write_text(config().replace("target: sagemaker", "target: lambda"))
    r = mldeploy("monitor", "setup", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "Lambda has no SageMaker Model Monitor: alarms and SNS only" in r.out
    assert "mldeploy monitor drift" in r.out
    (detector,) = sent("cloudwatch", "PutAnomalyDetector")
    assert detector["SingleMetricAnomalyDetector"]["Dimensions"] == [{"Name": "FunctionName", "Value": ENDPOINT}]
    assert sent("sagemaker", "CreateMonitoringSchedule") == []
