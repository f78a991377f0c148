"""Registry logins for cloud registries, over real HTTP to small local fakes (nothing of ours mocked).

- Artifact Registry: google-auth's Application Default Credentials read an `external_account`
  (Workload Identity Federation) file like the one google-github-actions/auth writes: the subject
  token comes from a fake of GitHub's OIDC token URL and is exchanged at a fake STS token_url, over
  real HTTP. (An `authorized_user` file cannot be pointed anywhere: google-auth 2.63 ignores its
  token_uri and always uses oauth2.googleapis.com.)
- ACR: azure-identity's DefaultAzureCredential picks WorkloadIdentityCredential from the same
  environment variables azure/login and AKS set, with AZURE_AUTHORITY_HOST at a local TLS fake;
  the ACR exchange goes to the same fake over TLS, trusted through SSL_CERT_FILE /
  REQUESTS_CA_BUNDLE (a throwaway CA made here). The product has no test-only code path.
- ECR: boto3 against moto (AWS_ENDPOINT_URL), through mldeploy.deploy.aws.ecr_login.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from mldeploy.errors import UsageError
from mldeploy.image import registry_auth
from mldeploy.targets import REGISTRIES
from tests.helpers.identity import (
    ACR_REFRESH,
    FEDERATED_TOKEN,
    GOOGLE_TOKEN,
    STS_OK,
    TENANT,
    Fake,
    azure_workload_identity,
)
from tests.helpers.need import need

need("google.auth", "the gcp extra installs google-auth")
need("azure.identity", "the azure extra installs azure-identity")

OIDC_TOKEN = "eyJ.github-oidc-SECRET.sig"
REQUEST_TOKEN = "actions-request-SECRET"
AAD_TOKEN = "aad-SECRET-access-token"


@pytest.fixture
def fakes():
    started: list[Fake] = []

    def start(routes, tls=None) -> Fake:
        started.append(Fake(routes, tls))
        return started[-1]

    yield start
    for fake in started:
        fake.close()


@pytest.fixture(autouse=True)
def no_cloud_env(monkeypatch):
    """No developer or CI cloud credentials leak in; each test sets exactly what it uses."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "GOOGLE_", "AWS_", "CLOUDSDK_", "IDENTITY_", "MSI_")):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def trust(monkeypatch, tls):
    """Clients trust the test CA the way users point them at a private CA: standard variables."""
    ca = str(tls[1])
    monkeypatch.setenv("SSL_CERT_FILE", ca)        # urllib / the ssl module's default context
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)   # requests (azure-core's transport)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    return tls[0]


# -- Artifact Registry -----------------------------------------------------------------------------
AUDIENCE = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/github/providers/acme"

def google_wif(monkeypatch, tmp_path: Path, fake: Fake) -> None:
    """The credentials file google-github-actions/auth writes for direct Workload Identity Federation,
    with GitHub's OIDC token URL and Google's STS token_url pointed at the fake."""
    adc = tmp_path / "gha-creds.json"
    adc.write_text(json.dumps({
        "type": "external_account", "audience": AUDIENCE,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": f"http://{fake.host}/v1/token",
        "credential_source": {"url": f"http://{fake.host}/oidc?audience=https://iam.googleapis.com{AUDIENCE[1:]}",
                              "headers": {"Authorization": f"Bearer {REQUEST_TOKEN}"},
                              "format": {"type": "json", "subject_token_field_name": "value"}}}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    # google-github-actions/auth exports it when it knows the project; without it, google.auth.default()
    # also asks cloudresourcemanager.googleapis.com for the project number's id (not reachable here).
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "acme-models")


def gcp_fake(fakes, sts=STS_OK) -> Fake:
    return fakes({"/oidc": (200, {"value": OIDC_TOKEN}), "/v1/token": sts})


def test_artifact_registry_gets_an_adc_access_token(fakes, monkeypatch, tmp_path, capsys):
    fake = gcp_fake(fakes)
    google_wif(monkeypatch, tmp_path, fake)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")

    auth = registry_auth("europe-docker.pkg.dev")

    assert auth == {"username": "oauth2accesstoken", "password": GOOGLE_TOKEN}
    oidc, sts = fake.requests
    assert oidc[:2] == ("GET", "/oidc?audience=https://iam.googleapis.com" + AUDIENCE[1:])
    assert oidc[2]["authorization"] == f"Bearer {REQUEST_TOKEN}"
    assert sts[:2] == ("POST", "/v1/token")
    assert sts[2]["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert sts[2]["subject_token"] == OIDC_TOKEN and sts[2]["audience"] == AUDIENCE
    assert sts[2]["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    out = capsys.readouterr().out
    assert f"::add-mask::{GOOGLE_TOKEN}" in out          # masked, and printed nowhere else
    assert out.count(GOOGLE_TOKEN) == 1


def test_gcr_hosts_use_the_same_login(fakes, monkeypatch, tmp_path):
    fake = gcp_fake(fakes)
    google_wif(monkeypatch, tmp_path, fake)
    for host in ("gcr.io", "eu.gcr.io", "us-central1-docker.pkg.dev"):
        assert registry_auth(host) == {"username": "oauth2accesstoken", "password": GOOGLE_TOKEN}
    assert [r[1] for r in fake.requests if r[0] == "POST"] == ["/v1/token"] * 3


def test_artifact_registry_refused_token_is_one_line_without_secrets(fakes, monkeypatch, tmp_path):
    fake = gcp_fake(fakes, sts=(400, {"error": "invalid_grant",
                                      "error_description": "The audience in ID Token does not match the expected audience."}))
    google_wif(monkeypatch, tmp_path, fake)

    with pytest.raises(UsageError) as caught:
        registry_auth("europe-docker.pkg.dev")

    text = caught.value.one_line()
    assert "europe-docker.pkg.dev" in text and "invalid_grant" in text
    assert "google-github-actions/auth" in text and "gcloud auth application-default login" in text
    assert "\n" not in text
    assert OIDC_TOKEN not in text and REQUEST_TOKEN not in text
    assert len([r for r in fake.requests if r[1] == "/v1/token"]) == 1   # not retried: a refusal stays one


def test_artifact_registry_unreachable_token_server_is_one_line(fakes, monkeypatch, tmp_path):
    fake = gcp_fake(fakes)
    google_wif(monkeypatch, tmp_path, fake)
    fake.close()

    with pytest.raises(UsageError) as caught:
        registry_auth("europe-docker.pkg.dev")
    text = caught.value.one_line()
    assert "europe-docker.pkg.dev" in text and "\n" not in text and REQUEST_TOKEN not in text


def test_artifact_registry_without_credentials_says_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(UsageError) as caught:
        registry_auth("us-docker.pkg.dev")
    text = caught.value.one_line()
    assert "us-docker.pkg.dev" in text and "Workload Identity Federation" in text and "\n" not in text


# -- ACR ---------------------------------------------------------------------------------------------
AAD_OK = (200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": AAD_TOKEN})


def test_acr_exchanges_an_azure_ad_token_for_a_refresh_token(fakes, trust, monkeypatch, tmp_path):
    from mldeploy.deploy.azure import acr_login

    fake = fakes({f"/{TENANT}/oauth2/v2.0/token": AAD_OK,
                  "/oauth2/exchange": (200, {"refresh_token": ACR_REFRESH})}, tls=trust)
    azure_workload_identity(monkeypatch, tmp_path, f"https://{fake.host}")

    auth = acr_login(fake.host)

    assert auth == {"username": "00000000-0000-0000-0000-000000000000", "password": ACR_REFRESH}
    aad, exchange = [r for r in fake.requests if r[0] == "POST"]
    assert aad[1] == f"/{TENANT}/oauth2/v2.0/token"
    assert aad[2]["grant_type"] == "client_credentials"
    assert aad[2]["client_assertion"] == FEDERATED_TOKEN
    assert aad[2]["scope"] == "https://management.azure.com/.default"
    assert exchange[1] == "/oauth2/exchange"
    assert exchange[2] == {"grant_type": "access_token", "service": fake.host,
                           "access_token": AAD_TOKEN, "tenant": TENANT}


def test_acr_exchange_refused_is_one_line_without_tokens(fakes, trust, monkeypatch, tmp_path):
    from mldeploy.deploy.azure import acr_login

    fake = fakes({f"/{TENANT}/oauth2/v2.0/token": AAD_OK,
                  "/oauth2/exchange": (401, {"errors": [{"code": "UNAUTHORIZED",
                                                         "message": "authentication required"}]})}, tls=trust)
    azure_workload_identity(monkeypatch, tmp_path, f"https://{fake.host}")

    with pytest.raises(UsageError) as caught:
        acr_login(fake.host)

    text = caught.value.one_line()
    assert fake.host in text and "HTTP 401" in text and "UNAUTHORIZED" in text and "azure/login" in text
    assert AAD_TOKEN not in text and FEDERATED_TOKEN not in text and "\n" not in text


def test_acr_refused_federated_token_is_one_line(fakes, trust, monkeypatch, tmp_path):
    from mldeploy.deploy.azure import acr_login

    fake = fakes({f"/{TENANT}/oauth2/v2.0/token": (400, {
        "error": "invalid_client", "error_description": "AADSTS700213: No matching federated identity record found"})},
        tls=trust)
    azure_workload_identity(monkeypatch, tmp_path, f"https://{fake.host}")

    with pytest.raises(UsageError) as caught:
        acr_login(fake.host)

    text = caught.value.one_line()
    assert fake.host in text and "AADSTS700213: No matching federated identity record" in text
    assert "\n" not in text and FEDERATED_TOKEN not in text
    assert not [r for r in fake.requests if r[1] == "/oauth2/exchange"]   # no exchange without a token


def test_acr_unreachable_registry_is_one_line(fakes, trust, monkeypatch, tmp_path):
    from mldeploy.deploy.azure import acr_login

    fake = fakes({f"/{TENANT}/oauth2/v2.0/token": AAD_OK}, tls=trust)
    azure_workload_identity(monkeypatch, tmp_path, f"https://{fake.host}")
    closed = Fake({})                     # a port that was just listening and is now closed
    closed.close()

    with pytest.raises(UsageError) as caught:
        acr_login(closed.host)

    text = caught.value.one_line()
    assert f"cannot reach ACR {closed.host}" in text and AAD_TOKEN not in text


def test_acr_untrusted_certificate_is_refused(fakes, tls, monkeypatch, tmp_path):
    """Without the CA trusted, the exchange must fail on verification, never send the token in clear."""
    from mldeploy.deploy.azure import acr_login

    trusted = fakes({f"/{TENANT}/oauth2/v2.0/token": AAD_OK}, tls=tls[0])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[1]))   # azure-identity trusts the fake authority
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "empty.pem"))  # urllib does not trust the registry
    (tmp_path / "empty.pem").write_text("")
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    azure_workload_identity(monkeypatch, tmp_path, f"https://{trusted.host}")
    registry = fakes({"/oauth2/exchange": (200, {"refresh_token": ACR_REFRESH})}, tls=tls[0])

    with pytest.raises(UsageError) as caught:
        acr_login(registry.host)

    assert "CERTIFICATE_VERIFY_FAILED" in caught.value.one_line()
    assert not registry.requests


def test_acr_without_any_azure_credential_says_how_to_get_one(monkeypatch):
    # AZURE_TOKEN_CREDENTIALS is DefaultAzureCredential's own switch; here it keeps the chain from
    # probing managed identity or running `az`, so the test is fast wherever it runs.
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "WorkloadIdentityCredential")
    with pytest.raises(UsageError) as caught:
        registry_auth("contoso.azurecr.io")      # dispatched to the ACR login by its host
    text = caught.value.one_line()
    assert "contoso.azurecr.io" in text and "(WorkloadIdentityCredential)" in text and "azure/login" in text
    assert "\n" not in text


# -- ECR (moto) ---------------------------------------------------------------------------------------
def test_ecr_registry_gets_its_token_from_boto3(monkeypatch):
    moto_server = need("moto.server", "the dev extra installs moto")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        auth = registry_auth("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
    finally:
        server.stop()
    assert auth is not None and auth["username"] == "AWS" and auth["password"]


# -- dispatch ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("host, login", [
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "ecr_login"),
    ("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com", "ecr_login"),
    ("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn", "ecr_login"),
    ("europe-docker.pkg.dev", "artifact_registry_login"),
    ("us-central1-docker.pkg.dev", "artifact_registry_login"),
    ("gcr.io", "artifact_registry_login"),
    ("eu.gcr.io", "artifact_registry_login"),
    ("contoso.azurecr.io", "acr_login"),
    ("127.0.0.1:5000", None),
    ("ghcr.io", None),
    ("docker.io", None),
    ("europe-docker.pkg.dev.attacker.example", None),
    ("contoso.azurecr.io.attacker.example", None),
    ("attacker.example/contoso.azurecr.io", None),
    ("gcr.io.attacker.example", None),
    ("123456789012.dkr.ecr.eu-west-1.amazonaws.com.attacker.example", None),
])
def test_the_table_sends_each_host_to_its_cloud(host, login):
    chosen = [r.login for r in REGISTRIES if r.matches(host)]
    assert chosen == ([login] if login else [])


@pytest.mark.parametrize("host", ["127.0.0.1:5000", "docker.io", "europe-docker.pkg.dev.attacker.example"])
def test_other_registries_use_the_docker_config(host):
    assert registry_auth(host) is None


def test_explicit_credentials_win_over_cloud_logins(fakes, monkeypatch, tmp_path):
    fake = gcp_fake(fakes)
    google_wif(monkeypatch, tmp_path, fake)
    monkeypatch.setenv("MLDEPLOY_REGISTRY_USERNAME", "robot")
    monkeypatch.setenv("MLDEPLOY_REGISTRY_PASSWORD", "pat-123")
    for host in ("europe-docker.pkg.dev", "contoso.azurecr.io", "123456789012.dkr.ecr.eu-west-1.amazonaws.com"):
        assert registry_auth(host) == {"username": "robot", "password": "pat-123"}
    assert fake.requests == []                           # no cloud was asked


def test_a_missing_cloud_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.auth", None)   # as if the gcp extra were not installed
    with pytest.raises(UsageError) as caught:
        registry_auth("europe-docker.pkg.dev")
    assert caught.value.one_line() == ("logging in to europe-docker.pkg.dev needs google.auth, which is not "
                                       "installed (pip install 'mldeploy[gcp]')")


def test_github_token_still_logs_in_to_ghcr(monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_token")
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    assert registry_auth("ghcr.io") == {"username": "octocat", "password": "ghs_token"}
