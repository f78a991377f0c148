"""The model from object storage (image.model: storage): MLDEPLOY_MODEL_URI / _SHA256 / _CACHE read and
checked, the artifact fetched and verified before the server is ready, a bad one kept unready with one
log line; a mounted bundle verified in place; the Lambda entry fetching at init."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mldeploy import artifacts
from mldeploy.errors import UsageError
from mldeploy.serve.settings import DEFAULT_MODEL_CACHE, check_environment, from_env
from tests.helpers.need import need
from tests.helpers.server import free_port, start_server, wait_ready

ROW = {"inputs": [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]}


@pytest.fixture(scope="module")
def published(linear_bundle, tmp_path_factory) -> tuple[str, str, Path]:
    """The linear bundle published to a file:// store: (artifact uri, sha256, store folder)."""
    store = tmp_path_factory.mktemp("store")
    p = artifacts.publish(linear_bundle, store.as_uri(), "linear")
    return p.uri, p.sha256, store


def test_a_model_uri_needs_no_bundle_and_downloads_into_the_cache(published, tmp_path):
    uri, sha, _ = published
    s = from_env({"MLDEPLOY_MODEL_URI": uri, "MLDEPLOY_MODEL_SHA256": sha})
    assert (s.model_uri, s.model_sha256, s.bundle) == (uri, sha, Path(DEFAULT_MODEL_CACHE) / sha)
    s = from_env({"MLDEPLOY_MODEL_URI": uri, "MLDEPLOY_MODEL_SHA256": f"sha256:{sha.upper()}",
                  "MLDEPLOY_MODEL_CACHE": str(tmp_path)})
    assert (s.model_sha256, s.bundle) == (sha, tmp_path / sha)


def test_vertex_hands_the_artifact_over_as_aip_storage_uri(linear_bundle, published):
    _, sha, _ = published
    s = from_env({"AIP_STORAGE_URI": "gs://vertex-copy/model", "MLDEPLOY_MODEL_SHA256": sha})
    assert s.model_uri == "gs://vertex-copy/model"
    # a baked image on Vertex (no hash given): the bundle in the image, as before
    assert from_env({"AIP_STORAGE_URI": "gs://vertex-copy/model", "MLDEPLOY_BUNDLE": str(linear_bundle)}).model_uri \
        is None


def test_the_bundle_flag_wins_and_a_mounted_bundle_keeps_its_hash(linear_bundle, published):
    uri, sha, _ = published
    s = from_env({"MLDEPLOY_MODEL_URI": uri, "MLDEPLOY_MODEL_SHA256": sha}, bundle=str(linear_bundle))
    assert (s.bundle, s.model_uri, s.model_sha256) == (linear_bundle, None, sha)
    s = from_env({"MLDEPLOY_MODEL_URI": uri, "MLDEPLOY_MODEL_SHA256": sha, "MLDEPLOY_BUNDLE": str(linear_bundle)})
    assert (s.bundle, s.model_uri) == (linear_bundle, None)


@pytest.mark.parametrize(("env", "message"), [
    ({"MLDEPLOY_MODEL_URI": "s3://b/m/x"}, "MLDEPLOY_MODEL_URI is set without MLDEPLOY_MODEL_SHA256"),
    ({"AIP_STORAGE_URI": "gs://b/m", "MLDEPLOY_MODEL_SHA256": "abc"}, "MLDEPLOY_MODEL_SHA256='abc' is not a sha256"),
    ({"MLDEPLOY_MODEL_URI": "ftp://b/m", "MLDEPLOY_MODEL_SHA256": "a" * 64}, "MLDEPLOY_MODEL_URI: 'ftp://b/m' is not"),
    ({"MLDEPLOY_MODEL_URI": "s3://b/m", "MLDEPLOY_MODEL_SHA256": "a" * 64, "MLDEPLOY_MODEL_CACHE": "cache"},
     "MLDEPLOY_MODEL_CACHE='cache' is not an absolute path"),
])
def test_bad_model_settings_are_one_line(env, message):
    with pytest.raises(UsageError) as e:
        from_env(env)
    assert e.value.message.startswith(message), e.value.message
    with pytest.raises(UsageError):  # a deploy checks the same before the container starts
        check_environment(env)


def test_a_deploy_may_pass_the_model_settings():
    check_environment({"MLDEPLOY_MODEL_URI": "s3://b/m/" + "a" * 64, "MLDEPLOY_MODEL_SHA256": "a" * 64,
                       "MLDEPLOY_MODEL_CACHE": "/tmp/models"})


def predictions(server) -> list:
    reply = server.call("POST", "/predict", ROW)
    assert reply.status == 200, reply.body
    return reply.json()["outputs"]


def test_the_server_downloads_verifies_then_serves_what_the_bundle_serves(published, linear_bundle, server,
                                                                           tmp_path):
    uri, sha, _ = published
    s = start_server(None, tmp_path, env={"MLDEPLOY_MODEL_URI": uri, "MLDEPLOY_MODEL_SHA256": sha,
                                          "MLDEPLOY_MODEL_CACHE": str(tmp_path / "cache")})
    try:
        assert predictions(s) == predictions(server)  # the session's server serves the bundle itself
        logs = s.logs()
        messages = [r["message"] for r in logs]
        assert messages.index("model downloaded") < messages.index("starting") < messages.index("model ready")
        downloaded = next(r for r in logs if r["message"] == "model downloaded")
        assert (downloaded["uri"], downloaded["sha256"]) == (uri, sha)
        metrics = s.call("GET", "/metrics").body.decode()
        assert 'mldeploy_model_download_seconds{model_name="model"} ' in metrics
        assert sorted(p.name for p in (tmp_path / "cache" / sha).iterdir()) == sorted(
            [*artifacts.files_of(Path(uri.removeprefix("file://"))), artifacts.LISTING])
    finally:
        assert s.stop() == 0


def tampered(published, tmp_path) -> str:
    """A copy of the artifact with one byte of the model changed: its uri."""
    _, sha, store = published
    copy = shutil.copytree(store, tmp_path / "tampered")
    model = copy / "linear" / sha / "model.onnx"
    model.chmod(0o644)
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    return (copy / "linear" / sha).as_uri()


def wait_for_error(s, seconds: float = 10) -> None:
    """Until the server logs an error (the model check failing), at most `seconds`."""
    deadline = time.monotonic() + seconds
    while not any(r["level"] == "error" for r in s.logs()) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_tampered_artifact_stays_unready_with_one_log_line(published, tmp_path):
    _, sha, _ = published
    uri = tampered(published, tmp_path)
    s = start_server(None, tmp_path, env={"MLDEPLOY_MODEL_URI": uri, "MLDEPLOY_MODEL_SHA256": sha,
                                          "MLDEPLOY_MODEL_CACHE": str(tmp_path / "cache")}, ready=False)
    try:
        wait_ready(s, "/v2/health/live")  # alive: the platform must not restart it into the same failure
        wait_for_error(s)
        for path in ("/ping", "/v2/health/ready"):
            assert s.call("GET", path).status == 503
        refused = s.call("POST", "/predict", ROW)
        assert refused.status == 503 and "model.onnx has sha256" in refused.json()["error"]
        errors = [r for r in s.logs() if r["level"] == "error"]
        assert len(errors) == 1, errors
        assert errors[0]["message"].startswith(f"the model is not served: {uri}/model.onnx has sha256 ")
        assert "changed after publishing" in errors[0]["message"]
        assert not (tmp_path / "cache" / sha / "model.onnx").exists()  # nothing half-checked is left to load
        assert not [r for r in s.logs() if r["message"] in ("starting", "model ready")]
        # the image's HEALTHCHECK (which the local target runs) says it will never be ready, and why
        probe = subprocess.run([sys.executable, "-m", "mldeploy.serve.healthcheck"], capture_output=True, text=True, check=False,
                               env={**os.environ, "PORT": str(s.port)}, timeout=30)
        assert probe.returncode == 1 and probe.stdout.startswith(f"final: the model is not served: {uri}/model.onnx has "), probe
    finally:
        assert s.stop() == 2  # it never served


def test_a_mounted_bundle_is_verified_against_the_hash(published, tmp_path):
    uri, sha, _ = published
    # Azure ML mounts the registered model one folder below AZUREML_MODEL_DIR
    mount = shutil.copytree(Path(uri.removeprefix("file://")), tmp_path / "azureml-models" / "linear-1")
    s = start_server(None, tmp_path, env={"MLDEPLOY_MODEL_SHA256": sha,
                                          "AZUREML_MODEL_DIR": str(tmp_path / "azureml-models")})
    try:
        verified = next(r for r in s.logs() if r["message"] == "model verified")
        assert (verified["sha256"], verified["bundle"]) == (sha, str(mount))
    finally:
        assert s.stop() == 0
    (mount / "signature.json").chmod(0o644)
    signature = json.loads((mount / "signature.json").read_text())
    signature["outputs"][0]["name"] = "other"
    (mount / "signature.json").write_text(json.dumps(signature))
    s = start_server(mount, tmp_path, env={"MLDEPLOY_MODEL_SHA256": sha}, ready=False)
    try:
        wait_ready(s, "/v2/health/live")
        wait_for_error(s)   # the check runs after the server is live (a loaded machine is slow to it)
        assert s.call("GET", "/ping").status == 503
    finally:
        s.stop()
    errors = [r for r in s.logs() if r["level"] == "error"]
    assert len(errors) == 1 and f"{mount}/signature.json has sha256" in errors[0]["message"], errors


def test_lambda_downloads_at_init_and_refuses_a_tampered_artifact(published, server, tmp_path, monkeypatch):
    from mldeploy.serve import lambda_

    uri, sha, _ = published
    for name, value in {"MLDEPLOY_MODEL_URI": uri, "MLDEPLOY_MODEL_SHA256": sha,
                        "MLDEPLOY_MODEL_CACHE": str(tmp_path / "tmp")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(lambda_, "_loaded", None)
    assert lambda_.handle(ROW, None)["outputs"] == predictions(server)
    assert lambda_._loaded[0].bundle == tmp_path / "tmp" / sha
    monkeypatch.setattr(lambda_, "_loaded", None)
    monkeypatch.setenv("MLDEPLOY_MODEL_URI", tampered(published, tmp_path))
    monkeypatch.setenv("MLDEPLOY_MODEL_CACHE", str(tmp_path / "tmp2"))
    with pytest.raises(UsageError, match=r"the model is not served: .*model\.onnx has sha256"):
        lambda_.handle(ROW, None)



def test_vertex_hands_a_gs_artifact_the_server_downloads(linear_bundle, server, tmp_path, monkeypatch):
    """Vertex's way: the model's artifactUri, copied by Vertex, comes as AIP_STORAGE_URI=gs://...; the server
    fetches it with google-cloud-storage (here from the kit's Cloud Storage fake) and answers Vertex's routes."""
    need("google.cloud.storage", "the gcp extra installs it")
    from tests.helpers.fakes.storage import StorageFake

    fake = StorageFake("gcs")
    fake.buckets["vertex-copy"] = {}
    gcp = {"MLDEPLOY_GCP_API_ENDPOINT": fake.url, "GOOGLE_CLOUD_PROJECT": "acme-ml"}
    try:
        for name, value in gcp.items():
            monkeypatch.setenv(name, value)
        p = artifacts.publish(linear_bundle, "gs://vertex-copy/artifacts", "linear")
        s = start_server(None, tmp_path, ready=False, env={
            **gcp, "AIP_STORAGE_URI": p.uri, "MLDEPLOY_MODEL_SHA256": p.sha256, "AIP_HTTP_PORT": str(free_port()),
            "AIP_HEALTH_ROUTE": "/v1/health", "AIP_PREDICT_ROUTE": "/v1/predict",
            "MLDEPLOY_MODEL_CACHE": str(tmp_path / "cache")})
        try:
            wait_ready(s, "/v1/health")
            reply = s.call("POST", "/v1/predict", {"instances": ROW["inputs"]})
            assert reply.status == 200, reply.body
            assert reply.json()["predictions"] == predictions(server)
            assert next(r for r in s.logs() if r["message"] == "model downloaded")["uri"] == p.uri
        finally:
            assert s.stop() == 0
    finally:
        fake.close()
