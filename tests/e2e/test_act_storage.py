"""The reusable deploy workflow with image.model: storage, run by act from the example model repo
on cloud local with a file:// store: a release tag builds the runtime image and publishes the model;
a pull request that only retrains builds no image (the push job finds the runtime image in the
registry) and its canary, on production's very image, serves the new model's predictions."""

from __future__ import annotations

import json
import shutil
import urllib.request

import numpy as np
import pytest

from tests.helpers.act import TOKEN, act, pull_request, retrain, routes, served
from tests.helpers.paths import ROOT
from tests.helpers.server import free_port

ROWS = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def setup(docker_env, github, tmp_path_factory):
    """The model repo (storage mode, a file:// store), its store, and the act environment."""
    port = free_port()
    name = f"st{port}"
    store = tmp_path_factory.mktemp("store")
    repo = tmp_path_factory.mktemp("st") / "model-repo"
    shutil.copytree(ROOT / "examples" / "model-repo", repo, ignore=shutil.ignore_patterns(".mldeploy"))
    config = repo / "mldeploy.yaml"
    config.write_text(config.read_text().replace(
        "deploy:", f"image:\n  model: storage\nstorage:\n  uri: file://{store}\ndeploy:", 1))
    env = {**docker_env, "MLDEPLOY_DEPLOY__PORT": str(port), "MLDEPLOY_DEPLOY__ENDPOINT": name,
           "MLDEPLOY_ACT_ARTIFACTS": str(tmp_path_factory.mktemp("artifacts")), "GITHUB_API_URL": github.url}
    yield repo, store, name, port, env
    from mldeploy.deploy.local import LocalTarget

    LocalTarget(name, port).destroy()


def predict(port: int, slot: str) -> np.ndarray:
    body = json.dumps({"instances": ROWS.tolist()}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", body,
                                     {"content-type": "application/json", "x-mldeploy-slot": slot})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["x-mldeploy-slot"] == slot
        return np.asarray(json.load(answer)["predictions"], dtype=np.float32)


def from_the_store(store, model: dict) -> np.ndarray:
    """What the artifact a slot names computes, run here with ONNX Runtime from the store's copy."""
    import onnxruntime as ort

    folder = model["uri"].removeprefix("file://")
    assert folder.startswith(f"{store}/") and folder.endswith(f"/{model['sha256']}")
    session = ort.InferenceSession(f"{folder}/model.onnx")
    return session.run(None, {"features": ROWS})[0]


def test_a_model_only_pull_request_builds_no_image_and_its_canary_serves_the_new_model(kit, setup):
    repo, store, name, port, env = setup
    r = act(repo, kit, "release-production.yml", env, event="push", payload={"ref": "refs/tags/v1.0.0"},
            secrets={"GITHUB_TOKEN": TOKEN})
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    production = routes(name, port)["production"]
    assert production["model"] and f"published: {production['model']['uri']}" in r.stdout
    assert served(port, 20) == {"production": 20}

    retrain(repo, seed=1)
    r = act(repo, kit, "pr-canary.yml", env, event="pull_request", payload=pull_request("opened"),
            secrets={"GITHUB_TOKEN": TOKEN})
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "is in the registry already" in r.stdout and "nothing to build or push" in r.stdout
    now = routes(name, port)
    canary = now["canary"]
    assert (now["production"]["image"], now["production"]["model"]) == (production["image"], production["model"])
    assert canary["image"] == production["image"]  # the same runtime image: nothing was built
    assert canary["model"]["sha256"] != production["model"]["sha256"]
    assert f"published: {canary['model']['uri']}" in r.stdout
    new, old = predict(port, "canary"), predict(port, "production")
    np.testing.assert_allclose(new, from_the_store(store, canary["model"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(old, from_the_store(store, production["model"]), rtol=1e-4, atol=1e-5)
    assert not np.allclose(new, old, rtol=1e-4, atol=1e-5)  # a different model answers
