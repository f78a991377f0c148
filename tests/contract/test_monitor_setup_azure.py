"""`mldeploy monitor setup --cloud azure`: Azure Monitor metric alerts and an action group, with the
real azure-mgmt-monitor client (and azure-ai-ml to read the endpoint) against the ARM fake, reached
through MLDEPLOY_AZURE_ARM_ENDPOINT with the real DefaultAzureCredential (see test_azure_ml)."""

from __future__ import annotations

import pytest

from tests.helpers.azure_ml import ENDPOINT, RG, SUB, WS, A, B, name
from tests.helpers.need import need

for module in ("azure.mgmt.monitor", "azure.ai.ml", "azure.identity"):
    need(module, "the azure extra installs it")

CONFIG = f"""
deploy:
  cloud: azure
  target: azureml
  endpoint: {ENDPOINT}
  azure:
    subscription_id: "{SUB}"
    resource_group: {RG}
    workspace: {WS}
monitoring:
  alerts:
    latency_p99_ms: 250
    errors_5xx: 3
    cpu_percent: {{cpu}}
    action_group: ml-oncall
    emails: [ml@acme.example]
"""


@pytest.fixture
def project(tmp_path, bundle, azure):
    (tmp_path / "mldeploy.yaml").write_text(CONFIG.format(cpu=85))
    return tmp_path, bundle


def puts(arm, kind: str) -> dict[str, dict]:
    return {path.rsplit("/", 1)[-1]: body for method, path, body in arm.bodies if method == "PUT" and f"/{kind}/" in path}


def test_alerts_and_action_group_then_no_op_then_update(mldeploy, project, arm):
    folder, bundle = project
    assert mldeploy("deploy", "--bundle", bundle, "--image", A, cwd=folder).code == 0
    assert mldeploy("deploy", "--bundle", bundle, "--image", B, "--stage", "canary", "--traffic", "10",
                    cwd=folder).code == 0
    arm.requests.clear()
    arm.bodies.clear()

    r = mldeploy("monitor", "setup", "--plan", cwd=folder)
    assert r.code == 0, r.err
    assert "create azure action group ml-oncall" in r.out and "create azure metric alert mldeploy-classifier-5xx" in r.out
    assert arm.mutating() == [] and arm.metric_alerts == {}

    r = mldeploy("monitor", "setup", cwd=folder)
    assert r.code == 0, r.err
    group = puts(arm, "actionGroups")["ml-oncall"]
    assert group["properties"]["emailReceivers"] == [{"name": "email-0", "emailAddress": "ml@acme.example",
                                                      "useCommonAlertSchema": True}]
    assert group["properties"]["enabled"] is True and group["location"] == "Global"
    alerts = puts(arm, "metricAlerts")
    endpoint_id = (f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.MachineLearningServices/"
                   f"workspaces/{WS}/onlineEndpoints/{ENDPOINT}")
    group_id = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Insights/actionGroups/ml-oncall"
    assert sorted(alerts) == ["mldeploy-classifier-5xx", "mldeploy-classifier-canary-cpu",
                              "mldeploy-classifier-canary-memory", "mldeploy-classifier-latency-p99",
                              "mldeploy-classifier-production-cpu", "mldeploy-classifier-production-memory"]
    five = alerts["mldeploy-classifier-5xx"]["properties"]
    assert five["scopes"] == [endpoint_id] and five["windowSize"] == "PT5M"
    (criterion,) = five["criteria"]["allOf"]
    assert five["criteria"]["odata.type"] == "Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria"
    assert criterion["metricName"] == "RequestsPerMinute" and criterion["timeAggregation"] == "Total"
    assert criterion["operator"] == "GreaterThanOrEqual" and criterion["threshold"] == 3.0
    assert criterion["dimensions"] == [{"name": "statusCodeClass", "operator": "Include", "values": ["5xx"]}]
    assert five["actions"] == [{"actionGroupId": group_id}]
    latency = alerts["mldeploy-classifier-latency-p99"]["properties"]["criteria"]["allOf"][0]
    assert (latency["metricName"], latency["threshold"]) == ("RequestLatency_P99", 250.0)
    cpu = alerts["mldeploy-classifier-canary-cpu"]["properties"]
    assert cpu["scopes"] == [f"{endpoint_id}/deployments/{name('canary', B)}"]
    assert cpu["criteria"]["allOf"][0]["metricNamespace"] == ("Microsoft.MachineLearningServices/workspaces/"
                                                              "onlineEndpoints/deployments")
    assert cpu["criteria"]["allOf"][0]["threshold"] == 85.0

    arm.requests.clear()
    r = mldeploy("monitor", "setup", cwd=folder)
    assert r.code == 0 and "up to date, nothing to change" in r.out, r.out
    assert arm.mutating() == []

    (folder / "mldeploy.yaml").write_text(CONFIG.format(cpu=70))
    arm.bodies.clear()
    r = mldeploy("monitor", "setup", cwd=folder)
    assert r.code == 0, r.err
    assert sorted(puts(arm, "metricAlerts")) == ["mldeploy-classifier-canary-cpu", "mldeploy-classifier-production-cpu"]
    assert "update azure metric alert mldeploy-classifier-canary-cpu criteria" in r.out


def test_no_endpoint_is_exit_2(mldeploy, project, arm):
    r = mldeploy("monitor", "setup", cwd=project[0])
    assert r.code == 2 and "the Azure ML endpoint classifier does not exist" in r.err
    assert arm.mutating() == []
