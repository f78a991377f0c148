"""Plugin: small ONNX models built in code (a linear classifier, a two-input model) and their
converted bundles; `bundle` is the linear one, converted once per session."""

from __future__ import annotations

import itertools
import json
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
PREDICT_BODY = json.dumps({"inputs": [[0.1, 0.2, 0.3, 0.4]]}).encode()   # one row for the linear model


def save_bundle(graph: onnx.GraphProto, folder: Path) -> Path:
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


# -- MLPs for convert and optimize ---------------------------------------------------------------------
def small_mlp(batch="N", opset=18, with_gelu=False) -> onnx.ModelProto:
    """x[batch, 4] -> softmax(x @ W + b) [batch, 3], optionally through com.microsoft Gelu."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"])]
    last = "z"
    if with_gelu:
        nodes.append(helper.make_node("Gelu", ["z"], ["g"], domain="com.microsoft"))
        last = "g"
    nodes.append(helper.make_node("Softmax", [last], ["probs"], axis=-1))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 3])], [w, b])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if with_gelu else [])
    return helper.make_model(graph, opset_imports=imports, ir_version=9)


def deep_mlp(sizes=(64, 256, 256, 10), activation="Relu", seed=0) -> onnx.ModelProto:
    """A MatMul-heavy classifier x[N, sizes[0]] -> probs[N, sizes[-1]]."""
    rng = np.random.default_rng(seed)
    nodes, inits, last = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(rng.standard_normal(b).astype(np.float32) * 0.1, f"B{i}")]
        nodes += [helper.make_node("MatMul", [last, f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"])]
        last = f"a{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node(activation, [last], [f"h{i}"]))
            last = f"h{i}"
    nodes.append(helper.make_node("Softmax", [last], ["probs"], axis=-1))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", sizes[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


# Random weights give small class margins, so int8 flips a few argmaxes: budget 0.9 (default 0.99).
FAST = "version: 1\noptimize:\n  latency_seconds: 0.02\n  batch_size: 16\n  samples: 64\n"
BUDGET = "  budget:\n    top1_agreement: 0.9\n"


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """A converted bundle of a small linear model (4 floats -> 3 probabilities)."""
    return save_bundle(linear_graph(), tmp_path_factory.mktemp("aws-model"))
