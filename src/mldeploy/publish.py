"""`mldeploy publish`: the bundle's served files to object storage (image.model: storage).

Above deploy in the layers (a deploy's Model comes from here), below the CLI and the pipeline.
The artifact holds what the serving image would carry baked in (model.onnx, signature.json and the
image's manifest), with the manifest cut down to the model's lineage (convert, optimize), so that
builds, baselines and publishes after it do not change its address: the same model publishes to the
same <storage.uri>/<model name>/<bundle sha256>/ from any job. The publish step in the bundle's
manifest is what a deploy reads (Desired.model).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mldeploy import artifacts
from mldeploy.bundle import MANIFEST_FILE, MODEL_FILE, MODEL_WRITERS, SIGNATURE_FILE, Bundle, last_step
from mldeploy.errors import UsageError

if TYPE_CHECKING:
    from mldeploy.config import Config
    from mldeploy.deploy.base import Model, Status

SERVED = (MODEL_FILE, SIGNATURE_FILE)   # what serving reads (as the image build copies them), plus the manifest


def stage(bundle: Bundle, folder: Path) -> Path:
    """The artifact's files in folder: the served files and the model's lineage."""
    from mldeploy.image import image_manifest

    for name in SERVED:
        shutil.copy2(bundle.path / name, folder / name)
    manifest = image_manifest(bundle)
    manifest["steps"] = [s for s in manifest.get("steps", []) if s.get("step") in MODEL_WRITERS]
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


def model_name(bundle: Bundle) -> str:
    from mldeploy.image import _model_name

    return _model_name(bundle)


def storage_uri(cfg: Config) -> str:
    if not cfg.storage.uri:
        raise UsageError("storage.uri is not set: nowhere to publish the model",
                         hint="set storage.uri in mldeploy.yaml (s3://, gs://, https://ACCOUNT.blob.core.windows.net/"
                              "CONTAINER or file:///DIR) or MLDEPLOY_STORAGE__URI")
    return cfg.storage.uri


def publish(cfg: Config) -> dict[str, Any]:
    """Upload the bundle's artifact and record a publish step (unless the last one already says the
    same); the report: uri, sha256, versions, store, storage, up_to_date, warnings."""
    bundle = Bundle.open(cfg.bundle)
    where = storage_uri(cfg)
    with tempfile.TemporaryDirectory(prefix="mldeploy-artifact-") as tmp:
        done = artifacts.publish(stage(bundle, Path(tmp)), where, model_name(bundle),
                                 progress=lambda name: print(f"  uploaded {name}", flush=True))
    report = {"status": "passed", "uri": done.uri, "sha256": done.sha256, "versions": done.versions,
              "store": done.store, "storage": where}
    steps = bundle.manifest["steps"]
    at = last_step(steps, "publish")
    recorded = at is not None and all(steps[at].get(k) == report[k] for k in ("uri", "sha256", "versions"))
    if not (done.up_to_date and recorded):
        bundle.add_step("publish", report)
    return {**report, "up_to_date": done.up_to_date, "warnings": done.warnings}


def published_model(cfg: Config, bundle: Bundle) -> Model | None:
    """The artifact a deploy hands the slot (Desired.model): None when the model is baked into the image;
    with image.model: storage, the bundle's last publish, which must be of the bundle as it is now."""
    from mldeploy.deploy.base import Model

    if cfg.image.model != "storage":
        return None
    steps = bundle.manifest["steps"]
    at = last_step(steps, "publish")
    if at is None:
        raise UsageError("image.model is storage but the bundle was never published",
                         hint="run `mldeploy publish` before `mldeploy deploy`")
    step = steps[at]
    with tempfile.TemporaryDirectory(prefix="mldeploy-artifact-") as tmp:
        now = artifacts.address(artifacts.listing(stage(bundle, Path(tmp))))
    if now != step.get("sha256"):
        raise UsageError(f"the bundle changed since `mldeploy publish` (its artifact is sha256 {now[:12]}..., "
                         f"the last publish {str(step.get('sha256'))[:12]}...)", hint="run `mldeploy publish` again")
    return Model(str(step["uri"]), str(step["sha256"]))


def prune(cfg: Config, status: Status | None, *, delete: bool) -> tuple[list[str], list[str]]:
    """(doomed, kept) artifacts of this model under storage.uri: kept are what a slot of the endpoint
    serves (read from its status), this bundle's own, and the storage.keep newest publishes. Refused
    when a slot reports no model: its target may not say, and a guess could delete what serves."""
    bundle = Bundle.open(cfg.bundle)
    keep: set[str] = set()
    at = last_step(bundle.manifest["steps"], "publish")
    if at is not None:
        keep.add(str(bundle.manifest["steps"][at].get("sha256")))
    for slot, state in (status.slots if status else {}).items():
        if state.model is None:
            raise UsageError(f"the slot {slot} reports no model (its image has it baked in, or its target does "
                             "not say): not pruning, since what it serves is unknown",
                             hint="prune once every slot serves a published model")
        keep.add(state.model.sha256)
    doomed = artifacts.prune(storage_uri(cfg), model_name(bundle), keep, last=cfg.storage.keep, dry_run=not delete)
    return doomed, sorted(keep)
