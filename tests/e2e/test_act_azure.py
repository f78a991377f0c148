"""The deploy-endpoint action with `cloud: azure` (Azure ML), run by act from a model repo's workflow
against the local fakes of ARM and Entra ID. azure/login is a stand-in that leaves the workload
identity the real credential chain reads (see tests/e2e/standins/azure-login)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers.act import PR, act, logins, pipeline_repo, release_canary_rollback
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


def test_the_reusable_workflow_releases_deploys_a_pr_canary_and_rolls_it_back_on_azure_ml(
        kit, tmp_path, azure, tls, cloud_registries, docker_env, github, monkeypatch):
    """The whole path on Azure: the build job exchanges its Entra ID token (the fake authority) at
    ACR's /oauth2/exchange for a refresh token and pushes with it (a TLS registry by ACR's name);
    the deploy job deploys that digest to Azure ML (the ARM fake); the PR gets its comment."""
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
  target: azureml
  endpoint: {ENDPOINT}
  azure:
    resource_group: {RG}
    workspace: {WS}
image:
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
        assert azure.serving(ENDPOINT) == {name("production", release): (release, 100)}
        assert exchanges and exchanges[0]["tenant"] == TENANT  # the push login was ACR's exchange
        assert "### ✅ mldeploy: production deployed - `classifier`" in r.stdout

        r = next(runs)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert logins(record) == [("push", "azure", push), ("deploy", "azure", canary_app)]
        canary = registry.pushes[-1]
        assert canary != release
        assert azure.serving(ENDPOINT) == {name("production", release): (release, 90),
                                           name(f"canary-pr{PR}", canary): (canary, 10)}
        [comment] = [c for c in github.comments.values() if c["pr"] == PR]
        assert "### ✅ mldeploy: canary deployed - `classifier`" in comment["body"] and canary in comment["body"]

        r = next(runs)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert logins(record) == [("deploy", "azure", production)]
        assert azure.serving(ENDPOINT) == {name("production", release): (release, 100)}
        assert "### ↩️ mldeploy: rollback rolled-back - `classifier`" in r.stdout
        assert ACR_REFRESH not in r.stdout and "standin-github-oidc-token" not in r.stdout
    finally:
        del front.registries[ACR_HOST]
