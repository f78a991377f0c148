"""A real Docker engine and registry (scripts/docker-up.sh), and one serving image per test run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.serve.conftest import _save, free_port, linear_graph

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def docker_env() -> dict[str, str]:
    """DOCKER_HOST, the registry and the base image; starts what is missing (as CI does)."""
    run = subprocess.run(["bash", str(ROOT / "scripts" / "docker-up.sh")], capture_output=True, text=True,
                         timeout=900)
    if run.returncode:
        if os.environ.get("CI"):
            pytest.fail(f"no Docker engine in CI: {run.stderr.strip()}")
        pytest.skip(f"no Docker engine here: {run.stderr.strip().splitlines()[-1]}")
    env = dict(line.removeprefix("export ").split("=", 1) for line in run.stdout.splitlines()
               if line.startswith("export "))
    os.environ.update(env)  # the docker SDK and mldeploy read them, in this process and in children
    return env


@pytest.fixture(scope="session")
def docker_client(docker_env):
    import docker

    return docker.from_env()


@pytest.fixture(scope="session")
def serving_image(docker_env, tmp_path_factory) -> tuple[str, Path]:
    """The linear model's serving image, built once per run: (tag, bundle)."""
    from mldeploy.image import build

    bundle = _save(linear_graph(), tmp_path_factory.mktemp("image-linear"))
    built = build(bundle, docker_env["MLDEPLOY_IMAGE__BASE"], "mldeploy-test/linear:latest")
    return built.tag, bundle


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


__all__ = ["free_port", "wait_http"]


def printed_image(out: str) -> str:
    """The image `mldeploy build` printed (repository@digest when pushed, else the local tag)."""
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("image: "))


def starting_line(text: str) -> dict:
    """The server's JSON 'starting' log line, wherever a cloud's tooling printed it."""
    match = re.search(r'\{[^{}]*"message":\s*"starting"[^{}]*\}', text)
    assert match, f"no 'starting' log line in:\n{text[-3000:]}"
    return json.loads(match.group(0))
