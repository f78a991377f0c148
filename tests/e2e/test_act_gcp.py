"""The deploy-endpoint action with `cloud: gcp` (Vertex AI), run by act from a model repo's workflow
against the local fake of the Vertex AI API. google-github-actions/auth is a stand-in that exports
what the real action exports after Workload Identity Federation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("google.cloud.aiplatform_v1", reason="the gcp extra (google-cloud-aiplatform) is not installed")

from tests.contract.conftest import bundle  # noqa: E402,F401  (fixture)
from tests.contract.fakes.vertex import FakeVertex  # noqa: E402
from tests.contract.test_gcp_vertex import ENDPOINT, PROJECT, REGION, REPOSITORY, serving  # noqa: E402
from tests.e2e.test_act import act, kit  # noqa: E402,F401  (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORKFLOW = Path(__file__).parent / "workflows" / "deploy-gcp.yml"


def test_deploy_endpoint_action_deploys_production_then_a_pr_canary_to_vertex(kit, tmp_path, bundle):
    repo = tmp_path / "model-repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(WORKFLOW, repo / ".github" / "workflows" / WORKFLOW.name)
    shutil.copytree(bundle, repo / "bundle")
    (repo / "mldeploy.yaml").write_text(f"deploy:\n  endpoint: {ENDPOINT}\n  region: {REGION}\n")
    first, second = (f"{REPOSITORY}@sha256:{c * 64}" for c in "de")
    fake = FakeVertex().start()
    try:
        env = {"MLDEPLOY_GCP_API_ENDPOINT": fake.url, "FIRST_IMAGE": first, "SECOND_IMAGE": second,
               "MLDEPLOY_POLL_SECONDS": "0.05"}
        r = act(repo, kit, WORKFLOW.name, env, event="workflow_dispatch")
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        assert serving(fake) == {"production": (first, 90), "canary-pr7": (second, 10)}
        assert fake.endpoint(ENDPOINT)["name"].startswith(f"projects/{PROJECT}/")  # the stand-in's project
    finally:
        fake.stop()
    log = r.stdout
    assert "### Deploy plan: vertex `classifier`" in log  # the step summary
    plan = log.split("canary plan:", 1)[1]  # the plan output reached the next step
    assert '"canary-pr7": 10' in plan.split('"traffic_after"', 1)[1]
    assert "canary-pr7  10%  healthy" in log and "Job succeeded" in log
