"""The optimization candidates: each turns the fp32 model into another ONNX file, or says why not.

Only onnx, onnxruntime and onnxslim are used here; optimize never imports torch or TensorFlow.
"""

from __future__ import annotations

import gzip
import logging
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from mldeploy.config import OptimizeSection

Arrays = dict[str, np.ndarray]
logging.getLogger("onnxruntime").setLevel(logging.ERROR)  # quantization warns through the root logger too


def _ort_tools_without_torch() -> None:
    """onnxruntime/tools/__init__.py imports torch whenever torch is installed, for an export helper we
    never use; quant_pre_process imports that package. Register the package without running its
    __init__, so optimize neither pays for nor depends on torch."""
    if "onnxruntime.tools" not in sys.modules:
        import onnxruntime

        tools = types.ModuleType("onnxruntime.tools")
        tools.__path__ = [str(Path(onnxruntime.__file__).parent / "tools")]
        sys.modules["onnxruntime.tools"] = tools


_ort_tools_without_torch()


class NotApplicable(Exception):
    """The candidate does not fit this model (e.g. int8 for MatMul on a model without MatMul)."""


@dataclass
class Context:
    settings: OptimizeSection
    calibration: list[Arrays]   # batches for static quantization
    op_types: set[str]           # operators in the fp32 model
    workdir: Path


@dataclass(frozen=True)
class Candidate:
    name: str
    make: Callable[[Path, Path, Context], dict]  # (fp32 model, output path, context) -> extra facts
    gpu_only: bool = False
    report_only: bool = False  # measured and reported, never chosen (e.g. pruning: no CPU speedup)


def op_types(model: onnx.ModelProto) -> set[str]:
    ops = set()
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            ops.add(node.op_type)
            graphs += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    return ops


def is_transformer(ops: set[str]) -> bool:
    return {"MatMul", "Softmax"} <= ops and bool(ops & {"LayerNormalization", "ReduceMean"})


def auto_names(ops: set[str], device: str) -> list[str]:
    """Sensible candidates for this model: int8 where it helps, fusions for transformers."""
    names = ["ort-extended", "onnxslim"]
    if ops & {"MatMul", "Gemm"}:
        names.append("dynamic-int8")
    if "Conv" in ops:
        names.append("static-int8")  # dynamic int8 would turn Conv into slow ConvInteger; static QDQ does not
    if is_transformer(ops):
        names.append("transformer-fusion")
    if device == "gpu":
        names.append("fp16")
    return names


def _graph_optimized(level_name: str) -> Callable[[Path, Path, Context], dict]:
    def make(src: Path, dst: Path, ctx: Context) -> dict:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level_name)
        options.optimized_model_filepath = str(dst)
        options.log_severity_level = 3
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        return {}
    return make


def _onnxslim(src: Path, dst: Path, ctx: Context) -> dict:
    import onnxslim

    onnx.save(onnxslim.slim(str(src)), str(dst))
    return {}


def _preprocessed(src: Path, ctx: Context) -> Path:
    """quant_pre_process (shape inference + graph cleanup) once, shared by both int8 candidates."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = ctx.workdir / "preprocessed.onnx"
    if not out.exists():
        quant_pre_process(str(src), str(out), skip_symbolic_shape=False)
    return out


def _dynamic_int8(src: Path, dst: Path, ctx: Context) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    targets = ["MatMul", "Gemm", "Gather", "Attention"]
    if not ctx.op_types & {"MatMul", "Gemm"}:
        raise NotApplicable("no MatMul or Gemm to quantize")
    # Convolutions are left alone on purpose: dynamic int8 makes them ConvInteger, which is slow on CPU.
    quantize_dynamic(str(_preprocessed(src, ctx)), str(dst), op_types_to_quantize=targets,
                     weight_type=QuantType.QInt8)
    return {}


def _static_int8(src: Path, dst: Path, ctx: Context) -> dict:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, batches: list[Arrays]):
            self.batches = iter(batches)

        def get_next(self) -> Arrays | None:
            return next(self.batches, None)

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[ctx.settings.calibration]
    quantize_static(str(_preprocessed(src, ctx)), str(dst), Reader(ctx.calibration), quant_format=QuantFormat.QDQ,
                    per_channel=ctx.settings.per_channel, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method)
    return {"calibration": ctx.settings.calibration, "per_channel": ctx.settings.per_channel,
            "calibration_rows": sum(len(next(iter(b.values()))) for b in ctx.calibration)}


def _fp16(src: Path, dst: Path, ctx: Context) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return {}


def _transformer_fusion(src: Path, dst: Path, ctx: Context) -> dict:
    if not is_transformer(ctx.op_types):
        raise NotApplicable("not a transformer (no MatMul + Softmax + normalization)")
    from onnxruntime.transformers import optimizer

    # opt_level 0: fusions only (ONNX Runtime optimizes every candidate online anyway), and level >= 1
    # imports torch inside onnxruntime.transformers.
    fused = optimizer.optimize_model(str(src), model_type="bert", opt_level=0)
    fused.save_model_to_file(str(dst))
    return {"fused_ops": sorted(op_types(fused.model) - ctx.op_types)}


def _prune(src: Path, dst: Path, ctx: Context) -> dict:
    """Zero the smallest weights of MatMul/Gemm/Conv. ONNX Runtime has no sparse CPU kernels, so
    this shrinks only the compressed size; latency is measured and reported like any other."""
    model = onnx.load(str(src))
    weight_inputs = {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")
                     and len(n.input) > 1}
    zeroed = total = 0
    for init in model.graph.initializer:
        if init.name not in weight_inputs:
            continue
        w = numpy_helper.to_array(init)
        if w.dtype.kind != "f" or w.size < 16:
            continue
        cut = np.quantile(np.abs(w), ctx.settings.prune_sparsity)
        pruned = np.where(np.abs(w) <= cut, 0, w).astype(w.dtype)
        zeroed += int((pruned == 0).sum())
        total += w.size
        init.CopyFrom(numpy_helper.from_array(pruned, init.name))
    if not total:
        raise NotApplicable("no MatMul, Gemm or Conv weights to prune")
    onnx.save(model, str(dst))
    return {"sparsity": round(zeroed / total, 4), "gzip_bytes": len(gzip.compress(dst.read_bytes(), 6))}


ALL = {c.name: c for c in (
    Candidate("ort-basic", _graph_optimized("ORT_ENABLE_BASIC")),
    Candidate("ort-extended", _graph_optimized("ORT_ENABLE_EXTENDED")),
    Candidate("onnxslim", _onnxslim),
    Candidate("dynamic-int8", _dynamic_int8),
    Candidate("static-int8", _static_int8),
    Candidate("fp16", _fp16, gpu_only=True),
    Candidate("transformer-fusion", _transformer_fusion),
    Candidate("prune", _prune, report_only=True),
)}
