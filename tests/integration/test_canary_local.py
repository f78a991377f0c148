"""`mldeploy canary analyze` on the local target with a real engine: the router's per-slot
/metrics and each slot container's capture files."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from tests.helpers.cli import run_cli as mldeploy
from tests.helpers.models import PREDICT_BODY as BODY
from tests.helpers.server import free_port


@pytest.fixture
def endpoint(images, tmp_path, monkeypatch):
    """A local endpoint whose slots capture every request (monitoring.enabled)."""
    port = free_port()
    name = f"c{port}"
    (tmp_path / "mldeploy.yaml").write_text(f"deploy:\n  cloud: local\n  endpoint: {name}\n  port: {port}\n"
                                            "monitoring:\n  enabled: true\n  capture_sample_rate: 1.0\n"
                                            "  canary:\n    min_requests: 5\n")
    monkeypatch.setenv("MLDEPLOY_CAPTURE_ROOT", str(tmp_path / "capture"))
    yield name, port, tmp_path / "mldeploy.yaml"
    from mldeploy.deploy.local import LocalTarget

    LocalTarget(name, port).destroy()


def test_local_canary_promotes_on_real_traffic_and_holds_on_an_empty_window(images, endpoint, tmp_path):
    bundle, a, b, _ = images
    _name, port, config = endpoint
    for image, stage in ((a, "production"), (b, "canary")):
        code, out = mldeploy("deploy", "--config", config, "--bundle", bundle, "--image", image,
                             "--stage", stage, "--traffic", "50")
        assert code == 0, out
    served = {"production": 0, "canary": 0}
    for _ in range(60):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=BODY,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            served[r.headers["x-mldeploy-slot"]] += 1
    assert min(served.values()) >= 5, served
    time.sleep(1.5)  # workers publish their counters for each other every second

    code, out = mldeploy("canary", "analyze", "--config", config, "--window", "0", "--json", tmp_path / "d.json")
    found = json.loads((tmp_path / "d.json").read_text())
    assert code == 0 and found["decision"] == "promote", out
    # the smoke request each slot answered at deploy is counted too
    assert found["slots"]["production"]["requests"] == served["production"] + 1
    assert found["slots"]["canary"]["requests"] == served["canary"] + 1
    assert found["slots"]["canary"]["predictions"] >= served["canary"]  # read from the container's capture
    assert found["prediction_divergence"] == pytest.approx(0.0, abs=1e-9)  # same model, same inputs

    started = time.monotonic()
    code, out = mldeploy("canary", "analyze", "--config", config, "--window", "1")
    assert code == 0 and "decision: hold" in out and "no requests reached either slot" in out, out
    assert time.monotonic() - started >= 1
