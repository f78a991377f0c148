"""Baseline statistics of a model's reference inputs and of its outputs on them (baseline.json).

The format ("mldeploy-baseline/1", /work/notes/baseline-format.md) is the contract between
`mldeploy monitor baseline`, `monitor drift`, `monitor setup` and canary analysis. Every tensor
is cut into per-row features the same way for the reference data here and for captured traffic
in drift.py (`columns`), so that both sides always compare the same numbers:

  [batch]                    one feature, named after the tensor
  [batch, n], [batch, a, b]  one feature per value: x[0] .. x[n-1] (row-major index), up to 64
  more than 64 per row       x:mean and x:std of each row (images, sequences)
  float [batch, k>=2] output also out:argmax, categorical (the predicted class)

Integer and bool tensors with <= 20 distinct values in the reference data, and strings, are
categorical (frequencies by value); everything else is numeric (moments, quantiles, a histogram
on fixed quantile edges, and a sample for the Kolmogorov-Smirnov test).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mldeploy.bundle import SIGNATURE_FILE, Bundle, Signature, _write_json, now, sha256_file
from mldeploy.errors import UsageError

FORMAT = "mldeploy-baseline/1"
FILE = "baseline.json"
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
MAX_PER_ROW = 64          # more values per row than this: summarized as :mean and :std
MAX_CATEGORIES = 20       # integer/bool features with at most this many distinct values are categorical
TOP_CATEGORIES = 50       # categories kept by name; the rest pool into OTHER
OTHER = "__other__"
SAMPLE = 1000             # reference values kept per numeric feature for the KS test
PREDICT_BATCH = 1024


# -- cutting tensors into features -------------------------------------------------------------------
def columns(name: str, arr: np.ndarray) -> list[tuple[str, int | None, np.ndarray]]:
    """(feature name, index, one value per row) for a tensor whose dim 0 counts rows."""
    if arr.ndim == 1:
        return [(name, None, arr)]
    flat = arr.reshape(arr.shape[0], -1)
    width = flat.shape[1]
    if width <= MAX_PER_ROW:
        return [(f"{name}[{i}]", i, flat[:, i]) for i in range(width)]
    if arr.dtype.kind in "OUSb":  # strings and flags of a long row have no meaningful mean
        return []
    wide = flat.astype(np.float64)
    with np.errstate(invalid="ignore"):
        return [(f"{name}:mean", None, wide.mean(axis=1)), (f"{name}:std", None, wide.std(axis=1))]


def output_columns(name: str, arr: np.ndarray) -> list[tuple[str, int | None, np.ndarray]]:
    """An output's features; a classifier's scores also give the predicted class."""
    from mldeploy.optimize.evaluate import is_classification

    found = columns(name, arr)
    if is_classification(arr):
        found.append((f"{name}:argmax", None, arr.argmax(axis=1)))
    return found


def category_keys(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values as the strings baseline.json keys them by, their counts)."""
    if values.dtype.kind == "O":
        values = values.astype(str)
    distinct, counts = np.unique(values, return_counts=True)
    if values.dtype.kind == "b":
        keys = np.where(distinct, "true", "false")
    elif values.dtype.kind in "iu":
        keys = distinct.astype(np.int64).astype(str)
    else:
        keys = distinct.astype(str)
    return keys, counts


def bin_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts per bin of fixed edges; the outer bins are open-ended, so nothing falls outside."""
    inner = np.asarray(edges[1:-1], dtype=np.float64)
    return np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(edges) - 1)


def finite(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[np.isfinite(v)]


# -- statistics of one feature ----------------------------------------------------------------------
def is_categorical(values: np.ndarray) -> bool:
    kind = values.dtype.kind
    return kind in "OUS" or (kind in "biu" and len(np.unique(values)) <= MAX_CATEGORIES)


def numeric_stats(values: np.ndarray, bins: int, rng: np.random.Generator) -> dict[str, Any]:
    good = finite(values)
    stats: dict[str, Any] = {"kind": "numeric", "count": len(values), "missing": int(len(values) - len(good))}
    if not len(good):
        return {**stats, "mean": None, "std": None, "min": None, "max": None, "quantiles": {},
                "histogram": None, "sample": []}
    edges = np.unique(np.quantile(good, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant: one bin around it
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    sample = good if len(good) <= SAMPLE else rng.choice(good, SAMPLE, replace=False)
    return {**stats, "mean": float(good.mean()), "std": float(good.std()), "min": float(good.min()),
            "max": float(good.max()),
            "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, np.quantile(good, QUANTILES))},
            "histogram": {"edges": [float(e) for e in edges], "counts": bin_counts(good, list(edges)).tolist()},
            "sample": [float(v) for v in np.sort(sample)]}


def categorical_stats(values: np.ndarray) -> dict[str, Any]:
    keys, counts = category_keys(values)
    order = np.argsort(-counts, kind="stable")
    total = int(counts.sum())
    top = {str(keys[i]): int(counts[i]) / total for i in order[:TOP_CATEGORIES]}
    rest = int(counts[order[TOP_CATEGORIES:]].sum())
    if rest:
        top[OTHER] = rest / total
    return {"kind": "categorical", "count": len(values), "missing": 0, "categories": top}


def describe(features: Iterable[tuple[str, str, int | None, np.ndarray]], bins: int, seed: int = 0) -> list[dict]:
    """Statistics of (feature, tensor, index, values) columns, in the format's feature objects."""
    rng = np.random.default_rng(seed)
    out = []
    for name, tensor, index, values in features:
        stats = categorical_stats(values) if is_categorical(values) else numeric_stats(values, bins, rng)
        out.append({"name": name, "input": tensor, "index": index, **stats})
    return out


# -- the baseline of a bundle -----------------------------------------------------------------------
def signature_sha256(bundle: Bundle) -> str:
    return sha256_file(bundle.path / SIGNATURE_FILE)


def predict(bundle: Bundle, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's outputs on the reference data, in batches (a fixed batch size is respected)."""
    from mldeploy.data import rows
    from mldeploy.optimize.evaluate import run_batched, session, threads

    signature = bundle.signature
    n = len(next(iter(arrays.values())))
    fixed = next((s.shape[0] for s in signature.inputs if isinstance(s.shape[0], int)), None)
    batch = fixed or PREDICT_BATCH
    feed = rows(arrays, math.ceil(n / batch) * batch) if fixed else arrays  # pad a fixed batch, then trim
    try:
        outputs = run_batched(session(bundle.model_path, threads(None)), feed, batch)
    except Exception as e:  # ONNX Runtime's own error types: the data does not suit the model
        raise UsageError(f"the model could not run on the reference data: {str(e).splitlines()[0][:300]}") from None
    return {spec.name: out[:n] for spec, out in zip(signature.outputs, outputs) if out.ndim >= 1 and len(out) >= n}


def input_features(signature: Signature, arrays: dict[str, np.ndarray]
                   ) -> Iterator[tuple[str, str, int | None, np.ndarray]]:
    for spec in signature.inputs:
        for name, index, values in columns(spec.name, arrays[spec.name]):
            yield name, spec.name, index, values


def prediction_features(outputs: dict[str, np.ndarray]) -> Iterator[tuple[str, str, int | None, np.ndarray]]:
    for tensor, arr in outputs.items():
        for name, index, values in output_columns(tensor, arr):
            yield name, tensor, index, values


def compute(bundle: Bundle, data: str | os.PathLike[str], bins: int = 10) -> dict[str, Any]:
    """The baseline of the bundle's model on the reference inputs in `data` (.npz, .npy, .jsonl)."""
    from mldeploy.data import load
    from mldeploy.image import _model_name

    signature = bundle.signature
    arrays = load(os.fspath(data), signature.inputs)
    return {
        "format": FORMAT, "created": now(), "model": _model_name(bundle),
        "signature_sha256": signature_sha256(bundle),
        "model_sha256": bundle.manifest.get("model", {}).get("sha256"),
        "source": {"data": str(data), "data_sha256": sha256_file(data), "bins": bins},
        "records": len(next(iter(arrays.values()))),
        "features": describe(input_features(signature, arrays), bins),
        "predictions": describe(prediction_features(predict(bundle, arrays)), bins),
    }


def up_to_date(path: Path, bundle: Bundle, data: str | os.PathLike, bins: int) -> dict[str, Any] | None:
    """The baseline at `path` if it was made from this very data, model, signature and bins."""
    try:
        found = load(path)
    except UsageError:
        return None
    same = (found.get("source", {}).get("data_sha256") == sha256_file(data)
            and found.get("source", {}).get("bins") == bins
            and found.get("signature_sha256") == signature_sha256(bundle)
            and found.get("model_sha256") == bundle.manifest.get("model", {}).get("sha256"))
    return found if same else None


def create(bundle_dir: str | os.PathLike, data: str | os.PathLike, *, bins: int = 10,
           out: str | os.PathLike | None = None, force: bool = False) -> tuple[dict[str, Any], Path, bool]:
    """Compute and write the baseline: into the bundle (and its manifest), or to `out` alone.
    Returns (baseline, where it is, whether it was written; False: already up to date)."""
    bundle = Bundle.open(bundle_dir)
    if not Path(data).is_file():
        raise UsageError(f"reference data {data} not found", hint="pass --data FILE (.npz, .npy or .jsonl)")
    path = Path(out) if out else bundle.path / FILE
    if not force and (found := up_to_date(path, bundle, data, bins)):
        return found, path, False
    baseline = compute(bundle, data, bins)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, baseline)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    if not out:
        bundle.add_step("baseline", {"status": "passed", "file": FILE, "sha256": sha256_file(path),
                                     "records": baseline["records"], "data": str(data),
                                     "data_sha256": baseline["source"]["data_sha256"], "bins": bins,
                                     "features": len(baseline["features"]),
                                     "predictions": len(baseline["predictions"])})
    return baseline, path, True


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a baseline.json; UsageError (exit 2) naming what is wrong."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"baseline {p} not found", hint="run `mldeploy monitor baseline --data FILE` first") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"baseline {p} is unreadable: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise UsageError(f"{p} is not a baseline of format {FORMAT} (found {found!r})",
                         hint="make it again with this mldeploy: `mldeploy monitor baseline`")
    for key, kind in (("signature_sha256", str), ("features", list), ("predictions", list), ("records", int)):
        if not isinstance(doc.get(key), kind):
            raise UsageError(f"{p} is a damaged baseline: '{key}' is missing or not a {kind.__name__}")
    for feature in [*doc["features"], *doc["predictions"]]:
        ok = isinstance(feature, dict) and isinstance(feature.get("name"), str) and (
            (feature.get("kind") == "categorical" and isinstance(feature.get("categories"), dict))
            or (feature.get("kind") == "numeric" and "histogram" in feature and "sample" in feature))
        if not ok:
            raise UsageError(f"{p} is a damaged baseline: feature {str(feature)[:80]} is incomplete")
    return doc


def table(baseline: dict[str, Any]) -> str:
    """A compact text table of the baseline, for the terminal."""
    lines = [f"{'feature':<24} {'kind':<11} {'count':>7} {'missing':>7}  summary"]
    for section in ("features", "predictions"):
        for f in baseline[section]:
            if f["kind"] == "numeric":
                summary = ("no finite values" if f["mean"] is None else
                           f"mean {f['mean']:.4g}  std {f['std']:.4g}  min {f['min']:.4g}  max {f['max']:.4g}")
            else:
                top = sorted(f["categories"].items(), key=lambda kv: -kv[1])[:4]
                summary = "  ".join(f"{k}: {v:.0%}" for k, v in top) + (" ..." if len(f["categories"]) > 4 else "")
            name = ("-> " if section == "predictions" else "") + f["name"]
            lines.append(f"{name:<24} {f['kind']:<11} {f['count']:>7} {f['missing']:>7}  {summary}")
    return "\n".join(lines)

