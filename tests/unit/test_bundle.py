"""Unit tests for mldeploy.bundle: signature JSON, opening, staging, manifest and hashing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

import pytest

import mldeploy
from mldeploy.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    SCHEMA_VERSION,
    SIGNATURE_FILE,
    Bundle,
    Signature,
    TensorSpec,
    git_info,
    sha256_file,
    staged,
    tool_versions,
)
from mldeploy.errors import UsageError
from tests.helpers.need import need


def make_signature() -> Signature:
    return Signature(
        inputs=[TensorSpec("pixels", "float32", ("batch", 3, 224, 224)),
                TensorSpec("mask", "bool", ("batch", None))],
        outputs=[TensorSpec("logits", "float32", ("batch", 1000))],
        batch_dim="batch")


def make_bundle(path: Path, *, schema_version=SCHEMA_VERSION, model: bytes = b"onnx-bytes") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / MODEL_FILE).write_bytes(model)
    (path / SIGNATURE_FILE).write_text(json.dumps(make_signature().to_json()))
    (path / MANIFEST_FILE).write_text(json.dumps({"schema_version": schema_version, "steps": []}))
    return path


# ---------------------------------------------------------------------------- signature

def test_tensor_spec_json_round_trip():
    spec = TensorSpec("mask", "bool", ("batch", None, 7))
    data = json.loads(json.dumps(spec.to_json()))
    assert data == {"name": "mask", "dtype": "bool", "shape": ["batch", None, 7]}
    assert TensorSpec.from_json(data) == spec
    assert spec.shape_text() == "[batch, ?, 7]"


def test_signature_json_round_trip():
    sig = make_signature()
    data = json.loads(json.dumps(sig.to_json()))
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["batch_dim"] == "batch"
    back = Signature.from_json(data)
    assert back == sig
    assert back.input("mask").shape == ("batch", None)


def test_signature_without_batch_dim():
    sig = Signature([TensorSpec("x", "int64", (4,))], [], None)
    back = Signature.from_json(json.loads(json.dumps(sig.to_json())))
    assert back == sig and back.batch_dim is None


def test_bundle_signature_written_and_read(tmp_path):
    b = Bundle(tmp_path)
    b.write_signature(make_signature())
    assert (tmp_path / SIGNATURE_FILE).is_file()
    assert not list(tmp_path.glob("*.tmp"))
    assert b.signature == make_signature()


# ---------------------------------------------------------------------------- open

def test_open_valid_bundle(tmp_path):
    path = make_bundle(tmp_path / "b")
    b = Bundle.open(path)
    assert b.path == path
    assert b.model_path == path / MODEL_FILE
    assert b.signature == make_signature()
    assert b.manifest["schema_version"] == SCHEMA_VERSION


def test_open_missing_folder(tmp_path):
    with pytest.raises(UsageError) as exc:
        Bundle.open(tmp_path / "absent")
    assert "absent" in exc.value.message and "does not exist" in exc.value.message
    assert exc.value.hint and "convert" in exc.value.hint


def test_open_folder_missing_files_names_them(tmp_path):
    path = make_bundle(tmp_path / "b")
    (path / MODEL_FILE).unlink()
    (path / MANIFEST_FILE).unlink()
    with pytest.raises(UsageError) as exc:
        Bundle.open(path)
    msg = exc.value.message
    assert "is not a bundle" in msg
    assert MODEL_FILE in msg and MANIFEST_FILE in msg
    assert SIGNATURE_FILE not in msg


def test_open_empty_folder_names_all_files(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(UsageError) as exc:
        Bundle.open(tmp_path / "b")
    for f in (MODEL_FILE, SIGNATURE_FILE, MANIFEST_FILE):
        assert f in exc.value.message


def test_open_a_file_is_an_error(tmp_path):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"x")
    with pytest.raises(UsageError):
        Bundle.open(f)


@pytest.mark.parametrize("found", [2, 0, None, "1"])
def test_open_other_schema_version(tmp_path, found):
    path = make_bundle(tmp_path / "b", schema_version=found)
    with pytest.raises(UsageError) as exc:
        Bundle.open(path)
    assert "schema version" in exc.value.message
    assert repr(found) in exc.value.message


def test_open_unreadable_manifest(tmp_path):
    path = make_bundle(tmp_path / "b")
    (path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(UsageError) as exc:
        Bundle.open(path)
    assert "unreadable" in exc.value.message


# ---------------------------------------------------------------------------- staged

def test_staged_success_replaces_old_bundle(tmp_path):
    out = make_bundle(tmp_path / "bundle", model=b"old")
    (out / "old-only.txt").write_text("stale")
    (tmp_path / "bundle.rejected").mkdir()
    (tmp_path / "bundle.rejected" / "x").write_text("earlier failure")
    with staged(out) as b:
        assert b.path != out and b.path.parent == out.parent
        b.model_path.write_bytes(b"new")
        b.write_signature(make_signature())
        b.start_manifest({"path": str(tmp_path), "sha256": "0" * 64})
    assert (out / MODEL_FILE).read_bytes() == b"new"
    assert not (out / "old-only.txt").exists()
    assert not (tmp_path / "bundle.rejected").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no scratch folders left
    assert Bundle.open(out).signature == make_signature()


def test_staged_creates_missing_parent(tmp_path):
    out = tmp_path / "deep" / "er" / "bundle"
    with staged(out) as b:
        b.model_path.write_bytes(b"m")
    assert (out / MODEL_FILE).read_bytes() == b"m"


def test_staged_failure_keeps_old_and_moves_attempt_to_rejected(tmp_path):
    out = make_bundle(tmp_path / "bundle", model=b"old")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError, match="export failed"), staged(out) as b:
        b.model_path.write_bytes(b"half-written")
        raise RuntimeError("export failed")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    rejected = tmp_path / "bundle.rejected"
    assert (rejected / MODEL_FILE).read_bytes() == b"half-written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "bundle.rejected"]


def test_staged_failure_replaces_an_older_rejected(tmp_path):
    out = tmp_path / "bundle"
    rejected = tmp_path / "bundle.rejected"
    rejected.mkdir()
    (rejected / "older.txt").write_text("x")
    with pytest.raises(KeyboardInterrupt), staged(out) as b:
        (b.path / "newer.txt").write_text("y")
        raise KeyboardInterrupt
    assert sorted(p.name for p in rejected.iterdir()) == ["newer.txt"]
    assert not out.exists()


def test_staged_empty_failure_leaves_no_rejected(tmp_path):
    out = make_bundle(tmp_path / "bundle", model=b"old")
    with pytest.raises(ValueError), staged(out):
        raise ValueError("before anything was written")
    assert (out / MODEL_FILE).read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# ---------------------------------------------------------------------------- manifest

def test_start_manifest_records_source_and_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.delenv("GITHUB_SHA", raising=False)
    src_dir = tmp_path / "nogit"
    src_dir.mkdir()
    src = src_dir / "net.pt"
    src.write_bytes(b"weights" * 100)
    bundle_dir = tmp_path / "b"
    bundle_dir.mkdir()
    b = Bundle(bundle_dir)
    b.start_manifest({"path": str(src), "framework": "torch", "sha256": sha256_file(src)})
    on_disk = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk["source"]["sha256"] == hashlib.sha256(b"weights" * 100).hexdigest()
    assert on_disk["source"]["framework"] == "torch"
    assert on_disk["tools"]["mldeploy"] == mldeploy.__version__
    assert on_disk["tools"]["python"] == platform.python_version()
    assert on_disk["tools"]["numpy"] == __import__("numpy").__version__
    assert on_disk["git"] is None
    assert on_disk["steps"] == []
    dt.datetime.fromisoformat(on_disk["created"])


def test_tool_versions_only_lists_installed():
    versions = tool_versions()
    assert {"mldeploy", "python"} <= set(versions)
    assert all(isinstance(v, str) and v for v in versions.values())


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-c", "commit.gpgsign=false", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_start_manifest_records_git_commit(tmp_path, monkeypatch):
    need("git", "apt-get install git", command=True)
    monkeypatch.delenv("GITHUB_SHA", raising=False)
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    _git(repo, "init", "-q")
    src = repo / "models" / "net.onnx"
    src.write_bytes(b"model")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "add model")
    head = _git(repo, "rev-parse", "HEAD")

    bundle_dir = tmp_path / "b"
    bundle_dir.mkdir()
    b = Bundle(bundle_dir)
    b.start_manifest({"path": str(src), "sha256": sha256_file(src)})
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    assert manifest["git"] == {"sha": head, "dirty": False}

    (repo / "untracked.txt").write_text("change")
    assert git_info(src) == {"sha": head, "dirty": True}


def test_git_info_falls_back_to_github_sha(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    folder = tmp_path / "nogit"
    folder.mkdir()
    monkeypatch.delenv("GITHUB_SHA", raising=False)
    assert git_info(folder) is None
    monkeypatch.setenv("GITHUB_SHA", "f" * 40)
    assert git_info(folder) == {"sha": "f" * 40, "dirty": None}


def test_add_step_appends_with_timestamp_and_model_hash(tmp_path):
    path = make_bundle(tmp_path / "b", model=b"first model")
    b = Bundle.open(path)
    b.add_step("convert", {"status": "ok", "seconds": 1.5})
    b.model_path.write_bytes(b"optimized model!")
    b.add_step("optimize", {"status": "ok"})

    manifest = json.loads((path / MANIFEST_FILE).read_text())
    steps = manifest["steps"]
    assert [s["step"] for s in steps] == ["convert", "optimize"]
    assert steps[0]["status"] == "ok" and steps[0]["seconds"] == 1.5
    for s in steps:
        at = dt.datetime.fromisoformat(s["at"])
        assert at.tzinfo is not None
        assert abs((dt.datetime.now(dt.UTC) - at).total_seconds()) < 120
    assert manifest["model"] == {"file": MODEL_FILE,
                                 "sha256": hashlib.sha256(b"optimized model!").hexdigest(),
                                 "bytes": len(b"optimized model!")}
    # A fresh open reads the same lineage back.
    assert Bundle.open(path).manifest["steps"] == steps


def test_add_step_without_model_records_no_model(tmp_path):
    b = Bundle(tmp_path)
    b.start_manifest({"path": str(tmp_path)})
    b.add_step("check", {"status": "failed"})
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["steps"][0]["status"] == "failed"
    assert "model" not in manifest


# ---------------------------------------------------------------------------- hashing

def test_sha256_of_a_file(tmp_path):
    f = tmp_path / "f.bin"
    data = os.urandom(3 << 20)  # spans several read chunks
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()


def test_sha256_of_a_folder_tracks_contents_and_names(tmp_path):
    d = tmp_path / "saved_model"
    (d / "variables").mkdir(parents=True)
    (d / "saved_model.pb").write_bytes(b"graph")
    (d / "variables" / "variables.data").write_bytes(b"weights")
    first = sha256_file(d)
    assert first == sha256_file(d)  # stable

    (d / "variables" / "variables.data").write_bytes(b"weightz")
    changed = sha256_file(d)
    assert changed != first

    (d / "variables" / "variables.data").write_bytes(b"weights")
    assert sha256_file(d) == first

    (d / "variables" / "variables.data").rename(d / "variables" / "renamed.data")
    assert sha256_file(d) != first


def test_sha256_of_folder_differs_from_concatenated_file(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_bytes(b"xy")
    f = tmp_path / "f"
    f.write_bytes(b"xy")
    assert sha256_file(d) != sha256_file(f)


def test_sha256_of_folder_is_unambiguous(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "a").write_bytes(b"x")
    (one / "b").write_bytes(b"y")
    (two / "a").write_bytes(b"xb\0y")  # same byte stream: "a\0" "x" "b\0" "y"
    assert sha256_file(one) != sha256_file(two)


def test_a_step_stays_fresh_past_later_steps_that_only_read_the_model(tmp_path):
    bundle = Bundle.open(make_bundle(tmp_path / "b"))
    bundle.add_step("optimize", {"status": "passed", "key": "k"})
    bundle.add_step("build", {"status": "passed"})
    bundle.add_step("baseline", {"status": "passed"})
    assert bundle.fresh_step("optimize", "k")["key"] == "k"  # build and baseline left model.onnx alone
    assert bundle.fresh_step("optimize", "other") is None     # other inputs
    assert bundle.fresh_step("convert", "k") is None          # never ran
    bundle.add_step("convert", {"status": "passed", "key": "c"})
    assert bundle.fresh_step("optimize", "k") is None         # convert rewrote the model since
    (bundle.path / MODEL_FILE).write_bytes(b"changed by hand")
    assert bundle.fresh_step("convert", "c") is None          # the hash no longer matches
