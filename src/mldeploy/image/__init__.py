"""`mldeploy build`: one slim serving image per bundle, built on whatever engine DOCKER_HOST names.

The build context is made here, on the host: the rendered Dockerfile (or the model repo's own),
the bundle's serving files, and the runtime's wheels fetched once into a cache. The build itself
then needs no network and sees no credential. The runtime is exactly onnxruntime, numpy, orjson,
uvloop, httptools and mldeploy, installed without their optional dependencies (never torch or TensorFlow).

With `image.model: storage` the same template builds the runtime image instead: no bundle, plus the SDK of
the model store (its section of runtime.lock); the server downloads the model at start. Its tag comes from a
content digest of everything that goes into it, so it is built, and pushed, only when one of those changes.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from mldeploy import __version__, github
from mldeploy.bundle import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE, Bundle
from mldeploy.errors import UsageError
from mldeploy.image.reproducible import normalize
from mldeploy.image.sbom import SBOM_FILE, cyclonedx

if TYPE_CHECKING:
    import docker

RUNTIME = ("onnxruntime", "numpy", "orjson", "uvloop", "httptools", "grpcio", "protobuf", "typing-extensions")
TEMPLATE = Path(__file__).resolve().parents[1] / "templates" / "Dockerfile.j2"
WHEEL_CACHE = Path(os.environ.get("MLDEPLOY_WHEEL_CACHE", Path.home() / ".cache" / "mldeploy" / "wheels"))
DOCKERIGNORE = "**/__pycache__\n**/*.pyc\n.git\n.env\n*.pem\n*.key\n"


@dataclass
class Built:
    image_id: str
    tag: str
    size: int
    labels: dict[str, str]


def engine() -> docker.DockerClient:
    """A Docker client for DOCKER_HOST (or the default socket), or a UsageError saying how to get one."""
    import docker  # the image step's own dependency (extra `image`)

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        return client
    except Exception as e:  # docker raises DockerException, requests' errors, or OSError
        raise UsageError(f"no Docker engine answers at {where} ({str(e).splitlines()[0][:160]})",
                         hint="start one (`sudo systemctl start docker`, or scripts/docker-up.sh here) "
                              "and set DOCKER_HOST") from None


# What differs between two runs over the same model: the clock, timings and what was measured with them,
# the machine's CPU name and the commit (a README change is not a new model). The bundle keeps them.
UNREPRODUCIBLE = frozenset({"created", "at", "git", "cpu", "duration_s", "export_s", "seconds", "load_s", "reason",
                            "speedup", "side_by_side", "p50_1_ms", "p95_1_ms", "p50_batch_ms", "p95_batch_ms"})


def image_manifest(bundle: Bundle) -> dict:
    """The manifest an image carries: the model's lineage without earlier builds, which are not this
    image's history, and without what differs between runs, so an unchanged model builds the same image."""

    def lineage(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: lineage(v) for k, v in value.items() if k not in UNREPRODUCIBLE}
        return [lineage(v) for v in value] if isinstance(value, list) else value

    steps = [s for s in bundle.manifest.get("steps", []) if s.get("step") != "build"]
    return lineage({**bundle.manifest, "steps": steps})


def labels_for(bundle: Bundle) -> dict[str, str]:
    m = image_manifest(bundle)
    steps = [s.get("step") for s in m.get("steps", [])]
    labels = {
        "org.opencontainers.image.title": "mldeploy model server",
        "org.opencontainers.image.description": "ONNX Runtime behind mldeploy serve",
        "org.opencontainers.image.source": _source_url(),
        "dev.mldeploy.model.sha256": m.get("model", {}).get("sha256", ""),
        "dev.mldeploy.manifest": json.dumps({"source": m.get("source", {}).get("path"),
                                             "framework": m.get("source", {}).get("framework"),
                                             "steps": steps, "mldeploy": __version__}, separators=(",", ":")),
        "com.amazonaws.sagemaker.capabilities.accept-bind-to-port": "true",
    }
    return {k: v for k, v in labels.items() if v}


def _source_url() -> str:
    server, repo = os.environ.get("GITHUB_SERVER_URL"), os.environ.get("GITHUB_REPOSITORY")
    return f"{server}/{repo}" if server and repo else ""


def render(base: str, labels: dict[str, str], requirements: list[str], environment: dict[str, str],
           bundle: bool = True, sdk: list[str] | None = None) -> str:
    """The Dockerfile; bundle=False: the runtime image of image.model: storage (the model comes at start),
    with its store's SDK (sdk) installed in a layer of its own."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": True}
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    return template.render(base=base, labels=labels, requirements=" ".join(requirements),
                           environment=[f"{k}={_env_quoted(v)}" for k, v in sorted(environment.items())],
                           mldeploy_version=__version__, bundle=bundle, sdk=" ".join(sdk or []))


def _env_quoted(value: str) -> str:
    """A value for a Dockerfile ENV line, kept exactly: quoted, with no $ expansion."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


LOCK = Path(__file__).with_name("runtime.lock")
PLATFORM = ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
            "--python-version", "3.11", "--implementation", "cp")


# The model stores whose SDK the runtime image of image.model: storage carries (artifacts.store_kind; file://
# needs none): each a [section] of runtime.lock.
STORES = ("s3", "gcs", "blob")


def locked(store: str | None = None) -> dict[str, tuple[str, frozenset[str]]]:
    """runtime.lock: name -> (version, the sha256 hashes its wheel may have); the runtime's, or with store, the
    pins of that store's SDK (its [store] section)."""
    pins, section = {}, None
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            section = line[1:line.index("]")]
        elif line.strip() and not line.startswith("#") and section == store:
            pin, *hashes = line.split()
            name, version = pin.split("==")
            pins[name] = (version, frozenset(h.removeprefix("--hash=sha256:") for h in hashes))
    return pins


def _sha256(path: Path) -> str:
    import hashlib

    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _cached(name: str, version: str, hashes: frozenset[str]) -> Path | None:
    """The cached wheel of name==version whose hash runtime.lock lists; any other file by that name (planted,
    or damaged) is removed with a warning, and fetched again."""
    found = None
    for wheel in sorted(WHEEL_CACHE.glob(f"{name.replace('-', '_')}-{version}-*.whl")):
        if (digest := _sha256(wheel)) not in hashes:
            github.warning(f"wheel cache: {wheel.name} is not the wheel runtime.lock pins (sha256 "
                           f"{digest[:16]}...): removed, fetching it again")
            wheel.unlink()
        elif found is None:
            found = wheel
    return found


def runtime_wheels(dest: Path) -> list[str]:
    """The runtime's wheels in dest: the versions runtime.lock pins (the tested set), each checked against the
    hashes it lists, whether it comes from the cache (which any earlier job could write) or the index."""
    pins = locked()
    for wheel in [*_locked_wheels(pins), _mldeploy_wheel()]:
        shutil.copy2(wheel, dest / wheel.name)
    return [f"{name}=={version}" for name, (version, _) in pins.items()] + [f"mldeploy=={__version__}"]


def store_wheels(dest: Path, store: str) -> list[str]:
    """The model store's SDK wheels in dest (image.model: storage), checked as the runtime's are."""
    pins = locked(store)
    for wheel in _locked_wheels(pins):
        shutil.copy2(wheel, dest / wheel.name)
    return [f"{name}=={version}" for name, (version, _) in pins.items()]


def _locked_wheels(pins: dict[str, tuple[str, frozenset[str]]]) -> list[Path]:
    """The cached wheel of each pin, fetched with pip --require-hashes where the cache has none."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    wheels = {name: _cached(name, version, hashes) for name, (version, hashes) in pins.items()}
    if missing := [name for name, wheel in wheels.items() if wheel is None]:
        with tempfile.TemporaryDirectory(prefix="mldeploy-wheels-") as tmp:
            requirements = Path(tmp, "requirements.txt")
            requirements.write_text("".join(f"{n}=={pins[n][0]} " + " ".join(f"--hash=sha256:{h}" for h in pins[n][1])
                                            + "\n" for n in missing), encoding="utf-8")
            _pip("download", "--no-deps", "--require-hashes", *PLATFORM, "--dest", str(Path(tmp, "got")),
                 "-r", str(requirements))
            for fetched in Path(tmp, "got").glob("*.whl"):
                shutil.move(fetched, WHEEL_CACHE / fetched.name)
        wheels = {name: _cached(name, version, hashes) for name, (version, hashes) in pins.items()}
    found: list[Path] = []
    for name, cached in wheels.items():
        if cached is None:  # pip verified what it fetched: this is a bug, or a cache changed under us
            raise UsageError(f"wheel cache: no wheel of {name}=={pins[name][0]} with a hash the lock lists")
        found.append(cached)
    return found


def _mldeploy_wheel() -> Path:
    """A wheel of this very mldeploy: built from its source tree when there is one (a cached build is used
    only when it holds exactly that source), else downloaded afresh."""
    source = _source_tree()
    if source is None:
        out = Path(tempfile.mkdtemp(prefix="mldeploy-wheel-"))  # never the cache: no hash to check it by
        _pip("download", "--no-deps", "--no-cache-dir", "--dest", str(out), f"mldeploy=={__version__}")
        return next(out.glob(f"mldeploy-{__version__}-*.whl"))
    out = WHEEL_CACHE / f"mldeploy-src-{_tree_hash(source / 'src' / 'mldeploy')}"
    wheel = next(out.glob("*.whl"), None)
    if wheel is not None and not _holds_exactly(wheel, source / "src" / "mldeploy"):
        github.warning(f"wheel cache: {wheel.name} in {out.name} is not a build of this source: removed, building "
                       "it again")
        shutil.rmtree(out)
        wheel = None
    if wheel is None:
        # from a clean copy of the source: setuptools would add what a stale build/ folder of the
        # checkout still holds (modules deleted since); isolated: the build backend pyproject.toml asks
        # for, not whatever setuptools the venv has (a fresh venv's is too old for its metadata)
        with tempfile.TemporaryDirectory(prefix="mldeploy-src-") as tmp:
            for name in ("pyproject.toml", "README.md", "LICENSE"):
                if (source / name).is_file():
                    shutil.copy2(source / name, Path(tmp, name))
            shutil.copytree(source / "src" / "mldeploy", Path(tmp, "src", "mldeploy"),
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            _pip("wheel", "--no-deps", "--wheel-dir", str(out), tmp)
        wheel = next(out.glob("*.whl"))
        if not _holds_exactly(wheel, source / "src" / "mldeploy"):
            raise UsageError(f"the build of mldeploy from {source} does not hold exactly its source files",
                             hint="a bug in mldeploy's packaging; please report it")
    return wheel


# what a build of the kit holds besides its package: pip installs these into the dist-info folder only
DIST_INFO = {"METADATA", "WHEEL", "RECORD", "top_level.txt", "entry_points.txt"}


def _holds_exactly(wheel: Path, package: Path) -> bool:
    """Whether a wheel of the kit holds its package's files byte for byte (every .py file, nothing else but
    files of the source), a dist-info of known files, and the one console script `mldeploy`: nothing a
    planted wheel could run that the source does not."""
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as z:
            members = {i.filename: i for i in z.infolist() if not i.is_dir()}
            seen = set()
            for name in members:
                top, _, rest = name.partition("/")
                if top == "mldeploy":
                    source = package / rest
                    if not source.is_file() or "__pycache__" in name or source.read_bytes() != z.read(name):
                        return False
                    seen.add(rest)
                elif not (top == f"mldeploy-{__version__}.dist-info" and
                          (rest in DIST_INFO or rest.startswith("licenses/"))):
                    return False
            scripts = z.read(f"mldeploy-{__version__}.dist-info/entry_points.txt").decode().split()
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    python = {p.relative_to(package).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    return python <= seen and scripts == ["[console_scripts]", "mldeploy", "=", "mldeploy.cli:main"]


def _source_tree() -> Path | None:
    """The kit's source: this file's checkout (editable), the kit an action's venv was last set up
    from (scripts/action-setup.sh), or the folder pip installed it from."""
    here = Path(__file__).resolve().parents[3]
    if (here / "pyproject.toml").is_file():
        return here
    noted = Path(sys.prefix, "kit-source")
    if noted.is_file() and (kit := Path(noted.read_text().strip())).joinpath("pyproject.toml").is_file():
        return kit
    try:
        from importlib.metadata import distribution

        url = json.loads(distribution("mldeploy").read_text("direct_url.json") or "{}").get("url", "")
    except (PackageNotFoundError, ValueError):
        return None
    path = Path(unquote(url.removeprefix("file://"))) if url.startswith("file://") else None
    return path if path and (path / "pyproject.toml").is_file() else None


def _tree_hash(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _pip(*args: str) -> None:
    run = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-q"],
                         capture_output=True, text=True, check=False)
    if run.returncode:
        last = (run.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise UsageError(f"cannot fetch the serving runtime's wheels: {last}",
                         hint="the build machine needs to reach your package index once; wheels are cached in "
                              f"{WHEEL_CACHE}")


def make_context(bundle: Bundle, base: str, dockerfile: Path | None, folder: Path,
                 environment: dict[str, str] | None = None, runtime: Runtime | None = None) -> dict[str, str]:
    """Fill folder with Dockerfile, .dockerignore, bundle/ and wheels/; returns the labels. With a runtime
    (image.model: storage): no bundle/, and the wheels of its store's SDK."""
    if runtime is None:
        (folder / "bundle").mkdir()
        for name in (MODEL_FILE, SIGNATURE_FILE):  # what serving reads; not fp32 copies or exports
            shutil.copy2(bundle.path / name, folder / "bundle" / name)
        (folder / "bundle" / MANIFEST_FILE).write_text(json.dumps(image_manifest(bundle), indent=2) + "\n",
                                                       encoding="utf-8")
    (folder / "wheels").mkdir()
    labels = labels_for(bundle) if runtime is None else runtime.labels()
    if dockerfile is not None:
        if not dockerfile.is_file():
            raise UsageError(f"image.dockerfile {dockerfile} does not exist")
        shutil.copy2(dockerfile, folder / "Dockerfile")
    else:
        requirements = runtime_wheels(folder / "wheels")
        sdk: list[str] = []
        if runtime and runtime.store in STORES:
            (folder / "sdk-wheels").mkdir()
            sdk = store_wheels(folder / "sdk-wheels", runtime.store)
        (folder / "Dockerfile").write_text(render(base, labels, requirements, environment or {}, runtime is None, sdk),
                                           encoding="utf-8")
        name = f"mldeploy/{_model_name(bundle)}" if runtime is None else "mldeploy/runtime"
        sbom = json.dumps(cyclonedx(sorted([*folder.glob("wheels/*.whl"), *folder.glob("sdk-wheels/*.whl")]), name),
                          indent=2) + "\n"
        if not (bundle.path / SBOM_FILE).is_file() or (bundle.path / SBOM_FILE).read_text() != sbom:
            (bundle.path / SBOM_FILE).write_text(sbom, encoding="utf-8")
    (folder / ".dockerignore").write_text(DOCKERIGNORE, encoding="utf-8")
    return labels


@dataclass(frozen=True)
class Runtime:
    """The runtime image of image.model: storage: what goes into it, and the digest of that."""

    store: str | None    # artifacts.store_kind of storage.uri: s3 | gcs | blob | file
    digest: str          # sha256 over the kit, the locks, the template, the base and the environment

    @property
    def tag(self) -> str:
        return f"runtime-{self.digest[:24]}"

    def labels(self) -> dict[str, str]:
        return {"org.opencontainers.image.title": "mldeploy runtime",
                "org.opencontainers.image.description": "ONNX Runtime behind mldeploy serve; the model is "
                                                        "downloaded at start (MLDEPLOY_MODEL_URI)",
                "org.opencontainers.image.version": __version__,
                "dev.mldeploy.runtime.digest": self.digest,
                "dev.mldeploy.runtime.store": self.store or "none",
                "com.amazonaws.sagemaker.capabilities.accept-bind-to-port": "true"}


def runtime_for(base: str, base_id: str, store: str | None, environment: dict[str, str]) -> Runtime:
    """The runtime image's identity: a digest of what goes into it (the kit's code, runtime.lock and the store's
    SDK lock, the Dockerfile template, the base image's id, the environment), never of a model."""
    import hashlib

    source = _source_tree()
    what = {"mldeploy": __version__,
            "source": _tree_hash(source / "src" / "mldeploy") if source else None,  # unreleased changes count
            "locks": [{n: [v, sorted(h)] for n, (v, h) in pins.items()} for pins in (locked(), locked(store))],
            "platform": PLATFORM, "template": TEMPLATE.read_text(encoding="utf-8"),
            "base": [base, base_id], "store": store, "environment": sorted(environment.items())}
    return Runtime(store, hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest())


def build(bundle_dir: str | os.PathLike, base: str, tag: str, dockerfile: str | None = None,
          environment: dict[str, str] | None = None, cache: bool = True, runtime: Runtime | None = None) -> Built:
    bundle = Bundle.open(bundle_dir)
    client = engine()
    _ensure_base(client, base, dockerfile)
    with tempfile.TemporaryDirectory(prefix="mldeploy-build-") as tmp:
        labels = make_context(bundle, base, Path(dockerfile) if dockerfile else None, Path(tmp), environment,
                              runtime)
        image_id = _docker_build(client, Path(tmp), tag, labels if dockerfile else None, cache)
    if not dockerfile:  # with your own Dockerfile, its base layers are unknown to us: built as the engine does
        image_id = normalize(client, image_id, client.images.get(base).attrs["RootFS"]["Layers"], tag)
    image = client.images.get(image_id)
    return Built(image_id, tag, int(image.attrs.get("Size", 0)), image.labels or {})


def _ensure_base(client: docker.DockerClient, base: str, dockerfile: str | None) -> None:
    import docker

    if dockerfile:
        return  # the user's Dockerfile names its own bases
    try:
        client.images.get(base)
        return
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(base)
    except docker.errors.APIError as e:
        raise UsageError(f"the base image {base} is not on the engine and cannot be pulled "
                         f"({str(e.explanation or e)[:160]})",
                         hint="set image.base (or MLDEPLOY_IMAGE__BASE) to an image the engine has; "
                              "scripts/docker-up.sh builds one offline") from None


def _docker_build(client: docker.DockerClient, context: Path, tag: str, extra_labels: dict[str, str] | None, cache: bool = True) -> str:
    """Build with the engine's own builder, output folded; a failing step is shown and exits 2."""
    step = "a build step"
    image_id = None
    with github.group(f"docker build {tag}"), github.verbatim():
        for chunk in client.api.build(path=str(context), tag=tag, rm=True, forcerm=True, decode=True,
                                      labels=extra_labels, nocache=not cache):
            if "stream" in chunk:
                text = chunk["stream"]
                sys.stdout.write(text)
                if text.startswith("Step "):
                    step = text.strip()
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            if "error" in chunk:
                raise UsageError(f"the image build failed at {step}: {chunk['error'].strip()[:300]}",
                                 hint="the step's output is above (folded in Actions)")
    if image_id is None:
        raise UsageError("the engine finished the build without an image id")
    return image_id


@dataclass
class Pushed:
    repository: str
    digest: str
    tags: list[str]

    @property
    def reference(self) -> str:
        return f"{self.repository}@{self.digest}"


def default_tags(bundle: Bundle) -> list[str]:
    """The bundle's model hash, the git sha, and the release version when building a tag."""
    m = bundle.manifest
    tags = [f"model-{m.get('model', {}).get('sha256', '')[:12]}"]
    sha = os.environ.get("GITHUB_SHA") or (m.get("git") or {}).get("sha")
    if sha:
        tags.append(f"git-{sha[:12]}")
    if os.environ.get("GITHUB_REF_TYPE") == "tag" and os.environ.get("GITHUB_REF_NAME"):
        tags.append("".join(c if c.isalnum() or c in "._-" else "-" for c in os.environ["GITHUB_REF_NAME"])[:128])
    return tags


def registry_auth(registry: str) -> dict[str, str] | None:
    """Credentials for a push: MLDEPLOY_REGISTRY_USERNAME/PASSWORD, GITHUB_TOKEN for ghcr.io, a cloud
    registry's short-lived token (ECR, Artifact Registry and gcr.io, ACR: targets.py), else
    None: the engine client's docker config (`docker login`, credential helpers). Always masked."""
    user, password = os.environ.get("MLDEPLOY_REGISTRY_USERNAME"), os.environ.get("MLDEPLOY_REGISTRY_PASSWORD")
    if not password and registry == "ghcr.io" and os.environ.get("GITHUB_TOKEN"):
        user, password = os.environ.get("GITHUB_ACTOR", "github-actions"), os.environ["GITHUB_TOKEN"]
    if not password:
        from mldeploy.targets import registry_for

        host = registry.lower()
        if (cloud := registry_for(host)) is None:
            return None
        try:
            token = getattr(importlib.import_module(cloud.module), cloud.login)(host)
        except ModuleNotFoundError as e:
            if (e.name or "mldeploy").startswith("mldeploy"):
                raise
            raise UsageError(f"logging in to {registry} needs {e.name}, which is not installed",
                             hint=f"pip install 'mldeploy[{cloud.extra}]'") from None
        user, password = token["username"], token["password"]
    github.mask(password)
    return {"username": user or "oauth2accesstoken", "password": password}


def push(client: docker.DockerClient, tag: str, repository: str, tags: list[str]) -> Pushed:
    """Push every tag; returns the digest the registry computed (later steps deploy it, never a tag).

    Immutable repositories (ECR's default, ours included) refuse a tag that exists, even on the
    same image, so a re-run or an unchanged model would fail. The first tag is therefore this
    build's own, `image-<image id>`: new, or already naming this very image. A refused tag is kept
    where it is: fine when it names this image, a warning when it names another."""
    registry = repository.split("/", 1)[0]
    auth = registry_auth(registry)
    from mldeploy.targets import registry_for

    if (cloud := registry_for(registry)) and cloud.ensure:  # ECR and Artifact Registry make no repository on push
        getattr(importlib.import_module(cloud.module), cloud.ensure)(repository)
    image = client.images.get(tag)
    own = f"image-{image.id.split(':')[-1][:12]}"
    digest, refused = None, []
    for t in [own, *tags]:
        image.tag(repository, t)
        with github.group(f"docker push {repository}:{t}"):
            for chunk in client.api.push(repository, tag=t, stream=True, decode=True, auth_config=auth):
                if "error" in chunk and IMMUTABLE_TAG.search(chunk["error"]):
                    print(f"{t} exists and the repository's tags are immutable: it stays as it is")
                    refused.append(t)
                    break
                if "error" in chunk:
                    raise UsageError(f"the registry {registry} refused the push: {_scrub(chunk['error'], auth)}",
                                     hint="check the registry address and its login (credentials are never printed)")
                if "status" in chunk and "id" not in chunk:
                    print(chunk["status"])
                digest = (chunk.get("aux") or {}).get("Digest") or digest
    named = {t: _remote_digest(client, f"{repository}:{t}", auth) for t in refused}
    digest = digest or named.get(own)
    if not digest:
        raise UsageError(f"the registry {registry} did not report a digest for {repository}")
    for t, other in named.items():
        if other != digest:
            github.warning(f"{repository}:{t} names another image ({other or 'the registry did not say which'}) "
                           "and the repository's tags are immutable: "
                           f"this build is {digest}, without that tag")
    return Pushed(repository, digest, [t for t in [own, *tags] if named.get(t, digest) == digest])


# ECR: "tag invalid: The image tag 'x' already exists in the 'y' repository and cannot be overwritten
# because the repository is immutable."; Artifact Registry and ACR say "immutable" too.
IMMUTABLE_TAG = re.compile(r"cannot be overwritten|immutable", re.IGNORECASE)


def _remote_digest(client: docker.DockerClient, reference: str, auth: dict | None) -> str | None:
    import docker

    try:
        return client.images.get_registry_data(reference, auth_config=auth).id
    except docker.errors.APIError:
        return None


def _scrub(text: str, auth: dict | None) -> str:
    text = str(text).strip()[:300]
    if auth and auth.get("password"):
        text = text.replace(auth["password"], "***")
    return text


def build_and_push(bundle_dir: str | os.PathLike, *, base: str, registry: str | None, repository: str | None,
                   dockerfile: str | None, push_image: bool, environment: dict[str, str] | None = None,
                   cache: bool = True, model: str = "baked", storage_uri: str | None = None) -> dict[str, object]:
    """The build-push-image step: build, push by digest when asked, record it in the manifest."""
    if model == "storage":
        return build_runtime(bundle_dir, base=base, registry=registry, repository=repository, dockerfile=dockerfile,
                             push_image=push_image, environment=environment or {}, cache=cache,
                             storage_uri=storage_uri)
    bundle = Bundle.open(bundle_dir)
    name = repository or f"mldeploy/{_model_name(bundle)}"
    local_tag = f"{name}:model-{bundle.manifest.get('model', {}).get('sha256', 'unknown')[:12]}"
    built = build(bundle_dir, base, local_tag, dockerfile, environment, cache)
    report: dict[str, object] = {"status": "passed", "image_id": built.image_id, "local_tag": local_tag,
                                 "size": built.size, "base": None if dockerfile else base,
                                 "dockerfile": dockerfile or "mldeploy template",
                                 "sbom": None if dockerfile else SBOM_FILE}
    image = local_tag
    if push_image:
        if not registry:
            raise UsageError("nowhere to push: set image.registry (or --registry), e.g. 127.0.0.1:5000 or ghcr.io/acme")
        pushed = push(engine(), local_tag, f"{registry.rstrip('/')}/{name}", default_tags(bundle))
        report.update(repository=pushed.repository, digest=pushed.digest, tags=pushed.tags)
        image = pushed.reference
    report["image"] = image
    bundle.add_step("build", report)
    return report


def _model_name(bundle: Bundle) -> str:
    stem = Path(str(bundle.manifest.get("source", {}).get("path", "model"))).stem or "model"
    clean = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem.lower()).strip("._-")
    return clean or "model"


RUNTIME_REPOSITORY = "mldeploy/runtime"


def build_runtime(bundle_dir: str | os.PathLike, *, base: str, registry: str | None, repository: str | None,
                  dockerfile: str | None, push_image: bool, environment: dict[str, str], cache: bool,
                  storage_uri: str | None) -> dict[str, object]:
    """image.model: storage: the runtime image, built only when what goes into it changed. Its tag is its
    digest: with --push, a registry that has that tag already is asked first (the engine's manifest lookup)
    and nothing is built or pushed; without, an engine that has it builds nothing. Recorded in the bundle's
    manifest as a build step, like a baked image."""
    from mldeploy.artifacts import store_kind

    if dockerfile:
        raise UsageError("image.dockerfile cannot be used with image.model: storage: the runtime image is "
                         "mldeploy's own, with no model in it", hint="remove image.dockerfile, or set image.model: baked")
    if push_image and not registry:
        raise UsageError("nowhere to push: set image.registry (or --registry), e.g. 127.0.0.1:5000 or ghcr.io/acme")
    bundle = Bundle.open(bundle_dir)
    store = store_kind(storage_uri) if storage_uri else None
    client = engine()
    _ensure_base(client, base, None)
    runtime = runtime_for(base, client.images.get(base).id, store, environment)
    name = repository or RUNTIME_REPOSITORY
    local_tag = f"{name}:{runtime.tag}"
    report: dict[str, object] = {"status": "passed", "model": "storage", "runtime_digest": runtime.digest,
                                 "store": store, "local_tag": local_tag, "base": base,
                                 "dockerfile": "mldeploy template", "sbom": SBOM_FILE, "built": False}
    remote = f"{registry.rstrip('/')}/{name}" if registry else None
    if push_image and remote:
        host = remote.split("/", 1)[0]
        if found := _remote_digest(client, f"{remote}:{runtime.tag}", registry_auth(host)):
            print(f"{remote}:{runtime.tag} is in the registry already ({found}): nothing to build or push")
            report.update(image_id=None, size=None, repository=remote, digest=found, tags=[runtime.tag],
                          image=f"{remote}@{found}")
            bundle.add_step("build", report)
            return report
    image = _local_image(client, local_tag) if cache else None
    if image is None:
        built = build(bundle_dir, base, local_tag, None, environment, cache, runtime)
        image_id, size, report["built"] = built.image_id, built.size, True
    else:
        print(f"{local_tag} is on the engine already: nothing to build")
        image_id, size = image.id, int(image.attrs.get("Size", 0))
    report.update(image_id=image_id, size=size, image=local_tag)
    if push_image and remote:
        pushed = push(client, local_tag, remote, [runtime.tag])
        report.update(repository=pushed.repository, digest=pushed.digest, tags=pushed.tags, image=pushed.reference)
    bundle.add_step("build", report)
    return report


def _local_image(client: docker.DockerClient, tag: str) -> Any:
    import docker

    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
