"""What every AWS target shares: ECR repositories, and the preflight's plain-words diagnosis."""

from __future__ import annotations

from mldeploy.deploy.aws import ensure_ecr_repository
from tests.helpers.aws import REGISTRY, ROLE
from tests.helpers.need import need

need("moto", "the dev extra installs it")

import boto3  # noqa: E402

from tests.helpers import moto_patches  # noqa: E402


def test_an_ecr_repository_is_created_once_scanned_and_immutable(aws):
    assert ensure_ecr_repository(f"{REGISTRY}/mldeploy/classifier") is True
    (repo,) = boto3.client("ecr").describe_repositories(repositoryNames=["mldeploy/classifier"])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE" and repo["imageScanningConfiguration"] == {"scanOnPush": True}
    aws.requests.clear()
    assert ensure_ecr_repository(f"{REGISTRY}/mldeploy/classifier") is False
    assert aws.mutating() == []


def test_doctor_explains_a_refused_oidc_role_assumption(mldeploy, aws, monkeypatch, tmp_path):
    token = tmp_path / "token"
    token.write_text("eyJhbGciOi.github-oidc-token.sig")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    moto_patches.REFUSE_WEB_IDENTITY["on"] = True
    r = mldeploy("doctor", "--cloud", "aws", "--target", "sagemaker", cwd=tmp_path)
    assert r.code == 1
    assert "FAIL  identity: AssumeRoleWithWebIdentity was refused" in r.out
    assert "token.actions.githubusercontent.com:sub must match" in r.out and "id-token: write" in r.out
    assert "github-oidc-token" not in r.out + r.err

    moto_patches.REFUSE_WEB_IDENTITY["on"] = False  # the same chain, accepted: the assumed role is named
    r = mldeploy("doctor", "--cloud", "aws", "--target", "lambda", cwd=tmp_path)
    assert r.code == 0, r.out
    assert "ok    identity: arn:aws:sts::123456789012:assumed-role/mldeploy-endpoint/" in r.out
    assert "ok    lambda:ListFunctions: allowed" in r.out
