"""AWS over HTTP: one moto server per session (reset for every test), real boto3 clients talking to
it through AWS_ENDPOINT_URL, and a log of every request the server received."""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path

import pytest

ACCOUNT, REGION = "123456789012", "us-east-1"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/mldeploy-endpoint"


@pytest.fixture(scope="session")
def moto_server():
    pytest.importorskip("boto3", reason="the aws extra (boto3) is not installed")
    pytest.importorskip("moto", reason="moto (the dev extra) is not installed")
    from tests.contract.moto_server import RecordingMotoServer

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
    from tests.contract import moto_patches

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


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """A converted bundle of a small linear model (4 floats -> 3 probabilities)."""
    from tests.serve.conftest import _save, linear_graph

    return _save(linear_graph(), tmp_path_factory.mktemp("aws-model"))
