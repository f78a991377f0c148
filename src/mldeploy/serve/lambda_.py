"""The same model behind AWS Lambda: API Gateway (REST and HTTP APIs), function URLs, direct invokes.

HTTP events get the server's routes and status codes in a proxy response; a direct invoke's event
is the JSON request body itself and the result is the JSON response (errors as {"error", "status"}).
MLDEPLOY_API_KEYS and MLDEPLOY_RATE_LIMIT hold here as on the HTTP server (the same Gate): HTTP events
need a key; a direct invoke carries no headers and is authorized by IAM (lambda:InvokeFunction), so it
is only rate limited. The rate is per execution environment, as it is per server on the other targets.
The model loads once per execution environment, on the first event (or at init, when imported by
the handler module), and stays for the environment's life.

`run_runtime` is a small client of the Lambda Runtime API, so the serving image runs on Lambda as
it is: `mldeploy serve` calls it when Lambda sets AWS_LAMBDA_RUNTIME_API (no awslambdaric inside).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import os
import time
import traceback
from dataclasses import dataclass

import orjson

from mldeploy.errors import EXIT_USAGE, MldeployError
from mldeploy.serve import codec
from mldeploy.serve.app import GET_ROUTES, LIVE, POST_ROUTES, PREDICT, READY, V2_MODEL_PATH
from mldeploy.serve.codec import BadRequest
from mldeploy.serve.logs import log
from mldeploy.serve.model import Model, ModelError
from mldeploy.serve.security import Gate
from mldeploy.serve.settings import Settings, from_env
from mldeploy.serve.source import prepare

_loaded: tuple[Settings, Model, Gate] | None = None
DIRECT = "direct invoke"  # the rate-limit bucket of direct invokes (they have no key and no address)


def _model() -> tuple[Settings, Model, Gate]:
    global _loaded  # noqa: PLW0603  the model loads once per Lambda container, on the first event
    if _loaded is None:
        # one process: every vCPU Lambda gives goes to ONNX Runtime; an artifact (MLDEPLOY_MODEL_URI) is
        # downloaded to /tmp, Lambda's one writable folder, and verified during the init
        settings = prepare(from_env(workers=1))
        _loaded = (settings, Model.load(settings.bundle, settings.threads, settings.model_name),
                   Gate(settings.api_keys, settings.rate_per_second, settings.rate_burst))
    return _loaded


def handle(event: object, context: object) -> dict:
    settings, model, gate = _model()
    if not isinstance(event, dict):
        return {"status": 400, "error": "the event must be a JSON object"}
    http = event.get("requestContext", {}).get("http") if isinstance(event.get("requestContext"), dict) else None
    if "httpMethod" in event or isinstance(http, dict):
        return _http(event, http, settings, model, gate)
    if gate.active and (refused := gate.refuse(None, None, DIRECT, authorized=True)):
        return {"status": refused[0], "error": refused[1]}
    try:  # direct invoke: the event is the request body
        _status, _, body = _predict(orjson.dumps(event), "application/json", "application/json",
                                   settings, model, v2=False)
    except BadRequest as e:
        return {"status": e.status, "error": e.message}
    return orjson.loads(body)


def _http(event: dict, http: dict | None, settings: Settings, model: Model, gate: Gate) -> dict:
    method = (http or {}).get("method") or event.get("httpMethod", "GET")
    path = event.get("rawPath") or event.get("path") or "/"
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    body = event.get("body") or ""
    try:
        raw = base64.b64decode(body, validate=True) if event.get("isBase64Encoded") else body.encode()
    except (binascii.Error, ValueError):
        return _response(400, "application/json", codec.error_body("the body is not valid base64"))
    route, v2 = (POST_ROUTES.get(path) if method == "POST" else GET_ROUTES.get(path)), False
    if route is None and (m := V2_MODEL_PATH.fullmatch(path)) and m[1] == model.name:
        route, v2 = {"/infer": PREDICT, "/ready": READY}.get(m[3] or ""), m[3] == "/infer"
    if route in (LIVE, READY):
        return _response(200, "application/json", b'{"ready":true}')
    if route != PREDICT:
        return _response(404, "application/json", codec.error_body(f"no route {method} {path}"))
    if gate.active and (refused := gate.refuse(headers.get("authorization"), headers.get("x-api-key"),
                                                _source_ip(event, http))):
        status, message, extra = refused
        return _response(status, "application/json", codec.error_body(message), dict(extra))
    try:
        status, ctype, out = _predict(raw, headers.get("content-type", ""), headers.get("accept", ""),
                                      settings, model, v2)
    except BadRequest as e:
        status, ctype, out = e.status, "application/json", codec.error_body(e.message)
    return _response(status, ctype, out)


def _predict(body: bytes, ctype: str, accept: str, settings: Settings, model: Model,
             v2: bool) -> tuple[int, str, bytes]:
    if len(body) > settings.max_body_bytes:
        raise BadRequest(f"the request body is over the {settings.max_body_bytes:,}-byte limit", 413)
    call = codec.decode(body, ctype, accept, model, settings.allow_nonfinite, v2)
    try:
        outputs = model.run(call.feeds)
    except ModelError as e:
        raise BadRequest(f"the model could not run on this input: {e}", 422) from None
    out_type, out = codec.encode(call, outputs, model)
    return 200, out_type, out


def _source_ip(event: dict, http: dict | None) -> str:
    """The caller's address as API Gateway or the function URL saw it (v2: http.sourceIp, v1: identity)."""
    context = event.get("requestContext")
    identity = context.get("identity") if isinstance(context, dict) else None
    ip = (http or {}).get("sourceIp") or (identity.get("sourceIp") if isinstance(identity, dict) else None)
    return str(ip or "unknown")


def _response(status: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> dict:
    binary = ctype == codec.NPY
    return {"statusCode": status, "headers": {"content-type": ctype, **(headers or {})}, "isBase64Encoded": binary,
            "body": base64.b64encode(body).decode() if binary else body.decode()}


# -- the Lambda Runtime API (https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html) ------
RUNTIME = "/2018-06-01/runtime"
ERROR_TYPE = "Lambda-Runtime-Function-Error-Type"


@dataclass(frozen=True)
class Context:
    """The part of Lambda's context object a handler needs."""

    aws_request_id: str
    invoked_function_arn: str
    deadline_ms: int

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.deadline_ms - int(time.time() * 1000))


class _Api:
    """One persistent connection to the Runtime API; a request that fails on it is sent once more
    on a new connection (the API may have closed an idle one)."""

    def __init__(self, address: str):
        self.conn = http.client.HTTPConnection(address)  # no timeout: `next` waits for an event

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        try:
            return self._send(method, path, body, headers)
        except (OSError, http.client.HTTPException):
            self.conn.close()  # the next request opens a new connection; a second failure raises
            return self._send(method, path, body, headers)

    def _send(self, method: str, path: str, body: bytes | None,
              headers: dict[str, str] | None) -> tuple[int, http.client.HTTPMessage, bytes]:
        self.conn.request(method, RUNTIME + path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        return r.status, r.headers, r.read()

    def post(self, path: str, payload: object, error_type: str | None = None) -> None:
        headers = {"content-type": "application/json", **({ERROR_TYPE: error_type} if error_type else {})}
        status, _, body = self.call("POST", path, orjson.dumps(payload), headers)
        if status != 202:
            log("warning", "the Lambda Runtime API refused a post", path=path, status=status,
                answer=body[:300].decode(errors="replace"))


def _error(e: BaseException) -> dict:
    return {"errorMessage": str(e), "errorType": type(e).__name__,
            "stackTrace": traceback.format_exception(e)}


def run_runtime(api: str) -> int:
    """Serve Lambda invocations until the environment ends; 2 when the model cannot load."""
    client = _Api(api)
    try:
        settings, model, _ = _model()
    except Exception as e:  # any reason the model cannot load fails the init
        message = e.describe() if isinstance(e, MldeployError) else f"{type(e).__name__}: {e}"
        log("error", message, fd=2)
        client.post("/init/error", {"errorMessage": message, "errorType": type(e).__name__},
                    "Runtime.InitError")
        return EXIT_USAGE
    log("info", "starting", runtime="aws-lambda", bundle=str(settings.bundle), model=model.name,
        threads=settings.threads)
    while True:
        _, headers, body = client.call("GET", "/invocation/next")
        request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
        if trace := headers.get("Lambda-Runtime-Trace-Id"):
            os.environ["_X_AMZN_TRACE_ID"] = trace
        else:
            os.environ.pop("_X_AMZN_TRACE_ID", None)
        context = Context(request_id, headers.get("Lambda-Runtime-Invoked-Function-Arn", ""),
                          int(headers.get("Lambda-Runtime-Deadline-Ms") or 0))
        try:
            try:
                event = orjson.loads(body)
            except orjson.JSONDecodeError:
                result: dict = {"status": 400, "error": "the event is not valid JSON"}
            else:
                result = handle(event, context)
        except Exception as e:  # a bug: report it for this invocation, serve the next
            log("error", "the invocation failed", request_id=request_id, error=repr(e),
                traceback="".join(traceback.format_exception(e)))
            client.post(f"/invocation/{request_id}/error", _error(e), "Runtime.Unhandled")
            continue
        client.post(f"/invocation/{request_id}/response", result)
