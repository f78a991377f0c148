"""`mldeploy publish` on a file:// store (the cloud stores: tests/contract/test_artifact_stores.py), what a
deploy reads from it (Desired.model), and retention."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mldeploy import artifacts
from mldeploy.bundle import Bundle
from mldeploy.config import load_config
from mldeploy.deploy.base import Model, Slot, Status
from mldeploy.errors import UsageError
from mldeploy.publish import model_name, prune, published_model
from tests.helpers.cli import one_line

IMAGE = "127.0.0.1:5000/mldeploy/runtime@sha256:" + "ab" * 32


@pytest.fixture
def project(tmp_path: Path, bundle: Path) -> tuple[Path, Path]:
    """A model repo in storage mode (local cloud, file:// store) with a copy of the session's bundle."""
    shutil.copytree(bundle, tmp_path / "bundle")
    (tmp_path / "mldeploy.yaml").write_text(f"bundle: bundle\nimage:\n  model: storage\nstorage:\n"
                                            f"  uri: file://{tmp_path / 'store'}\n  keep: 1\n")
    return tmp_path, tmp_path / "bundle"


def steps(bundle: Path, name: str) -> list[dict]:
    return [s for s in json.loads((bundle / "manifest.json").read_text())["steps"] if s["step"] == name]


def test_publish_records_the_artifact_and_a_rerun_is_up_to_date(mldeploy, project) -> None:
    folder, bundle = project
    r = mldeploy("publish", cwd=folder)
    assert r.code == 0, r.err
    [step] = steps(bundle, "publish")
    assert f"\npublished: {step['uri']}  sha256 {step['sha256']}\n" in r.out
    assert step["uri"] == f"file://{folder / 'store'}/{step['uri'].split('/')[-2]}/{step['sha256']}"
    assert set(step["versions"]) == {"model.onnx", "signature.json", "manifest.json", artifacts.LISTING}
    stored = Path(step["uri"].removeprefix("file://"))
    artifacts.verify(stored, step["sha256"])
    assert (stored / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()
    assert {s["step"] for s in json.loads((stored / "manifest.json").read_text())["steps"]} == {"convert"}

    again = mldeploy("publish", cwd=folder)
    assert again.code == 0 and f"up to date: {step['uri']}" in again.out
    assert len(steps(bundle, "publish")) == 1   # nothing new to record
    cfg = load_config(folder / "mldeploy.yaml")
    assert published_model(cfg, Bundle.open(bundle)) == Model(step["uri"], step["sha256"])


def test_deploy_in_storage_mode_needs_a_publish_of_this_bundle(mldeploy, project) -> None:
    folder, bundle = project
    r = mldeploy("deploy", "--image", IMAGE, "--plan", cwd=folder)
    assert r.code == 2 and one_line(r) and "never published" in r.err and "`mldeploy publish`" in r.err
    assert mldeploy("publish", cwd=folder).code == 0
    signature = json.loads((bundle / "signature.json").read_text())
    signature["outputs"][0]["name"] = "renamed"   # the served files change after the publish
    (bundle / "signature.json").write_text(json.dumps(signature))
    r = mldeploy("deploy", "--image", IMAGE, "--plan", cwd=folder)
    assert r.code == 2 and one_line(r) and "changed since `mldeploy publish`" in r.err


def test_other_bytes_under_the_key_exit_1_in_one_line(mldeploy, project) -> None:
    folder, bundle = project
    assert mldeploy("publish", cwd=folder).code == 0
    [step] = steps(bundle, "publish")
    key = Path(step["uri"].removeprefix("file://")) / "model.onnx"
    os.chmod(key, 0o644)
    key.write_bytes(b"tampered")
    r = mldeploy("publish", cwd=folder)
    assert r.code == 1 and one_line(r) and "model.onnx already exists with other bytes" in r.err
    r = mldeploy("publish", "--storage", "ftp://elsewhere", cwd=folder)
    assert r.code == 2 and one_line(r) and "storage.uri" in r.err


def test_prune_keeps_what_serves_this_bundle_and_the_newest(mldeploy, project, tmp_path) -> None:
    folder, bundle = project
    cfg = load_config(folder / "mldeploy.yaml")
    store, name = f"file://{folder / 'store'}", model_name(Bundle.open(bundle))
    old = [artifacts.publish(_files(tmp_path, f"v{i}"), store, name).sha256 for i in range(3)]
    for age, sha in enumerate(old):   # v0 newest, v2 oldest
        os.utime(folder / "store" / name / sha / artifacts.LISTING, (1e9 - age, 1e9 - age))
    Bundle.open(bundle).add_step("publish", {"uri": f"{store}/{name}/{'c' * 64}", "sha256": "c" * 64})
    serving = Status("e", slots={"production": Slot("img", 100, True, model=Model(f"{store}/{name}/{old[2]}", old[2]))})
    doomed, kept = prune(cfg, serving, delete=False)
    assert doomed == [old[1]] and kept == sorted(["c" * 64, old[2]])   # keep: 1 keeps v0, the newest
    assert artifacts.published(store, name) == sorted(old)           # a dry run deletes nothing
    assert prune(cfg, serving, delete=True)[0] == [old[1]]
    assert artifacts.published(store, name) == sorted([old[0], old[2]])
    baked = Status("e", slots={"production": Slot("img", 100, True)})
    with pytest.raises(UsageError, match=r"reports no model .* not pruning"):
        prune(cfg, baked, delete=True)


def _files(tmp: Path, text: str) -> Path:
    folder = tmp / f"files-{text}"
    folder.mkdir()
    (folder / "model.onnx").write_text(text)
    return folder
