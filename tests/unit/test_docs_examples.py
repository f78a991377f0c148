"""Every fenced example in README.md and docs/ is checked for real, by what it is:

- `mldeploy ...` lines (in bash blocks and usage synopses): the command and every flag exist in the CLI;
- bash blocks: run, in order, in a model repo holding a 16-feature ONNX model (tests/helpers/models.py):
  `mldeploy init`, `config validate`, `convert`; `mldeploy serve` starts in the background on a free port
  (8080 in the text) and `curl` asks it, failing on any answer but 2xx; `pip install` lines name only
  extras pyproject.toml has; `mldeploy monitor baseline` reads data/reference.npz (1,000 rows for the
  model). Any other command cannot run here and fails the test unless the block is marked
  `<!-- not run: why -->` on the line before it;
- python blocks (the Triton client of serve.md): run against `mldeploy serve` of the two-input model
  (x float32 [batch, 4], k int64 [batch, 1]) with gRPC on and an API key (8080, 8081 and KEY swapped);
- yaml blocks: an mldeploy.yaml (or part of one) loads through mldeploy.config and validates; a trust
  file (`# mldeploy doctor --trust:`) through mldeploy.doctor; a workflow, a job or steps are wrapped into
  a workflow and must pass actionlint and zizmor (pedantic, the callers' policy), as test_workflow_lint
  holds the kit's workflows to; json blocks parse, and an IAM policy has the fields IAM requires;
- `text` blocks are listings (a folder tree), not examples; anything else unmarked fails.

The README's first block (scripts/run-local.sh, scripts/test.sh) is the project's own two commands:
tests/integration/test_main_job.py runs the first, CI (.ci/run) the second; here they must exist as such.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers.need import need
from tests.helpers.paths import ROOT

BIN = Path(sys.executable).parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARK = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")
RUNNABLE = ("mldeploy init", "mldeploy config validate", "mldeploy convert", "mldeploy serve", "mldeploy monitor baseline",
            "curl ", "pip install ")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    text: str
    not_run: str | None  # the reason given in the marker, when the block is marked

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    lines, found, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, start = len(fence.group(1)), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        body = "\n".join(line[indent:] for line in lines[start + 1:end]) + "\n"
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = MARK.search(before)
        found.append(Block(path.relative_to(ROOT).as_posix(), start + 1, fence.group(2), body,
                           mark.group(1) if mark else None))
        i = end + 1
    return found


BLOCKS = [b for page in PAGES for b in blocks_of(page)]


def of(kind: str) -> list[Block]:
    return [b for b in BLOCKS if kind_of(b) == kind]


def kind_of(block: Block) -> str:
    if block.page == "README.md" and block is BLOCKS[0]:
        return "own-commands"
    if block.lang in ("bash", "sh", "shell", "console"):
        return "shell"
    if block.lang == "" and block.text.startswith("mldeploy "):
        return "synopsis"
    if block.lang in ("yaml", "yml"):
        return "yaml"
    if block.lang == "json":
        return "json"
    if block.lang == "text":
        return "listing"
    if block.lang == "python":
        return "python"
    return "other"


def commands(text: str) -> list[str]:
    """The block's commands: comments dropped, continued lines (`\\`, a trailing `|`) joined."""
    out: list[str] = []
    joined = ""
    for raw in text.splitlines():
        line = re.sub(r"(^|\s+)#.*$", "", raw).rstrip()
        if not line and not joined:
            continue
        joined = f"{joined} {line.strip()}" if joined else line.strip()
        if joined.endswith("\\"):
            joined = joined[:-1].rstrip()
        elif not joined.endswith("|"):
            out.append(joined)
            joined = ""
    return out + ([joined] if joined else [])


# ---------------------------------------------------------------------------- every block is handled

def test_every_example_is_checked_or_marked_with_a_reason():
    assert len(BLOCKS) > 30, f"found only {len(BLOCKS)} examples: is the fence parser broken?"
    unhandled = [f"{b} ({b.lang or 'no language'})" for b in BLOCKS if b.not_run is None and kind_of(b) == "other"]
    assert not unhandled, f"no check knows these blocks: mark them <!-- not run: why --> or make them checkable: {unhandled}"
    cannot = [f"{b}: {cmd}" for b in of("shell") if b.not_run is None for cmd in commands(b.text)
              if not cmd.startswith(RUNNABLE)]
    assert not cannot, f"these cannot run here; mark the block <!-- not run: why --> with what tests it: {cannot}"


def test_each_marker_names_a_test_that_exists():
    """A marker says which test runs what the block shows instead; that test must be there."""
    named = [(b, path) for b in BLOCKS if b.not_run for path in re.findall(r"tests/[\w/*.-]+\.py", b.not_run)]
    assert named
    missing = [f"{b}: {path}" for b, path in named if not list(ROOT.glob(path))]
    assert not missing, missing


def test_the_readme_starts_with_the_projects_two_commands():
    block = BLOCKS[0]
    assert block.page == "README.md" and block.line <= 5 and block.lang == "bash"
    first, second = commands(block.text)
    assert first == "scripts/run-local.sh" and second == "scripts/test.sh"
    assert all(os.access(ROOT / cmd, os.X_OK) for cmd in (first, second))
    assert "scripts/run-local.sh" in (ROOT / "tests" / "integration" / "test_main_job.py").read_text()
    assert "exec scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


# ---------------------------------------------------------------------------- the CLI's commands and flags

def cli_flags(words: list[str]) -> tuple[list[str], set[str]]:
    """The subcommand path `words` starts with, and the flags its parser takes."""
    from mldeploy.cli import _parser

    parser, path = _parser(), []
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser, path = subs[0].choices[word], [*path, word]
    return path, {flag for a in parser._actions for flag in a.option_strings}


MLDEPLOY_LINES = [(b, cmd) for b in BLOCKS if kind_of(b) in ("shell", "synopsis")
                  for cmd in commands(b.text) if cmd.startswith("mldeploy ")]


@pytest.mark.parametrize(("block", "line"), MLDEPLOY_LINES, ids=[f"{b}-{c[:40]}" for b, c in MLDEPLOY_LINES])
def test_every_mldeploy_command_and_flag_exists(block, line):
    words = shlex.split(line.replace("|", " "))[1:]
    path, flags = cli_flags(words)
    assert path, f"{block}: `{line}`: no such command"
    used = {w.split("=", 1)[0] for w in words if w.startswith("--") and len(w) > 2}
    assert used <= flags, f"{block}: mldeploy {' '.join(path)} has no {sorted(used - flags)}"


def test_pip_install_lines_name_only_real_extras():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = [(b, extra) for b in BLOCKS if kind_of(b) == "shell" for cmd in commands(b.text)
             if cmd.startswith("pip install") for group in re.findall(r"mldeploy\[([^\]]+)\]", cmd)
             for extra in group.split(",")]
    assert named
    assert all(extra.strip() in extras for _, extra in named), [(str(b), e) for b, e in named if e not in extras]


# ---------------------------------------------------------------------------- running the shell examples

@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    """A model repo as the quick start begins it: model/model.onnx, taking x[batch, 16]."""
    import onnx

    from tests.helpers.models import deep_mlp

    repo = tmp_path_factory.mktemp("docs-model-repo")
    (repo / "model").mkdir()
    onnx.save(deep_mlp((16, 8, 3)), str(repo / "model" / "model.onnx"))
    return repo


@pytest.fixture(scope="session")
def converted_repo(model_repo, tmp_path_factory) -> Path:
    """The same repo after the quick start's init and convert (serve.md starts from its bundle), with
    reference data for the monitoring examples."""
    import numpy as np

    repo = tmp_path_factory.mktemp("docs-converted") / "repo"
    shutil.copytree(model_repo, repo)
    (repo / "data").mkdir()
    np.savez(repo / "data" / "reference.npz", x=np.random.default_rng(0).normal(size=(1000, 16)).astype(np.float32))
    for cmd in ("mldeploy init model/model.onnx", "mldeploy convert"):
        r = run_shell(cmd, repo)
        assert r.returncode == 0, r.stdout + r.stderr
    return repo


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run_shell(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env(), capture_output=True, text=True, timeout=120,
                          check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: str, cwd: Path, extra: dict[str, str] | None = None) -> subprocess.Popen:
    port = int(re.search(r"--port (\d+)", cmd).group(1))
    server = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=cwd, env={**env(), "MLDEPLOY_WORKERS": "1", **(extra or {})},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"`{cmd}` exited {server.returncode}: {server.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise AssertionError(f"`{cmd}` was not ready in 60 s")


RUN = [b for b in of("shell") if b.not_run is None]


@pytest.mark.parametrize("block", RUN, ids=[str(b) for b in RUN])
def test_the_shell_example_runs(block, model_repo, converted_repo, tmp_path):
    cmds = commands(block.text)
    if any(c.startswith("curl") for c in cmds):
        need("curl", "scripts/setup-system.sh installs it", command=True)
    repo = tmp_path / "repo"
    # a page that starts the repo (init) gets the bare model; the others the quick start's result
    shutil.copytree(model_repo if any(c.startswith("mldeploy init") for c in cmds) else converted_repo, repo)
    port, servers = free_port(), []
    try:
        for cmd in cmds:
            if cmd.startswith("pip install"):
                continue  # its extras are checked above; the venv running this test has them
            cmd = cmd.replace("8080", str(port))
            if cmd.startswith("mldeploy serve"):
                servers.append(start_server(cmd, repo))
                continue
            r = run_shell(cmd, repo)
            assert r.returncode == 0, f"{block}: `{cmd}` exited {r.returncode}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
            if cmd.startswith("curl"):
                assert json.loads(r.stdout), f"{block}: `{cmd}` answered {r.stdout!r}"
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)


def test_a_request_the_model_does_not_take_fails_its_example(converted_repo, tmp_path):
    """The serve example's check is real: the same request with 4 features (what the docs once sent
    to this 16-feature model) makes its curl line fail."""
    [block] = [b for b in RUN if b.page == "docs/serve.md"]
    [curl] = [c for c in commands(block.text) if c.startswith("curl")]
    need("curl", "scripts/setup-system.sh installs it", command=True)
    assert curl.count(",") == 15, "the serve example sends one row of 16 features"
    port = free_port()
    repo = tmp_path / "repo"
    shutil.copytree(converted_repo, repo)
    server = start_server(f"mldeploy serve --bundle .mldeploy/bundle --port {port}", repo)
    try:
        wrong = re.sub(r"\[\[[^\]]*\]\]", "[[0.1, 0.2, 0.3, 0.4]]", curl).replace("8080", str(port))
        r = run_shell(wrong, repo)
        assert r.returncode == 22 and "16" in r.stdout, (r.returncode, r.stdout, r.stderr)
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---------------------------------------------------------------------------- yaml and json

WORKFLOW_KEYS, STEP_KEYS = {"on", True, "jobs"}, {"uses", "run", "id"}


def yaml_kind(block: Block, data: object) -> str:
    if block.text.startswith("# mldeploy doctor --trust:"):
        return "trust"
    if isinstance(data, list) and all(isinstance(s, dict) and STEP_KEYS & set(s) for s in data):
        return "steps"
    if isinstance(data, dict) and WORKFLOW_KEYS & set(data):
        return "workflow"
    if isinstance(data, dict) and "steps" in data:
        return "job"
    if isinstance(data, dict):
        from mldeploy.config import Config

        if set(data) <= set(Config.model_fields) | {"version"}:
            return "config"
    return "unknown"


YAML_BLOCKS = [b for b in of("yaml") if b.not_run is None]


def test_every_yaml_example_is_a_kind_we_check():
    kinds = {str(b): yaml_kind(b, yaml.safe_load(b.text)) for b in YAML_BLOCKS}
    assert "unknown" not in kinds.values(), kinds
    assert {"config", "workflow", "steps", "job", "trust"} <= set(kinds.values()), kinds


CONFIGS = [b for b in YAML_BLOCKS if yaml_kind(b, yaml.safe_load(b.text)) == "config"]


@pytest.mark.parametrize("block", CONFIGS, ids=[str(b) for b in CONFIGS])
def test_the_config_example_loads_and_validates(block, tmp_path):
    from mldeploy.config import load_config

    path = tmp_path / "mldeploy.yaml"
    path.write_text(block.text)
    config = load_config(path, environ={})
    data = yaml.safe_load(block.text)
    for section, value in data.items():  # what the example sets is what the loader read
        if isinstance(value, dict):
            loaded = getattr(config, section).model_dump(by_alias=True)
            for key, given in value.items():
                if not isinstance(given, dict) and not str(given).endswith((".pt", ".json", ".npz")):
                    assert loaded[key] == given or str(loaded[key]) == str(given), f"{block}: {section}.{key}"


TRUSTS = [b for b in YAML_BLOCKS if yaml_kind(b, yaml.safe_load(b.text)) == "trust"]


@pytest.mark.parametrize("block", TRUSTS, ids=[str(b) for b in TRUSTS])
def test_the_trust_example_loads(block, tmp_path):
    """tests/unit/test_doctor.py checks each of these against every job's token; here: it loads."""
    from mldeploy.doctor import load_trust

    path = tmp_path / "trust.yaml"
    path.write_text(block.text)
    trust = load_trust(str(path))
    assert set(trust["identities"]) == {"push", "canary", "production"}


AROUND = "name: example\non: workflow_dispatch\npermissions: {}\nconcurrency: {group: example, cancel-in-progress: false}\n"


def as_workflow(steps: list) -> dict:
    """One job around a page's step examples (AROUND is the rest of the file)."""
    data = {"runs-on": "ubuntu-latest", "permissions": {"contents": "read"}, "steps": steps}
    return {"jobs": {"example": {"name": "Example", **data}}}


def dump(workflow: dict) -> str:
    return yaml.safe_dump(workflow, sort_keys=False, width=200)


def test_the_workflow_examples_pass_actionlint_and_zizmor(tmp_path):
    actionlint = need("actionlint", "the dev extra installs it", command=True, path=BIN)
    zizmor = need("zizmor", "the dev extra installs it", command=True, path=BIN)
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    by_page: dict[str, list] = {}
    files = []
    for b in YAML_BLOCKS:
        data = yaml.safe_load(b.text)
        kind = yaml_kind(b, data)
        if kind == "steps":  # a page's step examples are one job's steps, in order (later ones read earlier outputs)
            by_page.setdefault(b.page, []).extend(data)
        elif kind == "job":  # as written (its comments document its permissions), in a job
            job = "jobs:\n  example:\n    name: Example\n    runs-on: ubuntu-latest\n"
            files.append((f"{b.page.replace('/', '-')}-{b.line}.yml",
                          AROUND + job + textwrap.indent(textwrap.dedent(b.text), "    ")))
        elif kind == "workflow":  # a whole file as written; `jobs:` alone gets what is around it
            whole = "on" in data or True in data  # (PyYAML reads the key `on` as True)
            files.append((f"{b.page.replace('/', '-')}-{b.line}.yml", ("" if whole else AROUND) + b.text))
    files += [(f"{page.replace('/', '-')}-steps.yml", AROUND + dump(as_workflow(steps))) for page, steps in by_page.items()]
    assert len(files) >= 5
    for name, text in files:
        (workflows / name).write_text(text)
    paths = sorted(str(p) for p in workflows.iterdir())
    r = subprocess.run([actionlint, "-no-color", *paths], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    r = subprocess.run([zizmor, "--offline", "--persona", "pedantic", "--config",
                        str(ROOT / "tests" / "e2e" / "zizmor-callers.yml"), *paths], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0 and "No findings" in r.stdout + r.stderr, r.stdout[-6000:] + r.stderr[-2000:]


JSONS = [b for b in of("json") if b.not_run is None]


@pytest.mark.parametrize("block", JSONS, ids=[str(b) for b in JSONS])
def test_the_json_example_parses_and_a_policy_is_a_policy(block):
    data = json.loads(block.text)
    if "Statement" in data:
        assert data["Version"] == "2012-10-17"
        for statement in data["Statement"]:
            assert statement["Effect"] in ("Allow", "Deny") and statement["Action"] and statement["Resource"]
            actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
            assert all(re.fullmatch(r"[a-z0-9-]+:[A-Za-z*]+", a) for a in actions), actions


PYTHONS = [b for b in BLOCKS if kind_of(b) == "python" and b.not_run is None]


@pytest.mark.parametrize("block", PYTHONS, ids=[str(b) for b in PYTHONS])
def test_the_python_example_runs(block, tmp_path):
    need("tritonclient.grpc", "the dev extra installs tritonclient[grpc,http]")
    from tests.helpers.models import save_bundle, two_io_graph

    bundle = save_bundle(two_io_graph(), tmp_path / "model")
    http, grpc, key = free_port(), free_port(), "docs-example-key-0123456789"
    server = start_server(f"mldeploy serve --bundle {bundle} --port {http}", tmp_path,
                          {"MLDEPLOY_GRPC_PORT": str(grpc), "MLDEPLOY_API_KEYS": key})
    code = block.text.replace("localhost:8080", f"localhost:{http}").replace("localhost:8081", f"localhost:{grpc}")
    code = code.replace("Bearer KEY", f"Bearer {key}")
    try:
        r = subprocess.run([sys.executable, "-c", code + "\nprint(logits.shape)\n"], cwd=tmp_path, env=env(),
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0 and r.stdout.strip() == "(3, 3)", f"{block}:\n{r.stdout[-2000:]}{r.stderr[-3000:]}"
    finally:
        server.terminate()
        server.wait(timeout=30)
