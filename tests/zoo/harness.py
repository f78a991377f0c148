"""The zoo's shared parts: read tests/zoo/models.yaml, find each shipped model file, run the real
`mldeploy convert` on it (the CLI's own entry point, in this process), and run the model in its own
framework for the independent check. Used by tests/zoo/test_zoo.py and benchmarks/zoo.py."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = Path(__file__).with_name("models.yaml")
DEFAULT_TOL = {"atol": 1e-4, "rtol": 1e-3}
SEED = 1234  # not mldeploy's parity seed: the zoo's check uses other data than convert's own check


def models() -> list[dict]:
    return yaml.safe_load(MANIFEST.read_text())["models"]


def package_dir(module: str) -> Path | None:
    """Where an installed package lies, found without importing it (their dependencies are not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def shipped_file(m: dict) -> Path | None:
    base = package_dir(m["module"])
    path = base / m["file"] if base else None
    return path if path is not None and path.exists() else None


def _function(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def source_path(m: dict, workdir: Path) -> Path:
    """The file mldeploy converts: the shipped one, or the format derived from it."""
    path = shipped_file(m)
    if path is None:
        raise FileNotFoundError(f"{m['module']}/{m['file']} not installed: run scripts/setup-zoo.sh ({m['package']})")
    if m.get("derive"):
        derived = workdir / "derived"
        derived.mkdir(parents=True, exist_ok=True)
        return _function(m["derive"])(path, derived)
    return path


def write_config(m: dict, model_path: Path, bundle: Path, workdir: Path) -> Path:
    cfg = {"version": 1, **dict(m.get("config", {}).items())}
    cfg["model"] = {**cfg.get("model", {}), "path": str(model_path)}
    cfg["bundle"] = str(bundle)
    path = workdir / "mldeploy.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class Run:
    """One `mldeploy` command: its argv, exit code, output and the error line it printed."""

    argv: list[str]
    rc: int
    seconds: float
    output: str
    config: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def error(self) -> str:
        return self.errors[0] if self.errors else ""

    def command(self) -> str:
        return "mldeploy " + " ".join(self.argv)


def mldeploy(argv: list[str], cwd: Path) -> Run:
    """The CLI's main() as `mldeploy ARGV` runs it, in `cwd` (tools drop temporary files there); the
    factories (tests.zoo.factories) import from the repo root, which is kept on sys.path."""
    from mldeploy import cli

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    out = io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                rc = cli.main(argv)
            except SystemExit as e:  # argparse
                rc = e.code if isinstance(e.code, int) else 2
    finally:
        os.chdir(here)
    text = out.getvalue()
    errors = [line for line in text.splitlines() if line.startswith(("error:", "::error"))]
    return Run(argv, rc, time.perf_counter() - start, text, errors=errors)


def convert(m: dict, workdir: Path) -> tuple[Run, Path, Path]:
    """Derive (if asked), write the config and run `mldeploy convert`; (run, source, bundle)."""
    source = source_path(m, workdir)
    bundle = workdir / "bundle"
    config = write_config(m, source, bundle, workdir)
    run = mldeploy(["convert", "--config", str(config), "--out", str(bundle)], workdir)
    run.config = config.read_text()
    return run, source, bundle


# ---------------------------------------------------------------------------- the independent check
def batches(m: dict) -> list[int]:
    """Two batch sizes, or the model's fixed batch."""
    fixed = {s["shape"][0] for s in m["config"]["inputs"] if s["shape"] and isinstance(s["shape"][0], int)}
    return sorted(fixed) if fixed else [1, 3]


def make_inputs(m: dict, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED + batch)
    sizes = m["config"].get("model", {}).get("dim_sizes", {})
    arrays = {}
    for spec in m["config"]["inputs"]:
        shape = tuple(d if isinstance(d, int) else (batch if i == 0 else sizes.get(d, 8))
                      for i, d in enumerate(spec["shape"]))
        dtype = np.dtype(spec.get("dtype", "float32"))
        low, high = spec.get("range") or ((0, 10) if dtype.kind in "iu" else (None, None))
        if dtype.kind in "iu":
            a = rng.integers(int(low), max(int(high), int(low) + 1), size=shape)
        elif low is not None:
            a = rng.uniform(low, high, size=shape)
        else:
            a = rng.standard_normal(shape)
        arrays[spec["name"]] = np.asarray(a).astype(dtype)
    return arrays


class Own:
    """The model in its own framework: run(arrays) -> {output name or position: array}."""

    def __init__(self, m: dict, source: Path):
        self.m, self.source, kind = m, source, m["own"]
        self.names = [s["name"] for s in m["config"]["inputs"]]
        if kind == "onnxruntime":
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
        elif kind in ("torch.jit", "torch.export", "factory"):
            import torch

            if kind == "torch.jit":
                self.module = torch.jit.load(str(source), map_location="cpu").eval()
            elif kind == "torch.export":
                self.module = torch.export.load(str(source)).module()
            else:
                state = torch.load(str(source), map_location="cpu", weights_only=True)
                if m.get("state_key"):
                    state = state[m["state_key"]]
                self.module = _function(m["config"]["model"]["factory"])()
                self.module.load_state_dict(state, strict=True)
                self.module.eval()
        elif kind == "keras":
            import keras

            self.model = keras.saving.load_model(str(source), compile=False)
        elif kind == "tf.saved_model":
            import tensorflow as tf

            self.loaded = tf.saved_model.load(str(source))
            self.function = self.loaded.signatures["serving_default"]
        else:
            raise ValueError(f"{m['id']}: unknown `own: {kind}`")

    def run(self, arrays: dict[str, np.ndarray]) -> dict:
        kind = self.m["own"]
        if kind == "onnxruntime":
            names = [o.name for o in self.session.get_outputs()]
            return dict(zip(names, self.session.run(None, arrays)))
        if kind in ("torch.jit", "torch.export", "factory"):
            import torch

            with torch.no_grad():
                out = self.module(*[torch.from_numpy(arrays[n]) for n in self.names])
            flat = list(out) if isinstance(out, (list, tuple)) else [out]
            return {i: t.numpy() for i, t in enumerate(flat)}
        if kind == "keras":
            out = self.model([arrays[n] for n in self.names] if len(self.names) > 1 else arrays[self.names[0]],
                             training=False)
            flat = list(out) if isinstance(out, (list, tuple)) else [out]
            return {i: np.asarray(t) for i, t in enumerate(flat)}
        import tensorflow as tf

        out = self.function(**{n: tf.constant(a) for n, a in arrays.items()})
        return {k: v.numpy() for k, v in out.items()}


def bundle_session(bundle: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])


def compare(m: dict, own: Own, session, batch: int) -> float:
    """Max abs error of the bundle against the model's own framework at one batch; raises on a mismatch."""
    arrays = make_inputs(m, batch)
    feeds = {i.name: arrays[i.name] for i in session.get_inputs()}
    missing = set(arrays) - set(feeds)
    assert not missing, f"{m['id']}: the bundle's model.onnx lacks inputs {sorted(missing)}"
    extra = {i.name for i in session.get_inputs()} - set(arrays)
    assert not extra, f"{m['id']}: the bundle's model.onnx wants inputs the model does not have: {sorted(extra)}"
    got_names = [o.name for o in session.get_outputs()]
    got = dict(zip(got_names, session.run(None, feeds)))
    want = own.run(arrays)
    if set(want) == set(got):
        pairs = [(k, want[k], got[k]) for k in want]
    else:  # outputs by position (frameworks without names, or renamed ones)
        assert len(want) == len(got), f"{m['id']}: {len(got)} outputs in the bundle, {len(want)} in the model"
        pairs = [(str(k), w, got[g]) for (k, w), g in zip(sorted(want.items(), key=lambda kv: str(kv[0])),
                                                         got_names if not isinstance(next(iter(want)), str)
                                                         else sorted(got_names))]
    tol = {**DEFAULT_TOL, **m.get("tolerance", {})}
    worst = 0.0
    for name, w, g in pairs:
        w, g = np.asarray(w), np.asarray(g)
        assert w.shape == g.shape, f"{m['id']} output {name} at batch {batch}: shape {g.shape}, model gives {w.shape}"
        if w.dtype.kind == "f" or g.dtype.kind == "f":
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), atol=tol["atol"], rtol=tol["rtol"],
                                       err_msg=f"{m['id']} output {name} at batch {batch}")
            if w.size:
                worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))))
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"{m['id']} output {name} at batch {batch}")
    return worst
