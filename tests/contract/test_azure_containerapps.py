"""`mldeploy deploy|promote|rollback|status --cloud azure --target containerapps`: the real
azure-mgmt-appcontainers client and the real workload-identity credential (azure-identity, a fake
Entra ID over TLS) against a stateful fake of ARM's container apps and revisions over HTTP
(tests/helpers/fakes/containerapps.py), which also answers the apps' label URLs."""

from __future__ import annotations

import pytest

from tests.helpers.azure_containerapps import APP, CONFIG, IDENTITY, A, B, C
from tests.helpers.cli import deploy, one_line
from tests.helpers.need import need

need("azure.mgmt.appcontainers", "the azure extra installs azure-mgmt-appcontainers")
need("azure.identity", "the azure extra installs it")


@pytest.fixture
def project(tmp_path, bundle, containerapps):
    (tmp_path / "mldeploy.yaml").write_text(CONFIG)
    return tmp_path, bundle


def revisions(fake) -> dict[str, bool]:
    """revision -> active"""
    return {name: rev["properties"]["active"] for name, rev in fake.revisions.get(APP, {}).items()}


def test_first_deploy_canary_two_prs_promote_rollback(mldeploy, project, containerapps):
    fake = containerapps
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    assert fake.serving(APP) == {"production": (A, 100)}
    assert "create container app classifier" in r.out and "production 100%  healthy" in r.out
    app = fake.apps[APP]
    assert app["properties"]["configuration"]["activeRevisionsMode"] == "Multiple"
    assert app["identity"]["userAssignedIdentities"] == {IDENTITY: {}}
    assert app["properties"]["configuration"]["registries"] == [{"server": "acme.azurecr.io", "identity": IDENTITY}]
    (first,) = revisions(fake)
    assert first.startswith(f"{APP}--production-aaaaaaaa-")
    assert fake.smokes[-1][:2] == ("production", first)

    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    assert fake.serving(APP) == {"production": (A, 90), "canary": (B, 10)}
    # checked at 0% under its staging label's own URL before any traffic moved
    label, canary, _ = fake.smokes[-1]
    assert label == "next-canary" and canary.startswith(f"{APP}--canary-bbbbbbbb-")
    assert "Creating revision" in r.out and "canary 10%" in r.out

    fake.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "up to date, nothing to change" in r.out, r.out
    assert fake.requests and fake.mutating() == []  # a re-run reads and changes nothing

    for pr, image in ((7, C), (8, A)):
        r = deploy(mldeploy, project, image, "--stage", "canary", "--traffic", "5", "--pr", str(pr))
        assert r.code == 0, r.err
    assert fake.serving(APP) == {"production": (A, 80), "canary": (B, 10), "canary-pr7": (C, 5),
                                 "canary-pr8": (A, 5)}

    r = mldeploy("rollback", "--pr", "7", cwd=project[0])
    assert r.code == 0, r.err
    assert fake.serving(APP) == {"production": (A, 85), "canary": (B, 10), "canary-pr8": (A, 5)}
    assert [n for n, active in revisions(fake).items() if not active] == [
        n for n in revisions(fake) if "--canary-pr7-" in n]  # the PR's slot is torn down: deactivated

    r = mldeploy("promote", "--pr", "8", cwd=project[0])
    assert r.code == 0, r.err
    assert fake.serving(APP) == {"production": (A, 100)}
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    r = mldeploy("promote", cwd=project[0])
    assert r.code == 0, r.err
    assert fake.serving(APP) == {"production": (B, 100)}
    assert [n for n, active in revisions(fake).items() if active] == [canary]  # the canary's revision itself

    assert deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "30").code == 0
    r = mldeploy("rollback", cwd=project[0])
    assert r.code == 0, r.err
    assert fake.serving(APP) == {"production": (B, 100)}
    r = mldeploy("status", cwd=project[0])
    assert r.code == 0 and f"production 100%  healthy  {B}" in r.out and "canary" not in r.out, r.out


def test_a_failing_revision_is_deactivated_and_production_keeps_serving(mldeploy, project, containerapps):
    fake = containerapps
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
    fake.failing_images.add(C)
    r = deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "20")
    assert r.code == 1 and one_line(r), r.err
    assert "failed to start" in r.err and "rolled back: the app serves as before (production 90%, canary 10%)" in r.err
    assert fake.serving(APP) == {"production": (A, 90), "canary": (B, 10)}
    failed = next(n for n in revisions(fake) if "-cccccccc-" in n)
    assert revisions(fake)[failed] is False

    fake.failing_smoke.add(A)  # a smoke request that fails: nothing moves either
    fake.failing_images.clear()
    r = deploy(mldeploy, project, A, "--stage", "canary", "--traffic", "20")
    assert r.code == 1 and "smoke request to next-canary" in r.err and "answered 500" in r.err, r.err
    assert fake.serving(APP) == {"production": (A, 90), "canary": (B, 10)}


def test_plan_changes_nothing(mldeploy, project, containerapps):
    fake = containerapps
    assert deploy(mldeploy, project, A).code == 0
    fake.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10", "--plan")
    assert r.code == 0, r.err
    assert "create container app revision classifier--canary-bbbbbbbb-" in r.out and "production 90%" in r.out
    assert fake.requests and fake.mutating() == [] and fake.serving(APP) == {"production": (A, 100)}


def test_the_revision_runs_the_configured_container(mldeploy, project, containerapps):
    fake = containerapps
    vault = "https://acme-kv.vault.azure.net/secrets/api-keys"
    settings = ("      cpu: 2\n      memory: 4Gi\n      min_replicas: 1\n      max_replicas: 5\n      concurrency: 8\n"
                "      environment: {MLDEPLOY_WORKERS: \"2\"}\n"
                f"      secrets: {{MLDEPLOY_API_KEYS: {vault}}}\n")
    (project[0] / "mldeploy.yaml").write_text(CONFIG + settings)
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    assert "acme-kv" not in r.out  # a plan names revisions, never secrets
    app = fake.apps[APP]
    (revision,) = fake.revisions[APP].values()
    template = revision["properties"]["template"]
    (container,) = template["containers"]
    assert container["image"] == A and container["resources"] == {"cpu": 2.0, "memory": "4Gi"}
    assert container["env"] == [{"name": "MLDEPLOY_WORKERS", "value": "2"},
                                {"name": "MLDEPLOY_API_KEYS", "secretRef": "mldeploy-api-keys"}]
    assert template["scale"] == {"minReplicas": 1, "maxReplicas": 5, "rules": [
        {"name": "http-concurrency", "http": {"metadata": {"concurrentRequests": "8"}}}]}
    config = app["properties"]["configuration"]
    assert config["secrets"] == [{"name": "mldeploy-api-keys", "keyVaultUrl": vault, "identity": IDENTITY}]
    assert [(r["ipAddressRange"], r["action"]) for r in config["ingress"]["ipSecurityRestrictions"]] == [
        ("127.0.0.1/32", "Allow"), ("10.0.0.0/8", "Allow")]
    assert config["ingress"]["targetPort"] == 8080 and config["ingress"]["allowInsecure"] is False

    # other settings are another revision, even for the same image in the same slot
    (project[0] / "mldeploy.yaml").write_text(CONFIG + settings.replace("4Gi", "8Gi"))
    r = deploy(mldeploy, project, A, "--stage", "production")
    assert r.code == 0 and "create container app revision" in r.out, r.out
    assert len(fake.revisions[APP]) == 2 and fake.serving(APP) == {"production": (A, 100)}
    assert [n for n, active in revisions(fake).items() if active] == [
        fake.apps[APP]["properties"]["configuration"]["ingress"]["traffic"][0]["revisionName"]]


def test_bad_input_is_one_line_and_production_keeps_serving(mldeploy, project, containerapps):
    fake = containerapps
    folder = project[0]
    (folder / "mldeploy.yaml").write_text(CONFIG.replace("managed_environment: ml-env", "managed_environment: nope"))
    r = deploy(mldeploy, project, A)
    assert r.code == 2 and one_line(r) and "the Container Apps environment nope does not exist" in r.err, r.err
    assert "az containerapp env create" in r.err and fake.mutating() == [] and APP not in fake.apps

    (folder / "mldeploy.yaml").write_text(CONFIG.replace("      allowed_ips: [127.0.0.1/32, 10.0.0.0/8]\n", ""))
    r = deploy(mldeploy, project, A)
    assert r.code == 2 and one_line(r) and "would answer anyone" in r.err and "allow_anonymous" in r.err, r.err
    assert fake.mutating() == []

    (folder / "mldeploy.yaml").write_text(CONFIG)
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "60", "--pr", "1").code == 0
    fake.requests.clear()
    r = deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "50", "--pr", "2")
    assert r.code == 2 and one_line(r) and "the canaries would take 110% of traffic" in r.err, r.err

    fake.pull_denied.add("acme.azurecr.io")   # the app's identity may not pull from the registry
    r = deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "10", "--pr", "2")
    assert r.code == 1 and one_line(r) and "ImagePullFailure" in r.err and "may not pull" in r.err, r.err
    assert fake.serving(APP) == {"production": (A, 40), "canary-pr1": (B, 60)}
    fake.pull_denied.clear()

    fake.hold(APP)   # someone else's operation on the app is still running
    fake.requests.clear()
    r = deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "10", "--pr", "2")
    assert r.code == 1 and one_line(r) and "HTTP 409" in r.err and "nothing changed" in r.err, r.err
    assert "rolled back" not in r.err and [m for m, _, _ in fake.mutating()] == ["PATCH"]
    fake.release(APP)

    traffic = fake.apps[APP]["properties"]["configuration"]["ingress"]["traffic"]
    traffic[1].pop("label")   # someone moved a label by hand: a share under no slot
    r = deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "10", "--pr", "2")
    assert r.code == 2 and one_line(r) and "split in a way mldeploy did not make" in r.err, r.err
    traffic[1]["label"] = "canary-pr1"

    fake.apps[APP]["properties"]["configuration"]["activeRevisionsMode"] = "Single"
    r = deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "10", "--pr", "2")
    assert r.code == 2 and one_line(r) and "single-revision mode" in r.err, r.err
    assert "az containerapp revision set-mode --name classifier --resource-group ml-rg --mode multiple" in r.err
    assert fake.serving(APP) == {"production": (A, 40), "canary-pr1": (B, 60)}


def test_built_in_authentication_gets_a_token_for_the_smoke_request(mldeploy, project, containerapps):
    fake = containerapps
    assert deploy(mldeploy, project, A).code == 0
    (project[0] / "mldeploy.yaml").write_text(CONFIG.replace("      allowed_ips: [127.0.0.1/32, 10.0.0.0/8]\n", ""))
    fake.auth[APP] = {"platform": {"enabled": True}, "globalValidation": {"unauthenticatedClientAction": "Return401"},
                      "identityProviders": {"azureActiveDirectory": {"registration": {
                          "clientId": "22222222-3333-4444-5555-666666666666"}}}}
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err   # the smoke request carried the deploy identity's token (else 401)
    assert fake.serving(APP) == {"production": (A, 90), "canary": (B, 10)}
    assert fake.apps[APP]["properties"]["configuration"]["ingress"]["ipSecurityRestrictions"] == []


def test_canary_analysis_reads_requests_and_response_time_by_revision(mldeploy, project, containerapps):
    import json

    fake = containerapps
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "20").code == 0
    slots = {label: t["revisionName"] for t in fake.apps[APP]["properties"]["configuration"]["ingress"]["traffic"]
             for label in [t["label"]]}

    def seed(revision: str, per_minute: int, errors: int, ms: float) -> None:
        for category, count in (("2xx", per_minute), ("5xx", errors), ("4xx", 2)):   # a 4xx is no error
            fake.add_metric(APP, "Requests", {"revisionName": revision, "statusCodeCategory": category}, [count] * 10)
        fake.add_metric(APP, "ResponseTime", {"revisionName": revision}, [ms] * 10)

    def analyze():
        out = project[0] / "decision.json"
        r = mldeploy("canary", "analyze", "--window", "600", "--json", out, cwd=project[0])
        return r, json.loads(out.read_text())

    seed(slots["production"], 90, 0, 20.0)
    seed(slots["canary"], 30, 0, 21.0)
    r, found = analyze()
    assert r.code == 0 and found["decision"] == "promote", (r.err, found)
    assert (found["slots"]["production"]["requests"], found["slots"]["canary"]["requests"]) == (920, 320)
    assert found["slots"]["canary"]["p99_ms"] == pytest.approx(21.0)
    counts, latency = fake.metric_queries
    which = f"revisionName eq '{slots['production']}' or revisionName eq '{slots['canary']}'"
    assert counts["$filter"] == f"{which} and statusCodeCategory eq '*'" and counts["metricnames"] == "Requests"
    assert latency["metricnames"] == "ResponseTime" and latency["metricnamespace"] == "Microsoft.App/containerApps"

    fake.metric_points.clear()
    seed(slots["production"], 90, 0, 20.0)
    seed(slots["canary"], 30, 3, 21.0)
    r, found = analyze()
    assert r.code == 1 and found["decision"] == "rollback", found


def test_monitor_setup_makes_metric_alerts_then_changes_nothing(mldeploy, project, containerapps):
    fake = containerapps
    alerts = "monitoring:\n  alerts:\n    latency_p99_ms: 250\n    errors_5xx: 3\n    emails: [ml@acme.example]\n"
    (project[0] / "mldeploy.yaml").write_text(CONFIG + alerts)
    assert deploy(mldeploy, project, A).code == 0
    fake.requests.clear()
    r = mldeploy("monitor", "setup", cwd=project[0])
    assert r.code == 0, r.err
    assert set(fake.metric_alerts) == {"mldeploy-classifier-5xx", "mldeploy-classifier-response-time"}
    five = fake.metric_alerts["mldeploy-classifier-5xx"]["properties"]
    (criterion,) = five["criteria"]["allOf"]
    assert (criterion["metricName"], criterion["metricNamespace"], criterion["threshold"]) == (
        "Requests", "Microsoft.App/containerApps", 3.0)
    assert criterion["dimensions"] == [{"name": "statusCodeCategory", "operator": "Include", "values": ["5xx"]}]
    assert five["scopes"] == [fake.apps[APP]["id"]]
    assert five["actions"][0]["actionGroupId"].endswith("/actionGroups/mldeploy-classifier-alerts")
    fake.requests.clear()
    r = mldeploy("monitor", "setup", cwd=project[0])
    assert r.code == 0 and fake.mutating() == [], r.out


def test_doctor_names_the_identity_the_environment_and_the_roles(mldeploy, project, containerapps):
    r = mldeploy("doctor", cwd=project[0])
    assert r.code == 0 and "appid 11111111-2222-3333-4444-555555555555" in r.out, r.out
    assert "ml-env in westeurope is readable" in r.out and "Container Apps Contributor" in r.out and "AcrPull" in r.out
    assert "SECRET" not in r.out + r.err
    (project[0] / "mldeploy.yaml").write_text(CONFIG.replace("managed_environment: ml-env", "managed_environment: x"))
    r = mldeploy("doctor", cwd=project[0])
    assert r.code != 0 and "the Container Apps environment x does not exist" in r.out, r.out


def test_a_canary_bakes_at_its_label_and_a_failure_while_baking_restores(mldeploy, project, containerapps):
    fake = containerapps
    (project[0] / "mldeploy.yaml").write_text(CONFIG.replace("    containerapps:\n", "    bake_seconds: 1\n    containerapps:\n"))
    assert deploy(mldeploy, project, A).code == 0
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "baking canary for 1 s" in r.out, r.out
    assert [label for label, _, _ in fake.smokes].count("canary") >= 2   # at its own label, taking its 10%

    fake.failing_labels.add("canary")   # C answers at its staging label, then fails once it takes traffic
    r = deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "10")
    assert r.code == 1 and one_line(r) and "smoke request to canary" in r.err and "rolled back" in r.err, r.err
    assert fake.serving(APP) == {"production": (A, 90), "canary": (B, 10)}
    assert not revisions(fake)[next(n for n in revisions(fake) if "-cccccccc-" in n)]


def test_storage_mode_a_canary_of_a_model_then_another_model_then_promote(mldeploy, project, containerapps, tmp_path):
    """image.model: storage: a revision's container gets MLDEPLOY_MODEL_URI + MLDEPLOY_MODEL_SHA256 (the
    server downloads it with the app's identity); a model-only change of the canary is a new revision, and
    a promote of the same image as production's moves the canary's model (its revision) to production."""
    from mldeploy.deploy.base import model_from_env
    from tests.helpers.storage_mode import deploys_a_model_only_change, two_models

    fake, (folder, bundle) = containerapps, project
    models = two_models(bundle, tmp_path, "https://acmemodels.blob.core.windows.net/models", publish=False)

    def served():
        found = {}
        for t in fake.apps[APP]["properties"]["configuration"]["ingress"]["traffic"]:
            if t.get("label") and t.get("weight"):
                env = fake.revisions[APP][t["revisionName"]]["properties"]["template"]["containers"][0]["env"]
                found[t["label"]] = model_from_env({e["name"]: e["value"] for e in env if "value" in e})
        return found

    assert deploy(mldeploy, project, A, "--stage", "production").code == 0   # baked
    deploys_a_model_only_change(folder, A, models, served, stage="canary", traffic=10)
    assert served() == {"production": None, "canary": models[1]}
    # the server's credential picks the app's user-assigned identity by its client id, read from the identity
    assert env_of(fake, "canary")["AZURE_CLIENT_ID"] == fake.client_id(IDENTITY)
    assert "AZURE_CLIENT_ID" not in env_of(fake, "production")   # baked: nothing to download
    r = mldeploy("promote", cwd=folder)
    assert r.code == 0, r.err
    assert served() == {"production": models[1]} and fake.serving(APP) == {"production": (A, 100)}


def env_of(fake, label: str) -> dict[str, str]:
    """The environment of the revision a label names."""
    name = next(t["revisionName"] for t in fake.apps[APP]["properties"]["configuration"]["ingress"]["traffic"]
                if t.get("label") == label)
    env = fake.revisions[APP][name]["properties"]["template"]["containers"][0]["env"]
    return {e["name"]: e["value"] for e in env if "value" in e}


def test_storage_mode_with_a_missing_identity_is_refused_before_any_change(mldeploy, project, containerapps, tmp_path):
    from mldeploy.deploy import Desired
    from mldeploy.errors import UsageError
    from tests.helpers.storage_mode import target_of, two_models

    fake, (folder, bundle) = containerapps, project
    assert deploy(mldeploy, project, A, "--stage", "production").code == 0
    models = two_models(bundle, tmp_path, "https://acmemodels.blob.core.windows.net/models", publish=False)
    fake.absent_identities.add(IDENTITY.rsplit("/", 1)[-1])
    fake.requests.clear()
    target = target_of(folder)
    with pytest.raises(UsageError, match=f"there is no user-assigned managed identity {IDENTITY}"):
        target.plan(Desired(target.endpoint, A, "canary", 10, {}, model=models[0]))
    assert fake.mutating() == [] and fake.serving(APP) == {"production": (A, 100)}
