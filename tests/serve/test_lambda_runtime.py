"""`mldeploy serve` on AWS Lambda: a real process talking to a fake Lambda Runtime API.

Lambda starts the image's entrypoint with AWS_LAMBDA_RUNTIME_API set; the process must then poll
`GET /2018-06-01/runtime/invocation/next` and post each result back. The fake here speaks the
documented paths and headers over HTTP/1.1 keep-alive, hands out a fixed list of events, then
long-polls (as Lambda does when nothing comes) until the test stops the process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.models import expected_probs

X = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.75, 3.0]], np.float32)
API = "/2018-06-01/runtime"
ARN = "arn:aws:lambda:eu-west-1:123456789012:function:mldeploy-model"


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    connection: tuple

    def json(self):
        return json.loads(self.body)


@dataclass
class FakeRuntimeApi:
    events: list[tuple[str, bytes]]                 # (request id, payload), handed out in order
    posts: list[Post] = field(default_factory=list)
    nexts: list[tuple] = field(default_factory=list)  # the client connection of every GET next
    drop_after_first_response: bool = False          # close the kept-alive connection silently once
    changed: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)

    def wait_for(self, count: int, process: subprocess.Popen, timeout: float = 30) -> list[Post]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.posts) < count and process.poll() is None and time.monotonic() < deadline:
                self.changed.wait(0.05)
            return list(self.posts)


def start_fake(fake: FakeRuntimeApi) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real Runtime API

        def log_message(self, *args):
            pass

        def _answer(self, status: int, body: bytes = b"{}", headers: dict | None = None) -> None:
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path != f"{API}/invocation/next":
                return self._answer(404)
            with fake.changed:
                fake.nexts.append(self.client_address)
                event = fake.events.pop(0) if fake.events else None
            if event is None:  # nothing to do: hold the request, as Lambda does, until the test ends
                fake.stop.wait(60)
                self.close_connection = True
                return
            request_id, payload = event
            self._answer(200, payload, {
                "Lambda-Runtime-Aws-Request-Id": request_id,
                "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 30_000),
                "Lambda-Runtime-Invoked-Function-Arn": ARN,
                "Lambda-Runtime-Trace-Id": f"Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent={request_id[:16]};Sampled=1",
            })

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            post = Post(self.path, {k.lower(): v for k, v in self.headers.items()}, body, self.client_address)
            with fake.changed:
                fake.posts.append(post)
                fake.changed.notify_all()
                drop = (fake.drop_after_first_response and self.path.endswith("/response")
                        and sum(p.path.endswith("/response") for p in fake.posts) == 1)
            self._answer(202, b'{"status":"OK"}')
            if drop:  # no `Connection: close`: the client finds out on its next request
                self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_serve(fake: FakeRuntimeApi, bundle: Path, tmp: Path, posts: int,
              extra_env: dict | None = None, exits: bool = False) -> tuple[list[Post], subprocess.Popen, str]:
    """`mldeploy serve`, the image's entrypoint, with Lambda's variable; returns once `posts` came back
    (and, with `exits`, once the process ended on its own: on a busy machine that takes more than 0.1 s)."""
    server = start_fake(fake)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLDEPLOY_", "AWS_", "_X_AMZN"))}
    env.update(AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}", MLDEPLOY_BUNDLE=str(bundle),
               **(extra_env or {}))
    log = tmp / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "mldeploy", "serve"], stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=tmp)
    try:
        fake.wait_for(posts, process)
        time.sleep(0.1)  # anything more than expected would show up here
        with fake.changed:
            got = list(fake.posts)
    finally:
        if exits:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                pass  # it did not exit: terminated below, and the test's exit code check says so
        if process.poll() is None:
            process.terminate()
        process.wait(10)
        fake.stop.set()
        server.shutdown()
        server.server_close()
    return got, process, log.read_text()


def direct(payload: object) -> bytes:
    return json.dumps(payload).encode()


def function_url_event(body: object, headers: dict | None = None) -> bytes:
    """An HTTP API / function URL event (payload 2.0), the body in plain text."""
    return direct({
        "version": "2.0", "routeKey": "$default", "rawPath": "/invocations", "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "abc.lambda-url.eu-west-1.on.aws", **(headers or {})},
        "requestContext": {"accountId": "anonymous", "apiId": "abc", "domainName": "abc.lambda-url.eu-west-1.on.aws",
                           "http": {"method": "POST", "path": "/invocations", "protocol": "HTTP/1.1",
                                    "sourceIp": "203.0.113.7", "userAgent": "curl/8.5"},
                           "requestId": "r-1", "routeKey": "$default", "stage": "$default",
                           "time": "09/Apr/2025:12:34:56 +0000", "timeEpoch": 1744202096000},
        "body": json.dumps(body), "isBase64Encoded": False,
    })


def test_invocations_are_answered_through_the_runtime_api(linear_bundle, tmp_path):
    fake = FakeRuntimeApi(events=[
        ("id-direct", direct({"instances": X.tolist()})),
        ("id-url", function_url_event({"instances": X[:1].tolist()})),
        ("id-bad-shape", direct({"instances": [[1.0, 2.0]]})),
        ("id-not-json", b"{this is not json"),
        # an HTTP event whose headers are a list: API Gateway never sends it, so handle() trips over
        # it; it stands in for a bug, which must go to /error and leave the loop running
        ("id-bug", direct({"httpMethod": "POST", "path": "/invocations", "headers": ["x"], "body": "{}"})),
        ("id-after", direct({"instances": X[1:].tolist()})),
    ], drop_after_first_response=True)
    posts, process, log = run_serve(fake, linear_bundle, tmp_path, posts=6)

    assert process.returncode is not None and process.returncode < 0, log  # still polling until stopped
    by_path = {p.path: p for p in posts}
    assert [p.path for p in posts] == [
        f"{API}/invocation/id-direct/response", f"{API}/invocation/id-url/response",
        f"{API}/invocation/id-bad-shape/response", f"{API}/invocation/id-not-json/response",
        f"{API}/invocation/id-bug/error", f"{API}/invocation/id-after/response"], log

    result = by_path[f"{API}/invocation/id-direct/response"].json()
    assert set(result) == {"predictions"}
    np.testing.assert_allclose(np.array(result["predictions"], np.float32), expected_probs(X), rtol=1e-5, atol=1e-6)

    proxy = by_path[f"{API}/invocation/id-url/response"].json()
    assert proxy["statusCode"] == 200 and proxy["isBase64Encoded"] is False, proxy
    np.testing.assert_allclose(np.array(json.loads(proxy["body"])["predictions"], np.float32),
                               expected_probs(X[:1]), rtol=1e-5, atol=1e-6)

    bad = by_path[f"{API}/invocation/id-bad-shape/response"].json()  # bad input is an answer, not an error
    assert bad["status"] == 400 and "'x'" in bad["error"], bad
    assert by_path[f"{API}/invocation/id-not-json/response"].json()["status"] == 400

    error = by_path[f"{API}/invocation/id-bug/error"]
    assert error.headers["lambda-runtime-function-error-type"]
    assert error.json()["errorType"] == "AttributeError" and error.json()["errorMessage"], error.json()

    after = by_path[f"{API}/invocation/id-after/response"].json()
    np.testing.assert_allclose(np.array(after["predictions"], np.float32), expected_probs(X[1:]), rtol=1e-5, atol=1e-6)

    # one kept-alive connection, renewed once after the fake dropped it; the seventh `next` long-polls
    assert len(fake.nexts) == 7
    connections = {p.connection for p in posts} | set(fake.nexts)
    assert len(connections) == 2, connections
    assert all(p.headers.get("content-type") == "application/json" for p in posts)


def test_a_bundle_that_cannot_load_posts_init_error_and_exits_2(linear_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(linear_bundle, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    fake = FakeRuntimeApi(events=[("id-never", direct({"instances": X.tolist()}))])
    posts, process, log = run_serve(fake, broken, tmp_path, posts=1, exits=True)

    assert process.returncode == 2, log
    assert [p.path for p in posts] == [f"{API}/init/error"], log
    assert posts[0].headers["lambda-runtime-function-error-type"].startswith("Runtime.")
    body = posts[0].json()
    assert body["errorType"] == "UsageError" and "cannot be loaded" in body["errorMessage"], body
    assert fake.nexts == [] and len(fake.events) == 1  # no invocation is taken after a failed init


def test_serve_switches_on_lambdas_variable_only(monkeypatch, linear_bundle):
    from mldeploy.serve import server

    monkeypatch.setenv("MLDEPLOY_BUNDLE", str(linear_bundle))  # restored afterwards: serve() may set it
    monkeypatch.delenv("AWS_LAMBDA_RUNTIME_API", raising=False)
    called = []
    monkeypatch.setattr("mldeploy.serve.lambda_.run_runtime", lambda api: called.append(api) or 0)
    monkeypatch.setattr(server, "_check_port", lambda *a: (_ for _ in ()).throw(RuntimeError("http path")))
    with pytest.raises(RuntimeError, match="http path"):
        server.serve(str(linear_bundle), port=1, host="127.0.0.1", workers=1)
    monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
    assert server.serve(str(linear_bundle)) == 0 and called == ["127.0.0.1:9"]


def test_api_keys_and_rate_limit_hold_on_the_runtime_api(linear_bundle, tmp_path):
    """The image on Lambda (a function URL with auth NONE is public) refuses what the HTTP server refuses."""
    key = "runtime-key-0123456789abcdef"
    fake = FakeRuntimeApi(events=[
        ("id-no-key", function_url_event({"instances": X.tolist()})),
        ("id-key", function_url_event({"instances": X.tolist()}, {"x-api-key": key})),
        ("id-key-2", function_url_event({"instances": X.tolist()}, {"authorization": f"Bearer {key}"})),
        ("id-over", function_url_event({"instances": X.tolist()}, {"x-api-key": key})),
    ])
    posts, _process, log = run_serve(fake, linear_bundle, tmp_path, posts=4, extra_env={
        "MLDEPLOY_API_KEYS": key, "MLDEPLOY_RATE_LIMIT": "1/min", "MLDEPLOY_RATE_BURST": "2"})
    results = {p.path.split("/")[-2]: p.json() for p in posts}
    assert [results[i]["statusCode"] for i in ("id-no-key", "id-key", "id-key-2", "id-over")] == [401, 200, 200, 429], log
    assert results["id-no-key"]["headers"]["www-authenticate"] == "Bearer"
    assert "API key" in json.loads(results["id-no-key"]["body"])["error"]
    assert results["id-over"]["headers"]["retry-after"].isdigit()
    np.testing.assert_allclose(json.loads(results["id-key"]["body"])["predictions"], expected_probs(X), rtol=1e-5, atol=1e-6)
