"""The deploy-endpoint action with `cloud: azure` (Azure ML), run by act from a model repo's workflow
against the local fakes of ARM and Entra ID. azure/login is a stand-in that leaves the workload
identity the real credential chain reads (see src/mldeploy/rehearsal/standins/azure-login)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.act import PR, act, logins, pipeline_repo, release_canary_rollback
from tests.helpers.azure_containerapps import ENVIRONMENT, IDENTITY
from tests.helpers.azure_ml import AAD_TOKEN, ENDPOINT, REGISTRY, RG, WS, name
from tests.helpers.cloud_registries import ACR_HOST, Registry
from tests.helpers.identity import ACR_REFRESH, TENANT
from tests.helpers.need import need

need("azure.ai.ml", "the azure extra installs azure-ai-ml")
need("azure.identity", "the azure extra installs azure-identity")

from mldeploy.deploy.azure import ACR_USERNAME  # noqa: E402

WORKFLOW = Path(__file__).parent / "workflows" / "deploy-azure.yml"


def trust(monkeypatch, folder: Path, *cas: Path) -> None:
    """The job's Python clients trust the machine's CAs (pip installs mldeploy) and the fakes' `cas`."""
    bundle = folder / "ca-bundle.pem"
    bundle.write_text("".join(p.read_text() for p in (Path("/etc/ssl/certs/ca-certificates.crt"), *cas)))
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(var, str(bundle))


def test_deploy_endpoint_action_deploys_production_then_a_pr_canary_to_azure_ml(kit, tmp_path, bundle, azure, tls,
                                                                                   monkeypatch):
    trust(monkeypatch, tmp_path, tls[1])
    repo = tmp_path / "model-repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(WORKFLOW, repo / ".github" / "workflows" / WORKFLOW.name)
    shutil.copytree(bundle, repo / "bundle")
    (repo / "mldeploy.yaml").write_text(f"deploy:\n  endpoint: {ENDPOINT}\n  azure:\n    resource_group: {RG}\n"
                                        f"    workspace: {WS}\n")
    first, second = (f"{REGISTRY}@sha256:{c * 64}" for c in "de")
    r = act(repo, kit, WORKFLOW.name, {"FIRST_IMAGE": first, "SECOND_IMAGE": second}, event="workflow_dispatch")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert azure.serving(ENDPOINT) == {name("production", first): (first, 90), name("canary-pr7", second): (second, 10)}
    log = r.stdout
    assert "### Deploy plan: azureml `classifier`" in log  # the step summary
    plan = log.split("canary plan:", 1)[1]  # the plan output reached the next step
    assert '"canary-pr7": 10' in plan.split('"traffic_after"', 1)[1]
    assert "canary-pr7  10%  healthy" in log and "Job succeeded" in log
    assert "standin-github-oidc-token" not in log  # masked


PIPELINE = Path(__file__).parent / "workflows" / "pipeline-azure.yml"
# per target: its part of mldeploy.yaml's deploy.azure, its ARM fake's fixture, what serves {slot: (image, %)}
TARGETS = {
    "azureml": (f"    workspace: {WS}\n", "azure",
                lambda arm: {d.rsplit("-", 1)[0]: got for d, got in arm.serving(ENDPOINT).items() if d != "mirror"}),
    "containerapps": ((f"    containerapps:\n      managed_environment: {ENVIRONMENT}\n      identity: {IDENTITY}\n"
                       "      allowed_ips: [127.0.0.1/32]\n"), "containerapps", lambda arm: arm.serving(ENDPOINT)),
}


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_reusable_workflow_releases_deploys_a_pr_canary_and_rolls_it_back_on_azure(
        kit, tmp_path, target, request, tls, cloud_registries, docker_env, github, monkeypatch):
    """The whole path on Azure: the build job exchanges its Entra ID token (the fake authority) at
    ACR's /oauth2/exchange for a refresh token and pushes with it (a TLS registry by ACR's name);
    the deploy job deploys that digest to Azure ML or Container Apps (the ARM fake); the PR gets its
    comment. Container Apps stops after the PR's canary: the rollback run is the same workflow path,
    and CI's minutes go to what differs."""
    settings, fixture, slots = TARGETS[target]
    arm = request.getfixturevalue(fixture)

    def serving() -> dict:
        return {slot: got for slot, got in slots(arm).items() if got[1]}

    front, registries_ca = cloud_registries
    exchanges = []

    def exchange(form: dict[str, str]) -> tuple[int, dict]:
        exchanges.append(form)
        if form.get("grant_type") == "access_token" and form.get("access_token") == AAD_TOKEN \
                and form.get("service") == ACR_HOST:
            return 200, {"refresh_token": ACR_REFRESH}
        return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid Azure AD token"}]}

    registry = front.registries[ACR_HOST] = Registry(login=lambda: (ACR_USERNAME, ACR_REFRESH), exchange=exchange)
    trust(monkeypatch, tmp_path, tls[1], registries_ca)
    repo = pipeline_repo(tmp_path, PIPELINE, f"""deploy:
  cloud: azure
  target: {target}
  endpoint: {ENDPOINT}
  azure:
    resource_group: {RG}
{settings}image:
  repository: models/classifier
""")
    record = tmp_path / "logins.txt"
    env = {**docker_env, "MLDEPLOY_IMAGE__REGISTRY": ACR_HOST, "GITHUB_API_URL": github.url,
           "MLDEPLOY_ACT_ARTIFACTS": str(tmp_path / "artifacts"), "MLDEPLOY_ACT_LOGINS": str(record)}
    push, canary_app, production = (f"{d * 8}-2222-3333-4444-555555555555" for d in "123")  # pipeline-azure.yml
    try:
        runs = release_canary_rollback(repo, kit, PIPELINE.name, env)
        r = next(runs)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert logins(record) == [("push", "azure", push), ("deploy", "azure", production)]
        [release] = set(registry.pushes)
        assert release.startswith(f"{ACR_HOST}/models/classifier@sha256:")
        assert serving() == {"production": (release, 100)}
        assert exchanges and exchanges[0]["tenant"] == TENANT  # the push login was ACR's exchange
        assert "### ✅ mldeploy: production deployed - `classifier`" in r.stdout

        r = next(runs)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert logins(record) == [("push", "azure", push), ("deploy", "azure", canary_app)]
        canary = registry.pushes[-1]
        assert canary != release
        assert serving() == {"production": (release, 90), f"canary-pr{PR}": (canary, 10)}
        [comment] = [c for c in github.comments.values() if c["pr"] == PR]
        assert "### ✅ mldeploy: canary deployed - `classifier`" in comment["body"] and canary in comment["body"]
        if target == "containerapps":
            assert arm.smokes[-1][0] == f"next-canary-pr{PR}"   # checked at its staging label before traffic moved
            return

        r = next(runs)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert logins(record) == [("deploy", "azure", production)]
        assert serving() == {"production": (release, 100)}
        assert "### ↩️ mldeploy: rollback rolled-back - `classifier`" in r.stdout
        assert ACR_REFRESH not in r.stdout and "standin-github-oidc-token" not in r.stdout
    finally:
        del front.registries[ACR_HOST]
