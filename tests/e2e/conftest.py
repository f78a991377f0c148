"""The e2e tier's fixture: the cloud registries' TLS front (one port 443)."""

from __future__ import annotations

import os

import pytest

from tests.helpers.cloud_registries import ACR_HOST, AR_HOST, ECR_HOST, CloudRegistries, name_hosts
from tests.helpers.need import unavailable as missing
from tests.helpers.tls import throwaway_tls


@pytest.fixture(scope="session")
def cloud_registries(docker_env, tmp_path_factory):
    """ECR, Artifact Registry and ACR hosts the engine pushes to, and the CA that signed them."""
    def unavailable(why: str):
        missing(f"no cloud registry fronts here: {why}")

    if os.geteuid() != 0:
        unavailable("naming their hosts (/etc/hosts) and trusting their CA (/etc/docker/certs.d) needs root")
    hosts = [ECR_HOST, AR_HOST, ACR_HOST]
    context, ca = throwaway_tls(tmp_path_factory.mktemp("registries-tls"), tuple(hosts))
    try:
        front = CloudRegistries(docker_env["MLDEPLOY_IMAGE__REGISTRY"], context)
    except OSError as e:
        unavailable(f"cannot listen on 127.0.0.1:443 ({e.strerror})")
    undo = name_hosts(hosts, ca)
    yield front, ca
    undo()
    front.close()
