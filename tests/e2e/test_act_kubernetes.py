"""The reusable workflow with `cloud: kubernetes`, run by act from a model repo's pipeline: a release, a pull
request's canary, the rollback button, against the fake Kubernetes API server (tests/helpers/fakes/kubernetes.py)
over TLS, whose service proxy reaches a real `mldeploy serve` of a model with the example repo's signature.

No login step runs: the deploy job's own GitHub OIDC token is the cluster identity. Act has no token
endpoint, so the test serves one (ACTIONS_ID_TOKEN_REQUEST_URL, as the runner gives it to a job with
`id-token: write`) and the fake cluster accepts only the token it issued, as a cluster trusting GitHub as
issuer would. The model repo commits a kubeconfig holding no credential: the server and its CA."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from tests.helpers.act import PR, act, pipeline_repo, release_canary_rollback
from tests.helpers.aws import ACCOUNT, REGION
from tests.helpers.fakes.kubernetes import KubernetesFake
from tests.helpers.identity import Fake
from tests.helpers.models import save_bundle
from tests.helpers.need import need
from tests.helpers.server import start_server

need("kubernetes", "the kubernetes extra installs the client")

PIPELINE = Path(__file__).parent / "workflows" / "pipeline-kubernetes.yml"
AUDIENCE = "https://kubernetes.acme.example"
REQUEST_TOKEN = "runtime-request-token"   # what the runner gives the job to ask for its ID token


def job_token() -> str:
    """A GitHub-shaped OIDC token (unsigned: the fake cluster compares it whole)."""
    def part(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return ".".join((part({"alg": "RS256"}), part({"iss": "https://token.actions.githubusercontent.com",
                                                   "sub": "repo:acme/models:environment:production",
                                                   "aud": AUDIENCE, "exp": int(time.time()) + 3600}), "sig"))


@pytest.fixture(scope="module")
def cluster(tls, tmp_path_factory):
    """The fake API server; its pods run a model with the example's signature (features [batch, 16])."""
    folder = tmp_path_factory.mktemp("kube-example-model")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)], "example",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.full((16, 3), 0.1, np.float32), "W")])
    server = start_server(save_bundle(graph, folder), folder)
    fake = KubernetesFake(tls[0], "not-this-one", backend=("127.0.0.1", server.port))
    fake.model = folder / "bundle"   # type: ignore[attr-defined]
    yield fake
    fake.close()
    server.stop()


def test_the_reusable_workflow_releases_deploys_a_pr_canary_and_rolls_it_back_on_kubernetes(
        kit, tmp_path, tls, cluster, docker_env, github):
    token = job_token()
    issuer = Fake({"/token": (200, {"value": token})})
    cluster.reset()
    cluster.accept = lambda given: given == token
    repo = pipeline_repo(tmp_path, PIPELINE, f"""deploy:
  cloud: kubernetes
  endpoint: classifier
  kubernetes:
    kubeconfig: kubeconfig.yaml
    github_oidc_audience: {AUDIENCE}
    gateway: infra/public
    replicas: 1
image:
  repository: models/classifier
""")
    (repo / "kubeconfig.yaml").write_text(yaml.safe_dump({   # no credential in it: the server and its CA
        "apiVersion": "v1", "kind": "Config", "current-context": "prod",
        "clusters": [{"name": "prod", "cluster": {"server": cluster.url, "certificate-authority-data":
                                                  base64.b64encode(tls[1].read_bytes()).decode()}}],
        "users": [{"name": "github", "user": {}}],
        "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "github"}}]}))
    env = {**docker_env, "GITHUB_API_URL": github.url, "MLDEPLOY_ACT_ARTIFACTS": str(tmp_path / "artifacts"),
           "MLDEPLOY_POLL_SECONDS": "0.1",
           "ACTIONS_ID_TOKEN_REQUEST_URL": f"http://{issuer.host}/token?api-version=2.0",
           "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN}
    registry = docker_env["MLDEPLOY_IMAGE__REGISTRY"]

    def asked() -> set[str]:
        """The audiences the jobs asked the token endpoint for since the last call (with the runner's token)."""
        seen = {(p.split("audience=", 1)[-1], h["authorization"]) for _, p, h in issuer.requests}
        issuer.requests.clear()
        assert {h for _, h in seen} <= {f"Bearer {REQUEST_TOKEN}"}, seen
        return {a for a, _ in seen}

    try:
        runs = release_canary_rollback(repo, kit, PIPELINE.name, env)
        r = next(runs)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        [(slot, (release, weight))] = cluster.serving("classifier").items()
        assert (slot, weight) == ("production", 100) and release.startswith(f"{registry}/models/classifier@sha256:")
        assert asked() == {"https%3A%2F%2Fkubernetes.acme.example"}
        assert cluster.tokens and set(cluster.tokens) == {token}   # every request carried the job's token
        assert cluster.smokes[-1][:2] == ("classifier-production", release)   # the real server answered
        assert "### ✅ mldeploy: production deployed - `classifier`" in r.stdout
        assert token not in r.stdout   # masked

        r = next(runs)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        serving = cluster.serving("classifier")
        canary = serving[f"canary-pr{PR}"][0]
        assert canary != release and serving == {"production": (release, 90), f"canary-pr{PR}": (canary, 10)}
        assert cluster.smokes[-1][:2] == (f"classifier-canary-pr{PR}", canary)   # alone, before the weights moved
        [comment] = [c for c in github.comments.values() if c["pr"] == PR]
        assert "### ✅ mldeploy: canary deployed - `classifier`" in comment["body"] and canary in comment["body"]

        r = next(runs)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert cluster.serving("classifier") == {"production": (release, 100)}
        assert f"classifier-canary-pr{PR}" not in cluster.names("deployments")
        # the rollback step asked for the target's own extra (under act every job shares one venv, so
        # a missing client would not show; on GitHub each job is a fresh machine)
        assert "extra kubernetes" in r.stdout
        assert asked() == {"https%3A%2F%2Fkubernetes.acme.example"} and set(cluster.tokens) == {token}
        assert "### ↩️ mldeploy: rollback rolled-back - `classifier`" in r.stdout
    finally:
        issuer.close()


ROLLBACK_EKS = Path(__file__).parent / "workflows" / "rollback-eks.yml"


def test_the_rollback_button_on_eks_installs_the_eks_extra_and_reaches_the_cluster_with_the_role(
        kit, tmp_path, tls, cluster, aws, moto_server, mldeploy, monkeypatch):
    """`target: eks` needs the kubernetes client beside boto3 (the eks extra, not the cloud's aws): the
    rollback button's command step installs the target's, and the EKS login (DescribeCluster in moto,
    pointing at the fake cluster; a presigned STS token from the stand-in role's credentials) reaches it.
    The slots are made in-process first: the button builds nothing, so this run is short."""
    import boto3
    from moto.eks.models import eks_backends

    cluster.reset()
    cluster.accept = lambda given: given.startswith("k8s-aws-v1.")   # test_kubernetes_eks.py checks its shape
    boto3.client("eks").create_cluster(name="ml-prod", roleArn=f"arn:aws:iam::{ACCOUNT}:role/eks",
                                       resourcesVpcConfig={"subnetIds": ["subnet-1"]})
    made = eks_backends[ACCOUNT][REGION].clusters["ml-prod"]
    made.endpoint, made.certificate_authority = cluster.url, {"data": base64.b64encode(tls[1].read_bytes()).decode()}
    repo = tmp_path / "model-repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / ".github" / "workflows" / ROLLBACK_EKS.name).write_text(ROLLBACK_EKS.read_text())
    (repo / "mldeploy.yaml").write_text(f"""deploy:
  cloud: aws
  target: eks
  endpoint: classifier
  region: {REGION}
  aws:
    eks: {{cluster: ml-prod}}
  kubernetes:
    gateway: infra/public
    replicas: 1
""")
    first, second = (f"127.0.0.1:5000/models/classifier@sha256:{c * 64}" for c in "ab")
    from mldeploy.deploy import kubernetes

    monkeypatch.setattr(kubernetes, "POLL_SECONDS", 0.0)
    for image, args in ((first, ["--stage", "production"]), (second, ["--traffic", "10", "--pr", str(PR)])):
        r = mldeploy("deploy", "--bundle", cluster.model, "--image", image, *args, cwd=repo)
        assert r.code == 0, r.err
    assert cluster.serving("classifier") == {"production": (first, 90), f"canary-pr{PR}": (second, 10)}
    cluster.tokens.clear()

    r = act(repo, kit, ROLLBACK_EKS.name, {"AWS_ENDPOINT_URL": moto_server[1], "MLDEPLOY_POLL_SECONDS": "0.1"},
            event="workflow_dispatch")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "extra eks" in r.stdout   # installed, or already there from an earlier run
    assert cluster.serving("classifier") == {"production": (first, 100)}
    assert cluster.tokens and all(t.startswith("k8s-aws-v1.") for t in cluster.tokens)
    assert "### ↩️ mldeploy: rollback rolled-back - `classifier`" in r.stdout
