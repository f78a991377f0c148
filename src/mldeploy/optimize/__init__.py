"""optimize-model: try candidates, measure them on the user's data, keep the best within budget.

The fp32 model stays in the bundle as model.fp32.onnx; model.onnx becomes the chosen candidate
(or stays fp32 when nothing is both faster/smaller and accurate enough). Re-runs start from fp32.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mldeploy import data as data_io
from mldeploy import github
from mldeploy.bundle import Bundle, Signature, sha256_file, tool_versions
from mldeploy.config import Config, OptimizeSection
from mldeploy.errors import CheckFailed
from mldeploy.optimize import evaluate
from mldeploy.optimize.candidates import ALL, Context, NotApplicable, auto_names, op_types
from mldeploy.optimize.evaluate import Arrays
from mldeploy.optimize.report import publish
from mldeploy.optimize.select import budget_failures, choose, metric_drop

if TYPE_CHECKING:
    import onnxruntime as ort

FP32_FILE = "model.fp32.onnx"
CALIBRATION_ROWS = 256


@dataclass
class Optimized:
    bundle: Bundle
    report: dict


def optimize(cfg: Config, *, bundle_dir: str | None = None, force: bool = False) -> Optimized:
    settings = cfg.optimize
    bundle = Bundle.open(bundle_dir or cfg.bundle)
    base = bundle.path / FP32_FILE if (bundle.path / FP32_FILE).is_file() else bundle.model_path
    signature = bundle.signature
    inputs, labels, data_note = _data(settings, signature, cfg)
    key = _key(base, settings, inputs, labels)
    last = None if force else bundle.fresh_step("optimize", key)
    if last:
        print(f"optimize: up to date - kept {last['chosen']} from {last['at']} (--force measures again)", flush=True)
        github.add_summary(f"### ✅ optimize-model: up to date\n\nThe model, data and settings are unchanged; "
                           f"kept `{last['chosen']}` from {last['at']}.")
        _require_improvement(last, settings)
        return Optimized(bundle, last)

    started = time.perf_counter()
    import onnx

    ops = op_types(onnx.load(str(base), load_external_data=False))
    names = auto_names(ops, settings.device) if settings.candidates == "auto" else list(settings.candidates)
    n_threads = evaluate.threads(settings.threads)
    fixed = {s.shape[0] for s in signature.inputs if s.shape and isinstance(s.shape[0], int)}
    single = max(fixed) if fixed else 1  # the smallest batch the model takes
    if fixed:  # the model takes exactly this batch: measure and feed it that way
        settings = settings.model_copy(update={"batch_size": max(fixed)})
        inputs = data_io.rows(inputs, max(fixed) * max(1, _count(inputs) // max(fixed)))
        if labels is not None:
            labels = labels[np.arange(_count(inputs)) % len(labels)]
    with tempfile.TemporaryDirectory(prefix="mldeploy-optimize-") as tmp:
        work = Path(tmp)
        calibration = _batches(data_io.rows(inputs, min(CALIBRATION_ROWS, _count(inputs))), settings.batch_size)
        ctx = Context(settings, calibration, ops, work)
        baseline = _measure("fp32", base, inputs, None, labels, settings, n_threads, single)
        reference = baseline.pop("_outputs")
        rows = []
        for name in names:
            candidate, out = ALL[name], work / f"{name}.onnx"
            row: dict[str, Any] = {"name": name, "gpu_only": candidate.gpu_only, "report_only": candidate.report_only}
            try:
                with github.group(f"optimize: {name}"):
                    facts = candidate.make(base, out, ctx)
                row.update(_measure(name, out, inputs, reference, labels, settings, n_threads, single, signature))
                row["facts"] = facts
                row["budget_failures"] = budget_failures(row["accuracy"], baseline["accuracy"].get("metric"),
                                                         settings.budget)
            except NotApplicable as e:
                row.update(status="skipped", reason=str(e))
            except Exception as e:  # a candidate that crashes is reported, never fatal
                row.update(status="failed", reason=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                           if str(e).strip() else type(e).__name__)
            row.pop("_outputs", None)
            rows.append(row)
        sessions: dict[str, object] = {}

        def side_by_side(current: dict, row: dict) -> float:
            for name in (current["name"], row["name"]):
                if name not in sessions:
                    sessions[name] = evaluate.session(base if name == "fp32" else work / f"{name}.onnx", n_threads)
            return evaluate.side_by_side(sessions[current["name"]], sessions[row["name"]], inputs,
                                         settings.batch_size, 2 * settings.latency_seconds)

        chosen, reason = choose([r for r in rows if r.get("status") == "ok"], baseline, settings.objective,
                                settings.device, settings.min_speedup, side_by_side)
        _install(bundle, base, work / f"{chosen['name']}.onnx" if chosen else None)
    report = _report(baseline, rows, chosen, reason, settings, data_note, key, n_threads,
                     round(time.perf_counter() - started, 2))
    bundle.add_step("optimize", report)
    publish(report)
    _require_improvement(report, settings)
    return Optimized(bundle, report)


def _require_improvement(report: dict, settings: OptimizeSection) -> None:
    if report["chosen"] == "fp32" and settings.require_improvement:
        raise CheckFailed(f"optimize kept fp32: {report['reason']}",
                          hint="require_improvement is set; relax the budget or try other candidates")


def _data(settings: OptimizeSection, signature: Signature, cfg: Config) -> tuple[Arrays, np.ndarray | None, str]:
    if settings.data:
        inputs = data_io.load(settings.data, signature.inputs)
        labels = data_io.load_labels(settings.data, settings.labels_key, _count(inputs))
        return inputs, labels, f"{settings.data} ({_count(inputs)} rows{', with labels' if labels is not None else ''})"
    github.warning("no optimize.data given: inputs are generated from the signature, so accuracy is measured only "
                   "as agreement with fp32 on random data; give a file of real inputs (optimize.data) for real "
                   "figures", title="optimize-model")
    ranges = {i.name: i.range for i in cfg.inputs if i.range}
    inputs = data_io.generate(signature.inputs, settings.samples, seed=cfg.parity.seed,
                              dim_sizes=cfg.model.dim_sizes, ranges=ranges)
    return inputs, None, f"generated from the signature ({settings.samples} rows; no labels)"


def _count(arrays: dict[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values())))


def _batches(arrays: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    n = _count(arrays)
    return [{k: v[i:i + size] for k, v in arrays.items()} for i in range(0, n, size)]


def _key(base: Path, settings: OptimizeSection, inputs: Arrays, labels: np.ndarray | None) -> str:
    h = hashlib.sha256(sha256_file(base).encode())
    h.update(json.dumps({"settings": settings.model_dump(), "tools": tool_versions(), "isa": evaluate.cpu()["isa"]},
                        sort_keys=True).encode())  # another CPU class may choose another candidate
    for name in sorted(inputs):
        h.update(name.encode() + np.ascontiguousarray(inputs[name]).tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


def _measure(name: str, path: Path, inputs: Arrays, reference: list[np.ndarray] | None, labels: np.ndarray | None,
             settings: OptimizeSection, n_threads: int,
             single: int, signature: Signature | None = None) -> dict:
    start = time.perf_counter()
    sess = evaluate.session(path, n_threads)
    load_s = time.perf_counter() - start
    if signature is not None:
        _same_interface(sess, signature)
    outputs = evaluate.run_batched(sess, inputs, settings.batch_size)
    task = "classification" if labels is not None and labels.dtype.kind in "iub" else "regression"
    accuracy = evaluate.accuracy(reference if reference is not None else outputs, outputs, labels, task)
    at1 = evaluate.latency(sess, inputs, single, settings.latency_seconds)
    at_batch = evaluate.latency(sess, inputs, settings.batch_size, settings.latency_seconds)
    return {"name": name, "status": "ok", "size_bytes": path.stat().st_size, "load_s": round(load_s, 4),
            "p50_1_ms": at1.p50_ms, "p95_1_ms": at1.p95_ms, "p50_batch_ms": at_batch.p50_ms,
            "p95_batch_ms": at_batch.p95_ms, "accuracy": accuracy, "budget_failures": [], "_outputs": outputs}


def _same_interface(sess: ort.InferenceSession, signature: Signature) -> None:
    """A candidate must keep the bundle's inputs and outputs (names and dtypes) exactly."""

    def shape(values: list[Any]) -> list[tuple[str, str]]:
        return [(v.name, v.type) for v in values]

    want_in = [(t.name, f"tensor({_ort_type(t.dtype)})") for t in signature.inputs]
    want_out = [(t.name, f"tensor({_ort_type(t.dtype)})") for t in signature.outputs]
    if sorted(shape(sess.get_inputs())) != sorted(want_in) or sorted(shape(sess.get_outputs())) != sorted(want_out):
        raise ValueError(f"changes the model's interface: {shape(sess.get_inputs())} -> {shape(sess.get_outputs())}")


def _ort_type(dtype: str) -> str:
    return {"float32": "float", "float64": "double", "float16": "float16"}.get(dtype, dtype)


def _install(bundle: Bundle, base: Path, chosen: Path | None) -> None:
    """model.onnx := the chosen candidate (fp32 kept beside it), or fp32 when nothing was chosen."""
    fp32 = bundle.path / FP32_FILE
    if chosen is None:
        if fp32.is_file():  # an earlier run had replaced it: back to fp32
            os.replace(fp32, bundle.model_path)
        return
    if not fp32.is_file():
        shutil.copyfile(base, fp32)
    staging = bundle.path / ".model.onnx.tmp"
    shutil.copyfile(chosen, staging)
    os.replace(staging, bundle.model_path)


def _report(baseline: dict, rows: list[dict], chosen: dict | None, reason: str, settings: OptimizeSection,
            data_note: str, key: str, n_threads: int, duration: float) -> dict:
    best = chosen or baseline
    base_metric = baseline["accuracy"].get("metric")
    if base_metric and "metric" in best["accuracy"]:
        delta = metric_drop(base_metric, best["accuracy"]["metric"])
    elif "top1_agreement" in best["accuracy"]:
        delta = 1 - best["accuracy"]["top1_agreement"]
    else:
        delta = best["accuracy"]["max_abs_diff"]
    return {"status": "passed", "chosen": chosen["name"] if chosen else "fp32", "reason": reason,
            "objective": settings.objective, "device": settings.device, "batch_size": settings.batch_size,
            "threads": n_threads, "cpu": evaluate.cpu(), "data": data_note,
            "budget": settings.budget.model_dump(exclude_none=True),
            "speedup": round(baseline["p50_batch_ms"] / best["p50_batch_ms"], 3),
            "size_ratio": round(baseline["size_bytes"] / best["size_bytes"], 3),
            "accuracy_delta": delta, "baseline": baseline, "candidates": rows, "key": key, "duration_s": duration}

