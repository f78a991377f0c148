"""mldeploy.image.platforms against a registry on loopback that wants a Bearer token (as Docker Hub and
ghcr.io do; ECR's Basic login and a real registry's blobs are in tests/contract/test_aws_ecs.py)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mldeploy.image.platforms import Unreadable, platforms, split

INDEX = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
    {"digest": "sha256:" + "1" * 64, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
    {"digest": "sha256:" + "2" * 64, "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    {"digest": "sha256:" + "3" * 64, "size": 1, "platform": {"os": "unknown", "architecture": "unknown"}}]}).encode()
DIGEST = f"sha256:{hashlib.sha256(INDEX).hexdigest()}"


@pytest.fixture
def registry():
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            port = self.server.server_address[1]
            if self.path.startswith("/token?"):
                status, body, headers = 200, json.dumps({"token": "t0k"}).encode(), {}
            elif self.headers.get("Authorization") != "Bearer t0k":
                status, body = 401, b"{}"
                headers = {"WWW-Authenticate": f'Bearer realm="http://127.0.0.1:{port}/token",service="reg",'
                                               'scope="repository:acme/model:pull"'}
            elif self.path == f"/v2/acme/model/manifests/{DIGEST}":
                status, body, headers = 200, INDEX, {}
            elif self.path.startswith("/v2/acme/model/manifests/"):  # any other digest: a wrong answer
                status, body, headers = 200, b'{"manifests": []}', {}
            else:
                status, body, headers = 404, b"{}", {}
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_an_index_behind_a_bearer_challenge_lists_its_platforms(registry, monkeypatch):
    host, seen = registry
    for name in ("MLDEPLOY_REGISTRY_USERNAME", "MLDEPLOY_REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    assert platforms(f"{host}/acme/model@{DIGEST}") == {"linux/amd64", "linux/arm64"}  # attestations left out
    assert seen[1] == "/token?service=reg&scope=repository%3Aacme%2Fmodel%3Apull"


def test_a_manifest_that_is_not_the_digest_is_not_judged(registry):
    host, _ = registry
    with pytest.raises(Unreadable, match="not sha256:"):
        platforms(f"{host}/acme/model@sha256:{'9' * 64}")


def test_names_split_as_docker_reads_them():
    assert split("python@sha256:ab") == ("registry-1.docker.io", "library/python", "sha256:ab")
    assert split("acme/model@sha256:ab") == ("registry-1.docker.io", "acme/model", "sha256:ab")
    assert split("localhost:5000/m@sha256:ab") == ("localhost:5000", "m", "sha256:ab")
    assert split("123456789012.dkr.ecr.us-east-1.amazonaws.com/models/c@sha256:ab")[:2] == (
        "123456789012.dkr.ecr.us-east-1.amazonaws.com", "models/c")
