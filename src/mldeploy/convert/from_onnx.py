"""ONNX sources: checker, strict shape inference, a load in ONNX Runtime, and a reference to check against.

The reference is ONNX Runtime with every graph optimization off (`parity.reference: ort`, the
default): the same kernels the server runs, but none of the rewrites (fusions, constant folding,
layout changes) that are where an optimized graph goes wrong. ONNX's own reference evaluator
(`onnx`) is a second implementation of every operator, but its kernels crash on or disagree with
many real models; where it fails, its failure is a warning and the check falls back to `ort`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from mldeploy import data
from mldeploy.bundle import TensorSpec
from mldeploy.config import Config
from mldeploy.convert import parity
from mldeploy.convert.base import Arrays, Export, ExportFailed, Source, first_line, resolve_inputs, unknown_operator
from mldeploy.errors import UsageError

if TYPE_CHECKING:
    from onnx.reference import ReferenceEvaluator

NOT_A_TENSOR = {"sequence_type": "a sequence", "map_type": "a map", "optional_type": "an optional",
                "sparse_tensor_type": "a sparse tensor"}


def value_specs(values: Iterable[onnx.ValueInfoProto], skip: AbstractSet[str] = frozenset()) -> list[TensorSpec]:
    """TensorSpecs of ONNX graph inputs or outputs (dims: size, symbolic name, or None).

    A dim_value of 0 or less (exporters write -1 for "any") is a free dimension, as is no value."""
    specs = []
    for v in values:
        if v.name in skip:
            continue
        t = v.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                     for d in t.shape.dim)
        specs.append(TensorSpec(v.name, dtype, dims))
    return specs


def refuse_unknown_operator(path: Path, message: str) -> None:
    found = unknown_operator(message)
    if found:
        import onnxruntime as ort

        op, domain = found
        raise UsageError(f"{path.name}: operator {op} (domain {domain}) is not known to ONNX Runtime {ort.__version__}",
                         hint="replace it with standard ONNX operators, or re-export without the custom op")


class OnnxSource(Source):
    framework = "onnx"
    format = "onnx"

    def __init__(self, path: Path, cfg: Config):
        self.path = path
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf raises DecodeError and friends
            raise UsageError(f"{path} is not a valid ONNX file: {first_line(e)}",
                             hint="re-export the model; is the file truncated or a Git LFS pointer?") from None
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            raise UsageError(f"{path} keeps its weights in external data files, which bundles do not carry yet",
                             hint="save the model with its weights inside (models under 2 GB)")
        graph = model.graph
        for role, v in [("input", v) for v in graph.input] + [("output", v) for v in graph.output]:
            kind = v.type.WhichOneof("value")
            if kind != "tensor_type":
                raise UsageError(f"{path.name}: {role} '{v.name}' is {NOT_A_TENSOR.get(kind, kind)}, not a tensor; "
                                 "only tensors can be served",
                                 hint="export tensors only (sklearn-onnx classifiers: options={'zipmap': False})")
        try:
            onnx.checker.check_model(str(path), full_check=True)
            self.model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            refuse_unknown_operator(path, str(e))
            raise UsageError(f"{path} fails the ONNX checker: {first_line(e)}",
                             hint="re-export the model with a supported opset") from None
        try:
            self._ort = parity.session(path, optimized=False)
        except Exception as e:
            refuse_unknown_operator(path, str(e))
            raise UsageError(f"ONNX Runtime cannot load {path.name}: {first_line(e)}",
                             hint="re-export the model with a supported opset") from None
        initializers = {i.name for i in graph.initializer}
        found = value_specs(graph.input, initializers)
        inputs = resolve_inputs(found, cfg.inputs, where=str(path))
        for own, declared in zip(sorted(found, key=lambda s: s.name), sorted(inputs, key=lambda s: s.name)):
            if own.shape and isinstance(own.shape[0], int) and not isinstance(declared.shape[0], int):
                raise UsageError(f"the model fixes the batch of input '{own.name}' to {own.shape[0]}, but `inputs:` "
                                 f"declares it free ({declared.shape[0]})",
                                 hint=f"declare {own.shape[0]}, or re-export the model with a dynamic batch")
        self.inputs = self._bind_free_dims(inputs, cfg.model.dim_sizes) if not cfg.inputs else inputs
        self.output_names = [o.name for o in graph.output]
        self.reference = "ort" if cfg.parity.reference == "auto" else cfg.parity.reference
        self.warnings: list[str] = []
        self._evaluator: ReferenceEvaluator | None = None

    def _bind_free_dims(self, inputs: list[TensorSpec], dim_sizes: dict[str, int]) -> list[TensorSpec]:
        """Unnamed free dims after the first (an RNN's state [layers, batch, hidden]) are often the batch:
        where the model cannot run with them at their example size but can with them at the batch's,
        they are named after the batch, so every check sizes them with it."""
        if not any(d is None for s in inputs for d in s.shape[1:]):
            return inputs
        if self._runs(inputs, dim_sizes):
            return inputs
        batch = next((s.shape[0] for s in inputs if s.shape and isinstance(s.shape[0], str)), "batch")
        bound = [TensorSpec(s.name, s.dtype, tuple(batch if d is None else d for d in s.shape)) for s in inputs]
        return bound if self._runs(bound, dim_sizes) else inputs

    def _runs(self, inputs: list[TensorSpec], dim_sizes: dict[str, int]) -> bool:
        try:
            self._ort.run(None, data.generate(inputs, 2, dim_sizes=dim_sizes))  # 2: neither 1 nor the example size
            return True
        except Exception:
            return False

    def run(self, arrays: Arrays) -> list[np.ndarray]:
        """The reference outputs for these inputs: see the module's docstring."""
        if self.reference == "none":
            raise NotImplementedError("parity.reference is none")
        if self.reference == "onnx":
            try:
                return self._evaluate(arrays)
            except Exception as e:  # an op or domain the evaluator lacks, or a kernel that crashes
                self.warnings.append(f"ONNX's reference evaluator cannot run this model ({first_line(e)}); "
                                     "checked against ONNX Runtime with graph optimizations off instead")
                self.reference = "ort"
        try:
            return self._ort.run(None, arrays)
        except Exception as e:  # the model itself, or the inputs made up for it (an index out of range)
            shapes = ", ".join(f"{k} {a.dtype}{list(a.shape)}" for k, a in arrays.items())[:80]
            raise UsageError(f"ONNX Runtime cannot run {self.path.name} on inputs {shapes}: {first_line(e)}",
                             hint="give real inputs (--sample) or declare `inputs:` with ranges") from None

    def _evaluate(self, arrays: Arrays) -> list[np.ndarray]:
        from onnx.reference import ReferenceEvaluator

        if self._evaluator is None:
            self._evaluator = ReferenceEvaluator(self.model)
        return [np.asarray(o) for o in self._evaluator.run(None, arrays)]

    def fallback(self, batches: dict[int, Arrays]) -> dict[int, list[np.ndarray]] | None:
        """When ONNX's evaluator disagrees with ONNX Runtime, ONNX Runtime without optimizations decides:
        the evaluator's kernels are the ones known to be wrong on real models."""
        if self.reference != "onnx":
            return None
        self.reference = "ort"
        self.warnings.append("ONNX's reference evaluator disagrees with ONNX Runtime; checked against "
                             "ONNX Runtime with graph optimizations off instead")
        return {b: self.run(a) for b, a in batches.items()}

    def exports(self, dest: Path, opset: int) -> Iterator[Export | ExportFailed]:
        start = time.perf_counter()
        out = dest / "model.onnx"
        shutil.copyfile(self.path, out)
        yield Export("none (already ONNX)", out, time.perf_counter() - start)
