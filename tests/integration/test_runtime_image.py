"""image.model: storage on a real engine and registry: the model-free runtime image, built and pushed once,
run with an artifact from moto's S3 (the container reaches the host's server) or a mounted file:// one."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mldeploy import artifacts
from mldeploy.bundle import Bundle
from tests.helpers.aws import REGION
from tests.helpers.cli import run_cli
from tests.helpers.docker import printed_image
from tests.helpers.server import free_port

BUCKET = "acme-models"
ROWS = json.dumps({"inputs": [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]}).encode()


def get(port: int, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                 headers={"content-type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def wait_for(port: int, path: str, status: int, container, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while get(port, path)[0] != status:
        container.reload()
        if container.status == "exited" or time.monotonic() > deadline:
            raise AssertionError(f"{path} never answered {status}:\n{container.logs().decode()[-3000:]}")
        time.sleep(0.05)


def log_lines(container) -> list[dict]:
    return [json.loads(line) for line in container.logs().decode().splitlines() if line.startswith("{")]


def build_runtime(bundle: Path, docker_env: dict) -> tuple[int, str]:
    """`mldeploy build --push` with image.model: storage on S3 (cloud kubernetes: any store)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"MLDEPLOY_IMAGE__MODEL": "storage", "MLDEPLOY_STORAGE__URI": f"s3://{BUCKET}/models",
                            "MLDEPLOY_DEPLOY__CLOUD": "kubernetes",
                            "MLDEPLOY_IMAGE__REPOSITORY": "mldeploy-test/runtime"}.items():
            mp.setenv(name, value)
        return run_cli("build", "--bundle", bundle, "--base", docker_env["MLDEPLOY_IMAGE__BASE"], "--push",
                       "--registry", docker_env["MLDEPLOY_IMAGE__REGISTRY"])


@pytest.fixture(scope="module")
def runtime(serving_image, docker_env, tmp_path_factory) -> tuple[str, Path]:
    """The runtime image, built and pushed once: (the CLI's output, the bundle whose manifest records it)."""
    bundle = shutil.copytree(serving_image[1], tmp_path_factory.mktemp("runtime") / "bundle")
    code, out = build_runtime(bundle, docker_env)
    assert code == 0, out
    return out, bundle


@pytest.fixture(scope="module")
def runtime_image(runtime, docker_client) -> str:
    """The runtime image's reference, on the engine (pulled when an earlier run had pushed it already)."""
    image = printed_image(runtime[0])
    docker_client.images.pull(image)
    return image


@pytest.fixture(scope="module")
def s3_artifact(runtime, moto_server, tmp_path_factory):
    """The bundle published to moto's S3 (versioned bucket): (artifact uri, sha256)."""
    import boto3

    _, url = moto_server
    s3 = boto3.client("s3", endpoint_url=url, region_name=REGION, aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION}.items():
            mp.setenv(name, value)
        published = artifacts.publish(runtime[1], f"s3://{BUCKET}/models", "linear")
    return published.uri, published.sha256


@pytest.fixture(scope="module")
def baked_predictions(serving_image, docker_client) -> bytes:
    """What the baked image of the same bundle answers."""
    port = free_port()
    c = docker_client.containers.run(serving_image[0], ["serve"], detach=True, network_mode="host",
                                     environment={"PORT": str(port), "MLDEPLOY_WORKERS": "1"})
    try:
        wait_for(port, "/ping", 200, c)
        status, body = get(port, "/predict", ROWS)
        assert status == 200, body
        return body
    finally:
        c.remove(force=True)


def run_runtime(docker_client, image: str, env: dict, **kwargs):
    port = free_port()
    c = docker_client.containers.run(image, ["serve"], detach=True, network_mode="host",
                                     environment={"PORT": str(port), "MLDEPLOY_WORKERS": "1", **env}, **kwargs)
    return c, port


def test_the_runtime_image_holds_the_s3_sdk_and_no_model(runtime, runtime_image, docker_client):
    out, bundle = runtime
    image = runtime_image
    step = [s for s in Bundle.open(bundle).manifest["steps"] if s["step"] == "build"][-1]
    assert step["model"] == "storage" and step["image"] == image and step["store"] == "s3"
    assert step["built"] is ("is in the registry already" not in out)  # an earlier run here may have pushed it
    labels = docker_client.images.get(image).labels
    assert labels["dev.mldeploy.runtime.digest"] == step["runtime_digest"]
    assert "dev.mldeploy.model.sha256" not in labels
    probe = ("import boto3, os; from mldeploy.artifacts import s3; "
             "print(boto3.__version__, sorted(os.listdir('/opt/ml/model')) if os.path.isdir('/opt/ml/model') else [])")
    printed = docker_client.containers.run(image, ["-c", probe], entrypoint="/opt/venv/bin/python", remove=True)
    version, model_files = printed.decode().split(" ", 1)
    assert version.count(".") == 2 and model_files.strip() == "[]"


def test_it_is_ready_only_after_the_download_and_answers_as_the_baked_image(runtime_image, s3_artifact, moto_server,
                                                                          baked_predictions, docker_client):
    uri, sha = s3_artifact
    server, url = moto_server
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # the model's download waits here until the probes below have been answered
        held.set()
        release.wait(60)

    server.faults.race = hold
    server.faults.rules[f"GET /{BUCKET}/models/linear/{sha}/model.onnx"] = ["race", 0, 1]
    c, port = run_runtime(docker_client, runtime_image, {
        "MLDEPLOY_MODEL_URI": uri, "MLDEPLOY_MODEL_SHA256": sha, "AWS_ENDPOINT_URL": url, "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    try:
        assert held.wait(60), c.logs().decode()[-2000:]
        wait_for(port, "/v2/health/live", 200, c)  # alive while it downloads
        assert get(port, "/ping")[0] == 503 and get(port, "/v2/health/ready")[0] == 503
        assert get(port, "/predict", ROWS)[0] == 503
        release.set()
        wait_for(port, "/ping", 200, c)
        assert get(port, "/predict", ROWS) == (200, baked_predictions)
        lines = log_lines(c)
        downloaded = next(r for r in lines if r["message"] == "model downloaded")
        assert downloaded["uri"] == uri and downloaded["bundle"] == f"/tmp/mldeploy-model/{sha}"
        assert downloaded["seconds"] > 0
    finally:
        release.set()
        server.faults.rules.clear()
        c.remove(force=True)


def test_a_tampered_artifact_keeps_the_container_unready_with_one_line(runtime_image, serving_image, docker_client,
                                                                       tmp_path):
    store = tmp_path / "store"
    published = artifacts.publish(serving_image[1], store.as_uri(), "linear")
    folder = Path(published.uri.removeprefix("file://"))
    model = folder / "model.onnx"
    model.chmod(0o644)
    model.write_bytes(model.read_bytes() + b"\0")
    c, port = run_runtime(docker_client, runtime_image,
                          {"MLDEPLOY_MODEL_URI": "file:///artifact", "MLDEPLOY_MODEL_SHA256": published.sha256},
                          volumes={str(folder): {"bind": "/artifact", "mode": "ro"}})
    try:
        wait_for(port, "/v2/health/live", 200, c)
        deadline = time.monotonic() + 30
        while not [r for r in log_lines(c) if r["level"] == "error"] and time.monotonic() < deadline:
            time.sleep(0.1)
        errors = [r for r in log_lines(c) if r["level"] == "error"]
        assert len(errors) == 1, c.logs().decode()
        assert errors[0]["message"].startswith("the model is not served: file:///artifact/model.onnx has sha256")
        assert get(port, "/ping")[0] == 503
        time.sleep(1)  # still so: no crash, no restart, no second line
        c.reload()
        assert c.status == "running" and get(port, "/ping")[0] == 503
        assert len([r for r in log_lines(c) if r["level"] == "error"]) == 1
    finally:
        c.remove(force=True)


def test_a_rebuild_with_nothing_changed_builds_and_pushes_nothing(runtime, docker_env):
    out, bundle = runtime
    code, again = build_runtime(bundle, docker_env)
    assert code == 0, again
    assert printed_image(again) == printed_image(out)
    assert "is in the registry already" in again
    assert "docker build" not in again and "docker push" not in again
    step = [s for s in Bundle.open(bundle).manifest["steps"] if s["step"] == "build"][-1]
    assert step["built"] is False and step["digest"] == printed_image(out).split("@")[1]
