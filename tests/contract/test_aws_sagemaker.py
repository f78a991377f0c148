"""`mldeploy deploy|promote|rollback|status --cloud aws --target sagemaker` against moto over HTTP."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time

import pytest

from tests.helpers.aws import ROLE, ecr_image
from tests.helpers.aws import sagemaker_serving as serving
from tests.helpers.need import need

need("moto", "the dev extra installs it")

import boto3  # noqa: E402

from mldeploy.deploy.base import MODEL_SHA256, Model  # noqa: E402
from tests.helpers import moto_patches  # noqa: E402

ENDPOINT = "classifier"


@pytest.fixture
def project(sagemaker_project):
    """A model repo configured for SageMaker, and two images in ECR."""
    return sagemaker_project


def deploy(mldeploy, project, image, *args):
    folder, bundle, _ = project
    return mldeploy("deploy", "--bundle", bundle, "--image", image, *args, cwd=folder)


def test_first_deploy_canary_promote_rollback(mldeploy, project, aws):
    _, _, (a, b) = project
    r = deploy(mldeploy, project, a)
    assert r.code == 0, r.err
    assert serving() == {"production": (a, 100)}
    assert "create sagemaker endpoint classifier" in r.out and "production 100%  healthy" in r.out

    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    assert serving() == {"production": (a, 90), "canary": (b, 10)}
    # the smoke request went to the new variant
    assert any(p == f"/endpoints/{ENDPOINT}/invocations" for _, _, p in aws.requests)

    aws.requests.clear()
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "up to date, nothing to change" in r.out
    assert aws.mutating() == []  # a re-run changes nothing

    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "25")
    assert r.code == 0 and "variant canary weight: 10 -> 25" in r.out
    assert serving() == {"production": (a, 75), "canary": (b, 25)}

    r = mldeploy("promote", cwd=project[0])
    assert r.code == 0, r.err
    assert serving() == {"production": (b, 100)}

    deploy(mldeploy, project, a, "--stage", "canary", "--traffic", "30")
    r = mldeploy("rollback", cwd=project[0])
    assert r.code == 0, r.err
    assert serving() == {"production": (b, 100)}
    r = mldeploy("status", cwd=project[0])
    assert f"production 100%  healthy  {b}" in r.out and "canary" not in r.out


def test_every_resource_is_tagged_and_alarmed(mldeploy, project, monkeypatch):
    _, _, (a, _b) = project
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/models")
    monkeypatch.setenv("GITHUB_SHA", "f" * 40)
    assert deploy(mldeploy, project, a).code == 0
    sm = boto3.client("sagemaker")
    arn = sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointArn"]
    found = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}
    assert found["mldeploy:repo"] == "acme/models" and found["mldeploy:sha"] == "f" * 40
    alarms = boto3.client("cloudwatch").describe_alarms(AlarmNamePrefix="mldeploy-classifier-production")["MetricAlarms"]
    by_metric = {a["MetricName"]: a for a in alarms}
    assert set(by_metric) == {"Invocation5XXErrors", "ModelLatency"}
    assert by_metric["ModelLatency"]["ExtendedStatistic"] == "p99"
    assert by_metric["ModelLatency"]["Threshold"] == 1_000_000  # 1000 ms, in microseconds


def test_plan_calls_nothing_that_mutates(mldeploy, project, aws, tmp_path):
    _, _, (a, b) = project
    assert deploy(mldeploy, project, a).code == 0
    aws.requests.clear()
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10", "--plan", "--plan-out", tmp_path / "plan.json")
    assert r.code == 0, r.err
    assert aws.requests and aws.mutating() == []
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["traffic_before"] == {"production": 100} and plan["traffic_after"] == {"production": 90, "canary": 10}
    assert {"action": "update", "resource": "sagemaker endpoint classifier", "field": "endpoint config"}.items() \
        <= next(c for c in plan["changes"] if c["field"] == "endpoint config").items()
    assert serving() == {"production": (a, 100)}


def test_two_pr_canaries_side_by_side(mldeploy, project):
    _, _, (a, b) = project
    c = ecr_image("models/classifier", "c" * 64)
    assert deploy(mldeploy, project, a).code == 0
    assert deploy(mldeploy, project, b, "--pr", "12", "--traffic", "10").code == 0
    assert deploy(mldeploy, project, c, "--pr", "13", "--traffic", "20").code == 0
    assert serving() == {"production": (a, 70), "canary-pr12": (b, 10), "canary-pr13": (c, 20)}
    # PR 12 pushes again: only its own variant changes
    assert deploy(mldeploy, project, c, "--pr", "12", "--traffic", "10").code == 0
    assert serving() == {"production": (a, 70), "canary-pr12": (c, 10), "canary-pr13": (c, 20)}
    r = mldeploy("rollback", "--pr", "13", cwd=project[0])
    assert r.code == 0, r.err
    assert serving() == {"production": (a, 90), "canary-pr12": (c, 10)}
    r = mldeploy("promote", cwd=project[0])  # the only canary left
    assert r.code == 0 and serving() == {"production": (c, 100)}


def test_a_failed_update_leaves_production_serving(mldeploy, project):
    _, _, (a, b) = project
    assert deploy(mldeploy, project, a).code == 0
    moto_patches.FAILING_IMAGES.add(b)
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    assert r.code == 1
    assert "did not pass the ping health check" in r.err and "rolled back" in r.err
    assert serving() == {"production": (a, 100)}


def test_an_alarm_during_the_bake_rolls_the_canary_back(mldeploy, project, monkeypatch):
    _folder, _, (a, b) = project
    monkeypatch.setenv("MLDEPLOY_DEPLOY__AWS__BAKE_SECONDS", "3")
    assert deploy(mldeploy, project, a).code == 0
    alarm = "mldeploy-classifier-canary-5xx"

    def fire():  # the canary starts answering 5xx once it takes traffic
        cw = boto3.client("cloudwatch")
        for _ in range(200):
            if cw.describe_alarms(AlarmNames=[alarm])["MetricAlarms"]:
                cw.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="5xx from the canary")
                return
            time.sleep(0.02)

    thread = threading.Thread(target=fire)
    thread.start()
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    thread.join()
    assert r.code == 1 and f"the alarm {alarm} went to ALARM" in r.err and "rolled back" in r.err
    assert serving() == {"production": (a, 100)}


def test_an_alarm_left_by_an_earlier_canary_does_not_fail_the_next_bake(mldeploy, project, monkeypatch):
    _, _, (a, b) = project
    assert deploy(mldeploy, project, a).code == 0
    assert deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10").code == 0
    boto3.client("cloudwatch").set_alarm_state(AlarmName="mldeploy-classifier-canary-5xx", StateValue="ALARM",
                                               StateReason="the first canary answered 5xx")
    assert mldeploy("rollback", cwd=project[0]).code == 0
    monkeypatch.setenv("MLDEPLOY_DEPLOY__AWS__BAKE_SECONDS", "1")
    c = ecr_image("models/classifier", "c" * 64)
    r = deploy(mldeploy, project, c, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    assert serving() == {"production": (a, 90), "canary": (c, 10)}


def test_throttling_is_retried_with_backoff(mldeploy, project, aws):
    _, _, (a, _) = project
    moto_patches.THROTTLE["CreateEndpoint"] = 2
    r = deploy(mldeploy, project, a)
    assert r.code == 0, r.err
    assert [op for op, _, _ in aws.requests].count("CreateEndpoint") == 3
    assert serving() == {"production": (a, 100)}


def test_guardrails_send_a_blue_green_deployment_config(mldeploy, project):
    folder, _, (a, b) = project
    (folder / "mldeploy.yaml").write_text((folder / "mldeploy.yaml").read_text() + """      strategy: guardrails
      guardrails_canary_percent: 20
      guardrails_wait_seconds: 300
""")
    assert deploy(mldeploy, project, a).code == 0  # the first deploy creates; nothing to shift from
    assert deploy(mldeploy, project, b, "--stage", "production").code == 0
    (request,) = moto_patches.UPDATE_REQUESTS
    assert request["DeploymentConfig"] == {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": 300,
                                            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 20}},
            "TerminationWaitInSeconds": 300, "MaximumExecutionTimeoutInSeconds": 1800},
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "mldeploy-classifier-production-5xx"},
                                                 {"AlarmName": "mldeploy-classifier-production-latency-p99"}]}}
    assert request["RetainAllVariantProperties"] is False
    assert serving() == {"production": (b, 100)}


def test_serverless_data_capture_and_autoscaling_from_config(mldeploy, project):
    folder, _, (a, _) = project
    (folder / "mldeploy.yaml").write_text((folder / "mldeploy.yaml").read_text() + """      autoscaling_max: 4
      invocations_per_instance: 250
      data_capture_percent: 20
      data_capture_s3: s3://captures/classifier
""")
    assert deploy(mldeploy, project, a).code == 0
    sm = boto3.client("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"])
    assert config["DataCaptureConfig"]["InitialSamplingPercentage"] == 20
    assert config["DataCaptureConfig"]["DestinationS3Uri"] == "s3://captures/classifier"
    scaling = boto3.client("application-autoscaling")
    (target,) = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert target["ResourceId"] == "endpoint/classifier/variant/production" and target["MaxCapacity"] == 4
    (policy,) = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 250

    (folder / "mldeploy.yaml").write_text(f"""
deploy:
  cloud: aws
  target: sagemaker
  endpoint: serverless-one
  aws:
    role: {ROLE}
    sagemaker: {{serverless_memory_mb: 2048, serverless_max_concurrency: 8}}
""")
    assert deploy(mldeploy, project, a).code == 0
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName="serverless-one")["EndpointConfigName"])
    assert config["ProductionVariants"][0]["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 8}


@pytest.mark.parametrize("case, args, env, message", [
    ("traffic over 100", ["--traffic", "150"], {}, "--traffic 150 is not a percentage"),
    ("image not in ECR", ["--image", "123456789012.dkr.ecr.us-east-1.amazonaws.com/models/classifier@sha256:" + "9" * 64],
     {}, "is not in ECR"),
    ("image outside ECR", ["--image", "ghcr.io/acme/classifier@sha256:" + "9" * 64], {}, "SageMaker and Lambda only run images from ECR"),
    ("no region", [], {"AWS_REGION": None, "AWS_DEFAULT_REGION": None}, "no AWS region is set"),
    ("no credentials", [], {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_CONFIG_FILE": "/nonexistent",
                            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"},
     "no AWS credentials"),
    ("no role", [], {}, "deploy.aws.role is not set"),
    ("bad instance type", [], {"MLDEPLOY_DEPLOY__AWS__SAGEMAKER__INSTANCE_TYPE": "m5.large"}, "instance_type"),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(mldeploy, project, aws, monkeypatch, case, args, env, message):
    folder, bundle, (a, _) = project
    for name, value in env.items():
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    if case == "no role":
        (folder / "mldeploy.yaml").write_text((folder / "mldeploy.yaml").read_text().replace(f"role: {ROLE}", "role: null"))
    aws.requests.clear()
    r = mldeploy("deploy", "--bundle", bundle, *(args if "--image" in args else ["--image", a, *args]), cwd=folder)
    assert r.code == 2, (case, r.out, r.err)
    assert message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert "testing" not in r.err  # no credential ever printed
    assert aws.mutating() == []


def test_promote_or_rollback_without_a_canary_is_exit_2(mldeploy, project):
    _, _, (a, _) = project
    assert deploy(mldeploy, project, a).code == 0
    for verb in ("promote", "rollback"):
        r = mldeploy(verb, cwd=project[0])
        assert r.code == 2 and f"{ENDPOINT} has no canary" in r.err, r.err
    assert serving() == {"production": (a, 100)}


def test_rollback_missing_ok_tears_down_a_canary_that_is_already_gone(mldeploy, project, aws):
    _, _, (a, b) = project
    r = mldeploy("rollback", "--pr", "7", "--missing-ok", cwd=project[0])  # no endpoint at all yet
    assert r.code == 0 and "nothing to roll back" in r.out, r.err
    assert deploy(mldeploy, project, a).code == 0
    assert deploy(mldeploy, project, b, "--pr", "7", "--traffic", "10").code == 0
    assert mldeploy("rollback", "--pr", "7", "--missing-ok", cwd=project[0]).code == 0
    assert serving() == {"production": (a, 100)}
    aws.requests.clear()
    r = mldeploy("rollback", "--pr", "7", "--missing-ok", cwd=project[0])
    assert r.code == 0 and "nothing to roll back" in r.out and aws.mutating() == []
    assert mldeploy("rollback", "--pr", "7", cwd=project[0]).code == 2  # without the flag: still an error


def test_doctor_names_the_identity_and_permissions(mldeploy, project):
    r = mldeploy("doctor", cwd=project[0])
    assert r.code == 0, r.out
    assert "ok    identity: arn:aws:sts::123456789012:user/moto" in r.out
    assert "ok    sagemaker:ListEndpoints: allowed" in r.out


def test_storage_mode_mounts_the_artifact_and_a_model_only_change_is_a_new_model(mldeploy, project, tmp_path):
    """image.model: storage: the variant's model mounts the S3 prefix (ModelDataSource, uncompressed) and
    the server verifies it with MLDEPLOY_MODEL_SHA256; the same image with another artifact is a change."""
    from tests.helpers.storage_mode import deploys_a_model_only_change, two_models

    folder, bundle, (a, _b) = project
    boto3.client("s3").create_bucket(Bucket="acme-models")
    models = two_models(bundle, tmp_path, "s3://acme-models/models")

    def served():
        sm = boto3.client("sagemaker")
        config = sm.describe_endpoint_config(
            EndpointConfigName=sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"])
        found = {}
        for v in config["ProductionVariants"]:
            container = sm.describe_model(ModelName=v["ModelName"])["PrimaryContainer"]
            source = container["ModelDataSource"]["S3DataSource"]
            assert source["S3DataType"] == "S3Prefix" and source["CompressionType"] == "None"
            found[v["VariantName"]] = Model(source["S3Uri"].rstrip("/"), container["Environment"][MODEL_SHA256])
        return found

    deploys_a_model_only_change(folder, a, models, served)
    r = mldeploy("status", cwd=folder)
    assert f"production 100%  healthy  {a}  model sha256:{models[1].sha256[:12]}" in r.out, r.out

    # the CLI's own path: `mldeploy publish` records the artifact in the bundle, `mldeploy deploy` hands it over
    published = shutil.copytree(bundle, tmp_path / "published")   # (the session's bundle stays unpublished)
    with (folder / "mldeploy.yaml").open("a") as config:
        config.write("image:\n  model: storage\nstorage:\n  uri: s3://acme-models/models\n")
    r = mldeploy("publish", "--bundle", published, cwd=folder)
    assert r.code == 0, r.out + r.err
    uri, sha = re.search(r"^published: (\S+)  sha256 ([0-9a-f]{64})$", r.out, re.M).groups()
    r = mldeploy("deploy", "--bundle", published, "--image", a, "--stage", "production", "--plan-out",
                 tmp_path / "plan.json", cwd=folder)
    assert r.code == 0 and f"model: {models[1]} -> sha256:{sha[:12]}" in r.out, r.out + r.err
    assert served()["production"] == Model(uri, sha)
    report = json.loads((tmp_path / "plan.json").read_text())
    assert report["served"]["production"]["model"] == {"uri": uri, "sha256": sha}
