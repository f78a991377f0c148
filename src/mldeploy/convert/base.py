"""What every source framework provides to the converter, and helpers they share."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mldeploy.bundle import TensorSpec
from mldeploy.config import InputSpec
from mldeploy.errors import UsageError

Arrays = dict[str, np.ndarray]


@dataclass
class Export:
    """One exporter's attempt that produced an ONNX file."""

    exporter: str
    path: Path
    seconds: float
    log: str = ""


@dataclass
class ExportFailed:
    """One exporter's attempt that raised; `operator` names the op it could not handle, if known."""

    exporter: str
    message: str
    operator: str | None = None
    log: str = ""


class Source:
    """A loaded model in its own framework: it runs inputs and exports itself to ONNX."""

    framework: str
    format: str
    inputs: list[TensorSpec]
    output_names: list[str]
    warnings: list[str] = []  # noqa: RUF012  (a default, replaced per instance) what the source noticed while loading or running (never mutated here)
    dim_sizes: dict[str, int] = {}  # noqa: RUF012  (as above) example sizes of named dims the model needs (within its constraints)
    batch_range: tuple[int, int | None] = (1, None)  # the batch sizes the model accepts

    def run(self, arrays: Arrays) -> list[np.ndarray]:
        """The source framework's outputs for these inputs, in `output_names` order."""
        raise NotImplementedError

    def fallback(self, batches: dict[int, Arrays]) -> dict[int, list[np.ndarray]] | None:
        """A second reference to judge by when the first disagrees with every export, if the source has one."""
        return None

    def exports(self, dest: Path, opset: int) -> Iterator[Export | ExportFailed]:
        """Export attempts in order of preference; the converter keeps the first that passes parity."""
        raise NotImplementedError

    def native(self, dest: Path) -> dict[str, str]:
        """Write native copies asked for in config into `dest`; returns {kind: file name}."""
        return {}


@contextlib.contextmanager
def captured() -> Iterator[io.StringIO]:
    """Collect what exporters print, from Python and from C++ (TensorFlow, ONNX Runtime) alike.

    They are chatty; the log is kept so it can be shown in a folded group or with --debug.
    """
    buf = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield buf
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            buf.write(tmp.read().decode("utf-8", errors="replace"))


def first_line(exc: BaseException) -> str:
    """The line of an error message that says what went wrong (torch.onnx puts it under a heading)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
        text = re.sub(r"^\s*<class '[\w.]+'>:\s*", "", text)
    text = _ORT_BOILERPLATE.sub("", text)
    text = re.sub(r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)' Status Message: ",
                  r"\1 node '\2': ", text)
    text = re.sub(r"/onnxruntime_src/\S+ \S+ ", "", text)  # ORT's own source file and function
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # "Graph execution error:" says nothing alone
        line = f"{lines[0]} {lines[1]}"
    else:
        line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= FIRST_LINE_MAX else line[:FIRST_LINE_MAX - 3] + "..."


FIRST_LINE_MAX = 160  # with our own words around it, an error stays one line of at most 300 characters
_ORT_BOILERPLATE = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : ")


def importable_cwd() -> None:
    """Model code (factories, custom objects, pickled classes) is imported from the model repo: the working directory."""
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def import_object(spec: str, kind: str, root: Path | None = None) -> Any:
    """`package.module:name` from the model repo; whatever its import raises is the user's error. `root`
    is the folder it is imported from (Config.import_root: the config file's folder when the file names
    it, else the working directory, the default)."""
    import importlib

    module_name, name = spec.split(":")
    where = Path(root).resolve() if root is not None else Path.cwd()
    if str(where) in sys.path:
        sys.path.remove(str(where))
    sys.path.insert(0, str(where))  # first: a module of the same name elsewhere on the path does not win
    importlib.invalidate_caches()
    try:
        return getattr(importlib.import_module(module_name), name)
    except BaseException as e:  # the model repo's code: SystemExit and KeyboardInterrupt are its errors too
        raise UsageError(f"cannot import {kind} {spec}: {type(e).__name__}: {first_line(e)}",
                         hint=f"the {kind} is imported from {where}: the config file's folder when the file "
                              "names it, the working directory when a flag or variable does") from None


def resolve_inputs(found: list[TensorSpec] | None, declared: list[InputSpec], *,
                   where: str) -> list[TensorSpec]:
    """Input specs: the model's own, checked against (and named by) those declared in config."""
    decl = [TensorSpec(i.name, i.dtype, tuple(i.shape)) for i in declared]
    if found is None:
        if not decl:
            raise UsageError(f"{where} does not record its input shapes",
                             hint="declare them under `inputs:` in mldeploy.yaml or with "
                                  "--input NAME:DTYPE:DIMS, e.g. --input x:float32:batch,3,224,224")
        return decl
    if not decl:
        return found
    names_found = [t.name for t in found]
    names_decl = [t.name for t in decl]
    if sorted(names_found) != sorted(names_decl):
        raise UsageError(f"declared inputs {names_decl} do not match the model's inputs {names_found}",
                         hint="fix `inputs:` in mldeploy.yaml, or remove it to use the model's own")
    out = []
    for model_spec in found:
        d = next(t for t in decl if t.name == model_spec.name)
        fixed_clash = len(d.shape) != len(model_spec.shape) or any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(d.shape, model_spec.shape))
        if fixed_clash or d.dtype != model_spec.dtype:
            raise UsageError(f"input '{d.name}' declared {d.dtype} {d.shape_text()}, but the model takes "
                             f"{model_spec.dtype} {model_spec.shape_text()}",
                             hint="fix `inputs:` in mldeploy.yaml, or remove it to use the model's own")
        out.append(d)
    return out


def operator_in(text: str) -> str | None:
    """The operator an exporter error names, e.g. `aten::unfold` or `mylib.custom`."""
    for pattern in (r"OpOverload\(op='([\w.:]+)'", r"operator '?([\w]+::[\w.]+)'?",
                    r"namespace ([\w]+::[\w.]+)", r"op \[?[\w/:]*: ?(\w+)\]? is not supported",
                    r"Tensorflow op \[[^\]]*: (\w+)\]", r"No Op registered for (\w+)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def unknown_operator(message: str) -> tuple[str, str] | None:
    """(operator, domain) that ONNX Runtime or the checker says it does not know, if that is the error."""
    if m := re.search(r"([\w.]*):(\w+)\(-?\d+\) is not a registered function/op", message):
        return m.group(2), m.group(1) or "ai.onnx"
    if m := re.search(r"Could not find an implementation for (\w+)\(\d+\)|No Op registered for (\w+) with", message):
        return m.group(1) or m.group(2), "ai.onnx"
    return None
