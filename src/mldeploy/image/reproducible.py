"""Reproducible images: the same bundle builds the same image, on any engine, with or without its cache.

The engine's builder stamps every build with the time, its container's id and the files' times, so
two builds of one context are two images (and a fresh CI runner would deploy a "new" canary for an
unchanged model). As BuildKit's rewrite-timestamp does, the layers the build added are rewritten with
file times clamped to SOURCE_DATE_EPOCH (default 0), and the image config loses the build's time and
container. The base image's own layers are kept as they are.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

from mldeploy.bundle import sha256_file
from mldeploy.errors import UsageError

if TYPE_CHECKING:
    import docker


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not value.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds since 1970")
    return int(value)


def normalize(client: docker.DockerClient, image_id: str, base_layers: list[str], tag: str) -> str:
    """The id of `image_id` made reproducible (and tagged `tag`): layers after `base_layers` rewritten."""
    epoch = source_date_epoch()
    with tempfile.TemporaryDirectory(prefix="mldeploy-reproducible-") as tmp:
        work = Path(tmp)
        saved, out = work / "saved.tar", work / "image.tar"
        with saved.open("wb") as f:
            for chunk in client.api.get_image(image_id):
                f.write(chunk)
        with tarfile.open(saved) as src, tarfile.open(out, "w") as dst:
            manifest = json.load(_member(src, "manifest.json"))[0]
            config = json.load(_member(src, manifest["Config"]))
            diff_ids, paths = [], []
            for i, (path, diff_id) in enumerate(zip(manifest["Layers"], config["rootfs"]["diff_ids"])):
                if i < len(base_layers) and diff_id == base_layers[i]:
                    paths.append(f"{diff_id.split(':')[1]}/layer.tar")
                    _add(dst, paths[-1], _member(src, path), src.getmember(path).size)
                else:
                    rewritten = work / f"layer-{i}.tar"
                    _rewrite_layer(_member(src, path), rewritten, epoch)
                    diff_id = "sha256:" + sha256_file(rewritten)
                    paths.append(f"{diff_id.split(':')[1]}/layer.tar")
                    with rewritten.open("rb") as layer:
                        _add(dst, paths[-1], layer, rewritten.stat().st_size)
                diff_ids.append(diff_id)
            _normalize_config(config, diff_ids, epoch)
            body = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
            config_file = hashlib.sha256(body).hexdigest() + ".json"
            _add_bytes(dst, config_file, body)
            _add_bytes(dst, "manifest.json", json.dumps([{"Config": config_file, "RepoTags": [tag],
                                                           "Layers": paths}]).encode())
        saved.unlink()
        with out.open("rb") as f:
            client.api.load_image(f, quiet=True)
    return "sha256:" + config_file.removesuffix(".json")


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    """A regular file of the saved image (a missing one raises KeyError, as extractfile does)."""
    f = tar.extractfile(name)
    if f is None:
        raise KeyError(f"{name} is not a regular file in the saved image")
    return f


def _rewrite_layer(fileobj: IO[bytes], dest: Path, epoch: int) -> None:
    with tarfile.open(fileobj=fileobj, mode="r|") as src, \
            tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src:
            member.mtime = min(int(member.mtime), epoch)
            member.pax_headers = {k: v for k, v in member.pax_headers.items() if k not in ("atime", "ctime", "mtime")}
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)


def _normalize_config(config: dict, diff_ids: list[str], epoch: int) -> None:
    when = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    config["created"] = when
    for entry in config.get("history", []):
        entry["created"] = when
    config.pop("container", None)  # the id of the build's container
    config.pop("container_config", None)
    config.get("config", {})["Image"] = ""  # the builder's intermediate image
    config["rootfs"]["diff_ids"] = diff_ids


def _add(dst: tarfile.TarFile, name: str, fileobj: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    dst.addfile(info, fileobj)


def _add_bytes(dst: tarfile.TarFile, name: str, body: bytes) -> None:
    _add(dst, name, io.BytesIO(body), len(body))
