"""`mldeploy serve`: start granian with N worker processes, each running the App.

The parent process imports numpy and ONNX Runtime once before the workers fork, so each worker
starts in milliseconds; each worker then loads its own session (sessions cannot cross a fork).
SIGTERM (what every platform sends) makes granian stop accepting and lets in-flight requests
finish, up to MLDEPLOY_DRAIN_SECONDS, before the workers exit. Each worker holds at most
MLDEPLOY_MAX_CONNECTIONS connections (fewer where the open-file limit is lower); more wait in the
kernel's accept queue (backpressure) rather than failing with "too many open files". On AWS Lambda
(AWS_LAMBDA_RUNTIME_API set) it serves through the Lambda Runtime API instead, in this one process.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import tempfile
from pathlib import Path

from mldeploy.bundle import SIGNATURE_FILE, Signature
from mldeploy.errors import EXIT_USAGE, UsageError
from mldeploy.serve.app import FAILED_FILE, catch_early_sigterm
from mldeploy.serve.logs import log
from mldeploy.serve.settings import check_readable, from_env, to_env


def serve(bundle: str | None = None, port: int | None = None, host: str | None = None,
          workers: int | None = None) -> int:
    if api := os.environ.get("AWS_LAMBDA_RUNTIME_API"):  # on Lambda: the same image polls for events
        from mldeploy.serve.lambda_ import run_runtime

        if bundle:
            os.environ["MLDEPLOY_BUNDLE"] = bundle
        return run_runtime(api)
    settings = from_env(bundle=bundle, port=port, host=host, workers=workers)
    check_readable(settings.bundle)
    try:  # fail here, with one line, rather than in every worker
        Signature.from_json(json.loads((settings.bundle / SIGNATURE_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{settings.bundle / SIGNATURE_FILE} is not a valid signature: {e}",
                         hint="convert the model again") from None
    _check_port(settings.host, settings.port)
    metrics_dir = settings.metrics_dir or Path(tempfile.mkdtemp(prefix="mldeploy-metrics-"))
    os.environ.update(to_env(settings), MLDEPLOY_METRICS_DIR=str(metrics_dir))

    connections = min(settings.max_connections, _open_file_room())

    import onnxruntime  # noqa: F401  imported once here, inherited by every forked worker
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.server import Server

    log("info", "starting", host=settings.host, port=settings.port, workers=settings.workers,
        threads_per_worker=settings.threads, bundle=str(settings.bundle),
        max_body_bytes=settings.max_body_bytes, max_connections_per_worker=connections,
        header_timeout=settings.header_timeout, body_timeout=settings.body_timeout, auth=bool(settings.api_keys),
        rate_limit_per_second=settings.rate_per_second or None,
        capture=str(settings.capture_dir) if settings.capture_dir else None)
    catch_early_sigterm()
    server = Server(
        "mldeploy.serve.app:create", factory=True, address=settings.host, port=settings.port,
        interface=Interfaces.RSGI, workers=settings.workers, loop=Loops.asyncio, websockets=False,
        http=HTTPModes.http1,  # every platform's contract is HTTP/1.1; an h2c connection escaped every deadline
        runtime_threads=1, backlog=2048, workers_kill_timeout=settings.drain_seconds, log_level="warning",
        backpressure=connections,  # granian holds a slot per connection: this caps connections per worker
        http1_settings=HTTP1Settings(header_read_timeout=int(settings.header_timeout * 1000)),
        log_dictconfig={"version": 1, "disable_existing_loggers": False,
                        "formatters": {"json": {"()": "mldeploy.serve.logs.JsonFormatter"}},
                        "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "json",
                                             "stream": "ext://sys.stdout"}},
                        "loggers": {"_granian": {"handlers": ["out"], "level": "WARNING", "propagate": False},
                                    "granian.access": {"handlers": ["out"], "level": "WARNING"}}},
    )
    try:
        server.serve()
    except SystemExit as e:  # granian exits 1 when a worker dies; a worker that could not load says why
        if (metrics_dir / FAILED_FILE).is_file():
            return EXIT_USAGE  # the worker logged why, as JSON; one line is enough
        return int(e.code or 0)
    return 0


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


def _check_port(host: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use",
                             hint="stop what listens there, or pass --port / set PORT") from None
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    finally:
        sock.close()
