"""`mldeploy monitor setup --cloud gcp`: a Vertex AI model deployment monitoring job, with the real
google-cloud-aiplatform JobServiceClient (REST) against the local Vertex fake."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli import deploy
from tests.helpers.gcp_vertex import CONFIG, ENDPOINT, A, B, ids
from tests.helpers.monitoring import baseline
from tests.helpers.need import need

need("google.cloud.aiplatform_v1", "the gcp extra installs google-cloud-aiplatform")

MONITORING = """
monitoring:
  capture_sample_rate: 0.25
  baseline: baseline.json
  drift:
    schedule: "0 */6 * * *"
    jensen_shannon: 0.15
  alerts:
    emails: {emails}
"""


@pytest.fixture
def project(tmp_path, bundle, vertex):
    (tmp_path / "baseline.json").write_text(json.dumps(baseline()))
    (tmp_path / "mldeploy.yaml").write_text(CONFIG + MONITORING.format(emails="[ml@acme.example]"))
    return tmp_path, bundle


def test_plan_then_job_then_no_op_then_update(mldeploy, project, vertex):
    folder, _ = project
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
    vertex.requests.clear()

    r = mldeploy("monitor", "setup", "--plan", cwd=folder)
    assert r.code == 0, r.err
    assert "create vertex model deployment monitoring job classifier-monitoring" in r.out
    for line in ("create cloud monitoring email channel ml@acme.example",
                 "create cloud monitoring alert policy mldeploy classifier 5xx threshold = 0",
                 "create cloud monitoring alert policy mldeploy classifier latency p99 threshold = 1000"):
        assert line in r.out, r.out
    assert vertex.requests and vertex.mutating() == [] and vertex.monitoring_jobs == {}
    assert vertex.monitoring.policies == {} and vertex.monitoring.channels == {}

    r = mldeploy("monitor", "setup", cwd=folder)
    assert r.code == 0, r.err
    ((method, body),) = vertex.job_bodies
    assert method == "POST"
    assert body["displayName"] == "classifier-monitoring"
    assert body["endpoint"] == vertex.endpoint(ENDPOINT)["name"]
    deployed = ids(vertex)
    assert sorted(o["deployedModelId"] for o in body["modelDeploymentMonitoringObjectiveConfigs"]) == sorted(
        deployed.values())
    drift = body["modelDeploymentMonitoringObjectiveConfigs"][0]["objectiveConfig"]["predictionDriftDetectionConfig"]
    assert drift["driftThresholds"] == {name: {"value": 0.15} for name in ("age", "city", "color", "tier", "x")}
    assert drift["defaultDriftThreshold"] == {"value": 0.15}
    assert body["modelDeploymentMonitoringScheduleConfig"] == {"monitorInterval": "21600s"}
    assert body["loggingSamplingStrategy"] == {"randomSampleConfig": {"sampleRate": 0.25}}
    assert body["modelMonitoringAlertConfig"] == {"emailAlertConfig": {"userEmails": ["ml@acme.example"]},
                                                  "enableLogging": True}
    assert body["labels"]["mldeploy-endpoint"] == ENDPOINT
    # Cloud Monitoring: an email channel, and alert policies on the endpoint's 5xx answers and latency
    ((channel_name, channel),) = vertex.monitoring.channels.items()
    assert channel["type"] == "email" and channel["labels"] == {"email_address": "ml@acme.example"}
    policies = {p["displayName"]: p for p in vertex.monitoring.policies.values()}
    assert set(policies) == {"mldeploy classifier 5xx", "mldeploy classifier latency p99"}
    endpoint_id = vertex.endpoint(ENDPOINT)["name"].rsplit("/", 1)[-1]
    errors = policies["mldeploy classifier 5xx"]["conditions"][0]["conditionThreshold"]
    assert errors["filter"] == ('metric.type = "aiplatform.googleapis.com/prediction/online/response_count" AND '
                                'resource.type = "aiplatform.googleapis.com/Endpoint" AND resource.labels.location = '
                                f'"europe-west4" AND resource.labels.endpoint_id = "{endpoint_id}" AND '
                                'metric.labels.response_code = starts_with("5")')
    assert errors["comparison"] == "COMPARISON_GT" and "thresholdValue" not in errors  # 0, left out as Google does
    latency = policies["mldeploy classifier latency p99"]["conditions"][0]["conditionThreshold"]
    assert latency["aggregations"][0]["perSeriesAligner"] == "ALIGN_PERCENTILE_99" and latency["thresholdValue"] == 1000
    assert all(p["notificationChannels"] == [channel_name] for p in policies.values())

    vertex.requests.clear()
    r = mldeploy("monitor", "setup", cwd=folder)
    assert r.code == 0 and "up to date, nothing to change" in r.out
    assert vertex.mutating() == []

    (folder / "mldeploy.yaml").write_text(CONFIG + MONITORING.format(emails="[ml@acme.example, oncall@acme.example]"))
    r = mldeploy("monitor", "setup", cwd=folder)
    assert r.code == 0, r.err
    assert "update vertex model deployment monitoring job classifier-monitoring model_monitoring_alert_config" in r.out
    assert "create cloud monitoring email channel oncall@acme.example" in r.out
    assert "update cloud monitoring alert policy mldeploy classifier 5xx" in r.out
    assert all(len(p["notificationChannels"]) == 2 for p in vertex.monitoring.policies.values())
    assert len(vertex.monitoring.policies) == 2  # updated in place
    method, body = vertex.job_bodies[-1]
    assert method == "PATCH" and body["modelMonitoringAlertConfig"]["emailAlertConfig"]["userEmails"] == [
        "ml@acme.example", "oncall@acme.example"]
    (job,) = vertex.monitoring_jobs.values()
    assert job["modelMonitoringAlertConfig"]["emailAlertConfig"]["userEmails"][1] == "oncall@acme.example"


def test_no_endpoint_and_no_sample_rate_are_exit_2(mldeploy, project, vertex):
    folder, _ = project
    r = mldeploy("monitor", "setup", cwd=folder)
    assert r.code == 2 and "the Vertex AI endpoint classifier does not exist" in r.err
    assert deploy(mldeploy, project, A).code == 0
    (folder / "mldeploy.yaml").write_text(CONFIG + MONITORING.format(emails="[]").replace("0.25", "0.0"))
    vertex.requests.clear()
    r = mldeploy("monitor", "setup", cwd=folder)
    assert r.code == 2 and "monitoring.capture_sample_rate is 0" in r.err
    assert vertex.mutating() == []


def test_cloud_run_gets_the_drift_schedule(mldeploy, project, vertex):
    folder, _ = project
    r = mldeploy("monitor", "setup", "--target", "cloudrun", cwd=folder)
    assert r.code == 0, r.err
    assert "Cloud Run has no model monitoring" in r.out
    assert "0 */6 * * *" in r.out and "mldeploy monitor drift" in r.out
    policies = {p["displayName"]: p["conditions"][0]["conditionThreshold"] for p in vertex.monitoring.policies.values()}
    assert set(policies) == {"mldeploy classifier 5xx", "mldeploy classifier latency p99"}
    service = 'resource.type = "cloud_run_revision" AND resource.labels.location = "europe-west4" AND ' \
              'resource.labels.service_name = "classifier"'
    assert policies["mldeploy classifier 5xx"]["filter"] == (
        f'metric.type = "run.googleapis.com/request_count" AND {service} AND '
        'metric.labels.response_code_class = "5xx"')
    assert policies["mldeploy classifier latency p99"]["filter"] == (
        f'metric.type = "run.googleapis.com/request_latencies" AND {service}')
    assert [m for m, _, _ in vertex.mutating()] == ["POST"] * 3  # a channel and two policies; no model monitoring
