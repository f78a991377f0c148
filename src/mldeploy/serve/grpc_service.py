"""The Open Inference Protocol over gRPC (KServe's inference.GRPCInferenceService), in each worker.

Every serving worker runs one grpc.aio server on the worker's own event loop, bound to
MLDEPLOY_GRPC_PORT with SO_REUSEPORT (the kernel spreads connections over the workers), so a gRPC
call shares everything an HTTP request uses: the model, the micro-batcher, the API keys and rate
limits (the Gate), the metrics and data capture. grpc is imported only here, in a worker after the
fork: grpc's core is not fork-safe, so the parent never loads it.

Errors carry the same one line the HTTP server answers with, under the gRPC code that means the same:
400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404 NOT_FOUND, 413 and 429 RESOURCE_EXHAUSTED (429 with
retry-after in the trailing metadata), 422 (the model refused the values) INVALID_ARGUMENT,
503 UNAVAILABLE while the model loads. A message over MLDEPLOY_MAX_BODY_BYTES is refused by grpc
itself with RESOURCE_EXHAUSTED before it is read. Metrics count gRPC calls under their method path
with the HTTP status they correspond to, so one error-rate query covers both.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from mldeploy import __version__
from mldeploy.errors import EXIT_USAGE
from mldeploy.serve import binary, codec, grpc_proto, openapi
from mldeploy.serve.codec import BadRequest
from mldeploy.serve.logs import log
from mldeploy.serve.model import Model, ModelError

if TYPE_CHECKING:
    from mldeploy.serve.app import App

# a message: grpc_proto builds the classes at import, so they are typed Any
Message = Any

OPEN = {"ServerLive", "ServerReady", "ModelReady"}  # probes carry no API key, as over HTTP
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
         413: grpc.StatusCode.RESOURCE_EXHAUSTED, 415: grpc.StatusCode.INVALID_ARGUMENT,
         422: grpc.StatusCode.INVALID_ARGUMENT, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
         503: grpc.StatusCode.UNAVAILABLE, 500: grpc.StatusCode.INTERNAL}
# typed contents: the InferTensorContents field of each datatype, and the numpy type it holds
CONTENTS = {"BOOL": ("bool_contents", np.bool_), "INT8": ("int_contents", np.int32),
            "INT16": ("int_contents", np.int32), "INT32": ("int_contents", np.int32),
            "INT64": ("int64_contents", np.int64), "UINT8": ("uint_contents", np.uint32),
            "UINT16": ("uint_contents", np.uint32), "UINT32": ("uint_contents", np.uint32),
            "UINT64": ("uint64_contents", np.uint64), "FP32": ("fp32_contents", np.float32),
            "FP64": ("fp64_contents", np.float64), "BYTES": ("bytes_contents", None)}
MESSAGES = {rpc: (grpc_proto.message(req), grpc_proto.message(resp)) for rpc, (req, resp) in grpc_proto.METHODS.items()}


class Refused(Exception):
    def __init__(self, status: int, message: str, metadata: tuple = (), reason: str | None = None):
        super().__init__(message)
        self.status, self.message, self.metadata = status, message, metadata
        self.reason = reason or {401: "unauthorized", 404: "not_found", 429: "rate_limited",
                                 503: "loading"}.get(status, "invalid")


class Service:
    """The six RPCs, answered from an app's model, batcher, gate, metrics and capture."""

    def __init__(self, app: App):
        self.app = app
        self.ids = itertools.count(1)
        self.id_prefix = f"{os.getpid():x}-g"

    def handler(self) -> grpc.GenericRpcHandler:
        # requests arrive as bytes and are parsed here: a malformed message is the caller's fault
        # (INVALID_ARGUMENT), where grpc's own deserializer would answer INTERNAL
        return grpc.method_handlers_generic_handler(grpc_proto.SERVICE, {
            rpc: grpc.unary_unary_rpc_method_handler(self._call(rpc), response_serializer=resp.SerializeToString)
            for rpc, (_, resp) in MESSAGES.items()})

    def _call(self, rpc: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]:
        parse = MESSAGES[rpc][0].FromString
        answer = getattr(self, rpc)
        route = f"/{grpc_proto.SERVICE}/{rpc}"
        app = self.app

        async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Message:
            start = time.perf_counter()
            rid = self.id_prefix + str(next(self.ids))
            try:
                if rpc not in OPEN and app.gate.active:
                    self._gate(context)
                try:
                    request = parse(raw)
                except DecodeError:
                    raise Refused(400, f"the request is not a valid {rpc}Request message") from None
                rid = getattr(request, "id", "") or rid
                response = await answer(request, rid, start)
            except Refused as r:
                app.metrics.count("mldeploy_request_failures_total", (r.reason,))
                app.metrics.request(route, r.status, time.perf_counter() - start)
                if r.status != 404 or app.s.access_log:
                    log("warning" if r.status < 500 else "error", r.message, request_id=rid, method="gRPC",
                        path=route, status=r.status)
                await context.abort(CODES[r.status], r.message, (*r.metadata, ("x-request-id", rid)))
            except Exception as e:  # a bug: INTERNAL with the request id, logged, and serving goes on
                app.metrics.count("mldeploy_request_failures_total", ("internal",))
                app.metrics.request(route, 500, time.perf_counter() - start)
                log("error", f"internal error: {type(e).__name__}: {e}", request_id=rid, path=route)
                await context.abort(grpc.StatusCode.INTERNAL, "internal server error", (("x-request-id", rid),))
            app.metrics.request(route, 200, time.perf_counter() - start)
            return response

        return call

    def _gate(self, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        peer = context.peer() or ""  # ipv4:1.2.3.4:5678, ipv6:[::1]:5678, unix:...
        client = peer.split(":", 1)[-1].rsplit(":", 1)[0].strip("[]")
        if refused := self.app.gate.refuse(metadata.get("authorization"), metadata.get("x-api-key"), client):
            status, message, headers = refused
            raise Refused(status, message, tuple((k, str(v)) for k, v in headers if k == "retry-after"))

    def _model(self, name: str, version: str = "") -> Model:
        if name != self.app.s.model_name:
            raise Refused(404, f"no model named {name!r} (this server serves {self.app.s.model_name!r})")
        model = self.app.model
        if model is None:
            raise Refused(503, "the model is loading; retry shortly")
        if version and version != model.version:
            raise Refused(404, f"model version {version!r} is not served here")
        return model

    # -- the RPCs --------------------------------------------------------------------------------
    async def ServerLive(self, request: Message, rid: str, start: float) -> Message:
        return MESSAGES["ServerLive"][1](live=True)

    async def ServerReady(self, request: Message, rid: str, start: float) -> Message:
        return MESSAGES["ServerReady"][1](ready=self.app.model is not None)

    async def ModelReady(self, request: Message, rid: str, start: float) -> Message:
        self._model(request.name, request.version)
        return MESSAGES["ModelReady"][1](ready=True)

    async def ServerMetadata(self, request: Message, rid: str, start: float) -> Message:
        return MESSAGES["ServerMetadata"][1](name="mldeploy", version=__version__, extensions=binary.EXTENSIONS)

    async def ModelMetadata(self, request: Message, rid: str, start: float) -> Message:
        return MESSAGES["ModelMetadata"][1](**openapi.v2_metadata(self._model(request.name, request.version)))

    async def ModelInfer(self, request: Message, rid: str, start: float) -> Message:
        app = self.app
        model = self._model(request.model_name, request.model_version)
        batcher = app.batcher
        batcher.arriving += 1
        try:
            feeds = codec.v2_feeds(_tensors(request), model, app.s.allow_nonfinite)
            names = codec.v2_output_names([o.name for o in request.outputs], model) if request.outputs else None
            call = codec.Call(feeds, codec.rows(feeds, model), "v2", codec.JSON, request.id or None, names)
        except BadRequest as e:
            raise Refused(e.status, e.message) from None
        finally:
            batcher.arriving -= 1
        decoded = time.perf_counter()
        app.metrics.preprocess.observe(decoded - start)
        try:
            outputs = batcher.run_now(call.feeds, call.rows)
            if outputs is None:
                outputs = await batcher.run(call.feeds, call.rows)
        except ModelError as e:
            raise Refused(422, f"the model could not run on this input: {e}", reason="model") from None
        ran = time.perf_counter()
        response = _response(call, codec.v2_outputs(call, outputs, model), model, raw=bool(request.raw_input_contents))
        app.metrics.postprocess.observe(time.perf_counter() - ran)
        if app.capture is not None and app.capture.sample():
            app.capture.record(rid, call.feeds, dict(zip([t.name for t in model.signature.outputs], outputs)),
                               ran - start)
        return response


def _tensors(request: Message) -> list[tuple[str, str, list[int], object]]:
    """(name, datatype, shape, values) of each input, from typed contents or raw bytes (not both)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs "
                         "(one per input, in order)")
    tensors: list[tuple[str, str, list[int], object]] = []
    for n, t in enumerate(request.inputs):
        shape = list(t.shape)
        if raw and t.HasField("contents"):
            raise BadRequest(f"input {t.name!r} has contents while raw_input_contents is used: send one or the other")
        values = functools.partial(binary.from_raw, raw[n], t.datatype, shape, t.name) if raw else \
            functools.partial(_typed, t)
        tensors.append((t.name, t.datatype, shape, values))  # values are read once the rest is checked
    return tensors


def _typed(t: Message) -> np.ndarray:
    if t.datatype not in CONTENTS:  # FP16: no typed field holds it
        raise BadRequest(f"input {t.name!r}: {t.datatype} travels only as raw_input_contents")
    field, kind = CONTENTS[t.datatype]
    used = [f.name for f, _ in t.contents.ListFields()]
    if any(name != field for name in used):
        raise BadRequest(f"input {t.name!r}: {t.datatype} values go in contents.{field}, not {used[0]}")
    values = getattr(t.contents, field)
    if kind is None:  # BYTES: text, as the model's string inputs hold it
        try:
            return np.array([v.decode() for v in values], dtype=str) if values else np.zeros(0, str)
        except UnicodeDecodeError:
            raise BadRequest(f"input {t.name!r}: a BYTES element is not UTF-8 text") from None
    arr: np.ndarray = np.array(values, dtype=kind)
    target = binary.RAW[t.datatype]
    if target != arr.dtype and arr.size and arr.dtype.kind in "iu":  # INT8 sent in the int32 field
        info = np.iinfo(target)
        if arr.min() < info.min or arr.max() > info.max:
            raise BadRequest(f"input {t.name!r}: values outside the {t.datatype} range")
    return arr.astype(target.newbyteorder("="), copy=False)


def _response(call: codec.Call, outputs: list[tuple[str, np.ndarray]], model: Model, raw: bool) -> Message:
    """Raw output contents when the request sent raw inputs (or an output is FP16, which only raw
    can carry), else typed contents."""
    response = MESSAGES["ModelInfer"][1](model_name=model.name, model_version=model.version, id=call.v2_id or "")
    raw = raw or any(arr.dtype == np.float16 for _, arr in outputs)
    for name, arr in outputs:
        datatype, data = binary.to_raw(arr) if raw else (None, None)
        tensor = response.outputs.add(name=name, shape=arr.shape)
        if raw:
            tensor.datatype = datatype
            response.raw_output_contents.append(data)
        else:
            tensor.datatype = binary.datatype(arr)
            field, _ = CONTENTS[tensor.datatype]
            flat = arr.reshape(-1).tolist()
            getattr(tensor.contents, field).extend([v.encode() for v in map(str, flat)] if field == "bytes_contents"
                                                   else flat)
    return response


# -- lifecycle --------------------------------------------------------------------------------------
async def start(app: App) -> grpc.aio.Server:
    """A gRPC server on this worker's loop, bound to the app's MLDEPLOY_GRPC_PORT alongside the other
    workers; a worker that cannot bind logs why and exits 2, as one that cannot load the model does.
    The caller stops it with `await server.stop(grace)`: no new calls, those in flight finish."""
    s = app.s
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 1),  # every worker listens on the same port
                 ("grpc.max_receive_message_length", s.max_body_bytes),
                 ("grpc.max_send_message_length", -1),
                 ("grpc.server_handshake_timeout_ms", int(s.header_timeout * 1000))],  # silent connections
        maximum_concurrent_rpcs=s.max_connections)  # beyond it: RESOURCE_EXHAUSTED, not a queue without end
    server.add_generic_rpc_handlers((Service(app).handler(),))
    address = f"[{s.host}]:{s.grpc_port}" if ":" in s.host else f"{s.host}:{s.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as e:
        log("error", f"cannot serve gRPC on {address}: {e}", pid=os.getpid())
        os._exit(EXIT_USAGE)
    await server.start()
    log("info", "gRPC serving", pid=os.getpid(), address=address)
    return server
