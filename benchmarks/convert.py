"""Export and conversion times on small, medium PyTorch and Keras models (figures, not a test).

    .venv/bin/python benchmarks/convert.py

Prints, per model: parameters, the dynamo export time, the legacy exporter's time on the same
model measured in the same run (ratio dynamo/legacy), and the whole `mldeploy convert` time
(load, export, parity at two batch sizes, bundle). Absolute times drift between runs on shared
machines; compare within one run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from mldeploy.config import Config  # noqa: E402
from mldeploy.convert import convert  # noqa: E402


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(1000, 128)
        layer = nn.TransformerEncoderLayer(128, 4, 256, batch_first=True, dropout=0.0)
        self.body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(128, 4)

    def forward(self, ids):
        return self.head(self.body(self.embed(ids)).mean(1))


def torch_models():
    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(32, 10))
    return [("mlp 64-256-10", mlp, [{"name": "input", "dtype": "float32", "shape": ["batch", 64]}]),
            ("cnn 3x64x64", cnn, [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 64, 64]}]),
            ("transformer 2x128", Encoder(), [{"name": "ids", "dtype": "int64", "shape": ["batch", 32],
                                               "range": [0, 1000]}])]


def quiet(fn):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for name, module, inputs in torch_models():
        module.eval()
        path = tmp / f"{name.split()[0]}.pt2"
        example = tuple(torch.randint(0, 1000, (2, 32)) if i["dtype"] == "int64" else
                        torch.randn(2, *i["shape"][1:]) for i in inputs)
        torch.export.save(torch.export.export(module, example, dynamic_shapes=(
            {0: torch.export.Dim("batch")},)), path)
        legacy = quiet(functools.partial(torch.onnx.export, module, example, str(tmp / "legacy.onnx"), dynamo=False,
                                         input_names=[i["name"] for i in inputs],
                                         dynamic_axes={i["name"]: {0: "batch"} for i in inputs}))
        cfg = Config.model_validate({"inputs": inputs, "bundle": str(tmp / "bundle")})
        done = {}
        total = quiet(lambda: done.update(r=convert(cfg, model=str(path)).report))  # noqa: B023  called at once
        r = done["r"]
        params = sum(p.numel() for p in module.parameters())
        rows.append((name, "torch .pt2", params, r["exporter"], r["export_s"], legacy, total,
                     r["parity"]["max_abs_error"]))

    import keras
    seq = keras.Sequential([keras.Input((64,), name="x"), keras.layers.Dense(256, activation="relu"),
                            keras.layers.Dense(10)])
    seq.save(tmp / "mlp.keras")
    cfg = Config.model_validate({"bundle": str(tmp / "bundle")})
    done = {}
    total = quiet(lambda: done.update(r=convert(cfg, model=str(tmp / "mlp.keras")).report))
    r = done["r"]
    rows.append(("mlp 64-256-10", "keras", seq.count_params(), r["exporter"], r["export_s"], None, total,
                 r["parity"]["max_abs_error"]))

    print(f"{'model':<20} {'source':<11} {'params':>8} {'exporter':<9} {'export s':>9} {'legacy s':>9} "
          f"{'dynamo/legacy':>13} {'convert s':>10} {'max abs err':>12}")
    for name, src, params, exporter, export_s, legacy, total, err in rows:
        ratio = f"{export_s / legacy:.1f}x" if legacy else "-"
        print(f"{name:<20} {src:<11} {params:>8} {exporter:<9} {export_s:>9.2f} "
              f"{(f'{legacy:.2f}' if legacy else '-'):>9} {ratio:>13} {total:>10.2f} {err:>12.2e}")
    print(f"torch {torch.__version__}, keras {keras.__version__}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
