"""scripts/action-setup.sh, which every kit action runs first, in the model repo's checkout and (in
the push and deploy jobs) after the cloud login: nothing a pull request or an earlier job left
behind runs there. A planted `venv/` and `pip/` in the working directory would run with `python -m`;
a planted venv in a self-hosted runner's tool cache (which outlives the job) would be run as is."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.paths import ROOT

PLANT = "import pathlib; pathlib.Path({marker!r}).write_text('planted code ran')\n"


def setup(cwd, env: dict[str, str]) -> subprocess.CompletedProcess:
    bin_dir = os.path.dirname(sys.executable)  # a python3 that is 3.11+, as setup-python gives
    python = next(p for p in (os.path.join(bin_dir, "python3"), "/usr/bin/python3") if os.path.exists(p))
    return subprocess.run(["bash", str(ROOT / "scripts" / "action-setup.sh")], cwd=cwd, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "MLDEPLOY_PYTHON": python, **env}, check=False)


def test_nothing_planted_runs_on_a_self_hosted_runner(tmp_path):
    repo, marker = tmp_path / "model-repo", tmp_path / "planted-code-ran"
    for package in ("venv", "pip", "ensurepip"):  # what `python -m venv` and `python -m pip` import first
        (repo / package).mkdir(parents=True)
        (repo / package / "__init__.py").write_text(PLANT.format(marker=str(marker)))
        (repo / package / "__main__.py").write_text(PLANT.format(marker=str(marker)))
    cache = tmp_path / "toolcache"
    env = {"RUNNER_TOOL_CACHE": str(cache), "GITHUB_ACTIONS": "true"}

    # a runner whose tool cache is trusted (GitHub-hosted: a fresh machine per job) makes it there
    r = setup(repo, {**env, "RUNNER_ENVIRONMENT": "github-hosted"})
    assert r.returncode == 0, r.stdout + r.stderr
    cached = r.stdout.strip().splitlines()[-1]
    assert cached.startswith(str(cache / "mldeploy" / "venv-")) and not marker.exists()

    # an earlier job on a self-hosted runner replaced it; this job makes its own and runs that
    os.replace(cached, cached + ".real")
    with open(cached, "w") as f:
        f.write(f"#!/bin/sh\necho planted > {marker}\n")
    os.chmod(cached, 0o755)
    job_temp = tmp_path / "job-temp"
    job_temp.mkdir()
    r = setup(repo, {**env, "RUNNER_ENVIRONMENT": "self-hosted", "RUNNER_TEMP": str(job_temp)})
    assert r.returncode == 0, r.stdout + r.stderr
    mldeploy = r.stdout.strip().splitlines()[-1]
    version = subprocess.run([mldeploy, "--version"], cwd=repo, capture_output=True, text=True, timeout=60, check=False)
    assert not marker.exists(), marker.read_text()
    assert mldeploy.startswith(str(job_temp / "mldeploy" / "venv-")), mldeploy
    assert version.returncode == 0 and version.stdout.startswith("mldeploy "), version.stdout + version.stderr
