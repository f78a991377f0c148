"""Small fakes of Google Cloud Storage's JSON API and Azure Blob storage, for reading capture files.

Both hold `buckets[name][object name] = (bytes, modified epoch seconds)` and answer only the reads
`mldeploy monitor drift` makes, as the real clients send them, and for GCS what the model artifacts
(mldeploy.artifacts.gcs) write:
  GCS  (google-cloud-storage, client_options api_endpoint = this URL)
    GET /storage/v1/b/B/o?prefix=P[&delimiter=/][&versions=true]   list (one page), 404 for an unknown bucket
    GET /download/storage/v1/b/B/o/NAME?alt=media        the object's bytes
    GET /storage/v1/b/B , GET /storage/v1/b/B/o/NAME     the bucket (its versioning), an object's metadata
    POST /upload/storage/v1/b/B/o?uploadType=multipart[&ifGenerationMatch=0]   a new generation (412 when
                                                         ifGenerationMatch does not hold)
    DELETE /storage/v1/b/B/o/NAME[?generation=G]         the live object, or that generation
  Every write makes a new generation; a bucket in `versioned` keeps the replaced ones (noncurrent).
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
        self.generation = {}                  # (bucket, name) -> the live generation (GCS)
        self.noncurrent: dict[tuple[str, str], list[tuple[int, bytes]]] = {}
        self.versioned: set[str] = set()      # buckets with object versioning on
        self.next_generation = 1000
        fake = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True   # else about 45 ms per request

            def do_GET(self):
                fake.requests.append((self.command, self.path))
                status, headers, body = (fake._gcs if fake.kind == "gcs" else fake._blob)(self)
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_DELETE = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def put(self, bucket: str, name: str, data: bytes, modified: float) -> None:
        """Write an object (a new generation; the old one kept when the bucket is versioned)."""
        live = self.buckets.setdefault(bucket, {})
        if name in live and bucket in self.versioned:
            self.noncurrent.setdefault((bucket, name), []).append((self.generation[(bucket, name)], live[name][0]))
        self.next_generation += 1
        self.generation[(bucket, name)] = self.next_generation
        live[name] = (data, modified)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _gcs(self, request) -> tuple[int, dict, bytes]:
        url = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.split("/")   # "", [download|upload], storage, v1, b, BUCKET, o, [NAME]
        download, upload = parts[1] == "download", parts[1] == "upload"
        parts = parts[1 + (download or upload):]
        name = unquote(parts[3]) if len(parts) >= 4 and parts[2] == "b" else ""
        bucket = self.buckets.get(name)
        if bucket is None:
            return _json(404, {"error": {"code": 404, "message": "The specified bucket does not exist."}})
        if len(parts) == 4:
            return _json(200, {"kind": "storage#bucket", "name": name, "versioning": {"enabled": name in self.versioned}})
        key = unquote("/".join(parts[5:]))
        if upload:
            return self._gcs_upload(request, name, query)
        if request.command == "DELETE":
            return self._gcs_delete(name, key, query.get("generation"))
        if download or key:
            if key not in bucket:
                return _json(404, {"error": {"code": 404, "message": f"No such object: {name}/{key}"}})
            if download:
                return 200, {"Content-Type": "application/octet-stream"}, bucket[key][0]
            return _json(200, self._gcs_object(name, key, *bucket[key]))
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter")
        items, prefixes = [], set()
        for n, (d, m) in sorted(bucket.items()):
            if not n.startswith(prefix):
                continue
            if delimiter and delimiter in n[len(prefix):]:
                prefixes.add(n[:len(prefix) + n[len(prefix):].index(delimiter) + 1])
                continue
            items.append(self._gcs_object(name, n, d, m))
            if query.get("versions") == "true":
                items += [{**self._gcs_object(name, n, old, m), "generation": str(g)}
                          for g, old in self.noncurrent.get((name, n), [])]
        return _json(200, {"kind": "storage#objects", "items": items, "prefixes": sorted(prefixes)})

    def _gcs_object(self, bucket: str, name: str, data: bytes, modified: float) -> dict:
        return {"kind": "storage#object", "name": name, "bucket": bucket, "size": str(len(data)),
                "generation": str(self.generation.get((bucket, name), 1)),
                "updated": dt.datetime.fromtimestamp(modified, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")}

    def _gcs_upload(self, request, bucket: str, query: dict) -> tuple[int, dict, bytes]:
        """A multipart upload (JSON metadata, then the bytes), with GCS's ifGenerationMatch precondition."""
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        boundary = request.headers["Content-Type"].split("boundary=", 1)[1].strip('"').encode()
        meta_part, data_part = [p for p in body.split(b"--" + boundary) if p.strip() not in (b"", b"--")][:2]
        meta = json.loads(meta_part.split(b"\r\n\r\n", 1)[1])
        data = data_part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")
        name = meta.get("name") or query["name"]
        want = query.get("ifGenerationMatch")
        live = self.generation.get((bucket, name)) if name in self.buckets[bucket] else 0
        if want is not None and int(want) != live:
            return _json(412, {"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold.",
                                         "errors": [{"reason": "conditionNotMet"}]}})
        self.put(bucket, name, data, dt.datetime.now(dt.UTC).timestamp())
        return _json(200, self._gcs_object(bucket, name, *self.buckets[bucket][name]))

    def _gcs_delete(self, bucket: str, name: str, generation: str | None) -> tuple[int, dict, bytes]:
        old = self.noncurrent.get((bucket, name), [])
        if generation and any(str(g) == generation for g, _ in old):
            self.noncurrent[(bucket, name)] = [(g, d) for g, d in old if str(g) != generation]
            return 204, {}, b""
        if name not in self.buckets[bucket] or (generation and generation != str(self.generation[(bucket, name)])):
            return _json(404, {"error": {"code": 404, "message": f"No such object: {bucket}/{name}"}})
        data, _ = self.buckets[bucket].pop(name)
        if bucket in self.versioned and not generation:
            old.append((self.generation.pop((bucket, name)), data))
            self.noncurrent[(bucket, name)] = old
        return 204, {}, b""

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


def _json(status: int, body: dict) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()
