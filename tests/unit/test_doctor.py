"""`mldeploy doctor --trust`: the docs' trust setup (docs/security.md), per cloud, against the OIDC token claims of
every job of the reusable workflow (and of the jobs that must get nothing), through the real CLI.
Setups with the holes the docs' earlier policy had fail in one line, exit 1."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers.paths import ROOT

KIT = "acme/ml-deploy/.github/workflows/deploy.yml@refs/tags/v2"
REPO = "acme/models"


def readme_trust(cloud: str) -> str:
    """The docs' trust block for `cloud`, as it stands."""
    [block] = re.findall(rf"```yaml\n(# mldeploy doctor --trust: {cloud}\n.*?)```",
                         (ROOT / "docs" / "security.md").read_text(), re.S)
    return block


def token(event: str, ref: str, environment: str | None = None, workflow: str = KIT,
          default_subject: bool = False) -> dict:
    """A GitHub Actions OIDC token's claims, with the docs' subject template (repo, context,
    job_workflow_ref) unless `default_subject`."""
    context = (f"environment:{environment}" if environment else
               "pull_request" if event in ("pull_request", "pull_request_target") else f"ref:{ref}")
    sub = f"repo:{REPO}:{context}" + ("" if default_subject else f":job_workflow_ref:{workflow}")
    claims = {"sub": sub, "repository": REPO, "ref": ref, "event_name": event, "job_workflow_ref": workflow,
              "workflow_ref": f"{REPO}/.github/workflows/x.yml@{ref}", "aud": "sts.amazonaws.com",
              "iss": "https://token.actions.githubusercontent.com"}
    if environment:
        claims["environment"] = environment
    return claims


PR = token("pull_request", "refs/pull/7/merge")
JOBS = {  # job of the reusable workflow (and stage) -> its claims, the identity it uses, what it may assume
    "push, a pull request": (PR, "push", "push, canary"),
    "deploy, canary": (PR, "canary", "push, canary"),
    "deploy, teardown (pr-closed)": (PR, "canary", "push, canary"),
    "push, a release tag": (token("push", "refs/tags/v1.2.3"), "push", "push"),
    "deploy, production (release tag)": (token("push", "refs/tags/v1.2.3", "production"), "production", "production"),
    "deploy, promote": (token("workflow_dispatch", "refs/heads/main", "production"), "production", "production"),
    "deploy, rollback": (token("workflow_dispatch", "refs/heads/main", "production"), "production", "production"),
}
CLOUDS = ("aws", "gcp", "azure")


@pytest.fixture
def doctor(mldeploy, tmp_path):
    def run(trust: str, claims: dict, *more: str):
        (tmp_path / "trust.yaml").write_text(trust)
        (tmp_path / "claims.json").write_text(json.dumps(claims))
        return mldeploy("doctor", "--trust", tmp_path / "trust.yaml", "--claims", tmp_path / "claims.json", *more)

    return run


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("job", JOBS)
def test_each_job_may_assume_its_own_identity_and_no_more(doctor, cloud, job):
    claims, identity, may = JOBS[job]
    r = doctor(readme_trust(cloud), claims, "--identity", identity)
    assert r.code == 0, r.err
    assert f"doctor: {claims['sub']} may assume: {may} ({cloud};" in r.out


@pytest.mark.parametrize("cloud", CLOUDS)
def test_a_job_the_pull_request_writes_itself_may_assume_nothing(doctor, cloud):
    """The build job has no token at all; a job a pull request adds to its own workflow file has one,
    with the same repository and event, but its own job_workflow_ref."""
    own = token("pull_request", "refs/pull/7/merge", workflow=f"{REPO}/.github/workflows/pr-canary.yml@refs/pull/7/merge")
    r = doctor(readme_trust(cloud), own)
    assert r.code == 0 and "may assume: no identity" in r.out, r.out + r.err
    r = doctor(readme_trust(cloud), own, "--identity", "canary")
    assert r.code == 1 and "may not assume the canary identity" in r.err


@pytest.mark.parametrize("cloud", CLOUDS)
def test_a_pull_request_job_never_gets_production(doctor, cloud):
    """Asking for it fails; and so does a pull request's job in the production environment, which
    only the environment's protection rules (docs/security.md: Trust, 2) keep from existing."""
    r = doctor(readme_trust(cloud), PR, "--identity", "production")
    assert r.code == 1 and "may not assume the production identity" in r.err
    r = doctor(readme_trust(cloud), token("pull_request", "refs/pull/7/merge", "production"))
    assert r.code == 1 and "a pull_request job may assume the production identity" in r.err
    assert len(r.err.strip().splitlines()) == 1


EARLIER_AWS = """cloud: aws
identities:
  %s:
    trust_policy: {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
      "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"},
      "Action": "sts:AssumeRoleWithWebIdentity",
      "Condition": {"StringEquals": {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"},
        "StringLike": {"token.actions.githubusercontent.com:sub": %s}}}]}
"""


def test_the_readmes_earlier_aws_policy_fails_one_role_for_main_and_pull_requests(doctor):
    one_role = EARLIER_AWS % ("production", json.dumps([f"repo:{REPO}:ref:refs/heads/main", f"repo:{REPO}:pull_request"]))
    r = doctor(one_role, token("pull_request", "refs/pull/7/merge", default_subject=True))
    assert r.code == 1 and r.err.count("\n") == 1
    assert "a pull_request job may assume the production identity" in r.err
    # and from main, where it works, the setup is still a hole
    r = doctor(one_role, token("workflow_dispatch", "refs/heads/main", default_subject=True))
    assert r.code == 1 and "outside the kit's workflow" in r.err


@pytest.mark.parametrize("cloud, trust", [
    ("aws", EARLIER_AWS % ("canary", json.dumps(f"repo:{REPO}:pull_request"))),
    ("gcp", """cloud: gcp
pool:
  attribute_condition: assertion.repository == 'acme/models'
  attribute_mapping: {google.subject: assertion.sub}
identities:
  canary:
    members: ["principal://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/github/subject/repo:acme/models:pull_request"]
"""),
    ("azure", """cloud: azure
identities:
  canary:
    federated_credentials: [{subject: "repo:acme/models:pull_request"}]
"""),
])
def test_a_pull_request_identity_with_the_default_subject_fails(doctor, cloud, trust):
    """With GitHub's default subject, any job a pull request writes gets the kit's subject."""
    r = doctor(trust, token("pull_request", "refs/pull/7/merge", default_subject=True), "--identity", "canary")
    assert r.code == 1, r.out
    assert "the canary identity trusts jobs outside the kit's workflow" in r.err


def test_the_gcp_condition_without_the_kits_workflow_fails(doctor):
    trust = readme_trust("gcp").replace(
        " &&\n    assertion.job_workflow_ref.startsWith('acme/ml-deploy/.github/workflows/deploy.yml@')", "")
    assert trust != readme_trust("gcp")
    r = doctor(trust, PR, "--identity", "canary")
    assert r.code == 1 and "trusts jobs outside the kit's workflow" in r.err


def test_bad_input_is_exit_2_in_one_line(doctor, mldeploy, tmp_path):
    r = doctor("cloud: openstack\nidentities: {}\n", PR)
    assert r.code == 2 and "expected `cloud: aws|gcp|azure`" in r.err
    r = doctor(readme_trust("aws"), {"sub": "repo:acme/models:pull_request"})
    assert r.code == 2 and "the token claims lack repository, ref, event_name, job_workflow_ref" in r.err
    (tmp_path / "t.yaml").write_text(readme_trust("aws"))
    r = mldeploy("doctor", "--trust", tmp_path / "t.yaml", "--claims", tmp_path / "missing.json")
    assert r.code == 2 and "cannot read the claims" in r.err
    r = mldeploy("doctor", "--identity", "canary")
    assert r.code == 2 and "give it with --trust FILE" in r.err


def test_a_jwt_is_read_for_its_claims(doctor, mldeploy, tmp_path, monkeypatch):
    import base64

    part = base64.urlsafe_b64encode(json.dumps(PR).encode()).decode().rstrip("=")
    (tmp_path / "trust.yaml").write_text(readme_trust("azure"))
    (tmp_path / "token.jwt").write_text(f"eyJhbGciOiJSUzI1NiJ9.{part}.c2lnbmF0dXJl\n")
    r = mldeploy("doctor", "--trust", tmp_path / "trust.yaml", "--claims", tmp_path / "token.jwt")
    assert r.code == 0 and "may assume: push, canary" in r.out, r.err
    monkeypatch.delenv("ACTIONS_ID_TOKEN_REQUEST_URL", raising=False)
    r = mldeploy("doctor", "--trust", tmp_path / "trust.yaml")
    assert r.code == 2 and "no OIDC token here" in r.err
