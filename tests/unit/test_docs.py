"""The docs site: it builds with `mkdocs build --strict` (a broken link, an unknown anchor, a page missing
from the nav or a nav entry without its page fails), and its generated pages (the actions, reusable
workflow and config references, the targets table) are what scripts/gen-docs.py writes from their
sources today."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.need import need
from tests.helpers.paths import ROOT

BIN = Path(sys.executable).parent


def test_the_site_builds_strict(tmp_path):
    mkdocs = need("mkdocs", "the docs extra installs it (scripts/setup-venv.sh ...,dev)", command=True, path=BIN)
    r = subprocess.run([mkdocs, "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                        "--site-dir", str(tmp_path / "site")], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "actions" / "index.html").is_file()


def test_every_page_is_in_the_nav_and_every_readme_link_into_docs_resolves():
    """mkdocs only warns about a page left out of the nav when told to (validation: omitted_files), and
    it never reads README.md, whose links into docs/ must work on GitHub: both are checked here."""
    nav = set(re.findall(r":\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages == nav, f"in docs/ but not in the nav: {sorted(pages - nav)}; in the nav, no page: {sorted(nav - pages)}"
    links = re.findall(r"\]\((docs/[^)#\s]+)", (ROOT / "README.md").read_text())
    assert links and all((ROOT / link).is_file() for link in links), [link for link in links if not (ROOT / link).is_file()]


def test_the_generated_pages_are_fresh():
    """Fails after an action.yml, the config schema or the target registry changed without
    `python3 scripts/gen-docs.py`; the message says so."""
    need("yaml", "the docs extra installs PyYAML")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-docs.py"), "--check"], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr


def test_the_generator_sees_what_it_documents():
    """The references hold every input and output of every action and of the reusable workflow, and
    every schema key, by name."""
    import json

    import yaml

    actions = (ROOT / "docs" / "reference" / "actions.md").read_text()
    for path in [ROOT / "action.yml", *ROOT.glob("actions/*/action.yml")]:
        spec = yaml.safe_load(path.read_text())
        for name in [*(spec.get("inputs") or {}), *(spec.get("outputs") or {})]:
            assert f"| `{name}` |" in actions, f"{path.relative_to(ROOT)}: {name}"
    call = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())[True]["workflow_call"]
    for name in [*call["inputs"], *call["outputs"]]:
        assert f"| `{name}` |" in actions.split("## The reusable workflow", 1)[1], f"deploy.yml: {name}"
    config = (ROOT / "docs" / "reference" / "config.md").read_text()
    schema = json.loads((ROOT / "schema" / "mldeploy.schema.json").read_text())
    for name in schema["properties"]:
        assert f"| `{name}` |" in config
    for key in ("deploy.port", "deploy.aws.lambda.memory_mb", "monitoring.canary.window_seconds", "inputs[].shape"):
        assert f"| `{key}` |" in config, key


def test_no_table_cell_holds_a_pipe_inside_backticks():
    """Markdown ends a table cell at a pipe even inside a code span (GitHub's and MkDocs' alike), which
    mkdocs does not warn about: the row silently gets a column more."""
    found = [f"{page.relative_to(ROOT)}:{n}: {span}" for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
             for n, line in enumerate(page.read_text().splitlines(), 1) if line.startswith("|")
             for span in re.findall(r"`([^`]*)`", line) if "|" in span]
    assert not found, found
