"""gRPC beside HTTP, and binary tensors beside JSON, on one `mldeploy serve` (2 workers), in one run.

  mlp 64-256-10, one row per request:   HTTP/1.1 v2 JSON  |  gRPC raw_input_contents
  cnn 3x64x64, one image per request:   HTTP/1.1 v2 JSON  |  HTTP binary tensors  |  gRPC raw

Both load generators are C programs on the same cores as the server: wrk for HTTP/1.1, h2load
(Debian's nghttp2-client) for gRPC, which is HTTP/2 with each message framed by hand here. Every
body is checked once against ONNX Runtime's own answer before it is timed. Printed: requests per
second at each concurrency and the ratios to HTTP JSON; the CPU is named, absolute numbers are for
this machine only.

    .venv/bin/python benchmarks/serve_grpc.py [--seconds 5] [--concurrency 1,16,64]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BIN = Path(sys.executable).parent
RNG = np.random.default_rng(0)


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def _weights(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) or 1)).astype(np.float32)


def mlp() -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Add", ["h0", "B1"], ["h1"]),
         helper.make_node("Relu", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["o0"]),
         helper.make_node("Add", ["o0", "B2"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(_weights(64, 256), "W1"), numpy_helper.from_array(np.zeros(256, np.float32), "B1"),
         numpy_helper.from_array(_weights(256, 10), "W2"), numpy_helper.from_array(np.zeros(10, np.float32), "B2")])


def cnn() -> onnx.GraphProto:
    """Four 3x3 convolutions (32, 64 stride 2, 128 stride 2, 128), global pooling, a 10-way layer."""
    nodes, inits, prev, channels = [], [], "x", 3
    for i, (out, stride) in enumerate([(32, 1), (64, 2), (128, 2), (128, 1)]):
        inits.append(numpy_helper.from_array(_weights(out, channels, 3, 3), f"C{i}"))
        nodes += [helper.make_node("Conv", [prev, f"C{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev, channels = f"r{i}", out
    inits.append(numpy_helper.from_array(_weights(128, 10), "W"))
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
              helper.make_node("MatMul", ["f", "W"], ["y"])]
    return helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 64, 64])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)


def bundle(graph: onnx.GraphProto, work: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, work / f"{graph.name}.onnx")
    out = work / f"{graph.name}-bundle"
    subprocess.run([str(BIN / "mldeploy"), "convert", str(work / f"{graph.name}.onnx"), "--out", str(out)],
                   check=True, capture_output=True)
    return out


# -- the bodies ------------------------------------------------------------------------------------
def json_body(x: np.ndarray) -> tuple[bytes, dict]:
    doc = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    return json.dumps(doc).encode(), {"content-type": "application/json"}


def binary_body(x: np.ndarray) -> tuple[bytes, dict]:
    head = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + x.tobytes(), {"inference-header-content-length": str(len(head))}


def grpc_message(x: np.ndarray) -> bytes:
    """A ModelInferRequest with raw contents, as tritonclient sends it, in gRPC's length-prefixed frame."""
    from mldeploy.serve.grpc_proto import message

    request = message("ModelInferRequest")(model_name="model")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    data = request.SerializeToString()
    return b"\0" + struct.pack(">I", len(data)) + data


def check_http(port: int, body: bytes, headers: dict, expected: np.ndarray) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v2/models/model/infer", body, headers)
    reply = conn.getresponse()
    data = reply.read()
    assert reply.status == 200, (reply.status, data[:300])
    split = reply.getheader("inference-header-content-length")
    if split is None:
        got = np.array(json.loads(data)["outputs"][0]["data"], np.float32)
    else:
        got = np.frombuffer(data[int(split):], np.float32)
    np.testing.assert_allclose(got, expected.reshape(-1), rtol=1e-4, atol=1e-5)


def check_grpc(port: int, frame: bytes, expected: np.ndarray) -> None:
    import grpc

    from mldeploy.serve.grpc_proto import message

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   response_deserializer=message("ModelInferResponse").FromString)
        response = call(frame[5:], timeout=30)
    np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], np.float32), expected.reshape(-1),
                               rtol=1e-4, atol=1e-5)


# -- load ------------------------------------------------------------------------------------------
def wrk(port: int, body: bytes, headers: dict, connections: int, seconds: int, tmp: Path) -> float:
    data = tmp / f"body-{len(body)}-{len(headers)}"
    data.write_bytes(body)
    lua = tmp / "post.lua"
    lua.write_text('wrk.method = "POST"\n' + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
                   + f'local f = io.open("{data}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    out = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "-s", str(lua),
                          f"http://127.0.0.1:{port}/v2/models/model/infer"], capture_output=True, text=True, check=False).stdout
    if "Non-2xx" in out:
        sys.exit(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])


def h2load(port: int, frame: bytes, connections: int, seconds: int, tmp: Path) -> float:
    data = tmp / f"grpc-{len(frame)}"
    data.write_bytes(frame)
    out = subprocess.run(["h2load", f"-c{connections}", "-m1", f"-t{min(2, connections)}", f"-D{seconds}",
                          "--warm-up-time=1", "-d", str(data), "-H", "content-type: application/grpc", "-H", "te: trailers",
                          f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"],
                         capture_output=True, text=True, check=False).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not done or int(done[3]) or int(done[4]):
        sys.exit(f"h2load saw errors:\n{out}")
    return float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)[1])


def raw_ort_batched(model: Path, shape: tuple[int, ...], seconds: int, batch: int = 32) -> float:
    """The limit the issue measures against: rows per second of ONNX Runtime itself, no HTTP, batch 32,
    with the server's whole CPU (2 intra-op threads, as 2 workers of 1 thread each have)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the server's sessions
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    x = RNG.standard_normal((batch, *shape[1:])).astype(np.float32)
    session.run(None, {"x": x})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"x": x})
        done += batch
    return done / (time.perf_counter() - start)


def serve(bundle_dir: Path, tmp: Path) -> tuple[subprocess.Popen, int, int]:
    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    http_port, grpc_port = port(), port()
    env = {**os.environ, "MLDEPLOY_WORKERS": "2", "MLDEPLOY_GRPC_PORT": str(grpc_port),
           "MLDEPLOY_MAX_BODY_BYTES": str(8 << 20)}
    with open(tmp / "server.log", "ab") as log:
        proc = subprocess.Popen([str(BIN / "mldeploy"), "serve", "--bundle", str(bundle_dir), "--host", "127.0.0.1",
                                 "--port", str(http_port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=1)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                time.sleep(0.5)  # the second worker too
                return proc, http_port, grpc_port
        except OSError:
            time.sleep(0.05)
    sys.exit(f"the server did not start:\n{(tmp / 'server.log').read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16,64")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    for tool in ("wrk", "h2load"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install wrk nghttp2-client)")
    import onnxruntime as ort

    print(f"CPU: {cpu_name()} ({len(os.sched_getaffinity(0))} cores for server and load together); "
          f"2 workers; {args.seconds} s per point")
    with tempfile.TemporaryDirectory(prefix="serve-grpc-") as folder:
        tmp = Path(folder)
        for graph, shape, forms in [(mlp(), (1, 64), ["HTTP JSON", "gRPC raw"]),
                                    (cnn(), (1, 3, 64, 64), ["HTTP JSON", "HTTP binary", "gRPC raw"])]:
            b = bundle(graph, tmp)
            x = RNG.standard_normal(shape).astype(np.float32)
            expected = ort.InferenceSession(str(b / "model.onnx")).run(None, {"x": x})[0]
            proc, http_port, grpc_port = serve(b, tmp)
            try:
                loads = {"HTTP JSON": (json_body(x), None), "HTTP binary": (binary_body(x), None),
                         "gRPC raw": (None, grpc_message(x))}
                rps = {}
                for form in forms:
                    body_headers, frame = loads[form]
                    if frame is None:
                        check_http(http_port, *body_headers, expected)
                    else:
                        check_grpc(grpc_port, frame, expected)

                    def run(c: int, body_headers=body_headers, frame=frame) -> float:
                        if frame is None:
                            return wrk(http_port, *body_headers, c, args.seconds, tmp)  # noqa: B023  used at once
                        return h2load(grpc_port, frame, c, args.seconds, tmp)  # noqa: B023

                    run(max(levels))  # warm-up
                    rps[form] = {c: run(c) for c in levels}
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            print(f"\n== {graph.name} {list(shape)}, one request = one {'row' if graph.name == 'mlp' else 'image'}: "
                  "requests/s (ratio to HTTP JSON)")
            print(f"{'connections':>12} " + " ".join(f"{form:>22}" for form in forms))
            for c in levels:
                base = rps["HTTP JSON"][c]
                print(f"{c:>12} " + " ".join(f"{rps[f][c]:>13,.0f} ({rps[f][c] / base:4.2f}x)" for f in forms))
            if "HTTP binary" in forms:  # the target: >= 0.9x raw ONNX Runtime's batched throughput
                raw = raw_ort_batched(b / "model.onnx", shape, args.seconds)
                best = max(rps["HTTP binary"].values())
                print(f"raw ONNX Runtime, batch 32, 2 threads: {raw:,.0f} images/s; HTTP binary at its best "
                      f"concurrency: {best:,.0f} ({best / raw:.2f}x, target >= 0.9x: {'PASS' if best >= 0.9 * raw else 'MISS'})")


if __name__ == "__main__":
    main()
