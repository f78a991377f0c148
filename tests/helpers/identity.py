"""Small HTTP(S) fakes of token endpoints (GitHub's OIDC URL, Google's STS, Entra ID, ACR's exchange),
the tokens they hand out, and the environment a workload-identity login leaves."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl

GOOGLE_TOKEN = "ya29.fake-access-token"
FEDERATED_TOKEN = "eyJ.federated-SECRET.sig"
ACR_REFRESH = "acr-refresh-token-for-docker"
TENANT = "72f988bf-0000-4000-8000-00000000cafe"
STS_OK = (200, {"access_token": GOOGLE_TOKEN, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer", "expires_in": 3599})


class Fake:
    """A tiny HTTP(S) server: answers paths from `routes` (path -> (status, json)), records every request."""

    def __init__(self, routes: dict[str, tuple[int, dict]], tls: ssl.SSLContext | None = None):
        self.routes = routes
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                fake.requests.append(("POST", self.path, dict(parse_qsl(body))))
                self.answer()

            def do_GET(self):
                fake.requests.append(("GET", self.path, {"authorization": self.headers.get("Authorization", "")}))
                self.answer()

            def answer(self):
                status, body = fake.routes.get(self.path.split("?")[0], (404, {"error": "not_found"}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def azure_workload_identity(monkeypatch, tmp_path: Path, authority: str) -> None:
    """What azure/login (OIDC) or AKS workload identity leaves in the environment."""
    token_file = tmp_path / "federated-token"
    token_file.write_text(FEDERATED_TOKEN)
    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555")
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", authority)
