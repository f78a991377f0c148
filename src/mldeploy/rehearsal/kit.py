"""The kit a rehearsal runs: a checkout of acme/ml-deploy (action.yml, actions/, the reusable workflow,
scripts/, src/), found and copied the way act can map it with `--local-repository acme/ml-deploy@v2=COPY`.

The copy holds what a clean clone holds, and its workflows reach the kit's actions as act accepts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from mldeploy.errors import UsageError

# what makes a folder the kit: the umbrella action, the reusable workflow and the setup the actions run
KIT_FILES = ("action.yml", ".github/workflows/deploy.yml", "scripts/action-setup.sh", "pyproject.toml")
# skipped when the kit is no git checkout (a tarball): what a clone would not hold either
NOT_SHIPPED = shutil.ignore_patterns(".git", ".venv", "build", "__pycache__", "*.egg-info", ".mldeploy", "*.pyc",
                                     ".*_cache", ".sdk-venvs")


def find_kit(given: str | None = None) -> Path:
    """--kit, else $MLDEPLOY_KIT, else the checkout this mldeploy is installed from (pip install -e)."""
    import mldeploy

    for source, path in (("--kit", given), ("MLDEPLOY_KIT", os.environ.get("MLDEPLOY_KIT") or None)):
        if path:
            kit = Path(path).expanduser().resolve()
            if not is_kit(kit):
                raise UsageError(f"{source} {path} is not a checkout of the kit (no {', '.join(KIT_FILES)})",
                                 hint="point it at a clone of acme/ml-deploy")
            return kit
    installed = Path(mldeploy.__file__).resolve().parents[2]  # <checkout>/src/mldeploy/__init__.py
    if is_kit(installed):
        return installed
    raise UsageError("the kit's actions and workflows are not here: this mldeploy is installed from a wheel, "
                     "which holds the package only",
                     hint="clone acme/ml-deploy and pass --kit PATH (or set MLDEPLOY_KIT), or install it with "
                          "`pip install -e CLONE`")


def is_kit(folder: Path) -> bool:
    return all((folder / f).is_file() for f in KIT_FILES)


def git_tracked_copy(src: Path, dest: Path) -> Path:
    """Copy the files git would ship (tracked and new, not ignored): what a clean clone holds."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (src / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)
    return dest


def act_self_refs(kit: Path) -> None:
    """act rejects GitHub's `uses: $/path` (the workflow's own repository at the commit that runs).
    In the kit's copy it becomes `acme/ml-deploy/path@v2`, which --local-repository maps to this very
    copy: the same files, as `$/` means on GitHub."""
    for wf in (kit / ".github" / "workflows").glob("*.yml"):
        wf.write_text(re.sub(r"(uses:\s*)\$/([\w./-]+)", r"\1acme/ml-deploy/\2@v2", wf.read_text()))


def kit_copy(kit: Path, dest: Path) -> Path:
    """A copy of the kit as a clean clone holds it (the whole tree when it is no git checkout), ready for act."""
    if (kit / ".git").exists():
        git_tracked_copy(kit, dest)
    else:
        shutil.copytree(kit, dest, ignore=NOT_SHIPPED, dirs_exist_ok=True)
    act_self_refs(dest)
    return dest
