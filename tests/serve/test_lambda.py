"""`mldeploy.serve.lambda_handler` in-process, with the events AWS really sends.

API Gateway REST APIs send the v1 proxy event (httpMethod, path, original-case headers, a text
body); HTTP APIs and function URLs send the v2 event (version 2.0, rawPath,
requestContext.http.method, lower-case headers, usually a base64 body); a direct invoke's event is
the request body itself. Outputs are checked against the model's math, not against the server.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

import mldeploy.serve.lambda_ as lambda_module
from mldeploy.serve import lambda_handler
from tests.helpers.models import TABLE, B, W, expected_probs

X = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.75, 3.0], [0.0, 0.0, 0.0, 0.0]], np.float32)


class Context:
    """What the Lambda runtime passes as `context` (the handler must not need more)."""

    function_name = "mldeploy-model"
    memory_limit_in_mb = 1024
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e812345678"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


CONTEXT = Context()


@pytest.fixture
def linear(monkeypatch, linear_bundle):
    monkeypatch.setenv("MLDEPLOY_BUNDLE", str(linear_bundle))
    monkeypatch.setattr(lambda_module, "_loaded", None)  # a fresh execution environment
    return linear_bundle


@pytest.fixture
def two_io(monkeypatch, two_io_bundle):
    monkeypatch.setenv("MLDEPLOY_BUNDLE", str(two_io_bundle))
    monkeypatch.setattr(lambda_module, "_loaded", None)
    return two_io_bundle


def rest_event(method: str, path: str, body: str | None = None, headers: dict | None = None,
               stage: str = "prod") -> dict:
    """An API Gateway REST API (payload 1.0) proxy integration event, as the console's test sends."""
    headers = headers if headers is not None else {}
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers or None,  # API Gateway sends null, not {}, when there are none
        "multiValueHeaders": {k: [v] for k, v in headers.items()} or None,
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "abc123", "resourcePath": "/{proxy+}", "httpMethod": method,
            "extendedRequestId": "Xyz=", "requestTime": "09/Apr/2025:12:34:56 +0000",
            "path": f"/{stage}{path}", "accountId": "123456789012", "protocol": "HTTP/1.1",
            "stage": stage, "domainPrefix": "abcdef1234", "requestTimeEpoch": 1744202096000,
            "requestId": "e0b6d3b4-1f8a-4c56-9c7e-9a1e2b3c4d5e",
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "python-requests/2.32"},
            "domainName": "abcdef1234.execute-api.eu-west-1.amazonaws.com", "apiId": "abcdef1234",
        },
        "body": body,
        "isBase64Encoded": False,
    }


def http_event(method: str, path: str, body: bytes | None = None, headers: dict | None = None,
               base64_body: bool = True) -> dict:
    """An HTTP API (payload 2.0) or Lambda function URL event: lower-case headers, base64 body."""
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": "abcdefgh.lambda-url.eu-west-1.on.aws", "user-agent": "curl/8.5.0",
                    "x-amzn-trace-id": "Root=1-67f6a2b0-0123456789abcdef01234567",
                    "x-forwarded-proto": "https", **(headers or {})},
        "requestContext": {
            "accountId": "anonymous", "apiId": "abcdefgh",
            "domainName": "abcdefgh.lambda-url.eu-west-1.on.aws", "domainPrefix": "abcdefgh",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7",
                     "userAgent": "curl/8.5.0"},
            "requestId": "5a1c1e2e-7d44-4e0b-a0d0-0c1e2f3a4b5c", "routeKey": "$default", "stage": "$default",
            "time": "09/Apr/2025:12:34:56 +0000", "timeEpoch": 1744202096000,
        },
        "isBase64Encoded": False,
    }
    if body is not None:
        if base64_body:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
        else:
            event["body"] = body.decode()
    return event


def body_json(response: dict) -> object:
    assert response["isBase64Encoded"] is False
    return json.loads(response["body"])


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


# -- API Gateway REST (v1) ------------------------------------------------------------------------
def test_rest_v1_proxy_event_predicts(linear):
    event = rest_event("POST", "/predict", json.dumps({"instances": X.tolist()}),
                       {"Content-Type": "application/json", "Accept": "*/*", "Host": "x.execute-api.aws"})
    response = lambda_handler(event, CONTEXT)
    assert response["statusCode"] == 200
    assert response["headers"]["content-type"] == "application/json"
    got = np.array(body_json(response)["predictions"], np.float32)
    np.testing.assert_allclose(got, expected_probs(X), rtol=1e-5, atol=1e-6)


def test_rest_v1_sagemaker_route_and_columnar_form(linear):
    event = rest_event("POST", "/invocations", json.dumps({"inputs": X[:2].tolist()}),
                       {"content-type": "application/json"})
    response = lambda_handler(event, CONTEXT)
    assert response["statusCode"] == 200
    got = np.array(body_json(response)["outputs"], np.float32)
    np.testing.assert_allclose(got, expected_probs(X[:2]), rtol=1e-5, atol=1e-6)


# -- HTTP API v2 / function URL ---------------------------------------------------------------------
def test_http_api_v2_base64_body_predicts(linear):
    event = http_event("POST", "/predict", json.dumps({"instances": X.tolist()}).encode(),
                       {"content-type": "application/json"})
    assert event["isBase64Encoded"] is True
    response = lambda_handler(event, CONTEXT)
    assert response["statusCode"] == 200, response
    got = np.array(body_json(response)["predictions"], np.float32)
    np.testing.assert_allclose(got, expected_probs(X), rtol=1e-5, atol=1e-6)


def test_function_url_plain_text_body_and_v2_infer(two_io):
    x, k = X[:2], np.array([[3], [7]], np.int64)
    doc = {"id": "req-7", "inputs": [
        {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": x.reshape(-1).tolist()},
        {"name": "k", "shape": [2, 1], "datatype": "INT64", "data": k.reshape(-1).tolist()}]}
    event = http_event("POST", "/v2/models/model/infer", json.dumps(doc).encode(),
                       {"content-type": "application/json"}, base64_body=False)
    response = lambda_handler(event, CONTEXT)
    assert response["statusCode"] == 200, response
    out = body_json(response)
    assert out["id"] == "req-7"
    tensors = {t["name"]: t for t in out["outputs"]}
    assert tensors["logits"]["shape"] == [2, 3]
    np.testing.assert_allclose(np.array(tensors["logits"]["data"]).reshape(2, 3), x @ W + B, rtol=1e-5, atol=1e-5)
    assert tensors["picked"]["shape"] == [2, 1, 2]
    np.testing.assert_allclose(np.array(tensors["picked"]["data"]).reshape(2, 1, 2), TABLE[k], rtol=1e-6)


def test_npy_body_answered_in_npy(linear):
    event = http_event("POST", "/invocations", npy_bytes(X),
                       {"content-type": "application/x-npy", "accept": "application/x-npy"})
    response = lambda_handler(event, CONTEXT)
    assert response["statusCode"] == 200, response
    assert response["headers"]["content-type"] == "application/x-npy"
    assert response["isBase64Encoded"] is True  # binary bodies must go back base64 or API Gateway mangles them
    got = np.load(io.BytesIO(base64.b64decode(response["body"])), allow_pickle=False)
    assert got.dtype == np.float32 and got.shape == (3, 3)
    np.testing.assert_allclose(got, expected_probs(X), rtol=1e-5, atol=1e-6)


def test_npy_body_answered_in_json_without_accept(linear):
    event = http_event("POST", "/invocations", npy_bytes(X), {"content-type": "application/x-npy",
                                                               "accept": "application/json"})
    response = lambda_handler(event, CONTEXT)
    assert response["statusCode"] == 200
    got = np.array(body_json(response)["predictions"], np.float32)
    np.testing.assert_allclose(got, expected_probs(X), rtol=1e-5, atol=1e-6)


# -- direct invoke ----------------------------------------------------------------------------------
def test_direct_invoke_returns_the_json_response(linear):
    result = lambda_handler({"instances": X.tolist()}, CONTEXT)
    assert set(result) == {"predictions"}
    np.testing.assert_allclose(np.array(result["predictions"], np.float32), expected_probs(X),
                               rtol=1e-5, atol=1e-6)


def test_direct_invoke_bad_input_is_an_error_object(linear):
    result = lambda_handler({"instances": [[1.0, 2.0]]}, CONTEXT)
    assert result["status"] == 400
    assert "'x'" in result["error"] and "4" in result["error"]


def test_direct_invoke_model_error_is_422(two_io):
    result = lambda_handler({"instances": [{"x": X[0].tolist(), "k": [99]}]}, CONTEXT)
    assert result["status"] == 422
    assert "could not run" in result["error"]


def test_direct_invoke_non_object_event_is_400(linear):
    result = lambda_handler([1, 2, 3], CONTEXT)
    assert result["status"] == 400


# -- health and routing -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/ping", "/health", "/", "/v2/health/ready", "/v2/health/live",
                                  "/v2/models/model/ready"])
def test_health_get(linear, path):
    for event in (rest_event("GET", path), http_event("GET", path)):
        response = lambda_handler(event, CONTEXT)
        assert response["statusCode"] == 200, (path, response)
        assert body_json(response) == {"ready": True}


@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("POST", "/nope"), ("GET", "/predict"),
                                         ("POST", "/ping"), ("POST", "/v2/models/other/infer")])
def test_unknown_route_is_404(linear, method, path):
    body = json.dumps({"instances": X.tolist()}) if method == "POST" else None
    response = lambda_handler(rest_event(method, path, body, {"Content-Type": "application/json"}), CONTEXT)
    assert response["statusCode"] == 404, response
    assert response["headers"]["content-type"] == "application/json"
    assert path in body_json(response)["error"]


# -- errors -----------------------------------------------------------------------------------------
def test_bad_input_is_400_naming_the_input(linear):
    event = http_event("POST", "/predict", json.dumps({"instances": [[1.0, 2.0, 3.0]]}).encode(),
                       {"content-type": "application/json"})
    response = lambda_handler(event, CONTEXT)
    assert response["statusCode"] == 400
    error = body_json(response)["error"]
    assert "'x'" in error and "must be 4" in error


def test_bad_input_type_is_400_naming_the_input(two_io):
    doc = {"instances": [{"x": X[0].tolist(), "k": [1.5]}]}
    response = lambda_handler(rest_event("POST", "/predict", json.dumps(doc), {"Content-Type": "application/json"}),
                              CONTEXT)
    assert response["statusCode"] == 400
    error = body_json(response)["error"]
    assert "'k'" in error and "integers" in error


def test_malformed_json_is_400(linear):
    response = lambda_handler(rest_event("POST", "/predict", '{"instances": [', {"Content-Type": "application/json"}),
                              CONTEXT)
    assert response["statusCode"] == 400
    assert "JSON" in body_json(response)["error"]


def test_model_error_is_422(two_io):
    doc = {"instances": [{"x": X[0].tolist(), "k": [99]}]}
    response = lambda_handler(http_event("POST", "/predict", json.dumps(doc).encode(),
                                         {"content-type": "application/json"}), CONTEXT)
    assert response["statusCode"] == 422
    assert "could not run" in body_json(response)["error"]
    # and the environment keeps serving good requests afterwards
    good = {"instances": [{"x": X[0].tolist(), "k": [2]}]}
    response = lambda_handler(http_event("POST", "/predict", json.dumps(good).encode(),
                                         {"content-type": "application/json"}), CONTEXT)
    assert response["statusCode"] == 200
    row = body_json(response)["predictions"][0]
    np.testing.assert_allclose(row["logits"], X[0] @ W + B, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(row["picked"], TABLE[[2]], rtol=1e-6)


def test_body_over_the_limit_is_413(monkeypatch, linear):
    monkeypatch.setenv("MLDEPLOY_MAX_BODY_BYTES", "2048")
    big = json.dumps({"instances": [X[0].tolist()] * 100}).encode()
    assert len(big) > 2048
    response = lambda_handler(http_event("POST", "/predict", big, {"content-type": "application/json"}), CONTEXT)
    assert response["statusCode"] == 413
    assert "2,048" in body_json(response)["error"]
    small = json.dumps({"instances": X.tolist()}).encode()
    assert len(small) < 2048
    assert lambda_handler(http_event("POST", "/predict", small, {"content-type": "application/json"}),
                          CONTEXT)["statusCode"] == 200
    # a direct invoke is held to the same limit
    result = lambda_handler({"instances": [X[1].tolist()] * 200}, CONTEXT)
    assert result["status"] == 413


def test_bad_base64_is_400(linear):
    event = http_event("POST", "/predict", headers={"content-type": "application/json"})
    event["body"], event["isBase64Encoded"] = "eyJpbnN0YW5jZXMiOi!!not base64", True
    response = lambda_handler(event, CONTEXT)
    assert response["statusCode"] == 400
    assert "base64" in body_json(response)["error"]


def test_model_loads_once_per_environment(linear):
    assert lambda_module._loaded is None
    lambda_handler(rest_event("GET", "/ping"), CONTEXT)
    first = lambda_module._loaded
    assert first is not None
    lambda_handler({"instances": X.tolist()}, CONTEXT)
    assert lambda_module._loaded is first


# -- API keys and rate limits: the same as the HTTP server's ---------------------------------------
KEY = "lambda-key-0123456789abcdef"


def test_api_keys_hold_for_http_events(monkeypatch, linear):
    """A function URL with auth NONE (or an open API Gateway route) must not serve without a key."""
    monkeypatch.setenv("MLDEPLOY_API_KEYS", KEY)
    body = json.dumps({"instances": X.tolist()}).encode()
    json_type = {"content-type": "application/json"}
    for event in (http_event("POST", "/predict", body, json_type), rest_event("POST", "/invocations", body.decode()),
                  http_event("POST", "/predict", body, {**json_type, "authorization": "Bearer " + KEY[:-1]})):
        response = lambda_handler(event, CONTEXT)
        assert response["statusCode"] == 401, response
        assert response["headers"]["www-authenticate"] == "Bearer"
        assert "API key" in body_json(response)["error"]
    for event in (http_event("POST", "/predict", body, {**json_type, "authorization": f"Bearer {KEY}"}),
                  rest_event("POST", "/invocations", body.decode(), {"X-API-Key": KEY})):
        response = lambda_handler(event, CONTEXT)
        assert response["statusCode"] == 200, response
        np.testing.assert_allclose(body_json(response)["predictions"], expected_probs(X), rtol=1e-5, atol=1e-6)
    assert lambda_handler(http_event("GET", "/ping"), CONTEXT)["statusCode"] == 200  # probes carry no key
    # a direct invoke has no headers: IAM (lambda:InvokeFunction) authorized it
    assert "predictions" in lambda_handler({"instances": X.tolist()}, CONTEXT)


def test_rate_limit_holds_for_http_events_and_direct_invokes(monkeypatch, linear):
    monkeypatch.setenv("MLDEPLOY_RATE_LIMIT", "1/min")
    monkeypatch.setenv("MLDEPLOY_RATE_BURST", "2")
    body = json.dumps({"instances": X.tolist()}).encode()
    responses = [lambda_handler(http_event("POST", "/predict", body), CONTEXT) for _ in range(3)]
    assert [r["statusCode"] for r in responses] == [200, 200, 429], responses
    assert responses[2]["headers"]["retry-after"].isdigit() and "rate limit" in body_json(responses[2])["error"]
    other = http_event("POST", "/predict", body)
    other["requestContext"]["http"]["sourceIp"] = "198.51.100.9"  # another caller has its own bucket
    assert lambda_handler(other, CONTEXT)["statusCode"] == 200
    results = [lambda_handler({"instances": X.tolist()}, CONTEXT) for _ in range(3)]
    assert "predictions" in results[1] and results[2]["status"] == 429, results
