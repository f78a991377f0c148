"""file:///DIR: artifacts in a local folder (the local target, and tests). No versions: the content
hash stands for one. A key is created by a hard link from a finished temporary file, which fails when
the name exists, so two publishers never overwrite each other and a reader never sees half a file."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from typing import IO

from mldeploy.errors import UsageError


class FileStore:
    kind = "file"

    def __init__(self, uri: str):
        parts = urllib.parse.urlsplit(uri)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise UsageError(f"{uri} is not a local folder URI", hint="use file:///ABSOLUTE/DIR")
        self.root = uri
        self.path = Path(urllib.parse.unquote(parts.path))

    def get(self, key: str, out: IO[bytes]) -> bool:
        try:
            with open(self.path / key, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise UsageError(f"cannot read {self.path / key}: {e.strerror}") from None
        return True

    def create(self, key: str, source: Path) -> str | None:
        target = self.path / key
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=target.parent)
            os.close(fd)
            try:
                shutil.copyfile(source, tmp)
                os.chmod(tmp, 0o444)   # an artifact is never edited in place
                os.link(tmp, target)
            except FileExistsError:
                return None
            finally:
                os.unlink(tmp)
        except OSError as e:
            raise UsageError(f"cannot write {target}: {e.strerror}",
                             hint="check storage.uri: the folder must be writable") from None
        return ""   # written; no version (publish records the content hash)

    def version(self, key: str) -> str | None:
        return None

    def versioned(self) -> bool | None:
        return None   # a folder has no versions and nothing to turn on: no warning

    def modified(self, key: str) -> float | None:
        try:
            return (self.path / key).stat().st_mtime
        except FileNotFoundError:
            return None

    def children(self) -> list[str]:
        try:
            return sorted(p.name for p in self.path.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    def delete_tree(self, name: str) -> int:
        tree = self.path / name
        count = sum(1 for p in tree.rglob("*") if p.is_file())
        shutil.rmtree(tree)
        return count


def open_store(uri: str) -> FileStore:
    return FileStore(uri)
