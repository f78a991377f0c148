"""Monitoring inputs: a baseline (mldeploy-baseline/1) as `mldeploy monitor baseline` writes it, and
a converted two-input model with reference data for it."""

from __future__ import annotations

import numpy as np

from tests.helpers.models import save_bundle, two_io_graph

N = 4000
SAMPLE = [round(-1 + 0.002 * i, 3) for i in range(1000)]


def baseline() -> dict:
    return {
        "format": "mldeploy-baseline/1", "created": "2026-12-01T03:00:00Z", "model": "classifier",
        "signature_sha256": "0" * 64, "records": 4000,
        "features": [
            {"name": "x[0]", "input": "x", "index": 0, "kind": "numeric", "count": 4000, "missing": 40,
             "mean": 0.1, "std": 1.0, "min": -3.2, "max": 3.1,
             "quantiles": {"0.5": 0.1}, "histogram": {"edges": [-3.2, -1.0, 0.0, 1.0, 3.1], "counts": [500, 1500, 1500, 460]},
             "sample": SAMPLE},
            {"name": "age", "input": "age", "index": None, "kind": "numeric", "count": 4000, "missing": 0,
             "mean": 41.5, "std": 12.0, "min": 18.0, "max": 90.0, "quantiles": {},
             "histogram": {"edges": [18.0, 50.0, 90.0], "counts": [3000, 1000]}, "sample": [18, 30, 41, 90]},
            {"name": "color", "input": "color", "index": None, "kind": "categorical", "count": 4000, "missing": 0,
             "categories": {"0": 0.5, "1": 0.3, "2": 0.2}},
            {"name": "city", "input": "city", "index": None, "kind": "categorical", "count": 4000, "missing": 400,
             "categories": {"paris": 0.6, "rome": 0.3, "__other__": 0.1}},
            {"name": "tier", "input": "tier", "index": None, "kind": "categorical", "count": 4000, "missing": 0,
             "categories": {"gold": 0.25, "silver": 0.75}},
        ],
        "predictions": [],
    }


def reference(folder):
    """A converted bundle in `folder` and reference data for it: x ~ N(0, 1) [batch, 4], k uniform
    over 0..4 [batch, 1], in ref.npz. Returns (bundle, ref.npz, x, k)."""
    bundle = save_bundle(two_io_graph(), folder)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N, 4)).astype(np.float32)
    k = rng.integers(0, 5, size=(N, 1))
    np.savez(folder / "ref.npz", x=x, k=k)
    return bundle, folder / "ref.npz", x, k
