"""Edge cases a user can hit, each with a clear error (exit 2) or the right result, never a bug (exit 3)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers.models import BUDGET, FAST, small_mlp
from tests.helpers.models import deep_mlp as mlp


def test_convert_never_replaces_a_folder_that_is_not_a_bundle(tmp_path, mldeploy):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("important")
    onnx.save(small_mlp(), keep / "m.onnx")
    r = mldeploy("convert", "keep/m.onnx", "--out", "keep", cwd=tmp_path)
    assert r.code == 2 and "exists and is not a bundle" in r.err
    assert (keep / "notes.txt").read_text() == "important" and (keep / "m.onnx").is_file()
    r = mldeploy("convert", "keep/m.onnx", "--out", ".", cwd=tmp_path)
    assert r.code == 2 and "exists and is not a bundle" in r.err


def test_bundle_is_readable_by_others(tmp_path, mldeploy):
    onnx.save(small_mlp(), tmp_path / "m.onnx")
    assert mldeploy("convert", "m.onnx", "--out", "b", cwd=tmp_path).code == 0
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o755


def test_up_to_date_without_a_reference_evaluator(tmp_path, mldeploy):
    onnx.save(small_mlp(with_gelu=True), tmp_path / "gelu.onnx")
    for _ in range(2):
        r = mldeploy("convert", "gelu.onnx", cwd=tmp_path)
        assert r.code == 0, r.err
    assert "up to date" in r.out


def test_detect_only_without_a_model_says_so(tmp_path, mldeploy):
    r = mldeploy("convert", "--detect-only", cwd=tmp_path)
    assert r.code == 2 and "no model given" in r.err


def test_damaged_bundle(repo, mldeploy):
    (repo / ".mldeploy" / "bundle" / "signature.json").write_text("{}")
    r = mldeploy("optimize", cwd=repo)
    assert r.code == 2 and "is a damaged bundle" in r.err


def test_require_improvement_fails_again_on_an_unchanged_rerun(repo, mldeploy):
    (repo / "mldeploy.yaml").write_text(FAST + BUDGET + "  min_speedup: 50\n")
    args = ["optimize", "--candidates", "onnxslim", "--require-improvement"]
    assert mldeploy(*args, cwd=repo).code == 1
    r = mldeploy(*args, cwd=repo)
    assert r.code == 1 and "up to date" in r.out


def test_candidates_auto_and_comma_lists(repo, mldeploy, monkeypatch):
    assert mldeploy("optimize", "--candidates", "auto", "--objective", "size", cwd=repo).code == 0
    monkeypatch.setenv("MLDEPLOY_OPTIMIZE__CANDIDATES", "onnxslim, dynamic-int8")
    assert mldeploy("optimize", "--objective", "size", "--force", cwd=repo).code == 0
    names = [r["name"] for r in json.loads((repo / ".mldeploy" / "bundle" / "manifest.json").read_text())
             ["steps"][-1]["candidates"]]
    assert names == ["onnxslim", "dynamic-int8"]


def test_optimize_a_fixed_batch_model(tmp_path, mldeploy):
    onnx.save(mlp(sizes=(16, 32, 4)), tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, tmp_path / "fixed.onnx")
    (tmp_path / "mldeploy.yaml").write_text(FAST + BUDGET)
    assert mldeploy("convert", "fixed.onnx", cwd=tmp_path).code == 0
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((10, 16)).astype(np.float32))
    r = mldeploy("optimize", "--data", "calib.npz", "--objective", "size", cwd=tmp_path)
    assert r.code == 0, r.err
    assert json.loads((tmp_path / ".mldeploy" / "bundle" / "manifest.json").read_text())["steps"][-1]["batch_size"] == 1


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((8, 64), np.float32), "labels": np.zeros((8, 2), np.float32)},
     "float labels of shape [8, 2] do not match the model's output [8, 10]"),
    ({"x": np.zeros((8, 64), np.float32), "labels": np.zeros(5, np.int64)}, "'labels' has 5 rows but the inputs have 8"),
])
def test_labels_that_do_not_fit(repo, mldeploy, arrays, message):
    np.savez(repo / "calib.npz", **arrays)
    r = mldeploy("optimize", "--data", "calib.npz", cwd=repo)
    assert r.code == 2 and message in r.err


def test_inputs_with_different_row_counts(tmp_path, mldeploy):
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "add", [a, b], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), tmp_path / "add.onnx")
    np.savez(tmp_path / "s.npz", a=np.zeros((4, 2), np.float32), b=np.zeros((3, 2), np.float32))
    r = mldeploy("convert", "add.onnx", "--sample", "s.npz", cwd=tmp_path)
    assert r.code == 2 and "inputs have different numbers of rows" in r.err


def test_npz_that_is_a_single_array(tmp_path, mldeploy):
    onnx.save(small_mlp(), tmp_path / "m.onnx")
    with open(tmp_path / "s.npz", "wb") as f:
        np.save(f, np.zeros((3, 4), np.float32))
    r = mldeploy("convert", "m.onnx", "--sample", "s.npz", cwd=tmp_path)
    assert r.code == 2 and "holds a single array, not an .npz archive" in r.err


@pytest.mark.parametrize("yaml_text, message", [
    ("inputs:\n  - {name: ids, dtype: int64, shape: [batch, 4], range: [5, 5]}\n", "low < high"),
    ("model:\n  dim_sizes: {seq: -1}\n", "model.dim_sizes.seq: expected greater than 0"),
])
def test_generated_value_settings_are_validated(tmp_path, mldeploy, yaml_text, message):
    (tmp_path / "mldeploy.yaml").write_text("version: 1\n" + yaml_text)
    r = mldeploy("config", "validate", cwd=tmp_path)
    assert r.code == 2 and message in r.err


def test_schema_to_an_unwritable_path(tmp_path, mldeploy):
    r = mldeploy("config", "schema", "--out", tmp_path / "no" / "such" / "dir" / "s.json")
    assert r.code == 2 and "cannot write" in r.err
