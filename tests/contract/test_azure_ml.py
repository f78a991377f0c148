"""`mldeploy deploy|promote|rollback|status|doctor --cloud azure --target azureml` over HTTP.

The real azure-ai-ml client talks to a small stateful fake of ARM (tests/helpers/fakes/azureml.py),
reached through the product's one seam, MLDEPLOY_AZURE_ARM_ENDPOINT. The credential is the real
DefaultAzureCredential: azure-identity's WorkloadIdentityCredential, from the environment azure/login
leaves (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE), exchanges the federated token at
a local TLS fake of Entra ID (AZURE_AUTHORITY_HOST, a throwaway CA: tests/helpers/identity.py and tls.py), and
the fake ARM accepts only the token it issued.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from tests.helpers.azure_ml import CLIENT_ID, ENDPOINT, RG, SUB, WS, A, B, C, name, serving
from tests.helpers.cli import deploy
from tests.helpers.identity import FEDERATED_TOKEN, TENANT
from tests.helpers.need import need

need("azure.ai.ml", "the azure extra installs azure-ai-ml")
need("azure.identity", "the azure extra installs azure-identity")


@pytest.fixture
def project(tmp_path, bundle, azure):
    (tmp_path / "mldeploy.yaml").write_text(f"""
deploy:
  cloud: azure
  target: azureml
  endpoint: {ENDPOINT}
  azure:
    subscription_id: "{SUB}"
    resource_group: {RG}
    workspace: {WS}
    azureml:
      instance_type: Standard_DS3_v2
      instance_count: 2
""")
    return tmp_path, bundle


def test_first_deploy_canary_promote_rollback(mldeploy, project, azure):
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    assert serving(azure) == {name("production", A): (A, 100)}
    assert "create azureml endpoint classifier auth = key" in r.out
    assert f"create azureml deployment {name('production', A)} image = {A}" in r.out
    assert "production 100%  healthy" in r.out
    assert f"url: https://{ENDPOINT}.eastus.inference.ml.azure.com/score" in r.out
    # what went over the wire: the environment (our image, our routes), the deployment, then the traffic
    env = next(b for m, p, b in azure.bodies if m == "PUT" and "/environments/" in p)
    assert env["properties"]["image"] == A
    assert env["properties"]["inferenceConfig"] == {"livenessRoute": {"path": "/", "port": 8080},
                                                    "readinessRoute": {"path": "/v2/health/ready", "port": 8080},
                                                    "scoringRoute": {"path": "/score", "port": 8080}}
    dep = next(b for m, p, b in azure.bodies if m == "PUT" and "/deployments/" in p)
    assert dep["sku"]["capacity"] == 2 and dep["properties"]["instanceType"] == "Standard_DS3_v2"
    assert dep["tags"]["mldeploy:slot"] == "production"
    writes = [(m, p.rsplit("/", 2)[-2]) for m, _, p in azure.mutating()]
    assert writes == [("PUT", "onlineEndpoints"), ("PUT", "versions"), ("PUT", "deployments"),
                      ("PUT", "onlineEndpoints")]
    # the smoke request went to the new deployment alone, with the endpoint's key
    assert azure.scored[-1][:2] == (ENDPOINT, name("production", A))
    assert azure.scored[-1][2] == {"inputs": {"x": [[0, 0, 0, 0]]}}

    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    assert serving(azure) == {name("production", A): (A, 90), name("canary", B): (B, 10)}
    assert "traffic: production 100% -> production 90%, canary 10%" in r.out
    assert azure.scored[-1][1] == name("canary", B)

    azure.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "up to date, nothing to change" in r.out
    assert azure.mutating() == []  # a re-run changes nothing

    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "25")
    assert r.code == 0, r.err
    assert serving(azure) == {name("production", A): (A, 75), name("canary", B): (B, 25)}
    assert not [w for w in azure.mutating() if "/deployments/" in w[2]]  # a share alone: no deployment

    r = mldeploy("promote", cwd=project[0])
    assert r.code == 0, r.err
    assert serving(azure) == {name("production", B): (B, 100)}  # a fresh production deployment; the rest gone

    assert deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "30").code == 0
    r = mldeploy("rollback", cwd=project[0])
    assert r.code == 0, r.err
    assert serving(azure) == {name("production", B): (B, 100)}
    r = mldeploy("status", cwd=project[0])
    assert r.code == 0, r.err
    assert f"production 100%  healthy  {B}" in r.out and "canary" not in r.out


def autoscale(project, maximum: int) -> None:
    config = project[0] / "mldeploy.yaml"
    text = re.sub(r"\n      autoscale_max: \d+", "", config.read_text())
    config.write_text(text.replace("      instance_count: 2\n", f"      instance_count: 2\n      autoscale_max: {maximum}\n"))


def test_autoscale_max_gives_each_deployment_an_autoscale_setting_that_goes_with_it(mldeploy, project, azure):
    autoscale(project, 4)
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    production = name("production", A)
    assert f"create azure monitor autoscale setting {ENDPOINT}-{production}-autoscale instances = 2-4" in r.out
    (setting,) = azure.autoscale_settings.values()
    props = setting["properties"]
    assert setting["location"] == "eastus" and props["enabled"] is True
    assert props["targetResourceUri"].endswith(f"/onlineEndpoints/{ENDPOINT}/deployments/{production}")
    (profile,) = props["profiles"]
    assert profile["capacity"] == {"minimum": "2", "maximum": "4", "default": "2"}
    rules = {(r["metricTrigger"]["metricName"], r["metricTrigger"]["operator"], r["metricTrigger"]["threshold"],
              r["scaleAction"]["direction"]) for r in profile["rules"]}
    assert rules == {("CpuUtilizationPercentage", "GreaterThan", 70, "Increase"),
                     ("CpuUtilizationPercentage", "LessThan", 25, "Decrease")}
    assert all(r["metricTrigger"]["metricResourceUri"] == props["targetResourceUri"] for r in profile["rules"])

    azure.requests.clear()
    r = deploy(mldeploy, project, A, "--stage", "production")
    assert r.code == 0 and "up to date, nothing to change" in r.out and azure.mutating() == []

    autoscale(project, 6)  # only the autoscale setting changes: no new deployment
    r = deploy(mldeploy, project, A, "--stage", "production")
    assert r.code == 0, r.err
    assert f"update azure monitor autoscale setting {ENDPOINT}-{production}-autoscale instances: 2-4 -> 2-6" in r.out
    assert [p.rsplit("/", 2)[-2] for _, _, p in azure.mutating()] == ["autoscalesettings"]
    assert azure.autoscale_settings[f"{ENDPOINT}-{production}-autoscale"]["properties"]["profiles"][0][
        "capacity"]["maximum"] == "6"

    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
    assert len(azure.autoscale_settings) == 2  # the canary's deployment scales too
    assert mldeploy("promote", cwd=project[0]).code == 0
    # a fresh production deployment of the canary's image; the replaced ones took their settings along
    assert list(azure.autoscale_settings) == [f"{ENDPOINT}-{name('production', B)}-autoscale"]


def test_a_canary_can_mirror_traffic_instead(mldeploy, project, azure, monkeypatch):
    assert deploy(mldeploy, project, A).code == 0
    monkeypatch.setenv("MLDEPLOY_DEPLOY__AZURE__AZUREML__MIRROR", "true")
    r = deploy(mldeploy, project, B, "--traffic", "20")
    assert r.code == 0, r.err
    assert serving(azure) == {name("production", A): (A, 100), name("canary", B): (B, 0),
                              "mirror": {name("canary", B): 20}}
    assert f"update azureml endpoint classifier mirror traffic: {{}} -> {{'{name('canary', B)}': 20}}" in r.out
    r = mldeploy("status", "--config", project[0] / "mldeploy.yaml")
    assert "canary       0%  healthy" in r.out
    r = deploy(mldeploy, project, B, "--traffic", "60")
    assert r.code == 2 and "mirrors at most 50%" in r.err
    assert mldeploy("rollback", cwd=project[0]).code == 0
    assert serving(azure) == {name("production", A): (A, 100)}


def test_two_pr_canaries_side_by_side(mldeploy, project, azure):
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--pr", "12", "--traffic", "10").code == 0
    assert deploy(mldeploy, project, C, "--pr", "13", "--traffic", "20").code == 0
    assert serving(azure) == {name("production", A): (A, 70), name("canary-pr12", B): (B, 10),
                              name("canary-pr13", C): (C, 20)}
    # PR 12 pushes again: its new deployment replaces its old one; PR 13 is untouched
    r = deploy(mldeploy, project, C, "--pr", "12", "--traffic", "10")
    assert r.code == 0, r.err
    assert serving(azure) == {name("production", A): (A, 70), name("canary-pr12", C): (C, 10),
                              name("canary-pr13", C): (C, 20)}
    assert f"delete azureml deployment {name('canary-pr12', B)}" in r.out
    r = deploy(mldeploy, project, C, "--pr", "14", "--traffic", "75")
    assert r.code == 2 and "the canaries would take 105% of traffic" in r.err
    r = mldeploy("promote", cwd=project[0])
    assert r.code == 2 and "2 canaries (canary-pr12, canary-pr13)" in r.err and "--pr N" in r.err
    r = mldeploy("rollback", "--pr", "13", cwd=project[0])
    assert r.code == 0, r.err
    assert serving(azure) == {name("production", A): (A, 90), name("canary-pr12", C): (C, 10)}
    r = mldeploy("promote", "--pr", "12", cwd=project[0])
    assert r.code == 0, r.err
    assert serving(azure) == {name("production", C): (C, 100)}


@pytest.mark.parametrize("failure", ["provisioning", "smoke"])
def test_a_failed_canary_leaves_production_at_100(mldeploy, project, azure, failure):
    assert deploy(mldeploy, project, A).code == 0
    (azure.failing_images if failure == "provisioning" else azure.failing_scores).add(B)
    azure.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 1, r.out + r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    if failure == "provisioning":
        assert "liveness probe failed" in r.err
    else:
        assert f"the smoke request to {name('canary', B)} failed (HTTP 424)" in r.err and "model run failed" in r.err
    assert r.err.rstrip().endswith(f"rolled back: the endpoint serves as before (production 100%); "
                                   f"{name('canary', B)} was deleted")
    assert serving(azure) == {name("production", A): (A, 100)}
    # no traffic ever moved: the endpoint was not written at all
    assert not [w for w in azure.mutating() if w[2].endswith("/onlineEndpoints/" + ENDPOINT)]


def test_a_failed_production_deploy_keeps_the_old_production(mldeploy, project, azure):
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--traffic", "10").code == 0
    azure.failing_scores.add(C)
    r = deploy(mldeploy, project, C, "--stage", "production")
    assert r.code == 1 and "rolled back" in r.err
    assert serving(azure) == {name("production", A): (A, 90), name("canary", B): (B, 10)}


def test_a_failed_traffic_update_is_exit_1_and_restored(mldeploy, project, azure):
    """The long-running PUT of the endpoint's traffic fails in Azure: one line, exit 1, nothing left."""
    assert deploy(mldeploy, project, A).code == 0
    azure.fail_next["endpoint"] = "InternalServerError: the endpoint update failed: capacity"
    r = deploy(mldeploy, project, B, "--traffic", "10")
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1, r.err
    assert "could not set the traffic of classifier" in r.err and "the endpoint update failed" in r.err
    assert "rolled back" in r.err
    assert serving(azure) == {name("production", A): (A, 100)}


def test_a_failed_first_deploy_leaves_no_endpoint(mldeploy, project, azure):
    azure.fail_next["deployment"] = "QuotaExceeded: not enough quota for Standard_DS3_v2 in eastus"
    r = deploy(mldeploy, project, A)
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1, r.err
    assert "QuotaExceeded: not enough quota" in r.err and "rolled back: the new endpoint was deleted" in r.err
    assert ENDPOINT not in azure.endpoints


def test_a_deployment_that_cannot_be_deleted_is_a_warning_and_goes_next_time(mldeploy, project, azure):
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--traffic", "10").code == 0
    azure.fail_next["delete"] = "InternalServerError: the delete timed out"
    r = mldeploy("promote", cwd=project[0])
    assert r.code == 0, r.err
    assert "warning: Azure could not delete the deployment" in r.err and "the next deploy deletes it" in r.err
    assert serving(azure)[name("production", B)] == (B, 100) and len(serving(azure)) == 2   # one leftover, no traffic
    r = mldeploy("status", cwd=project[0])
    assert f"production 100%  healthy  {B}" in r.out and r.out.count("%  healthy") == 1
    r = deploy(mldeploy, project, C, "--traffic", "10")
    assert r.code == 0, r.err
    leftover = next(n for n in (name("production", A), name("canary", B)) if n in r.out)
    assert f"delete azureml deployment {leftover}" in r.out
    assert serving(azure) == {name("production", B): (B, 90), name("canary", C): (C, 10)}


def test_a_long_running_operation_past_wait_seconds_is_a_failed_check():
    from mldeploy.deploy.azure import wait
    from mldeploy.errors import CheckFailed

    class Stuck:  # a poller Azure never finishes
        def done(self):
            return False

        def status(self):
            return "InProgress"

        def wait(self, timeout):
            time.sleep(timeout)

    with pytest.raises(CheckFailed) as caught:
        wait(Stuck(), "deployment canary-bbbbbbbb", 0.2, 0.05)
    assert caught.value.message == "deployment canary-bbbbbbbb was still InProgress after 0.2 s"
    assert "deploy.azure.wait_seconds" in caught.value.hint


def test_plan_calls_nothing_that_mutates(mldeploy, project, azure, tmp_path):
    assert deploy(mldeploy, project, A).code == 0
    azure.requests.clear()
    r = deploy(mldeploy, project, B, "--traffic", "10", "--plan", "--plan-out", tmp_path / "plan.json")
    assert r.code == 0, r.err
    assert azure.requests and azure.mutating() == []
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["traffic_before"] == {"production": 100} and plan["traffic_after"] == {"production": 90, "canary": 10}
    assert {"action": "create", "resource": f"azureml deployment {name('canary', B)}", "field": "image",
            "old": None, "new": B} in plan["changes"]
    assert serving(azure) == {name("production", A): (A, 100)}


def test_status_of_an_endpoint_that_does_not_exist(mldeploy, project):
    r = mldeploy("status", cwd=project[0])
    assert r.code == 0 and f"endpoint: {ENDPOINT}  url: -" in r.out


@pytest.mark.parametrize("case, args, env, message", [
    ("traffic over 100", ["--traffic", "150"], {}, "--traffic 150 is not a percentage"),
    ("no subscription", [], {"subscription_id": None}, "deploy.azure.subscription_id (or AZURE_SUBSCRIPTION_ID) is not set"),
    ("no resource group", [], {"resource_group": None}, "deploy.azure.resource_group (or AZURE_RESOURCE_GROUP)"),
    ("no workspace", [], {"workspace": None, "AZUREML_WORKSPACE_NAME": ""}, "deploy.azure.workspace (or AZUREML_WORKSPACE_NAME)"),
    ("workspace not found", [], {"workspace": "other-ws"}, "other-ws' under resource group 'ml-rg' was not found"),
    ("no credentials", [], {"AZURE_FEDERATED_TOKEN_FILE": None, "AZURE_TOKEN_CREDENTIALS": "WorkloadIdentityCredential"},
     "no Azure credentials"),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(mldeploy, project, azure, monkeypatch, case, args, env, message):
    folder, _bundle = project
    config = folder / "mldeploy.yaml"
    for key, value in env.items():
        if key.isupper():
            monkeypatch.delenv(key, raising=False) if value is None else monkeypatch.setenv(key, value)
        elif value is None:
            config.write_text("\n".join(line for line in config.read_text().splitlines() if f"{key}:" not in line))
        else:
            config.write_text(config.read_text().replace(f"{key}: {WS}", f"{key}: {value}"))
    r = deploy(mldeploy, project, A, *args)
    assert r.code == 2, (case, r.out, r.err)
    assert message in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert "SECRET" not in r.err + r.out and FEDERATED_TOKEN not in r.err + r.out
    assert azure.mutating() == []


def test_the_workspace_can_come_from_the_environment(mldeploy, project, azure, monkeypatch):
    folder, _ = project
    (folder / "mldeploy.yaml").write_text(f"deploy: {{cloud: azure, target: azureml, endpoint: {ENDPOINT}}}\n")
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUB)
    monkeypatch.setenv("AZURE_RESOURCE_GROUP", RG)
    monkeypatch.setenv("AZUREML_WORKSPACE_NAME", WS)
    assert deploy(mldeploy, project, A).code == 0
    assert serving(azure) == {name("production", A): (A, 100)}


def test_promote_or_rollback_without_a_canary_is_exit_2(mldeploy, project, azure):
    assert deploy(mldeploy, project, A).code == 0
    azure.requests.clear()
    for verb in ("promote", "rollback"):
        r = mldeploy(verb, cwd=project[0])
        assert r.code == 2 and f"{ENDPOINT} has no canary" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert azure.mutating() == []
    assert serving(azure) == {name("production", A): (A, 100)}


def test_doctor_names_the_identity_and_reads_the_workspace(mldeploy, project):
    r = mldeploy("doctor", cwd=project[0])
    assert r.code == 0, r.out + r.err
    assert f"ok    credential: a token for Azure Resource Manager as appid {CLIENT_ID}, oid 9999" in r.out
    assert f"ok    workspace: {WS} in eastus is readable" in r.out
    assert "ok    online endpoints: listing allowed (0 endpoints)" in r.out
    assert "SECRET" not in r.out + r.err


def test_doctor_says_which_workspace_is_missing(mldeploy, project, monkeypatch):
    monkeypatch.setenv("MLDEPLOY_DEPLOY__AZURE__WORKSPACE", "nope")
    r = mldeploy("doctor", cwd=project[0])
    assert r.code == 1
    assert "FAIL  workspace: Azure could not read the workspace nope:" in r.out and "'ml-rg' was not found" in r.out


def test_an_aad_token_endpoint_is_smoked_with_a_token(mldeploy, project, azure, monkeypatch):
    monkeypatch.setenv("MLDEPLOY_DEPLOY__AZURE__AZUREML__AUTH_MODE", "aad_token")
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    assert azure.endpoints[ENDPOINT]["properties"]["authMode"] == "AADToken"
    assert not [p for _, _, p in azure.requests if p.endswith("/listKeys")]   # a token, not the keys
    azure.requests.clear()
    assert "up to date" in deploy(mldeploy, project, A, "--stage", "production").out and azure.mutating() == []


def test_a_canary_that_fails_while_it_bakes_is_rolled_back(mldeploy, project, azure, monkeypatch):
    monkeypatch.setenv("MLDEPLOY_DEPLOY__AZURE__BAKE_SECONDS", "1")
    assert deploy(mldeploy, project, A).code == 0
    seen = len(azure.scored)

    def break_it():  # the canary starts failing once it answered its first smoke request
        for _ in range(500):
            if any(dep == name("canary", B) for _, dep, _ in azure.scored[seen:]):
                azure.failing_scores.add(B)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=break_it)
    thread.start()
    r = deploy(mldeploy, project, B, "--traffic", "10")
    thread.join()
    assert r.code == 1 and "failed (HTTP 424)" in r.err and "rolled back" in r.err, r.err
    assert serving(azure) == {name("production", A): (A, 100)}


def test_doctor_explains_a_federated_credential_mismatch(mldeploy, project, authority):
    route = f"/{TENANT}/oauth2/v2.0/token"
    saved = authority.routes[route]
    authority.routes[route] = (400, {"error": "invalid_client", "error_description":
                                     "AADSTS700213: No matching federated identity record found for presented "
                                     "assertion subject 'repo:acme/models:pull_request'."})
    try:
        r = mldeploy("doctor", cwd=project[0])
    finally:
        authority.routes[route] = saved
    assert r.code == 1
    line = next(line for line in r.out.splitlines() if "credential" in line)
    assert line.startswith("FAIL  credential: AADSTS700213")
    assert "subject equal to the token's sub" in line and "repo:OWNER/REPO:pull_request" in line
    assert FEDERATED_TOKEN not in r.out


def test_storage_mode_deploys_a_registered_model_and_a_model_only_change_is_blue_green(project, azure, tmp_path):
    """image.model: storage: each deployment mounts a registered model version (the artifact's Blob prefix,
    at AZUREML_MODEL_DIR) and verifies it with MLDEPLOY_MODEL_SHA256; the same image with another artifact
    is a new deployment that takes the traffic once it is read back, the old one deleted."""
    from mldeploy.deploy.base import MODEL_SHA256, Model
    from tests.helpers.storage_mode import deploys_a_model_only_change, two_models

    folder, bundle = project[0], project[1]
    models = two_models(bundle, tmp_path, "https://acmemodels.blob.core.windows.net/models", publish=False)

    def served():
        found = {}
        for dep in azure.deployments[ENDPOINT].values():
            n, v = re.search(r"/models/([^/]+)/versions/([^/]+)$", dep["properties"]["model"]).groups()
            registered = azure.models[(n, v)]["properties"]
            assert registered["tags"]["mldeploy:sha256"] == registered["tags"]["mldeploy:uri"].rsplit("/", 1)[1]
            found[dep["tags"]["mldeploy:slot"]] = Model(registered["modelUri"],
                                                        dep["properties"]["environmentVariables"][MODEL_SHA256])
        return found

    deploys_a_model_only_change(folder, A, models, served)
    assert len(azure.deployments[ENDPOINT]) == 1 and len(azure.models) == 2
