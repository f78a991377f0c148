"""Small fakes of Google Cloud Storage's JSON API and Azure Blob storage, for reading capture files.

Both hold `buckets[name][object name] = (bytes, modified epoch seconds)` and answer only the reads
`mldeploy monitor drift` makes, as the real clients send them:
  GCS  (google-cloud-storage, client_options api_endpoint = this URL)
    GET /storage/v1/b/B/o?prefix=P                       list (one page), 404 for an unknown bucket
    GET /download/storage/v1/b/B/o/NAME?alt=media        the object's bytes
  Blob (azure-storage-blob, https://ACCOUNT.blob.core.windows.net sent here by mldeploy's transport)
    GET /C?restype=container&comp=list&prefix=P          EnumerationResults XML, 404 ContainerNotFound
    GET /C/NAME                                          the blob (206 for a ranged read)
Blob requests must carry `Bearer <token>` (what the fake Entra ID issued). `requests` logs (method, path).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape


class StorageFake:
    def __init__(self, kind: str, token: str | None = None):
        assert kind in ("gcs", "blob")
        self.kind, self.token = kind, token
        self.buckets: dict[str, dict[str, tuple[bytes, float]]] = {}
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True   # else about 45 ms per request

            def do_GET(self):
                fake.requests.append(("GET", self.path))
                status, headers, body = (fake._gcs if fake.kind == "gcs" else fake._blob)(self)
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def put(self, bucket: str, name: str, data: bytes, modified: float) -> None:
        self.buckets.setdefault(bucket, {})[name] = (data, modified)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _gcs(self, request) -> tuple[int, dict, bytes]:
        url = urlsplit(request.path)
        parts = url.path.split("/")   # "", [download], storage, v1, b, BUCKET, o, [NAME]
        download = parts[1] == "download"
        parts = parts[1 + download:]
        bucket = self.buckets.get(unquote(parts[3])) if len(parts) >= 5 and parts[2] == "b" else None
        if bucket is None:
            return 404, {"Content-Type": "application/json"}, json.dumps(
                {"error": {"code": 404, "message": "The specified bucket does not exist."}}).encode()
        if download:
            data, _ = bucket.get(unquote("/".join(parts[5:])), (None, 0))
            return (200, {"Content-Type": "application/octet-stream"}, data) if data is not None else (404, {}, b"")
        prefix = parse_qs(url.query).get("prefix", [""])[0]
        items = [{"kind": "storage#object", "name": n, "bucket": parts[3], "size": str(len(d)), "generation": "1",
                  "updated": dt.datetime.fromtimestamp(m, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")}
                 for n, (d, m) in sorted(bucket.items()) if n.startswith(prefix)]
        return 200, {"Content-Type": "application/json"}, json.dumps({"kind": "storage#objects", "items": items}).encode()

    def _blob(self, request) -> tuple[int, dict, bytes]:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"x-ms-error-code": "InvalidAuthenticationInfo"}, b""
        url = urlsplit(request.path)
        container, _, name = url.path.lstrip("/").partition("/")
        bucket = self.buckets.get(container)
        if bucket is None:
            return 404, {"x-ms-error-code": "ContainerNotFound", "Content-Type": "application/xml"}, (
                b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ContainerNotFound</Code>'
                b"<Message>The specified container does not exist.</Message></Error>")
        if not name:
            prefix = parse_qs(url.query).get("prefix", [""])[0]
            blobs = "".join(
                f"<Blob><Name>{escape(n)}</Name><Properties><Last-Modified>{formatdate(m, usegmt=True)}</Last-Modified>"
                f"<Etag>0x{int(m * 1000):X}</Etag><Content-Length>{len(d)}</Content-Length>"
                f"<BlobType>BlockBlob</BlobType></Properties></Blob>"
                for n, (d, m) in sorted(bucket.items()) if n.startswith(prefix))
            xml = (f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="https://'
                   f'{escape(request.headers.get("Host", ""))}/" ContainerName="{container}"><Prefix>{escape(prefix)}</Prefix>'
                   f"<Blobs>{blobs}</Blobs><NextMarker /></EnumerationResults>")
            return 200, {"Content-Type": "application/xml"}, xml.encode()
        found = bucket.get(unquote(name))
        if found is None:
            return 404, {"x-ms-error-code": "BlobNotFound"}, b""
        data, modified = found
        headers = {"Content-Type": "application/octet-stream", "x-ms-blob-type": "BlockBlob",
                   "Last-Modified": formatdate(modified, usegmt=True), "ETag": f'"0x{int(modified * 1000):X}"'}
        if request.headers.get("x-ms-range", "").startswith("bytes="):
            start, _, end = request.headers["x-ms-range"][6:].partition("-")
            end_at = min(int(end or len(data) - 1), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end_at}/{len(data)}"
            return 206, headers, data[int(start):end_at + 1]
        return 200, headers, data
