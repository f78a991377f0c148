"""Cloud registries the Docker engine can push to on this machine: ECR, Artifact Registry and ACR
hosts, by their real names, answered by one TLS front on 127.0.0.1:443 that keeps the images in the
local registry (127.0.0.1:5000).

/etc/hosts sends each name to 127.0.0.1 and the engine trusts a throwaway CA through
/etc/docker/certs.d/<host>/ca.crt (Python clients through SSL_CERT_FILE / REQUESTS_CA_BUNDLE).
Like the real registries, each host
- wants the login its cloud issued (Basic auth, checked against what the cloud's fake handed out),
- refuses a push to a repository its cloud's API has not created (ECR and Artifact Registry; ACR
  creates repositories on push),
- refuses a tag that exists when its cloud's API made the repository's tags immutable (ECR),
  even on the same image, as ECR does,
- tells its cloud's API about what was pushed, under the registry's own digest (ECR: moto's
  DescribeImages then finds it, as ECR's does),
- and answers ACR's token exchange (/oauth2/exchange).
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

ECR_HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"   # moto's account and region
AR_HOST = "europe-docker.pkg.dev"
ACR_HOST = "acme.azurecr.io"
MARKER = "# mldeploy e2e cloud registries"
HOSTS_FILE = Path("/etc/hosts")
CERTS_D = Path("/etc/docker/certs.d")
ROUTE = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>blobs|manifests|tags)/(?P<ref>[^?]*)")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


@dataclass
class Registry:
    """How one cloud's registry host behaves; every hook may be None."""
    login: Callable[[], tuple[str, str]] | None = None        # the (user, password) the cloud issued
    has_repository: Callable[[str], bool] | None = None       # its API created this repository
    pushed: Callable[[str, str, str, bytes, str], None] | None = None  # name, ref, digest, manifest, type
    exchange: Callable[[dict[str, str]], tuple[int, dict]] | None = None  # ACR's /oauth2/exchange
    tag_taken: Callable[[str, str], bool] | None = None       # an immutable repository has this tag
    pushes: list[str] = field(default_factory=list)           # repository@digest, in order


class CloudRegistries:
    """The TLS front; `registries[host]` is that host's behaviour (hosts without one get 404)."""

    def __init__(self, backend: str, context: ssl.SSLContext, port: int = 443):
        self.backend = backend
        self.registries: dict[str, Registry] = {}
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                front.handle(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        # the handshake happens in the request's thread, not in the accepting one
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- one request ---------------------------------------------------------------------------------
    def handle(self, request: BaseHTTPRequestHandler) -> None:
        host = (request.headers.get("Host") or "").split(":")[0].lower()
        registry = self.registries.get(host)
        if registry is None:
            return answer(request, 404, {"errors": [{"code": "NAME_UNKNOWN", "message": f"no registry {host}"}]})
        if request.path == "/oauth2/exchange" and request.command == "POST" and registry.exchange:
            form = dict(parse_qsl(read_body(request).decode()))
            return answer(request, *registry.exchange(form))
        if not request.path.startswith("/v2/"):
            return answer(request, 404, {"errors": [{"code": "NOT_FOUND", "message": request.path}]})
        if registry.login and request.headers.get("Authorization") != basic(*registry.login()):
            return answer(request, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                          {"WWW-Authenticate": f'Basic realm="{host}"',  # the version: how a client knows a v2 registry
                           "Docker-Distribution-Api-Version": "registry/2.0"})
        route = ROUTE.match(request.path)
        if route and registry.has_repository and not registry.has_repository(route["name"]):
            return answer(request, 404, {"errors": [{
                "code": "NAME_UNKNOWN", "message": f"The repository with name '{route['name']}' does not exist "
                                                   f"in the registry {host}"}]})
        manifest_put = bool(route and route["kind"] == "manifests" and request.command == "PUT")
        if (manifest_put and not route["ref"].startswith("sha256:") and registry.tag_taken
                and registry.tag_taken(route["name"], route["ref"])):
            read_body(request)
            return answer(request, 400, {"errors": [{"code": "TAG_INVALID", "message": (
                f"The image tag '{route['ref']}' already exists in the '{route['name']}' repository and cannot "
                "be overwritten because the repository is immutable.")}]})
        status, headers, body, sent = self.forward(request, keep_body=manifest_put)
        if manifest_put and status == 201:
            digest = headers.get("Docker-Content-Digest", "")
            registry.pushes.append(f"{host}/{route['name']}@{digest}")
            if registry.pushed:
                registry.pushed(route["name"], route["ref"], digest, sent,
                                request.headers.get("Content-Type", ""))
        request.send_response(status)
        for name, value in headers.items():
            if name.lower() not in HOP_BY_HOP:
                request.send_header(name, value)
        length = headers.get("Content-Length", "0") if request.command == "HEAD" else str(len(body))
        request.send_header("Content-Length", length)
        request.end_headers()
        request.wfile.write(body)

    def forward(self, request: BaseHTTPRequestHandler, keep_body: bool) -> tuple[int, dict, bytes, bytes]:
        """Send the request on to the local registry, streaming its body; the registry builds its
        Location URLs from the Host and X-Forwarded-Proto it sees, so they point back here."""
        conn = http.client.HTTPConnection(self.backend, timeout=300)
        conn.putrequest(request.command, request.path, skip_host=True, skip_accept_encoding=True)
        for name, value in request.headers.items():
            if name.lower() not in {"connection", "keep-alive", "proxy-connection"}:
                conn.putheader(name, value)
        conn.putheader("X-Forwarded-Proto", "https")
        conn.endheaders()
        kept = bytearray()
        for piece in body_pieces(request):
            conn.send(piece)
            if keep_body:
                kept += piece
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if keep_body and "chunked" in (request.headers.get("Transfer-Encoding") or ""):
            kept = bytearray(dechunk(bytes(kept)))
        return response.status, dict(response.getheaders()), body, bytes(kept)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def answer(request: BaseHTTPRequestHandler, status: int, body: dict, headers: dict | None = None) -> None:
    read_body(request)  # a body left unread would be taken for the next request
    data = json.dumps(body).encode()
    request.send_response(status)
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        request.send_header(name, value)
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)


def read_body(request: BaseHTTPRequestHandler) -> bytes:
    data = b"".join(body_pieces(request))
    return dechunk(data) if "chunked" in (request.headers.get("Transfer-Encoding") or "") else data


def body_pieces(request: BaseHTTPRequestHandler, size: int = 1 << 20):
    """The request body as it came on the wire (chunked framing kept), in pieces; read only once."""
    if getattr(request, "_body_read", False):
        return
    request._body_read = True
    if "chunked" in (request.headers.get("Transfer-Encoding") or ""):
        while True:
            line = request.rfile.readline()
            yield line
            left = int(line.split(b";")[0].strip() or b"0", 16)
            if left == 0:
                while True:  # trailers, up to the empty line
                    trailer = request.rfile.readline()
                    yield trailer
                    if trailer in (b"\r\n", b"\n", b""):
                        return
            yield from _read(request.rfile, left + 2, size)  # the chunk and its CRLF
    else:
        yield from _read(request.rfile, int(request.headers.get("Content-Length") or 0), size)


def _read(stream, left: int, size: int):
    while left:
        piece = stream.read(min(size, left))
        if not piece:
            return
        left -= len(piece)
        yield piece


def dechunk(data: bytes) -> bytes:
    out, rest = bytearray(), data
    while rest:
        line, rest = rest.split(b"\r\n", 1)
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    return bytes(out)


def name_hosts(hosts: list[str], ca: Path) -> Callable[[], None]:
    """Point `hosts` at 127.0.0.1 and make the engine trust `ca` for them; returns the undo.
    Lines a killed earlier run left behind are replaced."""
    original = "".join(line for line in HOSTS_FILE.read_text().splitlines(keepends=True) if MARKER not in line)
    if original and not original.endswith("\n"):
        original += "\n"
    HOSTS_FILE.write_text(original + "".join(f"127.0.0.1 {h}  {MARKER}\n" for h in hosts))  # in place: may be a mount
    for host in hosts:
        (CERTS_D / host).mkdir(parents=True, exist_ok=True)
        (CERTS_D / host / "ca.crt").write_bytes(ca.read_bytes())
    time.sleep(5.1)  # the engine's Go resolver may hold /etc/hosts as it read it up to 5 s ago

    def undo() -> None:
        HOSTS_FILE.write_text(original)
        for host in hosts:
            (CERTS_D / host / "ca.crt").unlink(missing_ok=True)
            try:
                (CERTS_D / host).rmdir()
            except OSError:
                pass

    return undo
