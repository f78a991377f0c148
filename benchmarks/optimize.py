"""What optimize-model buys on a medium CNN, a medium transformer encoder and a tiny MLP (figures).

    .venv/bin/python benchmarks/optimize.py

Builds the models with PyTorch (random weights), converts them with `mldeploy convert`, runs
`mldeploy optimize` with default settings (batch 32, auto candidates, budget top-1 >= 0.99) on
inputs generated from the calibration distribution, and prints every candidate's size, p50 latency
at batch 1 and 32, speedup against fp32 measured in the same run, and accuracy. Then the targets:
transformer >= 1.5x faster at batch 32 and >= 3x smaller; CNN >= 1.8x faster; tiny model: fp32 kept.
Absolute times drift between runs on shared machines; only the same-run ratios count.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")

import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

from mldeploy.config import Config  # noqa: E402
from mldeploy.convert import convert  # noqa: E402
from mldeploy.optimize import optimize  # noqa: E402
from mldeploy.optimize.report import text  # noqa: E402


class Encoder(nn.Module):
    """4 layers, d=256, 4 heads, sequence 64: about 15 MB in fp32."""

    def __init__(self, d: int = 256, layers: int = 4):
        super().__init__()
        self.embed = nn.Embedding(2000, d)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, batch_first=True, dropout=0.0)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, ids):
        return self.head(self.body(self.embed(ids)).mean(1))


def cnn() -> nn.Module:
    """Four 3x3 convolutions on 3x64x64 images: about 1 MB in fp32."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
                         nn.Conv2d(64, 128, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def tiny_onnx(path: Path) -> None:
    """x[N, 8] -> softmax(x W + b)[N, 4], the smallest useful classifier."""
    w = numpy_helper.from_array(torch.randn(8, 4).numpy(), "W")
    b = numpy_helper.from_array(torch.randn(4).numpy(), "B")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"]),
             helper.make_node("Softmax", ["z"], ["probs"], axis=-1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 4])], [w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))


def run(name: str, model: Path, inputs: list[dict], tmp: Path) -> dict:
    cfg = Config.model_validate({"inputs": inputs, "bundle": str(tmp / name), "optimize": {"samples": 256}})
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        convert(cfg, model=str(model))
        report = optimize(cfg).report
    print(f"\n== {name}")
    print(text(report))
    return report


def main() -> None:
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    encoder, conv = Encoder().eval(), cnn().eval()
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(encoder, (torch.randint(0, 2000, (2, 64)),), dynamic_shapes=({0: batch},)),
                      tmp / "encoder.pt2")
    torch.export.save(torch.export.export(conv, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: batch},)),
                      tmp / "cnn.pt2")
    tiny_onnx(tmp / "tiny.onnx")
    results = {
        "transformer": run("transformer", tmp / "encoder.pt2",
                           [{"name": "ids", "dtype": "int64", "shape": ["batch", 64], "range": [0, 2000]}], tmp),
        "cnn": run("cnn", tmp / "cnn.pt2", [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 64, 64]}],
                   tmp),
        "tiny": run("tiny", tmp / "tiny.onnx", [], tmp),
    }
    t, c, tiny = results["transformer"], results["cnn"], results["tiny"]

    def agreement(report):
        chosen = next((r for r in report["candidates"] if r["name"] == report["chosen"]), report["baseline"])
        return chosen["accuracy"].get("top1_agreement", 1.0)

    print("\n== targets (ratios measured in this run)")
    checks = [
        (f"transformer: {t['chosen']} {t['speedup']:.2f}x faster at batch 32 (>= 1.5x)", t["speedup"] >= 1.5),
        (f"transformer: {t['size_ratio']:.2f}x smaller (>= 3x)", t["size_ratio"] >= 3),
        (f"transformer: top-1 agreement {agreement(t):.4f} (>= 0.99)", agreement(t) >= 0.99),
        (f"cnn: {c['chosen']} {c['speedup']:.2f}x faster at batch 32 (>= 1.8x)", c["speedup"] >= 1.8),
        (f"tiny: kept {tiny['chosen']} ({tiny['reason']})", tiny["chosen"] == "fp32"),
    ]
    for line, ok in checks:
        print(f"  {'MET ' if ok else 'MISS'} {line}")


if __name__ == "__main__":
    main()
