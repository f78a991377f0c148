"""AWS over HTTP: one moto server per session (reset for every test), real boto3 clients talking to
it through AWS_ENDPOINT_URL, and a log of every request the server received."""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("boto3", reason="the aws extra (boto3) is not installed")
pytest.importorskip("moto", reason="moto (the dev extra) is not installed")

from moto.moto_server.threaded_moto_server import ThreadedMotoServer  # noqa: E402
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from tests.contract import moto_patches  # noqa: E402

ACCOUNT, REGION = "123456789012", "us-east-1"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/mldeploy-endpoint"
MUTATING = ("Create", "Update", "Put", "Delete", "Register", "Deregister", "Publish", "Tag", "Set")


class RecordingMotoServer(ThreadedMotoServer):
    """moto's threaded server, with a log of (operation, method, path) for every request."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.requests: list[tuple[str, str, str]] = []

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)

        def recording(environ, start_response):
            path = environ.get("PATH_INFO", "")
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            operation = target.rsplit(".", 1)[-1] if target else path.rsplit("/operation/", 1)[-1] if "/operation/" in path else ""
            self.requests.append((operation, environ["REQUEST_METHOD"], path))
            return app(environ, start_response)

        self._server = make_server(self._ip_address, self._port, recording, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    def mutating(self) -> list[tuple[str, str, str]]:
        """Requests that change state: mutating JSON/CBOR operations, and REST writes (Lambda)."""
        return [r for r in self.requests if r[0].startswith(MUTATING)
                or (not r[0] and r[1] in ("POST", "PUT", "DELETE") and not r[2].endswith("/invocations")
                    and not r[2].startswith("/moto-api"))]


@pytest.fixture(scope="session")
def moto_server():
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
