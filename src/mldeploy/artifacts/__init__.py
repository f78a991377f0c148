"""Models in object storage: a content-addressed, versioned artifact per bundle (image.model: storage).

    <storage.uri>/<model name>/<bundle sha256>/model.onnx
                                              /signature.json
                                              /manifest.json
                                              /mldeploy.files    "sha256  path" lines (sha256sum format)

The files are stored uncompressed (SageMaker's ModelDataSource mounts such a prefix at /opt/ml/model).
The bundle sha256 is the sha256 of mldeploy.files, the canonical listing of the others (sorted by
path), so anyone can check the whole and each file with `sha256sum -c mldeploy.files`.

`publish` never overwrites a key with other bytes (each write is a create-only request where the store
offers one, and a key that exists is read back and compared): other bytes under a key of ours mean
tampering, and raise ArtifactError. `fetch` and `verify` check every file and the whole, and raise
ArtifactError on any mismatch or unreadable artifact: the one error a server catches to stay unready.

This package imports no config, deploy or docker code (the serving runtime calls fetch/verify at
start); each scheme's module imports its cloud SDK lazily, through the shared clients in
mldeploy.clouds.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from mldeploy.errors import CheckFailed, MldeployError, UsageError

LISTING = "mldeploy.files"
SCHEMES = {"s3": "s3", "gs": "gcs", "https": "blob", "file": "file"}   # URI scheme -> module here
CHUNK = 1 << 20
SHA256 = re.compile(r"^[0-9a-f]{64}$")
LINE = re.compile(r"^([0-9a-f]{64})  (\S(?:.*\S)?)$")


class ArtifactError(CheckFailed):
    """An artifact that cannot be read, or whose bytes are not the ones its address names (exit 1).
    publish raises it for other bytes under an existing key; fetch and verify for anything wrong."""


@dataclass(frozen=True)
class Published:
    uri: str                      # the artifact's own prefix: <storage.uri>/<model>/<sha256>
    sha256: str                   # the bundle sha256 (of mldeploy.files)
    versions: dict[str, str]      # file -> the store's version (S3 VersionId, GCS generation, Blob
                                  # version id, or "sha256:<hex>" where the store keeps no versions)
    store: str                    # s3 | gcs | blob | file
    uploaded: list[str] = field(default_factory=list)   # files written now; empty: it was all there
    warnings: list[str] = field(default_factory=list)   # e.g. versioning off on the bucket

    @property
    def up_to_date(self) -> bool:
        return not self.uploaded


class Store(Protocol):
    """One object store, rooted at a prefix; keys are relative to it ("a/b.onnx")."""

    kind: str
    root: str                     # the URI of the root, for messages

    def get(self, key: str, out: IO[bytes]) -> bool:
        """Write the object's bytes to out; False when there is no such key."""

    def create(self, key: str, source: Path) -> str | None:
        """Upload a file under a key that must not exist yet: its version ("" when the store gave
        none), or None when the key was already there (nothing written)."""

    def version(self, key: str) -> str | None:
        """The version of an existing key (None where the store keeps none)."""

    def versioned(self) -> bool | None:
        """Whether the store keeps versions (None: unknown)."""

    def modified(self, key: str) -> float | None:
        """When the key was written (epoch seconds); None when there is no such key."""

    def children(self) -> list[str]:
        """The names one level below the root (the "folders")."""

    def delete_tree(self, name: str) -> int:
        """Delete every object (every version) under <root>/<name>/; how many objects."""


# -- the content address ------------------------------------------------------------------------------
def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def files_of(folder: Path) -> list[str]:
    """The artifact's files under folder (posix relative paths, sorted), the listing itself excluded."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name != LISTING)


def listing(folder: Path) -> str:
    """The canonical listing of folder's files: sorted "sha256  path" lines, as sha256sum writes them."""
    return "".join(f"{hash_file(folder / name)}  {name}\n" for name in files_of(folder))


def address(text: str) -> str:
    """The bundle sha256: the sha256 of its listing's bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


def parse_listing(text: str, where: str) -> dict[str, str]:
    """path -> sha256 from a listing; ArtifactError when it is not one we could have written (an entry
    that would leave the folder, duplicates, unsorted lines)."""
    entries: dict[str, str] = {}
    for n, line in enumerate(text.split("\n")[:-1] if text.endswith("\n") else [text], start=1):
        found = LINE.match(line)
        name = found.group(2) if found else ""
        parts = PurePosixPath(name).parts
        if (not found or name.startswith("/") or ".." in parts or "." in parts or "\\" in name
                or name in entries or name == LISTING):
            raise ArtifactError(f"{where}: line {n} of {LISTING} is not a 'sha256  relative/path' entry: {line[:120]!r}")
        entries[name] = found.group(1)
    if list(entries) != sorted(entries) or not entries:
        raise ArtifactError(f"{where}: {LISTING} is empty or not sorted; it is not an mldeploy artifact listing")
    return entries


# -- the stores -----------------------------------------------------------------------------------------
def store_kind(uri: str) -> str:
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    if scheme not in SCHEMES:
        raise UsageError(f"{uri!r} is not a storage URI",
                         hint="use s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, "
                              "https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX or file:///DIR")
    return SCHEMES[scheme]


class Bucketed:
    """What the cloud stores share: the root SCHEME://BUCKET/PREFIX split once, and keys under the prefix."""

    def __init__(self, uri: str, scheme: str, hint: str, noun: str = "bucket"):
        bucket, _, prefix = uri.removeprefix(scheme).partition("/")
        if not bucket:
            raise UsageError(f"{uri} names no {noun}", hint=hint)
        self.root, self.bucket_name, self.prefix = uri, bucket, prefix.strip("/")

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name


def open_store(uri: str) -> Store:
    """The store rooted at uri; the scheme's module (and its SDK) is imported only now."""
    module = importlib.import_module(f"mldeploy.artifacts.{store_kind(uri)}")
    store: Store = module.open_store(uri.rstrip("/"))
    return store


def join(uri: str, *names: str) -> str:
    return "/".join([uri.rstrip("/"), *names])


# -- publish --------------------------------------------------------------------------------------------
def publish(folder: str | os.PathLike, storage_uri: str, model: str,
            progress: Callable[[str], None] | None = None) -> Published:
    """Upload folder's files to <storage_uri>/<model>/<sha256>/ with their listing (written last, so a
    listing's presence means the files are all there). Idempotent; never overwrites other bytes."""
    folder = Path(folder)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", model):
        raise UsageError(f"the model name {model!r} cannot be a storage prefix (letters, digits, . _ -)")
    text = listing(folder)
    sha = address(text)
    uri = join(storage_uri, model, sha)
    store = open_store(uri)
    versions: dict[str, str] = {}
    uploaded: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mldeploy-publish-") as tmp:
        listing_file = Path(tmp, LISTING)
        listing_file.write_text(text, encoding="utf-8")
        wanted = {**{name: folder / name for name in files_of(folder)}, LISTING: listing_file}
        for name, path in wanted.items():
            version = store.create(name, path)
            if version is None:   # the key was there: the same bytes, or tampering
                _same_bytes(store, name, hash_file(path), Path(tmp))
                version = store.version(name)
            else:
                uploaded.append(name)
                if progress:
                    progress(name)
            versions[name] = version or f"sha256:{hash_file(path)}"
    warnings = []
    if store.versioned() is False:
        warnings.append(f"{storage_uri} keeps no object versions: the content hash is recorded instead "
                        f"(turn versioning on to keep deleted or overwritten versions recoverable)")
    return Published(uri, sha, versions, store.kind, uploaded, warnings)


def _same_bytes(store: Store, name: str, sha: str, tmp: Path) -> None:
    found = _read_hash(store, name, tmp)
    if found != sha:
        raise ArtifactError(f"{join(store.root, name)} already exists with other bytes (sha256 {found}, "
                            f"this bundle's is {sha}): refusing to overwrite it",
                            hint="an artifact must never change under its address; find who wrote it")


class _Hasher(io.RawIOBase):
    """A write-only stream that keeps only the sha256 of what went through it."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha.update(data)
        return len(data)


def _read_hash(store: Store, name: str, tmp: Path) -> str | None:
    out = _Hasher()
    return out.sha.hexdigest() if store.get(name, out) else None  # type: ignore[arg-type]  # a binary stream


# -- fetch and verify -------------------------------------------------------------------------------------
def fetch(uri: str, sha256: str, dest: str | os.PathLike) -> Path:
    """Download the artifact at uri into dest and check it against sha256: every file and the whole.
    A dest that already holds it, verified, is kept as it is. Any failure is ArtifactError."""
    dest = Path(dest)
    _check_sha(sha256)
    try:
        verify(dest, sha256)
        return dest
    except ArtifactError:
        pass
    try:
        store = open_store(uri)
        dest.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".mldeploy-fetch-", dir=dest))
        try:
            text = _get_text(store, LISTING, uri)
            if address(text) != sha256:
                raise ArtifactError(f"{join(uri, LISTING)} has sha256 {address(text)}, not {sha256}: "
                                    "the artifact is not the one asked for")
            entries = parse_listing(text, uri)
            for name, want in entries.items():
                target = stage / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    if not store.get(name, out):
                        raise ArtifactError(f"{join(uri, name)} is missing: the artifact is incomplete")
                if (got := hash_file(target)) != want:
                    raise ArtifactError(f"{join(uri, name)} has sha256 {got}, not {want} as {LISTING} says: "
                                        "it was changed after publishing")
            (stage / LISTING).write_text(text, encoding="utf-8")
            for name in [*entries, LISTING]:   # into place only once all of it checked out
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(stage / name, dest / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    except ArtifactError:
        raise
    except MldeployError as e:   # a refusal, a missing bucket, no credentials: unreadable, one class
        raise ArtifactError(f"cannot read the artifact {uri}: {e.message}", hint=e.hint) from None
    except OSError as e:
        raise ArtifactError(f"cannot fetch the artifact {uri} into {dest}: {e}") from None
    return dest


def verify(folder: str | os.PathLike, sha256: str) -> None:
    """Check an artifact that is already on disk (fetched, or mounted by the platform: SageMaker's
    /opt/ml/model, Azure ML's AZUREML_MODEL_DIR): its listing hashes to sha256 and every listed file
    has its hash. Files the listing does not name are not looked at."""
    folder = Path(folder)
    _check_sha(sha256)
    try:
        text = (folder / LISTING).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{folder} holds no readable {LISTING}: {e}") from None
    if address(text) != sha256:
        raise ArtifactError(f"{folder / LISTING} has sha256 {address(text)}, not {sha256}")
    for name, want in parse_listing(text, str(folder)).items():
        try:
            got = hash_file(folder / name)
        except OSError as e:
            raise ArtifactError(f"{folder / name} is unreadable: {e}") from None
        if got != want:
            raise ArtifactError(f"{folder / name} has sha256 {got}, not {want} as {LISTING} says")


def _check_sha(sha256: str) -> None:
    if not SHA256.match(sha256 or ""):
        raise ArtifactError(f"{sha256!r} is not a sha256 (64 lowercase hex digits)")


def _get_text(store: Store, name: str, uri: str) -> str:
    with tempfile.TemporaryFile() as fh:
        if not store.get(name, fh):
            raise ArtifactError(f"{join(uri, name)} does not exist: nothing was published there")
        fh.seek(0)
        try:
            return fh.read().decode("utf-8")
        except UnicodeDecodeError:
            raise ArtifactError(f"{join(uri, name)} is not text: not an mldeploy listing") from None


# -- retention ------------------------------------------------------------------------------------------
def published(storage_uri: str, model: str) -> list[str]:
    """The sha256 of each artifact under <storage_uri>/<model>/ (the prefixes; complete or not)."""
    return sorted(name for name in open_store(join(storage_uri, model)).children() if SHA256.match(name))


def history(storage_uri: str, model: str) -> list[tuple[str, float | None]]:
    """(sha256, when its listing was written) of each artifact under <storage_uri>/<model>/, newest
    first; None (first of all) for one with no listing yet: a publish still running, or one that failed."""
    store = open_store(join(storage_uri, model))
    found = [(sha, store.modified(f"{sha}/{LISTING}")) for sha in published(storage_uri, model)]
    return sorted(found, key=lambda item: -(item[1] or float("inf")))


def prune(storage_uri: str, model: str, keep: Iterable[str], *, last: int = 0, dry_run: bool = True) -> list[str]:
    """Delete the artifacts under <storage_uri>/<model>/ that are neither in keep nor among the `last`
    newest, and not being written now (no listing yet); the ones deleted (or that would be, with
    dry_run). Anything that is not a sha256 prefix is never touched."""
    kept = set(keep)
    found = history(storage_uri, model)
    kept |= {sha for sha, at in found if at is None}
    kept |= {sha for sha, _ in [item for item in found if item[1] is not None][:last]}
    doomed = [sha for sha, _ in found if sha not in kept]
    if not dry_run:
        store = open_store(join(storage_uri, model))
        for sha in doomed:
            store.delete_tree(sha)
    return doomed


def chunks(fh: IO[bytes]) -> Iterator[bytes]:
    yield from iter(lambda: fh.read(CHUNK), b"")
