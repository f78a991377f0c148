"""Tell a model file's framework and format from its name and first bytes (no framework imports)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from mldeploy.errors import UsageError

FRAMEWORKS = ("torch", "tensorflow", "onnx")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"  # the PROTO opcode that starts every pickle of protocol 2 and later
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def model_path(given: str | None) -> Path:
    if not given:
        raise UsageError("no model given", hint="pass MODEL or set model.path in mldeploy.yaml")
    return Path(given)


def detect(path: Path, framework: str = "auto") -> tuple[str, str]:
    """(framework, format) of the model at `path`; `framework` other than auto is trusted."""
    if not path.exists():
        raise UsageError(f"model {path} not found", hint="check model.path in mldeploy.yaml or the MODEL argument")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return _agree(path, framework, "tensorflow", "savedmodel")
        raise UsageError(f"{path} is a folder but not a TensorFlow SavedModel (no saved_model.pb)",
                         hint="pass a model file, or the SavedModel folder itself")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise UsageError(f"cannot read model {path}: {e.strerror}") from None
    if not head:
        raise UsageError(f"model {path} is empty (0 bytes)")
    if head.startswith(LFS_POINTER):
        raise UsageError(f"{path} is a Git LFS pointer, not the model itself",
                         hint="fetch it: git lfs pull, or actions/checkout with lfs: true")
    suffix = path.suffix.lower()
    is_zip = zipfile.is_zipfile(path)
    if head.startswith(ZIP_MAGIC) and not is_zip:
        raise UsageError(f"{path} is a damaged zip archive (truncated?)",
                         hint="save or download the model again, and check its size")
    if suffix == ".onnx":
        return _agree(path, framework, "onnx", "onnx")
    if suffix == ".keras":
        return _agree(path, framework, "tensorflow", "keras")
    if suffix in (".h5", ".hdf5") or head == HDF5_MAGIC:
        return _agree(path, framework, "tensorflow", "h5")
    if is_zip:
        return _agree(path, framework, "torch", _torch_zip_format(path))
    if suffix in (".pt", ".pth", ".bin", ".ckpt", ".pt2"):
        if head[:1] != PICKLE_MAGIC or suffix == ".pt2":
            raise UsageError(f"{path.name} is not a PyTorch file: neither a zip archive (torch.save, TorchScript, "
                             f".pt2) nor a pickle; it starts with {head[:16]!r}",
                             hint="save the model again with torch.save, torch.jit.save or torch.export.save")
        return _agree(path, framework, "torch", "pickle")  # torch.save's pre-1.6 (non-zip) format
    if framework != "auto":
        return framework, framework
    raise UsageError(f"cannot tell which framework made {path.name}",
                     hint="use .onnx, .pt/.pth, .pt2, .keras, .h5 or a SavedModel folder, "
                          "or pass --framework torch|tensorflow|onnx")


def _torch_zip_format(path: Path) -> str:
    try:
        names = zipfile.ZipFile(path).namelist()
    except zipfile.BadZipFile:
        raise UsageError(f"{path} looks like a zip archive but is corrupt", hint="re-save the model") from None
    if any(n.endswith("/archive_format") for n in names) or path.suffix.lower() == ".pt2":
        return "exported-program"
    if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("/data.pkl") for n in names):
        return "pickle"  # a state_dict or a whole pickled module; loading tells which
    raise UsageError(f"{path} is a zip archive but not a PyTorch model", hint="pass --framework if it is one")


def _agree(path: Path, framework: str, found: str, fmt: str) -> tuple[str, str]:
    if framework not in ("auto", found):
        raise UsageError(f"{path.name} is a {found} model ({fmt}), not {framework}",
                         hint=f"drop --framework or pass --framework {found}")
    return found, fmt
