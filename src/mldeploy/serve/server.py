"""`mldeploy serve`: N forked worker processes, each serving the App on mldeploy.serve.http.

The parent opens the listening socket, imports numpy, ONNX Runtime, uvloop and the App once, and
forks the workers, so each starts in milliseconds; each worker then loads its own session (sessions
cannot cross a fork) and only then accepts, from the socket they all share (the kernel hands each
connection to one of them). The parent only watches: SIGTERM or SIGINT (what every platform sends)
is passed on as SIGTERM, each worker stops accepting and finishes its in-flight requests, up to
MLDEPLOY_DRAIN_SECONDS, and the parent exits 0 once they are gone. A worker that cannot load the
model logs why and exits 2, and so does the server; any other worker that dies takes the server
down with exit 1 (the platform restarts it) rather than serving on at reduced capacity unseen. Each
worker holds at most MLDEPLOY_MAX_CONNECTIONS connections (fewer where the open-file limit is
lower); more wait in the kernel's accept queue (backpressure) rather than failing with "too many
open files". On AWS Lambda (AWS_LAMBDA_RUNTIME_API set) it serves through the Lambda Runtime API
instead, in this one process.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

from mldeploy.bundle import SIGNATURE_FILE, Signature
from mldeploy.errors import EXIT_USAGE, UsageError
from mldeploy.serve.logs import log
from mldeploy.serve.settings import Settings, check_grpc, check_readable, from_env

BACKLOG = 2048
SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
KILL_GRACE_SECONDS = 2.0  # after the drain: a worker still alive then is killed


def serve(bundle: str | None = None, port: int | None = None, host: str | None = None,
          workers: int | None = None) -> int:
    if api := os.environ.get("AWS_LAMBDA_RUNTIME_API"):  # on Lambda: the same image polls for events
        from mldeploy.serve.lambda_ import run_runtime

        if bundle:
            os.environ["MLDEPLOY_BUNDLE"] = bundle
        return run_runtime(api)
    settings = from_env(bundle=bundle, port=port, host=host, workers=workers)
    sock = None
    if settings.model_sha256:  # an artifact to download or a mount to verify: the probes get answers meanwhile
        sock = _check_port(settings.host, settings.port)
        prepared = _prepare_unready(settings, sock)
        if prepared is None:
            return EXIT_USAGE
        settings = prepared
    check_readable(settings.bundle)
    try:  # fail here, with one line, rather than in every worker
        Signature.from_json(json.loads((settings.bundle / SIGNATURE_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{settings.bundle / SIGNATURE_FILE} is not a valid signature: {e}",
                         hint="convert the model again") from None
    sock = sock or _check_port(settings.host, settings.port)
    if settings.grpc_port:  # gRPC: a taken port or a missing grpcio is one line here, not every worker's failure
        check_grpc(settings)
        _check_port(settings.host, settings.grpc_port).close()
    # the folder where workers share their counters for /metrics
    settings = replace(settings, metrics_dir=settings.metrics_dir or Path(tempfile.mkdtemp(prefix="mldeploy-metrics-")))

    connections = min(settings.max_connections, _open_file_room())

    import onnxruntime  # noqa: F401  imported once here, inherited by every forked worker
    import uvloop  # noqa: F401

    from mldeploy.serve import app  # noqa: F401

    log("info", "starting", host=settings.host, port=settings.port, workers=settings.workers,
        threads_per_worker=settings.threads, bundle=str(settings.bundle),
        max_body_bytes=settings.max_body_bytes, max_connections_per_worker=connections,
        header_timeout=settings.header_timeout, body_timeout=settings.body_timeout, auth=bool(settings.api_keys),
        rate_limit_per_second=settings.rate_per_second or None,
        capture=str(settings.capture_dir) if settings.capture_dir else None, model_uri=settings.model_uri,
        download_seconds=None if settings.download_seconds is None else round(settings.download_seconds, 3))
    return _supervise(settings, sock, connections)


def _prepare_unready(settings: Settings, sock: socket.socket) -> Settings | None:
    """Download or verify the model while answering probes live but not ready; the settings for the bundle
    on disk. If it cannot be had: one log line, then unready until stopped (None): never serving, and no
    restart loop that would download it again and again."""
    from mldeploy.serve.app import GET_ROUTES, LIVE
    from mldeploy.serve.pending import Pending
    from mldeploy.serve.source import ModelSourceError, prepare

    live = {p for p, kind in [*GET_ROUTES.items(), *settings.extra_routes.items()] if kind == LIVE}
    pending = Pending(sock, live, f"the model is loading from {settings.model_uri or settings.bundle}")
    pending.start()
    try:
        return prepare(settings)
    except ModelSourceError as e:
        log("error", e.describe(), fd=2, uri=settings.model_uri, sha256=settings.model_sha256)
        pending.reason, pending.final = e.message, True
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
        return None
    finally:
        pending.stop()


def _supervise(settings: Settings, sock: socket.socket, connections: int) -> int:
    """Fork the workers and wait for them; the exit code.

    Signals reach the parent through a wakeup pipe: numpy and ONNX Runtime have started threads of
    their own by now, and the kernel may hand a signal to any of them, but Python's handler on that
    thread still writes its number to the pipe."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    for sig in SIGNALS:
        signal.signal(sig, _noted)
    workers = set()
    gc.freeze()  # the imports, shared with every worker: collections neither walk nor copy them
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # a worker's own signals wait until it has its handlers
    for _ in range(settings.workers):
        pid = os.fork()
        if pid == 0:
            os.close(wake_r)
            os.close(wake_w)
            _worker(settings, sock, connections)  # never returns
        workers.add(pid)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    sock.close()  # the workers hold it: once they all close it, new connections are refused
    code, stopping, deadline, killed = 0, False, None, False

    def stop_all() -> None:
        nonlocal stopping, deadline
        stopping, deadline = True, time.monotonic() + settings.drain_seconds + KILL_GRACE_SECONDS
        for pid in workers:
            _signal(pid, signal.SIGTERM)

    while workers:
        wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        got = os.read(wake_r, 64) if select.select([wake_r], [], [], wait)[0] else b""
        if (signal.SIGTERM in got or signal.SIGINT in got) and not stopping:
            stop_all()
        for pid, status in _reaped(workers):  # also once a second: a lost wake-up cannot strand the parent
            workers.discard(pid)
            if not stopping:  # a worker died by itself
                rc = os.waitstatus_to_exitcode(status)
                if rc == EXIT_USAGE:  # it could not load the model, and said why
                    code = EXIT_USAGE
                else:
                    code = 1
                    log("error", f"worker {pid} exited with {rc}: stopping the server")
                stop_all()
        if workers and deadline is not None and time.monotonic() >= deadline and not killed:
            for pid in workers:  # the drain is over
                log("warning", f"worker {pid} did not stop within MLDEPLOY_DRAIN_SECONDS: killed")
                _signal(pid, signal.SIGKILL)
            killed = True
    return code


def _noted(*_: object) -> None:
    """The parent's handler: the wakeup pipe carries the signal, the loop above acts on it."""


def _reaped(workers: set[int]) -> list[tuple[int, int]]:
    done: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        if pid in workers:
            done.append((pid, status))


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


_term = False  # a worker's SIGTERM that came before its event loop took over


def _remember_term(*_: object) -> None:
    global _term  # noqa: PLW0603  a signal handler can only leave a flag
    _term = True


def _worker(settings: Settings, sock: socket.socket, connections: int) -> None:
    """A forked worker: load the model, serve until told to stop, exit (never returns)."""
    code = 0
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, _remember_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # a SIGTERM kept pending arrives now
        from mldeploy.serve.app import App
        from mldeploy.serve.http import Worker

        app = App(settings)
        app.load()  # exits 2 with one line when the model cannot load
        gc.freeze()  # what loading made lives as long as the worker: no collection walks it again
        if _term:  # stopped while loading: nothing to drain
            sock.close()
            app.stop()
        else:
            worker = Worker(app, sock, connections, settings.header_timeout, settings.body_timeout,
                            settings.max_body_bytes, settings.drain_seconds)
            worker.run(app.stop, stop_now=lambda: _term)
    except BaseException as e:  # a bug: say where, and let the parent stop the server
        log("error", f"worker crashed: {type(e).__name__}: {e}", trace=traceback.format_exc()[-2000:])
        code = 1
    finally:
        sys.stdout.flush()
        os._exit(code)


FILES_RESERVED = 64  # descriptors a worker needs besides connections: the model, logs, metrics, pipes


def _open_file_room() -> int:
    """Connections a worker can hold: the open-file limit, raised to its hard limit first (the soft
    limit is often 1024 in containers; a process may raise it up to the hard one by itself)."""
    most = 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = (most if v == resource.RLIM_INFINITY else v for v in (soft, hard))
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            soft = hard
        except (ValueError, OSError):
            pass
    return max(1, soft - FILES_RESERVED)


def _check_port(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts from; a taken port is one line, exit 2."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use",
                             hint="stop what listens there, or pass --port / set PORT") from None
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock
