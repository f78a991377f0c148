"""The local target: production and canary as containers on the local engine, behind a router.

    client -> :PORT  mldeploy-<endpoint>-router   (weights, re-read live)
                       |-> mldeploy-<endpoint>-<digest12>-<nonce>   production
                       '-> mldeploy-<endpoint>-<digest12>-<nonce>   canary

All containers sit on a private network `mldeploy-<endpoint>`; only the router publishes a port.
The routes file inside the router is the state (slot -> container, image, address, weight), read
back on every command. A slot container's name is new for every container, never its slot's or
its digest's alone: a promote only rewrites the routes, so no later deploy can take the name of
the container that serves production. A new slot container must come up, report ready, serve the
digest asked for and answer a smoke request before any traffic moves to it; if not, it is removed
and the routes are left as they were, so production keeps answering throughout. A container is
retired only once the routes no longer name it, with SIGTERM first so it finishes what it holds.
One command at a time changes an endpoint (a lock per endpoint on this machine).
"""

from __future__ import annotations

import copy
import fcntl
import io
import json
import os
import secrets
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mldeploy.deploy import Desired, NoCanary, Plan, restoring
from mldeploy.deploy.base import Model, Slot, Status, Target, model_env, model_from_env, plan_model, verify_models
from mldeploy.errors import CheckFailed, UsageError
from mldeploy.image import engine

if TYPE_CHECKING:
    from mldeploy.config import Config
    from mldeploy.monitor.metrics import Collected
    from mldeploy.monitor.setup import SetupPlan

ROUTES_PATH = "/tmp/routes.json"
READY_SECONDS = 120
LOCK_SECONDS = 900     # the longest another command may hold an endpoint before we give up waiting
STOP_SECONDS = 10      # a retired container's time to finish the requests it holds


def capture_folder(endpoint: str) -> Path:
    """Where the local endpoint's slots capture requests: outside any checkout, since a CI job's
    workspace is cleaned between runs while the containers live on ($MLDEPLOY_CAPTURE_ROOT, else
    ~/.local/state/mldeploy/capture)."""
    root = os.environ.get("MLDEPLOY_CAPTURE_ROOT") or Path.home() / ".local" / "state" / "mldeploy" / "capture"
    return Path(root, endpoint).resolve()


def model_of(entry: dict[str, Any]) -> Model | None:
    """The model a routes entry serves (image.model: storage), None when baked in its image."""
    found = entry.get("model")
    return Model(found["uri"], found["sha256"]) if found else None


def serves(entry: dict[str, Any], d: Desired) -> bool:
    """Whether a slot's container runs what a deploy asks for: its image and its model."""
    return bool(entry["image"] == d.image and model_of(entry) == d.model)


def model_mount(model: Model | None) -> dict[str, Any]:
    """The server's environment for a model, and a file:// store's artifact mounted read-only at the
    same path in the container (the server reads it there; a cloud store it reaches itself)."""
    if model is None:
        return {}
    found: dict[str, Any] = {"environment": model_env(model)}
    if model.uri.startswith("file://"):
        folder = model.uri.removeprefix("file://")
        found["volumes"] = {folder: {"bind": folder, "mode": "ro"}}
    return found


@contextmanager
def endpoint_lock(endpoint: str) -> Iterator[None]:
    """One command at a time changes an endpoint: two pull requests deploying at once take turns, and
    the second works from the routes the first left ($MLDEPLOY_LOCK_ROOT, else ~/.local/state/mldeploy/locks)."""
    root = Path(os.environ.get("MLDEPLOY_LOCK_ROOT") or Path.home() / ".local" / "state" / "mldeploy" / "locks")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{endpoint}.lock", "a+") as f:
        deadline, said = time.monotonic() + LOCK_SECONDS, False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UsageError(f"another mldeploy command has been changing {endpoint} for "
                                     f"{LOCK_SECONDS} s", hint="wait for it, or stop it; nothing was changed") from None
                if not said:
                    print(f"waiting for another mldeploy command changing {endpoint} ...", flush=True)
                    said = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:port can be bound now, as the engine must bind it for the router (SO_REUSEADDR:
    connections of an earlier router still in TIME_WAIT do not count)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_holder(port: int) -> str | None:
    """Who listens on a TCP port on this machine, e.g. "python3 (pid 4242)": the listening socket's inode
    in /proc/net/tcp{,6} matched to a process's open files, else `ss -ltnp`; None when neither says."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").glob("[0-9]*") if inodes else ():
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return f"{(proc / 'comm').read_text().strip()} (pid {proc.name})"
        except OSError:  # another user's process, or one that just exited
            continue
    return _ss_holder(port)


def _ss_holder(port: int) -> str | None:
    import re
    import shutil
    import subprocess

    if not (ss := shutil.which("ss")):
        return None
    try:
        out = subprocess.run([ss, "-Hltnp", f"sport = :{port}"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'users:\(\("([^"]+)",pid=(\d+)', out)
    return f"{m.group(1)} (pid {m.group(2)})" if m else None


class LocalTarget(Target):
    name = "local"

    def __init__(self, endpoint: str, port: int, capture_rate: float = 0.0) -> None:
        super().__init__(endpoint)
        self.port = port
        self.capture_rate = capture_rate
        self._client: Any = None
        self.prefix = f"mldeploy-{endpoint}"
        self.network = self.prefix

    @property
    def client(self) -> Any:
        """The Docker engine, connected on first use (monitor setup reads no engine when none answers)."""
        if self._client is None:
            self._client = engine()
        return self._client

    @classmethod
    def from_config(cls, endpoint: str, cfg: Config) -> LocalTarget:
        """capture_rate: the slots capture this share of requests for drift checks."""
        return cls(endpoint, cfg.deploy.port, cfg.monitoring.capture_rate)

    # -- state ---------------------------------------------------------------------------------
    def _router(self) -> Any:
        import docker

        try:
            return self.client.containers.get(f"{self.prefix}-router")
        except docker.errors.NotFound:
            return None

    def routes(self) -> dict[str, dict[str, Any]]:
        router = self._router()
        if router is None or router.status != "running":
            return {}
        try:
            stream, _ = router.get_archive(ROUTES_PATH)
        except Exception:  # no routes yet
            return {}
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            routes = tar.extractfile(tar.getmembers()[0])
            assert routes is not None  # the archive of one regular file
            return json.loads(routes.read())["slots"]

    def _write_routes(self, slots: dict[str, dict[str, Any]]) -> None:
        data = json.dumps({"slots": slots}, indent=2).encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:  # pax: sub-second mtime,
            info = tarfile.TarInfo("routes.json")  # so the router sees two writes within one second
            info.size, info.mtime, info.mode = len(data), time.time(), 0o644
            tar.addfile(info, io.BytesIO(data))
        self._router().put_archive("/tmp", buf.getvalue())

    # -- the interface -------------------------------------------------------------------------
    def plan(self, desired: Desired) -> Plan:
        slots = self.routes()
        if not self._router_running():
            self._check_port()  # a plan that could never be applied is never printed
        plan = Plan(self.name, desired, traffic_before={k: v["weight"] for k, v in slots.items()})
        container = f"container {self.prefix}-{{}}"
        if "production" not in slots:
            # the first deploy goes straight to production: there is nothing to compare a canary with
            plan.add("create", container.format("production"), "image", new=desired.image)
            if desired.model:
                plan.add("create", container.format("production"), "model", new=desired.model)
            plan.add("create", f"router {self.prefix}-router", "address", new=f"127.0.0.1:{self.port}")
            plan.traffic_after = {"production": 100}
            return plan
        production, canary = slots["production"], slots.get("canary")
        if desired.stage != "production" and serves(production, desired):
            plan.note = "the canary is production's own image: there is nothing to compare"
            if canary is not None:
                plan.add("delete", container.format("canary"))
                plan.traffic_after = {"production": 100}
            return plan
        if desired.stage == "production":
            if not serves(production, desired):
                plan.add("update", container.format("production"), "image", production["image"], desired.image)
                plan_model(plan, container.format("production"), model_of(production), desired.model)
            elif not self._healthy("production"):
                plan.add("replace", container.format("production"), "container", "unhealthy", "a new one")
            if canary is not None:
                plan.add("delete", container.format("canary"))
            plan.traffic_after = {"production": 100}
            return plan
        if canary is None:
            plan.add("create", container.format("canary"), "image", new=desired.image)
        elif not serves(canary, desired):
            plan.add("update", container.format("canary"), "image", canary["image"], desired.image)
            plan_model(plan, container.format("canary"), model_of(canary), desired.model)
        if canary is None or canary["weight"] != desired.traffic:
            plan.add("update", f"router {self.prefix}-router", "canary weight",
                     canary["weight"] if canary else 0, desired.traffic)
        plan.traffic_after = {"production": 100 - desired.traffic, "canary": desired.traffic}
        return plan

    def read(self) -> dict[str, dict[str, Any]]:
        return self.routes()

    def apply(self, plan: Plan) -> Status:
        if plan.empty:
            return self.changed(False)
        d = plan.desired
        with endpoint_lock(self.endpoint):
            router_running = self._router_running()
            if not router_running:
                self._check_port()  # before the network or any container: a busy port leaves nothing behind
            self._ensure_network()
            slots = self.routes()  # again, under the lock: another command may have changed them
            before = copy.deepcopy(slots)
            if not router_running:
                self._start_router(d.image)
            with restoring(lambda: self._restore(before)):
                self._deploy(d, slots)
        return self.changed(True)

    def _deploy(self, d: Desired, slots: dict[str, dict[str, Any]]) -> None:
        if "production" in slots and d.stage != "production" and serves(slots["production"], d):
            slots.pop("canary", None)  # a canary of production's own image compares nothing
            slots["production"]["weight"] = 100
        else:
            slot = "production" if "production" not in slots or d.stage == "production" else "canary"
            # a container that already serves this digest healthily is reused (a canary becoming production)
            entry = next((s for name, s in slots.items() if serves(s, d) and self._healthy(name)),
                         None) or self._start_slot(slot, d, slots)
            if slot == "production":
                slots = {"production": {**entry, "weight": 100}}
            else:
                slots["production"]["weight"] = 100 - d.traffic
                slots["canary"] = {**entry, "weight": d.traffic}
        self._switch(slots)

    def _restore(self, slots: dict[str, dict[str, Any]]) -> str:
        """The routes as they were, and no container they do not name."""
        self._switch(slots)
        before = ", ".join(f"{s} {e['weight']}%" for s, e in slots.items() if not s.endswith("-next"))
        return f"rolled back: the routes are as before ({before or 'nothing serves'})"

    def _status(self, current: dict[str, dict[str, Any]]) -> Status:
        return Status(self.endpoint, f"http://127.0.0.1:{self.port}" if current else None, {
            name: Slot(s["image"], s["weight"], self._healthy(name), {"container": s["container"]}, model=model_of(s))
            for name, s in current.items()})

    # one canary here (pr names nothing else), changed under the endpoint's lock
    def promote(self, pr: int | None = None) -> Status:
        with endpoint_lock(self.endpoint):
            slots = self.routes()
            if "canary" not in slots:
                raise NoCanary(f"{self.endpoint} has no canary to promote", hint="deploy one with --stage canary")
            if not self._healthy("canary"):
                raise CheckFailed(f"the canary ({slots['canary']['image']}) is not healthy: promoting it would "
                                  "take production down; nothing changed", hint="roll it back, or deploy another")
            self._switch({"production": {**slots["canary"], "weight": 100}})
        return self.changed(True)

    def rollback(self, pr: int | None = None) -> Status:
        with endpoint_lock(self.endpoint):
            slots = self.routes()
            if "canary" not in slots:
                raise NoCanary(f"{self.endpoint} has no canary to roll back",
                               hint="production already takes all traffic")
            if not self._healthy("production"):
                raise CheckFailed(f"production ({slots['production']['image']}) is not healthy: rolling back would "
                                  "send every request to it; the canary keeps its share",
                                  hint="deploy a known-good image with --stage production")
            slots.pop("canary")
            slots["production"]["weight"] = 100
            self._switch(slots)
        return self.changed(True)

    def _healthy(self, slot: str) -> bool:
        return self._get("/v2/health/ready", slot)[0] == 200

    def _switch(self, slots: dict[str, dict[str, Any]]) -> None:
        """Route to `slots`, then retire the slot containers the routes no longer name."""
        self._write_routes(slots)
        for name in self._unrouted(slots):
            self._retire(name)

    # -- containers ----------------------------------------------------------------------------
    def _router_running(self) -> bool:
        router = self._router()
        return router is not None and router.status == "running"

    def _check_port(self) -> None:
        """The router publishes 127.0.0.1:port; another program holding it fails the deploy (exit 2) before
        anything is created, naming the program when this machine says which. An engine on another
        machine (DOCKER_HOST tcp:// or ssh://) binds its own 127.0.0.1, which cannot be checked from here."""
        if os.environ.get("DOCKER_HOST", "unix://").split("://")[0] not in ("unix", "npipe", ""):
            return
        if port_free(self.port):
            return
        holder = port_holder(self.port)
        who = f"{holder}{' (a Docker container publishes it)' if holder.startswith('docker-proxy') else ''}" \
            if holder else "another program"
        raise UsageError(f"port {self.port} is already in use on this machine: {who} holds it; nothing was created",
                         hint="stop what listens there, or set deploy.port / --port")

    def _ensure_network(self) -> None:
        if not self.client.networks.list(names=[self.network]):
            self.client.networks.create(self.network, driver="bridge", labels={"dev.mldeploy.endpoint": self.endpoint})

    def _start_router(self, image: str) -> None:
        import docker

        if (old := self._router()) is not None:
            old.remove(force=True)
        try:
            self.client.containers.run(
                image, name=f"{self.prefix}-router", detach=True, network=self.network,
                entrypoint=["/opt/venv/bin/python", "-m", "mldeploy.deploy.router"],
                ports={"8080/tcp": ("127.0.0.1", self.port)}, restart_policy={"Name": "unless-stopped"},
                labels={"dev.mldeploy.endpoint": self.endpoint, "dev.mldeploy.role": "router"})
        except docker.errors.APIError as e:
            text = str(e.explanation or e)
            if (router := self._router()) is not None:
                router.remove(force=True)
            if "already allocated" in text or "address already in use" in text:
                raise UsageError(f"port {self.port} is already in use on this machine",
                                 hint="stop what listens there, or set deploy.port / --port") from None
            raise UsageError(f"the local router could not start: {text[:200]}") from None

    def _start_slot(self, slot: str, d: Desired, slots: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Start a container for slot, check it, and return its routes entry; on failure remove it."""
        import docker

        digest = d.image.rsplit("@", 1)[-1]
        # new for every container: never the name of one that serves (a promoted canary keeps its name)
        name = f"{self.prefix}-{digest.removeprefix('sha256:')[:12]}-{secrets.token_hex(3)}"
        extra, model = self._capture(name), model_mount(d.model)
        extra = {key: {**extra.get(key, {}), **model.get(key, {})} for key in extra.keys() | model.keys()}
        try:
            container = self.client.containers.run(
                d.image, ["serve"], name=name, detach=True, network=self.network,
                restart_policy={"Name": "unless-stopped"},  # the endpoint comes back with the engine
                labels={"dev.mldeploy.endpoint": self.endpoint, "dev.mldeploy.slot": slot}, **extra)
        except docker.errors.ImageNotFound:
            raise UsageError(f"the image {d.image} is not on the engine and cannot be pulled",
                             hint="run `mldeploy build --push` first") from None
        except docker.errors.APIError as e:
            raise UsageError(f"cannot start the {slot} container: {str(e.explanation or e)[:200]}") from None
        return self._check(container, slot, d, slots)  # on failure the caller restores the routes

    def _capture(self, container: str) -> dict[str, Any]:
        """Capture into capture_folder(endpoint)/<container>/ (one folder per container: each
        numbers its workers' files from the same PIDs), for `monitor drift` and canary analysis."""
        if not self.capture_rate:
            return {}
        folder = capture_folder(self.endpoint) / container
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)  # the runtime runs as an unprivileged user in the container
        return {"environment": {"MLDEPLOY_CAPTURE_DIR": "/var/mldeploy/capture",
                                "MLDEPLOY_CAPTURE_SAMPLE_RATE": str(self.capture_rate)},
                "volumes": {str(folder): {"bind": "/var/mldeploy/capture", "mode": "rw"}}}

    def _check(self, container: Any, slot: str, d: Desired, slots: dict[str, dict[str, Any]]) -> dict[str, Any]:
        import docker

        deadline = time.monotonic() + READY_SECONDS
        while True:
            container.reload()
            if container.status in ("exited", "dead", "restarting") or container.attrs.get("RestartCount"):
                logs = container.logs(tail=5).decode(errors="replace").strip().splitlines()
                raise CheckFailed(f"the {slot} container exited on start ({container.attrs['State']['ExitCode']}): "
                                  f"{logs[-1] if logs else 'no output'}; traffic was not moved")
            try:
                probe = container.exec_run(["/opt/venv/bin/python", "-m", "mldeploy.serve.healthcheck"])
            except docker.errors.APIError:
                continue  # it stopped between the two calls: the reload above says how
            if probe.exit_code == 0:
                break
            if (said := probe.output.decode(errors="replace").strip()).startswith("final: "):
                raise CheckFailed(f"the {slot} container will never be ready: {said[7:]}; traffic was not moved")
            if time.monotonic() > deadline:
                raise CheckFailed(f"the {slot} container was not ready after {READY_SECONDS} s; traffic was not moved")
            time.sleep(0.25)
        served = container.image.attrs.get("RepoDigests", [])
        digest = d.image.rsplit("@", 1)[-1]
        if not any(r.endswith(digest) for r in served):
            raise CheckFailed(f"the {slot} container runs {served or container.image.id}, not {digest}")
        env = dict(e.partition("=")[::2] for e in container.attrs.get("Config", {}).get("Env") or [])
        verify_models({slot: model_from_env(env)}, {slot: d.model})
        # by name: the network's DNS follows the container across engine restarts, an IP might not
        entry = {"container": container.name, "image": d.image, "addr": f"{container.name}:8080", "weight": 0,
                 "model": {"uri": d.model.uri, "sha256": d.model.sha256} if d.model else None}
        self._write_routes({**slots, f"{slot}-next": entry})  # addressable by header, no traffic yet
        code, body = self._post("/invocations", d.smoke, f"{slot}-next")
        if code != 200:
            raise CheckFailed(f"the {slot} smoke request got {code}: {body[:200]!r}; traffic was not moved")
        return entry

    def _unrouted(self, slots: dict[str, dict[str, Any]]) -> set[str]:
        """Our slot containers that the routes do not name (under the lock, no other command's)."""
        keep = {s["container"] for s in slots.values()}
        mine = self.client.containers.list(all=True, filters={"label": [f"dev.mldeploy.endpoint={self.endpoint}",
                                                                         "dev.mldeploy.slot"]})
        return {c.name for c in mine if c.name not in keep}

    def _retire(self, name: str) -> None:
        """Stop (SIGTERM: the server finishes what it holds), then remove."""
        import docker

        try:
            container = self.client.containers.get(name)
            container.stop(timeout=STOP_SECONDS)
            container.remove(force=True)
        except docker.errors.NotFound:
            pass

    def destroy(self) -> dict[str, Any]:
        """Remove this endpoint's router, slot containers and network, and nothing else."""
        with endpoint_lock(self.endpoint):
            containers = self.client.containers.list(  # a label filter matches the value exactly
                all=True, filters={"label": f"dev.mldeploy.endpoint={self.endpoint}"})
            for c in containers:
                c.remove(force=True)
            # a name filter matches any network whose name contains ours: keep ours alone
            networks = [n for n in self.client.networks.list(names=[self.network]) if n.name == self.network]
            for n in networks:
                n.remove()
        return {"endpoint": self.endpoint,
                "removed": [c.name for c in containers] + [f"network {n.name}" for n in networks]}

    # -- monitoring -----------------------------------------------------------------------------------
    def _scrape(self, slot: str) -> dict[Any, float] | None:
        """One slot's /metrics through the local router; None when the router has no such slot."""
        from mldeploy.monitor.metrics import parse_prometheus

        port = self.port
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"x-mldeploy-slot": slot})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return parse_prometheus(r.read().decode())
        except urllib.error.HTTPError as e:
            if e.code in (502, 503):
                return None
            raise UsageError(f"the local endpoint's {slot} slot answered {e.code} to /metrics") from None
        except OSError as e:
            raise UsageError(f"nothing answers on 127.0.0.1:{port} ({getattr(e, 'reason', e)})",
                             hint="deploy first (`mldeploy deploy --cloud local`), or set deploy.port / --port") from None


    def slot_metrics(self, window: float, pr: int | None = None,
                     sleep: Callable[[float], None] = time.sleep) -> Collected:
        """The router's per-slot /metrics, scraped at the start and the end of the window and
        differenced (window 0: since the containers started); predictions from each slot's capture."""
        from mldeploy.monitor.metrics import POLL_SECONDS, Collected, window_stats

        port = self.port
        slots = ("production", "canary")
        before = {s: self._scrape(s) for s in slots} if window > 0 else dict.fromkeys(slots)
        started = time.time() if window > 0 else 0.0
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:  # short steps: Ctrl-C and a timeout act at once
            sleep(min(POLL_SECONDS, left))
        production, canary = (self._scrape(s) for s in slots)
        if production is None:
            raise UsageError(f"the local endpoint on port {port} has no production slot", hint="deploy one first")
        if canary is None:
            raise NoCanary(f"the local endpoint on port {port} has no canary to analyze",
                           hint="deploy one with --stage canary")
        after = {"production": production, "canary": canary}
        stats = {s: window_stats(s, before[s], after[s]) for s in slots}
        found = Collected(stats["production"], stats["canary"], window, f"local router 127.0.0.1:{port}")
        for slot, predictions in self._predictions(started).items():
            if isinstance(predictions, str):
                stats[slot].notes.append(predictions)
            else:
                stats[slot].predictions = predictions
        return found


    def _predictions(self, since: float) -> dict[str, list[Any] | str]:
        """Per slot, the predictions its container captured since `since` (a Unix time), or why none."""
        import datetime as dt

        from mldeploy.monitor.canary import prediction_values

        try:
            target = self
            routes = target.routes()
        except UsageError as e:
            return {"production": f"predictions not read: {e.message}"}
        out: dict[str, list | str] = {}
        for slot in ("production", "canary"):
            try:
                container = target.client.containers.get(routes[slot]["container"]) if slot in routes else None
            except Exception:  # docker's NotFound: replaced between the two reads
                container = None
            env = dict(e.split("=", 1) for e in (container.attrs["Config"].get("Env") or [])) if container else {}
            folder = env.get("MLDEPLOY_CAPTURE_DIR")
            if container is None or not folder:
                out[slot] = f"{slot} does not capture requests (MLDEPLOY_CAPTURE_DIR is not set in its container)"
                continue
            try:
                stream, _ = container.get_archive(folder)
            except Exception:  # docker's NotFound: nothing captured yet
                out[slot] = []
                continue
            records = []
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                for member in tar.getmembers():
                    if member.isfile() and member.name.endswith(".jsonl"):
                        captured = tar.extractfile(member)
                        assert captured is not None  # a regular file
                        for line in captured.read().splitlines():
                            try:
                                record = json.loads(line)
                            except ValueError:
                                continue  # a line being written
                            if dt.datetime.fromisoformat(record["time"]).timestamp() >= since:
                                records.append(record)
            out[slot] = prediction_values(records)
        return out

    def monitor_plan(self, cfg: Config, config_file: str | None = None) -> SetupPlan:
        """Local: nothing to create. Say whether the slot containers capture requests, and how to run the
        drift check on a schedule."""
        from mldeploy.monitor.setup import SetupPlan, drift_command, schedule_snippets

        endpoint = self.endpoint
        result = SetupPlan("local", endpoint)
        capture = cfg.monitoring.drift.capture or str(capture_folder(endpoint))
        try:
            containers = engine().containers.list(filters={"label": [f"dev.mldeploy.endpoint={endpoint}",
                                                                     "dev.mldeploy.slot"]})
        except Exception as e:  # no engine here is a note, not a failure
            containers = None
            result.notes.append(f"no Docker engine answered ({getattr(e, 'message', type(e).__name__)}), so the "
                                "slots' capture was not checked")
        for container in containers or []:
            env = dict(v.split("=", 1) for v in container.attrs.get("Config", {}).get("Env", []) if "=" in v)
            slot = container.labels.get("dev.mldeploy.slot", container.name)
            if env.get("MLDEPLOY_CAPTURE_DIR"):
                result.notes.append(f"{slot} captures {env.get('MLDEPLOY_CAPTURE_SAMPLE_RATE', '1.0')} of requests "
                                    f"to {env['MLDEPLOY_CAPTURE_DIR']} in its container")
            else:
                result.notes.append(f"{slot} does not capture requests: set monitoring.enabled: true and "
                                    "monitoring.capture_sample_rate (e.g. 0.1), then deploy again; the slots then "
                                    f"capture into {capture}")
        if containers == []:
            result.notes.append(f"no running slot containers of {endpoint}: deploy first (`mldeploy deploy`)")
        own = None if cfg.monitoring.drift.capture else capture  # the slots' folder, unless the config names one
        result.notes += schedule_snippets(cfg, config_file, own)
        result.outputs["drift-command"] = drift_command(config_file, own)
        return result

    # -- HTTP through the router ---------------------------------------------------------------
    def _post(self, path: str, body: dict, slot: str) -> tuple[int, bytes]:
        return self._http(path, slot, json.dumps(body).encode())

    def _get(self, path: str, slot: str) -> tuple[int, bytes]:
        return self._http(path, slot, None)

    def _http(self, path: str, slot: str, body: bytes | None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body,
                                     headers={"x-mldeploy-slot": slot, "content-type": "application/json"})
        for _ in range(40):  # the router itself may still be starting
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()
            except OSError:
                time.sleep(0.25)
        return 0, b"the router did not answer"
