"""`mldeploy deploy|promote|rollback|status --cloud gcp --target vertex`: the real
google-cloud-aiplatform clients (REST) against a local fake of the Vertex AI API over HTTP."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.helpers.cli import deploy, one_line
from tests.helpers.gcp_vertex import CONFIG, ENDPOINT, PROJECT, REGION, REPOSITORY, A, B, C, ids, serving
from tests.helpers.need import need

need("google.cloud.aiplatform_v1", "the gcp extra installs google-cloud-aiplatform")


@pytest.fixture
def project(tmp_path, bundle, vertex):
    (tmp_path / "mldeploy.yaml").write_text(CONFIG)
    return tmp_path, bundle


def test_first_deploy_canary_promote_rollback(mldeploy, project, vertex):
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    assert serving(vertex) == {"production": (A, 100)}
    assert "create vertex endpoint classifier" in r.out and "production 100%  healthy" in r.out
    assert "create vertex model classifier-aaaaaaaaaaaa" in r.out
    assert "deploy production to the Vertex AI endpoint classifier: running" in r.out  # progress while polling
    assert any(p.startswith("/ui/projects/acme-ml/locations/europe-west4/") for _, p, _ in vertex.requests)
    (model,) = vertex.models.values()
    assert model["containerSpec"]["imageUri"] == A and model["containerSpec"]["ports"] == [{"containerPort": 8080}]
    assert (model["containerSpec"]["predictRoute"], model["containerSpec"]["healthRoute"]) == ("/predict", "/health")
    assert model["labels"]["mldeploy-endpoint"] == "classifier" and model["labels"]["mldeploy-image"] == ("a" * 63)
    (dm,) = vertex.endpoint(ENDPOINT)["deployedModels"]
    assert dm["dedicatedResources"]["machineSpec"] == {"machineType": "n1-standard-4"}
    assert (dm["dedicatedResources"]["minReplicaCount"], dm["dedicatedResources"]["maxReplicaCount"]) == (1, 3)
    assert vertex.predictions and vertex.predictions[-1][1] == dm["id"]  # the smoke reached it
    assert vertex.predictions[-1][2]["instances"] == [{"x": [0, 0, 0, 0]}]  # one row by input name
    production = dm["id"]

    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    assert serving(vertex) == {"production": (A, 90), "canary": (B, 10)}
    canary = ids(vertex)["canary"]
    assert vertex.deploy_splits[-1] == {"0": 10, production: 90}  # key "0": the model being deployed
    assert vertex.predictions[-1][1] == canary  # the smoke went on until the canary answered

    vertex.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "up to date, nothing to change" in r.out, r.err
    assert vertex.mutating() == []  # a re-run changes nothing

    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "25")
    assert r.code == 0, r.err
    assert "traffic split: {'production': 90, 'canary': 10} -> {'production': 75, 'canary': 25}" in r.out
    assert serving(vertex) == {"production": (A, 75), "canary": (B, 25)}
    assert next(q for m, _, q in vertex.mutating() if m == "PATCH").startswith("updateMask=trafficSplit")

    vertex.requests.clear()
    r = mldeploy("promote", cwd=project[0])
    assert r.code == 0, r.err
    assert serving(vertex) == {"production": (B, 100)}
    assert not [p for _, p, _ in vertex.mutating() if p.endswith("models:upload")]  # B's model is reused
    assert production not in ids(vertex).values() and canary not in ids(vertex).values()

    assert deploy(mldeploy, project, A, "--stage", "canary", "--traffic", "30").code == 0
    assert serving(vertex) == {"production": (B, 70), "canary": (A, 30)}
    r = mldeploy("rollback", cwd=project[0])
    assert r.code == 0, r.err
    assert serving(vertex) == {"production": (B, 100)}
    r = mldeploy("status", cwd=project[0])
    assert f"production 100%  healthy  {B}" in r.out and "canary" not in r.out
    assert f"https://{REGION}-aiplatform.googleapis.com/v1/projects/{PROJECT}/locations/{REGION}/endpoints/" in r.out
    assert len(vertex.models) == 2


def test_plan_calls_nothing_that_mutates(mldeploy, project, vertex, tmp_path):
    assert deploy(mldeploy, project, A).code == 0
    vertex.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10", "--plan", "--plan-out", tmp_path / "plan.json")
    assert r.code == 0, r.err
    assert vertex.requests and vertex.mutating() == []
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["traffic_before"] == {"production": 100} and plan["traffic_after"] == {"production": 90, "canary": 10}
    assert [(c["action"], c["resource"]) for c in plan["changes"]] == [
        ("create", "vertex model classifier-bbbbbbbbbbbb"), ("create", "vertex deployed model canary"),
        ("update", "vertex endpoint classifier")]
    assert serving(vertex) == {"production": (A, 100)}


def test_a_new_image_in_a_slot_is_deployed_beside_the_old_one(mldeploy, project, vertex):
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--traffic", "20").code == 0
    old = ids(vertex)["canary"]
    r = deploy(mldeploy, project, C, "--traffic", "20")
    assert r.code == 0, r.err
    assert f"delete vertex deployed model canary ({old})" in r.out
    assert serving(vertex) == {"production": (A, 80), "canary": (C, 20)}
    assert vertex.deploy_splits[-1] == {"0": 20, ids(vertex)["production"]: 80, old: 0}


def test_two_pr_canaries_side_by_side(mldeploy, project, vertex):
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--pr", "12", "--traffic", "10").code == 0
    assert deploy(mldeploy, project, C, "--pr", "13", "--traffic", "20").code == 0
    assert serving(vertex) == {"production": (A, 70), "canary-pr12": (B, 10), "canary-pr13": (C, 20)}
    pr13 = ids(vertex)["canary-pr13"]
    # PR 12 pushes again: only its own deployed model changes
    assert deploy(mldeploy, project, C, "--pr", "12", "--traffic", "10").code == 0
    assert serving(vertex) == {"production": (A, 70), "canary-pr12": (C, 10), "canary-pr13": (C, 20)}
    assert ids(vertex)["canary-pr13"] == pr13
    r = mldeploy("promote", cwd=project[0])
    assert r.code == 2 and "has 2 canaries (canary-pr12, canary-pr13)" in r.err and "--pr N" in r.err
    r = mldeploy("rollback", "--pr", "13", cwd=project[0])
    assert r.code == 0, r.err
    assert serving(vertex) == {"production": (A, 90), "canary-pr12": (C, 10)}
    r = mldeploy("promote", cwd=project[0])  # the only canary left
    assert r.code == 0 and serving(vertex) == {"production": (C, 100)}, r.err


def test_a_failed_deploy_operation_leaves_production_serving(mldeploy, project, vertex):
    assert deploy(mldeploy, project, A).code == 0
    vertex.fail_deploy_images.add(B)
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 1 and one_line(r), r.err
    assert "deploy canary to the Vertex AI endpoint classifier failed (FAILED_PRECONDITION)" in r.err
    assert "never became ready" in r.err and "rolled back: the endpoint serves as before (production 100%)" in r.err
    assert serving(vertex) == {"production": (A, 100)}


def test_a_failed_smoke_undeploys_the_canary_and_restores_the_split(mldeploy, project, vertex):
    assert deploy(mldeploy, project, A).code == 0
    production = ids(vertex)["production"]
    vertex.failing_images.add(B)
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "50")
    assert r.code == 1 and one_line(r), r.err
    assert "smoke request" in r.err and "rolled back: the endpoint serves as before (production 100%)" in r.err
    assert serving(vertex) == {"production": (A, 100)} and ids(vertex) == {"production": production}


def test_a_failed_first_deploy_deletes_the_new_endpoint(mldeploy, project, vertex):
    vertex.fail_deploy_images.add(A)
    r = deploy(mldeploy, project, A)
    assert r.code == 1 and one_line(r), r.err
    assert "failed" in r.err and "rolled back: the new endpoint was deleted" in r.err
    assert vertex.endpoint(ENDPOINT) is None


def test_a_refused_call_is_exit_2_and_production_keeps_serving(mldeploy, project, vertex):
    assert deploy(mldeploy, project, A).code == 0
    vertex.denied.add("aiplatform.endpoints.deploy")
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 2 and one_line(r), r.err
    assert "Google Cloud refused to deploy canary to the Vertex AI endpoint classifier (PERMISSION_DENIED)" in r.err
    assert "aiplatform.endpoints.deploy" in r.err and "mldeploy doctor --cloud gcp" in r.err
    assert "http://" not in r.err  # the REST transport's 'METHOD URL:' prefix is dropped
    assert serving(vertex) == {"production": (A, 100)}


@pytest.mark.parametrize("case, args, message", [
    ("traffic over 100", ["--traffic", "150"], "--traffic 150 is not a percentage"),
    ("no project", [], "no GCP project is set"),
    ("no region", [], "no GCP region is set"),
    ("image outside Artifact Registry", ["--image", "ghcr.io/acme/classifier@sha256:" + "9" * 64],
     "Vertex AI runs custom containers from Artifact Registry"),
    ("no credentials", [], "no Google credentials"),
    ("canaries over 100", ["--stage", "canary", "--traffic", "95", "--pr", "7"], "the canaries would take 105%"),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(mldeploy, project, vertex, monkeypatch, case, args, message):
    folder, bundle = project
    if case == "canaries over 100":
        assert deploy(mldeploy, project, A).code == 0
        assert deploy(mldeploy, project, B, "--traffic", "10").code == 0
    config = CONFIG
    if case == "no project":
        config = config.replace(f"project: {PROJECT}", "project: null")
    if case == "no region":
        config = config.replace(f"region: {REGION}", "region: null")
    if case == "no credentials":  # Google's hosts, and an ADC file that is not there
        monkeypatch.delenv("MLDEPLOY_GCP_API_ENDPOINT")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(folder / "missing.json"))
    (folder / "mldeploy.yaml").write_text(config)
    vertex.requests.clear()
    r = mldeploy("deploy", "--bundle", bundle, *(args if "--image" in args else ["--image", A, *args]), cwd=folder)
    assert r.code == 2, (case, r.out, r.err)
    assert message in r.err and one_line(r), r.err
    assert vertex.mutating() == []


def test_accelerator_and_service_account_from_config(mldeploy, project, vertex):
    folder, _ = project
    (folder / "mldeploy.yaml").write_text(CONFIG + """      accelerator_type: NVIDIA_TESLA_T4
      accelerator_count: 2
      service_account: serving@acme-ml.iam.gserviceaccount.com
""")
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    (dm,) = vertex.endpoint(ENDPOINT)["deployedModels"]
    spec = dm["dedicatedResources"]["machineSpec"]
    assert spec["acceleratorType"] in (5, "NVIDIA_TESLA_T4") and spec["acceleratorCount"] == 2  # enums go as ints
    assert dm["serviceAccount"] == "serving@acme-ml.iam.gserviceaccount.com"

    (folder / "mldeploy.yaml").write_text(CONFIG + "      accelerator_type: NVIDIA_FOO\n")
    vertex.requests.clear()
    r = deploy(mldeploy, project, B, "--traffic", "10")
    assert r.code == 2 and "'NVIDIA_FOO' is not a Vertex AI accelerator" in r.err and one_line(r), r.err
    assert vertex.mutating() == []


def test_a_canary_that_fails_while_it_bakes_is_rolled_back(mldeploy, project, vertex, monkeypatch):
    monkeypatch.setenv("MLDEPLOY_DEPLOY__GCP__BAKE_SECONDS", "2")
    assert deploy(mldeploy, project, A).code == 0
    production = ids(vertex)["production"]

    def break_canary():  # the canary answers its first smoke request, then starts failing
        for _ in range(500):
            canary = ids(vertex).get("canary")
            if canary and any(dm_id == canary for _, dm_id, _ in list(vertex.predictions)):
                vertex.failing_images.add(B)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=break_canary)
    thread.start()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "50")
    thread.join()
    assert r.code == 1 and one_line(r), r.err
    assert "canary failed while it baked: smoke request" in r.err and "rolled back" in r.err
    assert serving(vertex) == {"production": (A, 100)} and ids(vertex) == {"production": production}


def test_promote_or_rollback_without_a_canary_is_exit_2(mldeploy, project, vertex):
    assert deploy(mldeploy, project, A).code == 0
    for verb in ("promote", "rollback"):
        r = mldeploy(verb, cwd=project[0])
        assert r.code == 2 and f"{ENDPOINT} has no canary" in r.err and one_line(r), r.err
    r = mldeploy("rollback", "--pr", "4", cwd=project[0])
    assert r.code == 2 and "has no canary for PR 4 to roll back" in r.err
    assert serving(vertex) == {"production": (A, 100)}


def test_doctor_names_the_identity_and_permissions(mldeploy, project, vertex):
    r = mldeploy("doctor", cwd=project[0])
    assert r.code == 0, r.out
    assert f"ok    identity: anonymous (MLDEPLOY_GCP_API_ENDPOINT is plain http), project {PROJECT}" in r.out
    assert "ok    aiplatform.endpoints.list: allowed" in r.out
    vertex.denied.add("aiplatform.endpoints.list")
    r = mldeploy("doctor", cwd=project[0])
    assert r.code == 1 and "FAIL  aiplatform.endpoints.list: Google Cloud refused" in r.out


def test_artifact_registry_repository_is_created_once(vertex):
    from mldeploy.deploy.gcp import ensure_artifact_repository

    assert ensure_artifact_repository(f"{REPOSITORY}") is True
    created = vertex.repositories[f"projects/{PROJECT}/locations/europe/repositories/models"]
    assert created["format"] in ("DOCKER", 1) and created["dockerConfig"] == {"immutableTags": True}
    assert ensure_artifact_repository(f"{REPOSITORY}") is False
    assert ensure_artifact_repository("gcr.io/acme-ml/classifier") is False  # gcr.io: left alone


def test_storage_mode_hands_the_artifact_over_and_a_model_only_change_redeploys(mldeploy, project, vertex, tmp_path):
    """image.model: storage: the Vertex AI model's artifactUri (AIP_STORAGE_URI in the container) and
    MLDEPLOY_MODEL_SHA256; the same image with another artifact is a new model deployed beside the old."""
    from mldeploy.deploy import Desired
    from mldeploy.deploy.base import MODEL_SHA256, Model
    from mldeploy.errors import UsageError
    from tests.helpers.storage_mode import deploys_a_model_only_change, target_of, two_models

    folder, bundle = project
    models = two_models(bundle, tmp_path, "gs://acme-models/models", publish=False)  # Vertex fetches it, not us

    def served():
        found = {}
        for dm in vertex.endpoint(ENDPOINT)["deployedModels"]:
            model = vertex.models[dm["model"].split("@", 1)[0]]
            env = {e["name"]: e["value"] for e in model["containerSpec"].get("env", [])}
            if model.get("artifactUri"):
                found[dm["displayName"]] = Model(model["artifactUri"], env[MODEL_SHA256])
        return found

    deploys_a_model_only_change(folder, A, models, served)
    assert len(ids(vertex)) == 1  # the old deployed model was undeployed
    bad = Model("s3://acme-models/models/classifier/" + models[0].sha256, models[0].sha256)
    r = deploy(mldeploy, project, A, "--stage", "production")  # baked: back to the image's own model
    assert r.code == 0 and f"model: {models[1]} -> None" in r.out and served() == {}, r.out
    with pytest.raises(UsageError, match="Cloud Storage only"):
        target_of(folder).plan(Desired(ENDPOINT, A, "production", 0, {}, model=bad))
