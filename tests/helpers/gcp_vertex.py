"""Plugin: Vertex AI over HTTP. A local fake of the Vertex AI API (fakes/vertex.py, which also answers
Cloud Monitoring), `vertex_api` per module and `vertex`: a clean project that every GCP client the
code makes reaches (anonymous, plain http, through MLDEPLOY_GCP_API_ENDPOINT)."""

from __future__ import annotations

import pytest

from tests.helpers.fakes.vertex import FakeVertex

ENDPOINT, PROJECT, REGION = "classifier", "acme-ml", "europe-west4"
REPOSITORY = f"europe-docker.pkg.dev/{PROJECT}/models/classifier"
A, B, C = (f"{REPOSITORY}@sha256:{c * 64}" for c in "abc")
CONFIG = f"""
deploy:
  cloud: gcp
  target: vertex
  endpoint: {ENDPOINT}
  region: {REGION}
  gcp:
    project: {PROJECT}
    vertex:
      machine_type: n1-standard-4
      min_replicas: 1
      max_replicas: 3
"""


@pytest.fixture(scope="module")
def vertex_api():
    fake = FakeVertex().start()
    yield fake
    fake.stop()


@pytest.fixture
def vertex(vertex_api, monkeypatch):
    """A clean Vertex AI project, reached by every GCP client the code makes (anonymous, plain http)."""
    vertex_api.reset()
    monkeypatch.setenv("MLDEPLOY_GCP_API_ENDPOINT", vertex_api.url)
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT",
                 "GCP_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    from mldeploy.deploy import gcp

    monkeypatch.setattr(gcp, "POLL_SECONDS", 0.01)
    return vertex_api


def serving(vertex) -> dict[str, tuple[str, int]]:
    """What the endpoint serves, read from the fake's state: slot -> (image, traffic %)."""
    ep = vertex.endpoint(ENDPOINT)
    split = ep.get("trafficSplit", {})
    return {dm["displayName"]: (vertex.image_of(dm["model"]), split.get(dm["id"], 0)) for dm in ep.get("deployedModels", [])}


def ids(vertex) -> dict[str, str]:
    return {dm["displayName"]: dm["id"] for dm in vertex.endpoint(ENDPOINT).get("deployedModels", [])}
