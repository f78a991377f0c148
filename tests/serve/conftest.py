"""Small bundles made from ONNX graphs in code, and real `mldeploy serve` processes on loopback."""

from __future__ import annotations

import http.client
import importlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mldeploy.cli import main

RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 3)).astype(np.float32)
B = RNG.normal(size=(3,)).astype(np.float32)
TABLE = RNG.normal(size=(10, 2)).astype(np.float32)


def _save(graph: onnx.GraphProto, folder: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.src.onnx"
    onnx.save(model, path)
    out = folder / "bundle"
    assert main(["convert", str(path), "--out", str(out)]) == 0
    return out


def linear_graph() -> onnx.GraphProto:
    """x float32 [batch, 4] -> probs = softmax(x @ W + B) [batch, 3]."""
    return helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])


def two_io_graph() -> onnx.GraphProto:
    """x float32 [batch, 4] and k int64 [batch, 1] -> logits [batch, 3] and picked = Gather(TABLE, k) [batch, 1, 2].

    An index outside 0..9 passes validation (it is an int64) but ONNX Runtime refuses it: the
    model-error path (422) and the merged-batch retry are tested with it."""
    return helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["logits"]),
         helper.make_node("Gather", ["T", "k"], ["picked"], axis=0)],
        "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
                helper.make_tensor_value_info("k", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["batch", 1, 2])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B"), numpy_helper.from_array(TABLE, "T")])


def expected_probs(x: np.ndarray) -> np.ndarray:
    logits = np.asarray(x, np.float32) @ W + B
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="session")
def linear_bundle(tmp_path_factory) -> Path:
    return _save(linear_graph(), tmp_path_factory.mktemp("linear"))


@pytest.fixture(scope="session")
def two_io_bundle(tmp_path_factory) -> Path:
    return _save(two_io_graph(), tmp_path_factory.mktemp("two"))


# -- a real server -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    def call(self, method: str, path: str, body: object = None, headers: dict | None = None,
             timeout: float = 30) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            headers = {"content-type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        reply = Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        conn.close()
        return reply

    def logs(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def start_server(bundle: Path | None, tmp: Path, env: dict | None = None, workers: int = 1,
                 args: tuple = (), ready: bool = True, open_files: int | None = None) -> Server:
    """`mldeploy serve` in its own process on a free loopback port; waits for readiness.
    open_files: the server's open-file limit, soft and hard (as `ulimit -n` sets it)."""
    port = free_port()
    log = tmp / f"server-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLDEPLOY_", "AIP_", "AZUREML_",
                                                                          "SAGEMAKER_"))}
    full_env.update({"MLDEPLOY_WORKERS": str(workers), **(env or {})})
    command = [sys.executable, "-m", "mldeploy", "serve", *args, "--host", "127.0.0.1"]
    if "--port" not in args and not any(k in full_env for k in ("AIP_HTTP_PORT", "SAGEMAKER_BIND_TO_PORT", "PORT")):
        command += ["--port", str(port)]
    else:
        port = int(args[args.index("--port") + 1]) if "--port" in args else int(
            full_env.get("AIP_HTTP_PORT") or full_env.get("SAGEMAKER_BIND_TO_PORT") or full_env["PORT"])
    if bundle is not None:
        command += ["--bundle", str(bundle)]
    with open(log, "wb") as out:
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))) if open_files else None
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=tmp,
                                   preexec_fn=limit)
    server = Server(process, port, log)
    if ready:
        wait_ready(server)
    return server


def wait_ready(server: Server, path: str = "/v2/health/ready", timeout: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            if server.call("GET", path, timeout=2).status == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.02)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"server not ready after {timeout} s:\n{server.log.read_text()}")


@pytest.fixture(scope="session")
def server(linear_bundle, tmp_path_factory):
    """The linear model under 2 workers: what most contract tests talk to."""
    s = start_server(linear_bundle, tmp_path_factory.mktemp("server"), workers=2)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def two_io_server(two_io_bundle, tmp_path_factory):
    s = start_server(two_io_bundle, tmp_path_factory.mktemp("server2"), workers=1)
    yield s
    s.stop()


# -- the Open Inference Protocol over gRPC, and binary tensors ------------------------------------------
IN_CI = bool(os.environ.get("CI"))  # read at import: the autouse clean_env fixture removes it during tests
API_KEY = "test-key-0123456789abcdef"
OIP_MAX_BODY = 64 << 10


def need(module: str):
    """The module, or a skip outside CI and a failure in CI (which installs everything: nothing may skip)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        reason = f"{module} is not installed (pip install -e '.[dev]' installs tritonclient): {e}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def oip_server(two_io_bundle, tmp_path_factory):
    """The two-input model under 2 workers with gRPC on (server.grpc_port), an API key and a 64 KiB
    message cap: what test_grpc.py and test_binary_tensors.py talk to."""
    grpc_port = free_port()
    s = start_server(two_io_bundle, tmp_path_factory.mktemp("oip"), workers=2,
                     env={"MLDEPLOY_GRPC_PORT": str(grpc_port), "MLDEPLOY_API_KEYS": API_KEY,
                          "MLDEPLOY_MAX_BODY_BYTES": str(OIP_MAX_BODY)})
    s.grpc_port = grpc_port
    yield s
    s.stop()
