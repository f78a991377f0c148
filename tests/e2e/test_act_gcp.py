"""The deploy-endpoint action with `cloud: gcp` (Vertex AI), run by act from a model repo's workflow
against the local fake of the Vertex AI API. google-github-actions/auth is a stand-in that exports
what the real action exports after Workload Identity Federation."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

from tests.helpers.act import PR, act, logins, pipeline_repo, release_canary_rollback
from tests.helpers.cloud_registries import AR_HOST, Registry
from tests.helpers.fakes.vertex import FakeVertex
from tests.helpers.gcp_vertex import ENDPOINT, PROJECT, REGION, REPOSITORY, serving
from tests.helpers.identity import STS_OK, Fake
from tests.helpers.need import need

need("google.cloud.aiplatform_v1", "the gcp extra installs google-cloud-aiplatform")

WORKFLOW = Path(__file__).parent / "workflows" / "deploy-gcp.yml"


def test_deploy_endpoint_action_deploys_production_then_a_pr_canary_to_vertex(kit, tmp_path, bundle):
    repo = tmp_path / "model-repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(WORKFLOW, repo / ".github" / "workflows" / WORKFLOW.name)
    shutil.copytree(bundle, repo / "bundle")
    (repo / "mldeploy.yaml").write_text(f"deploy:\n  endpoint: {ENDPOINT}\n  region: {REGION}\n")
    first, second = (f"{REPOSITORY}@sha256:{c * 64}" for c in "de")
    fake = FakeVertex().start()
    try:
        env = {"MLDEPLOY_GCP_API_ENDPOINT": fake.url, "FIRST_IMAGE": first, "SECOND_IMAGE": second,
               "MLDEPLOY_POLL_SECONDS": "0.05"}
        r = act(repo, kit, WORKFLOW.name, env, event="workflow_dispatch")
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        assert serving(fake) == {"production": (first, 90), "canary-pr7": (second, 10)}
        assert fake.endpoint(ENDPOINT)["name"].startswith(f"projects/{PROJECT}/")  # the stand-in's project
    finally:
        fake.stop()
    log = r.stdout
    assert "### Deploy plan: vertex `classifier`" in log  # the step summary
    plan = log.split("canary plan:", 1)[1]  # the plan output reached the next step
    assert '"canary-pr7": 10' in plan.split('"traffic_after"', 1)[1]
    assert "canary-pr7  10%  healthy" in log and "Job succeeded" in log


PIPELINE = Path(__file__).parent / "workflows" / "pipeline-gcp.yml"
ACCOUNTS = [f"mldeploy-{who}@acme-ml.iam.gserviceaccount.com" for who in ("push", "canary", "production")]
PUSH_TOKEN = "ya29.impersonated-push-token"


def test_the_reusable_workflow_releases_deploys_a_pr_canary_and_rolls_it_back_on_vertex(
        kit, tmp_path, cloud_registries, docker_env, github):
    """The whole path on GCP: the build job logs in to Artifact Registry with the token Workload
    Identity Federation gives (a fake STS and IAM Credentials behind the real google-auth), creates
    the repository through the Artifact Registry API and pushes there (a TLS registry by its name);
    the deploy job deploys that digest to Vertex AI (the fake); the PR gets its comment."""
    expires = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sts = Fake({"/v1/token": STS_OK, **{f"/v1/projects/-/serviceAccounts/{account}:generateAccessToken":
                                        (200, {"accessToken": PUSH_TOKEN, "expireTime": expires})
                                        for account in ACCOUNTS}})
    vertex = FakeVertex().start()
    front, _ = cloud_registries
    location = AR_HOST.split("-docker.")[0]
    registry = front.registries[AR_HOST] = Registry(
        login=lambda: ("oauth2accesstoken", PUSH_TOKEN),
        has_repository=lambda name: "projects/{}/locations/{}/repositories/{}".format(
            *name.split("/")[:1], location, name.split("/")[1]) in vertex.repositories)
    repo = pipeline_repo(tmp_path, PIPELINE, f"""deploy:
  cloud: gcp
  target: vertex
  endpoint: {ENDPOINT}
  region: {REGION}
image:
  repository: {PROJECT}/models/classifier
""")
    env = {**docker_env, "MLDEPLOY_IMAGE__REGISTRY": AR_HOST, "MLDEPLOY_GCP_API_ENDPOINT": vertex.url,
           "STANDIN_GOOGLE_API": f"http://{sts.host}", "MLDEPLOY_POLL_SECONDS": "0.05",
           "GITHUB_API_URL": github.url, "MLDEPLOY_ACT_ARTIFACTS": str(tmp_path / "artifacts"),
           "MLDEPLOY_ACT_LOGINS": str(tmp_path / "logins.txt")}
    push, canary_account, production = ACCOUNTS
    try:
        runs = release_canary_rollback(repo, kit, PIPELINE.name, env)
        r = next(runs)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert logins(tmp_path / "logins.txt") == [("push", "gcp", push), ("deploy", "gcp", production)]
        [release] = set(registry.pushes)
        assert release.startswith(f"{AR_HOST}/{PROJECT}/models/classifier@sha256:")
        assert serving(vertex) == {"production": (release, 100)}
        assert f"projects/{PROJECT}/locations/{location}/repositories/models" in vertex.repositories
        assert "### ✅ mldeploy: production deployed - `classifier`" in r.stdout
        assert sts.requests[0][:2] == ("POST", "/v1/token")  # the push login went through STS

        r = next(runs)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert logins(tmp_path / "logins.txt") == [("push", "gcp", push), ("deploy", "gcp", canary_account)]
        canary = registry.pushes[-1]
        assert canary != release and serving(vertex) == {"production": (release, 90), f"canary-pr{PR}": (canary, 10)}
        [comment] = [c for c in github.comments.values() if c["pr"] == PR]
        assert "### ✅ mldeploy: canary deployed - `classifier`" in comment["body"] and canary in comment["body"]

        r = next(runs)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert logins(tmp_path / "logins.txt") == [("deploy", "gcp", production)]
        assert serving(vertex) == {"production": (release, 100)}
        assert "### ↩️ mldeploy: rollback rolled-back - `classifier`" in r.stdout
        assert PUSH_TOKEN not in r.stdout and "standin-github-oidc-token" not in r.stdout
    finally:
        vertex.stop()
        sts.close()
        del front.registries[AR_HOST]
