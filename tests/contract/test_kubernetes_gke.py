"""`deploy.cloud: gcp`, `deploy.target: gke`: the kubernetes target reaching a GKE cluster with the job's Google
credentials and no kubeconfig. A small fake of the Container API (GET .../clusters/C, over plain HTTP at
MLDEPLOY_GCP_API_ENDPOINT, so the kit's GCP layer uses anonymous credentials) names the fake API server of
tests/helpers/fakes/kubernetes.py as the cluster's endpoint, with its CA."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers.cli import deploy, one_line
from tests.helpers.kubernetes import ENDPOINT, A, B
from tests.helpers.need import need

need("kubernetes", "the kubernetes extra installs the client")
need("google.auth", "the gcp extra installs it")
PROJECT, LOCATION, CLUSTER = "acme-ml", "europe-west1", "ml-prod"
CONFIG = f"""
deploy:
  cloud: gcp
  target: gke
  endpoint: {ENDPOINT}
  region: {LOCATION}
  gcp:
    project: {PROJECT}
    gke: {{cluster: {CLUSTER}}}
  kubernetes:
    gateway: infra/public
"""


@pytest.fixture
def gke(kube, tls, tmp_path, monkeypatch):
    """The Container API knows one RUNNING cluster, whose endpoint and CA are the fake API server's."""
    cluster = {"name": CLUSTER, "status": "RUNNING", "endpoint": kube.url.removeprefix("https://"),
               "masterAuth": {"clusterCaCertificate": base64.b64encode(tls[1].read_bytes()).decode()}}
    asked = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            asked.append(self.path)
            found = self.path == f"/v1/projects/{PROJECT}/locations/{LOCATION}/clusters/{CLUSTER}"
            body = json.dumps(cluster if found else {"error": {"code": 404, "status": "NOT_FOUND",
                                                               "message": "Not found: cluster"}}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLDEPLOY_GCP_API_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))   # none: the target must not need one
    kube.accept = lambda token: token == ""   # anonymous over plain http: no token travels (real ADC: its token)
    (tmp_path / "mldeploy.yaml").write_text(CONFIG)
    yield kube, asked
    server.shutdown()
    server.server_close()


def test_deploy_and_rollback_through_the_container_apis_endpoint(mldeploy, gke, bundle, tmp_path):
    kube, asked = gke
    project = (tmp_path, bundle)
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
    assert kube.serving(ENDPOINT) == {"production": (A, 90), "canary": (B, 10)}
    assert mldeploy("rollback", cwd=tmp_path).code == 0
    assert kube.serving(ENDPOINT) == {"production": (A, 100)}
    assert asked and set(asked) == {f"/v1/projects/{PROJECT}/locations/{LOCATION}/clusters/{CLUSTER}"}

    (tmp_path / "mldeploy.yaml").write_text(CONFIG.replace(CLUSTER, "absent"))
    kube.requests.clear()
    r = mldeploy("status", cwd=tmp_path)
    assert r.code == 2 and one_line(r) and f"no GKE cluster absent in {PROJECT}/{LOCATION}" in r.err, r.err
    assert kube.requests == []
