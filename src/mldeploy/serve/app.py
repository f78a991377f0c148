"""The HTTP application every cloud's container contract talks to (RSGI, under granian).

One worker process = one App: it loads the model in a background thread (liveness answers at
once, readiness and predictions only once the model is loaded and warmed up), routes each request
by a dict lookup, and keeps everything a request does not need (logs, capture, metrics files) off
its path. Routes, by who calls them:

  SageMaker   GET /ping                     POST /invocations
  Vertex AI   GET $AIP_HEALTH_ROUTE         POST $AIP_PREDICT_ROUTE     (instances -> predictions)
  Azure ML    GET / (liveness)              POST /score (+ MLDEPLOY_*_ROUTE aliases)
  KServe v2   GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/ready]
              POST /v2/models/{name}[/versions/{v}]/infer
  anyone      POST /predict, GET /metrics, GET /openapi.json
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import time

import orjson
from granian.rsgi import ProtocolClosed as RSGIProtocolClosed

from mldeploy import __version__
from mldeploy.errors import MldeployError
from mldeploy.serve import codec, openapi
from mldeploy.serve.batching import Batcher
from mldeploy.serve.capture import Capture
from mldeploy.serve.codec import BadRequest, Call
from mldeploy.serve.deadlines import Deadlines
from mldeploy.serve.logs import log
from mldeploy.serve.metrics import Metrics
from mldeploy.serve.model import Model, ModelError
from mldeploy.serve.security import Gate
from mldeploy.serve.settings import Settings, from_env

LIVE, READY, PREDICT, V2_INFER, V2_MODEL, V2_SERVER, METRICS, OPENAPI = (
    "live", "ready", "predict", "v2_infer", "v2_model", "v2_server", "metrics", "openapi")
GET_ROUTES = {"/": LIVE, "/ping": READY, "/health": READY, "/v2/health/live": LIVE,
              "/v2/health/ready": READY, "/v2": V2_SERVER, "/metrics": METRICS, "/openapi.json": OPENAPI}
POST_ROUTES = {"/invocations": PREDICT, "/predict": PREDICT, "/score": PREDICT}
OPEN = {LIVE, READY, OPENAPI}  # probes carry no API key
V2_MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?")
REQUEST_ID = re.compile(r"[\w.:/=+-]{1,128}")
JSON_HEADERS = [("content-type", "application/json")]
PUBLISH_SECONDS = 1.0
SWEEP_SECONDS = 1.0  # how often overdue bodies and silent connections are looked for
FAILED_FILE = "failed"  # a worker that cannot load the model leaves its reason here for the serve command
DRAIN_BYTES = 16 << 20  # an oversized body is read and dropped up to this, then the connection closes


class App:
    def __init__(self, settings: Settings):
        self.s = settings
        self.get_routes = dict(GET_ROUTES)
        self.post_routes = dict(POST_ROUTES)
        for path, kind in settings.extra_routes.items():
            (self.post_routes if kind == PREDICT else self.get_routes)[path] = kind
        self.metrics = Metrics(settings.model_name, settings.metrics_dir)
        self.gate = Gate(settings.api_keys, settings.rate_per_second, settings.rate_burst, settings.workers)
        self.deadlines = Deadlines(settings.header_timeout, settings.body_timeout)
        self.model: Model | None = None   # set in __rsgi_init__, before the worker serves
        self.batcher: Batcher | None = None
        self.capture: Capture | None = None
        self.ids = itertools.count(1)
        self.id_prefix = f"{os.getpid():x}-"
        self.openapi: bytes = b""

    # -- lifecycle (granian calls these in each worker) ------------------------------------------
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Load and warm up before this worker accepts anything: a worker that answers is ready."""
        self.loop = loop
        self._load()
        loop.call_later(PUBLISH_SECONDS, self._publish)
        loop.call_later(SWEEP_SECONDS, self._sweep)
        if _early_sigterm:  # it arrived before granian's handlers existed: deliver it to them now
            os.kill(os.getpid(), signal.SIGTERM)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.batcher:
            self.batcher.close()
        if self.capture:
            self.capture.close()
        self.metrics.publish()
        log("info", "worker stopped", pid=os.getpid())

    def _load(self) -> None:
        start = time.perf_counter()
        try:
            model = Model.load(self.s.bundle, self.s.threads, self.s.model_name)
        except MldeployError as e:  # a broken bundle: say so once, and take the server down with exit 2
            log("error", e.describe(), bundle=str(self.s.bundle))
            if self.s.metrics_dir:
                (self.s.metrics_dir / FAILED_FILE).write_text(e.describe(), encoding="utf-8")
            os._exit(2)
        self.openapi = orjson.dumps(openapi.document(model.signature, model.name), option=orjson.OPT_INDENT_2)
        self.batcher = Batcher(model, self.s.max_batch, self.s.batch_wait_ms, self.s.infer_thread, self.metrics,
                               self.s.batching)
        if self.s.capture_dir and self.s.capture_sample_rate > 0:
            self.capture = Capture(self.s.capture_dir, self.s.capture_sample_rate, self.s.capture_max_bytes,
                                   self.s.capture_files, model.version, self.metrics.count)
        self.model = model
        self.metrics.set("mldeploy_model_ready", self.metrics.model, 1)
        log("info", "model ready", pid=os.getpid(), bundle=str(self.s.bundle), version=model.version,
            seconds=round(time.perf_counter() - start, 3), threads=self.s.threads,
            batching=self.batcher.max_batch, inline=self.batcher.executor is None,
            single_row_ms=round(model.single_row_seconds * 1000, 3))

    def _publish(self) -> None:
        try:
            self.metrics.publish()
        except OSError as e:
            log("warning", f"cannot write metrics for other workers: {e}")
        self.loop.call_later(PUBLISH_SECONDS, self._publish)

    def _sweep(self) -> None:
        try:
            if shut := self.deadlines.sweep():
                self.metrics.count("mldeploy_request_failures_total", ("header_timeout",), shut)
        except Exception as e:  # noqa: BLE001  never let the sweep stop: it is what frees the slots
            log("error", f"the deadline sweep failed: {type(e).__name__}: {e}")
        self.loop.call_later(SWEEP_SECONDS, self._sweep)

    # -- requests ----------------------------------------------------------------------------------
    async def __rsgi__(self, scope, proto) -> None:
        if scope.proto != "http":
            return
        start = time.perf_counter()
        headers = scope.headers
        rid = headers.get("x-request-id")
        if rid is None or not REQUEST_ID.fullmatch(rid):
            rid = self.id_prefix + str(next(self.ids))
        path, method = scope.path, scope.method
        route = label = None
        try:
            if method == "POST":
                route = self.post_routes.get(path)
            elif method in ("GET", "HEAD"):
                route = self.get_routes.get(path)
            label = path
            version = None
            if route is None and path.startswith("/v2/models/"):
                route, label, version = self._v2_route(method, path)
            if route is None:
                raise self._not_found(method, path)
            if route not in OPEN and self.gate.active and (refused := self.gate.refuse(
                    headers.get("authorization"), headers.get("x-api-key"), scope.client.rsplit(":", 1)[0])):
                raise Answer(*refused)
            if route == PREDICT or route == V2_INFER:
                if version is not None and version != self.model.version:
                    raise Answer(404, f"model version {version!r} is not served here")
                status, ctype, body = await self._predict(scope, proto, route == V2_INFER, rid, start)
            else:
                status, ctype, body = self._info(route)
        except Answer as a:
            status, ctype, body = a.status, "application/json", codec.error_body(a.message, rid)
            self.metrics.count("mldeploy_request_failures_total", (a.reason,))
            if a.status >= 500 or self.s.access_log or a.status != 404:
                log("warning" if a.status < 500 else "error", a.message, request_id=rid, method=method,
                    path=path, status=a.status)
            proto.response_bytes(status, [("content-type", ctype), ("x-request-id", rid), *a.headers], body)
            self.metrics.request(label if route else "unknown", status, time.perf_counter() - start)
            return
        except RSGIProtocolClosed:  # the client hung up before it finished sending: nobody to answer
            self.metrics.count("mldeploy_request_failures_total", ("client_gone",))
            return
        except Exception as e:  # a bug: answer 500 with the request id, log it, keep serving
            status, ctype, body = 500, "application/json", codec.error_body("internal server error", rid)
            self.metrics.count("mldeploy_request_failures_total", ("internal",))
            log("error", f"internal error: {type(e).__name__}: {e}", request_id=rid, path=path)
        proto.response_bytes(status, [("content-type", ctype), ("x-request-id", rid)], body)
        elapsed = time.perf_counter() - start
        self.metrics.request(label, status, elapsed)
        if self.s.access_log:
            log("info", "request", request_id=rid, method=method, path=path, status=status,
                ms=round(elapsed * 1000, 3))

    def _v2_route(self, method: str, path: str) -> tuple[str | None, str, str | None]:
        m = V2_MODEL_PATH.fullmatch(path)
        if not m:
            return None, path, None
        name, version, tail = m.groups()
        if name != self.s.model_name:
            raise Answer(404, f"no model named {name!r} (this server serves {self.s.model_name!r})")
        label = "/v2/models/{name}" + ("/versions/{version}" if version else "") + (tail or "")
        want = "POST" if tail == "/infer" else "GET"
        if method != want and not (want == "GET" and method == "HEAD"):
            raise Answer(405, f"{path} takes {want}", [("allow", want)])
        return {"/infer": V2_INFER, "/ready": READY, None: V2_MODEL}[tail], label, version

    def _not_found(self, method: str, path: str) -> "Answer":
        other = self.get_routes if method == "POST" else self.post_routes
        if path in other:
            allowed = "GET" if method == "POST" else "POST"
            return Answer(405, f"{path} takes {allowed}, not {method}", [("allow", allowed)])
        return Answer(404, f"no route {path} (see /openapi.json)")

    def _info(self, route: str) -> tuple[int, str, bytes]:
        if route == LIVE or route == READY:  # answering at all means loaded: see __rsgi_init__
            return 200, "application/json", b'{"live":true}' if route == LIVE else b'{"ready":true}'
        if route == METRICS:
            return 200, "text/plain; version=0.0.4", self.metrics.exposition()
        if route == V2_SERVER:
            return 200, "application/json", orjson.dumps({"name": "mldeploy", "version": __version__,
                                                          "extensions": []})
        if route == OPENAPI:
            return 200, "application/json", self.openapi
        return 200, "application/json", orjson.dumps(openapi.v2_metadata(self.model))  # V2_MODEL

    async def _predict(self, scope, proto, v2: bool, rid: str, start: float) -> tuple[int, str, bytes]:
        model, batcher = self.model, self.batcher
        headers = scope.headers
        batcher.arriving += 1
        try:
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) <= self.s.max_body_bytes:
                body = await self.deadlines.body(proto)  # the usual case, without the streaming reader's detour
            else:
                body = await self.deadlines.body(lambda: self._body(scope, proto))
            call: Call = codec.decode(body, headers.get("content-type", ""), headers.get("accept", ""),
                                      model, self.s.allow_nonfinite, v2)
        except BadRequest as e:
            raise Answer(e.status, e.message, reason="invalid") from None
        except TimeoutError:
            raise Answer(408, f"the request body did not arrive within {self.s.body_timeout:g} s "
                              "(MLDEPLOY_BODY_TIMEOUT)", [("connection", "close")], reason="timeout") from None
        finally:
            batcher.arriving -= 1
        decoded = time.perf_counter()
        self.metrics.preprocess.observe(decoded - start)
        try:
            outputs = batcher.run_now(call.feeds, call.rows)
            if outputs is None:
                outputs = await batcher.run(call.feeds, call.rows)
        except ModelError as e:
            raise Answer(422, f"the model could not run on this input: {e}", reason="model") from None
        ran = time.perf_counter()
        ctype, out = codec.encode(call, outputs, model)
        self.metrics.postprocess.observe(time.perf_counter() - ran)
        if self.capture is not None and self.capture.sample():
            names = [t.name for t in model.signature.outputs]
            self.capture.record(rid, call.feeds, dict(zip(names, outputs)), ran - start)
        return 200, ctype, out

    async def _body(self, scope, proto) -> bytes:
        limit = self.s.max_body_bytes
        length = scope.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise Answer(400, "Content-Length is not a number", reason="invalid")
        if length is not None and int(length) <= limit:
            return await proto()
        chunks, size = [], 0
        async for chunk in proto:  # stop keeping it as soon as it is too big ...
            size += len(chunk)
            if size > limit:
                if size > DRAIN_BYTES:
                    break
                continue  # ... but read on, so a client that sends it all still gets to read the 413
            chunks.append(chunk)
        if size > limit or (length is not None and int(length) > limit):
            raise Answer(413, f"the request body is over the {limit:,}-byte limit (split the batch, "
                              f"or raise MLDEPLOY_MAX_BODY_BYTES where the platform allows)", reason="too_large")
        return b"".join(chunks)


class Answer(Exception):
    """An HTTP error response: status, a one-line message, extra headers."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None,
                 reason: str | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or []
        self.reason = reason or {401: "unauthorized", 404: "not_found", 405: "method",
                                 413: "too_large", 429: "rate_limited"}.get(status, "invalid")


_early_sigterm = False


def _remember_sigterm(*_: object) -> None:
    global _early_sigterm
    _early_sigterm = True


def catch_early_sigterm() -> None:
    """In each forked worker, from its first instruction: a worker keeps granian's parent-side SIGTERM
    handler until it installs its own, so a SIGTERM in between would be lost (and the worker killed
    only after the drain timeout). Remember it instead; __rsgi_init__ delivers it again."""
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, _remember_sigterm))


def create() -> App:
    """Granian's factory: each worker builds its App from the environment the serve command set."""
    return App(from_env())
