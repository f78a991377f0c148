"""convert on ONNX files: checker, shape inference, signature, parity against ONNX's reference evaluator.

These need only the base install (onnx + onnxruntime), no PyTorch or TensorFlow.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def mlp(batch="N", opset=18, with_gelu=False) -> onnx.ModelProto:
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


def test_declaring_a_free_batch_on_a_fixed_model_fails_parity(models, mldeploy):
    r = mldeploy("convert", "fixed.onnx", "--input", "x:float32:batch,4", "--out", models / "b", cwd=models)
    assert r.code == 1
    assert "fixes the batch of input 'x' to 2" in r.err


def test_ops_the_reference_evaluator_lacks_still_convert_with_a_warning(models, mldeploy):
    r = mldeploy("convert", "gelu.onnx", "--out", models / "b", cwd=models)
    assert r.code == 0, r.err
    step = read(models / "b")[0]["steps"][-1]
    assert any("reference evaluator cannot run" in w for w in step["warnings"])
    assert all(c["note"] == "ran; no reference" for c in step["parity"]["outputs"])


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
