"""`mldeploy deploy|promote|rollback|status --cloud gcp --target cloudrun`: the real google-cloud-run
clients (transport rest, anonymous credentials) against a small stateful fake of the Cloud Run Admin
API v2 over HTTP (tests/helpers/fakes/cloudrun.py), which also answers the service and tag URLs."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.helpers.cli import deploy
from tests.helpers.gcp_cloudrun import CONFIG, ENDPOINT, PROJECT, REGION, REPO, SERVICE, A, B, C
from tests.helpers.need import need

need("google.cloud.run_v2", "the gcp extra installs google-cloud-run")


@pytest.fixture
def gcp(cloudrun):
    """A clean fake Cloud Run (tests/helpers/gcp_cloudrun.py)."""
    return cloudrun


@pytest.fixture
def project(tmp_path, bundle, gcp):
    (tmp_path / "mldeploy.yaml").write_text(CONFIG)
    return tmp_path, bundle


def revisions(fake) -> set[str]:
    return {name.rsplit("/", 1)[-1] for name in fake.revisions}


def test_first_deploy_canary_promote_rollback(mldeploy, project, gcp):
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    assert gcp.serving(ENDPOINT) == {"production": (A, 100)}
    assert "create cloud run service classifier" in r.out and "production 100%  healthy" in r.out
    assert f"url: {gcp.url}/run/{ENDPOINT}" in r.out
    assert gcp.smokes == [(f"/run/{ENDPOINT}/predict", f"{ENDPOINT}-production-aaaaaaaaaa-" + r.out.split(
        f"{ENDPOINT}-production-aaaaaaaaaa-")[1][:4])]

    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    assert gcp.serving(ENDPOINT) == {"production": (A, 90), "canary": (B, 10)}
    assert "create cloud run tag canary traffic" in r.out
    # the smoke request went to the canary's own tag URL, and reached the new revision
    path, revision = gcp.smokes[-1]
    assert path == f"/run/{ENDPOINT}/tag/canary/predict" and revision.startswith(f"{ENDPOINT}-canary-bbbbbbbbbb-")
    svc = gcp.services[SERVICE]
    assert {t.get("tag", "") for t in svc["traffic"]} == {"", "canary"}

    gcp.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "up to date, nothing to change" in r.out
    assert gcp.requests and gcp.mutating() == []  # a re-run reads and changes nothing

    built = revisions(gcp)
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "25")
    assert r.code == 0 and "traffic canary" in r.out and "10% -> " in r.out, r.out
    assert gcp.serving(ENDPOINT) == {"production": (A, 75), "canary": (B, 25)}
    assert revisions(gcp) == built  # a new share is not a new revision

    r = mldeploy("promote", cwd=project[0])
    assert r.code == 0, r.err
    assert gcp.serving(ENDPOINT) == {"production": (B, 100)}
    assert revisions(gcp) == built  # the canary's revision itself takes all the traffic
    assert [t.get("tag") for t in gcp.services[SERVICE]["trafficStatuses"]] == [None]  # its tag is gone

    assert deploy(mldeploy, project, A, "--stage", "canary", "--traffic", "30").code == 0
    r = mldeploy("rollback", cwd=project[0])
    assert r.code == 0 and "rollback: done" in r.out, r.err
    assert gcp.serving(ENDPOINT) == {"production": (B, 100)}
    r = mldeploy("status", cwd=project[0])
    assert r.code == 0 and f"production 100%  healthy  {B}" in r.out and "canary" not in r.out


def test_the_revision_runs_the_configured_container(mldeploy, project, gcp, monkeypatch):
    monkeypatch.setenv("GITHUB_REPOSITORY", "Acme/Models")
    monkeypatch.setenv("GITHUB_SHA", "f" * 40)
    assert deploy(mldeploy, project, A).code == 0
    svc = gcp.services[SERVICE]
    (revision,) = gcp.revisions.values()
    (container,) = revision["containers"]
    assert container["image"] == A and container["ports"] == [{"name": "http1", "containerPort": 8080}]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert revision["scaling"] == {"minInstanceCount": 1, "maxInstanceCount": 5}
    assert revision["maxInstanceRequestConcurrency"] == 8
    assert revision["labels"] | {"mldeploy-spec": "-"} == {
        "mldeploy-endpoint": ENDPOINT, "mldeploy-slot": "production", "mldeploy-image": "a" * 63,
        "mldeploy-repo": "acme-models", "mldeploy-sha": "f" * 40, "mldeploy-spec": "-"}
    assert svc["labels"]["mldeploy-endpoint"] == ENDPOINT and svc["ingress"] == 1  # INGRESS_TRAFFIC_ALL

    # other settings are another revision, even for the same image in the same slot
    (project[0] / "mldeploy.yaml").write_text(CONFIG.replace("memory: 4Gi", "memory: 8Gi"))
    r = deploy(mldeploy, project, A, "--stage", "production")
    assert r.code == 0 and "create cloud run revision" in r.out, r.out
    assert len(gcp.revisions) == 2 and gcp.serving(ENDPOINT) == {"production": (A, 100)}
    assert gcp.revisions[f"{SERVICE}/revisions/{gcp.services[SERVICE]['trafficStatuses'][0]['revision']}"][
        "containers"][0]["resources"]["limits"]["memory"] == "8Gi"


def test_environment_and_secrets_reach_the_container_and_a_change_is_a_new_revision(mldeploy, project, gcp):
    settings = ("      max_instances: 5\n      environment: {MLDEPLOY_WORKERS: \"2\", MLDEPLOY_BATCHING: \"off\"}\n"
                "      secrets: {MLDEPLOY_API_KEYS: \"api-keys:3\", HF_TOKEN: projects/acme-ml/secrets/hf}\n")
    (project[0] / "mldeploy.yaml").write_text(CONFIG.replace("      max_instances: 5\n", settings))
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    assert "api-keys" not in r.out  # a plan names revisions, never values
    (revision,) = gcp.revisions.values()
    assert revision["containers"][0]["env"] == [
        {"name": "MLDEPLOY_BATCHING", "value": "off"}, {"name": "MLDEPLOY_WORKERS", "value": "2"},
        {"name": "HF_TOKEN", "valueSource": {"secretKeyRef": {"secret": "projects/acme-ml/secrets/hf",
                                                             "version": "latest"}}},
        {"name": "MLDEPLOY_API_KEYS", "valueSource": {"secretKeyRef": {"secret": "api-keys", "version": "3"}}}]

    gcp.requests.clear()
    assert "up to date" in deploy(mldeploy, project, A, "--stage", "production").out and gcp.mutating() == []
    (project[0] / "mldeploy.yaml").write_text(CONFIG.replace("      max_instances: 5\n", settings.replace('"2"', '"4"')))
    r = deploy(mldeploy, project, A, "--stage", "production")
    assert r.code == 0 and "create cloud run revision" in r.out, r.out
    assert len(gcp.revisions) == 2 and gcp.serving(ENDPOINT) == {"production": (A, 100)}


@pytest.mark.parametrize("settings, message", [
    ("environment: {PORT: \"9000\"}", "PORT is set by Cloud Run itself"),
    ("environment: {\"2X\": a}", "'2X' is not an environment variable name"),
    ("environment: {A: b}\n      secrets: {A: s}", "A set in both environment and secrets"),
])
def test_bad_environment_is_one_line_exit_2(mldeploy, project, gcp, settings, message):
    (project[0] / "mldeploy.yaml").write_text(CONFIG.replace("      max_instances: 5\n",
                                                             f"      max_instances: 5\n      {settings}\n"))
    r = deploy(mldeploy, project, A)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert gcp.mutating() == []


def test_plan_calls_nothing_that_mutates(mldeploy, project, gcp, tmp_path):
    assert deploy(mldeploy, project, A).code == 0
    gcp.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10", "--plan", "--plan-out", tmp_path / "plan.json")
    assert r.code == 0, r.err
    assert gcp.requests and gcp.mutating() == [] and not [p for _, p in gcp.requests if p.startswith("/run/")]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["target"] == "cloudrun" and plan["slot"] == "canary"
    assert plan["traffic_before"] == {"production": 100} and plan["traffic_after"] == {"production": 90, "canary": 10}
    created = next(c for c in plan["changes"] if c["resource"].startswith("cloud run revision"))
    assert created["field"] == "canary image" and created["new"] == B
    assert gcp.serving(ENDPOINT) == {"production": (A, 100)}


def test_two_pr_canaries_side_by_side(mldeploy, project, gcp):
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--pr", "12", "--traffic", "10").code == 0
    assert deploy(mldeploy, project, C, "--pr", "13", "--traffic", "20").code == 0
    assert gcp.serving(ENDPOINT) == {"production": (A, 70), "canary-pr12": (B, 10), "canary-pr13": (C, 20)}
    assert gcp.smokes[-1][0] == f"/run/{ENDPOINT}/tag/canary-pr13/predict"
    # PR 12 pushes again: only its own slot changes
    assert deploy(mldeploy, project, C, "--pr", "12", "--traffic", "10").code == 0
    assert gcp.serving(ENDPOINT) == {"production": (A, 70), "canary-pr12": (C, 10), "canary-pr13": (C, 20)}
    r = mldeploy("promote", cwd=project[0])  # two canaries: which one?
    assert r.code == 2 and "has 2 canaries" in r.err and "--pr N" in r.err
    r = mldeploy("rollback", "--pr", "13", cwd=project[0])
    assert r.code == 0, r.err
    assert gcp.serving(ENDPOINT) == {"production": (A, 90), "canary-pr12": (C, 10)}
    r = mldeploy("status", cwd=project[0])
    assert "canary-pr12  10%  healthy" in r.out
    r = mldeploy("promote", cwd=project[0])  # the only canary left
    assert r.code == 0 and gcp.serving(ENDPOINT) == {"production": (C, 100)}


def test_a_revision_that_cannot_start_fails_its_operation_and_production_keeps_serving(mldeploy, project, gcp):
    assert deploy(mldeploy, project, A).code == 0
    gcp.failing_images.add(B)
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 1, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert "update classifier failed (FAILED_PRECONDITION): Revision 'classifier-canary-bbbbbbbbbb-" in r.err
    assert "is not ready and cannot serve traffic" in r.err
    assert "rolled back: the service serves as before (production 100%)" in r.err
    assert gcp.serving(ENDPOINT) == {"production": (A, 100)}
    assert [t.get("tag", "") for t in gcp.services[SERVICE]["traffic"]] == [""]  # the asked-for split too
    assert gcp.services[SERVICE]["terminalCondition"]["state"] == "CONDITION_SUCCEEDED"


def test_a_failed_first_deploy_deletes_the_new_service(mldeploy, project, gcp):
    gcp.failing_images.add(A)
    r = deploy(mldeploy, project, A)
    assert r.code == 1 and "create classifier failed" in r.err and "the new service was deleted" in r.err, r.err
    assert gcp.services == {}


def test_a_failed_smoke_request_restores_the_previous_traffic(mldeploy, project, gcp):
    assert deploy(mldeploy, project, A).code == 0
    gcp.failing_smoke.add(B)
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 1
    assert "the smoke request to canary" in r.err and "answered 500" in r.err and "rolled back" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1
    assert gcp.serving(ENDPOINT) == {"production": (A, 100)}
    # a production deploy that fails its smoke request puts the old revision back too
    r = deploy(mldeploy, project, B, "--stage", "production")
    assert r.code == 1 and "the smoke request to production" in r.err, r.err
    assert gcp.serving(ENDPOINT) == {"production": (A, 100)}


def test_a_canary_that_breaks_while_it_bakes_is_rolled_back(mldeploy, project, gcp, monkeypatch):
    monkeypatch.setenv("MLDEPLOY_DEPLOY__GCP__BAKE_SECONDS", "2")
    assert deploy(mldeploy, project, A).code == 0

    def breaks():  # the canary answers its first request, then starts failing
        for _ in range(500):
            if any("/tag/canary/" in p for p, _ in gcp.smokes):
                gcp.failing_smoke.add(B)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=breaks)
    thread.start()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    thread.join()
    assert r.code == 1 and "baking canary for 2 s" in r.out, (r.out, r.err)
    assert "the smoke request to canary" in r.err and "rolled back" in r.err
    assert gcp.serving(ENDPOINT) == {"production": (A, 100)}


def test_long_running_operations_are_polled_with_progress(mldeploy, project, gcp):
    gcp.slow_polls = 2
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    assert "create classifier: running (" in r.out
    polls = [p for m, p in gcp.requests if m == "GET" and "/operations/" in p]
    assert len(polls) >= 2 and polls[0].startswith(f"/v2/projects/{PROJECT}/locations/{REGION}/operations/")
    assert gcp.serving(ENDPOINT) == {"production": (A, 100)}


def test_another_deploy_in_between_is_refused_not_overwritten(project, gcp):
    """Plans carry the service's etag: a change made since the plan fails the update (exit 1)."""
    from mldeploy.config import DeploySection
    from mldeploy.deploy import Desired
    from mldeploy.deploy.cloudrun import CloudRunTarget
    from mldeploy.errors import CheckFailed

    cfg = DeploySection(cloud="gcp", target="cloudrun", region=REGION, gcp={"project": PROJECT})
    target = CloudRunTarget(ENDPOINT, cfg)
    target.apply(target.plan(Desired(ENDPOINT, A, "production", 0, {})))
    mine = target.plan(Desired(ENDPOINT, B, "canary", 10, {}, pr=1))
    target.apply(target.plan(Desired(ENDPOINT, C, "canary", 10, {}, pr=2)))
    with pytest.raises(CheckFailed) as failed:
        target.apply(mine)
    assert "another deploy changed the service" in failed.value.describe()
    assert gcp.serving(ENDPOINT) == {"production": (A, 90), "canary-pr2": (C, 10)}


def test_the_service_stays_private_unless_configured_public(mldeploy, project, gcp):
    assert deploy(mldeploy, project, A).code == 0
    assert not gcp.public(ENDPOINT)
    assert not [p for _, p in gcp.mutating() if p.endswith(":setIamPolicy")]  # new services are private already

    # someone made it public by hand: the next deploy takes it back
    gcp.policies[SERVICE] = {"version": 1, "etag": "aGFuZA==", "bindings": [
        {"role": "roles/run.invoker", "members": ["allUsers", "serviceAccount:caller@acme-ml.iam.gserviceaccount.com"]}]}
    r = deploy(mldeploy, project, B, "--stage", "canary")
    assert r.code == 0 and "iam roles/run.invoker: allUsers (public) -> private" in r.out, r.out
    assert not gcp.public(ENDPOINT)
    assert gcp.policies[SERVICE]["bindings"] == [
        {"role": "roles/run.invoker", "members": ["serviceAccount:caller@acme-ml.iam.gserviceaccount.com"]}]

    (project[0] / "mldeploy.yaml").write_text(CONFIG + "      allow_unauthenticated: true\n")
    r = deploy(mldeploy, project, B, "--stage", "canary", "--plan")
    assert r.code == 0 and "allUsers (public: anyone on the internet may call it)" in r.out
    assert not gcp.public(ENDPOINT)
    r = mldeploy("promote", cwd=project[0])
    assert r.code == 0 and gcp.public(ENDPOINT), r.err


def test_a_refused_permission_is_one_line_exit_2_and_changes_nothing(mldeploy, project, gcp):
    assert deploy(mldeploy, project, A).code == 0
    (project[0] / "mldeploy.yaml").write_text(CONFIG + "      allow_unauthenticated: true\n")
    gcp.denied.add(":setIamPolicy")  # roles/run.developer may not change IAM policies
    gcp.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "production")
    assert r.code == 2 and "refused to set the IAM policy of classifier (PERMISSION_DENIED)" in r.err, r.err
    assert "roles/run.admin" in r.err and len(r.err.strip().splitlines()) == 1
    assert [m for m, p in gcp.mutating() if not p.endswith(":setIamPolicy")] == []
    assert gcp.serving(ENDPOINT) == {"production": (A, 100)} and not gcp.public(ENDPOINT)

    gcp.denied.add(f"GET /v2/{SERVICE}")
    r = mldeploy("status", cwd=project[0])
    assert r.code == 2 and "refused to read the Cloud Run service classifier (PERMISSION_DENIED)" in r.err, r.err


@pytest.mark.parametrize("case, args, edit, message", [
    ("traffic over 100", ["--traffic", "150"], None, "--traffic 150 is not a percentage"),
    ("no project", [], ("    project: acme-ml\n", ""), "no GCP project is set"),
    ("no region", [], ("  region: europe-west1\n", ""), "no GCP region is set"),
    ("bad region", ["--region", "Europe/Paris"], None, "is not a GCP region"),
    ("bad memory", [], ("memory: 4Gi", "memory: 4GB"), "memory"),
    ("image by tag", ["--image", f"{REPO}:latest"], None, "no image digest to deploy"),
    ("canaries over 100", ["--traffic", "95", "--pr", "7"], None, "the canaries would take 105% of traffic"),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(mldeploy, project, gcp, case, args, edit, message):
    folder, bundle = project
    if case == "canaries over 100":
        assert deploy(mldeploy, project, A).code == 0
        assert deploy(mldeploy, project, B, "--traffic", "10", "--pr", "6").code == 0
    if edit:
        (folder / "mldeploy.yaml").write_text(CONFIG.replace(*edit))
    gcp.requests.clear()
    r = mldeploy("deploy", "--bundle", bundle, *(args if "--image" in args else ["--image", C, *args]), cwd=folder)
    assert r.code == 2, (case, r.out, r.err)
    assert message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert gcp.mutating() == []


def test_promote_or_rollback_without_a_canary_is_exit_2(mldeploy, project, gcp):
    for verb in ("promote", "rollback", "status"):  # no service yet
        r = mldeploy(verb, cwd=project[0])
        assert (r.code, verb) == ((0, "status") if verb == "status" else (2, verb)), r.err
        assert verb == "status" or "does not exist" in r.err
    assert deploy(mldeploy, project, A).code == 0
    for verb in ("promote", "rollback"):
        r = mldeploy(verb, cwd=project[0])
        assert r.code == 2 and f"{ENDPOINT} has no canary to" in r.err, r.err
    r = mldeploy("rollback", "--pr", "9", cwd=project[0])
    assert r.code == 2 and "has no canary for PR 9" in r.err
    assert gcp.serving(ENDPOINT) == {"production": (A, 100)} and gcp.mutating()[1:] == []


def test_names_cloud_run_accepts(gcp):
    from mldeploy.deploy.cloudrun import service_name
    from mldeploy.deploy.gcp import label_value as label

    assert service_name("My_Model.v2") == "my-model-v2"
    assert service_name("2fast") == "m-2fast"
    long = service_name("a-very-long-model-name-that-goes-on-and-on-and-on-forever")
    assert len(long) <= 49 and long.startswith("a-very-long") and long != service_name(long + "x")
    assert label("Acme/Models") == "acme-models"


def test_doctor_names_the_identity_and_probes_cloud_run(mldeploy, project, gcp):
    r = mldeploy("doctor", cwd=project[0])
    assert r.code == 0, r.out
    assert f"identity: anonymous (MLDEPLOY_GCP_API_ENDPOINT is plain http), project {PROJECT}" in r.out
    assert "ok    run.services.list: allowed" in r.out
    assert ("GET", f"/v2/projects/{PROJECT}/locations/{REGION}/services") in gcp.requests


def test_storage_mode_names_the_artifact_in_the_revision_and_a_model_only_change_is_a_new_revision(project, gcp,
                                                                                                    tmp_path):
    """image.model: storage: the revision's container gets MLDEPLOY_MODEL_URI + MLDEPLOY_MODEL_SHA256 (the
    server downloads it with the service account); the same image with another artifact is a new revision."""
    from mldeploy.deploy.base import model_from_env
    from tests.helpers.storage_mode import deploys_a_model_only_change, two_models

    folder, bundle = project
    models = two_models(bundle, tmp_path, "gs://acme-models/models", publish=False)  # the server reads it, not us

    def served():
        service = gcp.services[next(iter(gcp.services))]
        found = {}
        for target in service["traffic"]:
            revision = gcp.revisions[f"{next(iter(gcp.services))}/revisions/{target['revision']}"]
            found[target.get("tag") or "production"] = model_from_env(
                {e["name"]: e["value"] for e in revision["containers"][0]["env"]})
        return found

    deploys_a_model_only_change(folder, A, models, served)
    assert len(gcp.revisions) == 2
