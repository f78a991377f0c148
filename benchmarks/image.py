"""What the serving image costs: size, build time cold and cached, container cold start (figures).

    eval "$(scripts/docker-up.sh)"; .venv/bin/python benchmarks/image.py

Builds the image for a 10 MB model (an MLP 1024-2048-256 made with onnx, random weights) three
times on the engine DOCKER_HOST names: without the engine's layer cache (cold; the runtime's
wheels are cached on the host either way), with it, and with it after the model changed (what a
new model version costs). Then starts the container five times and measures `docker run` to the
first successful prediction. Targets: image <= 300 MB, cold start <= 2 s for a 10 MB model.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mldeploy.bundle import Bundle
from mldeploy.cli import main
from mldeploy.image import engine, make_context


def model(folder: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(1024, 2048)) / 32).astype(np.float32)  # unit-scale activations
    w2 = (rng.normal(size=(2048, 256)) / 45).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["y"])], "mlp10mb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.save(m, folder / "m.onnx")
    assert main(["convert", str(folder / "m.onnx"), "--out", str(folder / "bundle"), "--force"]) == 0
    return folder / "bundle"


def build(client, bundle: Path, tag: str, nocache: bool) -> float:
    base = os.environ.get("MLDEPLOY_IMAGE__BASE", "python:3.11-slim")
    with tempfile.TemporaryDirectory() as ctx:
        make_context(Bundle.open(bundle), base, None, Path(ctx))  # wheels fetched outside the timing
        start = time.perf_counter()
        for _ in client.api.build(path=ctx, tag=tag, rm=True, nocache=nocache, decode=True):
            pass
        return time.perf_counter() - start


def cold_start(client, tag: str, port: int) -> float:
    body = b'{"inputs": [[' + b",".join([b"0.5"] * 1024) + b"]]}"
    start = time.perf_counter()
    c = client.containers.run(tag, ["serve"], detach=True, ports={"8080/tcp": ("127.0.0.1", port)})
    try:
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"content-type": "application/json"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.01)
    finally:
        c.remove(force=True)


def run() -> None:
    client = engine()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp, "a"), Path(tmp, "b")
        a.mkdir(), b.mkdir()
        first, second = model(a, 0), model(b, 1)
        size_mb = (first / "model.onnx").stat().st_size / 1e6
        cold = build(client, first, "mldeploy-bench/image:a", nocache=True)
        cached = build(client, first, "mldeploy-bench/image:a", nocache=False)
        new_model = build(client, second, "mldeploy-bench/image:b", nocache=False)
        image_mb = client.images.get("mldeploy-bench/image:a").attrs["Size"] / 1e6
        starts = [cold_start(client, "mldeploy-bench/image:a", 18181 + i) for i in range(5)]
    print(f"model: {size_mb:.1f} MB ONNX; base image: {os.environ.get('MLDEPLOY_IMAGE__BASE', 'python:3.11-slim')}")
    print(f"{'image size':<38} {image_mb:8.0f} MB   target <= 300 MB: {'PASS' if image_mb <= 300 else 'MISS'}")
    print(f"{'build, no layer cache':<38} {cold:8.1f} s")
    print(f"{'build, cached (same model)':<38} {cached:8.1f} s   {cold / cached:.0f}x faster than cold")
    print(f"{'build, cached runtime, new model':<38} {new_model:8.1f} s")
    median = statistics.median(starts)
    print(f"{'cold start: docker run -> prediction':<38} {median:8.2f} s   (median of 5: "
          f"{', '.join(f'{s:.2f}' for s in starts)})   target <= 2 s: {'PASS' if median <= 2 else 'MISS'}")
    for tag in ("mldeploy-bench/image:a", "mldeploy-bench/image:b"):
        client.images.remove(tag, force=True)


if __name__ == "__main__":
    run()
