"""Plugin: a real Docker engine and registry (`docker_env`: scripts/docker-up.sh starts what is
missing, as CI does), and waiting on what runs in them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.need import IN_CI, unavailable
from tests.helpers.paths import ROOT


@pytest.fixture(scope="session")
def docker_env() -> dict[str, str]:
    """DOCKER_HOST, the registry and the base image; starts what is missing (as CI does)."""
    run = subprocess.run(["bash", str(ROOT / "scripts" / "docker-up.sh")], capture_output=True, text=True,
                         timeout=900, check=False)
    if run.returncode:
        stderr = run.stderr.strip() or f"scripts/docker-up.sh exited {run.returncode}"
        unavailable(f"no Docker engine here: {stderr if IN_CI else stderr.splitlines()[-1]}")
    env = dict(line.removeprefix("export ").split("=", 1) for line in run.stdout.splitlines()
               if line.startswith("export "))
    os.environ.update(env)  # the docker SDK and mldeploy read them, in this process and in children
    return env


def wait_http(url: str, timeout: float = 60, method: str = "GET", body: bytes | None = None) -> float:
    """Seconds until url answers 200."""
    import urllib.error
    import urllib.request

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            req = urllib.request.Request(url, data=body, method=method,
                                         headers={"content-type": "application/json"} if body else {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s")


def printed_image(out: str) -> str:
    """The image `mldeploy build` printed (repository@digest when pushed, else the local tag)."""
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("image: "))


def starting_line(text: str) -> dict:
    """The server's JSON 'starting' log line, wherever a cloud's tooling printed it."""
    match = re.search(r'\{[^{}]*"message":\s*"starting"[^{}]*\}', text)
    assert match, f"no 'starting' log line in:\n{text[-3000:]}"
    return json.loads(match.group(0))


def variant(docker_client, image: str, tag: str, extra: str, folder: Path) -> str:
    """Another digest of `image` (a Dockerfile line more), pushed beside it: its repository@digest."""
    repository = image.split("@")[0]
    (folder / "Dockerfile").write_text(f"FROM {image}\n{extra}\n")
    docker_client.images.build(path=str(folder), tag=f"{repository}:{tag}", rm=True)
    digest = None
    for chunk in docker_client.api.push(repository, tag=tag, stream=True, decode=True):
        digest = (chunk.get("aux") or {}).get("Digest") or digest
    return f"{repository}@{digest}"
