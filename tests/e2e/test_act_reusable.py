"""The reusable deploy workflow and the starter workflows, run by act from the example model repo
exactly as a team's repo calls them (`uses: acme/ml-deploy/.github/workflows/deploy.yml@v2`),
against a real Docker engine and registry (cloud local) and a fake of GitHub's comments API.

One endpoint lives through what a model repo does to it, in order: a release tag deploys
production; a pull request with a model that answers differently deploys its canary, canary
analysis judges it on live traffic and rolls it back, failing the run and saying why in the pull
request's comment; the next push deploys a canary that stays, updating the same comment; a push
whose canary fails its smoke test fails the run and keeps everything serving; a push whose image has
no attestation is refused before anything changes (every deploy here checks provenance, as on
GitHub); a fork's pull request
deploys nothing; the rollback workflow removes the canary; another push's canary is promoted by
the promote workflow (the very image, nothing rebuilt); closing the pull request then finds
nothing to tear down and succeeds. Every slot captures its requests (monitoring.enabled), which is
what canary analysis compares predictions with.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
import threading
import time
import urllib.request

import pytest

from tests.helpers.act import KIT_WORKFLOW, PR, TOKEN, act, pull_request, retrain, routes, served
from tests.helpers.paths import ROOT
from tests.helpers.server import free_port


@pytest.fixture(scope="module")
def endpoint(docker_env, github, tmp_path_factory):
    """The endpoint's name and port, the act environment, and the endpoint's teardown."""
    port = free_port()
    name = f"wf{port}"
    env = {**docker_env, "MLDEPLOY_DEPLOY__PORT": str(port), "MLDEPLOY_DEPLOY__ENDPOINT": name,
           "MLDEPLOY_ACT_ARTIFACTS": str(tmp_path_factory.mktemp("artifacts")), "GITHUB_API_URL": github.url,
           "MLDEPLOY_MONITORING__ENABLED": "true", "MLDEPLOY_MONITORING__CAPTURE_SAMPLE_RATE": "1",
           "MLDEPLOY_CAPTURE_ROOT": str(tmp_path_factory.mktemp("capture")),
           # judge on the few seconds of traffic between the deploy and the analysis
           "MLDEPLOY_MONITORING__CANARY__MIN_REQUESTS": "5",
           # every deploy checks the image's attestation, as on GitHub (act turns it off by default)
           "MLDEPLOY_DEPLOY__REQUIRE_PROVENANCE": "true", "MLDEPLOY_SIGNER_WORKFLOW": KIT_WORKFLOW}
    yield name, port, env
    from mldeploy.deploy.local import LocalTarget

    LocalTarget(name, port).destroy()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("wf") / "model-repo"
    shutil.copytree(ROOT / "examples" / "model-repo", repo, ignore=shutil.ignore_patterns(".mldeploy"))
    return repo


def run(repo, kit, endpoint, workflow: str, event: str, payload: dict, **env: str):
    return act(repo, kit, workflow, {**endpoint[2], **env}, event=event, payload=payload,
               secrets={"GITHUB_TOKEN": TOKEN})


@contextlib.contextmanager
def traffic(port: int):
    """Requests with random features, one after another, while the block runs."""
    stop = threading.Event()
    sent = []

    def send():
        rng = random.Random(0)
        while not stop.is_set():
            body = json.dumps({"instances": [[rng.gauss(0, 1) for _ in range(16)]]}).encode()
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", body,
                                                 {"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as answer:
                    sent.append(answer.headers["x-mldeploy-slot"])
            except OSError:
                time.sleep(0.05)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        stop.set()
        thread.join()


def ok(r) -> None:
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_a_release_tag_deploys_production(kit, repo, endpoint):
    name, port, _ = endpoint
    r = run(repo, kit, endpoint, "release-production.yml", "push", {"ref": "refs/tags/v1.0.0"})
    ok(r)
    assert re.search(r"### ✅ mldeploy: production deployed - `" + name, r.stdout)
    assert served(port) == {"production": 200}
    digest = routes(name, port)["production"]["image"].split("@")[1]
    assert f"provenance: {digest} was built by {KIT_WORKFLOW}@refs/tags/v2 from acme/models" in r.stdout


def test_canary_analysis_rolls_back_a_pull_requests_canary_that_answers_differently(kit, repo, endpoint, github):
    name, port, _ = endpoint
    before = routes(name, port)
    retrain(repo, seed=1, flip=True)
    with traffic(port) as sent:
        r = run(repo, kit, endpoint, "pr-canary.yml", "pull_request", pull_request("opened"))
    assert r.returncode != 0, r.stdout[-6000:]
    assert "canary" in sent  # it did take traffic before it was judged
    assert "::error title=mldeploy canary analysis::the canary was unhealthy and was rolled back" in r.stdout
    assert routes(name, port) == before and served(port) == {"production": 200}
    [comment] = [c for c in github.comments.values() if c["pr"] == PR]
    assert f"### ↩️ mldeploy: canary rolled-back - `{name}` (local)" in comment["body"], comment["body"]
    assert re.search(r"\| Canary analysis \| \*\*rollback\*\*:[^|]*prediction divergence [0-9.]+ \(Jensen-Shannon",
                     comment["body"]), comment["body"]


def test_the_next_push_deploys_a_canary_that_stays_and_updates_the_comment(kit, repo, endpoint, github):
    name, port, _ = endpoint
    production = routes(name, port)["production"]["image"]
    retrain(repo, seed=2)
    started = time.monotonic()
    r = run(repo, kit, endpoint, "pr-canary.yml", "pull_request", pull_request("synchronize"))
    print(f"PR canary run: {time.monotonic() - started:.0f} s")
    ok(r)
    now = routes(name, port)
    assert now["production"]["image"] == production and now["canary"]["image"] != production
    assert (now["production"]["weight"], now["canary"]["weight"]) == (80, 20)  # deploy.canary_traffic
    counts = served(port, 400)
    assert 40 <= counts.get("canary", 0) <= 130, counts  # 20% of 400 is 80
    [comment] = [c for c in github.comments.values() if c["pr"] == PR]  # the same comment, updated
    assert ("PATCH", f"/repos/acme/models/issues/comments/{comment['id']}") in github.requests
    body = comment["body"]
    assert body.startswith(f"<!-- mldeploy-report endpoint={name} -->")
    assert f"### ✅ mldeploy: canary deployed - `{name}` (local)" in body
    assert now["canary"]["image"] in body and "production 100% -> production 80%, canary 20%" in body
    assert re.search(r"\| Parity \| passed, max abs error [0-9.e-]+ \(torch -> ONNX", body)
    assert re.search(r"\| Optimization \| `[\w-]+`: [0-9.]+x faster", body)
    assert "| Latency | p50 " in body and "<summary>Plan</summary>" in body
    assert "| Canary analysis | **hold**" in body  # no traffic yet: too early to judge, and it stays
    assert TOKEN not in r.stdout  # masked


def test_a_push_whose_canary_fails_its_smoke_test_fails_the_run_and_keeps_serving(kit, repo, endpoint, github):
    """This push also changes how the model is served: its image asks for an API key, which the
    deploy's smoke request does not send. The canary reports ready, then answers the smoke request
    401: the run fails, no traffic moves, and the comment says so."""
    name, port, _ = endpoint
    before = routes(name, port)
    config = repo / "mldeploy.yaml"
    original = config.read_text()
    (repo / "Dockerfile.serve").write_text(f"FROM {before['production']['image']}\nCOPY bundle/ /opt/ml/model/\n"
                                           "ENV MLDEPLOY_API_KEYS=k3y-only-the-gateway-knows\n")
    config.write_text(original.replace("deploy:", "image:\n  dockerfile: Dockerfile.serve\ndeploy:", 1))
    retrain(repo, seed=3)
    try:
        r = run(repo, kit, endpoint, "pr-canary.yml", "pull_request", pull_request("synchronize"))
    finally:
        config.write_text(original)
        (repo / "Dockerfile.serve").unlink()
    assert r.returncode != 0
    assert "the canary smoke request got 401" in r.stdout and "traffic was not moved" in r.stdout
    assert routes(name, port) == before  # production and the earlier canary, as they were
    assert set(served(port)) <= {"production", "canary"}
    [comment] = [c for c in github.comments.values() if c["pr"] == PR]
    assert f"### ❌ mldeploy: canary failed - `{name}`" in comment["body"]


def test_an_image_without_the_kits_attestation_is_refused_and_nothing_moves(kit, repo, endpoint, github):
    """The push job pushes the image but no attestation is stored for it (the stand-in makes none): the
    deploy job refuses the digest in one line before it changes anything, and the run fails."""
    name, port, _ = endpoint
    before = routes(name, port)
    retrain(repo, seed=5)
    r = run(repo, kit, endpoint, "pr-canary.yml", "pull_request", pull_request("synchronize"),
            MLDEPLOY_ACT_JOB_WORKFLOW_REF="none")
    assert r.returncode != 0
    refused = re.findall(r"::error[^\n]*::refusing (\S+@sha256:[0-9a-f]{64}): it has no build provenance attestation "
                         r"in acme/models \(", r.stdout)
    assert len(refused) == 1 and refused[0] not in str(before), r.stdout[-6000:]
    assert routes(name, port) == before  # nothing deployed
    [comment] = [c for c in github.comments.values() if c["pr"] == PR]
    assert f"### ❌ mldeploy: canary failed - `{name}`" in comment["body"]


def test_a_fork_pull_request_deploys_nothing(kit, repo, endpoint, github):
    name, port, _ = endpoint
    before, requests = routes(name, port), len(github.requests)
    r = run(repo, kit, endpoint, "pr-canary.yml", "pull_request", pull_request("opened", head_repo="stranger/models"))
    ok(r)
    assert "mldeploy deploy" not in r.stdout  # the reusable workflow was never called
    assert routes(name, port) == before and len(github.requests) == requests


def test_a_fork_workflow_run_deploys_nothing(kit, repo, endpoint, github):
    """workflow_run runs in this repository's context with its secrets and OIDC, for a fork's head
    too; the caller here checks nothing, so the kit's own guard is all there is."""
    name, port, _ = endpoint
    shutil.copy(ROOT / "tests" / "e2e" / "unsafe-callers" / "after-ci.yml", repo / ".github" / "workflows")
    before, requests = routes(name, port), len(github.requests)
    fork = {"action": "completed", "repository": {"full_name": "acme/models"},
            "workflow_run": {"name": "ci", "event": "pull_request", "conclusion": "success", "head_branch": "main",
                             "head_sha": "0" * 40, "head_repository": {"full_name": "stranger/models"}}}
    try:
        r = run(repo, kit, endpoint, "after-ci.yml", "workflow_run", fork)
    finally:
        (repo / ".github" / "workflows" / "after-ci.yml").unlink()
    ok(r)
    assert "Convert and optimize" not in r.stdout and "Deploy (canary)" not in r.stdout  # no job ran
    assert routes(name, port) == before and len(github.requests) == requests


def test_a_pull_request_that_asks_for_production_is_refused(kit, repo, endpoint, github):
    name, port, _ = endpoint
    shutil.copy(ROOT / "tests" / "e2e" / "unsafe-callers" / "pr-production.yml", repo / ".github" / "workflows")
    before = routes(name, port)
    try:
        r = run(repo, kit, endpoint, "pr-production.yml", "pull_request", pull_request("synchronize"))
    finally:
        (repo / ".github" / "workflows" / "pr-production.yml").unlink()
    assert r.returncode != 0
    assert ("::error title=mldeploy deploy::stage production needs the production identity, which a pull_request "
            "run never gets") in r.stdout, r.stdout[-4000:]
    assert routes(name, port) == before


def test_the_rollback_workflow_removes_the_canary(kit, repo, endpoint):
    name, port, _ = endpoint
    r = run(repo, kit, endpoint, "rollback.yml", "workflow_dispatch", {})
    ok(r)
    assert f"### ↩️ mldeploy: rollback rolled-back - `{name}`" in r.stdout
    assert set(routes(name, port)) == {"production"} and served(port) == {"production": 200}


def test_the_promote_workflow_makes_the_tested_canary_production(kit, repo, endpoint, github):
    name, port, _ = endpoint
    retrain(repo, seed=4)
    ok(run(repo, kit, endpoint, "pr-canary.yml", "pull_request", pull_request("synchronize")))
    canary = routes(name, port)["canary"]["image"]
    r = run(repo, kit, endpoint, "promote.yml", "workflow_dispatch", {})
    ok(r)
    assert "Build the serving image" not in r.stdout  # nothing rebuilt
    assert f"### ✅ mldeploy: promote promoted - `{name}`" in r.stdout
    now = routes(name, port)
    assert set(now) == {"production"} and now["production"]["image"] == canary
    assert served(port) == {"production": 200}


def test_closing_the_pull_request_with_nothing_left_to_tear_down_succeeds(kit, repo, endpoint, github):
    name, port, _ = endpoint
    r = run(repo, kit, endpoint, "pr-closed.yml", "pull_request", pull_request("closed"))
    ok(r)
    assert "no canary to roll back" in r.stdout
    assert served(port) == {"production": 200}
    # the endpoint's one comment (a refused production run, which never read the config, left its own)
    [comment] = [c for c in github.comments.values()
                 if c["pr"] == PR and c["body"].startswith(f"<!-- mldeploy-report endpoint={name} -->")]
    assert f"mldeploy: teardown torn-down - `{name}`" in comment["body"]
