"""HTTP model servers side by side, in one run, on the same model (figures, not a test).

    .venv/bin/python benchmarks/serve.py                   # everything, ~8 s per load point
    .venv/bin/python benchmarks/serve.py --quick           # ~3 s per point
    .venv/bin/python benchmarks/serve.py --only bare,flask --models mlp --json out.json
    .venv/bin/python benchmarks/serve.py --setup           # only build the competitors' venvs

What is compared, on a small MLP (64-256-10) and a mid-size CNN (3x64x64, four convs, ~1 MB),
both built here with PyTorch (random weights) and turned into bundles with `mldeploy convert`:

  ort            raw ONNX Runtime, no HTTP (the limit): single-row session.run in a loop, and
                 batched throughput at batch 32 and 64
  bare-uvicorn   a bare ASGI app, orjson + ORT and nothing else (serve_apps/bare_asgi.py), under
                 uvicorn + httptools + uvloop: the fastest bare Python stack measured here
  bare-asgi      the same app under granian; bare-rsgi the same on granian's RSGI interface
  ours           `mldeploy serve` (MLDEPLOY_WORKERS=2), which does more per request than any bare
                 app: validation, request ids, metrics, auth and rate-limit checks, deadlines
  flask-dev      Flask + ORT written the way a naive user writes it, under the Flask dev server
  flask-gunicorn the same app under gunicorn, 2 sync workers
  bentoml        a BentoML 1.4 service, 2 workers
  kserve         KServe's Python ModelServer with a custom Model, 2 workers, v1 protocol
  mlserver       MLServer 1.7 with a custom ONNX runtime (it ships none), 2 parallel workers

Every server runs 2 worker processes (the Flask dev server: 1 threaded process, which is the
point of that row), each with one ORT session of 1 intra-op thread, and per-request access logs
off where the server has one switch for it (KServe, BentoML, MLServer; the naive Flask dev server
keeps its own). Load: wrk on the same 2 cores over loopback, ONE row per request, 2 threads (1 at
concurrency 1), keep-alive, at concurrency 1, 16 and 64, after a short warm-up. Per server: rps
and p50/p99 at each concurrency, non-2xx and socket errors, cold start (Popen -> first
successful prediction, polled every 10 ms), RSS under the c=64 load (peak of the sum over the
server's whole process tree), the server's CPU time per request at each concurrency (user + system
of its process tree over the load point, /proc), and "ours / this" at c=64. Then the targets, PASS
or MISS: ours >= 1x the fastest bare stack at every concurrency, >= 6x KServe and gunicorn + Flask
at c=64, cold start <= 0.5 s, RSS <= 200 MB.

Competitors run from their own venvs under .bench/<name> (gitignored), created on first use from
the fully pinned sets in serve_apps/requirements/<name>.txt (top-level pins in VENVS below). A
competitor that cannot be installed or started is reported n/a with the reason; the run goes on.
Absolute figures drift 2x between runs on a shared machine: only same-run ratios count.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
APPS = Path(__file__).resolve().parent / "serve_apps"
BENCH = ROOT / ".bench"
BIN = Path(sys.executable).parent  # the venv running this script: torch, mldeploy, onnxruntime
CONCURRENCY = (1, 16, 64)
START_TIMEOUT_S = 180
TARGET_RSS_MB = 200
TARGET_COLD_S = 0.5

# Top-level pins of each competitor venv. The full resolved set (what is installed) lives in
# serve_apps/requirements/<name>.txt, written by pip freeze the first time a venv is built.
_ORT = ["onnxruntime==1.32.0", "numpy==2.4.6"]
VENVS = {
    "bare": ["granian==2.8.7", "orjson==3.13.0", *_ORT],
    "uvicorn": ["uvicorn==0.54.0", "httptools==0.9.0", "uvloop==0.23.0", "orjson==3.13.0", *_ORT],
    "flask": ["flask==3.1.3", "gunicorn==27.0.1", *_ORT],
    "bentoml": ["bentoml==1.4.40", *_ORT],
    "kserve": ["kserve==0.21.0", *_ORT],
    # uvloop 0.23 kills MLServer 1.7.1's parallel workers; 0.21.0 works.
    "mlserver": ["mlserver==1.7.1", "uvloop==0.21.0", *_ORT],
}


# --------------------------------------------------------------------------- venvs


def _lock(name: str) -> Path | None:
    """serve_apps/requirements/<name>.txt if it holds every top-level pin of VENVS[name]."""
    lock = APPS / "requirements" / f"{name}.txt"
    if not lock.exists():
        return None
    held = {line.lower().replace("_", "-") for line in lock.read_text().splitlines()}
    return lock if all(pin.lower().replace("_", "-") in held for pin in VENVS[name]) else None


def _spec(name: str) -> str:
    lock = _lock(name)
    return "\n".join(VENVS[name]) + "\n--\n" + (lock.read_text() if lock else "")


def ensure_venv(name: str) -> tuple[Path | None, str | None]:
    """The bin/ folder of .bench/<name>, built if missing or stale; else (None, why not)."""
    venv, lock = BENCH / name, _lock(name)
    marker = venv / ".bench-installed"
    if marker.exists() and marker.read_text() == hashlib.sha256(_spec(name).encode()).hexdigest():
        return venv / "bin", None
    print(f"  setting up .bench/{name} ({'from ' + lock.name if lock else ' '.join(VENVS[name])}) ...",
          flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    BENCH.mkdir(exist_ok=True)
    log = BENCH / f"{name}.setup.log"
    with log.open("w") as out:
        steps = [[sys._base_executable, "-m", "venv", str(venv)],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                  *(["-r", str(lock)] if lock else VENVS[name])]]
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False).returncode != 0:
                return None, f"`{' '.join(step[-3:])}` failed: {_last_lines(log, 2)} (log: {log})"
    if not lock:  # first build, or the pins changed: record what resolved
        frozen = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze", "--disable-pip-version-check"],
                                capture_output=True, text=True, check=True).stdout
        lock = APPS / "requirements" / f"{name}.txt"
        lock.parent.mkdir(exist_ok=True)
        lock.write_text(f"# .bench/{name} for benchmarks/serve.py: pip freeze of {' '.join(VENVS[name])}\n{frozen}")
    marker.write_text(hashlib.sha256(_spec(name).encode()).hexdigest())
    return venv / "bin", None


def _last_lines(path: Path, n: int) -> str:
    # pip's config here points at local indexes that may not exist: skip that noise.
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()
             if line.strip() and not line.startswith("WARNING: Location")]
    return " | ".join(line[:200] for line in lines[-n:]) or "(no output)"


def venv_versions(name: str) -> dict[str, str]:
    lock = APPS / "requirements" / f"{name}.txt"
    text = lock.read_text() if lock.exists() else "\n".join(VENVS[name])
    return dict(line.split("==", 1) for line in text.splitlines() if "==" in line and not line.startswith("#"))


# --------------------------------------------------------------------------- models


@dataclass
class Model:
    key: str
    label: str
    onnx: Path  # the bundle's model.onnx
    input_name: str
    row: list  # one input row (nested lists, 3 decimals: short JSON)
    expected: np.ndarray  # what ORT gives for that row


def build_models(keys: list[str], work: Path) -> list[Model]:
    import torch  # only here: spawned raw-ORT workers re-import this module and need no torch
    from torch import nn

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # dynamo=False is on purpose

    torch.manual_seed(0)
    nets = {
        "mlp": ("mlp 64-256-10", nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)), (64,)),
        # The CNN of benchmarks/optimize.py: four 3x3 convolutions, about 1 MB in fp32.
        "cnn": ("cnn 3x64x64, 4 conv, ~1 MB", nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10)), (3, 64, 64)),
    }
    models = []
    for key in keys:
        label, net, shape = nets[key]
        source, bundle = work / f"{key}.onnx", work / f"{key}-bundle"
        torch.onnx.export(net.eval(), (torch.randn(2, *shape),), str(source), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
        done = subprocess.run([str(BIN / "mldeploy"), "convert", str(source), "--out", str(bundle)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"mldeploy convert {source.name} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        signature = json.loads((bundle / "signature.json").read_text())
        row = np.round(np.random.default_rng(0).standard_normal(shape), 3)
        session = _session(bundle / "model.onnx", 1)
        expected = session.run(None, {signature["inputs"][0]["name"]: row[None].astype(np.float32)})[0]
        models.append(Model(key, label, bundle / "model.onnx", signature["inputs"][0]["name"], row.tolist(), expected))
    return models


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- raw ONNX Runtime


def _ort_worker(path: str, batch: int, row: list, threads: int, seconds: float, barrier, results) -> None:
    session = _session(Path(path), threads)
    feed = {session.get_inputs()[0].name: np.repeat(np.asarray(row, np.float32)[None], batch, axis=0)}
    for _ in range(10):
        session.run(None, feed)
    barrier.wait(timeout=120)  # all processes start timing together
    times, start = [], time.perf_counter()
    end = start + seconds
    while (now := time.perf_counter()) < end:
        session.run(None, feed)
        times.append(time.perf_counter() - now)
    results.put((len(times) * batch, time.perf_counter() - start, float(np.percentile(times, 50)),
                 float(np.percentile(times, 99))))


def raw_ort(model: Model, batch: int, processes: int, threads: int, seconds: float) -> dict:
    """Rows/s (and per-call p50/p99 ms) of `processes` fresh processes running session.run at once."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_ort_worker, args=(str(model.onnx), batch, model.row, threads, seconds, barrier,
                                                   results)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=120 + seconds) for _ in procs]
    for proc in procs:
        proc.join()
    return {"batch": batch, "processes": processes, "threads": threads,
            "rows_per_s": sum(rows / elapsed for rows, elapsed, _, _ in got),
            "p50_ms": max(g[2] for g in got) * 1e3, "p99_ms": max(g[3] for g in got) * 1e3}


def bench_raw_ort(model: Model, seconds: float) -> dict:
    # Single rows: 1 process (the per-call latency) and 2 processes x 1 thread (what 2 cores can
    # do with no HTTP at all). Batched: 1 process x 1 thread, and the server's total of 2 threads
    # both ways (1 process with 2 intra-op threads, 2 processes with 1), since either may win on a
    # given machine; the CNN target takes the best of all of them (none uses more than 2 threads).
    out = {"single_1x1": raw_ort(model, 1, 1, 1, seconds), "single_2x1": raw_ort(model, 1, 2, 1, seconds)}
    for batch in (32, 64):
        for processes, threads in ((1, 1), (1, 2), (2, 1)):
            out[f"b{batch}_{processes}x{threads}"] = raw_ort(model, batch, processes, threads, seconds)
    out["batched_reference"] = max((v for k, v in out.items() if k.startswith("b")), key=lambda v: v["rows_per_s"])
    return out


# --------------------------------------------------------------------------- servers


@dataclass
class Launch:
    argv: list[str]
    path: str  # the predict URL path
    body: dict  # one-row request
    outputs: Callable[[Any], Any]  # response JSON -> the output values
    env: dict = field(default_factory=dict)


def _ours_body(m: Model) -> dict:
    return {"inputs": [m.row]}


def _granian(interface: str) -> Callable[[Path, Model, int, Path], Launch]:
    def launch(bin_: Path, m: Model, port: int, tmp: Path) -> Launch:
        return Launch([str(bin_ / "granian"), "--interface", interface, "--workers", "2", "--no-ws",
                       "--host", "127.0.0.1", "--port", str(port), f"bare_{interface}:app"],
                      "/predict", _ours_body(m), lambda r: r["outputs"])
    return launch


def _uvicorn(bin_: Path, m: Model, port: int, tmp: Path) -> Launch:
    return Launch([str(bin_ / "uvicorn"), "--workers", "2", "--http", "httptools", "--loop", "uvloop",
                   "--no-access-log", "--log-level", "warning", "--host", "127.0.0.1", "--port", str(port),
                   "bare_asgi:app"], "/predict", _ours_body(m), lambda r: r["outputs"])


def _ours(bin_: Path, m: Model, port: int, tmp: Path) -> Launch:
    return Launch([str(bin_ / "mldeploy"), "serve", "--bundle", str(m.onnx.parent), "--host", "127.0.0.1",
                   "--port", str(port)], "/predict", _ours_body(m), lambda r: r["outputs"],
                  {"MLDEPLOY_WORKERS": "2"})


def _flask_dev(bin_: Path, m: Model, port: int, tmp: Path) -> Launch:
    return Launch([str(bin_ / "flask"), "--app", "flask_app", "run", "--host", "127.0.0.1", "--port", str(port)],
                  "/predict", _ours_body(m), lambda r: r["outputs"])


def _gunicorn(bin_: Path, m: Model, port: int, tmp: Path) -> Launch:
    return Launch([str(bin_ / "gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{port}", "flask_app:app"],
                  "/predict", _ours_body(m), lambda r: r["outputs"])


def _bentoml(bin_: Path, m: Model, port: int, tmp: Path) -> Launch:
    return Launch([str(bin_ / "bentoml"), "serve", "bentoml_service:Model", "--host", "127.0.0.1",
                   "--port", str(port)], "/predict", {"inputs": [m.row]}, lambda r: r,
                  {"BENTOML_HOME": str(tmp / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "True"})


def _kserve(bin_: Path, m: Model, port: int, tmp: Path) -> Launch:
    return Launch([str(bin_ / "python"), "kserve_server.py", "--http_port", str(port), "--workers", "2",
                   "--enable_grpc", "false", "--enable_latency_logging", "false",
                   # KServe's default logging writes 3 lines per request (access + 2 timings); this
                   # config keeps its startup lines and drops those.
                   "--log_config_file", "kserve_logging.json"],
                  "/v1/models/model:predict", {"instances": [m.row]}, lambda r: r["predictions"])


def _mlserver(bin_: Path, m: Model, port: int, tmp: Path) -> Launch:
    folder = tmp / f"mlserver-{m.key}"
    (folder / "model").mkdir(parents=True, exist_ok=True)
    # debug off: no line per request. Its metrics and environments folders default to the cwd.
    (folder / "settings.json").write_text(json.dumps({
        "parallel_workers": 2, "debug": False, "host": "127.0.0.1", "http_port": port,
        "grpc_port": free_port(), "metrics_port": free_port(), "metrics_dir": str(folder / ".metrics"),
        "environments_dir": str(folder / ".envs")}))
    (folder / "model" / "model-settings.json").write_text(json.dumps({
        "name": "model", "implementation": "mlserver_runtime.OnnxModel", "parameters": {"uri": str(m.onnx)}}))
    flat = np.asarray(m.row).ravel().tolist()
    body = {"inputs": [{"name": m.input_name, "shape": [1, *np.shape(m.row)], "datatype": "FP32", "data": flat}]}
    return Launch([str(bin_ / "mlserver"), "start", str(folder)], "/v2/models/model/infer", body,
                  lambda r: r["outputs"][0]["data"])


@dataclass
class Server:
    key: str
    label: str
    venv: str | None  # a .bench venv, or None for the venv running this script
    launch: Callable[[Path, Model, int, Path], Launch]


SERVERS = [
    Server("bare-uvicorn", "bare uvicorn+httptools", "uvicorn", _uvicorn),
    Server("bare-asgi", "bare granian ASGI", "bare", _granian("asgi")),
    Server("bare-rsgi", "bare granian RSGI", "bare", _granian("rsgi")),
    Server("ours", "ours (mldeploy serve)", None, _ours),
    Server("flask-dev", "flask dev server", "flask", _flask_dev),
    Server("flask-gunicorn", "flask + gunicorn x2", "flask", _gunicorn),
    Server("bentoml", "bentoml 1.4.40", "bentoml", _bentoml),
    Server("kserve", "kserve 0.21.0", "kserve", _kserve),
    Server("mlserver", "mlserver 1.7.1", "mlserver", _mlserver),
]
BARE = ["bare-uvicorn", "bare-asgi", "bare-rsgi"]  # the bare stacks ours must match
ALIASES = {"bare": BARE, "flask": ["flask-dev", "flask-gunicorn"], "raw": ["ort"]}


class Unavailable(Exception):
    """A server that could not be installed, started or asked: its row is n/a, the run goes on."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ours_available() -> str | None:
    """None when `mldeploy serve` exists, else why not."""
    done = subprocess.run([str(BIN / "mldeploy"), "serve", "--help"], capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else f"`mldeploy serve` is not available yet ({done.stderr.strip()[-120:]})"


def process_tree(root: int) -> list[int]:
    """root, its descendants, and anything else in its session (workers that were re-parented)."""
    parent, session = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parent[int(entry)], session[int(entry)] = int(fields[1]), int(fields[3])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return sorted(tree | {pid for pid, sid in session.items() if sid == root})


def tree_rss_mb(root: int) -> tuple[float, int]:
    total, count = 0, 0
    for pid in process_tree(root):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            count += 1
        except (OSError, IndexError):
            pass
    return total / 2**20, count


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds used so far by the server's process tree."""
    ticks = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


class RssSampler(threading.Thread):
    """Peak RSS of a process tree, sampled every 200 ms while a load runs."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.peak, self.processes, self.halt = root, 0.0, 0, threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            mb, count = tree_rss_mb(self.root)
            if mb > self.peak:
                self.peak, self.processes = mb, count


def post(port: int, path: str, body: bytes, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_first_prediction(proc: subprocess.Popen, port: int, launch: Launch, body: bytes, log: Path) -> bytes:
    """Poll the predict route every 10 ms until it answers 200; the response body."""
    deadline, last = time.monotonic() + START_TIMEOUT_S, "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"exited with {proc.returncode} before answering: {_last_lines(log, 3)} (log: {log})")
        try:
            status, data = post(port, launch.path, body, timeout=5)
            if status == 200:
                return data
            last = f"HTTP {status}: {data[:200]!r}"
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.01)
    raise Unavailable(f"no successful prediction within {START_TIMEOUT_S} s (last: {last}; log: {log})")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever of its tree is left."""
    tree = process_tree(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


# --------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(port: int, path: str, lua: Path, connections: int, seconds: int) -> dict:
    cmd = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency",
           "-s", str(lua), f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise Unavailable(f"wrk printed no Requests/sec: {out.strip()[-300:]}")

    def percentile(p: str) -> float | None:
        hit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(hit.group(1)) * _UNITS[hit.group(2)] if hit else None

    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    # wrk counts status >= 400 here; no server of this benchmark answers 1xx or 3xx.
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = re.search(r"(\d+) requests in", out)
    return {"connections": connections, "rps": float(rps.group(1)), "p50_ms": percentile("50"),
            "p99_ms": percentile("99"), "requests": int(requests.group(1)) if requests else None,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": {} if not sock else
            dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))}


def wrk_script(body: bytes, tmp: Path, name: str) -> Path:
    lua = tmp / f"{name}.lua"
    text = body.decode()
    assert "]==]" not in text  # the long-bracket string below must not close early
    lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                   f"wrk.body = [==[{text}]==]\n")
    return lua


# --------------------------------------------------------------------------- one server


def bench_server(server: Server, bin_: Path, model: Model, args, tmp: Path) -> dict:
    port = free_port()
    launch = server.launch(bin_, model, port, tmp)
    body = json.dumps(launch.body, separators=(",", ":")).encode()
    log = tmp / f"{model.key}-{server.key}.log"
    env = {**os.environ, "BENCH_MODEL": str(model.onnx), "PYTHONPATH": str(APPS), **launch.env}
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(launch.argv, cwd=APPS, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        first = wait_first_prediction(proc, port, launch, body, log)
        cold = time.perf_counter() - start
        try:
            got = np.asarray(launch.outputs(json.loads(first)), dtype=np.float32).ravel()
            error = float(np.max(np.abs(got - model.expected.ravel())))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise Unavailable(f"unexpected prediction {first[:200]!r}: {e}") from e
        lua = wrk_script(body, tmp, f"{model.key}-{server.key}")
        # Warm-up, not reported: the first answer may come from one worker while the other loads.
        wrk(port, launch.path, lua, 16, max(2, args.duration // 3))
        points, sampler = {}, RssSampler(proc.pid)
        for c in CONCURRENCY:
            if c == CONCURRENCY[-1]:  # RSS under the heaviest load
                sampler.start()
            cpu = tree_cpu_s(proc.pid)
            points[c] = wrk(port, launch.path, lua, c, args.duration)
            used = tree_cpu_s(proc.pid) - cpu
            points[c]["cpu_us_per_request"] = used / points[c]["requests"] * 1e6 if points[c]["requests"] else None
        sampler.halt.set()
        sampler.join()
        return {"status": "ok", "label": server.label, "cold_start_s": cold, "max_abs_error": error, "points": points,
                "rss_mb": sampler.peak, "rss_processes": sampler.processes, "body_bytes": len(body)}
    finally:
        stop(proc)


def machine() -> str:
    """The CPU's name, its core count and the instruction sets that matter to ONNX Runtime."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    flags = set(re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE).group(1).split()) if "flags" in info else set()
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
              if f in flags]
    return f"{name.group(1) if name else platform.machine()}, {os.cpu_count()} CPUs, {' '.join(wanted) or 'no AVX2'}"


def median_run(runs: list[dict]) -> dict:
    """One row from a server's rounds: at each concurrency the point of the round with the median rps,
    the median cold start, the highest RSS; n/a only when every round was."""
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return runs[0]

    def median(items: list, key: Callable) -> Any:
        return sorted(items, key=key)[(len(items) - 1) // 2]

    row = dict(median(ok, lambda r: r["cold_start_s"]))
    row["points"] = {c: median([r["points"][c] for r in ok], lambda p: p["rps"]) for c in CONCURRENCY}
    row["rss_mb"] = max(r["rss_mb"] for r in ok)
    row["rounds"] = len(ok)
    return row


# --------------------------------------------------------------------------- report


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _lat(point: dict | None) -> str:
    return f"{_ms(point.get('p50_ms'))}/{_ms(point.get('p99_ms'))}" if point else "-"


def _cpu(points: dict) -> str:
    return "/".join("-" if points[c].get("cpu_us_per_request") is None else f"{points[c]['cpu_us_per_request']:.0f}"
                    for c in CONCURRENCY)


def print_table(model: Model, result: dict, duration: int) -> None:
    servers, ort = result["servers"], result.get("raw_ort")
    ours = servers.get("ours", {})
    ours_c64 = ours["points"][64]["rps"] if ours.get("status") == "ok" else None
    rounds = max((row.get("rounds", 1) for row in servers.values()), default=1)
    print(f"\n== {model.label}: one row per request, wrk {duration} s per point, same 2 cores"
          + (f", median of {rounds} rounds taken in turns" if rounds > 1 else ""))
    head = (f"{'server':<24}{'rps c1':>9}{'c16':>9}{'c64':>9}   {'p50/p99 ms c1':>14}{'c16':>15}{'c64':>15}"
            f"{'cold s':>8}{'RSS MB':>8}{'ours/this':>10}{'errors':>8}{'CPU us/req c1/c16/c64':>23}")
    print(head)
    print("-" * len(head))
    if ort:
        one, two = ort["single_1x1"], ort["single_2x1"]
        ratio = f"{ours_c64 / two['rows_per_s']:.2f}x" if ours_c64 else "-"
        print(f"{'raw ORT, no HTTP':<24}{one['rows_per_s']:>9.0f}{'-':>9}{two['rows_per_s']:>9.0f}   "
              f"{_lat(one):>14}{'-':>15}{_lat(two):>15}{'-':>8}{'-':>8}{ratio:>10}{'-':>8}")
    notes = []
    for server in SERVERS:
        row = servers.get(server.key)
        if row is None:
            continue
        if row["status"] != "ok":
            print(f"{server.label:<24}{'n/a':>9}")
            notes.append(f"  {server.label}: n/a: {row['reason']}")
            continue
        p = row["points"]
        errors = sum(pt["non2xx"] + sum(pt["socket_errors"].values()) for pt in p.values())
        ratio = f"{ours_c64 / p[64]['rps']:.2f}x" if ours_c64 and p[64]["rps"] else "-"
        print(f"{server.label:<24}{p[1]['rps']:>9.0f}{p[16]['rps']:>9.0f}{p[64]['rps']:>9.0f}   "
              f"{_lat(p[1]):>14}{_lat(p[16]):>15}{_lat(p[64]):>15}{row['cold_start_s']:>8.2f}"
              f"{row['rss_mb']:>8.0f}{ratio:>10}{errors:>8}{_cpu(p):>23}")
        if errors:
            notes.append(f"  {server.label}: " + "; ".join(
                f"c{c}: {pt['non2xx']} non-2xx, socket {pt['socket_errors']}" for c, pt in p.items()))
        if row["max_abs_error"] > 1e-3:
            notes.append(f"  {server.label}: its prediction differs from ORT's by {row['max_abs_error']:.2e}")
    if ort:
        print("raw ORT batched, rows/s (processes x intra-op threads):")
        for batch in (32, 64):
            print(f"  batch {batch}: " + ", ".join(
                f"{p}x{t} {ort[f'b{batch}_{p}x{t}']['rows_per_s']:.0f}" for p, t in ((1, 1), (1, 2), (2, 1))))
        ref = ort["batched_reference"]
        print(f"  reference (the best, at most 2 threads in all): {ref['rows_per_s']:.0f} rows/s, "
              f"batch {ref['batch']}, {ref['processes']} process(es) x {ref['threads']} thread(s)")
        print("raw ORT row: single rows in a loop, c1 = 1 process, c64 = 2 processes x 1 thread; "
              "latencies are per session.run.")
    print("RSS: peak under the c=64 load, summed over the server's process tree (shared pages count per process).")
    print("CPU us/req: the server's process tree's user + system CPU time during the load point / its requests.")
    for note in notes:
        print(note)


def targets(results: dict) -> list[dict]:
    out = []

    def ok(model: str, key: str) -> dict | None:
        row = results.get(model, {}).get("servers", {}).get(key)
        return row if row and row["status"] == "ok" else None

    def add(name: str, measured: float | None, goal: str, passed: bool | None, why: str = "") -> None:
        out.append({"target": name, "measured": measured, "goal": goal,
                    "status": "n/a" if passed is None else "PASS" if passed else "MISS", "why": why})

    ours_mlp = ok("mlp", "ours")
    if "mlp" in results:
        bares = [row for key in BARE if (row := ok("mlp", key))]
        for c in CONCURRENCY:  # the fastest bare stack at each concurrency, whichever it is
            best = max(bares, key=lambda row: row["points"][c]["rps"], default=None)
            ratio = ours_mlp["points"][c]["rps"] / best["points"][c]["rps"] if ours_mlp and best else None
            add(f"mlp c{c} rps: ours / fastest bare ({best['label'] if best else '-'})", ratio, ">= 1x",
                None if ratio is None else ratio >= 1.0, "" if ratio is not None else "ours or no bare stack run")
        for key, label, goal in (("flask-gunicorn", "flask + gunicorn", 6.0), ("kserve", "kserve", 6.0),
                                 ("bentoml", "bentoml", 20.0)):
            other = ok("mlp", key)
            ratio = ours_mlp["points"][64]["rps"] / other["points"][64]["rps"] if ours_mlp and other else None
            add(f"mlp c64 rps: ours / {label}", ratio, f">= {goal:g}x", None if ratio is None else ratio >= goal,
                "" if ratio is not None else "ours not run" if not ours_mlp else f"{key} not run")
        if ours_mlp and bares:
            limit = min(row["points"][1]["p50_ms"] for row in bares) + 0.1
            add("mlp c1 p50 ms: ours vs fastest bare + 0.1", ours_mlp["points"][1]["p50_ms"], f"<= {limit:.3f}",
                ours_mlp["points"][1]["p50_ms"] <= limit)
        else:
            add("mlp c1 p50 ms: ours vs fastest bare + 0.1", None, "<= bare + 0.1", None, "ours or bare not run")
    if "cnn" in results:
        ours_cnn, ort = ok("cnn", "ours"), results["cnn"].get("raw_ort")
        if ours_cnn and ort:
            ratio = ours_cnn["points"][64]["rps"] / ort["batched_reference"]["rows_per_s"]
            add("cnn c64 rps: ours / raw ORT batched", ratio, ">= 0.8x", ratio >= 0.8)
        else:
            add("cnn c64 rps: ours / raw ORT batched", None, ">= 0.8x", None, "ours or raw ORT not run")
    for model in results:
        ours = ok(model, "ours")
        add(f"{model} cold start s (ours)", ours and ours["cold_start_s"], f"<= {TARGET_COLD_S}",
            ours and ours["cold_start_s"] <= TARGET_COLD_S,
            "" if ours else "ours not run")
        add(f"{model} RSS MB under load (ours, whole tree)", ours and ours["rss_mb"], f"<= {TARGET_RSS_MB}",
            ours and ours["rss_mb"] <= TARGET_RSS_MB, "" if ours else "ours not run")
    return out


def print_targets(rows: list[dict], results: dict) -> None:
    print("\n== TARGETS (same-run ratios)")
    for row in rows:
        measured = "-" if row["measured"] is None else f"{row['measured']:.3g}"
        why = f"  ({row['why']})" if row["why"] else ""
        print(f"  {row['status']:<5} {row['target']:<44} {measured:>8}   goal {row['goal']}{why}")
    servers = results.get("mlp", {}).get("servers", {})
    ours = servers.get("ours")
    for key in BARE:
        other = servers.get(key)
        if ours and other and ours["status"] == other["status"] == "ok":
            print(f"  info  mlp rps ours / {other['label']} at c1/c16/c64: " + " / ".join(
                f"{ours['points'][c]['rps'] / other['points'][c]['rps']:.2f}" for c in CONCURRENCY))


# --------------------------------------------------------------------------- main


def selected(only: str | None) -> set[str]:
    known = {"ort", *(s.key for s in SERVERS)}
    if not only:
        return known
    keys = set()
    for name in only.split(","):
        name = name.strip()
        keys.update(ALIASES.get(name, [name]))
    unknown = keys - known
    if unknown:
        sys.exit(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(sorted(known | set(ALIASES)))}")
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma list of: ort, bare(-asgi,-rsgi), ours, flask(-dev,-gunicorn), "
                                       "bentoml, kserve, mlserver (default: all)")
    parser.add_argument("--models", default="mlp,cnn", help="comma list of mlp, cnn (default: both)")
    parser.add_argument("--duration", type=int, default=8, help="seconds of wrk per load point (default 8)")
    parser.add_argument("--quick", action="store_true", help="3 s per load point")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every server this many times, taking turns; each point is the median round's")
    parser.add_argument("--setup", action="store_true", help="only build the competitors' venvs, then stop")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    if args.quick:
        args.duration = 3
    keys = selected(args.only)
    model_keys = [m.strip() for m in args.models.split(",") if m.strip()]
    if not set(model_keys) <= {"mlp", "cnn"}:
        sys.exit("--models: choose from mlp, cnn")
    if not shutil.which("wrk") and not args.setup:
        sys.exit("wrk is not on PATH (apt-get install wrk)")

    servers = [s for s in SERVERS if s.key in keys]
    print(f"== machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    print("== venvs", flush=True)
    bins: dict[str, Path | str] = {}
    for name in dict.fromkeys(s.venv for s in (SERVERS if args.setup else servers) if s.venv):
        bin_, why = ensure_venv(name)
        bins[name] = bin_ if bin_ else why
        print(f"  .bench/{name}: {'ready' if bin_ else 'n/a: ' + why}", flush=True)
    if args.setup:
        return
    not_ours = ours_available() if "ours" in keys else None

    # Models, bundles, server configs and logs of the last run stay in .bench/run for a look after.
    tmp = BENCH / "run"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"\n== models (work dir {tmp})", flush=True)
    models = build_models(model_keys, tmp)
    ort_seconds = min(args.duration, 4)
    results: dict[str, dict] = {}
    for model in models:
        result = results[model.key] = {"label": model.label, "servers": {}}
        if "ort" in keys:
            print(f"[{model.key}] raw ORT ...", end=" ", flush=True)
            try:
                result["raw_ort"] = bench_raw_ort(model, ort_seconds)
                print(f"single row {result['raw_ort']['single_1x1']['rows_per_s']:.0f} rows/s", flush=True)
            except Exception as e:  # a benchmark goes on: the row is just missing
                print(f"failed: {type(e).__name__}: {e}", flush=True)
        runs: dict[str, list[dict]] = {}
        for round_ in range(args.rounds):  # servers take turns, so a busy spell on a shared machine hits all
            for server in servers:
                bin_ = BIN if server.venv is None else bins[server.venv]
                try:
                    if isinstance(bin_, str):
                        raise Unavailable(f"venv .bench/{server.venv}: {bin_}")
                    if server.key == "ours" and not_ours:
                        raise Unavailable(not_ours)
                    print(f"[{model.key}{f' round {round_ + 1}' if args.rounds > 1 else ''}] {server.label} ...",
                          end=" ", flush=True)
                    row = bench_server(server, bin_, model, args, tmp)
                    print(f"cold {row['cold_start_s']:.2f} s, c64 {row['points'][64]['rps']:.0f} rps", flush=True)
                except (Unavailable, subprocess.TimeoutExpired, OSError) as e:
                    row = {"status": "n/a", "reason": str(e)}
                    print(f"n/a: {e}", flush=True)
                runs.setdefault(server.key, []).append(row)
                time.sleep(1)  # let the previous server's processes and sockets go away
        for key, rows_ in runs.items():
            result["servers"][key] = median_run(rows_)
    for model in models:
        print_table(model, results[model.key], args.duration)
    rows = targets(results)
    print_targets(rows, results)
    print(f"\n== machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the end")

    if args.json:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "machine": machine(),
                "loadavg_end": os.getloadavg(), "rounds": args.rounds,
                "python": platform.python_version(), "duration_s": args.duration, "raw_ort_seconds": ort_seconds,
                "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.splitlines()[:1],
                "ours": {"commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                                  capture_output=True, text=True, check=False).stdout.strip(),
                         "version": subprocess.run([str(BIN / "mldeploy"), "--version"], capture_output=True,
                                                   text=True, check=False).stdout.strip()},
                "venvs": {name: venv_versions(name) for name in VENVS}}
        args.json.write_text(json.dumps({"meta": meta, "models": results, "targets": rows}, indent=1, default=str))
        print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
