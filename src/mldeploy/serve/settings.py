"""The server's settings, read from the environment (a container's only interface) and flags.

Clouds set their own variables (SageMaker SAGEMAKER_BIND_TO_PORT, Vertex AIP_*, Azure
AZUREML_MODEL_DIR, Cloud Run PORT); ours are MLDEPLOY_*. Every value is checked here, once, so a
typo fails the start with one line instead of a surprise under load.

The model is in the image (/opt/ml/model), mounted by the platform (SageMaker, Azure ML), or, with
`image.model: storage`, an artifact in object storage: MLDEPLOY_MODEL_URI (or Vertex's
AIP_STORAGE_URI gs://) plus MLDEPLOY_MODEL_SHA256, downloaded at start into MLDEPLOY_MODEL_CACHE
(mldeploy.serve.source). With MLDEPLOY_MODEL_SHA256 a mounted bundle is verified against it too.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mldeploy.artifacts import store_kind
from mldeploy.bundle import MODEL_FILE, SIGNATURE_FILE
from mldeploy.errors import UsageError

# Vertex AI rejects prediction requests over 1.5 MB, the strictest of the clouds' limits.
DEFAULT_MAX_BODY = 1_500_000
SAGEMAKER_MODEL_DIR = "/opt/ml/model"
# Where a downloaded artifact goes: writable on every target (Kubernetes mounts an emptyDir on /tmp
# under its read-only root filesystem; Lambda's only writable folder is /tmp).
DEFAULT_MODEL_CACHE = "/tmp/mldeploy-model"


@dataclass(frozen=True)
class Settings:
    bundle: Path
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    threads: int = 1                   # ONNX Runtime intra-op threads per worker
    model_name: str = "model"
    max_body_bytes: int = DEFAULT_MAX_BODY
    allow_nonfinite: bool = False
    max_batch: int = 64                # rows merged into one run by the micro-batcher
    batch_wait_ms: float = 0.0         # extra wait for more rows; 0 = batch only what is queued
    infer_thread: str = "auto"         # run the model off the event loop: auto | on | off
    batching: str = "auto"             # merge concurrent requests: auto (models >= 0.1 ms/row) | on | off
    extra_routes: dict[str, str] = field(default_factory=dict)  # path -> live | ready | predict
    api_keys: tuple[str, ...] = ()
    rate_per_second: float = 0.0       # per API key (or client address); 0 = no limit
    rate_burst: float = 0.0
    capture_dir: Path | None = None
    capture_sample_rate: float = 0.0
    capture_max_bytes: int = 64 << 20
    capture_files: int = 5
    access_log: bool = False
    metrics_dir: Path | None = None    # where workers share their counters for /metrics
    drain_seconds: int = 30            # how long SIGTERM waits for in-flight requests
    # A connection has header_timeout seconds to send a request's head, from when it opens or from
    # its previous answer (so it is also the keep-alive idle limit), then body_timeout for the body.
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    max_connections: int = 1024        # per worker; more wait in the kernel's accept queue
    grpc_port: int = 0                 # the Open Inference Protocol over gRPC; 0 = off
    model_uri: str | None = None       # an artifact in object storage: downloaded into `bundle` at start
    model_sha256: str | None = None    # the artifact's content address: a download or a mount is verified
    model_cache: Path = Path(DEFAULT_MODEL_CACHE)
    download_seconds: float | None = None  # set once the artifact is downloaded (the cold start's share)


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by the cgroup quota (a container's limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else max(1, cpus)


def _cgroup_quota() -> float | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def find_bundle(root: Path, depth: int = 3) -> Path | None:
    """The shallowest folder at or below root holding a bundle (Azure mounts it one folder down)."""
    level = [root]
    for _ in range(depth + 1):
        for folder in sorted(level):
            if (folder / MODEL_FILE).is_file() and (folder / SIGNATURE_FILE).is_file():
                return folder
        level = [c for f in level for c in _subfolders(f)]
    return None


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [c for c in folder.iterdir() if c.is_dir()]
    except OSError:  # unreadable: check_readable names the problem if the bundle is there
        return []


def check_readable(bundle: Path) -> None:
    """The bundle's files must be readable by this process (images run as a non-root user)."""
    for path in (bundle, bundle / MODEL_FILE, bundle / SIGNATURE_FILE):
        if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            raise UsageError(f"{path} is not readable by uid {os.getuid()}",
                             hint="make the model files readable by every user (chmod -R a+rX)")


def locate_bundle(flag: str | None, env: dict[str, str]) -> Path:
    """--bundle, MLDEPLOY_BUNDLE, AZUREML_MODEL_DIR, AIP_STORAGE_URI (when local), LAMBDA_TASK_ROOT,
    /opt/ml/model, ./bundle."""
    if flag or env.get("MLDEPLOY_BUNDLE"):
        path = Path(flag or env["MLDEPLOY_BUNDLE"])
        found = find_bundle(path, depth=0) if path.is_dir() else None
        if not found:
            raise UsageError(f"{path} is not a bundle (no {MODEL_FILE} and {SIGNATURE_FILE})",
                             hint="point --bundle at the folder `mldeploy convert` wrote")
        return found
    candidates = [env.get("AZUREML_MODEL_DIR"), env.get("AIP_STORAGE_URI"), env.get("LAMBDA_TASK_ROOT"),
                  SAGEMAKER_MODEL_DIR, "bundle"]
    for root in filter(None, candidates):
        if "://" in root or not Path(root).is_dir():
            continue
        if not os.access(root, os.R_OK | os.X_OK):
            check_readable(Path(root))  # raises, naming the folder the platform mounted
        if found := find_bundle(Path(root)):
            return found
    raise UsageError("no bundle found in AZUREML_MODEL_DIR, AIP_STORAGE_URI, /opt/ml/model or ./bundle",
                     hint="pass --bundle DIR, set MLDEPLOY_BUNDLE, or MLDEPLOY_MODEL_URI and MLDEPLOY_MODEL_SHA256 "
                          "(a runtime image built with image.model: storage holds no model)")


def _number(env: dict[str, str], name: str, default: float, kind: type = float,
            low: float = 0, high: float = math.inf) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a {'whole ' if kind is int else ''}number") from None
    if not low <= value <= high:
        raise UsageError(f"{name}={raw} is out of range (expected {low} to {high})")
    return value


def _flag(env: dict[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise UsageError(f"{name}={raw!r} must be true or false")


def _route(env: dict[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not re.fullmatch(r"/[\w./:@~-]*", raw):
        raise UsageError(f"{name}={raw!r} is not a URL path (expected e.g. /score)")
    return raw


def _rate(env: dict[str, str]) -> float:
    raw = env.get("MLDEPLOY_RATE_LIMIT", "").strip()
    if not raw:
        return 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)", raw)
    if not m or float(m[1]) <= 0:
        raise UsageError(f"MLDEPLOY_RATE_LIMIT={raw!r} is not a rate (expected e.g. 100/s or 600/min)")
    return float(m[1]) / (1 if m[2].startswith("s") else 60)


def _api_keys(env: dict[str, str]) -> tuple[str, ...]:
    keys = [k.strip() for k in env.get("MLDEPLOY_API_KEYS", "").split(",")]
    if file := env.get("MLDEPLOY_API_KEYS_FILE"):
        try:
            keys += [k.strip() for k in Path(file).read_text(encoding="utf-8").splitlines()]
        except OSError as e:
            raise UsageError(f"MLDEPLOY_API_KEYS_FILE: cannot read {file}: {e.strerror}") from None
    keys = [k for k in keys if k and not k.startswith("#")]
    if any(len(k) < 16 for k in keys):
        raise UsageError("an API key is shorter than 16 characters",
                         hint="use long random keys, e.g. `openssl rand -hex 24`")
    return tuple(keys)


def from_env(env: dict[str, str] | None = None, *, bundle: str | None = None, port: int | None = None,
             host: str | None = None, workers: int | None = None) -> Settings:
    """Settings from flags (when given) and the environment; raises UsageError naming a bad value.
    With a model URI (and no --bundle or MLDEPLOY_BUNDLE), `bundle` is where the download will go: nothing
    is read yet."""
    env = dict(os.environ if env is None else env)
    values = _values(env, port, host, workers)
    if bundle is None and not env.get("MLDEPLOY_BUNDLE") and values["model_uri"]:
        return Settings(bundle=values["model_cache"] / values["model_sha256"], **values)
    return Settings(bundle=locate_bundle(bundle, env), **{**values, "model_uri": None})


SHA256 = re.compile(r"[0-9a-f]{64}")


def _model_source(env: dict[str, str]) -> dict[str, Any]:
    """MLDEPLOY_MODEL_URI / _SHA256 / _CACHE, and Vertex's AIP_STORAGE_URI when it is remote: the
    artifact to fetch (uri), the hash to check it by, and where downloads go."""
    uri = env.get("MLDEPLOY_MODEL_URI", "").strip() or None
    sha = env.get("MLDEPLOY_MODEL_SHA256", "").strip().lower() or None
    cache = env.get("MLDEPLOY_MODEL_CACHE", "").strip() or DEFAULT_MODEL_CACHE
    if sha is not None and not SHA256.fullmatch(sha.removeprefix("sha256:")):
        raise UsageError(f"MLDEPLOY_MODEL_SHA256={sha[:80]!r} is not a sha256 (expected 64 hex digits)",
                         hint="use the sha256 `mldeploy publish` printed (the manifest's publish step)")
    sha = sha.removeprefix("sha256:") if sha else None
    if uri is not None:
        try:
            store_kind(uri)
        except UsageError as e:
            raise UsageError(f"MLDEPLOY_MODEL_URI: {e.message}", hint=e.hint) from None
    vertex = env.get("AIP_STORAGE_URI", "").strip()
    if uri is None and sha is not None and vertex.startswith("gs://"):
        uri = vertex  # Vertex copied the model's artifactUri there and hands it over
    if uri is not None and sha is None:
        raise UsageError(f"{'MLDEPLOY_MODEL_URI' if env.get('MLDEPLOY_MODEL_URI') else 'AIP_STORAGE_URI'} "
                         "is set without MLDEPLOY_MODEL_SHA256: the server verifies what it downloads",
                         hint="set MLDEPLOY_MODEL_SHA256 to the artifact's sha256 (`mldeploy publish` prints it)")
    if not Path(cache).is_absolute():
        raise UsageError(f"MLDEPLOY_MODEL_CACHE={cache!r} is not an absolute path")
    return dict(model_uri=uri, model_sha256=sha, model_cache=Path(cache))


class _Lookups(dict[str, str]):
    """An environment that remembers which names were looked up: the names the server reads."""

    def __init__(self, env: dict[str, str]):
        super().__init__(env)
        self.read: set[str] = set()

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.read.add(name)
        return super().get(name, default)


def check_environment(env: dict[str, str], secret_names: Iterable[str] = ()) -> None:
    """Check variables a deploy gives the container before it starts (and the names of those it
    fills from a secret store): an MLDEPLOY_* name the server does not read (a typo would be
    silently ignored) or a bad value raises UsageError naming it."""
    names = set(env) | set(secret_names)
    if "MLDEPLOY_BUNDLE" in names:
        raise UsageError("MLDEPLOY_BUNDLE is set by the image (the bundle is in /opt/ml/model)")
    # the keys file is a path inside the container: it is not read here
    lookups = _Lookups({k: v for k, v in env.items() if k != "MLDEPLOY_API_KEYS_FILE"})
    _values(lookups, None, None, None)
    for name in sorted(names):
        if name.startswith("MLDEPLOY_") and name not in lookups.read:
            close = difflib.get_close_matches(name, sorted(v for v in lookups.read if v.startswith("MLDEPLOY_")), 1)
            raise UsageError(f"{name} is not a serving setting" + (f" (did you mean {close[0]}?)" if close else ""),
                             hint="the settings are listed in docs/serve.md, under Settings (environment)")


def _values(env: dict[str, str], port: int | None, host: str | None, workers: int | None) -> dict[str, Any]:
    """Every setting but the bundle, checked."""
    cpus = available_cpus()
    workers = workers or int(_number(env, "MLDEPLOY_WORKERS", cpus, int, 1, 64))
    if port is None:  # the platform's variable wins over our default: it is what the probe calls
        port = next((int(_number(env, v, 0, int, 1, 65535)) for v in
                     ("AIP_HTTP_PORT", "SAGEMAKER_BIND_TO_PORT", "PORT") if env.get(v)), 8080)
    extra: dict[str, str] = {}
    for var, kind in (("AIP_HEALTH_ROUTE", "ready"), ("AIP_PREDICT_ROUTE", "predict"),
                      ("MLDEPLOY_LIVENESS_ROUTE", "live"), ("MLDEPLOY_READINESS_ROUTE", "ready"),
                      ("MLDEPLOY_SCORING_ROUTE", "predict")):
        if path := _route(env, var):
            extra[path] = kind
    nonfinite = env.get("MLDEPLOY_NONFINITE", "reject").strip().lower()
    if nonfinite not in ("reject", "allow"):
        raise UsageError(f"MLDEPLOY_NONFINITE={nonfinite!r} must be reject or allow")
    infer_thread = env.get("MLDEPLOY_INFER_THREAD", "auto").strip().lower()
    if infer_thread not in ("auto", "on", "off"):
        raise UsageError(f"MLDEPLOY_INFER_THREAD={infer_thread!r} must be auto, on or off")
    batching = env.get("MLDEPLOY_BATCHING", "auto").strip().lower()
    if batching not in ("auto", "on", "off"):
        raise UsageError(f"MLDEPLOY_BATCHING={batching!r} must be auto, on or off")
    rate = _rate(env)
    burst = _number(env, "MLDEPLOY_RATE_BURST", max(1.0, rate), float, 1)  # read even unused: a known name
    grpc_port = int(_number(env, "MLDEPLOY_GRPC_PORT", 0, int, 0, 65535))
    if grpc_port and grpc_port == port:
        raise UsageError(f"MLDEPLOY_GRPC_PORT={grpc_port} is the HTTP port too: gRPC needs a port of its own")
    capture = env.get("MLDEPLOY_CAPTURE_DIR")
    metrics = env.get("MLDEPLOY_METRICS_DIR")
    return dict(
        host=host or env.get("MLDEPLOY_HOST", "0.0.0.0"),
        port=port,
        workers=workers,
        threads=int(_number(env, "MLDEPLOY_THREADS", max(1, cpus // workers), int, 1, 256)),
        model_name=env.get("MLDEPLOY_MODEL_NAME", "model"),
        max_body_bytes=int(_number(env, "MLDEPLOY_MAX_BODY_BYTES", DEFAULT_MAX_BODY, int, 1024, 1 << 30)),
        allow_nonfinite=nonfinite == "allow",
        max_batch=int(_number(env, "MLDEPLOY_MAX_BATCH", 64, int, 1, 1 << 16)),
        batch_wait_ms=_number(env, "MLDEPLOY_BATCH_WAIT_MS", 0.0, float, 0, 10_000),
        infer_thread=infer_thread,
        batching=batching,
        extra_routes=extra,
        api_keys=_api_keys(env),
        rate_per_second=rate,
        rate_burst=burst if rate else 0.0,
        capture_dir=Path(capture) if capture else None,
        capture_sample_rate=_number(env, "MLDEPLOY_CAPTURE_SAMPLE_RATE", 1.0 if capture else 0.0, float, 0, 1),
        capture_max_bytes=int(_number(env, "MLDEPLOY_CAPTURE_MAX_BYTES", 64 << 20, int, 4096)),
        capture_files=int(_number(env, "MLDEPLOY_CAPTURE_FILES", 5, int, 1, 1000)),
        access_log=_flag(env, "MLDEPLOY_ACCESS_LOG"),
        metrics_dir=Path(metrics) if metrics else None,
        drain_seconds=int(_number(env, "MLDEPLOY_DRAIN_SECONDS", 30, int, 1, 3600)),
        header_timeout=_number(env, "MLDEPLOY_HEADER_TIMEOUT", 30.0, float, 1, 3600),
        body_timeout=_number(env, "MLDEPLOY_BODY_TIMEOUT", 60.0, float, 1, 3600),
        max_connections=int(_number(env, "MLDEPLOY_MAX_CONNECTIONS", 1024, int, 1, 1 << 20)),
        grpc_port=grpc_port,
        **_model_source(env),
    )


def check_grpc(s: Settings) -> None:
    """MLDEPLOY_GRPC_PORT needs grpcio and protobuf here (looked up, not imported: grpc must not be
    loaded before the workers fork)."""
    import importlib.util

    if s.grpc_port and not all(importlib.util.find_spec(m) for m in ("grpc", "google.protobuf")):
        raise UsageError("MLDEPLOY_GRPC_PORT is set, but grpcio and protobuf are not installed here",
                         hint="pip install 'mldeploy[serve]' (the kit's serving image does not carry them yet)")
