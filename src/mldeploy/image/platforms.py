"""The platforms an image has, read from its registry over the distribution API (what a runtime pulls
with): the entries of a multi-platform index, else the config blob of the one manifest.

A deploy checks them against where the image will run before anything changes: ECS finds a mismatch
only when its tasks fail to pull (or, worse, start and die with `exec format error`)."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import urllib.error
import urllib.parse
import urllib.request

from mldeploy import __version__
from mldeploy.errors import MldeployError

INDEX = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
TIMEOUT = 10
CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class Unreadable(Exception):
    """The registry could not say (unreachable, no login for it, no such manifest): not judged."""


def _loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if host.count(":") <= 1 or host.startswith("[") else host
    try:
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split(image: str) -> tuple[str, str, str]:
    """registry host, repository and digest of repository@sha256:... (Docker Hub's short names included)."""
    repository, _, digest = image.partition("@")
    first, _, rest = repository.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        first, rest = "registry-1.docker.io", repository if rest else f"library/{repository}"
    return first, rest, digest


class _Reader:
    """GETs against one registry, answering its 401 challenge once (Basic, or a Bearer token)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.base = f"{'http' if _loopback(host) else 'https'}://{host}/v2/"
        self.auth: str | None = None

    def get(self, path: str, accept: tuple[str, ...] = ()) -> bytes:
        for attempt in range(2):
            request = urllib.request.Request(self.base + path, headers={
                "Accept": ", ".join(accept) or "*/*", "User-Agent": f"mldeploy/{__version__}"})
            if self.auth:  # not sent on to where a blob redirects (S3 wants its own signature alone)
                request.add_unredirected_header("Authorization", self.auth)
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as r:
                    return bytes(r.read())
            except urllib.error.HTTPError as e:
                if e.code == 401 and attempt == 0:
                    self.auth = self._login(e.headers.get("WWW-Authenticate", ""))
                    continue
                raise Unreadable(f"{self.host} answered {e.code} for /v2/{path}") from None
            except (urllib.error.URLError, OSError) as e:
                raise Unreadable(f"{self.host} cannot be reached: {getattr(e, 'reason', e)}") from None
        raise Unreadable(f"{self.host} refused the login")

    def _login(self, challenge: str) -> str:
        from mldeploy.image import registry_auth

        try:
            creds = registry_auth(self.host)
        except MldeployError as e:
            raise Unreadable(f"no login for {self.host}: {e.message}") from None
        basic = creds and base64.b64encode(f"{creds['username']}:{creds['password']}".encode()).decode()
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if not basic:
                raise Unreadable(f"{self.host} wants a login and none is configured")
            return f"Basic {basic}"
        if scheme != "bearer":
            raise Unreadable(f"{self.host} asks for {scheme or 'an unknown'} authentication")
        params = dict(CHALLENGE.findall(challenge))
        query = urllib.parse.urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
        request = urllib.request.Request(f"{params.get('realm', '')}?{query}")
        if basic:
            request.add_header("Authorization", f"Basic {basic}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as r:
                answer = json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise Unreadable(f"{self.host}'s token service refused: {getattr(e, 'reason', e)}") from None
        return f"Bearer {answer.get('token') or answer.get('access_token')}"


def platforms(image: str) -> set[str]:
    """'os/architecture' of each build of repository@sha256:...; Unreadable when the registry cannot say."""
    host, name, digest = split(image)
    reader = _Reader(host)
    raw = reader.get(f"{name}/manifests/{digest}", INDEX + MANIFEST)
    if digest.startswith("sha256:") and hashlib.sha256(raw).hexdigest() != digest.removeprefix("sha256:"):
        raise Unreadable(f"{host} answered a manifest that is not {digest}")
    manifest = json.loads(raw)
    if "manifests" in manifest:  # attestations are listed as unknown/unknown
        return {f"{p.get('os')}/{p.get('architecture')}" for m in manifest["manifests"]
                if (p := m.get("platform")) and p.get("os") != "unknown"}
    config = json.loads(reader.get(f"{name}/blobs/{manifest['config']['digest']}"))
    return {f"{config.get('os')}/{config.get('architecture')}"}
