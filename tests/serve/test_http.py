"""The HTTP/1.1 layer of a real `mldeploy serve` (serve/http.py), driven by raw sockets: what clients
other than a browser or an SDK send - pipelined requests, Expect: 100-continue, chunked bodies over
the cap, HTTP/1.0, HEAD, absolute-form targets, other HTTP versions."""

from __future__ import annotations

import json
import socket

import pytest

from tests.helpers.server import start_server

BODY = json.dumps({"instances": [[0.5, -1.0, 2.0, 0.25]]}).encode()
MAX_BODY = 4096


@pytest.fixture(scope="module")
def server(linear_bundle, tmp_path_factory):
    s = start_server(linear_bundle, tmp_path_factory.mktemp("http"), workers=1,
                     env={"MLDEPLOY_MAX_BODY_BYTES": str(MAX_BODY)})
    yield s
    s.stop()


def exchange(server, data: bytes, answers: int = 1, timeout: float = 10) -> list[tuple[bytes, dict, bytes]]:
    """Send data, read `answers` responses: (status line, headers, body) each. Stops early at EOF."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answers(sock, answers)


def read_answers(sock: socket.socket, answers: int) -> list[tuple[bytes, dict, bytes]]:
    buffer, out = b"", []
    while len(out) < answers:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = {k.decode().lower(): v.decode() for k, _, v in (line.partition(b": ") for line in lines)}
        length = int(headers.get("content-length", 0)) if not status.endswith(b"Continue") else 0
        while len(buffer) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
        out.append((status, headers, buffer[:length]))
        buffer = buffer[length:]
    return out


def post(body: bytes, extra: bytes = b"", path: bytes = b"/predict", version: bytes = b"HTTP/1.1") -> bytes:
    return (b"POST " + path + b" " + version + b"\r\nHost: t\r\nContent-Type: application/json\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def test_pipelined_requests_are_answered_in_order(server):
    ids = [f"pipe-{i}".encode() for i in range(5)]
    data = b"".join(post(BODY, b"X-Request-Id: " + i + b"\r\n") if n % 2 == 0 else
                    b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Request-Id: " + i + b"\r\n\r\n" for n, i in enumerate(ids))
    answers = exchange(server, data, answers=5)
    assert [a[1]["x-request-id"] for a in answers] == [i.decode() for i in ids]
    assert all(a[0].startswith(b"HTTP/1.1 200") for a in answers), answers
    assert "predictions" in json.loads(answers[0][2]) and json.loads(answers[1][2]) == {"ready": True}


def test_expect_100_continue(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post(b"", b"Expect: 100-continue\r\n").replace(b"Content-Length: 0", b"Content-Length: %d"
                                                                   % len(BODY)))
        (status, _, _), = read_answers(sock, 1)
        assert status == b"HTTP/1.1 100 Continue"
        sock.sendall(BODY)
        (status, _, body), = read_answers(sock, 1)
        assert status.startswith(b"HTTP/1.1 200") and "predictions" in json.loads(body)


def test_expect_100_continue_over_the_cap_is_413_before_the_body(server):
    head = post(b"", b"Expect: 100-continue\r\n").replace(b"Content-Length: 0", b"Content-Length: %d" % (MAX_BODY + 1))
    (status, headers, body), = exchange(server, head)
    assert status.startswith(b"HTTP/1.1 413") and headers["connection"] == "close"
    assert "MLDEPLOY_MAX_BODY_BYTES" in json.loads(body)["error"]


def test_a_chunked_body_over_the_cap_is_413(server):
    chunk = b"x" * 1024
    data = (b"POST /predict HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"400\r\n" + chunk + b"\r\n") * 5 + b"0\r\n\r\n")
    (status, headers, _), = exchange(server, data)
    assert status.startswith(b"HTTP/1.1 413") and headers["connection"] == "close"


def test_a_chunked_body_within_the_cap_is_served(server):
    data = (b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(BODY[i:i + 7]), BODY[i:i + 7]) for i in range(0, len(BODY), 7))
            + b"0\r\n\r\n")
    (status, _, body), = exchange(server, data)
    assert status.startswith(b"HTTP/1.1 200") and "predictions" in json.loads(body)


def test_http_1_0_is_answered_and_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post(BODY, version=b"HTTP/1.0"))
        (status, headers, _), = read_answers(sock, 1)
        assert status.startswith(b"HTTP/1.1 200") and headers["connection"] == "close"
        sock.settimeout(10)
        assert sock.recv(1) == b""


def test_head_has_the_length_but_no_body(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"HEAD /openapi.json HTTP/1.1\r\nHost: t\r\n\r\nGET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b'{"ready":true}'):
            data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert length > 100 and rest.startswith(b"HTTP/1.1 200"), data  # the next answer follows the head at once


def test_absolute_form_target(server):
    (status, _, body), = exchange(server, post(BODY, path=b"http://t/predict"))
    assert status.startswith(b"HTTP/1.1 200") and "predictions" in json.loads(body)


@pytest.mark.parametrize("request_line", [b"GET /ping HTTP/2.0", b"GET /ping HTTP/0.9", b"GET /ping FTP/1.1",
                                          b"\x16\x03\x01\x02\x00\x01\x00"])  # the last: a TLS ClientHello
def test_other_versions_and_garbage_are_refused_and_closed(server, request_line):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request_line + b"\r\nHost: t\r\n\r\n")
        answers = read_answers(sock, 1)
        assert not answers or answers[0][0][9:10] in (b"4", b"5"), answers
        sock.settimeout(10)
        assert sock.recv(65536) == b""  # closed
    assert server.call("GET", "/ping").status == 200
