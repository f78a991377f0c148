"""scripts/action-setup.sh, which every kit action runs first, in the model repo's checkout and (in
the push and deploy jobs) after the cloud login: nothing a pull request or an earlier job left
behind runs there. A planted `venv/` and `pip/` in the working directory would run with `python -m`;
a planted venv in a self-hosted runner's tool cache (which outlives the job) would be run as is."""

from __future__ import annotations

import os
import subprocess
import sys

from mldeploy.rehearsal.kit import git_tracked_copy
from tests.helpers.paths import ROOT

PLANT = "import pathlib; pathlib.Path({marker!r}).write_text('planted code ran')\n"


def setup_python() -> str:
    bin_dir = os.path.dirname(sys.executable)  # a python3 that is 3.11+, as setup-python gives
    return next(p for p in (os.path.join(bin_dir, "python3"), "/usr/bin/python3") if os.path.exists(p))


def setup(cwd, env: dict[str, str], *extras: str, kit=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(kit / "scripts" / "action-setup.sh"), *extras], cwd=cwd, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "MLDEPLOY_PYTHON": setup_python(), **env},
                          check=False)


def test_nothing_planted_runs_on_a_self_hosted_runner(tmp_path):
    repo, marker = tmp_path / "model-repo", tmp_path / "planted-code-ran"
    for package in ("venv", "pip", "ensurepip"):  # what `python -m venv` and `python -m pip` import first
        (repo / package).mkdir(parents=True)
        (repo / package / "__init__.py").write_text(PLANT.format(marker=str(marker)))
        (repo / package / "__main__.py").write_text(PLANT.format(marker=str(marker)))
    cache = tmp_path / "toolcache"
    env = {"RUNNER_TOOL_CACHE": str(cache), "GITHUB_ACTIONS": "true"}

    # a runner whose tool cache is trusted (GitHub-hosted: a fresh machine per job) makes it there
    r = setup(repo, {**env, "RUNNER_ENVIRONMENT": "github-hosted"})
    assert r.returncode == 0, r.stdout + r.stderr
    cached = r.stdout.strip().splitlines()[-1]
    assert cached.startswith(str(cache / "mldeploy" / "venv-")) and not marker.exists()

    # an earlier job on a self-hosted runner replaced it; this job makes its own and runs that
    os.replace(cached, cached + ".real")
    with open(cached, "w") as f:
        f.write(f"#!/bin/sh\necho planted > {marker}\n")
    os.chmod(cached, 0o755)
    job_temp = tmp_path / "job-temp"
    job_temp.mkdir()
    r = setup(repo, {**env, "RUNNER_ENVIRONMENT": "self-hosted", "RUNNER_TEMP": str(job_temp)})
    assert r.returncode == 0, r.stdout + r.stderr
    mldeploy = r.stdout.strip().splitlines()[-1]
    version = subprocess.run([mldeploy, "--version"], cwd=repo, capture_output=True, text=True, timeout=60, check=False)
    assert not marker.exists(), marker.read_text()
    assert mldeploy.startswith(str(job_temp / "mldeploy" / "venv-")), mldeploy
    assert version.returncode == 0 and version.stdout.startswith("mldeploy "), version.stdout + version.stderr


# -- only the framework the model needs, and torch from torch-index-url -------------------------------
def fake_torch_index(root) -> str:
    """A PEP 503 index (a folder, as a file: URL) holding one torch 2.13.0+cpu wheel that is not torch:
    importing it says where it came from. Its tag is this interpreter's most specific and it has a
    build number, so pip prefers it to any real torch 2.13.0+cpu on the machine's other indexes."""
    import base64
    import hashlib
    import zipfile

    from packaging.tags import sys_tags

    tags = list(sys_tags())  # pip ranks the newest manylinux tag first (packaging may rank linux_* first)
    tag = next((t for t in tags if t.platform.startswith("manylinux")), tags[0])
    name = f"torch-2.13.0+cpu-1-{tag.interpreter}-{tag.abi}-{tag.platform}.whl"
    files = {"torch/__init__.py": "FROM = 'the torch index'\n",
             "torch-2.13.0+cpu.dist-info/METADATA": "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n",
             "torch-2.13.0+cpu.dist-info/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                                                 f"Build: 1\nTag: {tag}\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
                     f"{len(text.encode())}\n" for path, text in files.items())
    files["torch-2.13.0+cpu.dist-info/RECORD"] = record + "torch-2.13.0+cpu.dist-info/RECORD,,\n"
    page = root / "simple" / "torch"
    page.mkdir(parents=True)
    with zipfile.ZipFile(page / name, "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    (page / "index.html").write_text(f'<!DOCTYPE html><html><body><a href="{name.replace("+", "%2B")}">{name}</a>'
                                     "</body></html>\n")
    return (root / "simple").as_uri() + "/"


def run_action(kit, action: str, inputs: dict[str, str], cwd, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The composite action's one step as the runner runs it: its `env:` from the inputs (and their
    defaults), then its script with bash, GITHUB_ACTION_PATH at the action's folder."""
    import re

    import yaml

    meta = yaml.safe_load((kit / "actions" / action / "action.yml").read_text())
    [step] = meta["runs"]["steps"]
    values = {name: spec.get("default", "") for name, spec in meta["inputs"].items()} | inputs
    assert not [v for v in values.values() if "${{" in v], "give every input whose default is an expression"
    step_env = {k: re.sub(r"\$\{\{ inputs\.([\w-]+) \}\}", lambda m: values[m[1]], v) for k, v in step["env"].items()}
    out = cwd.parent / "github-files"
    out.mkdir(exist_ok=True)
    github = {"GITHUB_ACTIONS": "true", "GITHUB_ACTION_PATH": str(kit / "actions" / action),
              "GITHUB_OUTPUT": str(out / "output"), "GITHUB_STEP_SUMMARY": str(out / "summary")}
    python = setup_python()
    return subprocess.run(["bash", "-c", step["run"]], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **github, **env, **step_env, "MLDEPLOY_PYTHON": python}, check=False)


def onnx_model(path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)


def test_an_onnx_model_installs_no_framework_and_torch_comes_from_torch_index_url(tmp_path):
    """convert-model installs only the framework its model needs: none for ONNX. torch, when a model
    needs it, comes from torch-index-url (on GitHub-hosted runners PyTorch's CPU index, not the CUDA
    build), and only torch does."""
    repo, cache = tmp_path / "model-repo", tmp_path / "toolcache"
    repo.mkdir()
    kit = git_tracked_copy(ROOT, tmp_path / "kit")  # one kit for the whole test (the venv is keyed by its files)
    onnx_model(repo / "model.onnx")
    index = fake_torch_index(tmp_path / "index")
    env = {"RUNNER_TOOL_CACHE": str(cache), "RUNNER_ENVIRONMENT": "github-hosted"}

    r = run_action(kit, "convert-model", {"model": "model.onnx", "torch-index-url": index}, repo, env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    [venv] = cache.glob("mldeploy/venv-*")
    assert "installed extra" not in r.stderr and not list(venv.glob(".extra-*")), r.stderr
    assert "mldeploy: extra " not in r.stderr  # the ONNX model asked for no extra at all
    assert not list(venv.glob("lib/python*/site-packages/torch")), "an ONNX model installed torch"
    assert not list(venv.glob("lib/python*/site-packages/tensorflow*")), "an ONNX model installed TensorFlow"
    assert (repo / ".mldeploy" / "bundle" / "model.onnx").is_file()

    r = setup(repo, {**env, "MLDEPLOY_TORCH_INDEX_URL": index}, "torch", kit=kit)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert f"mldeploy: installed extra torch (torch from {index})" in r.stderr, r.stderr
    torch = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", "import torch; print(torch.FROM)"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert torch.stdout.strip() == "the torch index", torch.stdout + torch.stderr
    assert not list(venv.glob("lib/python*/site-packages/tensorflow*")), "the torch extra installed TensorFlow"
    # the rest of the torch extra came from pip's own indexes, not from the torch index (which holds only torch)
    log = (cache / "mldeploy" / f"install-{venv.name.removeprefix('venv-')}.log").read_text()
    assert log.count(index) == 1, log[-4000:]

    r = setup(repo, {**env, "MLDEPLOY_TORCH_INDEX_URL": index}, "torch", kit=kit)  # the next step: nothing to install
    assert r.returncode == 0 and "mldeploy: extra torch already installed" in r.stderr, r.stderr


def test_the_reusable_workflow_and_every_action_that_installs_a_framework_take_torch_index_url():
    """The build job hands its torch-index-url to convert-model; each action that may install torch
    has the input, defaulting to PyTorch's CPU index on GitHub-hosted runners, and passes it to
    action-setup.sh through env: (never ${{ }} in a script)."""
    import yaml

    cpu = "https://download.pytorch.org/whl/cpu"
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())
    assert workflow[True]["workflow_call"]["inputs"]["torch-index-url"]["default"] == cpu  # `on:` reads as True
    [convert] = [s for s in workflow["jobs"]["build"]["steps"] if s.get("uses") == "$/actions/convert-model"]
    assert convert["with"]["torch-index-url"] == "${{ inputs.torch-index-url }}"
    for action in ("action.yml", "actions/convert-model/action.yml", "actions/command/action.yml"):
        meta = yaml.safe_load((ROOT / action).read_text())
        assert meta["inputs"]["torch-index-url"]["default"] == (
            f"${{{{ runner.environment == 'github-hosted' && '{cpu}' || '' }}}}"), action
        [step] = meta["runs"]["steps"]
        assert step["env"]["MLDEPLOY_TORCH_INDEX_URL"] == "${{ inputs.torch-index-url }}", action
        assert "torch-index-url" not in step["run"], action
