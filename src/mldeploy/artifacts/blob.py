"""https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX: artifacts in Azure Blob storage, through the
shared credential and transport (mldeploy.clouds.azure: DefaultAzureCredential; the identity needs
Storage Blob Data Contributor on the container to publish, Reader to fetch).

A key is created with `If-None-Match: *` (upload_blob(overwrite=False); Blob answers 409
BlobAlreadyExists), so a publish never replaces a blob. The version recorded is the blob's version id
when the account keeps versions (blob versioning is a storage-account setting the data plane cannot
read: no version id coming back is how it shows); else the content hash.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO

from mldeploy.artifacts import Bucketed
from mldeploy.clouds.azure import blob_errors, container_client
from mldeploy.errors import UsageError

HOST_SUFFIX = ".blob.core.windows.net"
HINT = "use https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX"


class BlobStore(Bucketed):
    kind = "blob"

    def __init__(self, uri: str):
        host = uri.removeprefix("https://").partition("/")[0]
        if not host.endswith(HOST_SUFFIX):
            raise UsageError(f"{uri} is not a Blob storage container URL", hint=HINT)
        super().__init__(uri, f"https://{host}/", hint=HINT, noun="container")
        self.where = f"https://{host}/{self.bucket_name}"
        self.container = container_client(f"https://{host}", self.bucket_name)
        self.seen: set[bool] = set()   # whether uploads came back with a version id

    def errors(self, doing: str, missing_ok: bool = False) -> contextlib.AbstractContextManager[list[bool]]:
        return blob_errors(doing, self.where, missing_ok=missing_ok,
                           missing_hint="create it (with blob versioning on in the account) or correct storage.uri",
                           roles_hint="the identity needs Storage Blob Data Contributor on the container to publish, "
                                      "Storage Blob Data Reader to fetch")

    def get(self, key: str, out: IO[bytes]) -> bool:
        with self.errors(f"read {self.where}/{self.key(key)}", missing_ok=True) as missing:
            self.container.download_blob(self.key(key)).readinto(out)
        return not missing

    def create(self, key: str, source: Path) -> str | None:
        from azure.core.exceptions import ResourceExistsError

        with self.errors(f"upload {self.where}/{self.key(key)}"), open(source, "rb") as fh:
            try:
                answer = self.container.get_blob_client(self.key(key)).upload_blob(fh, overwrite=False)
            except ResourceExistsError:
                return None
        version = answer.get("version_id")
        self.seen.add(bool(version))
        return version or ""   # written; "" (not None, which means "it was there"): no version id

    def version(self, key: str) -> str | None:
        with self.errors(f"read {self.where}/{self.key(key)}"):
            version = self.container.get_blob_client(self.key(key)).get_blob_properties().version_id
        self.seen.add(bool(version))
        return version or None

    def modified(self, key: str) -> float | None:
        with self.errors(f"read {self.where}/{self.key(key)}", missing_ok=True) as missing:
            found = self.container.get_blob_client(self.key(key)).get_blob_properties().last_modified
        return None if missing else float(found.timestamp())

    def versioned(self) -> bool | None:
        return True in self.seen if self.seen else None

    def children(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        with self.errors(f"list {self.where}/{base}"):
            return sorted(item.name[len(base):].rstrip("/") for item in
                          self.container.walk_blobs(name_starts_with=base or None, delimiter="/")
                          if item.name.endswith("/"))

    def delete_tree(self, name: str) -> int:
        """The blobs under the prefix (with versioning on, each delete leaves a previous version, which
        the account's lifecycle policy or version retention removes)."""
        base = f"{self.key(name)}/"
        count = 0
        with self.errors(f"delete {self.where}/{base}"):
            for blob in list(self.container.list_blobs(name_starts_with=base)):
                self.container.delete_blob(blob.name)
                count += 1
        return count


def open_store(uri: str) -> BlobStore:
    return BlobStore(uri)
