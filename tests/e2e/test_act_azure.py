"""The deploy-endpoint action with `cloud: azure` (Azure ML), run by act from a model repo's workflow
against the local fakes of ARM and Entra ID. azure/login is a stand-in that leaves the workload
identity the real credential chain reads (see tests/e2e/standins/azure-login)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml", reason="the azure extra (azure-ai-ml) is not installed")

from tests.contract.conftest import bundle  # noqa: E402,F401  (fixture)
from tests.contract.test_azure_ml import ENDPOINT, REGISTRY, RG, WS, arm, authority, azure, name, tls  # noqa: E402,F401
from tests.e2e.test_act import act, kit  # noqa: E402,F401  (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORKFLOW = Path(__file__).parent / "workflows" / "deploy-azure.yml"


def test_deploy_endpoint_action_deploys_production_then_a_pr_canary_to_azure_ml(kit, tmp_path, bundle, azure, tls,
                                                                                   monkeypatch):
    # the job installs mldeploy with pip too: trust the machine's CAs and the fake Entra ID's
    cas = tmp_path / "ca-bundle.pem"
    cas.write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text() + tls[1].read_text())
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(var, str(cas))
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
