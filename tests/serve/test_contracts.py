"""Every cloud's container contract, over real HTTP against real `mldeploy serve` processes.

The clouds' own SDK local modes drive the built image in tests/integration (they need Docker);
here the same routes, variables and body forms are checked against the server process itself.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mldeploy.serve import openapi
from tests.helpers.models import TABLE, B, W, expected_probs
from tests.helpers.server import free_port, start_server, wait_ready

ROOT_SCHEMA = Path(__file__).resolve().parents[2] / "schema" / "serve.openapi.json"
X = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]


def close(got, x=X):
    np.testing.assert_allclose(np.asarray(got, np.float32), expected_probs(x), rtol=1e-5, atol=1e-6)


# -- SageMaker -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sagemaker(linear_bundle, tmp_path_factory):
    """As SageMaker runs it: argument `serve`, the port from SAGEMAKER_BIND_TO_PORT."""
    port = free_port()
    s = start_server(linear_bundle, tmp_path_factory.mktemp("sm"), args=("serve",),
                     env={"SAGEMAKER_BIND_TO_PORT": str(port)}, ready=False)
    s.port = port
    wait_ready(s, "/ping")
    yield s
    s.stop()


def test_sagemaker_ping_and_json_list_body(sagemaker):
    assert sagemaker.call("GET", "/ping").status == 200
    r = sagemaker.call("POST", "/invocations", X)  # what the SDK's JSONSerializer sends for an array
    assert r.status == 200, r.body
    close(r.json()["predictions"])


def test_sagemaker_csv_in_csv_out(sagemaker):
    body = "\n".join(",".join(str(v) for v in row) for row in X)
    r = sagemaker.call("POST", "/invocations", body, {"content-type": "text/csv"})
    assert r.status == 200 and r.headers["content-type"] == "text/csv"
    close(np.loadtxt(io.StringIO(r.body.decode()), delimiter=",", ndmin=2))
    r = sagemaker.call("POST", "/invocations", body, {"content-type": "text/csv", "accept": "application/json"})
    assert r.headers["content-type"] == "application/json"
    close(r.json()["predictions"])


def test_sagemaker_npy_in_npy_out(sagemaker):
    buf = io.BytesIO()
    np.save(buf, np.asarray(X, np.float32))
    r = sagemaker.call("POST", "/invocations", buf.getvalue(), {"content-type": "application/x-npy"})
    assert r.status == 200 and r.headers["content-type"] == "application/x-npy"
    close(np.load(io.BytesIO(r.body)))


def test_sagemaker_bad_csv_and_npy_are_400(sagemaker):
    r = sagemaker.call("POST", "/invocations", "1,2,x\n", {"content-type": "text/csv"})
    assert r.status == 400 and "CSV" in r.json()["error"]
    r = sagemaker.call("POST", "/invocations", b"\x93NUMPY garbage", {"content-type": "application/x-npy"})
    assert r.status == 400 and ".npy" in r.json()["error"]
    buf = io.BytesIO()
    np.save(buf, np.array([[1.0, np.nan, 0, 0]], np.float32))
    r = sagemaker.call("POST", "/invocations", buf.getvalue(), {"content-type": "application/x-npy"})
    assert r.status == 400 and "NaN" in r.json()["error"]


# -- Vertex AI -----------------------------------------------------------------------------------
def test_vertex_routes_and_port_from_aip_variables(linear_bundle, tmp_path):
    port = free_port()
    env = {"AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": "/v1/health",
           "AIP_PREDICT_ROUTE": "/v1/endpoints/e/deployedModels/d:predict"}
    s = start_server(linear_bundle, tmp_path, env=env, ready=False)
    s.port = port
    try:
        wait_ready(s, "/v1/health")
        r = s.call("POST", "/v1/endpoints/e/deployedModels/d:predict", {"instances": X, "parameters": {"t": 1}})
        assert r.status == 200, r.body
        close(r.json()["predictions"])
        r = s.call("POST", "/v1/endpoints/e/deployedModels/d:predict", {"instances": []})
        assert r.status == 400 and "instances" in r.json()["error"]
    finally:
        s.stop()


# -- Azure ML ------------------------------------------------------------------------------------
def test_azure_model_one_folder_down_and_score_routes(linear_bundle, tmp_path):
    model_dir = tmp_path / "azureml-models" / "m" / "1"
    shutil.copytree(linear_bundle, model_dir / "bundle")  # Azure mounts the model one folder down
    env = {"AZUREML_MODEL_DIR": str(model_dir), "MLDEPLOY_SCORING_ROUTE": "/v1/score",
           "MLDEPLOY_READINESS_ROUTE": "/v1/ready", "MLDEPLOY_LIVENESS_ROUTE": "/v1/live"}
    s = start_server(None, tmp_path, env=env)
    try:
        assert s.call("GET", "/").status == 200
        assert s.call("GET", "/v1/live").status == 200 and s.call("GET", "/v1/ready").status == 200
        for route in ("/score", "/v1/score"):
            r = s.call("POST", route, {"data": X})  # the classic Azure scoring-script body
            assert r.status == 200, r.body
            close(r.json()["outputs"])
        assert any(str(model_dir / "bundle") in json.dumps(line) for line in s.logs())
    finally:
        s.stop()


# -- Cloud Run -----------------------------------------------------------------------------------
def test_cloud_run_port(linear_bundle, tmp_path):
    port = free_port()
    s = start_server(linear_bundle, tmp_path, env={"PORT": str(port)}, ready=False)
    s.port = port
    try:
        wait_ready(s)
        close(s.call("POST", "/predict", {"inputs": X}).json()["outputs"])
    finally:
        s.stop()


# -- Open Inference Protocol v2 ------------------------------------------------------------------
def test_v2_health_and_metadata(server):
    assert server.call("GET", "/v2/health/live").status == 200
    assert server.call("GET", "/v2/health/ready").status == 200
    assert server.call("GET", "/v2").json()["name"] == "mldeploy"
    meta = server.call("GET", "/v2/models/model").json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 3]}]
    assert server.call("GET", "/v2/models/model/ready").status == 200
    assert server.call("GET", "/v2/models/other").status == 404


@pytest.mark.parametrize("data", [[v for row in X for v in row], X], ids=["flat", "nested"])
def test_v2_infer(server, data):
    body = {"id": "req-7", "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": data}]}
    r = server.call("POST", "/v2/models/model/infer", body)
    assert r.status == 200, r.body
    doc = r.json()
    assert doc["id"] == "req-7" and doc["model_name"] == "model"
    (out,) = doc["outputs"]
    assert out["name"] == "probs" and out["shape"] == [2, 3] and out["datatype"] == "FP32"
    close(np.asarray(out["data"]).reshape(out["shape"]))
    version = server.call("GET", "/v2/models/model").json()["versions"][0]
    assert server.call("POST", f"/v2/models/model/versions/{version}/infer", body).status == 200
    assert server.call("POST", "/v2/models/model/versions/nope/infer", body).status == 404


@pytest.mark.parametrize("tensor, message", [
    ({"name": "y", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}, "unknown input 'y'"),
    ({"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [0, 0, 0, 0]}, "is FP32, not INT64"),
    ({"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}, "needs 8 values"),
    ({"name": "x", "shape": [1, 4], "datatype": "FP99", "data": [0, 0, 0, 0]}, "datatype 'FP99'"),
    ({"name": "x", "shape": [1, 4], "datatype": "FP32"}, 'no "data"'),
    ({"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [0] * 5}, "dim 1 of [batch, 4] must be 4"),
])
def test_v2_bad_tensors(server, tensor, message):
    r = server.call("POST", "/v2/models/model/infer", {"inputs": [tensor]})
    assert r.status == 400 and message in r.json()["error"], r.body


# -- /predict and the forms every route accepts --------------------------------------------------
@pytest.mark.parametrize("body, key", [
    ({"inputs": X}, "outputs"), ({"input": X}, "outputs"), ({"inputs": {"x": X}}, "outputs"),
    ({"instances": X}, "predictions"), ({"instances": [{"x": row} for row in X]}, "predictions"),
])
def test_predict_forms(server, body, key):
    r = server.call("POST", "/predict", body)
    assert r.status == 200, r.body
    close(r.json()[key])


def test_two_inputs_and_outputs(two_io_server):
    x, k = [[0.1, 0.2, 0.3, 0.4], [0, 0, 0, 1]], [[3], [9]]
    r = two_io_server.call("POST", "/predict", {"inputs": {"x": x, "k": k}})
    assert r.status == 200, r.body
    out = r.json()["outputs"]
    np.testing.assert_allclose(out["logits"], np.asarray(x, np.float32) @ W + B, rtol=1e-5)
    np.testing.assert_allclose(out["picked"], TABLE[np.asarray(k)], rtol=1e-6)
    preds = two_io_server.call("POST", "/predict", {"instances": [{"x": x[0], "k": k[0]}]}).json()["predictions"]
    assert set(preds[0]) == {"logits", "picked"}
    r = two_io_server.call("POST", "/v2/models/model/infer", {"outputs": [{"name": "picked"}], "inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x[0]},
        {"name": "k", "shape": [1, 1], "datatype": "INT64", "data": [2]}]})
    assert [o["name"] for o in r.json()["outputs"]] == ["picked"]


@pytest.mark.parametrize("body, status, message", [
    ({"inputs": {"x": [[0, 0, 0, 0]], "k": [[99]]}}, 422, "the model could not run on this input"),
    ({"inputs": {"x": [[0, 0, 0, 0]], "k": [[1.5]]}}, 400, "expected integers (int64), got fractional"),
    ({"inputs": {"x": [[0, 0, 0, 0]]}}, 400, "missing input 'k'"),
    ({"inputs": {"x": [[0, 0, 0, 0]], "k": [[1], [2]]}}, 400, "disagree on the number of rows"),
    ({"inputs": [[0, 0, 0, 0]]}, 400, "the model takes 2 inputs"),
    ({"instances": [[0, 0, 0, 0]]}, 400, "each instance must be an object"),
])
def test_two_io_bad_requests(two_io_server, body, status, message):
    r = two_io_server.call("POST", "/predict", body)
    assert r.status == status and message in r.json()["error"], r.body


@pytest.mark.parametrize("body, message", [
    (b"{not json", "malformed JSON"),
    (b"", "body is empty"),
    (b'"text"', "expected a JSON object"),
    (b'{"rows": []}', 'expected a JSON object with "instances"'),
    (b'{"inputs": [[1, 2, 3]]}', "dim 1 of [batch, 4] must be 4, got 3"),
    (b'{"inputs": [1, 2, 3, 4]}', "wrap a single row in a list"),
    (b'{"inputs": [[1, 2, 3, "4"]]}', "expected numbers (float32), got strings"),
    (b'{"inputs": [[1, 2, 3, null]]}', "got null values"),
    (b'{"inputs": [[1, 2], [3]]}', "not a rectangular array"),
    (b'{"inputs": [[1e308, 0, 0, 0]]}', "outside the float32 range"),
    (b'{"inputs": [[1e999, 0, 0, 0]]}', "malformed JSON"),
    (b'{"inputs": []}', "expected 2 dims"),
    (b'{"inputs": {"x": [[0, 0, 0, 0]], "y": 1}}', "unknown input 'y'"),
    (b'{"instances": [[0, 0, 0, 0]], "parameters": 3}', '"parameters" must be a JSON object'),
])
def test_bad_requests_get_400_naming_the_problem(server, body, message):
    r = server.call("POST", "/predict", body, {"content-type": "application/json"})
    assert r.status == 400, r.body
    doc = r.json()
    assert message in doc["error"] and doc["request_id"] == r.headers["x-request-id"]


def test_routing_errors(server):
    assert server.call("GET", "/nowhere").status == 404
    r = server.call("GET", "/predict")
    assert r.status == 405 and r.headers["allow"] == "POST"
    assert server.call("POST", "/ping", b"{}").status == 405
    r = server.call("POST", "/predict", b"a=1", {"content-type": "application/x-www-form-urlencoded"})
    assert r.status == 415


def test_body_limit(server):
    big = b'{"inputs": [' + b"[0,0,0,0]," * 200_000 + b"[0,0,0,0]]}"
    r = server.call("POST", "/predict", big)
    assert r.status == 413 and "1,500,000-byte limit" in r.json()["error"]


def test_openapi_document_is_served_and_checked_in(server):
    served = server.call("GET", "/openapi.json").json()
    x = served["components"]["schemas"]["Columnar"]["properties"]["inputs"]
    assert x["items"] == {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
    assert set(served["paths"]) == set(openapi.document()["paths"])
    assert json.loads(ROOT_SCHEMA.read_text()) == openapi.document(), (
        "schema/serve.openapi.json is stale: run `mldeploy serve --openapi > schema/serve.openapi.json`")


def test_many_rows_in_one_request(server):
    x = np.random.default_rng(1).normal(size=(500, 4)).round(4).tolist()
    r = server.call("POST", "/predict", {"inputs": x})
    assert r.status == 200
    close(r.json()["outputs"], x)
