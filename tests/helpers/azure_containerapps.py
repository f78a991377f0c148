"""Plugin: Azure Container Apps over HTTP. A stateful fake of ARM's Microsoft.App container apps and
revisions (fakes/containerapps.py, which also answers the apps' label URLs and Azure Monitor) reached
through MLDEPLOY_AZURE_ARM_ENDPOINT, with the workload-identity login of the Azure ML tests (the fake
Entra ID `authority` of tests/helpers/azure_ml.py): fixtures `containerapps_arm` (per module) and
`containerapps` (a clean resource group with the credentials azure/login leaves)."""

from __future__ import annotations

import os

import pytest

from tests.helpers.azure_ml import AAD_TOKEN, RG, SUB
from tests.helpers.fakes.containerapps import ContainerAppsFake
from tests.helpers.identity import azure_workload_identity

APP = "classifier"
ENVIRONMENT = "ml-env"
REGISTRY = "acme.azurecr.io/models/classifier"
A, B, C = (f"{REGISTRY}@sha256:{c * 64}" for c in "abc")
IDENTITY = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pull"
CONFIG = f"""
deploy:
  cloud: azure
  target: containerapps
  endpoint: {APP}
  azure:
    subscription_id: "{SUB}"
    resource_group: {RG}
    wait_seconds: 10   # what the fake answers at once must never hang a broken test for 30 minutes
    containerapps:
      managed_environment: {ENVIRONMENT}
      identity: {IDENTITY}
      allowed_ips: [127.0.0.1/32, 10.0.0.0/8]
"""


@pytest.fixture(scope="module")
def containerapps_arm():
    fake = ContainerAppsFake(SUB, RG, token=AAD_TOKEN)
    yield fake
    fake.close()


@pytest.fixture
def containerapps(containerapps_arm, authority, tls, monkeypatch, tmp_path):
    """A clean resource group holding the environment ml-env, reached by the real ContainerAppsAPIClient
    through MLDEPLOY_AZURE_ARM_ENDPOINT, with the credentials azure/login (OIDC) would leave."""
    for var in list(os.environ):
        if var.startswith(("AZURE_", "AZUREML_", "IDENTITY_", "MSI_")):
            monkeypatch.delenv(var, raising=False)
    containerapps_arm.reset()
    authority.requests.clear()
    azure_workload_identity(monkeypatch, tmp_path, f"https://{authority.host}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[1]))   # azure-identity trusts the fake authority
    monkeypatch.setenv("SSL_CERT_FILE", str(tls[1]))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("MLDEPLOY_AZURE_ARM_ENDPOINT", containerapps_arm.url)
    monkeypatch.setenv("MLDEPLOY_POLL_SECONDS", "0.02")
    from mldeploy.deploy import containerapps as target

    monkeypatch.setattr(target, "POLL_SECONDS", 0.02)
    return containerapps_arm
