"""Plugin: Cloud Run over HTTP. A small stateful fake of the Cloud Run Admin API v2 (fakes/cloudrun.py,
which also answers the service and tag URLs and Cloud Monitoring), `cloudrun_api` per module and
`cloudrun`: a clean fake that every client the code makes reaches (no Google credentials at all)."""

from __future__ import annotations

import pytest

from tests.helpers.fakes.cloudrun import FakeCloudRun

ENDPOINT, PROJECT, REGION = "classifier", "acme-ml", "europe-west1"
REPO = f"{REGION}-docker.pkg.dev/{PROJECT}/models/classifier"
A, B, C = (f"{REPO}@sha256:{c * 64}" for c in "abc")
SERVICE = f"projects/{PROJECT}/locations/{REGION}/services/{ENDPOINT}"
CONFIG = f"""
deploy:
  cloud: gcp
  target: cloudrun
  endpoint: {ENDPOINT}
  region: {REGION}
  gcp:
    project: {PROJECT}
    cloudrun:
      cpu: "2"
      memory: 4Gi
      concurrency: 8
      min_instances: 1
      max_instances: 5
"""


@pytest.fixture(scope="module")
def cloudrun_api():
    server = FakeCloudRun().start()
    yield server
    server.stop()


@pytest.fixture
def cloudrun(cloudrun_api, monkeypatch):
    """A clean fake Cloud Run, reached by every client the code makes (no Google credentials at all)."""
    cloudrun_api.reset()
    monkeypatch.setenv("MLDEPLOY_GCP_API_ENDPOINT", cloudrun_api.url)
    for name in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    from mldeploy.deploy import cloudrun as target
    from mldeploy.deploy import gcp

    monkeypatch.setattr(target, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(gcp, "POLL_SECONDS", 0.01)
    return cloudrun_api
