"""The same model behind AWS Lambda: API Gateway (REST and HTTP APIs), function URLs, direct invokes.

HTTP events get the server's routes and status codes in a proxy response; a direct invoke's event
is the JSON request body itself and the result is the JSON response (errors as {"error", "status"}).
The model loads once per execution environment, on the first event (or at init, when imported by
the handler module), and stays for the environment's life.
"""

from __future__ import annotations

import base64
import binascii

import orjson

from mldeploy.serve import codec
from mldeploy.serve.app import GET_ROUTES, LIVE, POST_ROUTES, PREDICT, READY, V2_MODEL_PATH
from mldeploy.serve.codec import BadRequest
from mldeploy.serve.model import Model, ModelError
from mldeploy.serve.settings import Settings, from_env

_loaded: tuple[Settings, Model] | None = None


def _model() -> tuple[Settings, Model]:
    global _loaded
    if _loaded is None:
        settings = from_env(workers=1)  # one process: every vCPU Lambda gives goes to ONNX Runtime
        _loaded = settings, Model.load(settings.bundle, settings.threads, settings.model_name)
    return _loaded


def handle(event: object, context: object) -> dict:
    settings, model = _model()
    if not isinstance(event, dict):
        return {"status": 400, "error": "the event must be a JSON object"}
    http = event.get("requestContext", {}).get("http") if isinstance(event.get("requestContext"), dict) else None
    if "httpMethod" in event or isinstance(http, dict):
        return _http(event, http, settings, model)
    try:  # direct invoke: the event is the request body
        status, _, body = _predict(orjson.dumps(event), "application/json", "application/json",
                                   settings, model, v2=False)
    except BadRequest as e:
        return {"status": e.status, "error": e.message}
    return orjson.loads(body)


def _http(event: dict, http: dict | None, settings: Settings, model: Model) -> dict:
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
        route, v2 = {"/infer": PREDICT, "/ready": READY}.get(m[3] or "", None), m[3] == "/infer"
    if route in (LIVE, READY):
        return _response(200, "application/json", b'{"ready":true}')
    if route != PREDICT:
        return _response(404, "application/json", codec.error_body(f"no route {method} {path}"))
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


def _response(status: int, ctype: str, body: bytes) -> dict:
    binary = ctype == codec.NPY
    return {"statusCode": status, "headers": {"content-type": ctype}, "isBase64Encoded": binary,
            "body": base64.b64encode(body).decode() if binary else body.decode()}
