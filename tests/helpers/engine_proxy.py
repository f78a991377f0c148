"""The Docker engine's API behind a proxy that fails chosen calls: for the local target, the engine is
the cloud, and this is its API failing (fakes/faults.py's Faults: a 500, a dropped connection, ...).

Point DOCKER_HOST at `proxy.url`; every request is forwarded to the real engine, its answer streamed
back, and logged by its call: "METHOD /containers/*/start", ids and names as *, the API version off.
"""

from __future__ import annotations

import http.client
import re
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.helpers.fakes.faults import Faults, fail

FAULT_BODY = b'{"message": "injected fault"}'  # what the engine answers when it fails inside
KEEP = {"create", "json", "prune"}             # path words that are not an object's id or name
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def call_of(method: str, target: str) -> str:
    parts = re.sub(r"^/v[\d.]+", "", target.split("?", 1)[0]).split("/")
    if len(parts) > 2 and parts[2] not in KEEP:
        parts[2] = "*"
    return f"{method} {'/'.join(parts)}"


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=600)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class EngineProxy:
    def __init__(self, upstream: str, folder: Path):
        self.upstream = upstream.removeprefix("unix://")
        self.socket = folder / "engine.sock"
        self.url = f"unix://{self.socket}"
        self.requests: list[str] = []
        self.faults = Faults()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def address_string(self) -> str:  # a Unix socket has no client address
                return "engine-proxy"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                call = call_of(self.command, self.path)
                proxy.requests.append(call)
                if kind := proxy.faults.take(call):
                    return fail(self, kind, FAULT_BODY)
                if self.headers.get("Upgrade"):  # exec and attach take the connection over: pipe raw bytes
                    return self._splice(body)
                upstream = _Unix(proxy.upstream)
                try:
                    upstream.request(self.command, self.path, body or None,
                                     {k: v for k, v in self.headers.items() if k.lower() not in HOP})
                    answer = upstream.getresponse()
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in HOP:
                            self.send_header(key, value)
                    if answer.status in (204, 304) or self.command == "HEAD":  # no body at all
                        self.end_headers()
                        return
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    while chunk := answer.read1(65536):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                finally:
                    upstream.close()

            def _splice(self, body: bytes) -> None:
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(proxy.upstream)
                head = f"{self.requestline}\r\n{self.headers}".encode("latin-1").rstrip(b"\r\n") + b"\r\n\r\n"
                upstream.sendall(head + body)
                self.wfile.flush()

                def pipe(source: socket.socket, sink: socket.socket) -> None:
                    try:
                        while data := source.recv(65536):
                            sink.sendall(data)
                    except OSError:
                        pass
                    finally:
                        for sock in (sink, source):
                            try:
                                sock.shutdown(socket.SHUT_RDWR)
                            except OSError:
                                pass

                back = threading.Thread(target=pipe, args=(upstream, self.connection), daemon=True)
                back.start()
                pipe(self.connection, upstream)
                back.join()
                upstream.close()
                self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(self.socket), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
