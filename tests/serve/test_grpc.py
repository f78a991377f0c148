"""The Open Inference Protocol over gRPC, proven with Triton's own client (tritonclient.grpc) and its
compiled messages against a real `mldeploy serve` with MLDEPLOY_GRPC_PORT set.

The model: x float32 [batch, 4], k int64 [batch, 1] -> logits [batch, 3], picked [batch, 1, 2]
(k outside 0..9 passes validation and is refused by ONNX Runtime: the model-error path).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.helpers.models import TABLE, B, W
from tests.helpers.need import need
from tests.helpers.server import API_KEY, OIP_MAX_BODY, free_port, start_server

AUTH = {"authorization": f"Bearer {API_KEY}"}
X = np.array([[1, 2, 3, 4], [0.5, -1, 0, 2]], np.float32)
K = np.array([[3], [9]], np.int64)
INTERNALS = re.compile(r"0x[0-9a-f]{6,}|\.cc:\d|onnxruntime|Traceback|\[ONNXRuntimeError\]", re.IGNORECASE)


@pytest.fixture(scope="module")
def tc():
    return need("tritonclient.grpc", "pip install -e '.[dev]' installs tritonclient")


@pytest.fixture(scope="module")
def client(tc, oip_server):
    c = tc.InferenceServerClient(f"127.0.0.1:{oip_server.grpc_port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(tc, oip_server):
    """Triton's generated stub, for requests tritonclient's helpers do not build (typed contents)."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{oip_server.grpc_port}")
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def inputs(tc, x=X, k=K, x_type="FP32", k_type="INT64"):
    ix, ik = tc.InferInput("x", list(x.shape), x_type), tc.InferInput("k", list(k.shape), k_type)
    ix.set_data_from_numpy(x)
    ik.set_data_from_numpy(k)
    return [ix, ik]


def typed_request(x=X, k=K, **extra):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="model", **extra)
    tx = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    tx.contents.fp32_contents.extend(x.reshape(-1).tolist())
    tk = request.inputs.add(name="k", datatype="INT64", shape=list(k.shape))
    tk.contents.int64_contents.extend(k.reshape(-1).tolist())
    return request


def refusal(call) -> tuple[str, str]:
    """(gRPC status name, message) of a call that must fail."""
    import grpc
    from tritonclient.utils import InferenceServerException

    try:
        call()
    except InferenceServerException as e:
        return str(e.status()).removeprefix("StatusCode."), e.message()
    except grpc.RpcError as e:
        return e.code().name, e.details()
    pytest.fail("the call succeeded")


def test_descriptors_match_tritons_compiled_protocol(tc):
    """Our messages, built at import, against the ones Triton's protoc compiled: every field of ours
    has the same number, type, cardinality and message type, so the two speak the same wire format."""
    from tritonclient.grpc import service_pb2

    from mldeploy.serve import grpc_proto

    def fields(d):
        return {f.name: (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None)
                for f in d.fields}

    for name in grpc_proto.MESSAGES:
        ours = grpc_proto.FILE.pool.FindMessageTypeByName(f"inference.{name}")
        theirs = service_pb2.DESCRIPTOR.pool.FindMessageTypeByName(f"inference.{name}")
        assert fields(ours) == fields(theirs), name
        for nested in ours.nested_types:  # the map entries
            assert fields(nested) == fields(theirs.nested_types_by_name[nested.name]), nested.full_name
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in grpc_proto.FILE.services_by_name["GRPCInferenceService"].methods:
        assert method.input_type.full_name == theirs.methods_by_name[method.name].input_type.full_name


def test_probes_need_no_key_and_metadata_matches_http(client, oip_server):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("model")
    meta = client.get_server_metadata(headers=AUTH, as_json=True)
    assert meta["name"] == "mldeploy" and "binary_tensor_data" in meta["extensions"]
    grpc_meta = client.get_model_metadata("model", headers=AUTH, as_json=True)
    http_meta = oip_server.call("GET", "/v2/models/model", headers={"x-api-key": API_KEY}).json()
    for key in ("name", "versions", "platform"):
        assert grpc_meta[key] == http_meta[key]
    # protobuf's JSON writes int64 as strings: compare the values
    shapes = [[int(d) for d in t["shape"]] for t in grpc_meta["inputs"] + grpc_meta["outputs"]]
    assert shapes == [t["shape"] for t in http_meta["inputs"] + http_meta["outputs"]] == [[-1, 4], [-1, 1], [-1, 3],
                                                                                          [-1, 1, 2]]


def test_infer_with_raw_contents(tc, client):
    """tritonclient sends raw_input_contents; the answer comes back raw, as Triton's would."""
    result = client.infer("model", inputs(tc), headers=AUTH, request_id="r-1")
    assert result.get_response().id == "r-1"
    np.testing.assert_allclose(result.as_numpy("logits"), X @ W + B, rtol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("picked"), TABLE[K])
    assert len(result.get_response().raw_output_contents) == 2
    # float64 and int32 bytes are converted to the model's float32 and int64, as JSON numbers are
    wide = client.infer("model", inputs(tc, X.astype(np.float64), K.astype(np.int32), "FP64", "INT32"), headers=AUTH)
    np.testing.assert_allclose(wide.as_numpy("logits"), X @ W + B, rtol=1e-5)


def test_infer_with_typed_contents(stub):
    """Typed contents in, typed contents out, only the output asked for."""
    from tritonclient.grpc import service_pb2

    request = typed_request(id="typed")
    request.outputs.add(name="picked")
    response = stub.ModelInfer(request, metadata=tuple(AUTH.items()))
    assert isinstance(response, service_pb2.ModelInferResponse) and response.id == "typed"
    assert not response.raw_output_contents and [o.name for o in response.outputs] == ["picked"]
    out = response.outputs[0]
    assert out.datatype == "FP32" and list(out.shape) == [2, 1, 2]
    np.testing.assert_array_equal(np.array(out.contents.fp32_contents, np.float32).reshape(2, 1, 2), TABLE[K])


def _raw_request(*raw: bytes):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="model")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    request.inputs.add(name="k", datatype="INT64", shape=[2, 1])
    request.raw_input_contents.extend(raw)
    return request


def _both_contents():
    request = _raw_request(X.tobytes(), K.tobytes())
    request.inputs[0].contents.fp32_contents.extend([1.0] * 8)
    return request


BAD = {  # name: (request builder, words the one-line message must hold)
    "wrong shape": (lambda: typed_request(x=X[:, :3]), "dim 1"),
    "shape and data disagree": (lambda: _shape(typed_request(), [2, 5]), "needs 10 values, data has 8"),
    "wrong dtype": (lambda: _datatype(typed_request(), "INT32"), "is FP32, not INT32"),
    "unknown datatype": (lambda: _datatype(typed_request(), "FP8"), "not one of"),
    "raw bytes short": (lambda: _raw_request(X.tobytes()[:-4], K.tobytes()), "needs 32 bytes, got 28"),
    "raw bytes long": (lambda: _raw_request(X.tobytes(), K.tobytes() + b"\0"), "needs 16 bytes, got 17"),
    "raw count": (lambda: _raw_request(X.tobytes()), "1 entries for 2 inputs"),
    "raw and typed": (_both_contents, "one or the other"),
    "negative dim": (lambda: _shape(typed_request(), [-1, 4]), "non-negative"),
    "unknown input": (lambda: _rename(typed_request(), "y"), "unknown input 'y'"),
    "model refuses k": (lambda: typed_request(k=np.array([[10], [1]], np.int64)), "could not run on this input"),
    "int64 beyond int32 field": (lambda: _int8(typed_request()), "outside the INT8 range"),
}


def _shape(request, shape):
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend(shape)
    return request


def _datatype(request, datatype):
    request.inputs[0].datatype = datatype
    return request


def _rename(request, name):
    request.inputs[0].name = name
    return request


def _int8(request):
    request.inputs[1].datatype = "INT8"
    request.inputs[1].ClearField("contents")
    request.inputs[1].contents.int_contents.extend([300, 1])
    return request


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_request_is_invalid_argument_in_one_line(stub, name):
    build, words = BAD[name]
    request = build()
    code, message = refusal(lambda: stub.ModelInfer(request, metadata=tuple(AUTH.items())))
    assert code == "INVALID_ARGUMENT", (code, message)
    assert words in message and "\n" not in message and not INTERNALS.search(message), message


def test_a_message_that_is_not_protobuf_is_invalid_argument(oip_server, tc):
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{oip_server.grpc_port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        code, message = refusal(lambda: call(b"\xff\xff\xff\xff", metadata=tuple(AUTH.items())))
    assert code == "INVALID_ARGUMENT" and "not a valid ModelInferRequest" in message


def test_unknown_model_or_version_is_not_found(tc, client):
    code, message = refusal(lambda: client.infer("nope", inputs(tc), headers=AUTH))
    assert code == "NOT_FOUND" and "no model named 'nope'" in message
    code, message = refusal(lambda: client.infer("model", inputs(tc), model_version="7", headers=AUTH))
    assert code == "NOT_FOUND" and "version '7'" in message
    assert refusal(lambda: client.is_model_ready("nope"))[0] == "NOT_FOUND"


def test_message_over_the_body_cap_is_refused(tc, client):
    rows = OIP_MAX_BODY // 16 + 1  # 16 bytes of x per row: just over MLDEPLOY_MAX_BODY_BYTES
    x, k = np.zeros((rows, 4), np.float32), np.zeros((rows, 1), np.int64)
    code, message = refusal(lambda: client.infer("model", inputs(tc, x, k), headers=AUTH))
    assert code == "RESOURCE_EXHAUSTED" and "larger than max" in message
    ok = OIP_MAX_BODY // 32  # comfortably under: served
    assert client.infer("model", inputs(tc, x[:ok], k[:ok]), headers=AUTH).as_numpy("logits").shape == (ok, 3)


def test_api_keys_as_the_http_gate_takes_them(tc, client):
    for headers in ({}, {"authorization": "Bearer wrong-key-0123456789"}, {"x-api-key": "nope"}):
        code, message = refusal(lambda h=headers: client.infer("model", inputs(tc), headers=h))
        assert code == "UNAUTHENTICATED" and "API key" in message, (headers, code, message)
    assert refusal(lambda: client.get_model_metadata("model"))[0] == "UNAUTHENTICATED"
    for headers in (AUTH, {"x-api-key": API_KEY}):
        assert client.infer("model", inputs(tc), headers=headers).as_numpy("logits").shape == (2, 3)


def test_metrics_count_grpc_calls_beside_http(tc, client, oip_server):
    def count(code: int) -> int:
        text = oip_server.call("GET", "/metrics", headers=AUTH).body.decode()
        m = re.search(r'mldeploy_requests_total\{route="/inference.GRPCInferenceService/ModelInfer",'
                      rf'code="{code}"\}} (\d+)', text)
        return int(m[1]) if m else 0

    before, before_400 = count(200), count(400)
    for _ in range(3):
        client.infer("model", inputs(tc), headers=AUTH)
    refusal(lambda: client.infer("model", inputs(tc, x_type="INT32", x=X.astype(np.int32)), headers=AUTH))
    # each worker adds its live counts to the others' snapshots, published once a second: two scrapes
    # answered by different workers can differ, so the same scrape is judged that was waited for
    deadline = time.monotonic() + 15
    while True:
        got = count(200), count(400)
        if (got[0] >= before + 3 and got[1] >= before_400 + 1) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got[0] >= before + 3 and got[1] >= before_400 + 1, (got, before, before_400)


def test_every_worker_serves_grpc(tc, oip_server):
    """Both workers listen on the one gRPC port (SO_REUSEPORT): fresh connections reach both. An error's
    x-request-id starts with the answering worker's pid."""
    import grpc

    pids = set()
    for _ in range(24):
        # a connection of its own each time (channels share connections to one target by default)
        with grpc.insecure_channel(f"127.0.0.1:{oip_server.grpc_port}",
                                   options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            try:
                call(b"\xff", metadata=tuple(AUTH.items()))
            except grpc.RpcError as e:
                pids.add(dict(e.trailing_metadata())["x-request-id"].split("-")[0])
    serving = {e["pid"] for e in oip_server.logs() if e.get("message") == "gRPC serving"}
    assert len(serving) == 2 and pids == {f"{p:x}" for p in serving}, (pids, serving)


# -- servers of their own ---------------------------------------------------------------------------
def test_rate_limit_is_resource_exhausted_with_retry_after(tc, linear_bundle, tmp_path):
    import grpc

    port = free_port()
    s = start_server(linear_bundle, tmp_path, workers=1, env={"MLDEPLOY_GRPC_PORT": str(port),
                                                              "MLDEPLOY_RATE_LIMIT": "1/min"})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ServerMetadata")
            assert call(b"") is not None  # the one token of the burst
            with pytest.raises(grpc.RpcError) as refused:
                call(b"")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limit" in refused.value.details()
        assert int(dict(refused.value.trailing_metadata())["retry-after"]) >= 1
    finally:
        s.stop()


def test_grpc_waits_for_the_model_and_drains_on_sigterm(tc, linear_bundle, tmp_path):
    """Before the model is loaded the port is closed (UNAVAILABLE, the code clients retry on). On SIGTERM
    calls in flight finish: each waits 300 ms in the batcher (MLDEPLOY_BATCH_WAIT_MS) when the signal
    comes, and every one must still succeed, and the server exit 0."""
    port = free_port()
    s = start_server(linear_bundle, tmp_path, workers=1, ready=False,
                     env={"MLDEPLOY_GRPC_PORT": str(port), "MLDEPLOY_BATCH_WAIT_MS": "300"})
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        codes = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if client.is_server_ready():
                    break
            except Exception as e:
                codes.append(str(e.status()) if hasattr(e, "status") else type(e).__name__)
            time.sleep(0.01)
        assert codes and set(codes) <= {"StatusCode.UNAVAILABLE"}, codes
        x = tc.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(X[:1])
        started = threading.Event()

        def one(_):
            started.set()
            return client.infer("model", [x]).as_numpy("probs").shape

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(one, i) for i in range(8)]
            started.wait(5)
            time.sleep(0.1)  # the calls are in the batcher's 300 ms wait now
            s.process.send_signal(signal.SIGTERM)
            assert [f.result(timeout=10) for f in futures] == [(1, 3)] * 8
        assert s.process.wait(15) == 0
    finally:
        client.close()
        s.stop()


def test_taken_grpc_port_is_one_line_and_exit_2(linear_bundle, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"MLDEPLOY_GRPC_PORT": str(port), "PATH": "/usr/bin:/bin"}
        run = subprocess.run([sys.executable, "-m", "mldeploy", "serve", "--bundle", str(linear_bundle),
                              "--host", "127.0.0.1", "--port", str(free_port())],
                             check=False, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run
    assert f"port {port} on 127.0.0.1 is already in use" in run.stderr + run.stdout


def test_grpc_port_must_not_be_the_http_port(linear_bundle):
    from mldeploy.errors import UsageError
    from mldeploy.serve.settings import from_env

    with pytest.raises(UsageError, match="gRPC needs a port of its own"):
        from_env({"MLDEPLOY_GRPC_PORT": "8080"}, bundle=str(linear_bundle))
    assert from_env({}, bundle=str(linear_bundle)).grpc_port == 0  # off unless asked for


def test_grpc_port_without_grpcio_is_one_line(linear_bundle, monkeypatch):
    """Checked in the parent before any worker starts, without importing grpc (not fork-safe)."""
    import importlib.util

    from mldeploy.errors import UsageError
    from mldeploy.serve.settings import check_grpc, from_env

    settings = from_env({"MLDEPLOY_GRPC_PORT": "8081"}, bundle=str(linear_bundle))
    check_grpc(settings)  # installed here
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else find(name, *a))
    with pytest.raises(UsageError, match="grpcio and protobuf are not installed"):
        check_grpc(settings)
