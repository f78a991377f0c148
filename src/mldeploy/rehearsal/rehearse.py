"""`mldeploy rehearse`: run a model repo's own workflow under act on this machine, before GitHub does.

The kit is mapped to a copy of its checkout, the remote actions to the stand-ins, GitHub's REST API to
a local fake (which keeps the pull request comment the report job posts), and the jobs run on this host
against the local Docker engine and registry, as `mldeploy run` uses them. It ends with the truth:
which jobs ran and how, the comment, and what the local endpoint serves, read back.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from mldeploy.errors import CheckFailed, UsageError
from mldeploy.rehearsal import act, events
from mldeploy.rehearsal.fake_github import FakeGitHub
from mldeploy.rehearsal.kit import find_kit, kit_copy

TOKEN = "ghs_rehearsal0123456789abcdef"  # the job's GITHUB_TOKEN: a fake, only the fake API takes it
STATE = Path(".mldeploy") / "rehearse"    # in the model repo (ignored by git): the fake's state and act's logs
# act's lines worth showing as it goes: a job starting and ending, a step failing, an error annotation
PROGRESS = re.compile(r"^\[(?P<job>[^\]]+?)\s*\]\s+(?:(?P<start>⭐ Run Set up job)|🏁  Job (?P<end>\w+)|"
                      r"❌  Failure - (?P<step>.+)|❗  (?P<error>::error.*))$")


def rehearse(folder: Path, workflow: str | None = None, event: str | None = None, pr: int = 1,
             kit: str | None = None) -> int:
    if event is not None and event not in events.EVENTS:
        raise UsageError(f"unknown event {event}", hint=f"one of: {', '.join(events.EVENTS)}")
    if pr < 1:
        raise UsageError(f"--pr {pr} is no pull request number", hint="a number from 1 up")
    root = git_root(folder)
    repository = github_repository(root)
    run = events.pick(root / ".github" / "workflows", workflow, event, repository, pr)
    events.refuse_clouds(run)
    binary = act.find_act()
    cfg = _config(root, run)
    _engine()
    kit_path = find_kit(kit)

    state = root / STATE
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / f"act-{run.workflow.stem}.log"
    what = f"{run.event} #{pr}" if run.event == "pull_request" else run.event
    print(f"rehearse: {run.workflow.relative_to(root)} on {what} as {repository}, kit {kit_path}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mldeploy-rehearse-") as tmp:
        work = Path(tmp)
        copy = kit_copy(kit_path, work / "kit")
        (work / "event.json").write_text(json.dumps(run.payload), encoding="utf-8")
        fake = FakeGitHub(TOKEN, state=state / "github.json")
        before = {i: c["body"] for i, c in fake.comments.items()}
        env = {"GITHUB_REPOSITORY": repository,  # act would read it from `origin`; the payload names the same
               "GITHUB_API_URL": fake.url,
               "MLDEPLOY_ACT_ARTIFACTS": str(work / "artifacts"),
               # every deploy checks the image's attestation, as on GitHub (act alone turns it off)
               "MLDEPLOY_DEPLOY__REQUIRE_PROVENANCE": "true", "MLDEPLOY_SIGNER_WORKFLOW": events.KIT_WORKFLOW}
        args = act.command(binary, run.event, run.workflow, work / "event.json", copy, env, {"GITHUB_TOKEN": TOKEN})
        try:
            code, log = _stream(args, root, log_path)
        finally:
            fake.close()
    jobs = act.Jobs.of(log)
    posted = [c for i, c in sorted(fake.comments.items()) if before.get(i) != c["body"]]  # new or updated
    _summary(jobs, code, re.findall(r"\| ### (.+ mldeploy: .+)$", log, re.M), posted, log_path)
    _serving(cfg, log)
    if jobs.ran == 0:
        raise CheckFailed(f"act ran no job of {run.workflow.name}: every job's `if:` was false for this event "
                          f"(act exited {code})", hint=f"the whole run is in {log_path}")
    if code != 0 or jobs.failed:
        raise CheckFailed(f"the rehearsal of {run.workflow.name} failed: "
                          f"{', '.join(jobs.failed) or f'act exited {code}'}",
                          hint=f"the errors are above; the whole run is in {log_path}")
    return 0


def git_root(folder: Path) -> Path:
    try:
        found = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True,
                               text=True, check=False)
    except FileNotFoundError:
        raise UsageError("git is not installed, and act reads the repository with it",
                         hint="install git (e.g. apt-get install git)") from None
    if found.returncode != 0:
        raise UsageError(f"{folder.resolve()} is not in a git repository, and act runs a repository's workflows",
                         hint="git init (and commit), then rehearse")
    return Path(found.stdout.strip())


def github_repository(root: Path) -> str:
    """owner/name from the `origin` remote, as act reads it; `local/<folder>` when there is none."""
    url = subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"], capture_output=True, text=True,
                         check=False).stdout.strip()
    m = re.search(r"[:/]([\w.-]+)/([\w.-]+?)(?:\.git)?/?$", url)
    return f"{m[1]}/{m[2]}" if m else "local/" + re.sub(r"[^\w.-]", "-", root.name)


def _config(root: Path, run: events.Run) -> Any:
    """The model repo's config, as the workflow's jobs read it (they need a registry to push to)."""
    from mldeploy.config import load_config

    given = next(iter(events.kit_calls(events.read(run.workflow)).values()), {})
    path = root / str(given.get("working-directory", ".")) / str(given.get("config", "mldeploy.yaml"))
    if not path.is_file():
        raise UsageError(f"no {path.relative_to(root)} in {root}", hint="`mldeploy init` writes one")
    cfg = load_config(path)
    if not cfg.image.registry:
        raise UsageError("image.registry is not set: the workflow's push job has nowhere to push the image",
                         hint="set MLDEPLOY_IMAGE__REGISTRY (or image.registry), e.g. a local registry on "
                              "127.0.0.1:5000 (the kit's scripts/docker-up.sh starts one)")
    return cfg


def _engine() -> None:
    """The Docker engine the jobs build and deploy on answers (DOCKER_HOST), or a UsageError."""
    try:
        from mldeploy.image import engine
    except ImportError:
        raise UsageError("the Docker SDK is not installed", hint="pip install 'mldeploy[rehearse]'") from None
    engine()


def _stream(args: list[str], cwd: Path, log_path: Path) -> tuple[int, str]:
    """Run act, its whole output to log_path and its progress lines to stdout; (exit code, output)."""
    lines = []
    with open(log_path, "w", encoding="utf-8") as log, \
            subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            if m := PROGRESS.match(line.rstrip("\n")):
                said = "started" if m["start"] else m["end"] or (f"step failed: {m['step']}" if m["step"] else m["error"])
                print(f"{m['job']}: {said}", flush=True)
    return proc.returncode, "".join(lines)


def _summary(jobs: act.Jobs, code: int, reports: list[str], comments: list[dict[str, Any]], log_path: Path) -> None:
    print("\n--- rehearsal summary")
    print(f"jobs: {len(jobs.succeeded)} succeeded, {len(jobs.failed)} failed (act exited {code})")
    for job in jobs.succeeded:
        print(f"  ok      {job}")
    for job in jobs.failed:
        print(f"  FAILED  {job}")
    if reports:  # the deploy job's report (its step summary), by its headline
        print(f"report: {reports[-1]}")
    for comment in comments:
        print(f"\nthe pull request's comment (#{comment['pr']}, posted to the local fake of GitHub's API):\n")
        print(comment["body"].rstrip())
    if not comments:
        print("no pull request comment was posted")
    print(f"\nact's whole output: {log_path}")


def _serving(cfg: Any, log: str) -> None:
    """What the local endpoint serves now, read back from the engine (not what the run said)."""
    from mldeploy.deploy.local import LocalTarget

    names = re.findall(r"\| endpoint: (\S+)  url: |mldeploy-report endpoint=(\S+) -->", log)
    names = [a or b for a, b in names]
    endpoint = names[-1] if names else cfg.deploy.endpoint
    if not endpoint:
        print("serving: no endpoint was deployed")
        return
    status = LocalTarget.from_config(endpoint, cfg).status()
    if not status.slots:
        print(f"serving: nothing (endpoint {endpoint} has no slots)")
        return
    print(f"serving: endpoint {status.endpoint} at {status.url or '-'}")
    for slot, s in status.slots.items():
        print(f"  {slot:<10} {s.traffic:>3}%  {'healthy' if s.healthy else 'UNHEALTHY'}  {s.image}")
