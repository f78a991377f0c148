"""Plugin: the `mldeploy` fixture, which runs the real CLI in-process, and helpers around it."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from mldeploy.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str


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


def deploy(mldeploy, project: tuple[Path, Path], image: str, *args) -> Result:
    """`mldeploy deploy --bundle BUNDLE --image IMAGE ARGS...` in a project: (its folder, its bundle)."""
    folder, bundle = project
    return mldeploy("deploy", "--bundle", bundle, "--image", image, *args, cwd=folder)


def one_line(r: Result) -> bool:
    """The command's error output is one line."""
    return len(r.err.strip().splitlines()) == 1


def run_cli(*args) -> tuple[int, str]:
    """`mldeploy ARGS...` in-process, without the mldeploy fixture: (exit code, its stdout and stderr together)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main([str(a) for a in args])
    return code, buf.getvalue()
