"""optimize on real ONNX models with real ONNX Runtime: selection, budget, report, bad input.

Models are built with onnx.helper, so this file needs only the base install (no torch, no TF),
which is also what an optimize-only install has. Latency claims are never asserted: decisions
in these tests rest on size and accuracy, which are deterministic.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mldeploy.config import BudgetSection
from mldeploy.optimize.select import budget_failures, choose
from tests.helpers.models import BUDGET, FAST
from tests.helpers.models import deep_mlp as mlp


def step(repo):
    return json.loads((repo / ".mldeploy" / "bundle" / "manifest.json").read_text())["steps"][-1]


def rows_by_name(report):
    return {r["name"]: r for r in report["candidates"]}


def test_int8_wins_on_size_and_the_bundle_keeps_fp32(repo, mldeploy):
    bundle = repo / ".mldeploy" / "bundle"
    fp32_bytes = (bundle / "model.onnx").read_bytes()
    signature = (bundle / "signature.json").read_text()
    r = mldeploy("optimize", "--objective", "size", cwd=repo)
    assert r.code == 0, r.err
    report = step(repo)
    assert report["chosen"] == "dynamic-int8"
    assert report["size_ratio"] > 3  # int8 weights: about 4x smaller
    assert "chosen: dynamic-int8" in r.out and "size-ratio: " in r.out
    assert (bundle / "model.fp32.onnx").read_bytes() == fp32_bytes
    assert (bundle / "signature.json").read_text() == signature
    assert len((bundle / "model.onnx").read_bytes()) < len(fp32_bytes) / 3
    # a server loads both and gets the same output shape (and nearly the same values)
    x = np.random.default_rng(1).standard_normal((7, 64)).astype(np.float32)
    a = ort.InferenceSession(str(bundle / "model.onnx")).run(None, {"x": x})[0]
    b = ort.InferenceSession(str(bundle / "model.fp32.onnx")).run(None, {"x": x})[0]
    assert a.shape == b.shape == (7, 10) and np.abs(a - b).max() < 0.05
    rows = rows_by_name(report)
    assert set(rows) == {"ort-extended", "onnxslim", "dynamic-int8"}  # auto: no Conv, not a transformer
    assert all(r["status"] == "ok" and r["p50_batch_ms"] > 0 and r["size_bytes"] > 0 for r in rows.values())
    assert 0.9 < rows["dynamic-int8"]["accuracy"]["top1_agreement"] <= 1


def test_int8_loses_on_a_tiny_model_and_fp32_is_kept(tmp_path, mldeploy):
    onnx.save(mlp(sizes=(4, 3)), tmp_path / "tiny.onnx")
    (tmp_path / "mldeploy.yaml").write_text(FAST)
    assert mldeploy("convert", "tiny.onnx", cwd=tmp_path).code == 0
    before = (tmp_path / ".mldeploy" / "bundle" / "model.onnx").read_bytes()
    r = mldeploy("optimize", "--objective", "size", "--candidates", "dynamic-int8", cwd=tmp_path)
    assert r.code == 0, r.err
    report = step(tmp_path)
    assert report["chosen"] == "fp32"
    assert report["reason"] == "no candidate within the accuracy budget is smaller than fp32"
    assert rows_by_name(report)["dynamic-int8"]["size_bytes"] > report["baseline"]["size_bytes"]
    assert (tmp_path / ".mldeploy" / "bundle" / "model.onnx").read_bytes() == before
    r = mldeploy("optimize", "--objective", "size", "--candidates", "dynamic-int8", "--require-improvement",
                 "--force", cwd=tmp_path)
    assert r.code == 1
    assert "optimize kept fp32: no candidate within the accuracy budget is smaller" in r.err


def test_candidate_over_budget_is_never_chosen(repo, mldeploy):
    (repo / "mldeploy.yaml").write_text(FAST + BUDGET + "    max_abs_diff: 1.0e-9\n")
    r = mldeploy("optimize", "--objective", "size", "--candidates", "dynamic-int8", cwd=repo)
    assert r.code == 0, r.err
    report = step(repo)
    assert report["chosen"] == "fp32"
    assert rows_by_name(report)["dynamic-int8"]["budget_failures"][0].startswith("max abs diff")
    assert "over budget: max abs diff" in r.out


def test_labels_give_the_task_metric(repo, mldeploy):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 64)).astype(np.float32)
    probs = ort.InferenceSession(str(repo / ".mldeploy" / "bundle" / "model.onnx")).run(None, {"x": x})[0]
    labels = probs.argmax(1)
    labels[:10] = (labels[:10] + 1) % 10  # fp32 is right on 30 of 40 rows
    np.savez(repo / "calib.npz", x=x, labels=labels)
    (repo / "mldeploy.yaml").write_text(FAST + "  data: calib.npz\n  budget:\n    top1_agreement: 0.9\n    metric_drop: 100\n")
    r = mldeploy("optimize", "--objective", "size", cwd=repo)
    assert r.code == 0, r.err
    report = step(repo)
    assert report["baseline"]["accuracy"]["metric"] == {"name": "accuracy", "value": 75.0}
    assert report["data"] == "calib.npz (40 rows, with labels)"
    assert report["accuracy_delta"] == 75.0 - rows_by_name(report)["dynamic-int8"]["accuracy"]["metric"]["value"]


def test_static_int8_calibrates_on_the_data(repo, mldeploy):
    r = mldeploy("optimize", "--objective", "size", "--candidates", "static-int8", cwd=repo)
    assert r.code == 0, r.err
    row = rows_by_name(step(repo))["static-int8"]
    assert row["status"] == "ok" and row["facts"]["calibration"] == "minmax" and row["facts"]["calibration_rows"] == 64
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(repo / ".mldeploy" / "bundle" / "model.onnx").graph.node)


def test_candidate_that_crashes_onnx_runtime_is_reported_and_the_rest_go_on(tmp_path, mldeploy):
    onnx.save(mlp(activation="Celu"), tmp_path / "celu.onnx")  # Celu has no fp16 kernel in ONNX Runtime
    (tmp_path / "mldeploy.yaml").write_text(FAST + BUDGET)
    assert mldeploy("convert", "celu.onnx", cwd=tmp_path).code == 0
    r = mldeploy("optimize", "--candidates", "fp16,prune,dynamic-int8", "--objective", "size", cwd=tmp_path)
    assert r.code == 0, r.err
    rows = rows_by_name(step(tmp_path))
    assert rows["fp16"]["status"] == "failed" and "INVALID_GRAPH" in rows["fp16"]["reason"]
    assert rows["prune"]["status"] == "ok" and rows["prune"]["facts"]["sparsity"] >= 0.5
    assert rows["prune"]["facts"]["gzip_bytes"] < rows["prune"]["size_bytes"]
    assert step(tmp_path)["chosen"] == "dynamic-int8"  # prune is report-only, fp16 crashed


def test_fp16_is_never_chosen_for_cpu():
    base = {"name": "fp32", "p50_batch_ms": 10.0, "size_bytes": 1000}
    fp16 = {"name": "fp16", "status": "ok", "p50_batch_ms": 2.0, "size_bytes": 500, "budget_failures": [],
            "gpu_only": True, "report_only": False}
    assert choose([fp16], base, "latency", "cpu", 1.05)[0] is None
    assert choose([fp16], base, "latency", "gpu", 1.05)[0] is fp16


def test_selection_rules():
    base = {"name": "fp32", "p50_batch_ms": 10.0, "size_bytes": 1000}

    def row(name, ms, size, **kw):
        return {"name": name, "status": "ok", "p50_batch_ms": ms, "size_bytes": size, "budget_failures": [],
                "gpu_only": False, "report_only": False, **kw}

    slight, fast, small = row("slight", 9.8, 900), row("fast", 5.0, 990), row("small", 9.0, 250)
    over = row("over", 1.0, 100, budget_failures=["top-1 agreement 0.9 < 0.99"])
    pruned = row("prune", 1.0, 100, report_only=True)
    assert choose([slight, fast, small, over, pruned], base, "latency", "cpu", 1.05)[0] is fast
    assert choose([slight, fast, small, over, pruned], base, "size", "cpu", 1.05)[0] is small
    chosen, reason = choose([slight], base, "latency", "cpu", 1.05)
    assert chosen is None and reason.endswith("(best within budget: 1.02x)")


def test_latency_choice_has_hysteresis_so_noise_cannot_flip_it():
    """Each candidate must beat the current choice by min_speedup, in the kit's fixed order; the
    comparison is what optimize measures side by side (here a table standing in for it)."""
    base = {"name": "fp32"}

    def row(name):
        return {"name": name, "status": "ok", "budget_failures": [], "gpu_only": False, "report_only": False}

    a, b, c = row("ort-basic"), row("ort-extended"), row("dynamic-int8")
    # b is a hair faster than a (noise on another run could say the opposite): a stays chosen
    table = {("fp32", "ort-basic"): 1.30, ("ort-basic", "ort-extended"): 1.03, ("ort-basic", "dynamic-int8"): 0.8}
    chosen, reason = choose([a, b, c], base, "latency", "cpu", 1.05, lambda cur, r: table[cur["name"], r["name"]])
    assert chosen is a and reason.startswith("fastest within budget: 1.30x faster than fp32 side by side")
    assert b["side_by_side"] == {"against": "ort-basic", "speedup": 1.03}
    # ... and a candidate that clearly beats the current choice replaces it
    table["ort-basic", "dynamic-int8"] = 1.5
    chosen, reason = choose([a, b, c], base, "latency", "cpu", 1.05, lambda cur, r: table[cur["name"], r["name"]])
    assert chosen is c and "1.50x faster than ort-basic" in reason


def test_optimize_is_deterministic_and_records_the_cpu(repo, mldeploy):
    """Forced re-runs write the same model bytes; a latency run records the CPU and its side-by-side steps.

    Determinism is checked on the size objective: a latency choice whose true speedup sits at min_speedup
    can go either way on a busy machine (two test processes on 2 cores flipped it in CI), and the
    hysteresis that keeps it stable otherwise is tested with fixed timings above."""
    seen = set()
    for _ in range(3):
        assert mldeploy("optimize", "--force", "--objective", "size", cwd=repo).code == 0
        seen.add((step(repo)["chosen"], (repo / ".mldeploy" / "bundle" / "model.onnx").read_bytes()))
    assert len(seen) == 1, [chosen for chosen, _ in seen]
    (repo / "mldeploy.yaml").write_text(FAST + BUDGET)
    assert mldeploy("optimize", "--force", cwd=repo).code == 0
    report = step(repo)
    assert report["cpu"]["model"] and isinstance(report["cpu"]["isa"], list)
    measured = [r for r in report["candidates"] if "side_by_side" in r]
    assert measured and all(r["side_by_side"]["against"] in ("fp32", *[m["name"] for m in measured]) for r in measured)


def test_budget_limits():
    acc = {"top1_agreement": 0.98, "cosine_similarity": 0.999, "max_abs_diff": 0.02,
           "metric": {"name": "accuracy", "value": 90.0}}
    assert budget_failures(acc, {"name": "accuracy", "value": 91.0}, BudgetSection()) == [
        "top-1 agreement 0.9800 < 0.99"]
    strict = BudgetSection(top1_agreement=None, cosine_similarity=0.9999, max_abs_diff=0.01, metric_drop=0.5)
    assert len(budget_failures(acc, {"name": "accuracy", "value": 91.0}, strict)) == 3
    rmse = {**acc, "metric": {"name": "rmse", "value": 1.2}}
    assert budget_failures(rmse, {"name": "rmse", "value": 1.0}, BudgetSection(top1_agreement=None, metric_drop=0.1))


def test_rerun_is_up_to_date(repo, mldeploy):
    assert mldeploy("optimize", "--objective", "size", cwd=repo).code == 0
    model = (repo / ".mldeploy" / "bundle" / "model.onnx").read_bytes()
    r = mldeploy("optimize", "--objective", "size", cwd=repo)
    assert r.code == 0 and "optimize: up to date - kept dynamic-int8" in r.out
    assert (repo / ".mldeploy" / "bundle" / "model.onnx").read_bytes() == model


def test_report_has_table_and_mermaid_chart(repo, mldeploy, monkeypatch):
    summary = repo / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert mldeploy("optimize", "--objective", "size", cwd=repo).code == 0
    text = summary.read_text()
    assert "### ✅ optimize-model: dynamic-int8" in text
    assert "| dynamic-int8 |" in text and "**chosen**" in text
    assert "```mermaid\nxychart-beta" in text and 'x-axis ["fp32", ' in text


@pytest.mark.parametrize("setup, args, message", [
    (None, ["--bundle", "nowhere"], "nowhere does not exist"),
    ("empty_dir", ["--bundle", "empty"], "is not a bundle (missing model.onnx, signature.json, manifest.json)"),
    ("wrong_shape", ["--data", "bad.npz"], "input 'x' has shape [5, 3], the model expects [batch, 64]"),
    ("wrong_name", ["--data", "bad.npz"], "has no array for input 'x' (found: y)"),
    ("empty_data", ["--data", "bad.jsonl"], "input 'x' is empty"),
    ("bad_budget", [], "optimize.budget.top1: unknown key"),
    (None, ["--candidates", "int4"], "optimize.candidates"),
])
def test_bad_input_exits_2(repo, mldeploy, setup, args, message):
    if setup == "empty_dir":
        (repo / "empty").mkdir()
    elif setup == "wrong_shape":
        np.savez(repo / "bad.npz", x=np.zeros((5, 3), np.float32))
    elif setup == "wrong_name":
        np.savez(repo / "bad.npz", y=np.zeros((5, 64), np.float32))
    elif setup == "empty_data":
        (repo / "bad.jsonl").write_text("")
    elif setup == "bad_budget":
        (repo / "mldeploy.yaml").write_text(FAST + "  budget:\n    top1: 0.9\n")
    r = mldeploy("optimize", *args, cwd=repo)
    assert r.code == 2, r.out + r.err
    assert message in r.err


def test_optimize_never_imports_torch_or_tensorflow(repo):
    code = textwrap.dedent("""
        import sys
        from mldeploy.cli import main
        code = main(["optimize", "--objective", "size", "--candidates", "dynamic-int8"])
        print(code, sorted(m for m in ("torch", "tensorflow", "keras") if m in sys.modules))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    assert r.stdout.strip().splitlines()[-1] == "0 []", r.stdout + r.stderr
