"""`need(...)`: a test that cannot run here without a tool or module skips with the reason outside
CI and fails in CI, which installs everything (scripts/test.sh): nothing may skip there unnoticed.

CI is `CI=true` (or 1, yes) in the environment, as GitHub Actions and .ci/run set it. It is read once,
when pytest loads this plugin: the autouse `clean_env` fixture removes CI from every test's
environment, so a test must not read it itself.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str):
    """Skip (outside CI) or fail (in CI) the current test, or the whole module at import, with `reason`."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must run every test)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def need(what: str, why: str, *, command: bool = False, path: str | Path | None = None) -> ModuleType | str:
    """The module `what` imported, or with command=True the path of the command `what` (looked for
    in `path` first, when given, then on PATH). When it is missing: `unavailable("<what> is missing:
    <why>")`, i.e. a skip outside CI and a failure in CI. `why` says what installs it.

        moto = need("moto", "the dev extra installs it")            # at module level or in a test
        wrk = need("wrk", "scripts/setup-system.sh installs it", command=True)
    """
    if command:
        found = (shutil.which(what, path=str(path)) if path is not None else None) or shutil.which(what)
        if found:
            return found
        unavailable(f"{what} is not installed: {why}")
    try:
        return importlib.import_module(what)
    except ImportError as e:
        unavailable(f"{what} is not installed: {why} ({e})")
