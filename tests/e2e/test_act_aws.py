"""The deploy-endpoint action with `cloud: aws`, run by act from a model repo's workflow against moto.

OIDC cannot happen here: aws-actions/configure-aws-credentials is replaced by a stand-in that
exports (masked) short-lived credentials the way the real action does after assuming the role.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.contract.conftest import ROLE, aws, bundle, ecr_image, moto_server  # noqa: F401  (fixtures)
from tests.contract.test_aws_sagemaker import project, serving  # noqa: F401  (project is a fixture)
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


RELEASE = Path(__file__).parent / "workflows" / "release-aws.yml"


def test_the_reusable_workflow_promotes_and_rolls_back_on_sagemaker(kit, tmp_path, mldeploy, project, moto_server):
    """The reusable workflow itself on AWS (stages that build nothing): the OIDC login stand-in, the
    umbrella action's promote and rollback against moto, the decision and the report."""
    folder, bundle, (first, second) = project
    repo = folder  # the project is a model repo: mldeploy.yaml for SageMaker
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(RELEASE, repo / ".github" / "workflows" / RELEASE.name)
    for image, stage in ((first, "production"), (second, "canary")):
        r = mldeploy("deploy", "--bundle", bundle, "--image", image, "--stage", stage, "--traffic", "10", cwd=repo)
        assert r.code == 0, r.err
    env = {"AWS_ENDPOINT_URL": moto_server[1], "MLDEPLOY_POLL_SECONDS": "0.1"}

    r = act(repo, kit, RELEASE.name, env, event="workflow_dispatch", payload={"inputs": {"stage": "promote"}})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert serving() == {"production": (second, 100)}  # the canary's very image, nothing rebuilt
    assert "### ✅ mldeploy: promote promoted - `classifier`" in r.stdout
    assert "Build the serving image" not in r.stdout and "stand-in-secret-key" not in r.stdout

    assert mldeploy("deploy", "--bundle", bundle, "--image", first, "--traffic", "10", cwd=repo).code == 0
    r = act(repo, kit, RELEASE.name, env, event="workflow_dispatch", payload={"inputs": {"stage": "rollback"}})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert serving() == {"production": (second, 100)}
    assert "### ↩️ mldeploy: rollback rolled-back - `classifier`" in r.stdout
