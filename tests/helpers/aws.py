"""Plugin: AWS over HTTP. One moto server per session (reset for every test), real boto3 clients
talking to it through AWS_ENDPOINT_URL, and a log of every request the server received; a SageMaker
project on it."""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest

from tests.helpers.need import need

ACCOUNT, REGION = "123456789012", "us-east-1"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/mldeploy-endpoint"


@pytest.fixture(scope="session")
def moto_server():
    need("boto3", "the aws extra installs it")
    need("moto", "the dev extra installs it")
    from tests.helpers.moto_server import RecordingMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = RecordingMotoServer()
    server.start()
    host, port = server.get_host_and_port()
    yield server, f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server, monkeypatch):
    """A clean AWS account in us-east-1, reached by every boto3 client the code makes."""
    server, url = moto_server
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).read()
    from tests.helpers import moto_patches

    moto_patches.reset()
    for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    from mldeploy.deploy import sagemaker

    monkeypatch.setattr(sagemaker, "POLL_SECONDS", 0.05)
    server.requests.clear()
    return server


def ecr_image(name: str, content: str) -> str:
    """Put an image manifest into moto's ECR; returns REGISTRY/name@sha256:... as a build would."""
    import boto3

    ecr = boto3.client("ecr")
    try:
        ecr.create_repository(repositoryName=name)
    except ecr.exceptions.RepositoryAlreadyExistsException:
        pass
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"digest": f"sha256:{content}", "size": 1},
                           "layers": [{"digest": f"sha256:{content}", "size": 1}]})  # moto hashes the layers
    digest = ecr.put_image(repositoryName=name, imageManifest=manifest, imageTag=content[:20])["image"]["imageId"]["imageDigest"]
    return f"{REGISTRY}/{name}@{digest}"


# -- a SageMaker endpoint ------------------------------------------------------------------------------
SAGEMAKER_ENDPOINT, CAPTURE_BUCKET = "classifier", "acme-capture"


@pytest.fixture
def sagemaker_project(tmp_path, bundle, aws):
    """A model repo configured for SageMaker, and two images in ECR."""
    (tmp_path / "mldeploy.yaml").write_text(f"""
deploy:
  cloud: aws
  target: sagemaker
  endpoint: {SAGEMAKER_ENDPOINT}
  aws:
    role: {ROLE}
    sagemaker:
      instance_type: ml.m5.large
""")
    images = [ecr_image("models/classifier", c * 64) for c in "ab"]
    return tmp_path, bundle, images


def sagemaker_serving() -> dict[str, tuple[str, int]]:
    """What the endpoint serves, read straight from the API: variant -> (image, weight %)."""
    import boto3

    sm = boto3.client("sagemaker")
    ep = sm.describe_endpoint(EndpointName=SAGEMAKER_ENDPOINT)
    config = sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
    weights = {v["VariantName"]: v.get("CurrentWeight", 0.0) for v in ep["ProductionVariants"]}
    total = sum(weights.values())
    return {v["VariantName"]: (sm.describe_model(ModelName=v["ModelName"])["PrimaryContainer"]["Image"],
                               round(100 * weights[v["VariantName"]] / total)) for v in config["ProductionVariants"]}


def sagemaker_monitoring_config(capture: int = 20, schedule: str = "0 */6 * * *",
                                emails: str = "[ops@acme.example]") -> str:
    """mldeploy.yaml for the SageMaker endpoint with data capture, a drift schedule and alerts."""
    return f"""
deploy:
  cloud: aws
  target: sagemaker
  endpoint: {SAGEMAKER_ENDPOINT}
  aws:
    role: {ROLE}
    sagemaker:
      data_capture_percent: {capture}
      data_capture_s3: s3://{CAPTURE_BUCKET}/capture
monitoring:
  baseline: baseline.json
  drift:
    schedule: "{schedule}"
    jensen_shannon: 0.15
  alerts:
    sns_topic: ml-alerts
    emails: {emails}
"""
