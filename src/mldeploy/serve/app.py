"""The HTTP application every cloud's container contract talks to (served by mldeploy.serve.http).

One worker process = one App: it loads and warms up the model before its worker accepts anything
(a worker that answers is ready), routes each request by a dict lookup, answers most requests
right in the callback that read them (a coroutine only where the model runs on its thread or in a
merged batch), and keeps everything a request does not need (logs, capture, metrics files) off
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
import time
from collections.abc import Coroutine

import orjson

from mldeploy import __version__
from mldeploy.errors import MldeployError
from mldeploy.serve import binary, codec, openapi
from mldeploy.serve.batching import Batcher
from mldeploy.serve.capture import Capture
from mldeploy.serve.codec import BadRequest, Call
from mldeploy.serve.http import Request, Response
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
PUBLISH_SECONDS = 1.0


class App:
    def __init__(self, settings: Settings):
        self.s = settings
        self.get_routes = dict(GET_ROUTES)
        self.post_routes = dict(POST_ROUTES)
        for path, kind in settings.extra_routes.items():
            (self.post_routes if kind == PREDICT else self.get_routes)[path] = kind
        self.metrics = Metrics(settings.model_name, settings.metrics_dir)
        self.gate = Gate(settings.api_keys, settings.rate_per_second, settings.rate_burst, settings.workers)
        # None only until load(), which runs before the worker serves (gRPC still checks)
        self.model: Model = None  # type: ignore[assignment]
        self.batcher: Batcher = None  # type: ignore[assignment]
        self.capture: Capture | None = None
        self.ids = itertools.count(1)
        self.id_prefix = f"{os.getpid():x}-"
        self.openapi: bytes = b""
        self.logged: set[str] = set()
        self.grpc = None  # gRPC: this worker's server on MLDEPLOY_GRPC_PORT, when set

    # -- lifecycle (the worker calls these) ------------------------------------------------------
    def load(self) -> None:
        """Load and warm up the model; a broken bundle says so once and exits 2 (the serve command's code)."""
        start = time.perf_counter()
        try:
            model = Model.load(self.s.bundle, self.s.threads, self.s.model_name)
        except MldeployError as e:
            log("error", e.describe(), bundle=str(self.s.bundle))
            os._exit(2)
        self.openapi = orjson.dumps(openapi.document(model.signature, model.name), option=orjson.OPT_INDENT_2)
        self.batcher = Batcher(model, self.s.max_batch, self.s.batch_wait_ms, self.s.infer_thread, self.metrics,
                               self.s.batching)
        if self.s.capture_dir and self.s.capture_sample_rate > 0:
            self.capture = Capture(self.s.capture_dir, self.s.capture_sample_rate, self.s.capture_max_bytes,
                                   self.s.capture_files, model.version, self.metrics.count)
        self.model = model
        self.metrics.set("mldeploy_model_ready", self.metrics.model, 1)
        if self.s.download_seconds is not None:  # the artifact's download: part of this start's cold start
            self.metrics.set("mldeploy_model_download_seconds", self.metrics.model, round(self.s.download_seconds, 3))
        log("info", "model ready", pid=os.getpid(), bundle=str(self.s.bundle), version=model.version,
            seconds=round(time.perf_counter() - start, 3), threads=self.s.threads,
            batching=self.batcher.max_batch, inline=self.batcher.executor is None,
            single_row_ms=round(model.single_row_seconds * 1000, 3))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.call_later(PUBLISH_SECONDS, self._publish)
        if self.s.grpc_port:  # gRPC on this loop, with this model, batcher, gate and metrics
            # grpc only ever after the fork: it is not fork-safe
            from mldeploy.serve import grpc_service

            self.grpc = loop.run_until_complete(grpc_service.start(self))

    def stop(self) -> None:
        if self.grpc:  # gRPC: no new calls; those in flight finish within the drain time
            self.loop.run_until_complete(self.grpc.stop(self.s.drain_seconds))
        if self.batcher:
            self.batcher.close()
        if self.capture:
            self.capture.close()
        self.metrics.publish()
        log("info", "worker stopped", pid=os.getpid())

    def _publish(self) -> None:
        try:
            self.metrics.publish()
        except Exception as e:  # whatever it was, the next second tries again: never stop publishing
            self.log_once("warning", f"cannot write metrics for other workers: {type(e).__name__}: {e}")
        finally:
            self.loop.call_later(PUBLISH_SECONDS, self._publish)

    def log_once(self, level: str, message: str) -> None:
        if message not in self.logged:
            self.logged.add(message)
            log(level, message, pid=os.getpid())

    # -- requests ----------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response | Coroutine[None, None, Response]:
        """The answer, or a coroutine giving it where the model runs off this call."""
        start = time.perf_counter()
        headers = req.headers
        rid = headers.get("x-request-id")
        if rid is None or not REQUEST_ID.fullmatch(rid):
            rid = self.id_prefix + str(next(self.ids))
        path, method = req.path, req.method
        route = None
        label = path
        try:
            if method == "POST":
                route = self.post_routes.get(path)
            elif method in ("GET", "HEAD"):
                route = self.get_routes.get(path)
            version = None
            if route is None and path.startswith("/v2/models/"):
                route, label, version = self._v2_route(method, path)
            if route is None:
                raise self._not_found(method, path)
            if route not in OPEN and self.gate.active and (refused := self.gate.refuse(
                    headers.get("authorization"), headers.get("x-api-key"), req.client)):
                raise Answer(*refused)
            if route in (PREDICT, V2_INFER):
                if version is not None and version != self.model.version:
                    raise Answer(404, f"model version {version!r} is not served here")
                call = self._decode(req, route == V2_INFER, start)
                batcher = self.batcher
                if batcher.max_batch > 1:
                    # Merging: the requests read in this turn of the loop are company on its way;
                    # each runs as a task once the turn is over, and finds the others counted here.
                    batcher.arriving += 1
                    return self._later(call, rid, method, path, label, start, arrived=True)
                try:
                    outputs = batcher.run_now(call.feeds, call.rows)
                except ModelError as e:
                    raise Answer(422, f"the model could not run on this input: {e}", reason="model") from None
                if outputs is None:  # on the model's thread
                    return self._later(call, rid, method, path, label, start)
                status, ctype, body = self._encode(call, outputs, rid, start)
            else:
                status, ctype, body = self._info(route)
        except Answer as a:
            return self._error(a, rid, method, path, label if route else "unknown", start)
        except Exception as e:  # a bug: answer 500 with the request id, log it, keep serving
            return self._crash(e, rid, path, label, start)
        return self._done(status, ctype, body, rid, method, path, label, start)

    async def _later(self, call: Call, rid: str, method: str, path: str, label: str, start: float,
                     arrived: bool = False) -> Response:
        if arrived:
            self.batcher.arriving -= 1
        try:
            try:
                outputs = await self.batcher.run(call.feeds, call.rows)
            except ModelError as e:
                raise Answer(422, f"the model could not run on this input: {e}", reason="model") from None
            status, ctype, body = self._encode(call, outputs, rid, start)
        except Answer as a:
            return self._error(a, rid, method, path, label, start)
        except Exception as e:
            return self._crash(e, rid, path, label, start)
        return self._done(status, ctype, body, rid, method, path, label, start)

    def _decode(self, req: Request, v2: bool, start: float) -> Call:
        headers = req.headers
        try:
            if (split := headers.get(binary.HEADER)) is not None:  # binary tensors: JSON, then raw bytes
                call = binary.decode(req.body, split, self.model, self.s.allow_nonfinite)
            else:
                call = codec.decode(req.body, headers.get("content-type", ""), headers.get("accept", ""),
                                    self.model, self.s.allow_nonfinite, v2)
        except BadRequest as e:
            raise Answer(e.status, e.message, reason="invalid") from None
        self.metrics.preprocess.observe(time.perf_counter() - start)
        return call

    def _encode(self, call: Call, outputs: list, rid: str, start: float) -> tuple[int, str, bytes]:
        ran = time.perf_counter()
        ctype, out = binary.encode(call, outputs, self.model)  # binary tensors where asked, else codec.encode
        self.metrics.postprocess.observe(time.perf_counter() - ran)
        if self.capture is not None and self.capture.sample():
            names = [t.name for t in self.model.signature.outputs]
            self.capture.record(rid, call.feeds, dict(zip(names, outputs)), ran - start)
        return 200, ctype, out

    def _done(self, status: int, ctype: str, body: bytes, rid: str, method: str, path: str, label: str,
              start: float) -> Response:
        elapsed = time.perf_counter() - start
        self.metrics.request(label, status, elapsed)
        if self.s.access_log:
            log("info", "request", request_id=rid, method=method, path=path, status=status,
                ms=round(elapsed * 1000, 3))
        return status, [("content-type", ctype), ("x-request-id", rid), *binary.headers(ctype)], body  # binary tensors

    def _error(self, a: Answer, rid: str, method: str, path: str, label: str, start: float) -> Response:
        self.metrics.count("mldeploy_request_failures_total", (a.reason,))
        if a.status >= 500 or self.s.access_log or a.status != 404:
            log("warning" if a.status < 500 else "error", a.message, request_id=rid, method=method,
                path=path, status=a.status)
        self.metrics.request(label, a.status, time.perf_counter() - start)
        return a.status, [("content-type", "application/json"), ("x-request-id", rid), *a.headers], \
            codec.error_body(a.message, rid)

    def _crash(self, e: BaseException, rid: str, path: str, label: str, start: float) -> Response:
        self.metrics.count("mldeploy_request_failures_total", ("internal",))
        log("error", f"internal error: {type(e).__name__}: {e}", request_id=rid, path=path)
        self.metrics.request(label, 500, time.perf_counter() - start)
        return 500, [("content-type", "application/json"), ("x-request-id", rid)], \
            codec.error_body("internal server error", rid)

    # -- what the server finds before the App sees a request ----------------------------------------
    def refuse(self, req: Request | None, status: int, message: str | None, reason: str,
               task: asyncio.Task | None = None) -> Response:
        """The answer to a request the server refuses itself: too large, too slow, not HTTP/1.1, or a
        coroutine of ours that failed (a bug)."""
        start = time.perf_counter()
        rid = req.headers.get("x-request-id", "") if req is not None else ""
        if not REQUEST_ID.fullmatch(rid):
            rid = self.id_prefix + str(next(self.ids))
        method, path = (req.method, req.path) if req is not None else ("-", "-")
        label = path if path in self.post_routes or path in self.get_routes else "unknown"
        if task is not None:
            error = task.exception() if not task.cancelled() else asyncio.CancelledError()
            return self._crash(error if error is not None else asyncio.CancelledError(), rid, path, label, start)
        if message is None:
            message = {413: f"the request body is over the {self.s.max_body_bytes:,}-byte limit (split the "
                            f"batch, or raise MLDEPLOY_MAX_BODY_BYTES where the platform allows)",
                       408: f"the request body did not arrive within {self.s.body_timeout:g} s "
                            f"(MLDEPLOY_BODY_TIMEOUT)"}[status]
        return self._error(Answer(status, message, reason=reason), rid, method, path, label, start)

    def gone(self) -> None:
        self.metrics.count("mldeploy_request_failures_total", ("client_gone",))

    def count_failure(self, reason: str) -> None:
        self.metrics.count("mldeploy_request_failures_total", (reason,))

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

    def _not_found(self, method: str, path: str) -> Answer:
        other = self.get_routes if method == "POST" else self.post_routes
        if path in other:
            allowed = "GET" if method == "POST" else "POST"
            return Answer(405, f"{path} takes {allowed}, not {method}", [("allow", allowed)])
        return Answer(404, f"no route {path} (see /openapi.json)")

    def _info(self, route: str) -> tuple[int, str, bytes]:
        if route in (LIVE, READY):  # answering at all means loaded: see load()
            return 200, "application/json", b'{"live":true}' if route == LIVE else b'{"ready":true}'
        if route == METRICS:
            return 200, "text/plain; version=0.0.4", self.metrics.exposition()
        if route == V2_SERVER:
            return 200, "application/json", orjson.dumps({"name": "mldeploy", "version": __version__,
                                                          "extensions": binary.EXTENSIONS})
        if route == OPENAPI:
            return 200, "application/json", self.openapi
        return 200, "application/json", orjson.dumps(openapi.v2_metadata(self.model))  # V2_MODEL


class Answer(Exception):
    """An HTTP error response: status, a one-line message, extra headers."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None,
                 reason: str | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or []
        self.reason = reason or {401: "unauthorized", 404: "not_found", 405: "method",
                                 413: "too_large", 429: "rate_limited"}.get(status, "invalid")


def create() -> App:
    """Each worker builds its App from the environment the serve command set."""
    return App(from_env())
