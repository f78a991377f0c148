"""`mldeploy build`'s wheel cache is not trusted: any earlier job on a persistent runner could have
written it. A runtime wheel is used only when its sha256 is one runtime.lock (shipped in the package)
lists, and a cached build of the kit only when it holds exactly the kit's source; anything else is
removed, fetched or built again, and never reaches the image or its SBOM."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.helpers.models import linear_graph, save_bundle
from tests.helpers.need import need
from tests.helpers.paths import ROOT

need("jinja2", "the image extra installs it")

import mldeploy.image as image  # noqa: E402
from mldeploy.bundle import Bundle  # noqa: E402

PACKAGE = ROOT / "src" / "mldeploy"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewritten(wheel: Path, to: Path, change) -> Path:
    """A copy of wheel at `to`, its members passed through change(name, data) -> [(name, data)]."""
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(to, "w") as out:
        for info in src.infolist():
            for name, data in change(info.filename, src.read(info)):
                out.writestr(name, data)
    return to


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A cache holding the locked runtime wheels and a build of this source, filled once."""
    cache = tmp_path_factory.mktemp("wheel-cache")
    default = Path.home() / ".cache" / "mldeploy" / "wheels"
    for name, (ver, hashes) in image.locked().items():  # reuse what this machine fetched, if it is right
        for wheel in default.glob(f"{name}-{ver}-*.whl"):
            if sha256(wheel) in hashes:
                shutil.copy2(wheel, cache / wheel.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(image, "WHEEL_CACHE", cache)
        image.runtime_wheels(tmp_path_factory.mktemp("context"))
    return cache


@pytest.fixture
def cache(good, tmp_path, monkeypatch):
    copy = shutil.copytree(good, tmp_path / "cache")
    monkeypatch.setattr(image, "WHEEL_CACHE", copy)
    return copy


def test_the_lock_pins_the_tested_runtime():
    pins = image.locked()
    assert set(pins) == set(image.RUNTIME)
    constraints = {name.replace("_", "-"): ver for name, ver in (  # names as pip normalises them
        line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#"))}
    for name, (ver, hashes) in pins.items():
        assert ver == constraints[name] == version(name), name
        assert hashes and all(len(h) == 64 for h in hashes)


def test_a_planted_runtime_wheel_is_removed_and_the_locked_one_fetched(cache, tmp_path, capsys):
    """The planted orjson has the right name and version, and one file more; the build warns, fetches
    the locked wheel with pip --require-hashes, and the SBOM names that one."""
    ver, hashes = image.locked()["orjson"]
    [cached] = cache.glob(f"orjson-{ver}-*.whl")
    planted = rewritten(cached, tmp_path / cached.name,
                        lambda n, d: [(n, d)] + ([("orjson/__planted__.py", b"print('planted code ran')\n")]
                                                 if n.endswith("/RECORD") else []))
    shutil.copy2(planted, cached)
    bad = sha256(cached)
    bundle = Bundle.open(save_bundle(linear_graph(), tmp_path / "model"))
    context = tmp_path / "context"
    context.mkdir()
    image.make_context(bundle, "python:3.11-slim", None, context)
    out = capsys.readouterr().err
    assert f"warning: wheel cache: {cached.name} is not the wheel runtime.lock pins (sha256 {bad[:16]}...): removed, " \
           "fetching it again" in out
    [used] = context.joinpath("wheels").glob(f"orjson-{ver}-*.whl")
    assert sha256(used) in hashes and sha256(cached) in hashes
    sbom = (bundle.path / "sbom.cdx.json").read_text()
    assert bad not in sbom and sha256(used) in sbom
    assert {c["name"] for c in json.loads(sbom)["components"]} == {*image.RUNTIME, "mldeploy"}


def test_a_planted_build_of_the_kit_is_removed_and_built_again(cache, tmp_path, capsys):
    [built] = cache.glob("mldeploy-src-*/*.whl")
    rewritten(built, tmp_path / "planted.whl",
              lambda n, d: [(n, d.replace(b"def main(", b"import os; os.system('id')\ndef main(")
                             if n == "mldeploy/cli.py" else d)])
    shutil.copy2(tmp_path / "planted.whl", built)
    wheel = image._mldeploy_wheel()
    assert "is not a build of this source: removed, building it again" in capsys.readouterr().err
    assert wheel.parent == built.parent and image._holds_exactly(wheel, PACKAGE)
    with zipfile.ZipFile(wheel) as z:
        assert b"os.system" not in z.read("mldeploy/cli.py")


@pytest.mark.parametrize("change", [
    lambda n, d: [(n, d + b"\n# changed\n" if n == "mldeploy/config.py" else d)],           # a file changed
    lambda n, d: [(n, d)] + ([("mldeploy/extra.py", b"x = 1\n")] if n == "mldeploy/cli.py" else []),  # one more
    lambda n, d: [] if n == "mldeploy/trust.py" else [(n, d)],                                # one missing
    lambda n, d: [(n, d)] + ([("planted.pth", b"import os\n")] if n == "mldeploy/cli.py" else []),    # runs at start
    lambda n, d: [(n, d)] + ([("mldeploy-0.1.0.data/scripts/x", b"#!/bin/sh\n")] if n == "mldeploy/cli.py" else []),
    lambda n, d: [(n, d.replace(b"mldeploy.cli:main", b"os:system") if n.endswith("entry_points.txt") else d)],
])
def test_only_an_exact_build_of_the_source_passes(good, tmp_path, change):
    [built] = good.glob("mldeploy-src-*/*.whl")
    assert image._holds_exactly(built, PACKAGE)
    assert not image._holds_exactly(rewritten(built, tmp_path / built.name, change), PACKAGE)
