"""image.model: storage, the parts that need no engine: one template with a switch, the store SDK's pins in
runtime.lock, and the runtime image's identity (a digest of what goes into it, never of a model)."""

from __future__ import annotations

import re

import pytest

from mldeploy import image
from mldeploy.errors import UsageError
from tests.helpers.paths import ROOT


def test_the_runtime_image_is_the_same_template_without_the_bundle():
    baked = image.render("base:1", {"k": "v"}, ["a==1"], {"MLDEPLOY_WORKERS": "2"})
    runtime = image.render("base:1", {"k": "v"}, ["a==1"], {"MLDEPLOY_WORKERS": "2"}, bundle=False,
                           sdk=["boto3==1.44.8"])
    assert "COPY bundle/ /opt/ml/model/" in baked and "COPY bundle/" not in runtime
    assert "sdk-wheels" not in baked
    assert "--find-links /tmp/sdk-wheels boto3==1.44.8\n" in runtime
    # everything else is the same Dockerfile: the same runtime steps, user, entry point, environment
    same = [line for line in baked.splitlines() if "bundle" not in line and not line.startswith("#")]
    assert [line for line in runtime.splitlines() if "sdk-wheels" not in line and not line.startswith("#")] == same
    assert "sdk-wheels" not in image.render("base:1", {}, ["a==1"], {}, bundle=False)  # file://: no SDK


@pytest.mark.parametrize(("store", "sdk"), [("s3", "boto3"), ("gcs", "google-cloud-storage"),
                                            ("blob", "azure-storage-blob")])
def test_each_store_section_pins_its_sdk_as_constraints_do(store, sdk):
    runtime, pins = image.locked(), image.locked(store)
    assert sdk in pins and not set(pins) & set(runtime)  # the runtime's packages are not repeated
    constraints = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (ROOT / "constraints.txt").read_text(), re.M))
    lower = {k.lower(): v for k, v in constraints.items()}
    assert lower[sdk] == pins[sdk][0]
    for name, (version, hashes) in pins.items():
        assert lower.get(name, version) == version, (name, version)  # where the tested set pins it
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
    assert "boto3" not in runtime and "onnxruntime" in runtime


def test_the_runtime_digest_follows_what_goes_into_the_image():
    first = image.runtime_for("base:1", "sha256:b1", "s3", {"MLDEPLOY_WORKERS": "2"})
    assert first == image.runtime_for("base:1", "sha256:b1", "s3", {"MLDEPLOY_WORKERS": "2"})
    others = [image.runtime_for("base:1", "sha256:b2", "s3", {"MLDEPLOY_WORKERS": "2"}),   # the base moved
              image.runtime_for("base:2", "sha256:b1", "s3", {"MLDEPLOY_WORKERS": "2"}),
              image.runtime_for("base:1", "sha256:b1", "gcs", {"MLDEPLOY_WORKERS": "2"}),  # another SDK
              image.runtime_for("base:1", "sha256:b1", "s3", {"MLDEPLOY_WORKERS": "3"})]   # environment
    assert len({first.digest, *(o.digest for o in others)}) == 5
    assert first.tag == f"runtime-{first.digest[:24]}"
    assert first.labels()["dev.mldeploy.runtime.digest"] == first.digest


def test_the_runtime_digest_follows_the_kit_and_the_lock(monkeypatch, tmp_path):
    first = image.runtime_for("base:1", "sha256:b1", "s3", {})
    lock = tmp_path / "runtime.lock"
    lock.write_text(image.LOCK.read_text().replace("boto3==1.44.8", "boto3==1.44.9"))
    monkeypatch.setattr(image, "LOCK", lock)
    assert image.runtime_for("base:1", "sha256:b1", "s3", {}) != first
    monkeypatch.undo()
    monkeypatch.setattr(image, "__version__", "99.0")
    assert image.runtime_for("base:1", "sha256:b1", "s3", {}) != first


def test_a_dockerfile_of_your_own_is_refused_with_storage(tmp_path):
    with pytest.raises(UsageError, match=r"image\.dockerfile cannot be used with image\.model: storage"):
        image.build_runtime(tmp_path, base="b", registry=None, repository=None, dockerfile="Dockerfile",
                            push_image=False, environment={}, cache=True, storage_uri="s3://b/m")
