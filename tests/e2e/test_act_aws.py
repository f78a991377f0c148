"""The deploy-endpoint action with `cloud: aws`, run by act from a model repo's workflow against moto.

OIDC cannot happen here: aws-actions/configure-aws-credentials is replaced by a stand-in that
exports (masked) short-lived credentials the way the real action does after assuming the role.
"""

from __future__ import annotations

import base64
import shutil
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import aws_ecs
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
from tests.helpers.aws import ACCOUNT, REGION, ROLE, ecr_image
from tests.helpers.aws import sagemaker_serving as serving
from tests.helpers.cloud_registries import ECR_HOST, Registry
from tests.helpers.need import need

need("moto", "the dev extra installs it")

from tests.helpers import moto_ecs  # noqa: E402  (patches moto's ECS in this process, where its server runs)


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


def sagemaker_world(request) -> tuple[str, Callable[[], dict]]:
    """mldeploy.yaml's deploy section for SageMaker (the endpoint needs nothing made first)."""
    return f"deploy:\n  cloud: aws\n  target: sagemaker\n  endpoint: classifier\n  aws:\n    role: {ROLE}\n", serving


def ecs_world(request) -> tuple[str, Callable[[], dict]]:
    """The cluster, roles and network docs/targets/ecs.md has the user make, in moto; the stand-in ALB
    in front of the listener (the smoke request goes through it); moto_ecs's patches run the
    deployments, in this process, where the threaded moto server the act jobs talk to runs."""
    net = aws_ecs.setup()
    alb = moto_ecs.Alb(ACCOUNT, REGION, net["listener"])
    request.addfinalizer(alb.close)
    return aws_ecs.config(net, alb.url).lstrip(), lambda: aws_ecs.serving(net)


FRONT = """    lambda:
      api_gateway:
        api_keys: [partner-a]
        throttle_rate: 5
        throttle_burst: 10
"""


def lambda_world(request) -> tuple[str, Callable[[], dict]]:
    """A Lambda function behind its API Gateway front: the execution role in moto; invoking the function
    runs our handler (moto_lambda) on a bundle of the example model's signature (16 features), which the
    smoke request is made for. Slots are read from the versions the alias live weights."""
    import boto3
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from tests.helpers import moto_lambda
    from tests.helpers.models import save_bundle

    weights = numpy_helper.from_array(np.ones((16, 3), "float32"), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["features", "W"], ["logits"])], "example",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], [weights])
    moto_lambda.reset(save_bundle(graph, request.getfixturevalue("tmp_path") / "example-bundle"))
    boto3.client("iam").create_role(RoleName=ROLE.rsplit("/", 1)[-1], AssumeRolePolicyDocument="{}")

    def serving() -> dict[str, tuple[str, int]]:
        lam = boto3.client("lambda")
        alias = lam.get_alias(FunctionName="classifier", Name="live")
        extra = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        out = {}
        for version, pct in {alias["FunctionVersion"]: 100 - round(100 * sum(extra.values())),
                             **{v: round(100 * w) for v, w in extra.items()}}.items():
            fn = lam.get_function(FunctionName="classifier", Qualifier=version)
            slot = fn["Configuration"]["Description"].split("slot=", 1)[1].split()[0]  # mldeploy slot=S image=D
            out[slot] = (fn["Code"]["ImageUri"], pct)
        return out

    deploy = f"deploy:\n  cloud: aws\n  target: lambda\n  endpoint: classifier\n  aws:\n    role: {ROLE}\n"
    return deploy + FRONT, serving


def api_front() -> tuple[dict[str, str], bool]:
    """The REST API's stages -> the alias or version each invokes, and whether the method wants a key."""
    import boto3

    api = boto3.client("apigateway")
    rest = next(a for a in api.get_rest_apis()["items"] if a["name"] == "mldeploy-classifier")
    proxy = next(r for r in api.get_resources(restApiId=rest["id"])["items"] if r.get("pathPart") == "{proxy+}")
    method = api.get_method(restApiId=rest["id"], resourceId=proxy["id"], httpMethod="ANY")
    return ({s["stageName"]: s["variables"]["alias"] for s in api.get_stages(restApiId=rest["id"])["item"]},
            method["apiKeyRequired"])


# per target: its deploy section and what serves {slot: (image, %)}, after its world is made in moto
TARGETS = {"sagemaker": sagemaker_world, "ecs": ecs_world, "lambda": lambda_world}


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_reusable_workflow_releases_deploys_a_pr_canary_and_rolls_it_back_on_aws(
        kit, tmp_path, aws, moto_server, cloud_registries, docker_env, github, target, request):
    """The whole path on AWS: the push job pushes to ECR (a TLS registry by ECR's name that wants
    ECR's login), the deploy job deploys that digest to SageMaker or ECS (moto), the PR gets its
    comment. Each job gets only its own identity: the model repo's code (convert's factory, which here
    writes down every cloud variable it sees) none at all; a pull request's deploy the canary role.
    ECS and Lambda (behind its API Gateway front: stages and keys read back) stop after the PR's
    canary: the rollback run is the same workflow path, and CI's minutes go to what differs."""
    import boto3

    front, ca = cloud_registries
    registry = ecr(front.registries)
    deploy, serving = TARGETS[target](request)
    trusted = tmp_path / "ca-bundle.pem"  # the deploy job reads the image's platform from the ECR front
    system = Path(ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile)
    trusted.write_bytes((system.read_bytes() if system.is_file() else b"") + ca.read_bytes())
    repo = pipeline_repo(tmp_path, PIPELINE, deploy + "image:\n  repository: models/classifier\n")
    spy, record = tmp_path / "seen-by-the-model-code.jsonl", tmp_path / "logins.txt"
    spy_in_the_model_code(repo, spy)
    env = {**docker_env, "MLDEPLOY_IMAGE__REGISTRY": ECR_HOST, "AWS_ENDPOINT_URL": moto_server[1],
           "MLDEPLOY_POLL_SECONDS": "0.1", "GITHUB_API_URL": github.url,
           "MLDEPLOY_ACT_ARTIFACTS": str(tmp_path / "artifacts"), "MLDEPLOY_ACT_LOGINS": str(record),
           # the push job attests each image (the stand-in stores it at the fake GitHub), and the deploy
           # job deploys only what the kit's workflow attested in acme/models
           "MLDEPLOY_DEPLOY__REQUIRE_PROVENANCE": "true", "MLDEPLOY_SIGNER_WORKFLOW": KIT_WORKFLOW,
           "SSL_CERT_FILE": str(trusted)}
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
    if target == "lambda":  # the front the release made: the production stage invokes the alias, keys wanted
        assert api_front() == ({"production": "live"}, True)

    r = next(runs)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    no_credential_in_the_model_code()
    assert logins(record) == [("push", "aws", role("push")), ("deploy", "aws", role("canary"))]
    canary = registry.pushes[-1]
    assert canary != release and serving() == {"production": (release, 90), f"canary-pr{PR}": (canary, 10)}
    [comment] = [c for c in github.comments.values() if c["pr"] == PR]
    assert "### ✅ mldeploy: canary deployed - `classifier`" in comment["body"] and canary in comment["body"]
    if target == "ecs":  # checked through its own header rule before the weights moved
        assert moto_ecs.HITS[-1] == (f"canary-pr{PR}", canary.split("@")[1])
        # the image's platform was read from ECR (its login, the manifest, the config blob) before the plan
        assert "Image platform: linux/amd64 (linux/amd64 in the registry)" in r.stdout, r.stdout[-6000:]
        return
    if target == "lambda":  # the PR's stage invokes its canary's version, the split stays on the alias
        from tests.helpers import moto_lambda

        version = next(v for v, image, _ in reversed(moto_lambda.INVOCATIONS) if image == canary)  # its smoke
        assert api_front() == ({"production": "live", f"canary-pr{PR}": version}, True)
        return

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
