"""The target registry is the one list of targets: everything else is derived from it."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mldeploy import targets as registry
from mldeploy.deploy.base import Target

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "mldeploy"


@pytest.mark.parametrize("entry", registry.BUILTIN, ids=lambda e: f"{e.cloud}-{e.name}")
def test_every_entry_names_a_target_class(entry):
    cls = getattr(importlib.import_module(entry.module), entry.cls)
    assert issubclass(cls, Target) and not getattr(cls, "__abstractmethods__", None)


def test_the_docs_targets_table_is_the_registrys():
    page = (ROOT / "docs" / "deploy.md").read_text()
    table = re.search(r"<!-- targets:start -->\n(.*?)\n<!-- targets:end -->", page, re.S)
    assert table and table.group(1) == registry.markdown_table(), "regenerate: python3 scripts/gen-docs.py"


def test_the_actions_install_every_targets_extra_and_nothing_else_is_needed_to_list_them():
    # scripts/action-setup.sh runs the file alone, before the kit is installed: standard library only
    r = subprocess.run([sys.executable, "-I", str(SRC / "targets.py"), "extras"], capture_output=True,
                       text=True, check=True, cwd="/")
    assert set(r.stdout.split()) == {e.extra for e in registry.BUILTIN if e.extra} | {"aws", "gcp", "azure"}
    assert "targets.py\" extras" in (ROOT / "scripts" / "action-setup.sh").read_text()


def test_the_actions_install_the_extra_of_the_target_they_deploy_to():
    """`targets.py extra CLOUD TARGET` (action-setup.sh's extra `target`): the target's own, the cloud's
    default target's when TARGET is empty; an unknown one is exit 2 naming the targets."""
    def extra(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-I", str(SRC / "targets.py"), "extra", *args], capture_output=True,
                              text=True, check=False, cwd="/")

    assert extra("aws", "eks").stdout.strip() == registry.find("aws", "eks").extra == "eks"   # not the cloud's
    assert extra("kubernetes", "").stdout.strip() == registry.find("kubernetes", None).extra
    assert extra("local").stdout.strip() == registry.find("local", None).extra
    bad = extra("aws", "gke")
    assert bad.returncode == 2 and "aws eks" in bad.stderr and not bad.stdout
    assert 'targets.py" extra "$cloud" "$target"' in (ROOT / "scripts" / "action-setup.sh").read_text()


def test_config_and_cli_take_their_choices_from_the_registry():
    from mldeploy.config import DeploySection

    for entry in registry.BUILTIN:
        assert DeploySection(cloud=entry.cloud, target=entry.name).target == entry.name
    assert [DeploySection(cloud=c).target for c in registry.clouds()] == \
        [registry.targets_of(c)[0] for c in registry.clouds()]
    r = subprocess.run([sys.executable, "-m", "mldeploy", "deploy", "--help"], capture_output=True, text=True, check=False)
    assert "{" + ",".join(registry.clouds()) + "}" in r.stdout


def test_no_module_branches_on_a_targets_name():
    """A target's name, quoted, appears only in its own modules (deploy/<module>*.py) and the registry.
    The serving runtime (serve/) speaks each platform's container contract and is not looked at;
    config.py's settings sections carry their YAML keys (deploy.aws.lambda)."""
    own = {name: e.module.rsplit(".", 1)[-1].rstrip("_") for e in registry.BUILTIN
           for name in {e.name, getattr(importlib.import_module(e.module), e.cls).name} - {"docker"}}
    # ("docker", the local target's name, is also the Docker SDK's package, which deploy/ names as such)
    found = []
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith("serve/") or relative in ("targets.py", "config.py"):
            continue
        text = path.read_text()
        for name, module in own.items():
            if not relative.startswith(f"deploy/{module}") and re.search(rf"[\"']{name}[\"']", text):
                found.append(f"{relative} names {name!r}")
    assert not found, found


def test_the_test_run_and_the_all_extra_install_every_targets_extra():
    """A target whose SDK the test venv lacks fails CI's type gate (or skips its tests): scripts/test.sh
    and the `all` extra install every extra the registry names."""
    installed = re.search(r"^scripts/setup-venv\.sh (\S+)$", (ROOT / "scripts" / "test.sh").read_text(), re.M)
    all_extra = re.search(r'^all = \["mldeploy\[([\w,]+)\]"\]$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert installed and all_extra
    for extras in (installed[1], all_extra[1]):
        assert set(registry.extras()) <= set(extras.split(",")), extras
