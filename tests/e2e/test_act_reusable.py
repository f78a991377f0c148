"""The reusable deploy workflow and the starter workflows, run by act from the example model repo
exactly as a team's repo calls them (`uses: acme/ml-deploy/.github/workflows/deploy.yml@v1`),
against a real Docker engine and registry (cloud local) and a fake of GitHub's comments API.

One endpoint lives through what a model repo does to it, in order: a release tag deploys
production; a pull request deploys its canary and comments; a second push whose canary dies
fails the run, keeps everything serving and updates the same comment; a fork's pull request
deploys nothing; the rollback workflow removes the canary; closing the pull request then finds
nothing to tear down and succeeds.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.request

import pytest

from tests.conftest import ROOT
from tests.e2e.fake_github import FakeGitHub
from tests.e2e.test_act import act, kit  # noqa: F401  (kit is a fixture)
from tests.integration.conftest import docker_env, free_port  # noqa: F401  (docker_env is a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

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


@pytest.fixture(scope="module")
def endpoint(docker_env, github, tmp_path_factory):
    """The endpoint's name and port, the act environment, and the endpoint's teardown."""
    port = free_port()
    name = f"wf{port}"
    env = {**docker_env, "MLDEPLOY_DEPLOY__PORT": str(port), "MLDEPLOY_DEPLOY__ENDPOINT": name,
           "MLDEPLOY_ACT_ARTIFACTS": str(tmp_path_factory.mktemp("artifacts")), "GITHUB_API_URL": github.url}
    yield name, port, env
    from mldeploy.deploy.local import LocalTarget

    LocalTarget(name, port).destroy()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("wf") / "model-repo"
    shutil.copytree(ROOT / "examples" / "model-repo", repo, ignore=shutil.ignore_patterns(".mldeploy"))
    return repo


def run(repo, kit, endpoint, workflow: str, event: str, payload: dict):
    return act(repo, kit, workflow, endpoint[2], event=event, payload=payload, secrets={"GITHUB_TOKEN": TOKEN})


def retrain(repo, seed: int) -> None:
    """A new model version: the same network with nudged weights (a new image digest)."""
    import torch

    path = repo / "model" / "weights.pt"
    state = torch.load(path, weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    torch.save({k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in state.items()}, path)


def served(port: int, n: int = 200) -> dict[str, int]:
    """slot -> how many of n requests the router sent there."""
    counts: dict[str, int] = {}
    body = json.dumps({"instances": [[0.0] * 16]}).encode()
    for _ in range(n):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", body, {"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            slot = answer.headers["x-mldeploy-slot"]
        counts[slot] = counts.get(slot, 0) + 1
    return counts


def routes(name: str, port: int) -> dict[str, dict]:
    from mldeploy.deploy.local import LocalTarget

    return LocalTarget(name, port).routes()


def ok(r) -> None:
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_a_release_tag_deploys_production(kit, repo, endpoint):
    name, port, _ = endpoint
    r = run(repo, kit, endpoint, "release-production.yml", "push", {"ref": "refs/tags/v1.0.0"})
    ok(r)
    assert re.search(r"### ✅ mldeploy: production deployed - `" + name, r.stdout)
    assert served(port) == {"production": 200}


def test_a_pull_request_deploys_its_canary_and_comments(kit, repo, endpoint, github):
    name, port, _ = endpoint
    production = routes(name, port)["production"]["image"]
    retrain(repo, seed=1)
    started = time.monotonic()
    r = run(repo, kit, endpoint, "pr-canary.yml", "pull_request", pull_request("opened"))
    print(f"PR canary run: {time.monotonic() - started:.0f} s")
    ok(r)
    now = routes(name, port)
    assert now["production"]["image"] == production and now["canary"]["image"] != production
    assert (now["production"]["weight"], now["canary"]["weight"]) == (80, 20)  # deploy.canary_traffic
    counts = served(port, 400)
    assert 40 <= counts.get("canary", 0) <= 130, counts  # 20% of 400 is 80
    [comment] = [c for c in github.comments.values() if c["pr"] == PR]
    body = comment["body"]
    assert body.startswith(f"<!-- mldeploy-report endpoint={name} -->")
    assert f"### ✅ mldeploy: canary deployed - `{name}` (local)" in body
    assert now["canary"]["image"] in body and "production 100% -> production 80%, canary 20%" in body
    assert re.search(r"\| Parity \| passed, max abs error [0-9.e-]+ \(torch -> ONNX", body)
    assert re.search(r"\| Optimization \| `[\w-]+`: [0-9.]+x faster", body)
    assert "| Latency | p50 " in body and "<summary>Plan</summary>" in body
    assert TOKEN not in r.stdout  # masked


def test_a_push_whose_canary_dies_fails_the_run_and_keeps_serving(kit, repo, endpoint, github, docker_env):
    import docker

    name, port, _ = endpoint
    before = routes(name, port)
    retrain(repo, seed=2)
    client = docker.DockerClient(base_url=docker_env["DOCKER_HOST"])
    stop = threading.Event()
    killed: list[str] = []

    def kill_new_canaries():  # an unhealthy canary: it dies as it starts
        while not stop.is_set():
            for c in client.containers.list(filters={"label": [f"dev.mldeploy.endpoint={name}",
                                                                "dev.mldeploy.slot=canary"]}):
                if c.name != before["canary"]["container"]:
                    c.kill()
                    killed.append(c.name)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_new_canaries, daemon=True)
    killer.start()
    try:
        r = run(repo, kit, endpoint, "pr-canary.yml", "pull_request", pull_request("synchronize"))
    finally:
        stop.set()
        killer.join()
    assert r.returncode != 0 and killed
    assert "the canary container exited on start" in r.stdout
    assert routes(name, port) == before  # production and the earlier canary, as they were
    assert set(served(port)) <= {"production", "canary"}
    [comment] = [c for c in github.comments.values() if c["pr"] == PR]  # the same comment, updated
    assert f"### ❌ mldeploy: canary failed - `{name}`" in comment["body"]
    assert ("PATCH", f"/repos/acme/models/issues/comments/{comment['id']}") in github.requests


def test_a_fork_pull_request_deploys_nothing(kit, repo, endpoint, github):
    name, port, _ = endpoint
    before, requests = routes(name, port), len(github.requests)
    r = run(repo, kit, endpoint, "pr-canary.yml", "pull_request", pull_request("opened", head_repo="stranger/models"))
    ok(r)
    assert "mldeploy deploy" not in r.stdout  # the reusable workflow was never called
    assert routes(name, port) == before and len(github.requests) == requests


def test_the_rollback_workflow_removes_the_canary(kit, repo, endpoint):
    name, port, _ = endpoint
    r = run(repo, kit, endpoint, "rollback.yml", "workflow_dispatch", {})
    ok(r)
    assert f"### ↩️ mldeploy: rollback rolled-back - `{name}`" in r.stdout
    assert set(routes(name, port)) == {"production"} and served(port) == {"production": 200}


def test_closing_the_pull_request_with_nothing_left_to_tear_down_succeeds(kit, repo, endpoint, github):
    name, port, _ = endpoint
    r = run(repo, kit, endpoint, "pr-closed.yml", "pull_request", pull_request("closed"))
    ok(r)
    assert "no canary to roll back" in r.stdout
    assert served(port) == {"production": 200}
    [comment] = [c for c in github.comments.values() if c["pr"] == PR]
    assert f"mldeploy: teardown torn-down - `{name}`" in comment["body"]
