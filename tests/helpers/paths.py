"""Where things are (this checkout, this venv). (Copies of the checkout as a clean clone holds it:
mldeploy.rehearsal.kit.git_tracked_copy.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THIS_VENV = Path(sys.prefix)


def share_identical_files(*folders: Path) -> None:
    """Hard-link the files these folders hold in common (this venv's packages, installed again in the
    act runs' kit venv and the cloud SDKs' venvs): about 1.4 GiB less disk for a whole run.
    Best effort: nothing happens without util-linux's hardlink. Installs replace files rather than
    write into them, so a later install in one folder never changes another."""
    tool = shutil.which("hardlink")
    existing = [str(f) for f in folders if f.is_dir()]
    if tool and len(existing) > 1:
        subprocess.run([tool, "--quiet", "--ignore-time", "--minimum-size", "32K", *existing], check=False)
