"""Outputs renamed by `outputs:` and 0-d outputs, as the server answers them."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mldeploy.cli import main
from tests.helpers.models import W
from tests.helpers.server import start_server


def test_renamed_and_scalar_outputs_are_served_under_their_names(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
                               helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
                              [numpy_helper.from_array(W, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), tmp_path / "m.onnx")
    (tmp_path / "mldeploy.yaml").write_text("version: 1\nmodel:\n  path: m.onnx\noutputs:\n  - name: logits\n"
                                            "  - name: total_sum\n")
    assert main(["convert", "--config", str(tmp_path / "mldeploy.yaml"), "--out", str(tmp_path / "b")]) == 0
    server = start_server(tmp_path / "b", tmp_path)
    try:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        r = server.call("POST", "/v2/models/model/infer",
                        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}]})
        assert r.status == 200, r.body
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        assert sorted(outputs) == ["logits", "total_sum"]
        np.testing.assert_allclose(np.reshape(outputs["logits"]["data"], outputs["logits"]["shape"]), x @ W, rtol=1e-5)
        assert outputs["total_sum"]["shape"] == []
        np.testing.assert_allclose(outputs["total_sum"]["data"], [(x @ W).sum()], rtol=1e-5)
    finally:
        server.stop()
