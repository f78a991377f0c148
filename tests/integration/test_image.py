"""The serving image on a real engine and registry: built, pushed, pulled by digest, run, called."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import urllib.request

import numpy as np
import pytest

from mldeploy.bundle import Bundle
from mldeploy.rehearsal.kit import git_tracked_copy
from tests.helpers.docker import printed_image, starting_line, wait_http
from tests.helpers.models import expected_probs
from tests.helpers.need import need
from tests.helpers.paths import ROOT
from tests.helpers.server import free_port

X = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]


def call(port: int, path: str, body: bytes | None = None, ctype: str = "application/json",
         accept: str | None = None) -> tuple[int, str, bytes]:
    headers = {"content-type": ctype} if body is not None else {}
    if accept:
        headers["accept"] = accept
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers,
                                 method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers["content-type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read()


@pytest.fixture(scope="module")
def pushed(serving_image, docker_env, mldeploy_module):
    """`mldeploy build --push` on the linear bundle: the digest reference it prints."""
    _, bundle = serving_image
    code, out = mldeploy_module("build", "--bundle", bundle, "--base", docker_env["MLDEPLOY_IMAGE__BASE"],
                                "--push", "--registry", docker_env["MLDEPLOY_IMAGE__REGISTRY"])
    assert code == 0, out
    image = printed_image(out)
    return image, bundle


@pytest.fixture(scope="module")
def mldeploy_module():
    import contextlib

    from mldeploy.cli import main

    def run(*args):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = main([str(a) for a in args])
        return code, buf.getvalue()

    return run


@pytest.fixture(scope="module")
def container(pushed, docker_client):
    """The image pulled back by digest (local tags removed first) and run as SageMaker runs it."""
    image, _ = pushed
    _repository, digest = image.split("@")
    tags = docker_client.images.get(image).tags
    for tag in tags:
        docker_client.images.remove(tag, force=True)  # untags only, if an earlier test left a container of this image
    pulled = docker_client.images.pull(image)
    assert digest in pulled.attrs["RepoDigests"][0]
    for tag in tags:  # tagged again: later modules run the session's serving image by its tag
        pulled.tag(*tag.rsplit(":", 1))
    port, grpc_port = free_port(), free_port()
    c = docker_client.containers.run(image, ["serve"], detach=True, environment={"MLDEPLOY_BATCH_WAIT_MS": "0",
                                                                                 "MLDEPLOY_GRPC_PORT": "8081"},
                                     ports={"8080/tcp": ("127.0.0.1", port), "8081/tcp": ("127.0.0.1", grpc_port)})
    try:
        wait_http(f"http://127.0.0.1:{port}/ping")
        yield c, port, grpc_port
    finally:
        c.remove(force=True)


def test_a_rebuild_of_the_same_bundle_is_the_same_image(serving_image, docker_env, mldeploy_module, tmp_path):
    """The bundle records each build; the image carries the lineage without builds, so an unchanged
    bundle builds the very same image (what an immutable registry's tags need)."""
    bundle = shutil.copytree(serving_image[1], tmp_path / "bundle")
    for _ in range(2):
        code, out = mldeploy_module("build", "--bundle", bundle, "--base", docker_env["MLDEPLOY_IMAGE__BASE"])
        assert code == 0, out
    *_, first, second = [s for s in Bundle.open(bundle).manifest["steps"] if s["step"] == "build"]
    assert first["image_id"] == second["image_id"]


def test_two_fresh_runs_over_an_unchanged_model_push_the_same_digest(docker_env, mldeploy, tmp_path):
    """What a fresh CI job does for a commit that leaves the model alone: convert, optimize and build
    from a clean checkout with no build cache. The image (and so the canary) must not change."""
    digests = []
    for run in ("first", "second"):
        repo = git_tracked_copy(ROOT / "examples" / "model-repo", tmp_path / run)
        for args in (["convert"], ["optimize"], ["build", "--no-cache", "--push", "--repository", "mldeploy-test/repro",
                                                     "--base", docker_env["MLDEPLOY_IMAGE__BASE"],
                                                     "--registry", docker_env["MLDEPLOY_IMAGE__REGISTRY"]]):
            r = mldeploy(*args, cwd=repo)
            assert r.code == 0, (args, r.out, r.err)
        build = Bundle.open(repo / ".mldeploy" / "bundle").manifest["steps"][-1]
        digests.append(build["digest"])
    assert digests[0] == digests[1]


def test_push_records_the_digest_in_the_manifest(pushed):
    image, bundle = pushed
    step = Bundle.open(bundle).manifest["steps"][-1]
    assert step["step"] == "build" and step["image"] == image and image.endswith(step["digest"])
    assert step["digest"].startswith("sha256:") and step["tags"][0] == f"image-{step['image_id'].split(':')[1][:12]}"
    assert step["tags"][1] == f"model-{Bundle.open(bundle).manifest['model']['sha256'][:12]}"


def test_every_protocol_against_the_container(container):
    _, port, _ = container
    body = json.dumps
    checks = {
        "/invocations": (body(X).encode(), "predictions"),
        "/predict": (body({"instances": X}).encode(), "predictions"),
        "/score": (body({"data": X}).encode(), "outputs"),
    }
    for path, (payload, key) in checks.items():
        status, _, out = call(port, path, payload)
        assert status == 200, (path, out)
        np.testing.assert_allclose(json.loads(out)[key], expected_probs(X), rtol=1e-5)
    csv = "\n".join(",".join(map(str, r)) for r in X).encode()
    status, ctype, out = call(port, "/invocations", csv, "text/csv")
    assert status == 200 and ctype == "text/csv"
    np.testing.assert_allclose(np.loadtxt(io.StringIO(out.decode()), delimiter=","), expected_probs(X), rtol=1e-5)
    v2 = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [v for row in X for v in row]}]}
    status, _, out = call(port, "/v2/models/model/infer", body(v2).encode())
    assert status == 200
    np.testing.assert_allclose(np.reshape(json.loads(out)["outputs"][0]["data"], (2, 3)), expected_probs(X), rtol=1e-5)
    for path in ("/", "/v2/health/live", "/v2/health/ready", "/v2/models/model"):
        assert call(port, path)[0] == 200, path
    status, _, out = call(port, "/predict", b'{"inputs": [[1, 2]]}')
    assert status == 400 and b"must be 4" in out


def test_the_image_serves_grpc_to_tritons_client(container):
    grpcclient = need("tritonclient.grpc", "pip install -e '.[dev]' installs tritonclient")
    _, _, grpc_port = container
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        assert client.is_server_live() and client.is_model_ready("model")
        x = grpcclient.InferInput("x", [2, 4], "FP32")
        x.set_data_from_numpy(np.array(X, np.float32))
        out = client.infer("model", [x]).as_numpy(client.get_model_metadata("model").outputs[0].name)
        np.testing.assert_allclose(out, expected_probs(np.array(X, np.float32)), rtol=1e-5)
    finally:
        client.close()


def test_image_is_slim_labelled_and_unprivileged(container, docker_client, pushed):
    c, _, _ = container
    image = docker_client.images.get(pushed[0])
    labels = image.labels
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert labels["dev.mldeploy.model.sha256"] == Bundle.open(pushed[1]).manifest["model"]["sha256"]
    assert image.attrs["Config"]["User"] == "10001:10001"
    assert image.attrs["Config"]["Entrypoint"] == ["/opt/venv/bin/mldeploy", "serve"]
    found = c.exec_run(["/opt/venv/bin/python", "-c", ("import importlib.util as u, json; print(json.dumps("
                        "{m: bool(u.find_spec(m)) for m in ('torch', 'tensorflow', 'onnx', 'pydantic', 'pip')}))")])
    assert json.loads(found.output) == {"torch": False, "tensorflow": False, "onnx": False, "pydantic": False,
                                        "pip": False}
    assert c.exec_run(["/opt/venv/bin/python", "-m", "mldeploy.serve.healthcheck"]).exit_code == 0


def test_sigterm_drains_in_flight_requests(pushed, docker_client):
    port = free_port()
    c = docker_client.containers.run(pushed[0], detach=True, ports={"8080/tcp": ("127.0.0.1", port)},
                                     environment={"MLDEPLOY_BATCH_WAIT_MS": "1500", "MLDEPLOY_WORKERS": "1"})
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready")
        results = []
        worker = threading.Thread(target=lambda: results.append(call(port, "/predict", json.dumps({"inputs": X}).encode())))
        worker.start()
        threading.Event().wait(0.4)  # the request is now waiting in the batcher
        c.stop(timeout=20)           # SIGTERM, then SIGKILL after 20 s
        worker.join(30)
        assert results and results[0][0] == 200, results
        np.testing.assert_allclose(json.loads(results[0][2])["outputs"], expected_probs(X), rtol=1e-5)
        c.reload()
        assert c.attrs["State"]["ExitCode"] == 0
    finally:
        c.remove(force=True)


def test_bad_builds_exit_2_with_one_line(mldeploy_module, serving_image, docker_env, tmp_path):
    _, bundle = serving_image
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {docker_env['MLDEPLOY_IMAGE__BASE']}\nRUN echo building && exit 7\n")
    code, out = mldeploy_module("build", "--bundle", bundle, "--dockerfile", dockerfile)
    assert code == 2 and "failed at Step 2/" in out and ": RUN echo building && exit 7" in out and "code: 7" in out
    no_model = tmp_path / "no-model"
    shutil.copytree(bundle, no_model)
    (no_model / "model.onnx").unlink()
    code, out = mldeploy_module("build", "--bundle", no_model)
    assert code == 2 and "missing model.onnx" in out
    code, out = mldeploy_module("build", "--bundle", bundle, "--base", docker_env["MLDEPLOY_IMAGE__BASE"],
                                "--push", "--registry", "127.0.0.1:1")
    assert code == 2 and "registry 127.0.0.1:1 refused the push" in out


def test_a_mounted_model_the_image_user_cannot_read_is_named(pushed, docker_client, tmp_path):
    """Clouds mount model files; if uid 10001 cannot read them, say so in one JSON line, exit 2."""
    mounted = tmp_path / "model"
    shutil.copytree(pushed[1], mounted)
    (mounted / "model.onnx").chmod(0o600)  # owned by root here: unreadable for the image's user
    out = docker_client.containers.run(pushed[0], ["serve"], remove=False, detach=True,
                                       volumes={str(mounted): {"bind": "/opt/ml/model", "mode": "ro"}})
    try:
        code = out.wait(timeout=60)["StatusCode"]
        lines = out.logs().decode().strip().splitlines()
    finally:
        out.remove(force=True)
    assert code == 2, lines
    errors = [json.loads(line) for line in lines if '"error"' in line]
    assert len(errors) == 1 and "model.onnx is not readable by uid 10001" in errors[0]["message"], lines
    assert all(line.startswith("{") for line in lines), lines


def test_image_environment_is_built_in_exactly_and_the_server_reads_it(serving_image, docker_env, docker_client,
                                                                        mldeploy_module, tmp_path):
    _, bundle = serving_image
    odd = 'a "quoted" $HOME \\ é'  # quotes, a backslash, no $ expansion, not ASCII
    config = tmp_path / "mldeploy.yaml"
    config.write_text(json.dumps({"image": {"environment": {"MLDEPLOY_WORKERS": "3", "MLDEPLOY_MODEL_NAME": odd}}}))
    code, out = mldeploy_module("build", "--config", config, "--bundle", bundle, "--repository", "mldeploy-test/env",
                                "--base", docker_env["MLDEPLOY_IMAGE__BASE"])
    assert code == 0, out
    image = printed_image(out)
    shown = docker_client.containers.run(image, entrypoint=["/opt/venv/bin/python", "-c",
                                         "import os, json; print(json.dumps(os.environ.get('MLDEPLOY_MODEL_NAME')))"],
                                         remove=True)
    assert json.loads(shown) == odd
    c = docker_client.containers.run(image, ["serve"], detach=True)
    try:
        deadline = time.monotonic() + 60
        while '"starting"' not in (logs := c.logs().decode()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert starting_line(logs)["workers"] == 3, logs
    finally:
        c.remove(force=True)
