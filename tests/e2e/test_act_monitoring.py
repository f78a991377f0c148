"""The setup-monitoring action with `cloud: aws`, run by act from a model repo's workflow against moto
(configure-aws-credentials is the stand-in of test_act_aws): a plan that changes nothing, then the
setup, with the action's outputs reaching the next step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.contract import moto_patches
from tests.contract.conftest import aws, bundle, ecr_image, moto_server  # noqa: F401  (fixtures)
from tests.contract.test_monitor_setup_aws import BUCKET, config
from tests.e2e.test_act import act, kit  # noqa: F401  (fixture)
from tests.unit.test_sagemaker_constraints import baseline

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORKFLOW = Path(__file__).parent / "workflows" / "monitor-aws.yml"


def test_setup_monitoring_action_plans_then_sets_up_sagemaker_monitoring(kit, tmp_path, aws, moto_server, bundle,
                                                                          mldeploy):
    import boto3

    repo = tmp_path / "model-repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(WORKFLOW, repo / ".github" / "workflows" / WORKFLOW.name)
    (repo / "baseline.json").write_text(json.dumps(baseline()))
    (repo / "mldeploy.yaml").write_text(config())
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    image = ecr_image("models/classifier", "f" * 64)
    assert mldeploy("deploy", "--bundle", bundle, "--image", image, cwd=repo).code == 0
    r = act(repo, kit, WORKFLOW.name, {"AWS_ENDPOINT_URL": moto_server[1]}, event="workflow_dispatch")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    log = r.stdout
    assert log.count("monitoring aws sagemaker classifier: plan") == 2  # the plan-only step, then the setup
    assert "set up (" in log and "Job succeeded" in log
    assert "### Monitoring setup: aws sagemaker `classifier`" in log  # the step summary
    assert "outputs: topic=arn:aws:sns:us-east-1:123456789012:ml-alerts schedule=classifier-data-quality" in log
    assert '"action": "create"' in log.split("setup plan:", 1)[1]
    assert list(moto_patches.MONITORING_SCHEDULES) == ["classifier-data-quality"]
    assert "stand-in-secret-key" not in log
