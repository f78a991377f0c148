"""The integration tier's fixtures: a Docker SDK client, one serving image per test run, and pushed
digests of it (the engine and registry themselves: `docker_env`, tests/helpers/docker.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.docker import printed_image, variant
from tests.helpers.models import linear_graph, save_bundle


@pytest.fixture(scope="session")
def docker_client(docker_env):
    import docker

    return docker.from_env()


@pytest.fixture(scope="session")
def serving_image(docker_env, tmp_path_factory) -> tuple[str, Path]:
    """The linear model's serving image, built once per run: (tag, bundle)."""
    from mldeploy.image import build

    bundle = save_bundle(linear_graph(), tmp_path_factory.mktemp("image-linear"))
    built = build(bundle, docker_env["MLDEPLOY_IMAGE__BASE"], "mldeploy-test/linear:latest")
    return built.tag, bundle


@pytest.fixture(scope="module")
def images(serving_image, docker_env, docker_client, tmp_path_factory) -> tuple[Path, str, str, str]:
    """The bundle, its pushed digest, a second digest of the same model, and one that crashes on start."""
    _, bundle = serving_image
    code, out = run_cli("build", "--bundle", bundle, "--base", docker_env["MLDEPLOY_IMAGE__BASE"], "--push",
                         "--registry", docker_env["MLDEPLOY_IMAGE__REGISTRY"])
    assert code == 0, out
    good = printed_image(out)
    second = variant(docker_client, good, "second", 'LABEL variant="second"', tmp_path_factory.mktemp("second"))
    crashing = variant(docker_client, good, "crashing", 'ENTRYPOINT ["/bin/false"]', tmp_path_factory.mktemp("crash"))
    return bundle, good, second, crashing
