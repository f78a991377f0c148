"""moto's threaded server, recording every request (the `aws` fixture's log)."""

from __future__ import annotations

import io
import json
from urllib.parse import parse_qs

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from tests.helpers import moto_patches  # noqa: F401  (patches moto's classes on import)
from tests.helpers.fakes.faults import Faults, drop

MUTATING = ("Create", "Update", "Put", "Delete", "Register", "Deregister", "Publish", "Tag", "Untag", "Set", "Modify",
            "Subscribe", "Unsubscribe")


class RecordingMotoServer(ThreadedMotoServer):
    """moto's threaded server, with a log of (operation, method, path) for every request."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.requests: list[tuple[str, str, str]] = []
        self.faults = Faults()  # calls named by their operation, else "METHOD path"

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)

        def recording(environ, start_response):
            path = environ.get("PATH_INFO", "")
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            operation = target.rsplit(".", 1)[-1] if target else path.rsplit("/operation/", 1)[-1] if "/operation/" in path else ""
            if not operation and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
                # the query protocol (SNS, ...) names the operation in the form body: read it, put it back
                body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
                environ["wsgi.input"] = io.BytesIO(body)
                operation = parse_qs(body.decode()).get("Action", [""])[0]
            self.requests.append((operation, environ["REQUEST_METHOD"], path))
            label = operation or f"{environ['REQUEST_METHOD']} {path}"
            if kind := self.faults.take(label):
                return self._fail(kind, environ, start_response)
            return app(environ, start_response)

        self._server = make_server(self._ip_address, self._port, recording, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    def _fail(self, kind: str, environ, start_response):
        """AWS's own shapes: 500 InternalFailure, 400 ThrottlingException, a dropped connection."""
        if kind == "drop":
            drop(environ)
            start_response("500 Internal Server Error", [])
            return [b""]
        status, code = ("400 Bad Request", "ThrottlingException") if kind == "throttle" else \
            ("500 Internal Server Error", "InternalFailure")
        body = json.dumps({"__type": code, "message": f"injected {kind}"}).encode()
        start_response(status, [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", code),
                                ("Content-Length", str(len(body)))])
        return [body]

    def mutating(self) -> list[tuple[str, str, str]]:
        """Requests that change state: mutating JSON, CBOR and query operations, and REST writes
        (Lambda, S3)."""
        return [r for r in self.requests if r[0].startswith(MUTATING)
                or (not r[0] and r[1] in ("POST", "PUT", "DELETE") and not r[2].endswith("/invocations")
                    and not r[2].startswith("/moto-api"))]
