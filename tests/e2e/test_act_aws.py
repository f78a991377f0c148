"""The deploy-endpoint action with `cloud: aws`, run by act from a model repo's workflow against moto.

OIDC cannot happen here: aws-actions/configure-aws-credentials is replaced by a stand-in that
exports (masked) short-lived credentials the way the real action does after assuming the role.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.contract.conftest import ROLE, aws, bundle, ecr_image, moto_server  # noqa: F401  (fixtures)
from tests.contract.test_aws_sagemaker import serving
from tests.e2e.test_act import act, kit  # noqa: F401  (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORKFLOW = Path(__file__).parent / "workflows" / "deploy-aws.yml"


def test_deploy_endpoint_action_deploys_production_then_a_pr_canary_to_sagemaker(kit, tmp_path, aws, moto_server,
                                                                                  bundle):
    repo = tmp_path / "model-repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(WORKFLOW, repo / ".github" / "workflows" / WORKFLOW.name)
    shutil.copytree(bundle, repo / "bundle")
    (repo / "mldeploy.yaml").write_text(f"deploy:\n  endpoint: classifier\n  aws:\n    role: {ROLE}\n")
    first, second = (ecr_image("models/classifier", c * 64) for c in "de")
    env = {"AWS_ENDPOINT_URL": moto_server[1], "FIRST_IMAGE": first, "SECOND_IMAGE": second,
           "MLDEPLOY_POLL_SECONDS": "0.1"}
    r = act(repo, kit, WORKFLOW.name, env, event="workflow_dispatch")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert serving() == {"production": (first, 90), "canary-pr7": (second, 10)}
    log = r.stdout
    assert "### Deploy plan: sagemaker `classifier`" in log  # the step summary
    plan = log.split("canary plan:", 1)[1]  # the plan output reached the next step
    assert '"stage": "canary"' in plan and '"canary-pr7": 10' in plan.split('"traffic_after"', 1)[1]
    assert "canary-pr7  10%  healthy" in log and "Job succeeded" in log
    assert "stand-in-secret-key" not in log  # the credential was masked
