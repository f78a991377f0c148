"""s3://BUCKET/PREFIX: artifacts in Amazon S3, through the shared boto3 client (mldeploy.clouds.aws:
the standard credential chain; AWS_ENDPOINT_URL reaches moto in the tests).

A key is created with `If-None-Match: *` (S3 answers 412 when it exists), so a publish never replaces
an object, even racing another one. The version recorded is the object's VersionId when the bucket
keeps versions. A file over MULTIPART bytes goes up in parts (one PUT takes at most 5 GB), completed
under the same condition.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mldeploy.artifacts import Bucketed
from mldeploy.clouds.aws import client, error_code, translated
from mldeploy.errors import UsageError

MULTIPART = 1 << 30   # bytes: larger files are uploaded in parts
PART = 128 << 20      # bytes per part (S3: at least 5 MiB, at most 10,000 parts)


class S3Store(Bucketed):
    kind = "s3"

    def __init__(self, uri: str):
        super().__init__(uri, "s3://", hint="use s3://BUCKET/PREFIX")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.s3 = client("s3", region)   # S3 redirects a bucket in another region itself

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        with translated(doing):
            try:
                yield
            except self.s3.exceptions.NoSuchBucket:
                raise UsageError(f"the S3 bucket {self.bucket_name} does not exist",
                                 hint="create it (with versioning on) or correct storage.uri") from None

    def get(self, key: str, out: IO[bytes]) -> bool:
        with self.errors(f"read s3://{self.bucket_name}/{self.key(key)}"):
            try:
                body = self.s3.get_object(Bucket=self.bucket_name, Key=self.key(key))["Body"]
            except self.s3.exceptions.NoSuchKey:
                return False
            for chunk in body.iter_chunks(1 << 20):
                out.write(chunk)
        return True

    def create(self, key: str, source: Path) -> str | None:
        from botocore.exceptions import ClientError

        with self.errors(f"upload s3://{self.bucket_name}/{self.key(key)}"), open(source, "rb") as fh:
            try:
                if source.stat().st_size > MULTIPART:
                    answer = self._in_parts(self.key(key), fh)
                else:
                    answer = self.s3.put_object(Bucket=self.bucket_name, Key=self.key(key), Body=fh, IfNoneMatch="*")
            except ClientError as e:   # 412: it exists; 409: another upload of it is finishing now
                if error_code(e) in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return None
                raise
        return _version(answer) or ""   # written ("": no version id)

    def _in_parts(self, key: str, fh: IO[bytes]) -> dict[str, Any]:
        """A multipart upload, completed only if the key does not exist (else aborted, nothing left)."""
        upload = self.s3.create_multipart_upload(Bucket=self.bucket_name, Key=key)["UploadId"]
        try:
            parts = []
            for number, chunk in enumerate(iter(lambda: fh.read(PART), b""), start=1):
                etag = self.s3.upload_part(Bucket=self.bucket_name, Key=key, UploadId=upload, PartNumber=number,
                                           Body=chunk)["ETag"]
                parts.append({"ETag": etag, "PartNumber": number})
            answer: dict[str, Any] = self.s3.complete_multipart_upload(
                Bucket=self.bucket_name, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}, IfNoneMatch="*")
            return answer
        except BaseException:
            with contextlib.suppress(Exception):   # the error that got us here is the one to report
                self.s3.abort_multipart_upload(Bucket=self.bucket_name, Key=key, UploadId=upload)
            raise

    def version(self, key: str) -> str | None:
        with self.errors(f"read s3://{self.bucket_name}/{self.key(key)}"):
            return _version(self.s3.head_object(Bucket=self.bucket_name, Key=self.key(key)))

    def modified(self, key: str) -> float | None:
        from botocore.exceptions import ClientError

        with self.errors(f"read s3://{self.bucket_name}/{self.key(key)}"):
            try:
                return float(self.s3.head_object(Bucket=self.bucket_name, Key=self.key(key))["LastModified"].timestamp())
            except ClientError as e:
                if error_code(e) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

    def versioned(self) -> bool | None:
        from botocore.exceptions import ClientError

        try:
            with self.errors(f"read the versioning of s3://{self.bucket_name}"):
                return self.s3.get_bucket_versioning(Bucket=self.bucket_name).get("Status") == "Enabled"
        except UsageError:
            return None   # no s3:GetBucketVersioning: unknown, not "off"
        except ClientError:
            return None

    def children(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        with self.errors(f"list s3://{self.bucket_name}/{base}"):
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket_name, Prefix=base, Delimiter="/")
            return sorted(p["Prefix"][len(base):].rstrip("/") for page in pages for p in page.get("CommonPrefixes", []))

    def delete_tree(self, name: str) -> int:
        """Every version and delete marker under the prefix: a pruned artifact leaves nothing behind."""
        base = f"{self.key(name)}/"
        count = 0
        with self.errors(f"delete s3://{self.bucket_name}/{base}"):
            for page in self.s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket_name, Prefix=base):
                doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                          for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
                if doomed:
                    answer = self.s3.delete_objects(Bucket=self.bucket_name, Delete={"Objects": doomed, "Quiet": True})
                    if answer.get("Errors"):
                        first = answer["Errors"][0]
                        raise UsageError(f"S3 refused to delete s3://{self.bucket_name}/{first['Key']} ({first['Code']})",
                                         hint="pruning needs s3:DeleteObject and s3:DeleteObjectVersion on the prefix")
                    count += len(doomed)
        return count


def _version(answer: dict[str, Any]) -> str | None:
    found = answer.get("VersionId")
    return found if found and found != "null" else None   # "null": the bucket never kept versions


def open_store(uri: str) -> S3Store:
    return S3Store(uri)
