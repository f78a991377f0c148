"""deploy.require_provenance (mldeploy.provenance) against a fake of GitHub's attestations API, and what a
pull request's run may do (mldeploy.trust)."""

from __future__ import annotations

import base64
import json

import pytest

from mldeploy import provenance
from mldeploy.errors import CheckFailed, UsageError
from mldeploy.rehearsal.fake_github import FakeGitHub
from mldeploy.trust import check_pull_request

TOKEN = "ghs_provenance0123456789"
REPO = "acme/models"
KIT = "acme/ml-deploy/.github/workflows/deploy.yml"
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/mldeploy/classifier@{DIGEST}"


def bundle(digest: str = DIGEST, builder: str = f"{KIT}@refs/tags/v2.0.0", source: str = REPO,
           predicate_type: str = provenance.SLSA_PROVENANCE_V1) -> dict:
    """A Sigstore bundle as actions/attest-build-provenance stores it (the signature is a placeholder)."""
    statement = {"_type": "https://in-toto.io/Statement/v1",
                 "subject": [{"name": IMAGE.split("@")[0], "digest": {"sha256": digest.removeprefix("sha256:")}}],
                 "predicateType": predicate_type,
                 "predicate": {"buildDefinition": {
                     "buildType": "https://actions.github.io/buildtypes/workflow/v1",
                     "externalParameters": {"workflow": {"ref": "refs/heads/main", "repository": f"https://github.com/{source}",
                                                         "path": ".github/workflows/pr-canary.yml"}}},
                     "runDetails": {"builder": {"id": f"https://github.com/{builder}"}}}}
    return {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "dsseEnvelope": {"payload": base64.b64encode(json.dumps(statement).encode()).decode(),
                             "payloadType": "application/vnd.in-toto+json", "signatures": [{"sig": "c2ln"}]}}


@pytest.fixture(scope="module")
def api():
    fake = FakeGitHub(TOKEN)
    yield fake
    fake.close()


@pytest.fixture
def github(api, monkeypatch):
    """GitHub's API with no attestation stored yet, and a job's environment pointing at it."""
    api.attestations.clear()
    api.requests.clear()
    for name in ("GITHUB_ACTIONS", "ACT", "GITHUB_EVENT_NAME", "MLDEPLOY_SIGNER_WORKFLOW"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GITHUB_API_URL", api.url)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("GITHUB_REPOSITORY", REPO)
    return api


def test_an_image_the_kits_workflow_attested_in_this_repository_is_accepted(github):
    github.attest(REPO, bundle(builder="acme/models/.github/workflows/other.yml@refs/heads/main"))
    github.attest(REPO, bundle())
    assert provenance.verify(IMAGE, REPO, KIT) == (f"{DIGEST} was built by {KIT}@refs/tags/v2.0.0 from {REPO}")
    assert ("GET", f"/repos/{REPO}/attestations/{DIGEST}?per_page=100") in github.requests


def test_an_unattested_image_is_refused_in_one_line(github):
    with pytest.raises(CheckFailed) as e:
        provenance.verify(IMAGE, REPO, KIT)
    assert e.value.exit_code == 1
    assert e.value.one_line() == (f"refusing {IMAGE}: it has no build provenance attestation in {REPO} (deploy "
                                  "only images the kit's workflow built and attested (deploy.require_provenance))")


@pytest.mark.parametrize("planted", [
    bundle(builder=f"{REPO}/.github/workflows/pr-canary.yml@refs/pull/7/merge"),  # the pull request's own workflow
    bundle(builder="stranger/ml-deploy/.github/workflows/deploy.yml@refs/tags/v2.0.0"),  # a look-alike kit
    bundle(builder=f"{KIT}x@refs/tags/v2.0.0"),  # a prefix of the kit's path is not the kit
])
def test_an_attestation_from_another_workflow_is_refused_and_named(github, planted):
    github.attest(REPO, planted)
    with pytest.raises(CheckFailed, match=rf"its provenance in {REPO} is not from {KIT} \(attested by "):
        provenance.verify(IMAGE, REPO, KIT)


@pytest.mark.parametrize("where, planted", [
    ("stranger/models", bundle()),  # attested in another repository
    (REPO, bundle(digest="sha256:" + "cd" * 32)),  # another image's attestation
])
def test_an_attestation_of_something_else_proves_nothing(github, where, planted):
    github.attest(where, planted)
    with pytest.raises(CheckFailed, match="has no build provenance attestation"):
        provenance.verify(IMAGE, REPO, KIT)


@pytest.mark.parametrize("planted", [bundle(source="stranger/models"),
                                     bundle(predicate_type="https://spdx.dev/Document/v2.3")])
def test_the_kits_attestation_of_other_code_or_another_kind_is_refused(github, planted):
    github.attest(REPO, planted)
    with pytest.raises(CheckFailed, match="refusing"):
        provenance.verify(IMAGE, REPO, KIT)


def test_a_token_github_refuses_is_an_operational_failure(github, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_wrong")
    with pytest.raises(CheckFailed, match=f"cannot list the attestations of {DIGEST} in {REPO}: GitHub answered 401"):
        provenance.verify(IMAGE, REPO, KIT)


def test_when_provenance_is_required(github, monkeypatch):
    assert not provenance.required(None)  # a laptop, Jenkins: off unless asked
    assert provenance.required(True)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert provenance.required(None) and not provenance.required(False)  # GitHub: on by default
    monkeypatch.setenv("GITHUB_EVENT_NAME", "pull_request")
    assert provenance.required(False)  # the pull request could have written that false
    monkeypatch.setenv("ACT", "true")
    assert not provenance.required(None) and provenance.required(True)  # act: no attestations unless a test makes them


def test_the_deploy_check_names_what_it_found_and_needs_a_signer(github, monkeypatch, capsys):
    github.attest(REPO, bundle())
    provenance.check(False, IMAGE)  # not required: no request at all
    assert not github.requests
    with pytest.raises(UsageError, match="cannot tell which workflow must have attested the image"):
        provenance.check(True, IMAGE)
    monkeypatch.setenv("MLDEPLOY_SIGNER_WORKFLOW", f"{KIT}@v2")
    provenance.check(True, IMAGE)
    assert capsys.readouterr().out == f"provenance: {DIGEST} was built by {KIT}@refs/tags/v2.0.0 from {REPO}\n"
    monkeypatch.setenv("MLDEPLOY_SIGNER_WORKFLOW", "acme/other/.github/workflows/deploy.yml")
    with pytest.raises(CheckFailed, match="not from acme/other"):
        provenance.check(True, IMAGE)


def test_the_signer_is_the_running_jobs_own_workflow_on_github(github, monkeypatch, tmp_path):
    """On GitHub MLDEPLOY_SIGNER_WORKFLOW is ignored: the deploy job's OIDC token names the reusable workflow."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    claims = {"job_workflow_ref": f"{KIT}@refs/tags/v2.1.0", "repository": REPO}
    jwt = "e30." + base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=") + ".c2ln"

    class Issuer(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            assert "audience=mldeploy-provenance" in self.path
            data = json.dumps({"value": jwt}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Issuer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("GITHUB_ACTIONS", "true")
        monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"http://127.0.0.1:{server.server_address[1]}/token?x=1")
        monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "bearer")
        monkeypatch.setenv("MLDEPLOY_SIGNER_WORKFLOW", "acme/models/.github/workflows/pr-canary.yml")
        assert provenance.signer_workflow() == KIT
    finally:
        server.shutdown()


@pytest.mark.parametrize("event", ["pull_request", "pull_request_target", "workflow_run"])
def test_a_pull_requests_run_never_changes_production_nor_takes_more_than_the_cap(monkeypatch, event):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_EVENT_NAME", event)
    check_pull_request("canary", 20, 20)
    check_pull_request("rollback")
    for stage in ("production", "promote"):
        with pytest.raises(UsageError, match=rf"a {event} run never changes production \({stage} refused\)"):
            check_pull_request(stage, 0, 20)
    with pytest.raises(UsageError, match="the endpoint has none yet, so this canary would become it"):
        check_pull_request("canary", 10, 20, has_production=False)
    with pytest.raises(UsageError, match=rf"a {event} run's canary takes at most 20% of the traffic "
                                         r"\(deploy.canary_max_traffic\), not 21%"):
        check_pull_request("canary", 21, 20)


def test_other_runs_and_the_cli_are_not_capped(monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("GITHUB_EVENT_NAME", "pull_request")  # not in GitHub Actions: a name, nothing more
    check_pull_request("canary", 100, 20, has_production=False)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    for event in ("push", "workflow_dispatch", "release"):
        monkeypatch.setenv("GITHUB_EVENT_NAME", event)
        check_pull_request("production", 100, 20)
        check_pull_request("canary", 100, 20, has_production=False)


def test_the_cap_cannot_be_raised_past_half_by_the_config():
    from mldeploy.config import Config

    with pytest.raises(Exception, match="less than or equal to 50"):
        Config.model_validate({"deploy": {"canary_max_traffic": 100}})
