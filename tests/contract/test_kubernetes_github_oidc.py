"""`deploy.kubernetes.github_oidc_audience`: the real `kubernetes` client against the fake API server, with the
job's own GitHub OIDC token (from a fake of the runner's ACTIONS_ID_TOKEN_REQUEST_URL) as the bearer instead of
the kubeconfig's user, fetched again as it nears its expiry."""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.helpers.cli import deploy, one_line
from tests.helpers.identity import Fake
from tests.helpers.kubernetes import CONFIG, ENDPOINT, A
from tests.helpers.need import need

need("kubernetes", "the kubernetes extra installs the client")

AUDIENCE = "https://kubernetes.acme.example"
REQUEST_TOKEN = "runtime-request-token"


def jwt(expires_in: int) -> str:
    """A GitHub-shaped OIDC token (unsigned: the fake API server compares it whole)."""
    def part(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return ".".join((part({"alg": "RS256"}), part({"iss": "https://token.actions.githubusercontent.com",
                                                   "sub": "repo:acme/models:environment:production",
                                                   "aud": AUDIENCE, "exp": int(time.time()) + expires_in}), "sig"))


@pytest.fixture
def oidc(kube, tmp_path, monkeypatch):
    """The runner's token endpoint, and a project whose config asks for the job's token; the cluster
    accepts only what that endpoint issued."""
    issued = Fake({})
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"http://{issued.host}/token?api-version=2.0")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", REQUEST_TOKEN)
    kube.accept = lambda token: token == issued.routes.get("/token", (0, {}))[1].get("value")
    (tmp_path / "mldeploy.yaml").write_text(CONFIG + f"    github_oidc_audience: {AUDIENCE}\n")
    yield issued
    issued.close()


def test_the_bearer_is_the_jobs_oidc_token_for_the_audience(mldeploy, oidc, kube, tmp_path, bundle):
    token = jwt(3600)
    oidc.routes["/token"] = (200, {"value": token})
    r = deploy(mldeploy, (tmp_path, bundle), A)
    assert r.code == 0, r.err
    assert kube.serving(ENDPOINT) == {"production": (A, 100)}
    assert kube.tokens and set(kube.tokens) == {token}   # never the kubeconfig's own token
    [(method, path, headers)] = oidc.requests            # one token, valid for an hour
    assert method == "GET" and path == "/token?api-version=2.0&audience=https%3A%2F%2Fkubernetes.acme.example"
    assert headers["authorization"] == f"Bearer {REQUEST_TOKEN}"


def test_a_token_near_its_expiry_is_fetched_again(mldeploy, oidc, kube, tmp_path, bundle):
    oidc.routes["/token"] = (200, {"value": jwt(30)})   # within the minute's margin: every request asks again
    r = deploy(mldeploy, (tmp_path, bundle), A)
    assert r.code == 0, r.err
    assert len(oidc.requests) > len(kube.requests) > 5


def test_no_token_here_is_one_line_and_calls_nothing(mldeploy, oidc, kube, tmp_path, bundle, monkeypatch):
    monkeypatch.delenv("ACTIONS_ID_TOKEN_REQUEST_URL")
    r = deploy(mldeploy, (tmp_path, bundle), A)
    assert r.code == 2 and one_line(r), r.err
    assert "no OIDC token here: deploy.kubernetes.github_oidc_audience" in r.err
    assert kube.requests == []
