"""Reliability of a real `mldeploy serve`: fuzzed with schemathesis from its own /openapi.json, and
held under a minute of wrk load.

  test_fuzz_no_server_errors   >= 10,000 generated requests (valid and mutated) across every
                               operation of the served document: no 5xx, no dropped connection,
                               and the server is still up and ready afterwards.
  test_load_no_errors_bounded_memory
                               wrk, 64 connections, 2 threads, MLDEPLOY_LOAD_SECONDS (default 60)
                               of POST /predict on a 2-worker server: no non-2xx, no socket errors,
                               and the server's process tree grows by at most RSS_GROWTH_LIMIT_MB.

Each test starts its own server, so its traffic disturbs no other test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.serve.conftest import Server, expected_probs, start_server

pytestmark = [pytest.mark.slow, pytest.mark.load]

# Read at import: the autouse `clean_env` fixture removes every MLDEPLOY_* variable while a test runs.
LOAD_SECONDS = int(os.environ.get("MLDEPLOY_LOAD_SECONDS", "") or 60)

FUZZ_MIN_REQUESTS = 10_000


# -- fuzzing -----------------------------------------------------------------------------------
def _fuzz_plan(operations) -> list[tuple[object, object, int]]:
    """(operation, generation mode, max examples): most of the budget goes to the bodies the model reads."""
    from schemathesis import GenerationMode

    plan = []
    for op in operations:
        if op.method.upper() == "POST":  # /predict, /invocations, /score, /v2/models/{name}/infer
            plan += [(op, GenerationMode.POSITIVE, 1300), (op, GenerationMode.NEGATIVE, 1300)]
        elif op.path_parameters:        # /v2/models/{model_name}[/ready]: wrong names, odd characters
            plan += [(op, GenerationMode.POSITIVE, 5), (op, GenerationMode.NEGATIVE, 250)]
        else:                           # probes, /metrics, /openapi.json: nothing to vary, one call each
            plan += [(op, GenerationMode.POSITIVE, 5)]
    return plan


def _describe(request, limit: int = 2000) -> str:
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    shown = body[:limit]
    more = f" ... ({len(body)} bytes in all)" if len(body) > limit else ""
    headers = {k: v for k, v in request.headers.items() if k.lower() != "user-agent"}
    return f"{request.method} {request.url}\n    headers: {headers}\n    body: {shown!r}{more}"


def test_fuzz_no_server_errors(two_io_bundle, tmp_path):
    """Schemathesis generates requests from the served /openapi.json (two inputs, float32 and int64, and
    a model-error path: an index outside 0..9 must be 422): no response is a 5xx, no request loses its
    connection, and the server answers ready at the end."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis.errors import Unsatisfiable

    server = start_server(two_io_bundle, tmp_path, workers=1)
    base = f"http://127.0.0.1:{server.port}"
    started = time.monotonic()
    try:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=10)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 10, [f"{op.method} {op.path}" for op in operations]

        session = requests.Session()
        sent = Counter()             # (METHOD path, mode) -> requests answered
        statuses = Counter()         # status -> count
        failures: list[str] = []     # 5xx answers and lost connections, reproducible

        def fuzz(op, mode, examples: int, round_: int) -> None:
            label = f"{op.method.upper()} {op.path}"

            @seed(_stable_seed(label, mode.value, round_))
            @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                      print_blob=False)
            @given(case=op.as_strategy(generation_mode=mode))
            def one(case) -> None:
                try:
                    response = case.call(base_url=base, session=session, timeout=30)
                except requests.RequestException as e:
                    request = getattr(e, "request", None)
                    failures.append(f"{label} [{mode.value}]: {type(e).__name__}: {e}\n  "
                                    + (_describe(request) if request is not None else case.as_curl_command(base_url=base)))
                    session.close()  # start on fresh connections
                    return
                sent[(label, mode.value)] += 1
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    failures.append(f"{label} [{mode.value}] -> {response.status_code} "
                                    f"{response.content[:500]!r}\n  {_describe(response.request)}")

            try:
                one()
            except Unsatisfiable:  # e.g. a negative request for an operation that has nothing to mutate
                pass

        plan = _fuzz_plan(operations)
        for op, mode, examples in plan:
            fuzz(op, mode, examples, 0)
        round_ = 0
        while sum(sent.values()) < FUZZ_MIN_REQUESTS and round_ < 5:  # Hypothesis stopped early somewhere
            round_ += 1
            for op, mode, examples in plan:
                if examples > 100:
                    fuzz(op, mode, 500, round_)

        total = sum(sent.values())
        elapsed = time.monotonic() - started
        alive = server.process.poll() is None
        ready = server.call("GET", "/v2/health/ready", timeout=10).status if alive else None
        per_op = "\n".join(f"  {label:40} {mode:8} {n:6}" for (label, mode), n in sorted(sent.items()))
        report = (f"fuzz: {total} requests in {elapsed:.1f} s ({total / elapsed:.0f}/s), "
                  f"statuses {dict(sorted(statuses.items()))}\n{per_op}")
        print("\n" + report)
        errors = [e for e in server.logs() if e.get("level") in ("error", "critical")]
        assert not failures, (f"{len(failures)} requests got a 5xx or lost their connection; the first ones:\n"
                              + "\n".join(failures[:10]) + "\nserver error log:\n"
                              + "\n".join(json.dumps(e) for e in errors[:20]) + "\n" + report)
        assert alive, f"the server exited with {server.process.returncode}:\n{server.log.read_text()[-3000:]}"
        assert ready == 200, f"/v2/health/ready answered {ready} after fuzzing"
        assert total >= FUZZ_MIN_REQUESTS, report
        assert statuses[200] > 0 and statuses[422] > 0, f"no valid or no model-error request: {report}"
    finally:
        server.stop()


def _stable_seed(*parts: object) -> int:
    """A seed that is the same in every run (Python's hash() of a str is not)."""
    import zlib

    return zlib.crc32("|".join(map(str, parts)).encode())


# -- load ----------------------------------------------------------------------------------------
# Bound on the growth of the server's process tree (parent + 2 workers) between the start of the
# measured load (after a warm-up, with all 64 connections open) and its end. The idle tree is about
# 200 MB; a minute at a few thousand requests/s is a few 100,000 requests, so 50 MB catches any leak
# of more than ~100-200 bytes per request (or ~1 MB per second), while leaving room for allocator
# noise and for metrics label sets and histograms that are created once.
RSS_GROWTH_LIMIT_MB = 50
CONNECTIONS = 64


def tree_rss_mb(root: int) -> tuple[float, int]:
    """Summed VmRSS (MB) of `root` and all its descendants, and how many processes that is."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    kb = 0
    for pid in tree:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        kb += int(m.group(1)) if m else 0
    return kb / 1024, len(tree)


def parse_wrk(out: str) -> dict:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    assert rps and total, f"wrk printed no summary:\n{out}"
    return {"rps": float(rps.group(1)), "requests": int(total.group(1)),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups())))
            if sock else {"connect": 0, "read": 0, "write": 0, "timeout": 0}}


def run_wrk(port: int, lua: Path, seconds: int, connections: int = CONNECTIONS) -> subprocess.Popen:
    return subprocess.Popen(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency",
                             "-s", str(lua), f"http://127.0.0.1:{port}/predict"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_load_no_errors_bounded_memory(linear_bundle, tmp_path, record_property):
    """A minute of wrk against POST /predict on 2 workers: every answer 2xx, no socket error, and the
    process tree's RSS does not creep up."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk not installed: run scripts/setup-system.sh as root")
    row = [0.5, -1.25, 2.0, 0.125]
    body = json.dumps({"instances": [row]}, separators=(",", ":"))
    lua = tmp_path / "predict.lua"
    lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                   f"wrk.body = [==[{body}]==]\n")
    server: Server = start_server(linear_bundle, tmp_path, workers=2)
    try:
        reply = server.call("POST", "/predict", json.loads(body))
        assert reply.status == 200, reply.body
        np.testing.assert_allclose(reply.json()["predictions"], expected_probs(np.array([row])), rtol=1e-5,
                                   atol=1e-6)
        idle_mb, processes = tree_rss_mb(server.process.pid)
        assert processes >= 3, f"expected the parent and 2 workers, found {processes} processes"

        # Warm-up (not measured for memory): opens the connections, grows the allocators' arenas and
        # ONNX Runtime's buffers to their batched sizes, creates every metrics label once.
        warm = subprocess.run(["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{max(2, min(5, LOAD_SECONDS // 6))}s",
                               "-s", str(lua), f"http://127.0.0.1:{server.port}/predict"],
                              capture_output=True, text=True, timeout=120)
        warm_stats = parse_wrk(warm.stdout)

        samples: list[tuple[float, float]] = []
        wrk = run_wrk(server.port, lua, LOAD_SECONDS)
        t0 = time.monotonic()
        halt = threading.Event()

        def sample() -> None:
            while not halt.is_set():
                samples.append((time.monotonic() - t0, tree_rss_mb(server.process.pid)[0]))
                halt.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        time.sleep(1.0)  # every connection is open and busy
        sampler.start()
        try:
            out, _ = wrk.communicate(timeout=LOAD_SECONDS + 60)
        finally:
            halt.set()
            sampler.join()
        end_mb = tree_rss_mb(server.process.pid)[0]  # right after the last request
        stats = parse_wrk(out)
        start_mb = samples[0][1]
        peak_mb = max(mb for _, mb in samples)
        growth = end_mb - start_mb
        figures = {"load_seconds": LOAD_SECONDS, "connections": CONNECTIONS, "rps": stats["rps"],
                   "requests": stats["requests"], "non2xx": stats["non2xx"], "socket_errors": stats["socket_errors"],
                   "warmup_rps": warm_stats["rps"], "rss_idle_mb": round(idle_mb, 1),
                   "rss_start_mb": round(start_mb, 1), "rss_end_mb": round(end_mb, 1),
                   "rss_peak_mb": round(peak_mb, 1), "rss_growth_mb": round(growth, 1),
                   "rss_limit_mb": RSS_GROWTH_LIMIT_MB, "processes": processes}
        for key, value in figures.items():
            record_property(key, value)
        print(f"\nload: {figures}")

        assert wrk.returncode == 0, out
        assert server.process.poll() is None, f"the server exited:\n{server.log.read_text()[-3000:]}"
        assert warm_stats["non2xx"] == 0 and not any(warm_stats["socket_errors"].values()), warm.stdout
        assert stats["requests"] > 0, out
        assert stats["non2xx"] == 0, f"{stats['non2xx']} non-2xx responses:\n{out}\n{_log_tail(server)}"
        assert not any(stats["socket_errors"].values()), f"socket errors {stats['socket_errors']}:\n{out}"
        assert growth <= RSS_GROWTH_LIMIT_MB, (
            f"RSS grew {growth:.1f} MB under load ({start_mb:.1f} -> {end_mb:.1f} MB, peak {peak_mb:.1f}; "
            f"{growth * 2**20 / stats['requests']:.0f} bytes per request); samples (s, MB): "
            f"{[(round(t, 1), round(mb, 1)) for t, mb in samples]}")
        after = server.call("POST", "/predict", json.loads(body))
        assert after.status == 200
        assert server.call("GET", "/v2/health/ready").status == 200
    finally:
        server.stop()


def _log_tail(server: Server, lines: int = 30) -> str:
    return "\n".join(server.log.read_text().splitlines()[-lines:])
