"""`mldeploy monitor drift`: statistics against known distributions, bad input, the CLI end to end.

Capture files are written by the serving runtime's own writer (mldeploy.serve.capture.Capture);
tests/contract/test_monitor_capture_sources.py reads what a running server captured.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time

import numpy as np
import orjson
import pytest

from mldeploy.config import DriftSection
from mldeploy.monitor import baseline as base
from mldeploy.monitor import drift
from mldeploy.serve.capture import Capture
from tests.helpers.models import TABLE, B, W, linear_graph, save_bundle
from tests.helpers.monitoring import reference


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A bundle with a baseline of the reference data test_monitor_baseline uses."""
    bundle, data, _, _ = reference(tmp_path_factory.mktemp("drift"))
    base.create(bundle, data)
    return bundle


def traffic(seed: int, rows: int, shift: float = 0.0, categories: int = 5, logit_shift: float = 0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    x[:, 0] += shift
    k = rng.integers(0, categories, size=(rows, 1))
    logits = (x @ W + B).astype(np.float32)
    logits[:, 2] += logit_shift
    return x, k, logits, TABLE[k].astype(np.float32)


def capture(folder, x, k, logits, picked, per_request: int = 4, version: str = "v1"):
    """Write the traffic as the serving runtime does: one record per request of `per_request` rows."""
    writer = Capture(folder, 1.0, 64 << 20, 5, version, lambda name: None)
    for i in range(0, len(x), per_request):
        s = slice(i, i + per_request)
        writer.record(f"req-{i}", {"x": x[s], "k": k[s]}, {"logits": logits[s], "picked": picked[s]}, 0.001)
    writer.close()
    return folder


def judge(model, folder, **thresholds):
    from mldeploy.monitor.captured import read

    found = base.load(model / "baseline.json")
    return drift.analyze(found, read(str(folder), base.Bundle.open(model).signature), DriftSection(**thresholds))


def rows_of(report) -> dict[str, dict]:
    return {r["name"]: r for r in report["features"] + report["predictions"]}


def test_no_drift(model, tmp_path):
    report = judge(model, capture(tmp_path / "c", *traffic(1, 2000)))
    assert report["status"] == "ok" and not report["drift"] and not report["prediction_drift"]
    assert report["records"] == 500 and report["rows"] == 2000 and report["skipped"] == {"corrupt": 0, "mismatched": 0}
    for name, r in rows_of(report).items():
        assert r["status"] == "ok", (name, r)
        assert r["psi"] < 0.05, (name, r["psi"])
    assert rows_of(report)["k[0]"]["js"] < 0.05 and rows_of(report)["k[0]"]["new_categories"] == []


def test_shifted_mean_is_flagged(model, tmp_path):
    report = judge(model, capture(tmp_path / "c", *traffic(2, 2000, shift=0.5)))
    r = rows_of(report)
    assert r["x[0]"]["status"] == "drift" and r["x[0]"]["psi"] > 0.2 and r["x[0]"]["ks_pvalue"] < 1e-6
    assert r["x[0]"]["mean"] == pytest.approx(0.5, abs=0.08)
    assert all(r[f"x[{i}]"]["status"] == "ok" for i in (1, 2, 3)) and r["k[0]"]["status"] == "ok"
    assert report["status"] == "drift" and report["drift"]


def test_small_shift_with_many_records_is_not_a_false_alarm(model, tmp_path):
    """KS alone would flag a 0.2 sd shift at 5000 rows; PSI below psi/2 keeps it quiet."""
    report = judge(model, capture(tmp_path / "c", *traffic(3, 5000, shift=0.2)))
    x0 = rows_of(report)["x[0]"]
    assert x0["ks_pvalue"] < 0.01 and x0["psi"] < 0.1 and x0["status"] == "ok"
    # between psi/2 and psi, a small KS p-value does flag it
    x0 = rows_of(judge(model, capture(tmp_path / "d", *traffic(3, 5000, shift=0.35))))["x[0]"]
    assert 0.1 < x0["psi"] < 0.2 and x0["ks_pvalue"] < 0.01 and x0["status"] == "drift"


def test_new_category_is_flagged(model, tmp_path):
    x, k, logits, _picked = traffic(4, 2000)
    k[::50] = 7   # 2% of rows carry a value the baseline never saw
    report = judge(model, capture(tmp_path / "c", x, k, logits, TABLE[k].astype(np.float32)))
    k0 = rows_of(report)["k[0]"]
    assert k0["status"] == "drift" and k0["new_categories"] == ["7"]
    assert rows_of(report)["x[0]"]["status"] == "ok"


def test_changed_category_mix_is_flagged_by_jensen_shannon(model, tmp_path):
    x, k, logits, _picked = traffic(5, 2000)
    k[: 1500] = 0   # the same categories, in a very different mix
    report = judge(model, capture(tmp_path / "c", x, k, logits, TABLE[k].astype(np.float32)))
    k0 = rows_of(report)["k[0]"]
    assert k0["status"] == "drift" and k0["js"] > 0.1 and k0["chi2_pvalue"] < 1e-6 and not k0["new_categories"]


def test_prediction_drift_with_unchanged_inputs(model, tmp_path):
    report = judge(model, capture(tmp_path / "c", *traffic(6, 2000, logit_shift=1.5)))
    r = rows_of(report)
    assert all(r[name]["status"] == "ok" for name in ("x[0]", "x[1]", "x[2]", "x[3]", "k[0]"))
    assert r["logits[2]"]["status"] == "drift" and r["logits[0]"]["status"] == "ok"
    assert report["prediction_drift"] and report["drift"]


def test_not_enough_data_flags_nothing(model, tmp_path):
    report = judge(model, capture(tmp_path / "c", *traffic(7, 60, shift=3.0)))
    assert report["status"] == "not enough data" and not report["drift"]
    assert rows_of(report)["x[0]"]["psi"] > 1 and rows_of(report)["x[0]"]["status"] == "not enough data"
    assert judge(model, tmp_path / "c", min_records=50)["drift"]


def test_malformed_records_are_counted_and_skipped(model, tmp_path):
    folder = capture(tmp_path / "c", *traffic(8, 800))
    good = json.loads((next(folder.glob("capture-*.jsonl"))).read_text().splitlines()[0])
    bad = ["not json at all", '{"inputs": {"x": [[1, 2, 3, 4]], "k": [[1]]', "[1, 2, 3]", "17",  # 4 corrupt
           json.dumps({**good, "inputs": {"x": [[1, 2]], "k": [[1]]}}),                       # wrong width
           json.dumps({**good, "inputs": {"x": [[1, 2, 3, 4]]}}),                              # missing k
           json.dumps({**good, "inputs": {**good["inputs"], "z": [[1]]}}),                     # unknown input
           json.dumps({**good, "inputs": {"x": [["a", "b", "c", "d"]], "k": [[1]]}}),          # strings
           json.dumps({**good, "inputs": {"x": [[1, 2, 3, 4], [1, 2]], "k": [[1], [2]]}}),     # ragged
           json.dumps({**good, "inputs": {"x": [[1, 2, 3, 4]], "k": [[1], [2]]}}),             # rows disagree
           json.dumps({**good, "outputs": {"logits": [[1, 2]]}}),                              # bad outputs
           json.dumps({"time": "x"})]                                                          # no inputs
    (folder / "capture-99.jsonl").write_text("\n".join(bad[:6]) + "\n\n" + "\n".join(bad[6:]) + "\n")
    report = judge(model, folder)
    assert report["skipped"] == {"corrupt": 4, "mismatched": 8}
    assert report["records"] == 200 and report["rows"] == 800 and report["status"] == "ok"
    assert len(report["problems"]) == 5 and all("capture-99.jsonl:" in p for p in report["problems"])


def test_no_records(model, tmp_path):
    (tmp_path / "empty").mkdir()
    report = judge(model, tmp_path / "empty")
    assert report["status"] == "no records" and not report["drift"] and report["features"] == []
    (tmp_path / "empty" / "capture-1.jsonl").write_text("garbage\n")
    report = judge(model, tmp_path / "empty")
    assert report["status"] == "no records" and report["skipped"]["corrupt"] == 1


def test_newest_records_first_and_max_records(model, tmp_path):
    folder = capture(tmp_path / "c", *traffic(9, 2000, shift=1.0), version="old")
    old = next(folder.glob("capture-*.jsonl"))
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    newer = capture(tmp_path / "n", *traffic(10, 800), version="new")
    shutil.move(next(newer.glob("capture-*.jsonl")), folder / "capture-2.1.jsonl")   # a rotated file
    from mldeploy.monitor.captured import read

    signature = base.Bundle.open(model).signature
    newest = read(str(folder), signature, max_records=200)
    assert newest.records == 200 and newest.truncated and dict(newest.versions) == {"new": 200}
    everything = read(str(folder), signature)
    assert everything.records == 700 and not everything.truncated and everything.objects == 2
    found = base.load(model / "baseline.json")
    assert not drift.analyze(found, newest, DriftSection())["drift"]
    assert drift.analyze(found, everything, DriftSection())["drift"]


def test_sagemaker_data_capture_records(model, tmp_path):
    """SageMaker's format: the request and response bodies, JSON or base64, as the server saw them."""
    x, k, logits, picked = traffic(11, 400)
    lines = []
    for i in range(0, 400, 4):
        request = {"instances": [{"x": x[j].tolist(), "k": k[j].tolist()} for j in range(i, i + 4)]}
        response = {"predictions": [{"logits": logits[j].tolist(), "picked": picked[j].tolist()} for j in range(i, i + 4)]}
        encoded = i % 8 == 0
        body = base64.b64encode(json.dumps(request).encode()).decode() if encoded else json.dumps(request)
        lines.append(json.dumps({
            "captureData": {"endpointInput": {"observedContentType": "application/json", "mode": "INPUT",
                                              "data": body, "encoding": "BASE64" if encoded else "JSON"},
                            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                               "data": json.dumps(response), "encoding": "JSON"}},
            "eventMetadata": {"eventId": f"e{i}", "inferenceTime": "2026-12-01T03:00:00Z"}, "eventVersion": "0"}))
    lines.append(json.dumps({"captureData": {"endpointInput": {"observedContentType": "application/json",
                                                               "data": '{"instances": [[1, 2]]}', "encoding": "JSON"}}}))
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "12-00-00-000-abc.jsonl").write_text("\n".join(lines) + "\n")
    report = judge(model, tmp_path / "sm")
    assert report["records"] == 100 and report["rows"] == 400 and report["formats"] == {"sagemaker": 100}
    assert report["skipped"]["mismatched"] == 1 and report["status"] == "ok"
    assert rows_of(report)["logits[1]"]["rows"] == 400 and rows_of(report)["picked[0]"]["rows"] == 400


def test_psi_and_statistics_units():
    counts = np.array([10, 20, 30, 40], float)
    assert drift.psi(counts, counts * 3) == 0
    assert drift.psi(np.array([50, 50.0]), np.array([90, 10.0])) == pytest.approx(
        (0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5))
    assert np.isfinite(drift.psi(np.array([100.0, 0]), np.array([0, 100.0])))  # empty bins: epsilon
    assert base.bin_counts(np.array([-100.0, 0.5, 1.0, 1.5, 100.0]), [0.0, 1.0, 2.0]).tolist() == [2, 3]
    feature = {"categories": {"a": 0.5, "b": 0.3, base.OTHER: 0.2}}
    seen = np.array(["a"] * 50 + ["b"] * 30 + ["zz"] * 20, dtype=object)   # zz: pooled as "other", not new
    r = drift.categorical(feature, seen, 0.2, 0.01, 0.1)
    assert r["status"] == "ok" and r["new_categories"] == [] and r["psi"] == pytest.approx(0, abs=1e-9)


# -- the CLI end to end -------------------------------------------------------------------------------
@pytest.fixture
def actions(tmp_path, monkeypatch):
    summary, outputs = tmp_path / "summary.md", tmp_path / "outputs.txt"
    summary.touch()
    outputs.touch()
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    return summary, outputs


def test_cli_drift_exit_codes_and_step_summary(mldeploy, model, tmp_path, actions):
    summary, outputs = actions
    folder = capture(tmp_path / "c", *traffic(12, 2000, shift=1.0))
    r = mldeploy("monitor", "drift", "--bundle", model, "--capture", folder, "--json", tmp_path / "r.json")
    assert r.code == 0, r.err   # drift, but fail_on_drift is off
    assert "DRIFT in" in r.out and "x[0]" in r.out
    assert "drift=true" in outputs.read_text() and "drift-status=drift" in outputs.read_text()
    text = summary.read_text()
    assert "| feature | kind | rows | PSI | KS p / chi2 p | JS | status |" in text
    assert "| `x[0]` | numeric | 2000 |" in text and "**drift**" in text
    assert "```mermaid\nxychart-beta" in text and 'x-axis ["x[0]"' in text
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "drift"

    r = mldeploy("monitor", "drift", "--bundle", model, "--capture", folder, "--fail-on-drift")
    assert r.code == 1 and "::error" in r.out + r.err
    (tmp_path / "mldeploy.yaml").write_text(f"monitoring:\n  drift:\n    fail_on_drift: true\n    capture: {folder}\n")
    assert mldeploy("monitor", "drift", "--bundle", model, cwd=tmp_path).code == 1
    calm = capture(tmp_path / "calm", *traffic(13, 2000))
    r = mldeploy("monitor", "drift", "--bundle", model, "--capture", calm, cwd=tmp_path)
    assert r.code == 0 and "no drift" in r.out and outputs.read_text().endswith("drift=false\ndrift-status=ok\n")


def test_cli_no_records_is_exit_0_even_when_failing_on_drift(mldeploy, model, tmp_path, actions):
    (tmp_path / "empty").mkdir()
    r = mldeploy("monitor", "drift", "--bundle", model, "--capture", tmp_path / "empty", "--fail-on-drift")
    assert r.code == 0 and "no records" in r.out
    assert "Drift: no records" in actions[0].read_text()


def test_cli_refuses_a_baseline_of_another_model(mldeploy, model, tmp_path):
    other = save_bundle(linear_graph(), tmp_path / "other")
    folder = capture(tmp_path / "c", *traffic(14, 200))
    r = mldeploy("monitor", "drift", "--bundle", other, "--baseline", model / "baseline.json", "--capture", folder)
    assert r.code == 2 and "made for another model" in r.err
    r = mldeploy("monitor", "drift", "--bundle", model, "--capture", tmp_path / "nowhere")
    assert r.code == 2 and "not found" in r.err
    r = mldeploy("monitor", "drift", "--bundle", model, "--capture", "ftp://host/x")
    assert r.code == 2 and "cannot read captured requests" in r.err
    r = mldeploy("monitor", "drift", "--bundle", model)
    assert r.code == 2 and "no capture source" in r.err


def test_100k_records_of_a_10_feature_model_take_seconds(tmp_path):
    """The serving runtime's format at scale: 100,000 one-row records, 10 features."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(10, 3)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "ten",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
                              [numpy_helper.from_array(weights, "W")])
    bundle = save_bundle(graph, tmp_path / "ten")
    np.save(tmp_path / "ref.npy", rng.normal(size=(20000, 10)).astype(np.float32))
    base.create(bundle, tmp_path / "ref.npy")
    x = rng.normal(size=(100_000, 10)).astype(np.float32)
    y = x @ weights
    (tmp_path / "cap").mkdir()
    with open(tmp_path / "cap" / "capture-1.jsonl", "wb") as f:
        for i in range(len(x)):
            f.write(orjson.dumps({"time": "2026-12-01T03:00:00.000+00:00", "request_id": str(i), "model_version": "1",
                                  "latency_ms": 0.2, "inputs": {"x": x[i:i + 1]}, "outputs": {"y": y[i:i + 1]}},
                                 option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    from mldeploy.config import load_config

    cfg = load_config(None, overrides={"bundle": str(bundle)})
    started = time.perf_counter()
    report = drift.run(cfg, capture=str(tmp_path / "cap"))
    seconds = time.perf_counter() - started
    print(f"100k records, 10 features: {seconds:.2f} s")
    assert report["records"] == 100_000 and report["status"] == "ok"
    assert seconds < 10, seconds
