"""The Jenkinsfile template runs the pipeline through the CLI: every mldeploy command line in it must
parse with this mldeploy's own parser, so the template cannot drift from the CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import mldeploy
from mldeploy.cli import _parser

JENKINSFILE = Path(mldeploy.__file__).parent / "templates" / "Jenkinsfile"


def mldeploy_lines() -> list[list[str]]:
    text = JENKINSFILE.read_text().replace("\\\n", " ")  # join continued shell lines
    lines = []
    for match in re.finditer(r'"\$VENV/bin/mldeploy" ([^\n\']*)', text):
        words = shlex.split(match[1].split("#", 1)[0].replace("$", "X"))
        lines.append([w for w in words if w not in ("&&", "||")])
    return lines


def test_the_jenkinsfile_runs_the_whole_pipeline():
    commands = {" ".join(w for w in words[:2] if not w.startswith("-")) for words in mldeploy_lines()}
    assert {"convert", "optimize", "build", "deploy", "canary analyze", "report", "rollback"} <= {
        c.split()[0] if c.split()[0] != "canary" else c for c in commands}


@pytest.mark.parametrize("words", mldeploy_lines(), ids=lambda w: " ".join(w[:3]))
def test_every_mldeploy_line_parses(words, capsys):
    try:
        _parser().parse_args(words)
    except SystemExit as e:  # argparse exits 2 on an unknown command or flag
        pytest.fail(f"`mldeploy {' '.join(words)}` does not parse: {capsys.readouterr().err.strip()}"
                    f" (exit {e.code})")
