"""Which workflow a rehearsal runs, the event act gets for it, and what it cannot rehearse.

The payload is what GitHub would send for this repository, so the workflows' `if:` conditions hold as
they would there: a pull request's head is this very repository (the kit deploys no fork's head).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from mldeploy.errors import UsageError
from mldeploy.targets import EMBEDDED

EVENTS = ("pull_request", "release", "dispatch")
PR_TYPES = ("opened", "synchronize", "reopened")  # GitHub's default `types` of pull_request
TAG = "v0.0.0-rehearsal"   # the release tag a rehearsal pushes (matches the starter's `tags: ["v*"]`)
HEAD_BRANCH = "mldeploy-rehearsal"
KIT_WORKFLOW = "acme/ml-deploy/.github/workflows/deploy.yml"
@dataclass
class Run:
    """A workflow, the event act runs it for (pull_request, push, release, workflow_dispatch), the payload."""

    workflow: Path
    event: str
    payload: dict[str, Any]


def read(workflow: Path) -> dict[str, Any]:
    """The workflow as data (YAML 1.2: the key `on` stays a string)."""
    try:
        data = YAML(typ="safe", pure=True).load(workflow.read_text(encoding="utf-8"))
    except Exception as e:  # a YAML error: GitHub would not run it either
        raise UsageError(f"{workflow} is not valid YAML ({str(e).splitlines()[0]})", hint="fix it, then rehearse") \
            from None
    return data if isinstance(data, dict) else {}


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    """`on:` as a mapping event -> its filters ({} for none), whichever of GitHub's three forms it takes."""
    on = workflow.get("on")
    if isinstance(on, str):
        return {on: {}}
    if isinstance(on, list):
        return {name: {} for name in on}
    return {name: filters or {} for name, filters in on.items()} if isinstance(on, dict) else {}


def act_event(on: dict[str, Any], event: str) -> tuple[str, str] | None:
    """(act's event name, the pull_request action) when `on` runs for the rehearsal's `event`, else None."""
    if event == "pull_request" and "pull_request" in on:
        types = on["pull_request"].get("types") or list(PR_TYPES)
        return "pull_request", "opened" if "opened" in types else types[0]
    if event == "release":
        if on.get("push", {}).get("tags"):
            return "push", ""
        if "release" in on:
            return "release", "published"
    if event == "dispatch" and "workflow_dispatch" in on:
        return "workflow_dispatch", ""
    return None


def workflows(folder: Path) -> list[Path]:
    found = sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")]) if folder.is_dir() else []
    if not found:
        raise UsageError(f"no workflows in {folder}", hint="`mldeploy init` writes the starter workflows there")
    return found


def pick(folder: Path, name: str | None, event: str | None, repository: str, pr: int) -> Run:
    """The workflow to run (`name`, else the one `event` triggers) and its event and payload."""
    found = workflows(folder)
    if name:
        wanted = [p for p in found if name in (p.name, p.stem, str(p))] or \
                 [p for p in found if Path(name).resolve() == p.resolve()]
        if not wanted:
            raise UsageError(f"no workflow {name} in {folder}", hint=f"one of: {', '.join(p.name for p in found)}")
        on = triggers(read(wanted[0]))
        tried = [event] if event else list(EVENTS)
        for e in tried:
            if ran := act_event(on, e):
                return Run(wanted[0], ran[0], payload(e, ran[1], repository, pr))
        raise UsageError(f"{wanted[0].name} does not run on {event or ' or '.join(EVENTS)} "
                         f"(it runs on {', '.join(on) or 'nothing'})",
                         hint=f"rehearse it with --event {_event_of(on)}" if _event_of(on) else
                         "rehearse a workflow that a pull request, a release tag or a button runs")
    event = event or "pull_request"
    # a pull request as it opens: the canary's workflow, not the one that tears it down on close
    runs = [(p, ran) for p in found if (ran := act_event(triggers(read(p)), event))
            and (event != "pull_request" or ran[1] == "opened")]
    if not runs:
        raise UsageError(f"no workflow in {folder} runs on {event}",
                         hint=f"workflows there: {', '.join(p.name for p in found)}; name one, or pick another --event")
    if len(runs) > 1:
        raise UsageError(f"{len(runs)} workflows run on {event}: {', '.join(p.name for p, _ in runs)}",
                         hint=f"name the one to rehearse, e.g. mldeploy rehearse {runs[0][0].name} --event {event}")
    (path, (act_name, action)), = runs
    return Run(path, act_name, payload(event, action, repository, pr))


def _event_of(on: dict[str, Any]) -> str | None:
    return next((e for e in EVENTS if act_event(on, e)), None)


def payload(event: str, action: str, repository: str, pr: int) -> dict[str, Any]:
    """GitHub's event payload for `repository`, as much of it as the workflows read."""
    repo = {"full_name": repository}
    if event == "pull_request":
        return {"action": action, "number": pr, "repository": repo,
                "pull_request": {"number": pr, "head": {"ref": HEAD_BRANCH, "repo": repo},
                                 "base": {"ref": "main", "repo": repo}}}
    if event == "release":
        if action:  # on: release
            return {"action": action, "release": {"tag_name": TAG}, "repository": repo}
        return {"ref": f"refs/tags/{TAG}", "ref_type": "tag", "repository": repo}
    return {"inputs": {}, "ref": "refs/heads/main", "repository": repo}


def kit_calls(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """job id -> the `with:` of each job (or step) that calls the kit (its reusable workflow or an action)."""
    calls: dict[str, dict[str, Any]] = {}
    for job_id, job in (workflow.get("jobs") or {}).items():
        if not isinstance(job, dict):
            continue
        for unit in [job, *(s for s in job.get("steps") or [] if isinstance(s, dict))]:
            if str(unit.get("uses", "")).startswith("acme/ml-deploy"):
                calls[str(job_id)] = dict(unit.get("with") or {})
    return calls


def refuse_clouds(run: Run) -> None:
    """A rehearsal deploys to the local Docker engine only: a job that deploys to a cloud is refused."""
    for job, given in kit_calls(read(run.workflow)).items():
        cloud = str(given.get("cloud", EMBEDDED)).strip()
        if cloud != EMBEDDED:
            raise UsageError(f"{run.workflow.name} (job {job}) deploys to cloud: {cloud}, which a rehearsal cannot "
                             f"fake: it runs the pipeline on this machine's Docker engine only",
                             hint=f"to rehearse this pipeline on the local Docker engine, set `cloud: local` in "
                                  f"{run.workflow.name} and deploy.cloud: local in mldeploy.yaml (on a branch, "
                                  "or a copy of the repo)")
