"""Shared test helpers: run the real CLI in-process, and keep each test's environment clean."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mldeploy.cli import main

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
THIS_VENV = Path(sys.prefix)
_FREE_AT_START = pytest.StashKey[int]()


def pytest_configure(config):
    config.stash[_FREE_AT_START] = shutil.disk_usage(ROOT).free


def pytest_terminal_summary(terminalreporter, config):
    # A full disk fails tests far from its cause: the figures say whether that is what happened.
    start, end = config.stash.get(_FREE_AT_START, 0), shutil.disk_usage(ROOT).free
    terminalreporter.write_line(f"disk: {start / GIB:.1f} GiB free at the start, {end / GIB:.1f} GiB at the end")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No test sees the developer's or CI's GitHub or mldeploy settings unless it sets them."""
    for name in list(os.environ):
        if name.startswith(("MLDEPLOY_", "GITHUB_")) or name in ("ACT", "CI"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def mldeploy(monkeypatch, capsys):
    """Run `mldeploy ARGS...` in-process (optionally in `cwd`); returns exit code, stdout, stderr."""

    def run(*args, cwd: Path | None = None) -> Result:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def git_tracked_copy(src: Path, dest: Path) -> Path:
    """Copy the files git would ship (tracked and new, not ignored): what a clean clone holds."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (src / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)
    return dest


def share_identical_files(*folders: Path) -> None:
    """Hard-link the files these folders hold in common (this venv's packages, installed again in the
    act runs' kit venv and the cloud SDKs' venvs): about 1.4 GiB less disk for a whole run.
    Best effort: nothing happens without util-linux's hardlink. Installs replace files rather than
    write into them, so a later install in one folder never changes another."""
    tool = shutil.which("hardlink")
    existing = [str(f) for f in folders if f.is_dir()]
    if tool and len(existing) > 1:
        subprocess.run([tool, "--quiet", "--ignore-time", "--minimum-size", "32K", *existing], check=False)
