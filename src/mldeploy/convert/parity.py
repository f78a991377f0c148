"""Parity: does ONNX Runtime compute what the source framework computes, at every batch size tried?"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort

from mldeploy.bundle import TensorSpec
from mldeploy.convert.base import Arrays, first_line, unknown_operator


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
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why
    operator: str | None = None  # an operator in the export that ONNX Runtime does not know

    def to_json(self) -> dict:
        return {"passed": self.passed, "problem": self.problem,
                "outputs": [asdict(c) for c in self.comparisons]}

    @property
    def max_abs(self) -> float | None:
        values = [c.max_abs for c in self.comparisons if c.max_abs is not None]
        return max(values) if values else None


def session(path: Path, *, optimized: bool = True) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors come back as exceptions; keep ORT's own log quiet
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> tuple[float, float, bool]:
    """Max abs error, max error relative to the expected output's scale, and allclose(atol, rtol)."""
    if expected.dtype.kind in "biuUS" or actual.dtype.kind in "biuUS":
        equal = bool(np.array_equal(actual, expected))
        return (0.0 if equal else float("inf")), (0.0 if equal else float("inf")), equal
    a, e = np.atleast_1d(actual).astype(np.float64), np.atleast_1d(expected).astype(np.float64)
    diff = np.abs(a - e)
    both_nan = np.isnan(a) & np.isnan(e)
    diff[both_nan] = 0.0
    max_abs = float(np.nanmax(diff, initial=0.0)) if not np.isnan(diff).any() else float("inf")
    scale = float(np.nanmax(np.abs(e), initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = bool(np.all((diff <= atol + rtol * np.abs(np.nan_to_num(e))) | both_nan))
    return max_abs, max_rel, passed


def check(onnx_path: Path, inputs: list[TensorSpec], output_names: list[str], batches: dict[int, Arrays],
          expected: dict[int, list[np.ndarray]] | None, atol: float, rtol: float, *,
          rows_alone: bool = False) -> Parity:
    """Run the export at each batch and compare every output with the source's (when there is one).

    With `rows_alone`, the rows of the largest batch are also run one at a time: each must get the
    answer it got inside the batch (a model that mixes rows cannot be batched by the server)."""
    try:
        sess = session(onnx_path)
    except Exception as e:
        if unknown := unknown_operator(str(e)):
            return Parity(False, operator=unknown[0],
                          problem=f"the export uses operator {unknown[0]} (domain {unknown[1]}), unknown to ONNX Runtime")
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
            want = expected[batch][i]
            if a.shape != want.shape:
                result.passed = False
                note = f"shape {list(a.shape)}, source {list(want.shape)}"
                result.comparisons.append(Comparison(name, batch, None, None, False, note, list(a.shape)))
                result.problem = result.problem or f"output '{name}' at batch {batch} has {note}"
                continue
            max_abs, max_rel, ok = compare(a, want, atol, rtol)
            result.comparisons.append(Comparison(name, batch, max_abs, max_rel, ok, "", list(a.shape)))
            if not ok:
                result.passed = False
                result.problem = result.problem or (
                    f"output '{name}' at batch {batch} differs by up to {max_abs:.3g} "
                    f"(tolerance atol={atol:g} + rtol={rtol:g}*|source|)")
    failed_at = {c.batch for c in result.comparisons if not c.passed}
    result.batch_dependent = bool(failed_at) and len(failed_at) < len(batches)
    if rows_alone and result.passed and max(batches) > 1:
        _check_rows_alone(sess, inputs, output_names, names, max(batches), batches[max(batches)], atol, rtol, result)
    return result


ROWS_CHECKED = 16  # rows of the largest batch run alone: enough to catch mixing, cheap at any batch


def _check_rows_alone(sess: ort.InferenceSession, inputs: list[TensorSpec], output_names: list[str], names: list[str], batch: int,
                      arrays: Arrays, atol: float, rtol: float, result: Parity) -> None:
    batched = {s.name for s in inputs if s.shape and not isinstance(s.shape[0], int)}
    together = sess.run(None, arrays)
    worst: dict[str, tuple[float, float, bool, list[int]]] = {}
    for row in range(min(batch, ROWS_CHECKED)):
        feed = {k: (a[row:row + 1] if k in batched else a) for k, a in arrays.items()}
        try:
            alone = sess.run(None, feed)
        except Exception as e:  # e.g. a state input whose batch is not its first dim
            result.notes.append(f"rows were not checked one at a time: ONNX Runtime fails on one row: {first_line(e)}")
            return
        for name in output_names:
            i = names.index(name)
            t, a = together[i], alone[i]
            if t.ndim == 0 or t.shape[0] != batch or a.shape[:1] != (1,) or a.shape[1:] != t.shape[1:]:
                continue  # an output that does not follow the batch
            max_abs, max_rel, ok = compare(a[0], t[row], atol, rtol)
            prev = worst.get(name, (0.0, 0.0, True))
            worst[name] = (max(prev[0], max_abs), max(prev[1], max_rel), prev[2] and ok, list(t.shape))
    for name, (max_abs, max_rel, ok, shape) in worst.items():
        result.comparisons.append(Comparison(name, batch, max_abs, max_rel, ok, "rows run alone vs in the batch",
                                             shape))
        if not ok:
            result.passed = False
            result.batch_dependent = True
            result.problem = result.problem or (
                f"output '{name}': a row alone differs by up to {max_abs:.3g} from itself in a batch of {batch}: "
                "the model mixes rows of a batch")
