"""The artifact's content address, and publish / fetch / verify / prune on file:// (the store every
scheme's contract test repeats against its own server: tests/contract/test_artifact_stores.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from mldeploy import artifacts
from mldeploy.artifacts import LISTING, ArtifactError, fetch, publish, verify
from mldeploy.errors import UsageError


def served(tmp: Path, model: bytes = b"onnx-bytes") -> Path:
    folder = tmp / "served"
    folder.mkdir(exist_ok=True)
    (folder / "model.onnx").write_bytes(model)
    (folder / "signature.json").write_text('{"inputs": []}\n')
    (folder / "manifest.json").write_text('{"steps": []}\n')
    return folder


def test_listing_is_sha256sum_format_and_the_address_is_its_hash(tmp_path: Path) -> None:
    folder = served(tmp_path)
    text = artifacts.listing(folder)
    manifest_sha = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    assert text.splitlines()[0] == f"{manifest_sha}  manifest.json"
    assert [line.split("  ")[1] for line in text.splitlines()] == ["manifest.json", "model.onnx", "signature.json"]
    (folder / LISTING).write_text(text)
    check = subprocess.run(["sha256sum", "-c", LISTING], cwd=folder, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert artifacts.address(text) == hashlib.sha256((folder / LISTING).read_bytes()).hexdigest()


def test_publish_fetch_verify_round_trip_and_idempotent(tmp_path: Path) -> None:
    folder, store = served(tmp_path), tmp_path / "store"
    done = publish(folder, f"file://{store}", "iris")
    assert done.uri == f"file://{store}/iris/{done.sha256}"
    assert done.uploaded == ["manifest.json", "model.onnx", "signature.json", LISTING]  # the listing last
    assert done.versions["model.onnx"] == f"sha256:{hashlib.sha256(b'onnx-bytes').hexdigest()}"
    again = publish(folder, f"file://{store}", "iris")
    assert again.up_to_date and again.sha256 == done.sha256 and again.versions == done.versions

    got = fetch(done.uri, done.sha256, tmp_path / "model")
    assert (got / "model.onnx").read_bytes() == b"onnx-bytes"
    verify(got, done.sha256)
    # a new model is a new address beside the old one
    other = publish(served(tmp_path, b"other"), f"file://{store}", "iris")
    assert other.sha256 != done.sha256
    assert artifacts.published(f"file://{store}", "iris") == sorted([done.sha256, other.sha256])


def test_publish_refuses_other_bytes_under_an_existing_key(tmp_path: Path) -> None:
    folder, store = served(tmp_path), tmp_path / "store"
    done = publish(folder, f"file://{store}", "iris")
    key = store / "iris" / done.sha256 / "model.onnx"
    os.chmod(key, 0o644)
    key.write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match=r"model.onnx already exists with other bytes"):
        publish(folder, f"file://{store}", "iris")
    assert key.read_bytes() == b"tampered"   # refused, not "repaired" over


def test_fetch_and_verify_refuse_a_tampered_artifact(tmp_path: Path) -> None:
    done = publish(served(tmp_path), f"file://{tmp_path / 'store'}", "iris")
    key = tmp_path / "store" / "iris" / done.sha256 / "model.onnx"
    os.chmod(key, 0o644)
    key.write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match=r"model.onnx has sha256 .* it was changed after publishing"):
        fetch(done.uri, done.sha256, tmp_path / "model")
    assert not (tmp_path / "model" / "model.onnx").exists()   # nothing half-checked left to serve
    with pytest.raises(ArtifactError, match=r"model.onnx has sha256"):
        verify(key.parent, done.sha256)
    with pytest.raises(ArtifactError, match=rf"{LISTING} has sha256 .*, not {'0' * 64}"):
        fetch(done.uri, "0" * 64, tmp_path / "model")


def test_fetch_of_nothing_and_a_listing_that_escapes_are_artifact_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist: nothing was published there"):
        fetch(f"file://{tmp_path}/none", "a" * 64, tmp_path / "model")
    evil = tmp_path / "evil"
    evil.mkdir()
    text = f"{hashlib.sha256(b'x').hexdigest()}  ../outside\n"
    (evil / LISTING).write_text(text)
    with pytest.raises(ArtifactError, match="not a 'sha256  relative/path' entry"):
        fetch(f"file://{evil}", artifacts.address(text), tmp_path / "model")
    assert not (tmp_path / "outside").exists()
    with pytest.raises(ArtifactError, match="not a sha256"):
        verify(evil, "nope")


def test_fetch_keeps_a_verified_copy_and_replaces_a_bad_one(tmp_path: Path) -> None:
    done = publish(served(tmp_path), f"file://{tmp_path / 'store'}", "iris")
    dest = fetch(done.uri, done.sha256, tmp_path / "model")
    (dest / "model.onnx").write_bytes(b"damaged on disk")
    fetch(done.uri, done.sha256, dest)
    assert (dest / "model.onnx").read_bytes() == b"onnx-bytes"


def test_prune_deletes_only_what_is_not_kept_and_dry_runs_by_default(tmp_path: Path) -> None:
    store = f"file://{tmp_path / 'store'}"
    old = publish(served(tmp_path, b"v1"), store, "iris").sha256
    new = publish(served(tmp_path, b"v2"), store, "iris").sha256
    (tmp_path / "store" / "iris" / "notes").mkdir()   # not an artifact: never touched
    assert artifacts.prune(store, "iris", keep={new}) == [old]
    assert artifacts.published(store, "iris") == sorted([old, new])
    assert artifacts.prune(store, "iris", keep={new}, dry_run=False) == [old]
    assert artifacts.published(store, "iris") == [new]
    assert (tmp_path / "store" / "iris" / "notes").is_dir()


def test_prune_keeps_the_last_n_publishes_by_when_their_listing_was_written(tmp_path: Path) -> None:
    store = f"file://{tmp_path / 'store'}"
    shas = [publish(served(tmp_path, f"v{i}".encode()), store, "iris").sha256 for i in range(3)]
    for age, sha in enumerate(reversed(shas)):   # v2 newest, v0 oldest, whatever the hashes' order
        os.utime(tmp_path / "store" / "iris" / sha / LISTING, (1e9 - age * 100, 1e9 - age * 100))
    assert [sha for sha, _ in artifacts.history(store, "iris")] == list(reversed(shas))
    assert artifacts.prune(store, "iris", keep=set(), last=2) == [shas[0]]
    assert artifacts.prune(store, "iris", keep={shas[0]}, last=1) == [shas[1]]


def test_bad_uris_and_names_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a storage URI"):
        publish(served(tmp_path), "ftp://host/x", "iris")
    with pytest.raises(UsageError, match="cannot be a storage prefix"):
        publish(served(tmp_path), f"file://{tmp_path}", "../iris")
