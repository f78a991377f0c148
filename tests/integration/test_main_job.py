"""The README's first command, as a new user runs it: scripts/run-local.sh sets up what is missing and
runs the main job on `cloud: local` (convert, optimize, build, push, deploy, smoke, a canary taking
its share of 500 requests, promote)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import ROOT
from tests.helpers.server import free_port

MLDEPLOY = str(Path(sys.executable).with_name("mldeploy"))


def test_the_readmes_first_command_runs_the_main_job(docker_env):
    port = free_port()
    # its own endpoint and port, so nothing else this suite deploys is touched
    env = {**os.environ, **docker_env, "MLDEPLOY_DEPLOY__ENDPOINT": "main-job", "MLDEPLOY_DEPLOY__PORT": str(port)}
    example = ROOT / "examples" / "model-repo"
    try:
        r = subprocess.run(["bash", str(ROOT / "scripts" / "run-local.sh")], check=False, cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=1500)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        assert "pipeline done in" in r.stdout, r.stdout[-4000:]
        shares = re.search(r"500 requests: canary (\d+), production (\d+)", r.stdout)
        assert shares and 50 <= int(shares[1]) <= 160, r.stdout[-4000:]  # 20% of 500, give or take chance
        assert f"the endpoint answers at http://127.0.0.1:{port}" in r.stdout
        status = subprocess.run([MLDEPLOY, "status"], check=False, cwd=example, env=env, capture_output=True, text=True, timeout=120)
        assert status.returncode == 0 and re.search(r"production\s+100%\s+healthy", status.stdout), status.stdout
        assert "canary" not in status.stdout  # promoted
    finally:
        subprocess.run([MLDEPLOY, "destroy"], check=False, cwd=example, env=env, capture_output=True, timeout=300)
