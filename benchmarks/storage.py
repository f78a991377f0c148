"""What image.model: storage saves: a model-only pull request's canary run, and a slot's cold start.

    eval "$(scripts/docker-up.sh)"; flock /tmp/mldeploy-e2e.lock .venv/bin/python benchmarks/storage.py

One run, both modes measured in it. For each of `baked` and `storage` (a file:// store), the example
model repo calls the kit's reusable workflow under act on cloud local, as tests/e2e does: a release
tag deploys production (not timed: it installs the kit's venvs and, for storage, builds the runtime
image), then a pull request that only retrains the model deploys its canary, timed:

- warm: the runner as a second run on the same machine finds it: the kit's venvs in act's tool
  cache, the engine's layer cache (baked: only the model's layer is new);
- cold: a fresh runner, within reason: an empty tool cache (act's XDG_CACHE_HOME is a new folder, so
  every job installs the kit again, from pip's wheel cache on this host, not from the network), and
  for baked no layer of the image in the engine's cache (the base is python:3.11-slim with a label
  made for this run, so no cached step matches; the base itself is not pulled). Storage's runtime
  image stays in the registry, as it does for a fresh runner.

Times: the whole act run, and the push job alone (build and push the image, attest, publish: the job
the mode changes; from act's --json log, the job's first to last line). Target: storage <= 1/3 of
baked. Then the slot's cold start, from `docker run` to ready (/ping 200) and to the first
prediction, of the canaries' images: baked, and the runtime image that downloads and verifies the
artifact first (file:// bind-mounted as the local target does; median of 5).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import torch

from mldeploy.image import engine
from mldeploy.rehearsal import act as rehearsal
from mldeploy.rehearsal.fake_github import FakeGitHub
from mldeploy.rehearsal.kit import kit_copy

ROOT = Path(__file__).resolve().parents[1]
LOGS = Path(tempfile.gettempdir(), "mldeploy-bench-storage-logs")  # each act run's log, kept
ACT = shutil.which("act") or str(Path(sys.executable).parent / "act")
PR = {"action": "synchronize", "number": 7,
      "pull_request": {"number": 7, "head": {"ref": "better-model", "repo": {"full_name": "acme/models"}},
                       "base": {"ref": "main", "repo": {"full_name": "acme/models"}}},
      "repository": {"full_name": "acme/models"}}
PUSH_JOB = "Build the serving image and push it"
TOKEN = "ghs_bench0123456789abcdef"  # the fake GitHub's (attestations, the pull request's comment)


def machine() -> str:
    """The CPU's name, its core count and its instruction sets (as optimize records them)."""
    from mldeploy.optimize.evaluate import cpu

    found = cpu()
    return f"{found['model']}, {os.cpu_count()} CPUs, {' '.join(found['isa']) or 'no AVX2'}"


def retrain(repo: Path, seed: int) -> None:
    """A new model version: the same network with nudged weights (a model-only change)."""
    path = repo / "model" / "weights.pt"
    state = torch.load(path, weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    torch.save({k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in state.items()}, path)


def act(repo: Path, kit: Path, workflow: str, event: str, payload: dict, env: dict[str, str],
        cache: Path | None = None) -> tuple[float, dict[str, float]]:
    """(seconds of the whole run, seconds per job) of one act run of the repo's workflow."""
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", "model",
                    "--allow-empty"], cwd=repo, check=True)
    (repo.parent / "event.json").write_text(json.dumps(payload))
    wf = repo / ".github" / "workflows" / workflow
    pip_cache = os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    args = rehearsal.command(ACT, event, wf, repo.parent / "event.json", kit,
                             {"PIP_RETRIES": "0", "PIP_CACHE_DIR": pip_cache, **env},
                             {"GITHUB_TOKEN": TOKEN})
    process_env = dict(os.environ)
    if cache is not None:  # a fresh runner's tool cache (act keeps it under XDG_CACHE_HOME); pip's stays
        cache.mkdir(parents=True, exist_ok=True)
        process_env["XDG_CACHE_HOME"] = str(cache)
    start = time.perf_counter()
    r = subprocess.run([*args, "--json"], cwd=repo, capture_output=True, text=True, timeout=1800, env=process_env,
                       check=False)
    seconds = time.perf_counter() - start
    LOGS.mkdir(exist_ok=True)
    (LOGS / f"act-{repo.parent.name}-{workflow}-{time.time_ns()}.log").write_text(r.stdout + r.stderr)
    if r.returncode:
        sys.exit(f"act {workflow} failed (exit {r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}")
    spans: dict[str, list[float]] = {}
    for line in r.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "job" in entry and "time" in entry:
            t = datetime.fromisoformat(entry["time"]).timestamp()
            span = spans.setdefault(entry["job"], [t, t])
            span[0], span[1] = min(span[0], t), max(span[1], t)
    return seconds, {job: end - begin for job, (begin, end) in spans.items()}


def push_job(jobs: dict[str, float]) -> float:
    return next(s for job, s in jobs.items() if PUSH_JOB in job)


def cold_start(client, entry: dict, port: int) -> tuple[float, float]:
    """(docker run -> ready, docker run -> first prediction) of a slot's container."""
    extra: dict = {}
    if entry.get("model"):
        folder = entry["model"]["uri"].removeprefix("file://")
        extra = {"environment": {"MLDEPLOY_MODEL_URI": entry["model"]["uri"],
                                 "MLDEPLOY_MODEL_SHA256": entry["model"]["sha256"]},
                 "volumes": {folder: {"bind": folder, "mode": "ro"}}}
    body = json.dumps({"instances": [[0.5] * 16]}).encode()
    start = time.perf_counter()
    c = client.containers.run(entry["image"], ["serve"], detach=True, ports={"8080/tcp": ("127.0.0.1", port)}, **extra)
    ready = None
    try:
        while time.perf_counter() - start < 120:
            try:
                if ready is None:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                        if r.status == 200:
                            ready = time.perf_counter() - start
                request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", body,
                                                 {"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=2) as r:
                    if r.status == 200 and ready is not None:
                        return ready, time.perf_counter() - start
            except OSError:
                time.sleep(0.01)
        sys.exit(f"{entry['image']} never answered: {c.logs()[-2000:].decode(errors='replace')}")
    finally:
        c.remove(force=True)


def fresh_base(client, base: str) -> str:
    """`base` with a label made now: a new image id, so no step of the engine's layer cache matches."""
    tag = f"mldeploy-bench/base:{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as ctx:
        Path(ctx, "Dockerfile").write_text(f"FROM {base}\nLABEL dev.mldeploy.bench={tag}\n")
        client.images.build(path=ctx, tag=tag, rm=True)
    return tag


def ratio_row(label: str, baked: float, storage: float, target: float | None = 1 / 3) -> str:
    ratio = storage / baked
    verdict = "" if target is None else f"<= {target:.2f}: {'PASS' if ratio <= target else 'MISS'}"
    return f"{label:<44}{baked:>9.1f} s{storage:>10.1f} s{ratio:>10.2f}   {verdict}"


def run() -> None:
    from mldeploy.deploy.local import LocalTarget

    client = engine()
    base = os.environ.get("MLDEPLOY_IMAGE__BASE", "python:3.11-slim")
    tmp = Path(tempfile.mkdtemp(prefix="mldeploy-bench-storage-"))
    kit = kit_copy(ROOT, tmp / "kit")
    base1, base2 = fresh_base(client, base), fresh_base(client, base)
    store = tmp / "store"
    store.mkdir()
    results: dict[str, dict] = {}
    endpoints = []
    github = FakeGitHub(TOKEN)
    try:
        for mode in ("baked", "storage"):
            repo = tmp / mode / "model-repo"
            shutil.copytree(ROOT / "examples" / "model-repo", repo, ignore=shutil.ignore_patterns(".mldeploy"))
            config = repo / "mldeploy.yaml"
            config.write_text(config.read_text().replace(
                "deploy:", f"image:\n  model: {mode}\n" + (f"storage:\n  uri: file://{store}\n" if mode == "storage"
                                                            else "") + "deploy:", 1))
            subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
            subprocess.run(["git", "remote", "add", "origin", "https://github.com/acme/models.git"], cwd=repo, check=True)
            port = 18300 + len(endpoints)
            name = f"bench-{mode}"
            endpoints.append(LocalTarget(name, port))
            env = {"MLDEPLOY_DEPLOY__PORT": str(port), "MLDEPLOY_DEPLOY__ENDPOINT": name,
                   "MLDEPLOY_ACT_ARTIFACTS": str(tmp / mode / "artifacts"), "MLDEPLOY_IMAGE__BASE": base1,
                   "GITHUB_API_URL": github.url,
                   **{k: v for k, v in os.environ.items() if k.startswith(("DOCKER_", "MLDEPLOY_IMAGE__REGISTRY"))}}
            act(repo, kit, "release-production.yml", "push", {"ref": "refs/tags/v1.0.0"}, env)
            retrain(repo, seed=1)
            warm = act(repo, kit, "pr-canary.yml", "pull_request", PR, env)
            retrain(repo, seed=2)
            cold_env = {**env, "MLDEPLOY_IMAGE__BASE": base2} if mode == "baked" else env
            cold = act(repo, kit, "pr-canary.yml", "pull_request", PR, cold_env, cache=tmp / mode / "fresh-cache")
            entry = endpoints[-1].routes()["canary"]
            starts = [cold_start(client, entry, 18320 + i) for i in range(5)]
            results[mode] = {"warm": warm, "cold": cold, "entry": entry, "starts": starts}
            print(f"{mode}: warm {warm[0]:.1f} s, cold {cold[0]:.1f} s", file=sys.stderr)
    finally:
        github.close()
        for endpoint in endpoints:
            endpoint.destroy()
        for tag in (base1, base2):
            client.images.remove(tag, force=True)
        shutil.rmtree(tmp / "baked" / "fresh-cache", ignore_errors=True)  # the cold runs' venvs (GBs)
        shutil.rmtree(tmp / "storage" / "fresh-cache", ignore_errors=True)

    baked, storage = results["baked"], results["storage"]
    onnx_kb = sum(p.stat().st_size for p in store.rglob("model.onnx")) / len(list(store.rglob("model.onnx"))) / 1e3
    print(f"machine: {machine()}")
    version = subprocess.run([ACT, "--version"], capture_output=True, text=True, check=False).stdout.split()[-1]
    print(f"act {version}; "
          f"model: the example repo's classifier ({onnx_kb:.0f} KB ONNX); store: file://; base: {base}")
    print(f"{'':<44}{'baked':>11}{'storage':>12}{'storage/baked':>14}")
    for when in ("warm", "cold"):
        print(ratio_row(f"PR canary, model-only change, {when}: whole run", baked[when][0], storage[when][0]))
        print(ratio_row("  of it the push job (image, attest, publish)", push_job(baked[when][1]),
                        push_job(storage[when][1])))
    for i, what in enumerate(("ready (/ping 200)", "first prediction")):
        b = statistics.median(s[i] for s in baked["starts"])
        s = statistics.median(s[i] for s in storage["starts"])
        print(f"{'slot cold start: docker run -> ' + what:<44}{b:>9.2f} s{s:>10.2f} s{s / b:>10.2f}   (median of 5)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run()
