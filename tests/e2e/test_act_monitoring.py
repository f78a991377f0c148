"""The setup-monitoring action with `cloud: aws`, run by act from a model repo's workflow against moto
(configure-aws-credentials is the stand-in of test_act_aws): a plan that changes nothing, then the
setup, with the action's outputs reaching the next step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers.act import act
from tests.helpers.aws import CAPTURE_BUCKET as BUCKET
from tests.helpers.aws import ecr_image
from tests.helpers.aws import sagemaker_monitoring_config as config
from tests.helpers.monitoring import baseline
from tests.helpers.need import need

need("moto", "the dev extra installs it")

from tests.helpers import moto_patches  # noqa: E402

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
