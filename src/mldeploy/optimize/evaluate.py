"""Measure a model the same way for every candidate: accuracy against fp32, latency, size, load time."""

from __future__ import annotations

import functools
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mldeploy.data import rows

if TYPE_CHECKING:
    import onnxruntime as ort

Arrays = dict[str, np.ndarray]


def threads(setting: int | None) -> int:
    if setting:
        return setting
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this process may use, not the host's count
    except AttributeError:
        return os.cpu_count() or 1


# The instruction sets that change which ONNX Runtime kernels run (and so which candidate is fastest).
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve")


@functools.cache
def cpu() -> dict:
    """The CPU model and its ISA features, recorded beside every figure (and part of optimize's key)."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and not model:
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
    except OSError:  # not Linux: the model name alone
        pass
    return {"model": model or platform.processor() or platform.machine(), "isa": [f for f in ISA_FLAGS if f in flags]}


def session(path: Path, n_threads: int) -> ort.InferenceSession:
    """Identical options for every candidate, so that only the model differs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = n_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # Idle intra-op threads spin for a while after a run; in a side-by-side measurement they steal the
    # CPU from the other session's run, and the same model measured 0.77x to 1.3x against itself here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batched(sess: ort.InferenceSession, data: Arrays, batch: int) -> list[np.ndarray]:
    n = len(next(iter(data.values())))
    parts = [sess.run(None, {k: v[i:i + batch] for k, v in data.items()}) for i in range(0, n, batch)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


@dataclass
class Latency:
    p50_ms: float
    p95_ms: float
    runs: int


def latency(sess: ort.InferenceSession, data: Arrays, batch: int, seconds: float) -> Latency:
    """Warm up, then time single runs at this batch for about `seconds` (10 runs at least)."""
    feed = rows(data, batch)
    for _ in range(3):
        sess.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 10 or (time.perf_counter() < deadline and len(times) < 2000):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    return Latency(float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), len(times))


def is_classification(output: np.ndarray) -> bool:
    return output.ndim == 2 and output.shape[1] >= 2 and output.dtype.kind == "f"


def accuracy(reference: list[np.ndarray], candidate: list[np.ndarray], labels: np.ndarray | None,
             task: str) -> dict:
    """Agreement with fp32 (every output), plus the task metric on the first output when labels exist."""
    max_abs, max_rel, cosines = 0.0, 0.0, []
    for ref, got in zip(reference, candidate):
        r, g = ref.astype(np.float64), got.astype(np.float64)
        diff = float(np.max(np.abs(r - g))) if r.size else 0.0
        max_abs = max(max_abs, diff)
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        max_rel = max(max_rel, diff / scale if scale else (0.0 if diff == 0 else float("inf")))
        a, b = r.reshape(len(r), -1), g.reshape(len(g), -1)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.where(norms > 0, (a * b).sum(1) / np.where(norms > 0, norms, 1), 1.0)
        cosines.append(float(cos.mean()))
    out: dict[str, Any] = {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "cosine_similarity": min(cosines)}
    first_ref, first = reference[0], candidate[0]
    if is_classification(first_ref):
        out["top1_agreement"] = float((first_ref.argmax(1) == first.argmax(1)).mean())
    if labels is not None:
        out["metric"] = task_metric(first, labels, task)
    return out


def task_metric(output: np.ndarray, labels: np.ndarray, task: str) -> dict:
    from mldeploy.errors import UsageError

    if task == "classification":
        if not is_classification(output) or labels.reshape(len(labels), -1).shape[1] != 1:
            raise UsageError(f"integer labels of shape {list(labels.shape)} need a [batch, classes] score output "
                             f"and one class id per row; the model outputs {list(output.shape)}")
        return {"name": "accuracy", "value": float((output.argmax(1) == labels.reshape(-1)).mean() * 100)}
    if labels.reshape(len(labels), -1).shape != output.reshape(len(output), -1).shape:
        raise UsageError(f"float labels of shape {list(labels.shape)} do not match the model's output "
                         f"{list(output.shape)}", hint="give one target per output value, or integer class ids")
    err = output.reshape(len(output), -1).astype(np.float64) - labels.reshape(len(labels), -1)
    return {"name": "rmse", "value": float(np.sqrt(np.mean(err ** 2)))}


def side_by_side(sess_a: ort.InferenceSession, sess_b: ort.InferenceSession, data: Arrays, batch: int, seconds: float) -> float:
    """p50(a) / p50(b), from runs that alternate a and b, so that drift on a noisy machine hits both."""
    feed = rows(data, batch)
    for sess in (sess_a, sess_b):
        sess.run(None, feed)
    a: list[float] = []
    b: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(a) < 10 or (time.perf_counter() < deadline and len(a) < 2000):
        for sess, times in ((sess_a, a), (sess_b, b)):
            start = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - start)
    return float(np.median(a) / np.median(b))
