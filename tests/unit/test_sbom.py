"""The image's SBOM: every Python package the template installs, with the version and the wheel's hash."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version

from tests.helpers.models import linear_graph, save_bundle
from tests.helpers.need import need

need("jinja2", "the image extra installs it")
need("uvloop", "the serve extra installs it")

from mldeploy.bundle import Bundle  # noqa: E402
from mldeploy.image import RUNTIME, make_context  # noqa: E402


def test_the_sbom_lists_exactly_the_wheels_in_the_image(tmp_path):
    bundle = Bundle.open(save_bundle(linear_graph(), tmp_path / "model"))
    context = tmp_path / "context"
    context.mkdir()
    make_context(bundle, "python:3.11-slim", None, context)
    sbom_file = bundle.path / "sbom.cdx.json"
    doc = json.loads(sbom_file.read_text())
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5"
    found = {c["name"]: c for c in doc["components"]}
    for name in RUNTIME:
        assert found[name.lower()]["version"] == version(name), name
        assert found[name.lower()]["purl"] == f"pkg:pypi/{name.lower()}@{version(name)}"
    assert "mldeploy" in found and "torch" not in found and "tensorflow" not in found
    wheels = {w.name.split("-")[0].lower().replace("_", "-"): w for w in (context / "wheels").glob("*.whl")}
    assert set(wheels) == set(found)
    for name, wheel in wheels.items():
        assert found[name]["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(wheel.read_bytes()).hexdigest()}]

    before = sbom_file.stat().st_mtime_ns
    again = tmp_path / "again"
    again.mkdir()
    make_context(bundle, "python:3.11-slim", None, again)
    assert sbom_file.stat().st_mtime_ns == before  # same wheels, same file: not rewritten
