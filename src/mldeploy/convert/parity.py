"""Parity: does ONNX Runtime compute what the source framework computes, at every batch size tried?"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mldeploy.bundle import TensorSpec
from mldeploy.convert.base import Arrays, first_line


@dataclass
class Comparison:
    output: str
    batch: int
    max_abs: float | None
    max_rel: float | None  # max |onnx - source| / max |source|: error relative to the output's scale
    passed: bool
    note: str = ""
    shape: list[int] | None = None  # the export's output shape at this batch


@dataclass
class Parity:
    passed: bool
    comparisons: list[Comparison] = field(default_factory=list)
    problem: str | None = None     # the first reason it failed, in words
    batch_dependent: bool = False  # the export is right at some batch sizes only (or pins the batch)

    def to_json(self) -> dict:
        return {"passed": self.passed, "problem": self.problem,
                "outputs": [asdict(c) for c in self.comparisons]}

    @property
    def max_abs(self) -> float | None:
        values = [c.max_abs for c in self.comparisons if c.max_abs is not None]
        return max(values) if values else None


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors come back as exceptions; keep ORT's own log quiet
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> tuple[float, float, bool]:
    """Max abs error, max error relative to the expected output's scale, and allclose(atol, rtol)."""
    if expected.dtype.kind in "biuUS" or actual.dtype.kind in "biuUS":
        equal = bool(np.array_equal(actual, expected))
        return (0.0 if equal else float("inf")), (0.0 if equal else float("inf")), equal
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    diff = np.abs(a - e)
    both_nan = np.isnan(a) & np.isnan(e)
    diff[both_nan] = 0.0
    max_abs = float(np.nanmax(diff, initial=0.0)) if not np.isnan(diff).any() else float("inf")
    scale = float(np.nanmax(np.abs(e), initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = bool(np.all((diff <= atol + rtol * np.abs(np.nan_to_num(e))) | both_nan))
    return max_abs, max_rel, passed


def check(onnx_path: Path, inputs: list[TensorSpec], output_names: list[str], batches: dict[int, Arrays],
          expected: dict[int, list[np.ndarray]] | None, atol: float, rtol: float) -> Parity:
    """Run the export at each batch and compare every output with the source's (when there is one)."""
    try:
        sess = session(onnx_path)
    except Exception as e:
        return Parity(False, problem=f"ONNX Runtime cannot load the export: {first_line(e)}")
    found = {i.name: i.shape for i in sess.get_inputs()}
    if sorted(found) != sorted(s.name for s in inputs):
        return Parity(False, problem=f"the export's inputs are {sorted(found)}, expected {[s.name for s in inputs]}")
    for spec in inputs:
        dims = found[spec.name]
        if spec.shape and not isinstance(spec.shape[0], int) and dims and isinstance(dims[0], int):
            return Parity(False, batch_dependent=True,
                          problem=f"the exported model fixes the batch of input '{spec.name}' to {dims[0]}")
    names = [o.name for o in sess.get_outputs()]
    result = Parity(True)
    for batch, arrays in batches.items():
        try:
            actual = sess.run(None, arrays)
        except Exception as e:
            result.passed = False
            note = f"ONNX Runtime fails at batch {batch}: {first_line(e)}"
            result.comparisons += [Comparison(n, batch, None, None, False, note) for n in output_names]
            result.problem = result.problem or note
            continue
        for i, name in enumerate(output_names):
            a = actual[names.index(name)] if name in names else actual[i]
            if expected is None:  # no independent reference: the export must at least run at this batch
                result.comparisons.append(Comparison(name, batch, None, None, True, "ran; no reference",
                                                     list(a.shape)))
                continue
            e = expected[batch][i]
            if a.shape != e.shape:
                result.passed = False
                note = f"shape {list(a.shape)}, source {list(e.shape)}"
                result.comparisons.append(Comparison(name, batch, None, None, False, note, list(a.shape)))
                result.problem = result.problem or f"output '{name}' at batch {batch} has {note}"
                continue
            max_abs, max_rel, ok = compare(a, e, atol, rtol)
            result.comparisons.append(Comparison(name, batch, max_abs, max_rel, ok, "", list(a.shape)))
            if not ok:
                result.passed = False
                result.problem = result.problem or (
                    f"output '{name}' at batch {batch} differs by up to {max_abs:.3g} "
                    f"(tolerance atol={atol:g} + rtol={rtol:g}*|source|)")
    failed_at = {c.batch for c in result.comparisons if not c.passed}
    result.batch_dependent = bool(failed_at) and len(failed_at) < len(batches)
    return result
