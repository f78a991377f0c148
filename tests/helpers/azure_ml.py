"""Plugin: Azure ML over HTTP. A stateful fake of ARM (fakes/azureml.py) reached through
MLDEPLOY_AZURE_ARM_ENDPOINT, and a TLS fake of Entra ID that exchanges the federated token of a
workload-identity login for AAD_TOKEN, the only token the fake ARM accepts (fixtures `arm`,
`authority`, and `azure`: a clean workspace with the credentials azure/login leaves)."""

from __future__ import annotations

import base64
import json
import os

import pytest

from tests.helpers.fakes.azureml import AzureMLFake
from tests.helpers.identity import TENANT, Fake, azure_workload_identity

SUB, RG, WS = "00000000-1111-2222-3333-444444444444", "ml-rg", "ml-ws"
ENDPOINT = "classifier"
REGISTRY = "acme.azurecr.io/models/classifier"
A, B, C = (f"{REGISTRY}@sha256:{c * 64}" for c in "abc")


CLIENT_ID = "11111111-2222-3333-4444-555555555555"   # what azure_workload_identity sets


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


# an access token shaped like Entra ID's (a JWT; doctor reads its identity claims, never prints it)
AAD_TOKEN = ".".join([_b64({"typ": "JWT", "alg": "RS256"}),
                      _b64({"aud": "https://management.azure.com", "appid": CLIENT_ID, "tid": TENANT,
                            "oid": "99999999-8888-7777-6666-555555555555"}), "SECRET-signature"])


def name(slot: str, image: str) -> str:
    return f"{slot}-{image[-64:][:8]}"


@pytest.fixture(scope="module")
def arm():
    fake = AzureMLFake(SUB, RG, WS, token=AAD_TOKEN)
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def authority(tls):
    """Entra ID's token endpoint, over TLS: every federated-token exchange gets AAD_TOKEN."""
    fake = Fake({f"/{TENANT}/oauth2/v2.0/token": (200, {"token_type": "Bearer", "expires_in": 3599,
                                                         "ext_expires_in": 3599, "access_token": AAD_TOKEN})},
                tls=tls[0])
    yield fake
    fake.close()


@pytest.fixture
def azure(arm, authority, tls, monkeypatch, tmp_path):
    """A clean workspace, reached by mldeploy's MLClient through MLDEPLOY_AZURE_ARM_ENDPOINT, with the
    credentials azure/login (OIDC) would leave."""
    for var in list(os.environ):
        if var.startswith(("AZURE_", "AZUREML_", "IDENTITY_", "MSI_")):
            monkeypatch.delenv(var, raising=False)
    arm.reset()
    authority.requests.clear()
    azure_workload_identity(monkeypatch, tmp_path, f"https://{authority.host}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[1]))   # azure-identity trusts the fake authority
    monkeypatch.setenv("SSL_CERT_FILE", str(tls[1]))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("MLDEPLOY_AZURE_ARM_ENDPOINT", arm.url)
    monkeypatch.setenv("MLDEPLOY_POLL_SECONDS", "0.02")
    from mldeploy.deploy import azureml

    monkeypatch.setattr(azureml, "POLL_SECONDS", 0.05)
    return arm


def serving(arm) -> dict:
    return arm.serving(ENDPOINT)
