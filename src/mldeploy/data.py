"""Model inputs for checks: loaded from the user's file (.npz, .npy, .jsonl) or generated.

Every array is checked against the signature (name, dtype kind, rank, fixed sizes) so that a
mismatch is reported by input name with both shapes, before any model runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mldeploy.bundle import TensorSpec
from mldeploy.errors import UsageError

Arrays = dict[str, np.ndarray]
DEFAULT_DIM = 8  # size used for a symbolic non-batch dimension that has no example size


def concrete_shape(spec: TensorSpec, batch: int, dim_sizes: Mapping[str, int] | None = None,
                   batch_names: frozenset[str] = frozenset()) -> tuple[int, ...]:
    """The spec's shape with the batch (dim 0, if not fixed, and any dim named like a dim 0 in
    `batch_names`: an RNN state's [layers, batch, hidden]) and other symbolic dims made concrete."""
    dims = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int):
            dims.append(d)
        elif i == 0 or d in batch_names:
            dims.append(batch)
        else:
            dims.append((dim_sizes or {}).get(d, DEFAULT_DIM) if d else DEFAULT_DIM)
    return tuple(dims)


def generate(specs: list[TensorSpec], batch: int, *, seed: int = 0,
             dim_sizes: Mapping[str, int] | None = None,
             ranges: Mapping[str, tuple[float, float]] | None = None) -> Arrays:
    """Random inputs that fit the specs: normal floats, small non-negative ints, or values in a range."""
    rng = np.random.default_rng(seed)
    out: Arrays = {}
    batch_names = frozenset(s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str))
    for spec in specs:
        shape = concrete_shape(spec, batch, dim_sizes, batch_names)
        dtype = np.dtype(spec.dtype)
        low_high = (ranges or {}).get(spec.name)
        if dtype.kind == "b":
            out[spec.name] = rng.random(shape) < 0.5
        elif dtype.kind in "iu":
            low, high = low_high or (0, 10)
            out[spec.name] = rng.integers(int(low), max(int(high), int(low) + 1), size=shape).astype(dtype)
        elif low_high:
            out[spec.name] = rng.uniform(low_high[0], low_high[1], size=shape).astype(dtype)
        else:
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
    return out


def load(path: str | Path, specs: list[TensorSpec]) -> Arrays:
    """Read sample inputs from a file and check them against the specs."""
    return check(_read(Path(path), specs), specs, source=str(path))


def specs_from(path: str | Path, names: list[str]) -> list[TensorSpec]:
    """Input specs read off a sample file, for a model that does not record its own: dim 0 is the batch,
    the other dims are the sample's sizes; floats are float32 (what JSON's numbers and float64 arrays mean)."""
    arrays = _read(Path(path), [TensorSpec(n, "float32", ()) for n in names])
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UsageError(f"{path} has no array for input '{missing[0]}' (found: {', '.join(sorted(arrays)) or 'nothing'})")
    specs = []
    for name in names:
        a = np.asarray(arrays[name])
        if a.ndim == 0 or a.size == 0:
            raise UsageError(f"{path}: input '{name}' is empty or a scalar", hint="give rows of examples")
        dtype = "float32" if a.dtype.kind == "f" and a.dtype != np.float16 else a.dtype.name
        specs.append(TensorSpec(name, dtype, ("batch", *a.shape[1:])))
    return specs


def _read(p: Path, specs: list[TensorSpec]) -> Arrays:
    if not p.is_file():
        raise UsageError(f"sample file {p} not found", hint="fix parity.sample / --sample")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npz":
            loaded = np.load(p, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise UsageError(f"{p} holds a single array, not an .npz archive",
                                 hint="save inputs with np.savez(file, name=array), or name a single array .npy")
            with loaded as z:
                arrays = {k: z[k] for k in z.files}
        elif suffix == ".npy":
            if len(specs) != 1:
                raise UsageError(f"{p}: a .npy file holds one array but the model has "
                                 f"{len(specs)} inputs", hint="use .npz with one array per input name")
            arrays = {specs[0].name: np.load(p, allow_pickle=False)}
        elif suffix in (".jsonl", ".ndjson"):
            arrays = _load_jsonl(p, specs)
        else:
            raise UsageError(f"{p}: unknown sample format {suffix or '(no suffix)'}",
                             hint="use .npz (one array per input), .npy (one input) or .jsonl")
    except (OSError, ValueError) as e:
        raise UsageError(f"{p}: cannot read sample inputs: {e}") from None
    return arrays


def _load_jsonl(p: Path, specs: list[TensorSpec]) -> Arrays:
    rows: dict[str, list] = {s.name: [] for s in specs}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"invalid JSON: {e.msg}", file=str(p), line=n) from None
        if not isinstance(record, dict):
            if len(specs) != 1:
                raise UsageError("each line must be an object {input name: value}", file=str(p), line=n)
            record = {specs[0].name: record}
        for s in specs:
            if s.name not in record:
                raise UsageError(f"no value for input '{s.name}'", file=str(p), line=n)
            rows[s.name].append(record[s.name])
    return {name: np.asarray(values) for name, values in rows.items()}


def check(arrays: Mapping[str, np.ndarray], specs: list[TensorSpec], *, source: str) -> Arrays:
    """Match arrays to specs by name; cast within a dtype kind; reject wrong ranks and sizes."""
    out: Arrays = {}
    for spec in specs:
        if spec.name not in arrays:
            raise UsageError(f"{source} has no array for input '{spec.name}' "
                             f"(found: {', '.join(sorted(arrays)) or 'nothing'})")
        a = np.asarray(arrays[spec.name])
        want = np.dtype(spec.dtype)
        if a.size == 0 or a.ndim == 0:
            raise UsageError(f"{source}: input '{spec.name}' is empty", hint="give at least one example")
        if a.dtype != want:
            same_kind = (a.dtype.kind in "iu" and want.kind in "iu") or (a.dtype.kind in "fiu" and want.kind == "f")
            if not same_kind:
                raise UsageError(f"{source}: input '{spec.name}' has dtype {a.dtype}, the model expects {want}")
            a = a.astype(want)
        # dim 0 counts examples, even where the model takes a fixed batch of them
        fits = len(a.shape) == len(spec.shape) and all(
            not isinstance(d, int) or d == n for d, n in zip(spec.shape[1:], a.shape[1:]))
        if not fits:
            raise UsageError(f"{source}: input '{spec.name}' has shape {list(a.shape)}, "
                             f"the model expects {spec.shape_text()}")
        out[spec.name] = a
    counts = {name: len(a) for name, a in out.items()}
    if len(set(counts.values())) > 1:
        raise UsageError(f"{source}: inputs have different numbers of rows ({counts})",
                         hint="give every input the same number of examples")
    return out


def rows(arrays: Arrays, n: int) -> Arrays:
    """The first n rows of every input, repeating rows when the sample has fewer."""
    out: Arrays = {}
    for name, a in arrays.items():
        idx = np.arange(n) % a.shape[0]
        out[name] = a[idx]
    return out


def load_labels(path: str | Path, key: str, count: int) -> np.ndarray | None:
    """Optional labels beside the inputs: the `key` array of an .npz, or `key` on every .jsonl line."""
    p = Path(path)
    if p.suffix.lower() == ".npz":
        with np.load(p, allow_pickle=False) as z:
            labels = z[key] if key in z.files else None
    elif p.suffix.lower() in (".jsonl", ".ndjson"):
        records = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        has = [isinstance(r, dict) and key in r for r in records]
        labels = np.asarray([r[key] for r in records]) if records and all(has) else None
    else:
        labels = None
    if labels is not None and len(labels) != count:
        raise UsageError(f"{p}: '{key}' has {len(labels)} rows but the inputs have {count}")
    return labels
