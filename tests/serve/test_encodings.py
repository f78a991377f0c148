"""Bodies the codec once answered wrongly, through a real server: 0-d outputs (were 500), CSV into
integer inputs (were all refused: CSV was read as float64), and model errors in plain words (were
ONNX Runtime's status codes, node wording and C++ source paths)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers.models import W, save_bundle
from tests.helpers.server import start_server


def _graph(nodes, inputs, outputs, weights=()):
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                             [helper.make_tensor_value_info(*o) for o in outputs], list(weights))


SUM = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0)]
GRAPHS = {
    # y [N, 3] per row, and total [] for the whole request
    "scalar_and_rows": _graph(SUM, [("x", TensorProto.FLOAT, ["N", 4])],
                              [("y", TensorProto.FLOAT, ["N", 3]), ("total", TensorProto.FLOAT, [])],
                              [numpy_helper.from_array(W, "W")]),
    "scalar_only": _graph(SUM, [("x", TensorProto.FLOAT, ["N", 4])], [("total", TensorProto.FLOAT, [])],
                          [numpy_helper.from_array(W, "W")]),
    "int64": _graph([helper.make_node("Identity", ["k"], ["same"])], [("k", TensorProto.INT64, ["N", 2])],
                    [("same", TensorProto.INT64, ["N", 2])]),
    # a and b pass validation with any widths; ONNX Runtime refuses widths that do not broadcast
    "add": _graph([helper.make_node("Add", ["a", "b"], ["c"])],
                  [("a", TensorProto.FLOAT, ["N", "d"]), ("b", TensorProto.FLOAT, ["N", "e"])],
                  [("c", TensorProto.FLOAT, ["N", "d"])]),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    started = {}
    try:
        for name, graph in GRAPHS.items():
            folder = tmp_path_factory.mktemp(name)
            started[name] = start_server(save_bundle(graph, folder), folder)
        yield started
    finally:
        for s in started.values():
            s.stop()


X = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.75, 3.0]], np.float32)
TOTAL = float((X @ W).sum(dtype=np.float32))


def test_scalar_output_beside_row_outputs(servers):
    s = servers["scalar_and_rows"]
    r = s.call("POST", "/predict", {"instances": X.tolist()})
    assert r.status == 200, r.body
    rows = r.json()["predictions"]
    np.testing.assert_allclose([row["y"] for row in rows], X @ W, rtol=1e-5)
    np.testing.assert_allclose([row["total"] for row in rows], [TOTAL, TOTAL], rtol=1e-5)  # the request's one value
    r = s.call("POST", "/predict", {"inputs": X.tolist()})
    assert r.status == 200, r.body
    np.testing.assert_allclose(r.json()["outputs"]["total"], TOTAL, rtol=1e-5)


@pytest.mark.parametrize("body,ctype,accept", [
    (json.dumps({"instances": X.tolist()}), "application/json", ""),
    (json.dumps({"inputs": X.tolist()}), "application/json", ""),
    ("0.5,-1,2,0.25\n1.5,0,-0.75,3\n", "text/csv", ""),
    ("0.5,-1,2,0.25\n1.5,0,-0.75,3\n", "text/csv", "application/json"),
])
def test_a_lone_scalar_output_is_its_value(servers, body, ctype, accept):
    r = servers["scalar_only"].call("POST", "/invocations", body, {"content-type": ctype, "accept": accept})
    assert r.status == 200, r.body
    if r.headers["content-type"] == "text/csv":
        value = float(r.body.decode())
    else:
        doc = r.json()
        value = doc.get("predictions", doc.get("outputs"))
    np.testing.assert_allclose(value, TOTAL, rtol=1e-5)


def test_csv_into_an_int64_input_keeps_every_digit(servers):
    s = servers["int64"]
    big = 2**53 + 1  # float64 cannot hold it: a CSV read as floats would answer 2**53
    r = s.call("POST", "/invocations", f"{big},-3\n7,0\n", {"content-type": "text/csv", "accept": "application/json"})
    assert r.status == 200, r.body
    assert r.json()["predictions"] == [[big, -3], [7, 0]]
    r = s.call("POST", "/invocations", "1,2\n", {"content-type": "text/csv"})
    assert r.status == 200 and r.body.decode().split() == ["1,2"], r.body


@pytest.mark.parametrize("csv", ["1.5,2\n", "1,x\n", f"{2**64},1\n"])
def test_csv_that_is_not_int64_is_a_clear_400(servers, csv):
    r = servers["int64"].call("POST", "/invocations", csv, {"content-type": "text/csv"})
    assert r.status == 400, r.body
    assert "integers" in r.json()["error"], r.body


INTERNALS = re.compile(r"ONNXRuntimeError|Non-zero status|Status Message|onnxruntime|\.cc:|\.h:|0x[0-9a-f]{4,}")


def test_model_errors_name_the_problem_not_the_runtime(servers):
    r = servers["add"].call("POST", "/predict", {"inputs": {"a": [[1.0, 2.0]], "b": [[1.0, 2.0, 3.0]]}})
    assert r.status == 422, r.body
    message = r.json()["error"]
    assert not INTERNALS.search(message), message
    assert "broadcast" in message and "2 by 3" in message, message  # the useful part survives
