"""Unit tests for mldeploy.data: generated inputs, sample files and their checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mldeploy.bundle import TensorSpec
from mldeploy.data import DEFAULT_DIM, check, concrete_shape, generate, load, rows
from mldeploy.errors import UsageError

IMG = TensorSpec("pixels", "float32", ("batch", 3, 4))
IDS = TensorSpec("ids", "int64", ("batch", "seq"))


# ---------------------------------------------------------------------------- generate

def test_concrete_shape():
    spec = TensorSpec("x", "float32", ("batch", 3, "seq", None))
    assert concrete_shape(spec, 5) == (5, 3, DEFAULT_DIM, DEFAULT_DIM)
    assert concrete_shape(spec, 5, {"seq": 11, "batch": 99}) == (5, 3, 11, DEFAULT_DIM)
    assert concrete_shape(TensorSpec("y", "float32", (2, "batch")), 7) == (2, DEFAULT_DIM)
    assert concrete_shape(TensorSpec("z", "float32", (None, 2)), 6) == (6, 2)


def test_generate_shapes():
    specs = [TensorSpec("a", "float32", ("batch", 3, "seq", "width")),
             TensorSpec("b", "float32", (2, 5)),
             TensorSpec("c", "float32", (None, "h"))]
    arrays = generate(specs, 4, dim_sizes={"seq": 6})
    assert list(arrays) == ["a", "b", "c"]
    assert arrays["a"].shape == (4, 3, 6, 8)
    assert arrays["b"].shape == (2, 5)   # fixed first dim is not the batch
    assert arrays["c"].shape == (4, 8)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int64", "int32", "int16",
                                   "int8", "uint8", "bool"])
def test_generate_dtypes(dtype):
    a = generate([TensorSpec("x", dtype, ("batch", 16))], 32, seed=1)["x"]
    assert a.dtype == np.dtype(dtype)
    assert a.shape == (32, 16)
    if dtype == "bool":
        assert a.any() and not a.all()   # both values occur
    elif np.dtype(dtype).kind in "iu":
        assert a.min() >= 0 and a.max() < 10 and len(np.unique(a)) > 1
    else:
        assert np.isfinite(a).all() and (a < 0).any() and (a > 0).any()


def test_generate_int_range_respected():
    a = generate([IDS], 64, seed=3, dim_sizes={"seq": 32}, ranges={"ids": (100, 105)})["ids"]
    assert a.dtype == np.int64
    assert a.min() >= 100 and a.max() <= 105
    assert set(np.unique(a)) >= {100, 104}


def test_generate_large_int_range_for_token_ids():
    a = generate([IDS], 64, seed=0, ranges={"ids": (0, 30000)})["ids"]
    assert a.min() >= 0 and a.max() <= 30000 and a.max() > 1000


def test_generate_float_range_respected():
    a = generate([IMG], 64, seed=0, ranges={"pixels": (-2.0, -1.0)})["pixels"]
    assert a.dtype == np.float32
    assert a.min() >= -2.0 and a.max() <= -1.0


def test_generate_range_for_other_input_is_ignored():
    a = generate([IDS], 16, ranges={"other": (500, 600)})["ids"]
    assert a.max() < 10


def test_generate_deterministic_per_seed():
    specs = [IMG, IDS, TensorSpec("m", "bool", ("batch", 5))]
    a, b = generate(specs, 4, seed=7), generate(specs, 4, seed=7)
    c = generate(specs, 4, seed=8)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["pixels"], c["pixels"])


# ---------------------------------------------------------------------------- load

def test_load_npz(tmp_path):
    p = tmp_path / "s.npz"
    pix = np.ones((2, 3, 4), np.float32)
    ids = np.arange(10, dtype=np.int64).reshape(2, 5)
    np.savez(p, pixels=pix, ids=ids, extra=np.zeros(1))
    arrays = load(p, [IMG, IDS])
    assert set(arrays) == {"pixels", "ids"}
    np.testing.assert_array_equal(arrays["pixels"], pix)
    np.testing.assert_array_equal(arrays["ids"], ids)


def test_load_npz_suffix_is_case_insensitive(tmp_path):
    p = tmp_path / "s.NPZ"
    with open(p, "wb") as f:
        np.savez(f, pixels=np.zeros((1, 3, 4), np.float32))
    assert load(p, [IMG])["pixels"].shape == (1, 3, 4)


def test_load_npy_one_input(tmp_path):
    p = tmp_path / "s.npy"
    np.save(p, np.full((5, 3, 4), 2.0, np.float32))
    arrays = load(p, [IMG])
    assert list(arrays) == ["pixels"]
    assert arrays["pixels"].shape == (5, 3, 4)


def test_load_npy_with_two_inputs_is_an_error(tmp_path):
    p = tmp_path / "s.npy"
    np.save(p, np.zeros((1, 3, 4), np.float32))
    with pytest.raises(UsageError) as exc:
        load(p, [IMG, IDS])
    assert ".npy" in exc.value.message and "2 inputs" in exc.value.message
    assert ".npz" in exc.value.hint


def test_load_jsonl_objects(tmp_path):
    p = tmp_path / "s.jsonl"
    lines = [{"ids": [1, 2, 3], "mask": [True, False, True]},
             {"ids": [4, 5, 6], "mask": [False, False, True], "ignored": 1}]
    p.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    mask = TensorSpec("mask", "bool", ("batch", "seq"))
    arrays = load(p, [IDS, mask])
    np.testing.assert_array_equal(arrays["ids"], [[1, 2, 3], [4, 5, 6]])
    assert arrays["ids"].dtype == np.int64
    assert arrays["mask"].dtype == np.bool_
    np.testing.assert_array_equal(arrays["mask"], [[True, False, True], [False, False, True]])


def test_load_jsonl_bare_lists_for_one_input(tmp_path):
    p = tmp_path / "s.ndjson"
    p.write_text("[[1.5, 2, 3, 4], [0, 0, 0, 0], [1, 1, 1, 1]]\n" * 2)
    arrays = load(p, [IMG])
    assert arrays["pixels"].shape == (2, 3, 4)
    assert arrays["pixels"].dtype == np.float32
    assert arrays["pixels"][1, 0, 0] == pytest.approx(1.5)


def test_load_jsonl_bare_lists_with_two_inputs(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"pixels": [[0,0,0,0],[0,0,0,0],[0,0,0,0]], "ids": [1]}\n[1, 2]\n')
    with pytest.raises(UsageError) as exc:
        load(p, [IMG, IDS])
    assert (exc.value.file, exc.value.line) == (str(p), 2)
    assert "object" in exc.value.message


def test_load_jsonl_invalid_json_line(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"ids": [1, 2]}\n\n{"ids": [3, 4}\n')
    with pytest.raises(UsageError) as exc:
        load(p, [IDS])
    assert exc.value.file == str(p)
    assert exc.value.line == 3
    assert "invalid JSON" in exc.value.message


def test_load_jsonl_line_without_an_input(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text('{"ids": [1, 2]}\n{"idz": [3, 4]}\n')
    with pytest.raises(UsageError) as exc:
        load(p, [IDS])
    assert (exc.value.file, exc.value.line) == (str(p), 2)
    assert "'ids'" in exc.value.message


def test_load_missing_file(tmp_path):
    with pytest.raises(UsageError) as exc:
        load(tmp_path / "nope.npz", [IMG])
    assert "nope.npz" in exc.value.message and "not found" in exc.value.message


@pytest.mark.parametrize("name", ["s.csv", "sample"])
def test_load_unknown_suffix(tmp_path, name):
    p = tmp_path / name
    p.write_text("1,2,3\n")
    with pytest.raises(UsageError) as exc:
        load(p, [IMG])
    assert "unknown sample format" in exc.value.message
    assert (".csv" if name.endswith(".csv") else "(no suffix)") in exc.value.message


def test_load_corrupt_npz(tmp_path):
    p = tmp_path / "s.npz"
    p.write_bytes(b"definitely not a zip")
    with pytest.raises(UsageError) as exc:
        load(p, [IMG])
    assert "cannot read sample inputs" in exc.value.message


def test_missing_input_name(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, image=np.zeros((1, 3, 4), np.float32), other=np.zeros(2))
    with pytest.raises(UsageError) as exc:
        load(p, [IMG])
    msg = exc.value.message
    assert "'pixels'" in msg
    assert "found: image, other" in msg
    assert str(p) in msg


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (2, 4, 4), (2, 3, 4, 1)])
def test_wrong_rank_or_size(tmp_path, shape):
    p = tmp_path / "s.npz"
    np.savez(p, pixels=np.zeros(shape, np.float32))
    with pytest.raises(UsageError) as exc:
        load(p, [IMG])
    msg = exc.value.message
    assert "'pixels'" in msg
    assert f"shape {list(shape)}" in msg
    assert "[batch, 3, 4]" in msg


def test_symbolic_dims_accept_any_size():
    arrays = check({"ids": np.zeros((3, 17), np.int64)}, [IDS], source="mem")
    assert arrays["ids"].shape == (3, 17)


def test_float_sample_for_bool_input():
    spec = TensorSpec("mask", "bool", ("batch", 2))
    with pytest.raises(UsageError) as exc:
        check({"mask": np.zeros((1, 2), np.float32)}, [spec], source="mem")
    msg = exc.value.message
    assert "'mask'" in msg and "float32" in msg and "bool" in msg


def test_float_sample_for_int_input():
    with pytest.raises(UsageError) as exc:
        check({"ids": np.zeros((1, 2), np.float64)}, [IDS], source="mem")
    assert "float64" in exc.value.message and "int64" in exc.value.message


@pytest.mark.parametrize("array", [np.zeros((0, 3, 4), np.float32), np.float32(1.0)])
def test_empty_array(array):
    with pytest.raises(UsageError) as exc:
        check({"pixels": array}, [IMG], source="mem")
    assert "'pixels' is empty" in exc.value.message


def test_empty_jsonl_file(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text("\n")
    with pytest.raises(UsageError) as exc:
        load(p, [IDS])
    assert "empty" in exc.value.message


def test_float64_sample_is_cast_to_float32(tmp_path):
    p = tmp_path / "s.npy"
    data = np.linspace(0, 1, 24).reshape(2, 3, 4)
    assert data.dtype == np.float64
    np.save(p, data)
    a = load(p, [IMG])["pixels"]
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, data, rtol=1e-6)


def test_int_samples_cast_within_kind():
    out = check({"ids": np.array([[1, 2]], np.int32), "pixels": np.ones((1, 3, 4), np.int64)},
                [IDS, IMG], source="mem")
    assert out["ids"].dtype == np.int64
    assert out["pixels"].dtype == np.float32


# ---------------------------------------------------------------------------- rows

def test_rows_repeats_when_fewer():
    arrays = {"x": np.array([[1, 1], [2, 2], [3, 3]]), "y": np.array([10, 20, 30])}
    out = rows(arrays, 7)
    np.testing.assert_array_equal(out["x"][:, 0], [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(out["y"], [10, 20, 30, 10, 20, 30, 10])


def test_rows_takes_first_n_when_more():
    out = rows({"x": np.arange(10)}, 3)
    np.testing.assert_array_equal(out["x"], [0, 1, 2])
    assert rows({"x": np.arange(4)}, 1)["x"].shape == (1,)
