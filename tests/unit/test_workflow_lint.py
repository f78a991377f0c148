"""Every workflow and action the kit ships or tests with passes zizmor (offline, pedantic) and actionlint;
the reusable workflow keeps the model repo's code away from every cloud credential."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers.need import need
from tests.helpers.paths import ROOT

BIN = Path(sys.executable).parent
KIT_WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
CALLER_WORKFLOWS = sorted(p for d in (ROOT / "workflows", ROOT / "examples" / "model-repo" / ".github" / "workflows",
                                      ROOT / "tests" / "e2e" / "workflows") if d.is_dir() for p in d.glob("*.yml"))
WORKFLOWS = KIT_WORKFLOWS + CALLER_WORKFLOWS
KIT_ACTIONS = sorted([ROOT / "action.yml", *ROOT.glob("actions/*/action.yml")])
ACTIONS = KIT_ACTIONS + sorted(ROOT.glob("src/mldeploy/rehearsal/standins/*/action.yml"))
LOGINS = ("aws-actions/configure-aws-credentials@", "google-github-actions/auth@", "azure/login@")


def tool(name: str) -> str:
    return need(name, "the dev extra installs it", command=True, path=BIN)


def zizmor(config: Path, files: list[Path]) -> None:
    r = subprocess.run([tool("zizmor"), "--offline", "--persona", "pedantic", "--config", str(config), *map(str, files)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "No findings" in r.stdout + r.stderr


def test_zizmor_finds_nothing_in_the_kit_with_no_exemptions():
    config = ROOT / ".github" / "zizmor.yml"
    assert not (yaml.safe_load(config.read_text()) or {}).get("rules"), "the kit's own files get no exemption"
    zizmor(config, KIT_WORKFLOWS + KIT_ACTIONS)


def test_zizmor_finds_nothing_in_the_callers_workflows():
    """They name the kit by a release tag, as model repos do; everything else is pinned to a SHA."""
    zizmor(ROOT / "tests" / "e2e" / "zizmor-callers.yml", CALLER_WORKFLOWS + ACTIONS[len(KIT_ACTIONS):])


def jobs() -> dict[str, dict]:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())["jobs"]


def uses(job: dict) -> list[str]:
    return [step.get("uses", "") for step in job.get("steps", [])]


def test_the_job_that_runs_the_model_repos_code_has_no_cloud_credential():
    """convert and optimize import the model repo's code (its factory, its pickles): their job can
    ask for no OIDC token and logs in nowhere."""
    runs_model_code = {name: job for name, job in jobs().items()
                       if {"$/actions/convert-model", "$/actions/optimize-model"} & set(uses(job))}
    assert set(runs_model_code) == {"build"}
    for job in runs_model_code.values():
        assert "id-token" not in job["permissions"], job["permissions"]
        assert not [u for u in uses(job) if u.startswith(LOGINS)]


def test_each_kit_job_logs_in_with_its_own_identity():
    by_job = {name: [step["with"] for step in job.get("steps", []) if step.get("uses", "").startswith(LOGINS)]
              for name, job in jobs().items()}
    named = {name: " ".join(str(v) for w in logins for v in w.values()) for name, logins in by_job.items() if logins}
    assert set(named) == {"push", "deploy"}
    assert all(f"{cloud}-push-" in named["push"] for cloud in ("aws", "gcp", "azure"))
    assert "canary" not in named["push"] and "production" not in named["push"]
    for stage in ("canary", "production"):
        assert all(f"{cloud}-{stage}-" in named["deploy"] for cloud in ("aws", "gcp", "azure"))
    assert "-push-" not in named["deploy"]


def test_the_push_job_publishes_the_model_into_the_bundle_the_deploy_job_gets():
    """image.model: storage: the push identity publishes (never the build job, which runs the model
    repo's code), after the image is built, and before the bundle the deploy job reads is uploaded."""
    assert {name for name, job in jobs().items() if "$/actions/publish-model" in uses(job)} == {"push"}
    steps = jobs()["push"]["steps"]
    at = {step.get("uses", "").split("@")[0]: i for i, step in enumerate(steps)}
    assert at["$/actions/build-push-image"] < at["$/actions/publish-model"] < at["actions/upload-artifact"]
    published, uploaded = steps[at["$/actions/publish-model"]]["with"], steps[at["actions/upload-artifact"]]["with"]
    assert uploaded["path"] == "${{ inputs.working-directory }}/" + published["bundle"]


def test_the_kit_reaches_its_own_actions_at_the_commit_the_caller_resolved():
    for job in jobs().values():
        for ref in uses(job):
            assert not ref.startswith(("acme/", "./")), ref  # `$/...`: this repository, this commit


def test_the_command_action_is_the_umbrella_action_at_a_path():
    def runs(path: Path) -> dict:
        action = yaml.safe_load(path.read_text())
        return {"inputs": action["inputs"], "outputs": action["outputs"],
                "runs": str(action["runs"]).replace("/../../scripts/", "/scripts/")}

    assert runs(ROOT / "actions" / "command" / "action.yml") == runs(ROOT / "action.yml")


def test_actionlint_finds_nothing():
    r = subprocess.run([tool("actionlint"), "-no-color", *map(str, WORKFLOWS)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
