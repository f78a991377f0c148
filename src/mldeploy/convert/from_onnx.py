"""ONNX sources: full checker, shape inference, signature; parity against ONNX's reference evaluator."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from mldeploy.bundle import TensorSpec
from mldeploy.config import Config
from mldeploy.convert.base import Arrays, Export, ExportFailed, Source, first_line, resolve_inputs
from mldeploy.errors import UsageError


def value_specs(values, skip: set[str] = frozenset()) -> list[TensorSpec]:
    """TensorSpecs of ONNX graph inputs or outputs (dims: size, symbolic name, or None)."""
    specs = []
    for v in values:
        if v.name in skip:
            continue
        t = v.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        specs.append(TensorSpec(v.name, dtype, dims))
    return specs


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
        try:
            onnx.checker.check_model(str(path), full_check=True)
            self.model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise UsageError(f"{path} fails the ONNX checker: {first_line(e)}",
                             hint="re-export the model with a supported opset") from None
        graph = self.model.graph
        not_tensors = [v.name for v in list(graph.input) + list(graph.output) if not v.type.HasField("tensor_type")]
        if not_tensors:
            raise UsageError(f"{path}: inputs/outputs {not_tensors} are sequences or maps; only tensors can be served",
                             hint="for sklearn-onnx classifiers convert with options={'zipmap': False}")
        initializers = {i.name for i in graph.initializer}
        self.inputs = resolve_inputs(value_specs(graph.input, initializers), cfg.inputs, where=str(path))
        self.output_names = [o.name for o in graph.output]
        self._reference = None

    def run(self, arrays: Arrays) -> list[np.ndarray]:
        """ONNX's reference evaluator: a second, independent implementation of every operator."""
        from onnx.reference import ReferenceEvaluator

        if self._reference is None:
            try:
                self._reference = ReferenceEvaluator(self.model)
            except Exception as e:  # an op or domain the evaluator does not implement
                raise NotImplementedError(f"ONNX reference evaluator cannot run this model: {first_line(e)}") from e
        return [np.asarray(o) for o in self._reference.run(None, arrays)]

    def exports(self, dest: Path, opset: int) -> Iterator[Export | ExportFailed]:
        start = time.perf_counter()
        out = dest / "model.onnx"
        shutil.copyfile(self.path, out)
        yield Export("none (already ONNX)", out, time.perf_counter() - start)
