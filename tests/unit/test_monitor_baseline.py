"""`mldeploy monitor baseline`: statistics of reference inputs and of the model's outputs on them.

The bundle is a real converted ONNX model (x float32 [batch, 4], k int64 [batch, 1] -> logits
[batch, 3] = x @ W + B, picked [batch, 1, 2] = TABLE[k]); the statistics are checked against known
distributions and against numpy computing the same outputs.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from scipy import stats

from mldeploy.bundle import Bundle
from mldeploy.errors import UsageError
from mldeploy.monitor import baseline as base
from tests.helpers.models import TABLE, B, W
from tests.helpers.monitoring import N, reference


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return reference(tmp_path_factory.mktemp("baseline"))


@pytest.fixture
def bundle(model, tmp_path):
    """A fresh copy of the bundle per test (baseline writes into it)."""
    return shutil.copytree(model[0], tmp_path / "bundle")


def by_name(features: list[dict]) -> dict[str, dict]:
    return {f["name"]: f for f in features}


def test_statistics_of_known_distributions(model, bundle):
    _, data, x, k = model
    found, path, written = base.create(bundle, data, bins=10)
    assert written and path == bundle / "baseline.json"
    assert found["format"] == "mldeploy-baseline/1" and found["records"] == N
    assert found["signature_sha256"] == hashlib.sha256((bundle / "signature.json").read_bytes()).hexdigest()
    f = by_name(found["features"])
    assert list(f) == ["x[0]", "x[1]", "x[2]", "x[3]", "k[0]"]
    x0 = f["x[0]"]
    assert (x0["kind"], x0["input"], x0["index"], x0["count"], x0["missing"]) == ("numeric", "x", 0, N, 0)
    assert x0["mean"] == pytest.approx(0, abs=0.06) and x0["std"] == pytest.approx(1, abs=0.05)
    for q, value in x0["quantiles"].items():  # the standard normal's quantiles, within sampling error
        assert value == pytest.approx(stats.norm.ppf(float(q)), abs=0.15), q
    edges, counts = x0["histogram"]["edges"], x0["histogram"]["counts"]
    assert len(edges) == 11 and len(counts) == 10 and sum(counts) == N
    assert edges == sorted(edges) and edges[0] == pytest.approx(x[:, 0].min()) and edges[-1] == pytest.approx(x[:, 0].max())
    assert all(abs(c - N / 10) <= 2 for c in counts)  # quantile edges: equal-count bins
    assert len(x0["sample"]) == base.SAMPLE and set(x0["sample"]) <= set(x[:, 0].astype(float).tolist())
    k0 = f["k[0]"]
    assert k0["kind"] == "categorical" and sorted(k0["categories"]) == ["0", "1", "2", "3", "4"]
    for value, share in k0["categories"].items():
        assert share == pytest.approx(float((k == int(value)).mean()))


def test_prediction_statistics_are_the_models_outputs(model, bundle):
    _, data, x, k = model
    found, _, _ = base.create(bundle, data)
    p = by_name(found["predictions"])
    assert list(p) == ["logits[0]", "logits[1]", "logits[2]", "logits:argmax", "picked[0]", "picked[1]"]
    logits = x.astype(np.float64) @ W + B
    for i in range(3):
        assert p[f"logits[{i}]"]["mean"] == pytest.approx(logits[:, i].mean(), rel=1e-4, abs=1e-4)
        assert p[f"logits[{i}]"]["std"] == pytest.approx(logits[:, i].std(), rel=1e-4)
    classes = np.bincount(logits.argmax(1), minlength=3) / N
    assert p["logits:argmax"]["kind"] == "categorical"
    for c, share in enumerate(classes):
        assert p["logits:argmax"]["categories"].get(str(c), 0.0) == pytest.approx(share)
    assert p["picked[1]"]["mean"] == pytest.approx(TABLE[k[:, 0], 1].mean(), abs=1e-5)


def test_written_into_the_bundle_and_noted_in_the_manifest_once(model, bundle):
    _, data, _, _ = model
    base.create(bundle, data)
    steps = Bundle.open(bundle).manifest["steps"]
    assert steps[-1]["step"] == "baseline" and steps[-1]["status"] == "passed"
    assert steps[-1]["sha256"] == hashlib.sha256((bundle / "baseline.json").read_bytes()).hexdigest()
    assert steps[-1]["records"] == N and steps[-1]["features"] == 5 and steps[-1]["predictions"] == 6
    before = (bundle / "baseline.json").read_bytes()
    _again, _, written = base.create(bundle, data)      # same data, model and bins: nothing to do
    assert not written and (bundle / "baseline.json").read_bytes() == before
    assert len(Bundle.open(bundle).manifest["steps"]) == len(steps)
    _, _, written = base.create(bundle, data, bins=20)  # other settings: computed again
    assert written and len(by_name(base.load(bundle / "baseline.json")["features"])["x[0]"]["histogram"]["counts"]) == 20


def test_out_writes_elsewhere_and_leaves_the_bundle_alone(model, bundle, tmp_path):
    _, data, _, _ = model
    manifest = (bundle / "manifest.json").read_bytes()
    _, path, _ = base.create(bundle, data, out=tmp_path / "elsewhere" / "b.json")
    assert path.is_file() and not (bundle / "baseline.json").exists()
    assert (bundle / "manifest.json").read_bytes() == manifest
    assert base.load(path)["records"] == N


def test_feature_naming_rules():
    n = 6
    assert [c[0] for c in base.columns("age", np.arange(n))] == ["age"]
    assert [c[:2] for c in base.columns("x", np.zeros((n, 3)))] == [("x[0]", 0), ("x[1]", 1), ("x[2]", 2)]
    assert [c[0] for c in base.columns("p", np.zeros((n, 1, 2)))] == ["p[0]", "p[1]"]
    image = np.arange(n * 3 * 8 * 8, dtype=np.float32).reshape(n, 3, 8, 8)  # 192 values a row
    wide = base.columns("img", image)
    assert [c[0] for c in wide] == ["img:mean", "img:std"]
    np.testing.assert_allclose(wide[0][2], image.reshape(n, -1).mean(1))
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    out = base.output_columns("probs", scores)
    assert [c[0] for c in out] == ["probs[0]", "probs[1]", "probs:argmax"]
    assert out[-1][2].tolist() == [1, 0, 1]


def test_kinds_follow_distinct_values():
    assert base.is_categorical(np.array([True, False, True]))
    assert base.is_categorical(np.arange(20) % 20)
    assert not base.is_categorical(np.arange(21))           # more than 20 distinct integers: numeric
    assert not base.is_categorical(np.array([0.0, 1.0]))      # floats are always numeric
    assert base.is_categorical(np.array(["a", "b"], dtype=object))
    f = base.describe([("flag", "flag", None, np.array([True, True, False, True]))], bins=4)[0]
    assert f["categories"] == {"true": 0.75, "false": 0.25}


def test_many_categories_pool_into_other_and_constants_get_one_bin():
    values = np.array([f"c{i}" for i in range(60)] * 2 + ["c0"] * 10, dtype=object)
    f = base.describe([("city", "city", None, values)], bins=10)[0]
    assert len(f["categories"]) == base.TOP_CATEGORIES + 1 and f["categories"]["c0"] == pytest.approx(12 / 130)
    assert f["categories"][base.OTHER] == pytest.approx(20 / 130)
    c = base.describe([("c", "c", None, np.full(50, 3.5))], bins=10)[0]
    assert c["histogram"] == {"edges": [3.0, 4.0], "counts": [50]} and c["std"] == 0
    m = base.describe([("m", "m", None, np.array([1.0, np.nan, 2.0, np.nan]))], bins=2)[0]
    assert (m["count"], m["missing"], m["mean"]) == (4, 2, 1.5)


def test_load_refuses_what_is_not_a_baseline(tmp_path, model, bundle):
    with pytest.raises(UsageError, match="not found"):
        base.load(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else/2"}))
    with pytest.raises(UsageError, match="not a baseline of format mldeploy-baseline/1"):
        base.load(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UsageError, match="unreadable"):
        base.load(tmp_path / "broken.json")
    found, path, _ = base.create(bundle, model[1])
    found["features"][0].pop("histogram")
    path.write_text(json.dumps(found))
    with pytest.raises(UsageError, match="damaged baseline: feature"):
        base.load(path)


def test_cli(mldeploy, model, bundle, tmp_path):
    r = mldeploy("monitor", "baseline", "--bundle", bundle, "--data", model[1])
    assert r.code == 0, r.err
    assert "x[0]" in r.out and "-> logits:argmax" in r.out and "written" in r.out
    assert "up to date" in mldeploy("monitor", "baseline", "--bundle", bundle, "--data", model[1]).out
    r = mldeploy("monitor", "baseline", "--bundle", bundle, cwd=tmp_path)
    assert r.code == 2 and "no reference data" in r.err
    np.savez(tmp_path / "wrong.npz", x=np.zeros((5, 7), np.float32), k=np.zeros((5, 1), np.int64))
    r = mldeploy("monitor", "baseline", "--bundle", bundle, "--data", tmp_path / "wrong.npz")
    assert r.code == 2 and "shape [5, 7]" in r.err and "Traceback" not in r.err
