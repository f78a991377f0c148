"""convert on real TensorFlow/Keras models: .keras, .h5, SavedModel folders, TF Lite, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.helpers.need import need

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = need("tensorflow", "pip install -e '.[tensorflow]' installs it")
keras = need("keras", "pip install -e '.[tensorflow]' installs it")
ort = need("onnxruntime", "the base install has it")

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf-repo")
    keras.utils.set_random_seed(0)
    seq = keras.Sequential([keras.Input((8,), name="features"), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dense(3, activation="softmax")])
    seq.save(root / "seq.keras")
    seq.save(root / "seq.h5")

    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    h = keras.layers.Concatenate()([a, b])
    two = keras.Model({"a": a, "b": b}, {"cls": keras.layers.Dense(2, name="cls")(h),
                                         "reg": keras.layers.Dense(1, name="reg")(h)})
    two.export(str(root / "two_heads"), format="tf_saved_model", verbose=False)

    class Expm(tf.Module):  # tf.linalg.expm needs MatrixSolve, which ONNX does not have
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.linalg.expm(tf.reshape(x, [-1, 2, 2]))}

    expm = Expm()
    tf.saved_model.save(expm, str(root / "expm"), signatures={"serving_default": expm.__call__})
    (root / "not_a_savedmodel").mkdir()

    weights, bias = np.random.default_rng(3).random((4, 3), np.float32), np.zeros(3, np.float32)

    # eager tensors captured by the signature: a loaded SavedModel's functions capture their weights so
    captures, weights_t, bias_t = tf.Module(), tf.constant(weights), tf.constant(bias)
    captures.serve = tf.function(lambda x: {"y": tf.matmul(x, weights_t) + bias_t},
                                 input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    tf.saved_model.save(captures, str(root / "captures"), signatures={"serving_default": captures.serve})

    class Table(tf.Module):  # a lookup table: a resource ONNX cannot hold
        def __init__(self):
            self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant([0, 1, 2], tf.int64), tf.constant([1.0, 2.0, 3.0])), -1.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="ids")])
        def __call__(self, ids):
            return {"y": self.table.lookup(ids)}

    table = Table()
    tf.saved_model.save(table, str(root / "table"), signatures={"serving_default": table.__call__})

    (root / "customlayers.py").write_text(CUSTOM_LAYER)
    import importlib
    import sys

    sys.path.insert(0, str(root))
    custom = importlib.import_module("customlayers")
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3), custom.Scale(2.5)])
    model.save(root / "custom.keras")
    sys.path.remove(str(root))
    del sys.modules["customlayers"]
    return root


CUSTOM_LAYER = """
import keras

class Scale(keras.layers.Layer):  # not registered: loading needs model.custom_objects
    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor
    def call(self, x):
        return x * self.factor
    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
"""


def test_savedmodel_capturing_its_weights_converts_with_only_its_inputs(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    r = mldeploy("convert", "captures", "--out", out, cwd=repo)
    assert r.code == 0, r.err
    _manifest, signature = load_bundle(out)
    assert [i["name"] for i in signature["inputs"]] == ["x"]
    x = np.random.default_rng(4).random((5, 4), np.float32)
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"x": x})[0]
    want = tf.saved_model.load(str(repo / "captures")).signatures["serving_default"](x=tf.constant(x))["y"]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_savedmodel_with_a_lookup_table_is_refused_naming_it(repo, tmp_path, mldeploy):
    r = mldeploy("convert", "table", "--out", tmp_path / "b", cwd=repo)
    assert r.code == 2, r.err
    assert "operator LookupTableFindV2 cannot be exported" in r.err


def test_keras_custom_layer_loads_with_custom_objects(repo, tmp_path, mldeploy):
    """custom_objects written in mldeploy.yaml are imported from the file's folder (the repo here), not
    from the working directory, like model.factory."""
    config = repo / "mldeploy.yaml"
    try:
        config.write_text("version: 1\nmodel:\n  path: custom.keras\n")
        r = mldeploy("convert", "--config", config, "--out", tmp_path / "b", cwd=tmp_path)
        assert r.code == 2
        line = r.err.strip()
        assert "custom.keras uses the custom Keras class Scale" in line and "custom_objects" in line
        assert len(line) <= 200 + len("error: ") and "\n" not in line
        config.write_text("version: 1\nmodel:\n  path: custom.keras\n  custom_objects: ['customlayers:Scale']\n")
        r = mldeploy("convert", "--config", config, "--out", tmp_path / "b", cwd=tmp_path)
    finally:
        config.unlink()  # the module's repo is shared by its tests
    assert r.code == 0, r.err
    x = np.ones((3, 4), np.float32)
    got = ort.InferenceSession(str(tmp_path / "b" / "model.onnx")).run(None, {"x": x})[0]
    model = keras.saving.load_model(repo / "custom.keras", custom_objects={"Scale": __import__("customlayers").Scale})
    np.testing.assert_allclose(got, np.asarray(model(x)), atol=1e-5)


def load_bundle(out):
    return (json.loads((out / "manifest.json").read_text()), json.loads((out / "signature.json").read_text()))


@pytest.mark.parametrize("model", ["seq.keras", "seq.h5"])
def test_keras_file_becomes_savedmodel_and_onnx(repo, tmp_path, mldeploy, model):
    out = tmp_path / "b"
    r = mldeploy("convert", model, "--out", out, cwd=repo)
    assert r.code == 0, r.err
    manifest, signature = load_bundle(out)
    assert signature["inputs"] == [{"name": "features", "dtype": "float32", "shape": ["batch", 8]}]
    assert signature["outputs"][0]["shape"] == ["batch", 3]
    step = manifest["steps"][-1]
    assert step["exporter"] == "tf2onnx" and step["native"]["savedmodel"] == "saved_model"
    assert (out / "saved_model" / "saved_model.pb").is_file()
    x = np.random.default_rng(3).standard_normal((11, 8)).astype(np.float32)
    onnx_out = ort.InferenceSession(str(out / "model.onnx")).run(None, {"features": x})[0]
    keras_out = keras.saving.load_model(repo / model, compile=False)(x).numpy()
    np.testing.assert_allclose(onnx_out, keras_out, atol=1e-5)


def test_savedmodel_with_named_inputs_and_outputs(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    r = mldeploy("convert", "two_heads", "--out", out, cwd=repo)
    assert r.code == 0, r.err
    manifest, signature = load_bundle(out)
    assert manifest["source"]["format"] == "savedmodel"
    assert sorted(i["name"] for i in signature["inputs"]) == ["a", "b"]
    assert [o["name"] for o in signature["outputs"]] == ["cls", "reg"]


def test_tflite_on_request(repo, tmp_path, mldeploy):
    out = tmp_path / "b"
    r = mldeploy("convert", "seq.keras", "--tflite", "--out", out, cwd=repo)
    assert r.code == 0, r.err
    interpreter = tf.lite.Interpreter(model_path=str(out / "model.tflite"))
    interpreter.allocate_tensors()
    x = np.full((1, 8), 0.5, np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    want = ort.InferenceSession(str(out / "model.onnx")).run(None, {"features": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_operator_onnx_lacks_is_named_with_an_opset_hint(repo, tmp_path, mldeploy):
    r = mldeploy("convert", "expm", "--out", tmp_path / "b", cwd=repo)
    assert r.code == 2
    assert "operator MatrixSolve cannot be exported to ONNX opset 18" in r.err
    assert "try another opset" in r.err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("args, message", [
    (["seq.keras", "--input", "features:float32:batch,9"],
     "input 'features' declared float32 [batch, 9], but the model takes float32 [batch, 8]"),
    (["seq.keras", "--input", "other:float32:batch,8"], "declared inputs ['other'] do not match"),
    (["not_a_savedmodel"], "is a folder but not a TensorFlow SavedModel"),
    (["seq.keras", "--framework", "torch"], "is a tensorflow model (keras), not torch"),
])
def test_bad_input_exits_2(repo, tmp_path, mldeploy, args, message):
    r = mldeploy("convert", *args, "--out", tmp_path / "b", cwd=repo)
    assert r.code == 2, r.out + r.err
    assert message in r.err


def test_corrupt_keras_file(repo, tmp_path, mldeploy):
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 truncated")
    r = mldeploy("convert", tmp_path / "broken.keras", "--out", tmp_path / "b", cwd=repo)
    assert r.code == 2
    assert "broken.keras is a damaged zip archive" in r.err
