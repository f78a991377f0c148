"""The servers most serve tests talk to: real `mldeploy serve` processes, one per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.models import linear_graph, save_bundle, two_io_graph
from tests.helpers.server import API_KEY, OIP_MAX_BODY, free_port, start_server


@pytest.fixture(scope="session")
def linear_bundle(tmp_path_factory) -> Path:
    return save_bundle(linear_graph(), tmp_path_factory.mktemp("linear"))


@pytest.fixture(scope="session")
def two_io_bundle(tmp_path_factory) -> Path:
    return save_bundle(two_io_graph(), tmp_path_factory.mktemp("two"))


@pytest.fixture(scope="session")
def server(linear_bundle, tmp_path_factory):
    """The linear model under 2 workers: what most contract tests talk to."""
    s = start_server(linear_bundle, tmp_path_factory.mktemp("server"), workers=2)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def two_io_server(two_io_bundle, tmp_path_factory):
    s = start_server(two_io_bundle, tmp_path_factory.mktemp("server2"), workers=1)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def oip_server(two_io_bundle, tmp_path_factory):
    """The two-input model under 2 workers with gRPC on (server.grpc_port), an API key and a 64 KiB
    message cap: what test_grpc.py and test_binary_tensors.py talk to."""
    grpc_port = free_port()
    s = start_server(two_io_bundle, tmp_path_factory.mktemp("oip"), workers=2,
                     env={"MLDEPLOY_GRPC_PORT": str(grpc_port), "MLDEPLOY_API_KEYS": API_KEY,
                          "MLDEPLOY_MAX_BODY_BYTES": str(OIP_MAX_BODY)})
    s.grpc_port = grpc_port
    yield s
    s.stop()
