"""`mldeploy canary analyze` on AWS: CloudWatch GetMetricData against moto over HTTP, with the
metrics put the way SageMaker and Lambda publish them (moto_patches answers the percentiles)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from tests.helpers.aws import ROLE, ecr_image
from tests.helpers.need import need

need("moto", "the dev extra installs it")

import boto3  # noqa: E402

from tests.helpers import moto_lambda, moto_patches  # noqa: E402

ENDPOINT = "classifier"


def put(namespace: str, dims: dict[str, str], metric: str, values: list[float], unit: str = "Count") -> None:
    """Data points 30 s ago, 150 at a time (CloudWatch's limit per call)."""
    cw = boto3.client("cloudwatch")
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    dimensions = [{"Name": k, "Value": v} for k, v in dims.items()]
    for i in range(0, len(values), 150):
        cw.put_metric_data(Namespace=namespace, MetricData=[
            {"MetricName": metric, "Dimensions": dimensions, "Value": v, "Unit": unit, "Timestamp": when}
            for v in values[i:i + 150]])


def traffic(namespace: str, dims: dict[str, str], names: tuple[str, str, str], requests: int, errors: int,
            latency: float, latency_unit: str) -> None:
    """`requests` invocations of one each, `errors` of them 5xx, latencies spread around `latency`."""
    invocations, failed, duration = names
    put(namespace, dims, invocations, [1.0] * requests)
    put(namespace, dims, failed, [1.0] * errors + [0.0] * (requests - errors))
    put(namespace, dims, duration, [latency * (0.5 + i / requests) for i in range(requests)], latency_unit)


# -- SageMaker -------------------------------------------------------------------------------------
@pytest.fixture
def sagemaker(tmp_path, aws):
    """An endpoint with a production and a canary variant (90/10), made straight through the API."""
    sm = boto3.client("sagemaker")
    images = [ecr_image("models/classifier", c * 64) for c in "ab"]
    for slot, image in zip(("production", "canary"), images):
        sm.create_model(ModelName=f"{ENDPOINT}-{slot}", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": image})
    sm.create_endpoint_config(EndpointConfigName=f"{ENDPOINT}-c", ProductionVariants=[
        {"VariantName": slot, "ModelName": f"{ENDPOINT}-{slot}", "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large", "InitialVariantWeight": weight}
        for slot, weight in (("production", 90.0), ("canary", 10.0))])
    sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=f"{ENDPOINT}-c")
    (tmp_path / "mldeploy.yaml").write_text(f"deploy:\n  cloud: aws\n  target: sagemaker\n  endpoint: {ENDPOINT}\n"
                                            f"  aws:\n    role: {ROLE}\n")
    return tmp_path


def variant(slot: str, requests: int, errors: int, latency_ms: float) -> None:
    traffic("AWS/SageMaker", {"EndpointName": ENDPOINT, "VariantName": slot},
            ("Invocations", "Invocation5XXErrors", "ModelLatency"), requests, errors, latency_ms * 1000, "Microseconds")


def analyze(mldeploy, folder, *args):
    r = mldeploy("canary", "analyze", "--window", "600", "--json", folder / "decision.json", *args, cwd=folder)
    return r, json.loads((folder / "decision.json").read_text()) if (folder / "decision.json").exists() else None


def test_sagemaker_healthy_canary_promotes_and_the_request_is_per_variant(mldeploy, sagemaker):
    variant("production", 900, 1, 40)
    variant("canary", 300, 0, 42)
    r, found = analyze(mldeploy, sagemaker)
    assert r.code == 0, r.err
    assert found["decision"] == "promote", found
    assert found["slots"]["canary"]["requests"] == 300 and found["slots"]["production"]["errors"] == 1
    assert 55 < found["slots"]["canary"]["p99_ms"] < 65 and 35 < found["slots"]["canary"]["p50_ms"] < 50
    (request,) = moto_patches.METRIC_DATA_REQUESTS
    assert request["end"] - request["start"] == dt.timedelta(seconds=600)
    asked = {(q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Stat"],
              tuple((d["Name"], d["Value"]) for d in q["MetricStat"]["Metric"]["Dimensions"]))
             for q in request["queries"]}
    assert {q["MetricStat"]["Metric"]["Namespace"] for q in request["queries"]} == {"AWS/SageMaker"}
    assert {q["MetricStat"]["Period"] for q in request["queries"]} == {600}
    for slot in ("production", "canary"):
        dims = (("EndpointName", ENDPOINT), ("VariantName", slot))
        assert {("Invocations", "Sum", dims), ("Invocation5XXErrors", "Sum", dims),
                ("ModelLatency", "p50", dims), ("ModelLatency", "p99", dims)} <= asked
    assert len(asked) == 8


def test_sagemaker_failing_canary_rolls_back_with_exit_1(mldeploy, sagemaker, monkeypatch):
    summary = sagemaker / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    variant("production", 900, 0, 40)
    variant("canary", 200, 10, 150)
    r, found = analyze(mldeploy, sagemaker)
    assert r.code == 1 and found["decision"] == "rollback"
    assert "canary error rate 5.00% (10 of 200) is above max_error_rate 1.00%" in r.out
    assert any("latency p99" in reason and "3.7" in reason for reason in found["reasons"]), found["reasons"]
    assert "**rollback**" in summary.read_text()
    r, _ = analyze(mldeploy, sagemaker, "--no-fail")
    assert r.code == 0 and "decision: rollback" in r.out


def captured(slot: str, rows: list[list[float]], seconds_ago: float = 30, base64_body: bool = False) -> None:
    """One data-capture file of a variant, where and as SageMaker writes it: one request per row."""
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)

    def part(mode: str, doc: dict) -> dict:
        data = json.dumps(doc)
        if base64_body:
            return {"observedContentType": "application/json", "mode": mode,
                    "data": base64.b64encode(data.encode()).decode(), "encoding": "BASE64"}
        return {"observedContentType": "application/json", "mode": mode, "data": data, "encoding": "JSON"}

    lines = [json.dumps({"captureData": {"endpointInput": part("INPUT", {"instances": [[0.5] * 4]}),
                                         "endpointOutput": part("OUTPUT", {"predictions": [row]})},
                         "eventMetadata": {"eventId": f"{slot}-{i}", "inferenceTime": f"{when:%Y-%m-%dT%H:%M:%S}Z"},
                         "eventVersion": "0"}) for i, row in enumerate(rows)]
    key = f"capture/{ENDPOINT}/{slot}/{when:%Y/%m/%d/%H}/{when:%M-%S}-{seconds_ago:g}-{slot}.jsonl"
    boto3.client("s3").put_object(Bucket="captures", Key=key, Body="\n".join(lines).encode())


@pytest.fixture
def capturing(sagemaker):
    """The endpoint's config says it captures every request into s3://captures/capture."""
    boto3.client("s3").create_bucket(Bucket="captures")
    config = sagemaker / "mldeploy.yaml"
    config.write_text(config.read_text() + "    sagemaker:\n      data_capture_percent: 100\n"
                                           "      data_capture_s3: s3://captures/capture\n")
    return sagemaker


def test_sagemaker_canary_answering_differently_in_its_data_capture_rolls_back(mldeploy, capturing):
    variant("production", 900, 0, 40)
    variant("canary", 300, 0, 40)
    captured("production", [[0.8, 0.1, 0.1]] * 60 + [[0.1, 0.8, 0.1]] * 20)
    captured("canary", [[0.1, 0.1, 0.8]] * 30, base64_body=True)  # SageMaker's form for binary bodies
    captured("canary", [[0.8, 0.1, 0.1]] * 500, seconds_ago=7200)  # before the window: not counted
    r, found = analyze(mldeploy, capturing)
    assert r.code == 1 and found["decision"] == "rollback", found
    assert found["slots"]["production"]["predictions"] == 80 and found["slots"]["canary"]["predictions"] == 30
    assert found["prediction_divergence"] == pytest.approx(1.0)  # class 2 only vs classes 0 and 1: disjoint
    assert any("prediction divergence 1.000" in reason for reason in found["reasons"]), found["reasons"]


def test_sagemaker_canary_answering_alike_in_its_data_capture_promotes(mldeploy, capturing):
    variant("production", 900, 0, 40)
    variant("canary", 300, 0, 40)
    captured("production", [[0.8, 0.1, 0.1]] * 60 + [[0.1, 0.8, 0.1]] * 20)
    captured("canary", [[0.7, 0.2, 0.1]] * 30 + [[0.2, 0.7, 0.1]] * 10)
    r, found = analyze(mldeploy, capturing)
    assert r.code == 0 and found["decision"] == "promote", found
    assert found["prediction_divergence"] == pytest.approx(0.0, abs=1e-6)  # the same classes in the same shares
    assert not [n for n in found["notes"] if "prediction divergence not measured" in n]


def test_sagemaker_without_data_capture_says_divergence_was_not_measured(mldeploy, sagemaker):
    variant("production", 900, 0, 40)
    variant("canary", 300, 0, 40)
    r, found = analyze(mldeploy, sagemaker)
    assert r.code == 0 and found["prediction_divergence"] is None
    assert any("does not capture requests (deploy.aws.sagemaker.data_capture_percent" in n for n in found["notes"])


def test_sagemaker_empty_window_holds(mldeploy, sagemaker):
    r, found = analyze(mldeploy, sagemaker)
    assert r.code == 0, r.err
    assert found["decision"] == "hold" and "no requests reached either slot" in found["reasons"][0]


def test_no_canary_is_a_usage_error(mldeploy, sagemaker):
    boto3.client("sagemaker").delete_endpoint(EndpointName=ENDPOINT)
    r, _ = analyze(mldeploy, sagemaker)
    assert r.code == 2 and "has no canary to analyze" in r.err


# -- Lambda ----------------------------------------------------------------------------------------
@pytest.fixture
def lambda_project(tmp_path, bundle, aws, monkeypatch, mldeploy):
    """The function deployed by mldeploy: version 1 in production, version 2 a 20% canary."""
    from mldeploy.deploy import lambda_

    monkeypatch.setattr(lambda_, "POLL_SECONDS", 0.05)
    moto_lambda.reset(bundle)
    boto3.client("iam").create_role(RoleName=ROLE.rsplit("/", 1)[-1], AssumeRolePolicyDocument="{}")
    (tmp_path / "mldeploy.yaml").write_text(f"deploy:\n  cloud: aws\n  target: lambda\n  endpoint: {ENDPOINT}\n"
                                            f"  aws:\n    role: {ROLE}\n")
    for image, stage in zip([ecr_image("models/classifier", c * 64) for c in "ab"], ("production", "canary")):
        r = mldeploy("deploy", "--bundle", bundle, "--image", image, "--stage", stage, "--traffic", "20", cwd=tmp_path)
        assert r.code == 0, r.err
    moto_patches.METRIC_DATA_REQUESTS.clear()
    return tmp_path


def version(number: str, requests: int, errors: int, duration_ms: float) -> None:
    traffic("AWS/Lambda", {"FunctionName": ENDPOINT, "Resource": f"{ENDPOINT}:live", "ExecutedVersion": number},
            ("Invocations", "Errors", "Duration"), requests, errors, duration_ms, "Milliseconds")


def test_lambda_reads_each_version_behind_the_alias(mldeploy, lambda_project):
    version("1", 800, 0, 30)
    version("2", 200, 30, 31)
    r, found = analyze(mldeploy, lambda_project)
    assert r.code == 1, r.out + r.err
    assert found["decision"] == "rollback" and "(30 of 200)" in found["reasons"][0]
    assert found["slots"]["production"]["requests"] == 800
    (request,) = moto_patches.METRIC_DATA_REQUESTS
    dims = {tuple(sorted((d["Name"], d["Value"]) for d in q["MetricStat"]["Metric"]["Dimensions"]))
            for q in request["queries"]}
    assert dims == {(("ExecutedVersion", v), ("FunctionName", ENDPOINT), ("Resource", f"{ENDPOINT}:live"))
                    for v in ("1", "2")}
    assert {q["MetricStat"]["Metric"]["MetricName"] for q in request["queries"]} == {"Invocations", "Errors", "Duration"}
