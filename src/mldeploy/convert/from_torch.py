"""PyTorch sources: TorchScript, torch.export programs (.pt2), state_dict + factory, pickled modules.

Export prefers the dynamo exporter (torch.export based) and falls back to the legacy TorchScript
exporter; the converter keeps the first export that passes parity at batch 1 and at a batch larger
than the export example, which is how a silently fixed batch is caught.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mldeploy import data
from mldeploy.bundle import TensorSpec
from mldeploy.config import Config
from mldeploy.convert.base import (
    Arrays,
    Export,
    ExportFailed,
    Source,
    captured,
    first_line,
    import_object,
    importable_cwd,
    operator_in,
    resolve_inputs,
)
from mldeploy.data import generate
from mldeploy.errors import UsageError

logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed" on every export
EXAMPLE_BATCH = 2  # the dynamo exporter specializes dims of size 0 and 1, so export with 2
PICKLE_HINT = ("loading a pickle runs arbitrary code from the file: only with a file you trust, pass "
               "--allow-pickle; better, save a state_dict and give --factory, or save TorchScript or .pt2")


class TorchSource(Source):
    framework = "torch"

    def __init__(self, path: Path, fmt: str, cfg: Config):
        self.path, self.format, self.cfg = path, fmt, cfg
        self.program: torch.export.ExportedProgram | None = None  # for .pt2 sources
        try:
            self.module = self._load()
        except UsageError:
            raise
        except BaseException as e:  # model code runs here: SystemExit and KeyboardInterrupt are its errors too
            raise UsageError(f"cannot load PyTorch model {path}: {type(e).__name__}: {first_line(e)}") from None
        found = self._program_inputs(self.program) if self.program is not None else self._sample_inputs()
        self.inputs = resolve_inputs(found, cfg.inputs, where=f"{path.name} ({self.format})")
        self.dim_sizes, self.batch_range = self._dim_constraints()
        # One run at the export example batch validates the declared inputs and names the outputs.
        example_batch = _clamp(EXAMPLE_BATCH, *self.batch_range)
        self.example = generate(self.inputs, example_batch, seed=cfg.parity.seed,
                                dim_sizes={**cfg.model.dim_sizes, **self.dim_sizes},
                                ranges={i.name: i.range for i in cfg.inputs if i.range})
        outputs = self._call(self.example)
        self.output_names = (list(outputs) if isinstance(outputs, Mapping)
                             else [f"output_{i}" for i in range(len(_flatten(outputs)))])

    # -------------------------------------------------------------------- loading
    def _load(self) -> torch.nn.Module:
        if self.format == "torchscript":
            return torch.jit.load(str(self.path), map_location="cpu").eval()
        if self.format == "exported-program":
            self.program = program = torch.export.load(str(self.path))
            return program.module()
        try:
            obj = torch.load(str(self.path), map_location="cpu", weights_only=True)
        except Exception as e:
            if not self.cfg.model.allow_pickle:
                if "weights_only" in str(e).lower() or "unpickl" in type(e).__name__.lower():
                    raise UsageError(f"{self.path.name} is a pickled Python object, not a state_dict",
                                     hint=PICKLE_HINT) from None
                raise
            importable_cwd()  # a pickle names its classes by module path, in the model repo
            obj = torch.load(str(self.path), map_location="cpu", weights_only=False)  # opted in: model.allow_pickle
        if isinstance(obj, torch.nn.Module):
            self.format = "pickled-module"
            return obj.eval()
        state = _state_dict_in(obj)
        if state is None:
            raise UsageError(f"{self.path.name} holds a {type(obj).__name__}, not a module or a state_dict")
        self.format = "state_dict"
        module = self._from_factory()
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise UsageError(f"state_dict {self.path.name} does not fit the module from "
                             f"{self.cfg.model.factory}: {first_line(e)}",
                             hint="is the factory building the same architecture the weights came from?") from None
        return module.eval()

    def _from_factory(self) -> torch.nn.Module:
        spec = self.cfg.model.factory
        if not spec:
            raise UsageError(f"{self.path.name} is a state_dict: weights without the code that builds the model",
                             hint="give --factory package.module:function (model.factory in mldeploy.yaml)")
        func = import_object(spec, "factory", self.cfg.import_root("model.factory"))
        try:
            module = func()
        except BaseException as e:
            raise UsageError(f"factory {spec} failed: {type(e).__name__}: {first_line(e)}") from None
        if not isinstance(module, torch.nn.Module):
            raise UsageError(f"factory {spec} returned {type(module).__name__}, not a torch.nn.Module")
        return module

    def _sample_inputs(self) -> list[TensorSpec] | None:
        """TorchScript records its inputs' names but not their shapes: a sample file gives both."""
        sample = self.cfg.parity.sample or self.cfg.optimize.data
        if self.format != "torchscript" or not sample or self.cfg.inputs:
            return None
        try:
            forward: Any = self.module.forward  # a TorchScript method: it has a schema
            names = [a.name for a in forward.schema.arguments[1:]]
        except (AttributeError, RuntimeError):
            return None
        return data.specs_from(sample, names)

    def _dim_constraints(self) -> tuple[dict[str, int], tuple[int, int | None]]:
        """Example sizes for named dims inside the program's range constraints (`x.size()[2] >= 11`),
        and the batch range; without a program, the config's sizes."""
        sizes = dict(self.cfg.model.dim_sizes)
        if self.program is None:
            return sizes, (1, None)
        ranges = {}
        for symbol, bounds in self.program.range_constraints.items():
            try:
                high = int(bounds.upper)
            except Exception:  # int_oo (no upper bound) converts to nothing
                high = None
            ranges[str(symbol)] = (int(bounds.lower), high)
        batch_low, batch_high = 1, None
        for spec in self.inputs:
            for i, d in enumerate(spec.shape):
                if not isinstance(d, str) or d not in ranges:
                    continue
                low, high = ranges[d]
                if i == 0:
                    batch_low = max(batch_low, low)
                    batch_high = high if batch_high is None else min(batch_high, high or batch_high)
                else:
                    sizes[d] = _clamp(sizes.get(d, data.DEFAULT_DIM), low, high)
        return sizes, (batch_low, batch_high)

    def _program_inputs(self, program: torch.export.ExportedProgram) -> list[TensorSpec]:
        names = list(program.graph_signature.user_inputs)
        specs = []
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in names:
                val = node.meta["val"]
                dims = tuple(int(d) if isinstance(d, int) or str(d).isdigit() else str(d) for d in val.shape)
                specs.append(TensorSpec(node.name, str(val.dtype).removeprefix("torch."), dims))
        return specs

    # -------------------------------------------------------------------- running
    def _call(self, arrays: Arrays) -> Any:
        args = [torch.from_numpy(np.ascontiguousarray(arrays[s.name])) for s in self.inputs]
        try:
            with torch.inference_mode():
                return self.module(*args)
        except BaseException as e:
            shapes = ", ".join(f"{s.name} {list(arrays[s.name].shape)}" for s in self.inputs)
            raise UsageError(f"the model rejects the declared inputs ({shapes}): {type(e).__name__}: {first_line(e)}",
                             hint="fix `inputs:` in mldeploy.yaml (names, dtypes, shapes)") from None

    def run(self, arrays: Arrays) -> list[np.ndarray]:
        out = self._call(arrays)
        values = [out[k] for k in self.output_names] if isinstance(out, Mapping) else _flatten(out)
        return [v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in values]

    # -------------------------------------------------------------------- exporting
    def _args(self) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(self.example[s.name]) for s in self.inputs)

    def exports(self, dest: Path, opset: int) -> Iterator[Export | ExportFailed]:
        names = [s.name for s in self.inputs]
        symbolic = {s.name: {i: str(d) for i, d in enumerate(s.shape) if not isinstance(d, int)}
                    for s in self.inputs}

        def dynamo(path: Path) -> None:
            target = self.program if self.program is not None else self.module
            dynamic = None if self.program is not None else tuple(
                dict.fromkeys(symbolic[n], torch.export.Dim.DYNAMIC) or None for n in names)
            torch.onnx.export(target, self._args(), str(path), dynamo=True, external_data=False,
                              opset_version=opset, input_names=names, output_names=self.output_names,
                              dynamic_shapes=dynamic, verbose=False)

        def legacy(path: Path) -> None:
            torch.onnx.export(self.module, self._args(), str(path), dynamo=False, opset_version=min(opset, 20),
                              input_names=names, output_names=self.output_names,
                              dynamic_axes={n: d for n, d in symbolic.items() if d})

        for name, export in (("dynamo", dynamo), ("legacy", legacy)):
            path = dest / f"model.{name}.onnx"
            start = time.perf_counter()
            with captured() as log:
                try:
                    export(path)
                    error = None
                except Exception as e:  # exporters raise many types; the message is what matters
                    error = e
            if error is None:
                yield Export(name, path, time.perf_counter() - start, log.getvalue())
            else:
                text = str(error) + "\n" + log.getvalue()
                yield ExportFailed(name, first_line(error), operator_in(text), log.getvalue())

    def native(self, dest: Path) -> dict[str, str]:
        if not self.cfg.model.torchscript:
            return {}
        name = "model.torchscript.pt"
        with captured():
            scripted = (self.module if isinstance(self.module, torch.jit.ScriptModule)
                        else torch.jit.trace(self.module, self._args(), check_trace=False))
        torch.jit.save(scripted, str(dest / name))
        return {"torchscript": name}


def _clamp(value: int, low: int, high: int | None) -> int:
    return max(low, value if high is None else min(value, high))


def _state_dict_in(obj: object) -> Mapping | None:
    """A state_dict, or one nested in a training checkpoint under a usual key."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in ("state_dict", "model_state_dict", "model_state", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    return None


def _flatten(out: object) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _flatten(item)]
    if isinstance(out, Mapping):
        return [t for item in out.values() for t in _flatten(item)]
    return [out]
