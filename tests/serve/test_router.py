"""The local target's router (`python -m mldeploy.deploy.router`) as a real process in front of a real
server, fed raw requests: chunked bodies forwarded, bad lengths 400, no length 411, bodies over the cap
413, slow bodies 408, silent connections closed; each in one line, never a traceback."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers.models import expected_probs
from tests.helpers.server import free_port

CAP = 4096
ROWS = [[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.75, 3.0]]
BODY = json.dumps({"instances": ROWS}).encode()


@pytest.fixture(scope="module")
def router(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("router")
    routes = folder / "routes.json"
    routes.write_text(json.dumps({"slots": {"production": {"addr": f"127.0.0.1:{server.port}", "weight": 100}}}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLDEPLOY_")}
    env.update(PORT=str(port), MLDEPLOY_ROUTES=str(routes), MLDEPLOY_MAX_BODY_BYTES=str(CAP),
               MLDEPLOY_HEADER_TIMEOUT="2", MLDEPLOY_BODY_TIMEOUT="2")
    log = folder / "router.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "mldeploy.deploy.router"], stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while b"router listening" not in log.read_bytes():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    yield port, process, log
    process.terminate()
    process.wait(10)
    assert "Traceback" not in log.read_text(), log.read_text()


def send(port: int, raw: bytes, then: bytes = b"") -> http.client.HTTPResponse:
    """raw on a new connection (then `then`, after a pause), and the response read back."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(raw)
    if then:
        time.sleep(0.2)
        sock.sendall(then)
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.body = response.read()
    sock.close()
    return response


def post(headers: str, body: bytes = b"") -> bytes:
    return f"POST /predict HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n{headers}\r\n".encode() + body


def chunked(body: bytes, size: int = 7) -> bytes:
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def assert_predictions(response) -> None:
    assert response.status == 200, response.body
    assert response.getheader("x-mldeploy-slot") == "production"
    np.testing.assert_allclose(json.loads(response.body)["predictions"], expected_probs(np.array(ROWS)),
                               rtol=1e-5, atol=1e-6)


def assert_refused(response, status: int, words: str) -> None:
    assert response.status == status, (response.status, response.body)
    assert words in json.loads(response.body)["error"], response.body
    assert len(response.body.splitlines()) == 1


def test_content_length_body_is_forwarded(router):
    assert_predictions(send(router[0], post(f"Content-Length: {len(BODY)}\r\n", BODY)))


def test_chunked_body_is_forwarded(router):
    # sent in two parts, so the router must wait for the rest of the chunks
    raw = post("Transfer-Encoding: chunked\r\n", chunked(BODY))
    assert_predictions(send(router[0], raw[:len(raw) // 2], then=raw[len(raw) // 2:]))


def test_chunked_requests_on_one_kept_alive_connection(router):
    sock = socket.create_connection(("127.0.0.1", router[0]), timeout=20)
    for _ in range(2):
        sock.sendall(post("Transfer-Encoding: chunked\r\n", chunked(BODY, 5)))
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.body = response.read()
        assert_predictions(response)
    sock.close()


@pytest.mark.parametrize("headers,body,status,words", [
    ("Content-Length: abc\r\n", BODY, 400, "not a number"),
    ("Content-Length: -5\r\n", BODY, 400, "not a number"),
    (f"Content-Length: {len(BODY)}\r\nContent-Length: 3\r\n", BODY, 400, "twice"),
    (f"Content-Length: {len(BODY)}\r\nTransfer-Encoding: chunked\r\n", chunked(BODY), 400, "both"),
    ("Transfer-Encoding: gzip\r\n", BODY, 400, "Transfer-Encoding"),
    ("Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n", 400, "hexadecimal"),
    ("", BODY, 411, "no length"),
    (f"Content-Length: {CAP + 1}\r\n", b"x" * (CAP + 1), 413, f"{CAP:,}"),
    ("Transfer-Encoding: chunked\r\n", chunked(b"x" * (CAP + 1), 1000), 413, f"{CAP:,}"),
])
def test_bad_requests_are_answered_in_one_line(router, headers, body, status, words):
    response = send(router[0], post(headers, body))
    assert_refused(response, status, words)
    assert response.getheader("connection") == "close"
    assert router[1].poll() is None
    assert_predictions(send(router[0], post(f"Content-Length: {len(BODY)}\r\n", BODY)))


def test_a_slow_body_is_408(router):
    assert_refused(send(router[0], post(f"Content-Length: {len(BODY)}\r\n", BODY[:5])), 408, "did not arrive")


def test_a_silent_connection_is_closed(router):
    sock = socket.create_connection(("127.0.0.1", router[0]), timeout=20)
    assert sock.recv(1) == b""  # closed at the header deadline, not held until the client's own timeout
    sock.close()
