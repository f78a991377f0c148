"""Every workflow and action the kit ships or tests with passes zizmor (offline, pedantic) and actionlint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
WORKFLOWS = sorted(p for d in (ROOT / ".github" / "workflows", ROOT / "workflows", ROOT / "examples" / "model-repo" /
                                ".github" / "workflows", ROOT / "tests" / "e2e" / "workflows")
                   if d.is_dir() for p in d.glob("*.yml"))
ACTIONS = sorted([ROOT / "action.yml", *ROOT.glob("actions/*/action.yml"), *ROOT.glob("tests/e2e/standins/*/action.yml")])


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (the dev extra installs it)")
    return found


def test_zizmor_finds_nothing():
    r = subprocess.run([tool("zizmor"), "--offline", "--persona", "pedantic", "--config",
                        str(ROOT / ".github" / "zizmor.yml"), *map(str, WORKFLOWS + ACTIONS)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "No findings" in r.stdout + r.stderr


def test_actionlint_finds_nothing():
    r = subprocess.run([tool("actionlint"), "-no-color", *map(str, WORKFLOWS)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
