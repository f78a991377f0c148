"""`deploy.cloud: aws`, `deploy.target: eks`: the kubernetes target reaching an EKS cluster with the job's AWS
credentials and no kubeconfig. moto answers DescribeCluster (its cluster's endpoint and CA pointed at the fake
API server of tests/helpers/fakes/kubernetes.py, which accepts only a well-formed EKS token)."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.helpers.aws import ACCOUNT, REGION
from tests.helpers.cli import deploy, one_line
from tests.helpers.kubernetes import ENDPOINT, A, B
from tests.helpers.need import need

need("kubernetes", "the kubernetes extra installs the client")
need("boto3", "the aws extra installs it")
CLUSTER = "ml-prod"
CONFIG = f"""
deploy:
  cloud: aws
  target: eks
  endpoint: {ENDPOINT}
  region: {REGION}
  aws:
    eks: {{cluster: {CLUSTER}}}
  kubernetes:
    gateway: infra/public
"""


def eks_claims(token: str) -> dict[str, list[str]] | None:
    """What an EKS token presigns (as aws-iam-authenticator checks it), or None when it is not one."""
    if not token.startswith("k8s-aws-v1."):
        return None
    body = token.removeprefix("k8s-aws-v1.")
    url = urlsplit(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode())
    if url.scheme != "https" or url.netloc != f"sts.{REGION}.amazonaws.com":
        return None
    return parse_qs(url.query)


@pytest.fixture
def eks(aws, kube, tls, tmp_path, monkeypatch):
    """An ACTIVE cluster in moto whose endpoint and CA are the fake API server's; no kubeconfig."""
    import boto3
    from moto.eks.models import eks_backends

    boto3.client("eks").create_cluster(name=CLUSTER, roleArn=f"arn:aws:iam::{ACCOUNT}:role/eks",
                                       resourcesVpcConfig={"subnetIds": ["subnet-1"]})
    cluster = eks_backends[ACCOUNT][REGION].clusters[CLUSTER]
    cluster.endpoint = kube.url
    cluster.certificate_authority = {"data": base64.b64encode(tls[1].read_bytes()).decode()}
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))   # none: the target must not need one

    def good(token: str) -> bool:
        claims = eks_claims(token)
        return bool(claims) and claims["Action"] == ["GetCallerIdentity"] and claims["X-Amz-Expires"] == ["60"] \
            and "x-k8s-aws-id" in claims["X-Amz-SignedHeaders"][0].split(";")

    kube.accept = good
    (tmp_path / "mldeploy.yaml").write_text(CONFIG)
    return kube


def test_deploy_promote_and_doctor_with_the_jobs_aws_credentials(mldeploy, eks, bundle, tmp_path):
    project = (tmp_path, bundle)
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    assert eks.serving(ENDPOINT) == {"production": (A, 100)}
    assert eks.tokens and all(eks_claims(t) for t in eks.tokens)
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
    assert mldeploy("promote", cwd=tmp_path).code == 0
    assert eks.serving(ENDPOINT) == {"production": (B, 100)}

    r = mldeploy("doctor", cwd=tmp_path)
    assert "eks:DescribeCluster" in r.out and "Kubernetes v1.32.0-fake" in r.out, r.out

    eks.accept = None   # a token the cluster does not take
    r = mldeploy("status", cwd=tmp_path)
    assert r.code == 2 and one_line(r) and "refused" in r.err, r.err


def test_a_cluster_that_does_not_exist_is_one_line(mldeploy, eks, bundle, tmp_path):
    (tmp_path / "mldeploy.yaml").write_text(CONFIG.replace(CLUSTER, "absent"))
    r = deploy(mldeploy, (tmp_path, bundle), A)
    assert r.code == 2 and one_line(r) and f"no EKS cluster absent in {REGION}" in r.err, r.err
    assert eks.requests == []
