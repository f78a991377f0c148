"""The bundle: the one artifact that carries a model through the pipeline.

    <bundle>/model.onnx       the model every later step serves
    <bundle>/signature.json   input/output names, dtypes, shapes (names are symbolic dims)
    <bundle>/manifest.json    lineage: source hash, tool versions, git sha, each step's report
    <bundle>/<native export>  saved_model/, model.torchscript.pt, model.tflite when made

Every step opens the bundle, appends its report to the manifest and writes it back. This module is
the only code that reads or writes these files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mldeploy import __version__
from mldeploy.errors import UsageError

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
SIGNATURE_FILE = "signature.json"
MANIFEST_FILE = "manifest.json"
# Versions recorded in the manifest when installed (lineage, and the first thing to check in a bug).
TOOLS = ("numpy", "onnx", "onnxruntime", "torch", "onnxscript", "tensorflow", "tensorflow-cpu",
         "keras", "tf2onnx")

Dim = int | str | None  # a size, a symbolic name, or unknown


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))

    def shape_text(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass
class Signature:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch_dim: str | None = None  # the symbolic name of dim 0 shared by inputs, if any

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "batch_dim": self.batch_dim,
                "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Signature:
        return cls([TensorSpec.from_json(t) for t in d["inputs"]],
                   [TensorSpec.from_json(t) for t in d["outputs"]], d.get("batch_dim"))

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)


MODEL_WRITERS = ("convert", "optimize")  # the steps that write model.onnx


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (names and contents, in sorted order)."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():  # name and size first, so bytes cannot move across a file boundary unseen
            name = str(f.relative_to(p)).encode()
            h.update(len(name).to_bytes(8, "big") + name + f.stat().st_size.to_bytes(8, "big"))
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def tool_versions() -> dict[str, str]:
    found = {"mldeploy": __version__, "python": platform.python_version()}
    for name in TOOLS:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def git_info(where: str | os.PathLike) -> dict[str, Any] | None:
    """The commit the model came from: GITHUB_SHA in Actions, else `git` in the model's folder."""
    folder = Path(where)
    folder = folder if folder.is_dir() else folder.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=folder,
                                    capture_output=True, text=True, timeout=10, check=False).stdout.strip())
        return {"sha": sha, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        env_sha = os.environ.get("GITHUB_SHA")
        return {"sha": env_sha, "dirty": None} if env_sha else None


def last_step(steps: list[dict[str, Any]], name: str) -> int | None:
    """Where the last report of step `name` is in a manifest's steps; None if it never ran."""
    return next((i for i in range(len(steps) - 1, -1, -1) if steps[i].get("step") == name), None)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class Bundle:
    path: Path
    _manifest: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @classmethod
    def open(cls, path: str | os.PathLike) -> Bundle:
        """Open an existing bundle, with a clear error if `path` is not one."""
        p = Path(path)
        missing = [f for f in (MODEL_FILE, SIGNATURE_FILE, MANIFEST_FILE) if not (p / f).is_file()]
        if not p.is_dir() or missing:
            what = "does not exist" if not p.exists() else f"is not a bundle (missing {', '.join(missing)})"
            raise UsageError(f"{p} {what}", hint="run `mldeploy convert` first, or pass --bundle DIR")
        bundle = cls(p)
        try:
            _ = bundle.signature  # parses signature.json: a damaged one raises here
            version_found = bundle.manifest.get("schema_version")
            bundle.manifest["steps"]
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise UsageError(f"{p} is a damaged bundle ({type(e).__name__}: {e})",
                             hint="re-create it with `mldeploy convert`") from None
        if version_found != SCHEMA_VERSION:
            raise UsageError(f"{p}: manifest schema version {version_found!r} is not supported "
                             f"(this mldeploy reads version {SCHEMA_VERSION})",
                             hint="re-create the bundle with this mldeploy version")
        return bundle

    @property
    def signature(self) -> Signature:
        return Signature.from_json(json.loads((self.path / SIGNATURE_FILE).read_text()))

    def write_signature(self, signature: Signature) -> None:
        _write_json(self.path / SIGNATURE_FILE, signature.to_json())

    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            try:
                self._manifest = json.loads((self.path / MANIFEST_FILE).read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise UsageError(f"{self.path / MANIFEST_FILE} is unreadable: {e}") from None
        return self._manifest

    def start_manifest(self, source: dict[str, Any]) -> None:
        """A new manifest: where the model came from and what made the bundle."""
        self._manifest = {"schema_version": SCHEMA_VERSION, "created": now(), "source": source,
                          "git": git_info(source["path"]), "tools": tool_versions(), "steps": []}
        self.save_manifest()

    def add_step(self, step: str, report: dict[str, Any]) -> None:
        """Append one step's report (status, figures) to the lineage, and refresh the model hash."""
        self.manifest["steps"].append({"step": step, "at": now(), **report})
        if self.model_path.is_file():
            self.manifest["model"] = {"file": MODEL_FILE, "sha256": sha256_file(self.model_path),
                                      "bytes": self.model_path.stat().st_size}
        self.save_manifest()

    def fresh_step(self, step: str, key: str) -> dict[str, Any] | None:
        """The last `step` report if it passed, was made with `key`, and model.onnx is untouched since
        (no later step rewrote it, and its hash is the one recorded): re-running that step with the
        same inputs has nothing to do. Later steps that only read the model (build, baseline) do not
        make it stale."""
        steps = self.manifest.get("steps") or []
        at = last_step(steps, step)
        if at is None or any(s.get("step") in MODEL_WRITERS for s in steps[at + 1:]):
            return None
        last = steps[at]
        if last.get("status") != "passed" or last.get("key") != key:
            return None
        return last if self.manifest.get("model", {}).get("sha256") == sha256_file(self.model_path) else None

    def save_manifest(self) -> None:
        _write_json(self.path / MANIFEST_FILE, self.manifest)


@contextlib.contextmanager
def staged(out: str | os.PathLike) -> Iterator[Bundle]:
    """Build a bundle in a scratch folder beside `out`; it replaces `out` only if the block succeeds.

    On failure the attempt is kept at `<out>.rejected` for inspection and `out` is left as it was,
    so a failed step never destroys the last good bundle.
    """
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file())):
        raise UsageError(f"{out} exists and is not a bundle; it would be replaced",
                         hint="choose another --out folder (an empty or new one)")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    stage.chmod(0o755)  # mkdtemp makes it private; a bundle is read by docker builds and other users
    try:
        yield Bundle(stage)
    except BaseException:
        rejected = out.with_name(out.name + ".rejected")
        shutil.rmtree(rejected, ignore_errors=True)
        if any(stage.iterdir()):
            os.replace(stage, rejected)
        else:
            stage.rmdir()
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(out.with_name(out.name + ".rejected"), ignore_errors=True)
