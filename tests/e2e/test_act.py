"""The convert-model action run by act from a model repo, exactly as a team's workflow calls it.

The example repo's workflow says `uses: acme/ml-deploy/actions/convert-model@v2`; act maps that to a
clean copy of this checkout (`--local-repository`), and runs the job on this host. Remote actions
cannot be cloned here, so actions/setup-python (and configure-aws-credentials) are replaced by the
stand-ins in src/mldeploy/rehearsal/standins (tests/helpers/act.py runs act).
"""

from __future__ import annotations

import re
import shutil

import pytest

from tests.helpers.act import act
from tests.helpers.paths import ROOT
from tests.helpers.server import free_port


@pytest.fixture
def model_repo(tmp_path):
    repo = tmp_path / "model-repo"
    shutil.copytree(ROOT / "examples" / "model-repo", repo, ignore=shutil.ignore_patterns(".mldeploy"))
    return repo


def test_convert_and_optimize_actions_run_green_from_a_model_repo(kit, model_repo):
    r = act(model_repo, kit, "convert.yml")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    log = r.stdout
    assert "convert: parity passed - model/weights.pt (torch, state_dict)" in log
    assert "### ✅ convert-model: parity passed" in log  # the step summary
    # the next step got the action's outputs and found the files
    assert re.search(r"bundle=\.mldeploy/bundle onnx=\.mldeploy/bundle/model\.onnx parity-max-abs-error=[0-9.e-]+",
                     log)
    optimize_log = log.split("optimize: chose", 1)[1].split("data:", 1)[0]
    assert "failed:" not in optimize_log and "onnxslim" in optimize_log  # every candidate built and ran
    assert "### ✅ optimize-model:" in log and "xychart-beta" in log  # table and latency chart
    assert re.search(r"optimized: chosen=[\w-]+ speedup=[0-9.]+", log)
    assert "warning" not in log.split("Run Main acme/ml-deploy/actions/optimize-model@v2", 1)[1].split(
        "optimize: chose")[0].lower()  # the repo gives real data: no generated-data warning
    assert "Job succeeded" in log
    # only the framework the model needs: torch for this torch model, never TensorFlow too
    assert re.search(r"mldeploy: (installed extra torch|extra torch already installed)", log), log[-4000:]
    assert "extra tensorflow" not in log


def test_bad_config_fails_the_job_with_an_annotation(kit, model_repo):
    cfg = model_repo / "mldeploy.yaml"
    cfg.write_text(cfg.read_text().replace("  atol: 1.0e-5", "  atoll: 1.0e-5"))
    r = act(model_repo, kit, "convert.yml")
    assert r.returncode != 0
    assert re.search(r"::error file=mldeploy\.yaml,line=\d+,title=mldeploy convert::parity\.atoll: unknown key "
                     r"\(did you mean 'atol'\?\)", r.stdout), r.stdout[-4000:]
    assert "Use the outputs" not in r.stdout.split("::error", 1)[1]  # nothing ran after the failure


def test_the_whole_pipeline_deploys_locally_from_a_model_repo(kit, model_repo, docker_env):
    port = free_port()
    env = {**docker_env, "MLDEPLOY_DEPLOY__PORT": str(port), "MLDEPLOY_DEPLOY__ENDPOINT": f"e2e{port}"}
    try:
        r = act(model_repo, kit, "deploy-local.yml", env, event="workflow_dispatch")
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        log = r.stdout
        image = re.search(r"deployed (\S+@sha256:[0-9a-f]{64}) at http://127\.0\.0\.1:(\d+)", log)
        assert image and image[2] == str(port), log[-3000:]
        assert '"outputs":[[' in log  # the endpoint answered the workflow's own request
        assert "production 100%  healthy" in log and "Job succeeded" in log
    finally:
        from mldeploy.deploy.local import LocalTarget

        LocalTarget(f"e2e{port}", port).destroy()
