"""Plugin: a Kubernetes cluster as far as the kit sees it: the fake API server of fakes/kubernetes.py over
TLS (per module), whose service proxy reaches one real `mldeploy serve` of the session's bundle, and a
kubeconfig naming it (fixture `kube`: a clean cluster with KUBECONFIG set)."""

from __future__ import annotations

import base64

import pytest
import yaml

from tests.helpers.fakes.kubernetes import KubernetesFake
from tests.helpers.server import start_server

TOKEN = "kube-token-0123456789"
ENDPOINT = "classifier"
REGISTRY = "registry.example.com/models/classifier"
A, B, C = (f"{REGISTRY}@sha256:{c * 64}" for c in "abc")
CONFIG = f"""
deploy:
  cloud: kubernetes
  endpoint: {ENDPOINT}
  kubernetes:
    gateway: infra/public
    hostnames: [models.example.com]
    replicas: 2
    max_replicas: 5
    cpu: 1500m
    memory: 1Gi
"""
# traffic: replicas (no Gateway API): shares in whole replicas of 10, so a 10% canary is 1 pod
REPLICAS_CONFIG = CONFIG.replace("    gateway: infra/public\n", "    traffic: replicas\n").replace("replicas: 2", "replicas: 10")


@pytest.fixture(scope="module")
def kube_api(tls, bundle, tmp_path_factory):
    server = start_server(bundle, tmp_path_factory.mktemp("kube-model"))
    fake = KubernetesFake(tls[0], TOKEN, backend=("127.0.0.1", server.port))
    yield fake
    fake.close()
    server.stop()


def kubeconfig(url: str, ca_file, token: str = TOKEN) -> str:
    ca = base64.b64encode(ca_file.read_bytes()).decode()
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url, "certificate-authority-data": ca}}],
        "users": [{"name": "deployer", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "deployer"}}]})


@pytest.fixture
def kube(kube_api, tls, tmp_path, monkeypatch):
    """A clean fake cluster, and KUBECONFIG pointing at it (the context `fake`)."""
    kube_api.reset()
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig(kube_api.url, tls[1]))
    monkeypatch.setenv("KUBECONFIG", str(path))
    from mldeploy.deploy import kubernetes as target

    monkeypatch.setattr(target, "POLL_SECONDS", 0.0)
    return kube_api
