"""A CycloneDX SBOM of the serving image's Python packages, made from the very wheels installed in it.

Written into the bundle as sbom.cdx.json (the bundle travels with the image's digest), so a scanner
or an auditor sees exactly which versions and files serve the model. The base image's own OS
packages are not listed: scan the image for those.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from mldeploy import __version__

SBOM_FILE = "sbom.cdx.json"


def _component(wheel: Path) -> dict[str, object]:
    # a wheel's file name is {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl
    dist, version = wheel.name.split("-")[:2]
    name = re.sub(r"[-_.]+", "-", dist).lower()
    purl = f"pkg:pypi/{name}@{version}"
    return {"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl,
            "hashes": [{"alg": "SHA-256", "content": hashlib.sha256(wheel.read_bytes()).hexdigest()}]}


def cyclonedx(wheels: list[Path], image_name: str) -> dict[str, object]:
    """The document; no timestamp or serial number, so the same wheels give the same file."""
    return {
        "bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
        "metadata": {"tools": {"components": [{"type": "application", "name": "mldeploy", "version": __version__}]},
                     "component": {"type": "container", "bom-ref": image_name, "name": image_name}},
        "components": [_component(w) for w in sorted(wheels, key=lambda w: w.name.lower())],
    }
