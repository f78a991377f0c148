"""The docs' config table (docs/config.md) names every deploy.* key the schema has;
the reusable workflow's rollback button passes --missing-ok, so a second press stays green."""

from __future__ import annotations

import re

import yaml

from mldeploy.config import DeploySection, Section
from tests.helpers.paths import ROOT


def config_table() -> str:
    return (ROOT / "docs" / "config.md").read_text()


def test_every_plain_deploy_key_has_a_row_in_the_readme_config_table():
    rows = [line for line in config_table().splitlines() if line.startswith("| `")]
    named = {key for line in rows for key in re.findall(r"`(deploy\.[a-z_]+)`", line.split("|")[1])}
    plain = {f"deploy.{name}" for name, f in DeploySection.model_fields.items()
             if not (isinstance(f.annotation, type) and issubclass(f.annotation, Section))}
    assert "deploy.port" in plain
    assert plain <= named, f"missing from the config table in docs/config.md: {sorted(plain - named)}"


def test_the_rollback_button_tolerates_nothing_to_roll_back():
    caller = yaml.safe_load((ROOT / "workflows" / "rollback.yml").read_text())
    job = caller["jobs"]["rollback"]
    assert job["uses"].split("@")[0].endswith("/.github/workflows/deploy.yml")
    assert job["with"]["stage"] == "rollback"
    kit = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())
    step = next(s for job in kit["jobs"].values() for s in job.get("steps", []) if s.get("id") == "slots")
    assert "inputs.stage == 'rollback'" in step["if"]
    # the command is `rollback` for the rollback stage, and its args carry --missing-ok for that stage
    flag = next(line for line in step["with"]["args"].splitlines() if "--missing-ok" in line)
    assert re.search(r"inputs\.stage == 'rollback'\)? && '--missing-ok'", flag), flag
