"""`deploy.cloud: azure`, `deploy.target: aks`: the kubernetes target reaching an AKS cluster with the job's
Entra ID login (the workload-identity credential azure/login leaves, against the fake Entra ID of
tests/helpers/azure_ml.py) and no kubeconfig. A small fake of ARM's managed cluster (GET, and
listClusterUserCredential's kubeconfig) names the fake API server of tests/helpers/fakes/kubernetes.py, which
takes only the Entra ID token."""

from __future__ import annotations

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.helpers.azure_ml import AAD_TOKEN, RG, SUB
from tests.helpers.cli import deploy, one_line
from tests.helpers.identity import azure_workload_identity
from tests.helpers.kubernetes import ENDPOINT, A, B
from tests.helpers.need import need

need("kubernetes", "the kubernetes extra installs the client")
need("azure.identity", "the azure extra installs it")
CLUSTER = "ml-prod"
CONFIG = f"""
deploy:
  cloud: azure
  target: aks
  endpoint: {ENDPOINT}
  azure:
    subscription_id: "{SUB}"
    resource_group: {RG}
    aks: {{cluster: {CLUSTER}}}
  kubernetes:
    gateway: infra/public
"""
PATH = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ContainerService/managedClusters/{CLUSTER}"


@pytest.fixture
def aks(kube, authority, tls, tmp_path, monkeypatch):
    kubeconfig = yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "clusters": [{"name": CLUSTER, "cluster": {
        "server": kube.url, "certificate-authority-data": base64.b64encode(tls[1].read_bytes()).decode()}}],
        "users": [{"name": "clusterUser", "user": {"exec": {"command": "kubelogin"}}}]})
    asked = []

    class Handler(BaseHTTPRequestHandler):   # ARM: the managed cluster and its user credential
        def log_message(self, *args):
            pass

        def answer(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            asked.append(("GET", self.path.split("?")[0]))
            if self.headers.get("Authorization") != f"Bearer {AAD_TOKEN}":
                return self.answer(401, {"error": {"code": "InvalidAuthenticationToken", "message": "no"}})
            if self.path.split("?")[0] != PATH:
                return self.answer(404, {"error": {"code": "ResourceNotFound", "message": "not found"}})
            return self.answer(200, {"name": CLUSTER, "properties": {"provisioningState": "Succeeded",
                                                                     "fqdn": "ml-prod.hcp.westeurope.azmk8s.io"}})

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            asked.append(("POST", self.path.split("?")[0]))
            if self.path.split("?")[0] != f"{PATH}/listClusterUserCredential":
                return self.answer(404, {"error": {"code": "ResourceNotFound", "message": "not found"}})
            return self.answer(200, {"kubeconfigs": [{"name": "clusterUser",
                                                      "value": base64.b64encode(kubeconfig.encode()).decode()}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in list(os.environ):
        if var.startswith(("AZURE_", "AZUREML_", "IDENTITY_", "MSI_")):
            monkeypatch.delenv(var, raising=False)
    azure_workload_identity(monkeypatch, tmp_path, f"https://{authority.host}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[1]))   # azure-identity trusts the fake authority
    monkeypatch.setenv("SSL_CERT_FILE", str(tls[1]))
    monkeypatch.setenv("MLDEPLOY_AZURE_ARM_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))   # none: the target must not need one
    kube.accept = lambda token: token == AAD_TOKEN
    (tmp_path / "mldeploy.yaml").write_text(CONFIG)
    yield kube, asked, authority
    server.shutdown()
    server.server_close()


def test_deploy_and_promote_with_the_jobs_entra_id_login(mldeploy, aks, bundle, tmp_path):
    kube, asked, authority = aks
    project = (tmp_path, bundle)
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
    assert mldeploy("promote", cwd=tmp_path).code == 0
    assert kube.serving(ENDPOINT) == {"production": (B, 100)}
    assert ("POST", f"{PATH}/listClusterUserCredential") in asked and set(kube.tokens) == {AAD_TOKEN}
    scopes = {form.get("scope") for method, _, form in authority.requests if method == "POST"}
    assert "6dae42f8-4368-4678-94ff-3960e28e3630/.default" in scopes   # a token for AKS's server application

    (tmp_path / "mldeploy.yaml").write_text(CONFIG.replace(f"cluster: {CLUSTER}", "cluster: absent"))
    kube.requests.clear()
    r = mldeploy("status", cwd=tmp_path)
    assert r.code == 2 and one_line(r) and f"no AKS cluster absent in the resource group {RG}" in r.err, r.err
    assert kube.requests == []


def test_a_service_account_gets_azure_workload_identity_on_its_pods(mldeploy, aks, bundle, tmp_path):
    kube, _, _ = aks
    project = (tmp_path, bundle)
    assert deploy(mldeploy, project, A).code == 0
    template = kube.get("deployments", f"{ENDPOINT}-production")["spec"]["template"]
    assert "azure.workload.identity/use" not in template["metadata"]["labels"]   # no account: nothing to federate
    (tmp_path / "mldeploy.yaml").write_text(CONFIG.replace("gateway: infra/public",
                                                           "{gateway: infra/public, service_account: model-reader}"))
    assert deploy(mldeploy, project, A).code == 0
    template = kube.get("deployments", f"{ENDPOINT}-production")["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"   # the webhook's opt-in
    assert template["spec"]["serviceAccountName"] == "model-reader"
