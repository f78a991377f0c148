"""convert on ONNX files: checker, shape inference, signature, parity against ONNX's reference evaluator.

These need only the base install (onnx + onnxruntime), no PyTorch or TensorFlow.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers.models import small_mlp as mlp


@pytest.fixture
def models(tmp_path):
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    onnx.save(mlp(batch=2), tmp_path / "fixed.onnx")
    onnx.save(mlp(with_gelu=True), tmp_path / "gelu.onnx")
    broken = mlp()
    broken.graph.node[1].input[0] = "nowhere"  # uses a tensor nothing produces
    onnx.save(broken, tmp_path / "broken.onnx")
    (tmp_path / "truncated.onnx").write_bytes(mlp().SerializeToString()[:50])
    (tmp_path / "empty.onnx").write_bytes(b"")
    onnx.save(mlp(), tmp_path / "external.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="external.bin", size_threshold=0)
    (tmp_path / "model.xyz").write_bytes(b"\x00\x01 not a model")
    return tmp_path


def read(out):
    return json.loads((out / "manifest.json").read_text()), json.loads((out / "signature.json").read_text())


def test_valid_model_gets_signature_and_reference_parity(models, mldeploy):
    out = models / "b"
    r = mldeploy("convert", "mlp.onnx", "--out", out, cwd=models)
    assert r.code == 0, r.err
    manifest, signature = read(out)
    assert signature["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]
    assert signature["outputs"] == [{"name": "probs", "dtype": "float32", "shape": ["N", 3]}]
    assert signature["batch_dim"] == "N"
    step = manifest["steps"][-1]
    assert step["framework"] == "onnx" and step["status"] == "passed"
    assert all(c["max_abs"] is not None and c["max_abs"] < 1e-6 for c in step["parity"]["outputs"])
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)


def test_model_with_fixed_batch_is_kept_with_a_warning(models, mldeploy):
    r = mldeploy("convert", "fixed.onnx", "--out", models / "b", cwd=models)
    assert r.code == 0, r.err
    assert "fixed batch of 2" in r.err
    assert read(models / "b")[0]["steps"][-1]["parity"]["batches"] == [2]


def test_declaring_a_free_batch_on_a_fixed_model_is_refused(models, mldeploy):
    r = mldeploy("convert", "fixed.onnx", "--input", "x:float32:batch,4", "--out", models / "b", cwd=models)
    assert r.code == 2
    assert "the model fixes the batch of input 'x' to 2, but `inputs:` declares it free (batch)" in r.err


def test_contrib_ops_are_checked_against_onnx_runtime_without_optimizations(models, mldeploy):
    r = mldeploy("convert", "gelu.onnx", "--out", models / "b", cwd=models)
    assert r.code == 0, r.err
    step = read(models / "b")[0]["steps"][-1]
    assert step["warnings"] == []
    assert all(c["passed"] and c["max_abs"] is not None for c in step["parity"]["outputs"])


def test_sample_jsonl_is_used_for_parity(models, mldeploy):
    rows = np.random.default_rng(5).standard_normal((6, 4)).round(3).tolist()
    (models / "sample.jsonl").write_text("\n".join(json.dumps({"x": r}) for r in rows) + "\n")
    r = mldeploy("convert", "mlp.onnx", "--sample", "sample.jsonl", "--out", models / "b", cwd=models)
    assert r.code == 0, r.err
    assert read(models / "b")[0]["steps"][-1]["parity"]["batches"] == [1, 8]


@pytest.mark.parametrize("args, message", [
    (["broken.onnx"], "fails the ONNX checker"),
    (["truncated.onnx"], "is not a valid ONNX file"),
    (["empty.onnx"], "is empty (0 bytes)"),
    (["external.onnx"], "keeps its weights in external data files"),
    (["model.xyz"], "cannot tell which framework made model.xyz"),
    (["mlp.onnx", "--input", "x:float32:N,5"], "input 'x' declared float32 [N, 5], but the model takes float32 [N, 4]"),
    (["mlp.onnx", "--input", "x:int64:N,4"], "declared int64"),
    (["mlp.onnx", "--sample", "nowhere.npz"], "sample file nowhere.npz not found"),
    ([], "no model given"),
])
def test_bad_input_exits_2(models, mldeploy, args, message):
    r = mldeploy("convert", *args, "--out", models / "b", cwd=models)
    assert r.code == 2, r.out + r.err
    assert message in r.err
    assert not (models / "b").exists()


def test_bad_config_fails_before_anything_runs(models, mldeploy):
    (models / "mldeploy.yaml").write_text("version: 1\nmodel:\n  path: mlp.onnx\nparity:\n  atoll: 0.1\n")
    r = mldeploy("convert", "--out", models / "b", cwd=models)
    assert r.code == 2
    assert "mldeploy.yaml:5: parity.atoll: unknown key (did you mean 'atol'?)" in r.err
    assert not (models / "b").exists()


def test_config_supplies_the_model_and_the_flag_wins(models, mldeploy):
    (models / "cfg").mkdir()
    onnx.save(mlp(), models / "cfg" / "inside.onnx")
    (models / "cfg" / "mldeploy.yaml").write_text("version: 1\nmodel:\n  path: inside.onnx\nparity:\n  atol: 0.5\n")
    r = mldeploy("convert", "--config", "cfg/mldeploy.yaml", "--atol", "0.01", cwd=models)
    assert r.code == 0, r.err
    manifest, _ = read(models / ".mldeploy" / "bundle")  # the default bundle is in the working directory
    assert manifest["source"]["path"].endswith("cfg/inside.onnx")
    assert manifest["steps"][-1]["parity"]["atol"] == 0.01


def test_rerun_with_same_inputs_changes_nothing_and_says_so(models, mldeploy):
    assert mldeploy("convert", "mlp.onnx", "--out", models / "b", cwd=models).code == 0
    manifest = (models / "b" / "manifest.json").read_bytes()
    r = mldeploy("convert", "mlp.onnx", "--out", models / "b", cwd=models)
    assert r.code == 0 and "convert: up to date" in r.out
    assert "parity-max-abs-error: " in r.out  # outputs are still given
    assert (models / "b" / "manifest.json").read_bytes() == manifest
    assert sorted(p.name for p in (models / "b").iterdir()) == ["manifest.json", "model.onnx", "signature.json"]
    assert not [p for p in models.iterdir() if p.name.startswith(".b")]  # no scratch folders left behind


@pytest.mark.parametrize("change", ["settings", "source", "bundle", "force"])
def test_rerun_converts_again_when_something_changed(models, mldeploy, change):
    assert mldeploy("convert", "mlp.onnx", "--out", models / "b", cwd=models).code == 0
    args = ["convert", "mlp.onnx", "--out", models / "b"]
    if change == "settings":
        args += ["--atol", "0.001"]
    elif change == "source":
        onnx.save(mlp(batch="rows"), models / "mlp.onnx")
    elif change == "bundle":  # a later step rewrote the model: converting again must not keep it
        (models / "b" / "model.onnx").write_bytes(onnx.load(models / "b" / "model.onnx").SerializeToString() + b"\n")
    else:
        args.append("--force")
    r = mldeploy(*args, cwd=models)
    assert r.code == 0 and "parity passed" in r.out and "up to date" not in r.out


# ---------------------------------------------------------------- constructs real ONNX files use

W = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)


def graph_model(nodes, inputs, outputs, initializers=(), domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 18),
                                                                 *(helper.make_opsetid(d, 1) for d in domains)])


def tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def axes(name, *values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


CONSTRUCTS = {
    # exporters write -1 for "any size"
    "minus_one_batch": graph_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [tensor("x", [-1, 4])],
                                   [tensor("y", [-1, 3])], [numpy_helper.from_array(W, "W")]),
    # an RNN-style state whose batch is its second, unnamed, dim
    "state_input": graph_model(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("ReduceSum", ["state", "a0"], ["s"], keepdims=0),
         helper.make_node("Add", ["z", "s"], ["y"]), helper.make_node("Identity", ["state"], ["state_out"])],
        [tensor("x", [None, 4]), tensor("state", [2, None, 3])], [tensor("y", [None, 3]), tensor("state_out", [2, None, 3])],
        [numpy_helper.from_array(W, "W"), axes("a0", 0)]),
    "int32_ids": graph_model(
        [helper.make_node("Cast", ["ids"], ["i"], to=TensorProto.INT64), helper.make_node("Gather", ["E", "i"], ["e"]),
         helper.make_node("ReduceMean", ["e", "a1"], ["y"], keepdims=0)],
        [tensor("ids", ["N", "L"], TensorProto.INT32)], [tensor("y", ["N", 3])],
        [numpy_helper.from_array(np.random.default_rng(2).standard_normal((50, 3)).astype(np.float32), "E"), axes("a1", 1)]),
    "colon_names": graph_model([helper.make_node("MatMul", ["input:0", "W:0"], ["out:0"])], [tensor("input:0", ["N", 4])],
                               [tensor("out:0", ["N", 3])], [numpy_helper.from_array(W, "W:0")]),
    "constant_weights": graph_model([helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(W, "W")),
                                     helper.make_node("MatMul", ["x", "W"], ["y"])], [tensor("x", ["N", 4])], [tensor("y", ["N", 3])]),
    "scalar_output": graph_model([helper.make_node("MatMul", ["x", "W"], ["y"]),
                                  helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0)],
                                 [tensor("x", ["N", 4])], [tensor("y", ["N", 3]), tensor("total", [])], [numpy_helper.from_array(W, "W")]),
    # Squeeze/Unsqueeze with axes as inputs: where ONNX's reference kernels have gone wrong
    "squeeze_axes": graph_model([helper.make_node("Unsqueeze", ["x", "a1"], ["u"]), helper.make_node("Squeeze", ["u", "a1"], ["y"])],
                                [tensor("x", ["N", 4])], [tensor("y", ["N", 4])], [axes("a1", 1)]),
}


@pytest.mark.parametrize("name", sorted(CONSTRUCTS))
def test_constructs_real_files_use_convert_with_parity(tmp_path, mldeploy, name):
    onnx.save(CONSTRUCTS[name], tmp_path / "m.onnx")
    r = mldeploy("convert", "m.onnx", "--out", tmp_path / "b", cwd=tmp_path)
    assert r.code == 0, r.err
    manifest, signature = read(tmp_path / "b")
    step = manifest["steps"][-1]
    assert step["parity"]["batches"] == [1, 8]
    checked = [c for c in step["parity"]["outputs"] if c["max_abs"] is not None]
    assert checked and all(c["passed"] for c in checked)
    assert all(d is None or isinstance(d, str) or d > 0 for t in signature["inputs"] for d in t["shape"])
    # outputs with a free dim 0 follow the batch at every batch size (a state sized apart from it would not)
    free = [o for o in signature["outputs"] if o["shape"] and not isinstance(o["shape"][0], int)]
    assert all(o["shape"][0] == signature["batch_dim"] for o in free), signature


def test_rows_are_checked_one_at_a_time(tmp_path, mldeploy):
    onnx.save(mlp(), tmp_path / "m.onnx")
    assert mldeploy("convert", "m.onnx", "--out", tmp_path / "b", cwd=tmp_path).code == 0
    notes = [c["note"] for c in read(tmp_path / "b")[0]["steps"][-1]["parity"]["outputs"]]
    assert "rows run alone vs in the batch" in notes


def test_a_model_that_mixes_rows_of_a_batch_fails_parity(tmp_path, mldeploy):
    # softmax over the batch axis: every row's answer depends on the others, which server batching breaks
    model = graph_model([helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Softmax", ["z"], ["y"], axis=0)],
                        [tensor("x", ["N", 4])], [tensor("y", ["N", 3])], [numpy_helper.from_array(W, "W")])
    onnx.save(model, tmp_path / "m.onnx")
    r = mldeploy("convert", "m.onnx", "--out", tmp_path / "b", cwd=tmp_path)
    assert r.code == 1, r.err
    assert "the model mixes rows of a batch" in r.err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("reference", ["auto", "ort", "onnx", "none"])
def test_every_reference_passes_a_good_model(tmp_path, mldeploy, reference):
    onnx.save(CONSTRUCTS["squeeze_axes"], tmp_path / "m.onnx")
    (tmp_path / "mldeploy.yaml").write_text(f"version: 1\nparity:\n  reference: {reference}\n")
    r = mldeploy("convert", "m.onnx", "--out", tmp_path / "b", cwd=tmp_path)
    assert r.code == 0, r.err
    step = read(tmp_path / "b")[0]["steps"][-1]
    with_reference = [c for c in step["parity"]["outputs"] if c["note"] == ""]
    assert bool(with_reference) == (reference != "none")
    assert ("parity.reference is none" in " ".join(step["warnings"])) == (reference == "none")


def test_reference_evaluator_failure_falls_back_to_onnx_runtime(models, mldeploy):
    (models / "mldeploy.yaml").write_text("version: 1\nparity:\n  reference: onnx\n")
    r = mldeploy("convert", "gelu.onnx", "--out", models / "b", cwd=models)  # com.microsoft Gelu: not in onnx.reference
    assert r.code == 0, r.err
    step = read(models / "b")[0]["steps"][-1]
    assert any("reference evaluator cannot run this model" in w for w in step["warnings"])
    assert any(c["note"] == "" and c["passed"] for c in step["parity"]["outputs"])


def test_outputs_are_renamed_in_the_model_and_signature(tmp_path, mldeploy):
    onnx.save(CONSTRUCTS["scalar_output"], tmp_path / "m.onnx")
    (tmp_path / "mldeploy.yaml").write_text("version: 1\noutputs:\n  - name: logits\n  - name: total_sum\n")
    assert mldeploy("convert", "m.onnx", "--out", tmp_path / "b", cwd=tmp_path).code == 0
    _, signature = read(tmp_path / "b")
    assert [o["name"] for o in signature["outputs"]] == ["logits", "total_sum"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.ones((2, 4), np.float32)
    logits, total = sess.run(["logits", "total_sum"], {"x": x})
    np.testing.assert_allclose(logits, x @ W, rtol=1e-5)
    np.testing.assert_allclose(total, (x @ W).sum(), rtol=1e-5)


@pytest.mark.parametrize("outputs, message", [
    ("  - name: a\n", "outputs: names 1 output(s), but the model has 2 (y, total)"),
    ("  - name: x\n  - name: b\n", "outputs: x is already an input's name"),
    ("  - name: W\n  - name: b\n", "outputs: the model already has a tensor named 'W'"),
])
def test_bad_output_names_exit_2(tmp_path, mldeploy, outputs, message):
    onnx.save(CONSTRUCTS["scalar_output"], tmp_path / "m.onnx")
    (tmp_path / "mldeploy.yaml").write_text("version: 1\noutputs:\n" + outputs)
    r = mldeploy("convert", "m.onnx", "--out", tmp_path / "b", cwd=tmp_path)
    assert r.code == 2, r.err
    assert message in r.err
    assert not (tmp_path / "b").exists()


REFUSED = {
    "custom_op": (graph_model([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.acme")], [tensor("x", ["N", 4])],
                              [tensor("y", ["N", 4])], domains=["com.acme"]),
                  "operator Frobnicate (domain com.acme) is not known to ONNX Runtime"),
    "unknown_standard_op": (graph_model([helper.make_node("Frobnicate", ["x"], ["y"])], [tensor("x", ["N", 4])],
                                        [tensor("y", ["N", 4])]),
                            "operator Frobnicate (domain ai.onnx) is not known to ONNX Runtime"),
    "sequence_output": (graph_model([helper.make_node("SequenceConstruct", ["x", "x"], ["s"])], [tensor("x", ["N", 4])],
                                    [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, ["N", 4])]),
                        "output 's' is a sequence, not a tensor"),
    "index_out_of_range": (graph_model([helper.make_node("Gather", ["E", "ids"], ["y"])], [tensor("ids", ["N"], TensorProto.INT64)],
                                       [tensor("y", ["N", 3])], [numpy_helper.from_array(np.zeros((2, 3), np.float32), "E")]),
                           "ONNX Runtime cannot run m.onnx on inputs ids int64[1]"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_constructs_that_cannot_serve_are_refused_in_one_line(tmp_path, mldeploy, name):
    model, message = REFUSED[name]
    onnx.save(mlp(), tmp_path / "previous.onnx")
    assert mldeploy("convert", "previous.onnx", "--out", tmp_path / "b", cwd=tmp_path).code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    onnx.save(model, tmp_path / "m.onnx")
    r = mldeploy("convert", "m.onnx", "--out", tmp_path / "b", cwd=tmp_path)
    assert r.code == 2, r.err
    assert message in r.err
    line = r.err.strip()
    assert "\n" not in line and len(line) <= 300 and "Traceback" not in line
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == before
