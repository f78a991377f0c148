"""gs://BUCKET/PREFIX: artifacts in Cloud Storage, through the shared client (mldeploy.clouds.gcp: ADC;
MLDEPLOY_GCP_API_ENDPOINT reaches a fake in the tests).

A key is created with `ifGenerationMatch=0` (Cloud Storage answers 412 when a live object exists), so
a publish never replaces an object. The version recorded is the object's generation, which every
object has; with versioning off on the bucket, a deleted generation cannot be recovered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mldeploy.artifacts import Bucketed
from mldeploy.clouds.gcp import read_retry, storage_client, translated
from mldeploy.errors import UsageError


class GcsStore(Bucketed):
    kind = "gcs"

    def __init__(self, uri: str):
        super().__init__(uri, "gs://", hint="use gs://BUCKET/PREFIX")
        self.client = storage_client()
        self.bucket = self.client.bucket(self.bucket_name)

    @contextlib.contextmanager
    def errors(self, doing: str, missing_ok: bool = False) -> Iterator[list[bool]]:
        """translated(), with a missing bucket as one line (exit 2); with missing_ok a missing object
        sets the flag instead."""
        from google.api_core import exceptions

        missing: list[bool] = []
        with translated(doing):
            try:
                yield missing
            except exceptions.NotFound as e:
                if missing_ok and "bucket does not exist" not in str(e):   # "No such object: B/K"
                    missing.append(True)
                    return
                raise UsageError(f"the Cloud Storage bucket {self.bucket_name} does not exist",
                                 hint="create it (with object versioning on) or correct storage.uri") from None

    def get(self, key: str, out: IO[bytes]) -> bool:
        with self.errors(f"read gs://{self.bucket_name}/{self.key(key)}", missing_ok=True) as missing:
            self.bucket.blob(self.key(key)).download_to_file(out, retry=read_retry())
        return not missing

    def create(self, key: str, source: Path) -> str | None:
        from google.api_core import exceptions

        blob = self.bucket.blob(self.key(key))
        with self.errors(f"upload gs://{self.bucket_name}/{self.key(key)}"):
            try:   # no retry: the precondition makes a retried create safe, but a 412 then means "ours"
                blob.upload_from_filename(str(source), if_generation_match=0, retry=None)
            except exceptions.PreconditionFailed:
                return None
        return _generation(blob) or ""   # written

    def version(self, key: str) -> str | None:
        with self.errors(f"read gs://{self.bucket_name}/{self.key(key)}"):
            blob = self.bucket.get_blob(self.key(key), retry=read_retry())
        return _generation(blob)

    def modified(self, key: str) -> float | None:
        with self.errors(f"read gs://{self.bucket_name}/{self.key(key)}"):
            blob = self.bucket.get_blob(self.key(key), retry=read_retry())
        return float(blob.updated.timestamp()) if blob is not None and blob.updated else None

    def versioned(self) -> bool | None:
        try:
            with self.errors(f"read the versioning of gs://{self.bucket_name}"):
                return bool(self.client.get_bucket(self.bucket_name, retry=read_retry()).versioning_enabled)
        except UsageError:
            return None   # no storage.buckets.get: unknown, not "off"

    def children(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        with self.errors(f"list gs://{self.bucket_name}/{base}"):
            listing = self.client.list_blobs(self.bucket_name, prefix=base or None, delimiter="/", retry=read_retry())
            for _ in listing:   # prefixes fill in as the pages are read
                pass
            return sorted(p[len(base):].rstrip("/") for p in listing.prefixes)

    def delete_tree(self, name: str) -> int:
        """Every generation under the prefix: a pruned artifact leaves nothing behind."""
        base = f"{self.key(name)}/"
        count = 0
        with self.errors(f"delete gs://{self.bucket_name}/{base}"):
            for blob in list(self.client.list_blobs(self.bucket_name, prefix=base, versions=True, retry=read_retry())):
                self.bucket.delete_blob(blob.name, generation=blob.generation)
                count += 1
        return count


def _generation(blob: Any) -> str | None:
    return str(blob.generation) if blob is not None and blob.generation else None


def open_store(uri: str) -> GcsStore:
    return GcsStore(uri)
