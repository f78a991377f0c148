"""`mldeploy init`: scaffold a model repo (mldeploy.yaml, the starter workflows, a .gitignore entry).

Nothing that exists is overwritten: every file is checked before the first one is written.
The starter workflows ship inside the package (templates/workflows, a copy of the kit's workflows/
folder that a test keeps equal), so an installed wheel scaffolds what a checkout does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mldeploy.errors import UsageError

CONFIG_FILE = "mldeploy.yaml"
GITIGNORE_ENTRY = ".mldeploy/"
WORKFLOWS = ("pr-canary.yml", "release-production.yml", "promote.yml", "rollback.yml", "pr-closed.yml")
# What init looks for when no model is named: the formats detect() knows, at the top or one folder down.
MODEL_GLOBS = ("*.onnx", "*.pt", "*.pth", "*.pt2", "*.keras", "*.h5")
# The dtypes mldeploy.yaml accepts (config.Dtype); an input of another type is left to the model.
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Scaffold:
    """What init wrote, and what the user does next."""

    folder: Path
    written: list[Path] = field(default_factory=list)
    gitignore: str = "unchanged"  # created, appended or unchanged
    framework: str | None = None
    fmt: str | None = None
    todo: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)


def workflow_templates() -> dict[str, str]:
    """The starter workflows, by file name, from the package's own copy."""
    root = resources.files("mldeploy") / "templates" / "workflows"
    return {name: (root / name).read_text(encoding="utf-8") for name in WORKFLOWS}


def init(folder: Path, model: str | None = None) -> Scaffold:
    """Write mldeploy.yaml, .github/workflows/*.yml and the .gitignore entry into `folder`."""
    from mldeploy.convert.detect import detect

    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder", hint="create it first, or pass --dir an existing folder")
    done = Scaffold(folder)
    model_file = Path(model) if model else _find_model(folder)
    if model_file is not None:
        done.framework, done.fmt = detect(model_file)
    config_text = _config_text(folder, model_file, done)
    files = {folder / CONFIG_FILE: config_text}
    files.update({folder / ".github" / "workflows" / name: text for name, text in workflow_templates().items()})
    for path in files:
        if path.exists():
            raise UsageError(f"{path} already exists; init overwrites nothing",
                             hint="move it away, or edit it by hand")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as f:  # "x": a file that appeared meanwhile is not clobbered
            f.write(text)
        done.written.append(path)
    done.gitignore = _gitignore(folder / ".gitignore")
    done.next_steps = _next_steps(done)
    return done


def _find_model(folder: Path) -> Path | None:
    """The one model file in `folder` (or a folder below it), if there is exactly one."""
    found = {p for pattern in MODEL_GLOBS for p in (*folder.glob(pattern), *folder.glob(f"*/{pattern}"))
             if p.is_file() and ".mldeploy" not in p.parts}
    found |= {p.parent for p in (*folder.glob("saved_model.pb"), *folder.glob("*/saved_model.pb"))}
    return next(iter(found)) if len(found) == 1 else None


def _relative(folder: Path, path: Path) -> str:
    """`path` as mldeploy.yaml writes it: relative to the file's folder (paths there are read that way)."""
    try:
        return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return path.resolve().as_posix()


def _config_text(folder: Path, model_file: Path | None, done: Scaffold) -> str:
    lines = [
        "# yaml-language-server: $schema=https://raw.githubusercontent.com/acme/ml-deploy/v2/schema/mldeploy.schema.json",
        "# The config of this model repo (written by `mldeploy init`). Check it: mldeploy config validate",
        "# Every key and its default: mldeploy config schema, or docs/reference/config.md in acme/ml-deploy.",
        "version: 1",
    ]
    if model_file is None:
        done.todo.append("model.path")
        lines += ["# TODO model.path: the trained model (.onnx, .pt/.pth, .pt2, .keras, .h5 or a SavedModel folder),",
                  "# relative to this file; or pass it to `mldeploy convert MODEL`.",
                  "# model:",
                  "#   path: model/model.onnx"]
        done.todo.append("inputs")
        lines += _inputs_todo("no model was given, so its inputs are unknown")
    else:
        lines.append("model:")
        lines.append(f"  path: {_quote(_relative(folder, model_file))}   # {done.framework} ({done.fmt}), "
                     "relative to this file")
        if done.framework == "onnx":
            lines += _onnx_inputs(model_file)
        elif done.framework == "torch" and done.fmt in ("pickle", "torchscript"):
            if done.fmt == "pickle":
                done.todo.append("model.factory")
                lines += ["  # TODO model.factory: if this file is a state_dict (torch.save(model.state_dict())),",
                          "  # the function in this repo that builds the module, as MODULE:FUNCTION:",
                          "  # factory: my_model:build",
                          "  # (a whole pickled module instead needs `allow_pickle: true`: loading it runs its code)"]
            done.todo.append("inputs")
            lines += _inputs_todo(f"a PyTorch {done.fmt} file records no input shapes")
        else:
            lines += ["# inputs: read from the model when it converts (it records them). Declare them here only",
                      "# to pin names or shapes, e.g.:",
                      "#   - name: x",
                      "#     dtype: float32",
                      "#     shape: [batch, 3, 224, 224]"]
    lines += [
        "deploy:",
        "  cloud: local          # aws | gcp | azure: where the endpoint runs (docs: Deploy, the targets table)",
        "  canary_traffic: 10    # percent of traffic a pull request's canary takes",
        "",
    ]
    return "\n".join(lines)


def _inputs_todo(why: str) -> list[str]:
    return ["# TODO inputs: " + why + "; declare each input (`batch` is symbolic:",
            "# the endpoint takes any number of rows). Until then `mldeploy convert` stops and says so.",
            "# inputs:",
            "#   - name: x",
            "#     dtype: float32",
            "#     shape: [batch, 3, 224, 224]"]


def _onnx_inputs(path: Path) -> list[str]:
    """`inputs:` as the ONNX graph records them: names, dtypes, shapes, the first free dimension `batch`."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # a damaged file: convert would say the same, with more detail
        raise UsageError(f"cannot read ONNX model {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                         hint="export or download the model again") from None
    weights = {t.name for t in graph.initializer}
    out = ["inputs:               # read from the model's graph; a name is a symbolic dimension"]
    for v in graph.input:
        if v.name in weights:
            continue
        t = v.type.tensor_type
        dtype = _np_dtype(t.elem_type) if v.type.HasField("tensor_type") else None
        if dtype not in DTYPES or not t.HasField("shape"):
            why = f"input '{v.name}' has a type or shape that mldeploy.yaml cannot write"
            return [f"# inputs: read from the model when it converts ({why})"]
        dims: list[str] = []
        for i, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(str(d.dim_value))
            elif d.dim_param and NAME.fullmatch(d.dim_param):
                dims.append(d.dim_param)
            else:
                dims.append("batch" if i == 0 else f"{_name(v.name)}_dim{i}")
        out += [f"  - name: {_quote(v.name)}", f"    dtype: {dtype}", f"    shape: [{', '.join(dims)}]"]
    return out if len(out) > 1 else []


def _np_dtype(elem_type: int) -> str | None:
    import numpy as np
    import onnx

    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name)
    except Exception:
        return None


def _name(text: str) -> str:
    cleaned = re.sub(r"\W", "_", text)
    return cleaned if NAME.fullmatch(cleaned) else f"x_{cleaned}"


def _quote(text: str) -> str:
    """A YAML scalar: plain when it is safely one, else single-quoted."""
    if re.fullmatch(r"[A-Za-z0-9_./-][A-Za-z0-9_./ -]*", text) and not text.endswith(" ") and text.lower() not in (
            "true", "false", "yes", "no", "on", "off", "null", "~") and not re.fullmatch(r"[-+.\d_eE]+", text):
        return text
    return "'" + text.replace("'", "''") + "'"


def _gitignore(path: Path) -> str:
    """Add `.mldeploy/` (the local bundle and state) to .gitignore, once."""
    if not path.exists():
        path.write_text(f"# mldeploy's local bundle and state\n{GITIGNORE_ENTRY}\n", encoding="utf-8")
        return "created"
    text = path.read_text(encoding="utf-8")
    entries = {line.strip() for line in text.splitlines()}
    if entries & {GITIGNORE_ENTRY, ".mldeploy", "/.mldeploy", "/.mldeploy/"}:
        return "unchanged"
    sep = "" if not text or text.endswith("\n") else "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{sep}# mldeploy's local bundle and state\n{GITIGNORE_ENTRY}\n")
    return "appended"


def _next_steps(done: Scaffold) -> list[str]:
    where = "" if done.folder.resolve() == Path.cwd().resolve() else f"cd {done.folder} && "
    convert = f"{where}mldeploy convert"
    if done.todo:
        convert += f"   # after filling in the TODOs in {CONFIG_FILE}: {', '.join(done.todo)}"
    else:
        convert += "   # writes .mldeploy/bundle (the ONNX model, parity-checked)"
    return [
        f"{where}mldeploy config validate",
        convert,
        (f"{where}mldeploy run   # the whole pipeline on a local Docker engine (deploy.cloud: local); then "
         "commit these files and `mldeploy rehearse` runs pr-canary.yml under act as a pull request would "
         "(--event release: the release tag's), before you push"),
    ]
