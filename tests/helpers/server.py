"""Real `mldeploy serve` processes on loopback ports: start one, wait for it, call it."""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

API_KEY = "test-key-0123456789abcdef"
OIP_MAX_BODY = 64 << 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path

    def call(self, method: str, path: str, body: object = None, headers: dict | None = None,
             timeout: float = 30) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            headers = {"content-type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        reply = Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        conn.close()
        return reply

    def logs(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def start_server(bundle: Path | None, tmp: Path, env: dict | None = None, workers: int = 1,
                 args: tuple = (), ready: bool = True, open_files: int | None = None) -> Server:
    """`mldeploy serve` in its own process on a free loopback port; waits for readiness.
    open_files: the server's open-file limit, soft and hard (as `ulimit -n` sets it)."""
    port = free_port()
    log = tmp / f"server-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLDEPLOY_", "AIP_", "AZUREML_",
                                                                          "SAGEMAKER_"))}
    full_env.update({"MLDEPLOY_WORKERS": str(workers), **(env or {})})
    command = [sys.executable, "-m", "mldeploy", "serve", *args, "--host", "127.0.0.1"]
    if "--port" not in args and not any(k in full_env for k in ("AIP_HTTP_PORT", "SAGEMAKER_BIND_TO_PORT", "PORT")):
        command += ["--port", str(port)]
    else:
        port = int(args[args.index("--port") + 1]) if "--port" in args else int(
            full_env.get("AIP_HTTP_PORT") or full_env.get("SAGEMAKER_BIND_TO_PORT") or full_env["PORT"])
    if bundle is not None:
        command += ["--bundle", str(bundle)]
    with open(log, "wb") as out:
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))) if open_files else None
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=tmp,
                                   preexec_fn=limit)  # noqa: PLW1509 (setrlimit in the child; one thread starts servers)
    server = Server(process, port, log)
    if ready:
        wait_ready(server)
    return server


def wait_ready(server: Server, path: str = "/v2/health/ready", timeout: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            if server.call("GET", path, timeout=2).status == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.02)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"server not ready after {timeout} s:\n{server.log.read_text()}")


def run_serve(bundle, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    """`mldeploy serve` as a subprocess that is expected to refuse to start."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MLDEPLOY_", "GITHUB_"))}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "mldeploy", "serve", "--bundle", str(bundle), "--host",
                           "127.0.0.1", "--port", str(free_port())], env=full, capture_output=True,
                          text=True, timeout=timeout, check=False)
