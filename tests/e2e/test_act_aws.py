"""The deploy-endpoint action with `cloud: aws`, run by act from a model repo's workflow against moto.

OIDC cannot happen here: aws-actions/configure-aws-credentials is replaced by a stand-in that
exports (masked) short-lived credentials the way the real action does after assuming the role.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from tests.helpers.act import (
    KIT_WORKFLOW,
    PR,
    act,
    logins,
    pipeline_repo,
    release_canary_rollback,
    seen_by_the_model_code,
    spy_in_the_model_code,
)
from tests.helpers.aws import ROLE, ecr_image
from tests.helpers.aws import sagemaker_serving as serving
from tests.helpers.cloud_registries import ECR_HOST, Registry
from tests.helpers.need import need

need("moto", "the dev extra installs it")


@pytest.fixture
def project(sagemaker_project):
    """A model repo configured for SageMaker, and two images in ECR (tests/helpers/aws.py)."""
    return sagemaker_project


WORKFLOW = Path(__file__).parent / "workflows" / "deploy-aws.yml"


def test_deploy_endpoint_action_deploys_production_then_a_pr_canary_to_sagemaker(kit, tmp_path, aws, moto_server,
                                                                                  bundle):
    repo = tmp_path / "model-repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(WORKFLOW, repo / ".github" / "workflows" / WORKFLOW.name)
    shutil.copytree(bundle, repo / "bundle")
    (repo / "mldeploy.yaml").write_text(f"deploy:\n  endpoint: classifier\n  aws:\n    role: {ROLE}\n")
    first, second = (ecr_image("models/classifier", c * 64) for c in "de")
    env = {"AWS_ENDPOINT_URL": moto_server[1], "FIRST_IMAGE": first, "SECOND_IMAGE": second,
           "MLDEPLOY_POLL_SECONDS": "0.1"}
    r = act(repo, kit, WORKFLOW.name, env, event="workflow_dispatch")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert serving() == {"production": (first, 90), "canary-pr7": (second, 10)}
    log = r.stdout
    assert "### Deploy plan: sagemaker `classifier`" in log  # the step summary
    plan = log.split("canary plan:", 1)[1]  # the plan output reached the next step
    assert '"stage": "canary"' in plan and '"canary-pr7": 10' in plan.split('"traffic_after"', 1)[1]
    assert "canary-pr7  10%  healthy" in log and "Job succeeded" in log
    assert "stand-in-secret-key" not in log  # the credential was masked


PIPELINE = Path(__file__).parent / "workflows" / "pipeline-aws.yml"


def ecr(registries) -> Registry:
    """ECR's registry host as it behaves with ECR's API (moto): the login GetAuthorizationToken
    issued, pushes only into repositories the API created, refuses a tag that an immutable repository
    has, and DescribeImages then knows the image by the registry's digest."""
    import boto3

    api = boto3.client("ecr")

    def login() -> tuple[str, str]:
        token = api.get_authorization_token()["authorizationData"][0]["authorizationToken"]
        user, password = base64.b64decode(token).decode().split(":", 1)
        return user, password

    def has_repository(name: str) -> bool:
        try:
            return bool(api.describe_repositories(repositoryNames=[name])["repositories"])
        except api.exceptions.RepositoryNotFoundException:
            return False

    def pushed(name: str, ref: str, digest: str, manifest: bytes, media_type: str) -> None:
        tag = {} if ref.startswith("sha256:") else {"imageTag": ref}
        try:
            api.put_image(repositoryName=name, imageManifest=manifest.decode(), imageManifestMediaType=media_type,
                          imageDigest=digest, **tag)
        except api.exceptions.ImageAlreadyExistsException:
            pass

    def tag_taken(name: str, tag: str) -> bool:
        if api.describe_repositories(repositoryNames=[name])["repositories"][0]["imageTagMutability"] != "IMMUTABLE":
            return False
        try:
            return bool(api.describe_images(repositoryName=name, imageIds=[{"imageTag": tag}])["imageDetails"])
        except api.exceptions.ImageNotFoundException:
            return False

    registries[ECR_HOST] = Registry(login, has_repository, pushed, tag_taken=tag_taken)
    return registries[ECR_HOST]


def test_the_reusable_workflow_releases_deploys_a_pr_canary_and_rolls_it_back_on_sagemaker(
        kit, tmp_path, aws, moto_server, cloud_registries, docker_env, github):
    """The whole path on AWS: the push job pushes to ECR (a TLS registry by ECR's name that wants
    ECR's login), the deploy job deploys that digest to SageMaker (moto), the PR gets its comment.
    Each job gets only its own identity: the model repo's code (convert's factory, which here writes
    down every cloud variable it sees) none at all; a pull request's deploy the canary role."""
    import boto3

    front, _ = cloud_registries
    registry = ecr(front.registries)
    repo = pipeline_repo(tmp_path, PIPELINE, f"""deploy:
  cloud: aws
  target: sagemaker
  endpoint: classifier
  aws:
    role: {ROLE}
image:
  repository: models/classifier
""")
    spy, record = tmp_path / "seen-by-the-model-code.jsonl", tmp_path / "logins.txt"
    spy_in_the_model_code(repo, spy)
    env = {**docker_env, "MLDEPLOY_IMAGE__REGISTRY": ECR_HOST, "AWS_ENDPOINT_URL": moto_server[1],
           "MLDEPLOY_POLL_SECONDS": "0.1", "GITHUB_API_URL": github.url,
           "MLDEPLOY_ACT_ARTIFACTS": str(tmp_path / "artifacts"), "MLDEPLOY_ACT_LOGINS": str(record),
           # the push job attests each image (the stand-in stores it at the fake GitHub), and the deploy
           # job deploys only what the kit's workflow attested in acme/models
           "MLDEPLOY_DEPLOY__REQUIRE_PROVENANCE": "true", "MLDEPLOY_SIGNER_WORKFLOW": KIT_WORKFLOW}
    role = "arn:aws:iam::123456789012:role/mldeploy-{}".format

    def no_credential_in_the_model_code():
        seen = seen_by_the_model_code(spy)  # each time convert ran the factory, it saw:
        assert seen and all("STANDIN_LOGIN" not in each and not {"ASIASTANDIN", "stand-in-secret-key",
                            "stand-in-session-token"} & set(each.values()) for each in seen), seen

    runs = release_canary_rollback(repo, kit, PIPELINE.name, env)
    r = next(runs)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    no_credential_in_the_model_code()
    assert logins(record) == [("push", "aws", role("push")), ("deploy", "aws", role("production"))]
    [release] = set(registry.pushes)  # one image, pushed under each of its tags
    assert serving() == {"production": (release, 100)}
    [described] = boto3.client("ecr").describe_images(
        repositoryName="models/classifier", imageIds=[{"imageDigest": release.split("@")[1]}])["imageDetails"]
    assert "v1.0.0" in described["imageTags"]  # the release's tag, next to the model and git ones
    assert "### ✅ mldeploy: production deployed - `classifier`" in r.stdout
    assert f"provenance: {release.split('@')[1]} was built by {KIT_WORKFLOW}@refs/tags/v2 from acme/models" in r.stdout
    assert "stand-in-secret-key" not in r.stdout

    r = next(runs)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    no_credential_in_the_model_code()
    assert logins(record) == [("push", "aws", role("push")), ("deploy", "aws", role("canary"))]
    canary = registry.pushes[-1]
    assert canary != release and serving() == {"production": (release, 90), f"canary-pr{PR}": (canary, 10)}
    [comment] = [c for c in github.comments.values() if c["pr"] == PR]
    assert "### ✅ mldeploy: canary deployed - `classifier`" in comment["body"] and canary in comment["body"]

    r = next(runs)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert logins(record) == [("deploy", "aws", role("production"))]
    assert serving() == {"production": (release, 100)}
    assert "### ↩️ mldeploy: rollback rolled-back - `classifier`" in r.stdout


def test_the_reusable_workflow_promotes_and_rolls_back_on_sagemaker(kit, tmp_path, mldeploy, project, moto_server):
    """Promote (the very image the canary served, nothing rebuilt), then roll back a canary."""
    folder, bundle, (first, second) = project
    repo = folder  # the project is a model repo: mldeploy.yaml for SageMaker
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(PIPELINE, repo / ".github" / "workflows" / PIPELINE.name)
    for image, stage in ((first, "production"), (second, "canary")):
        r = mldeploy("deploy", "--bundle", bundle, "--image", image, "--stage", stage, "--traffic", "10", cwd=repo)
        assert r.code == 0, r.err
    env = {"AWS_ENDPOINT_URL": moto_server[1], "MLDEPLOY_POLL_SECONDS": "0.1"}

    r = act(repo, kit, PIPELINE.name, env, event="workflow_dispatch", payload={"inputs": {"stage": "promote"}})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert serving() == {"production": (second, 100)}  # the canary's very image, nothing rebuilt
    assert "### ✅ mldeploy: promote promoted - `classifier`" in r.stdout
    assert "Build the serving image" not in r.stdout and "stand-in-secret-key" not in r.stdout

    assert mldeploy("deploy", "--bundle", bundle, "--image", first, "--traffic", "10", cwd=repo).code == 0
    r = act(repo, kit, PIPELINE.name, env, event="workflow_dispatch", payload={"inputs": {"stage": "rollback"}})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert serving() == {"production": (second, 100)}
    assert "### ↩️ mldeploy: rollback rolled-back - `classifier`" in r.stdout


def test_a_rebuild_pushes_into_immutable_ecr_and_leaves_the_tags_that_exist(
        tmp_path, monkeypatch, mldeploy, aws, cloud_registries, docker_env, bundle):
    """ECR refuses a tag that exists in an immutable repository (ours are), even on the same image:
    a re-run, an unchanged model or a new kit version must still push, and deploy by digest."""
    import boto3

    front, _ = cloud_registries
    registry = ecr(front.registries)
    for name, value in docker_env.items():
        monkeypatch.setenv(name, value)
    model = shutil.copytree(bundle, tmp_path / "bundle")

    def push(*args: str):
        return mldeploy("build", "--bundle", model, "--push", "--registry", ECR_HOST,
                        "--repository", "models/immutable", *args)

    def image_tags() -> dict[str, set[str]]:
        images = boto3.client("ecr").describe_images(repositoryName="models/immutable")["imageDetails"]
        return {i["imageDigest"]: set(i.get("imageTags", [])) for i in images}

    first = push()
    assert first.code == 0, first.out + first.err
    digest = registry.pushes[-1].split("@")[1]
    [tags] = image_tags().values()
    assert {t.split("-")[0] for t in tags} == {"image", "model"}, tags

    again = push()  # the very same image: every tag exists
    assert again.code == 0, again.out + again.err
    assert "exists and the repository's tags are immutable: it stays as it is" in again.out
    assert "warning" not in again.err and f"@{digest}" in again.out and image_tags() == {digest: tags}

    (tmp_path / "mldeploy.yaml").write_text('image: {environment: {MLDEPLOY_ACCESS_LOG: "true"}}\n')
    other = push("--config", tmp_path / "mldeploy.yaml")  # another image of the same model
    assert other.code == 0, other.out + other.err
    new = registry.pushes[-1].split("@")[1]
    assert new != digest and f"@{new}" in other.out
    [model_tag] = [t for t in tags if t.startswith("model-")]
    assert f"models/immutable:{model_tag} names another image ({digest})" in other.err, other.err
    after = image_tags()
    assert after[digest] == tags and [t.split("-")[0] for t in after[new]] == ["image"], after
