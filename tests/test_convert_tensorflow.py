"""convert on real TensorFlow/Keras models: .keras, .h5, SavedModel folders, TF Lite, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install -e '.[tensorflow]')")
keras = pytest.importorskip("keras")
ort = pytest.importorskip("onnxruntime")

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
    return root


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
    assert "cannot load TensorFlow model" in r.err
