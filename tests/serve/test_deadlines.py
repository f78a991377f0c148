"""Deadlines and the connection cap of a real `mldeploy serve`, driven by raw sockets.

The server here has 2-second header and body deadlines and room for 8 connections in its one
worker, so every deadline shows within a few seconds. Each test waits at most WAIT seconds for
something that should take about 2: a broken deadline fails it instead of hanging.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.helpers.server import run_serve, start_server

WAIT = 20
CAP = 8
BODY = json.dumps({"instances": [[0.5, -1.0, 2.0, 0.25]]}).encode()


@pytest.fixture(scope="module")
def server(linear_bundle, tmp_path_factory):
    s = start_server(linear_bundle, tmp_path_factory.mktemp("deadlines"), workers=1, env={
        "MLDEPLOY_HEADER_TIMEOUT": "2", "MLDEPLOY_BODY_TIMEOUT": "2", "MLDEPLOY_MAX_CONNECTIONS": str(CAP)})
    yield s
    s.stop()


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    return sock


def closed_by_server(sock: socket.socket, trickle: bytes = b"") -> bool:
    """Reads (sending `trickle` every 0.5 s) until the server closes; False when WAIT passes first."""
    deadline = time.monotonic() + WAIT
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def predict(server, timeout: float = WAIT) -> int:
    return server.call("POST", "/predict", BODY, {"content-type": "application/json"}, timeout=timeout).status


def test_a_silent_connection_is_closed(server):
    with connect(server) as sock:
        assert closed_by_server(sock), "a connection that never sent a byte was kept open"


def test_trickled_headers_are_cut_off(server):
    with connect(server) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\n")
        assert closed_by_server(sock, trickle=b"X-Slow: 1\r\n"), "a head sent a line at a time was read forever"


def test_an_idle_kept_alive_connection_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert closed_by_server(sock), "an idle keep-alive connection was kept open"


def test_an_idle_http2_connection_is_closed(server):
    """An HTTP/2 (h2c prior knowledge) connection had none of the HTTP/1 deadlines: it is not served."""
    with connect(server) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # + SETTINGS
        assert closed_by_server(sock), "an idle HTTP/2 connection was kept open"


def test_a_slow_body_is_408(server):
    with connect(server) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + BODY[:10])
        sock.settimeout(WAIT)
        answer = sock.recv(4096)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert "MLDEPLOY_BODY_TIMEOUT" in json.loads(body)["error"]
    assert predict(server) == 200


def test_silent_connections_above_the_cap_do_not_lock_others_out(server):
    """Twice the worker's connections, all silent: the cap holds them off (backpressure), the header
    deadline frees the slots, and a real client is answered instead of waiting forever."""
    silent = [connect(server) for _ in range(2 * CAP)]
    try:
        assert predict(server) == 200
    finally:
        for sock in silent:
            sock.close()


@pytest.mark.parametrize("variable,value", [("MLDEPLOY_HEADER_TIMEOUT", "0"), ("MLDEPLOY_BODY_TIMEOUT", "soon"),
                                            ("MLDEPLOY_MAX_CONNECTIONS", "-5")])
def test_bad_deadline_settings_refuse_to_start(linear_bundle, variable, value):
    result = run_serve(linear_bundle, {variable: value})
    assert result.returncode == 2, result
    assert variable in result.stderr and "Traceback" not in result.stderr + result.stdout, result.stderr
