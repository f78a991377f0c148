"""The suite's hooks: tier markers by folder, a clean environment per test, the disk figures.

Shared builders, fakes and fixtures live in tests/helpers/; the modules there that define fixtures
are loaded below as plugins, so every folder sees them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

pytest_plugins = [
    "tests.helpers.need",          # first: it reads CI before any test's clean_env removes it
    "tests.helpers.cli",
    "tests.helpers.models",
    "tests.helpers.tls",
    "tests.helpers.aws",
    "tests.helpers.azure_ml",
    "tests.helpers.azure_containerapps",
    "tests.helpers.gcp_vertex",
    "tests.helpers.gcp_cloudrun",
    "tests.helpers.kubernetes",
    "tests.helpers.docker",
    "tests.helpers.act",
]

GIB = 1024 ** 3
_FREE_AT_START = pytest.StashKey[int]()

# A test's folder (under tests/) gives its tier markers; per-test markers (torch, tensorflow, load,
# slow elsewhere) stay on the tests. Every e2e, integration and zoo test is also slow.
FOLDER_MARKERS = {
    "e2e": ("e2e", "slow"),
    "integration": ("integration", "slow"),
    "zoo": ("zoo", "slow"),
}
TESTS = Path(__file__).resolve().parent


def pytest_configure(config):
    config.stash[_FREE_AT_START] = shutil.disk_usage(ROOT).free


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        for name in FOLDER_MARKERS.get(folder, ()):
            item.add_marker(name)


def pytest_terminal_summary(terminalreporter, config):
    # A full disk fails tests far from its cause: the figures say whether that is what happened.
    start, end = config.stash.get(_FREE_AT_START, 0), shutil.disk_usage(ROOT).free
    terminalreporter.write_line(f"disk: {start / GIB:.1f} GiB free at the start, {end / GIB:.1f} GiB at the end")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No test sees the developer's or CI's GitHub or mldeploy settings unless it sets them."""
    for name in list(os.environ):
        if name.startswith(("MLDEPLOY_", "GITHUB_")) or name in ("ACT", "CI"):
            monkeypatch.delenv(name, raising=False)
