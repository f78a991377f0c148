"""API keys and rate limiting on real `mldeploy serve` processes, over real HTTP."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.helpers.models import expected_probs
from tests.helpers.server import run_serve, start_server

KEY1 = "k1-7f3a9c2e4b6d8f0a1c3e5b7d"        # 27 characters
KEY2 = "k2-0123456789abcdef0123456789ab"     # 31 characters
ROW = [0.5, -1.0, 2.0, 0.25]
BODY = {"instances": [ROW]}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def assert_prediction(reply) -> None:
    assert reply.status == 200, reply
    np.testing.assert_allclose(reply.json()["predictions"], expected_probs(np.array([ROW])), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def auth_server(linear_bundle, tmp_path_factory):
    s = start_server(linear_bundle, tmp_path_factory.mktemp("auth"), env={"MLDEPLOY_API_KEYS": f"{KEY1}, {KEY2}"},
                     workers=2)
    yield s
    s.stop()


# -- API keys -----------------------------------------------------------------------------------------
def test_predict_without_key_is_401_with_www_authenticate(auth_server):
    reply = auth_server.call("POST", "/predict", BODY)
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert reply.headers["content-type"] == "application/json"
    assert "API key" in reply.json()["error"]


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer k1-wrong-wrong-wrong-wrong-wr"},
    {"X-API-Key": "k2-wrong-wrong-wrong-wrong-wrong"},
    {"Authorization": f"Bearer {KEY1[:-1]}"},          # a prefix of a real key
    {"Authorization": f"Bearer {KEY1}x"},              # a real key plus one character
    {"Authorization": f"Basic {KEY1}"},                # not a bearer token
    {"Authorization": KEY1},                           # no scheme
    {"X-API-Key": ""},
    {"Authorization": "Bearer "},
], ids=["wrong-bearer", "wrong-x-api-key", "prefix", "suffix", "basic", "no-scheme", "empty", "empty-bearer"])
def test_wrong_key_is_401(auth_server, headers):
    reply = auth_server.call("POST", "/predict", BODY, headers)
    assert reply.status == 401, reply
    assert "www-authenticate" in reply.headers


def test_bearer_key_is_accepted(auth_server):
    assert_prediction(auth_server.call("POST", "/predict", BODY, bearer(KEY1)))
    assert_prediction(auth_server.call("POST", "/predict", BODY, {"Authorization": f"bearer {KEY2}"}))


def test_x_api_key_is_accepted(auth_server):
    assert_prediction(auth_server.call("POST", "/predict", BODY, {"X-API-Key": KEY2}))
    assert_prediction(auth_server.call("POST", "/invocations", BODY, {"X-API-Key": KEY1}))


def test_every_prediction_route_needs_a_key(auth_server):
    v2 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    for path, body in (("/predict", BODY), ("/invocations", BODY), ("/score", BODY),
                       ("/v2/models/model/infer", v2)):
        assert auth_server.call("POST", path, body).status == 401, path
        assert auth_server.call("POST", path, body, bearer(KEY1)).status == 200, path
    assert auth_server.call("GET", "/metrics").status == 401
    assert auth_server.call("GET", "/metrics", headers=bearer(KEY1)).status == 200


@pytest.mark.parametrize("path", ["/ping", "/v2/health/ready", "/v2/health/live", "/health", "/",
                                  "/v2/models/model/ready"])
def test_health_routes_need_no_key(auth_server, path):
    reply = auth_server.call("GET", path)
    assert reply.status == 200, (path, reply)


def test_keys_never_appear_in_the_logs(auth_server):
    auth_server.call("POST", "/predict", BODY, bearer(KEY1 + "x"))
    auth_server.call("POST", "/predict", BODY, bearer(KEY2))
    text = auth_server.log.read_text()
    assert "missing or wrong API key" in text  # the refusal is logged...
    assert KEY1 not in text and KEY2 not in text  # ...without the key, right or wrong


def test_keys_from_file(linear_bundle, tmp_path):
    file_key = "file-key-" + "9" * 24
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# rotated 2025-04\n{file_key}\n\n  {KEY2}  \n")
    s = start_server(linear_bundle, tmp_path, env={"MLDEPLOY_API_KEYS_FILE": str(keys),
                                                   "MLDEPLOY_API_KEYS": KEY1})
    try:
        assert s.call("POST", "/predict", BODY).status == 401
        assert_prediction(s.call("POST", "/predict", BODY, bearer(file_key)))
        assert_prediction(s.call("POST", "/predict", BODY, {"X-API-Key": KEY2}))
        assert_prediction(s.call("POST", "/predict", BODY, bearer(KEY1)))  # both sources count
        assert s.call("POST", "/predict", BODY, bearer("# rotated 2025-04")).status == 401  # comments are not keys
    finally:
        assert s.stop() == 0


def test_short_key_refuses_to_start(linear_bundle):
    short = "tooshort123"
    result = run_serve(linear_bundle, {"MLDEPLOY_API_KEYS": f"{KEY1},{short}"})
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "shorter than 16" in lines[0]
    assert short not in result.stderr + result.stdout  # the refusal does not print the key


def test_short_key_in_file_refuses_to_start(linear_bundle, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY1}\nshort-key\n")
    result = run_serve(linear_bundle, {"MLDEPLOY_API_KEYS_FILE": str(keys)})
    assert result.returncode == 2, result
    assert len(result.stderr.strip().splitlines()) == 1 and "shorter than 16" in result.stderr


def test_missing_keys_file_refuses_to_start(linear_bundle, tmp_path):
    result = run_serve(linear_bundle, {"MLDEPLOY_API_KEYS_FILE": str(tmp_path / "nope.txt")})
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MLDEPLOY_API_KEYS_FILE" in lines[0], result.stderr


# -- rate limiting ------------------------------------------------------------------------------------
RATE = 5.0
BURST = 5


def burst_until_refused(s, headers: dict | None = None, limit: int = 50) -> tuple[int, object, float]:
    """Send predictions back to back until one is refused: (how many passed, the refusal, seconds)."""
    start = time.monotonic()
    for passed in range(limit):
        reply = s.call("POST", "/predict", BODY, headers)
        if reply.status != 200:
            return passed, reply, time.monotonic() - start
    raise AssertionError(f"{limit} requests in a row passed a {RATE}/s limit")


def assert_burst(passed: int, seconds: float) -> None:
    # BURST tokens at the start, plus whatever refilled while the requests were being sent
    assert BURST <= passed <= BURST + int(seconds * RATE) + 1, (passed, seconds)


def assert_429(reply) -> int:
    assert reply.status == 429, reply
    retry = reply.headers["retry-after"]
    assert retry.isdigit() and int(retry) >= 1, retry
    assert reply.headers["content-type"] == "application/json"
    assert "rate limit" in reply.json()["error"]
    return int(retry)


def test_rate_limit_refuses_after_the_burst_and_recovers(linear_bundle, tmp_path):
    s = start_server(linear_bundle, tmp_path, env={"MLDEPLOY_RATE_LIMIT": "5/s", "MLDEPLOY_RATE_BURST": "5"},
                     workers=1)
    try:
        passed, refused, seconds = burst_until_refused(s)
        assert_burst(passed, seconds)
        if seconds < 0.15:  # the usual case on loopback: exactly the burst
            assert passed == BURST
        retry = assert_429(refused)
        assert retry <= 2  # one token at 5/s is 0.2 s away
        # probes are never rate limited, even now
        assert s.call("GET", "/ping").status == 200
        assert s.call("GET", "/v2/health/ready").status == 200
        time.sleep(retry)
        assert_prediction(s.call("POST", "/predict", BODY))
        # and the bucket refilled: a full burst passes again
        passed, refused, seconds = burst_until_refused(s)
        assert BURST - 1 <= passed <= BURST + int(seconds * RATE) + 1, (passed, seconds)
        assert_429(refused)
    finally:
        assert s.stop() == 0


def test_rate_limit_per_minute(linear_bundle, tmp_path):
    s = start_server(linear_bundle, tmp_path, env={"MLDEPLOY_RATE_LIMIT": "120/min", "MLDEPLOY_RATE_BURST": "3"})
    try:
        passed, refused, seconds = burst_until_refused(s)
        assert 3 <= passed <= 3 + int(seconds * 2) + 1
        assert_429(refused)
    finally:
        s.stop()


def test_rate_limit_buckets_are_per_key(linear_bundle, tmp_path):
    s = start_server(linear_bundle, tmp_path, env={"MLDEPLOY_RATE_LIMIT": "5/s", "MLDEPLOY_RATE_BURST": "5",
                                                   "MLDEPLOY_API_KEYS": f"{KEY1},{KEY2}"}, workers=1)
    try:
        passed, refused, seconds = burst_until_refused(s, bearer(KEY1))
        assert_burst(passed, seconds)
        assert_429(refused)
        # KEY2 has its own, full bucket, whichever header carries it
        assert_prediction(s.call("POST", "/predict", BODY, {"X-API-Key": KEY2}))
        passed2, refused2, seconds2 = burst_until_refused(s, bearer(KEY2))
        assert BURST - 1 <= passed2 <= BURST + int(seconds2 * RATE) + 1, (passed2, seconds2)
        assert_429(refused2)
        # the same key by the other header is the same bucket
        start = time.monotonic()
        reply = s.call("POST", "/predict", BODY, {"X-API-Key": KEY2})
        if time.monotonic() - start < 0.15:
            assert_429(reply)
    finally:
        s.stop()


def test_requests_without_a_key_do_not_spend_a_keys_bucket(linear_bundle, tmp_path):
    s = start_server(linear_bundle, tmp_path, env={"MLDEPLOY_RATE_LIMIT": "5/s", "MLDEPLOY_RATE_BURST": "5",
                                                   "MLDEPLOY_API_KEYS": f"{KEY1},{KEY2}"}, workers=1)
    try:
        # wrong keys spend the client address's bucket (guessing is throttled), never a key's
        statuses = [s.call("POST", "/predict", BODY, bearer("not-a-key-" + "0" * 20)).status for _ in range(10)]
        assert set(statuses) == {401, 429} and statuses[0] == 401 and statuses[-1] == 429, statuses
        passed, refused, seconds = burst_until_refused(s, bearer(KEY1))
        assert_burst(passed, seconds)
        assert_429(refused)
    finally:
        s.stop()


@pytest.mark.parametrize("variable,value", [
    ("MLDEPLOY_RATE_LIMIT", "fast"),
    ("MLDEPLOY_RATE_LIMIT", "0/s"),
    ("MLDEPLOY_RATE_LIMIT", "5/hour"),
    ("MLDEPLOY_RATE_BURST", "lots"),
])
def test_bad_rate_settings_refuse_to_start(linear_bundle, variable, value):
    env = {"MLDEPLOY_RATE_LIMIT": "5/s", variable: value}
    result = run_serve(linear_bundle, env)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and value in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
