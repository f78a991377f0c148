"""The model from object storage: fetched and verified before anything is served.

With MLDEPLOY_MODEL_URI (or Vertex's AIP_STORAGE_URI gs://) and MLDEPLOY_MODEL_SHA256 the artifact
is downloaded into MLDEPLOY_MODEL_CACHE and checked against its content address by
mldeploy.artifacts; a bundle the platform mounted (SageMaker /opt/ml/model, AZUREML_MODEL_DIR) is
checked in place. What went wrong is one ModelSourceError naming the address, which the server
logs once while it stays unready (and Lambda reports as its init error).
"""

from __future__ import annotations

import time
from dataclasses import replace

from mldeploy.errors import MldeployError, UsageError
from mldeploy.serve.logs import log
from mldeploy.serve.settings import Settings


class ModelSourceError(UsageError):
    """The artifact cannot be had: unreadable, missing, or not the bytes its hash names."""


def prepare(settings: Settings) -> Settings:
    """The settings with `bundle` pointing at a verified bundle on disk (and the download's time)."""
    if settings.model_sha256 is None:
        return settings  # a baked or mounted bundle with no hash to check: as before
    from mldeploy import artifacts

    where = settings.model_uri or str(settings.bundle)
    start = time.perf_counter()
    try:
        if settings.model_uri:
            bundle = artifacts.fetch(settings.model_uri, settings.model_sha256, settings.bundle)
        else:
            artifacts.verify(settings.bundle, settings.model_sha256)
            bundle = settings.bundle
    except artifacts.ArtifactError as e:
        text = _one_line(e)
        raise ModelSourceError(f"the model is not served: {text if where in text else f'{where}: {text}'}",
                               hint=e.hint or f"check that {where} is the artifact of sha256 "
                                              f"{settings.model_sha256[:12]}... (`mldeploy publish` prints both), that "
                                              f"this identity may read it, and that {settings.model_cache} is writable"
                               ) from None
    seconds = time.perf_counter() - start
    if settings.model_uri:
        log("info", "model downloaded", uri=settings.model_uri, sha256=settings.model_sha256,
            bundle=str(bundle), seconds=round(seconds, 3))
        return replace(settings, bundle=bundle, download_seconds=seconds)
    log("info", "model verified", bundle=str(bundle), sha256=settings.model_sha256, seconds=round(seconds, 3))
    return settings


def _one_line(e: MldeployError) -> str:
    text = e.message.strip()
    return (text.splitlines() or [type(e).__name__])[0][:400]
