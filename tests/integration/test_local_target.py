"""The local target on a real engine: canary share, promote, rollback, a crashing canary."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli as mldeploy
from tests.helpers.docker import variant
from tests.helpers.models import PREDICT_BODY as BODY
from tests.helpers.server import free_port


def predict(port: int) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=BODY,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("x-mldeploy-slot", "")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-mldeploy-slot", "")
    except OSError:
        return 0, ""


@pytest.fixture
def endpoint(images):
    port = free_port()
    name = f"t{port}"
    yield name, port
    from mldeploy.deploy.local import LocalTarget

    LocalTarget(name, port).destroy()


def test_canary_share_promote_rollback(images, endpoint):
    bundle, good, second, _ = images
    name, port = endpoint
    where = ("--bundle", bundle, "--endpoint", name, "--port", port)
    code, out = mldeploy("deploy", *where, "--image", good)
    assert code == 0 and "production 100%  healthy" in out, out
    code, out = mldeploy("deploy", *where, "--image", second, "--stage", "canary", "--traffic", "20", "--plan")
    assert code == 0 and f"create container mldeploy-{name}-canary image = {second}" in out
    assert "canary" not in mldeploy("status", *where)[1].split("url")[1]
    code, out = mldeploy("deploy", *where, "--image", second, "--stage", "canary", "--traffic", "20")
    assert code == 0 and "canary      20%  healthy" in out, out

    slots = [predict(port) for _ in range(1000)]
    assert all(status == 200 for status, _ in slots)
    canary = sum(slot == "canary" for _, slot in slots)
    assert 150 <= canary <= 250, canary  # 20% of 1000: mean 200, sd 12.6; these bounds are 4 sd

    code, out = mldeploy("deploy", *where, "--image", second, "--stage", "canary", "--traffic", "20")
    assert code == 0 and "up to date, nothing to change" in out  # idempotent

    code, out = mldeploy("promote", *where)
    assert code == 0 and f"production 100%  healthy  {second}" in out and "canary" not in out.split("url")[1]
    assert {predict(port)[1] for _ in range(50)} == {"production"}

    mldeploy("deploy", *where, "--image", good, "--stage", "canary", "--traffic", "50")
    code, out = mldeploy("rollback", *where)
    assert code == 0 and f"production 100%  healthy  {second}" in out and "canary " not in out
    assert {predict(port)[1] for _ in range(50)} == {"production"}
    code, out = mldeploy("rollback", *where)
    assert code == 2 and "has no canary to roll back" in out, out  # nothing to roll back to: exit 2


def test_plans_list_no_update_that_changes_nothing(images, endpoint):
    """A weight, an image or a share that stays as it is never shows as `X -> X`; with nothing else to
    change the plan says up to date."""
    bundle, good, second, third = images  # third is only planned (it crashes on start): never applied
    name, port = endpoint
    where = ("--bundle", bundle, "--endpoint", name, "--port", port)
    assert mldeploy("deploy", *where, "--image", good)[0] == 0
    code, out = mldeploy("deploy", *where, "--image", second, "--stage", "canary", "--traffic", "0", "--plan")
    assert code == 0 and f"create container mldeploy-{name}-canary image = {second}" in out, out
    assert "canary weight" not in out, out  # 0 -> 0 is no change
    assert mldeploy("deploy", *where, "--image", second, "--stage", "canary", "--traffic", "20")[0] == 0
    code, out = mldeploy("deploy", *where, "--image", third, "--stage", "canary", "--traffic", "20", "--plan")
    assert code == 0 and f"update container mldeploy-{name}-canary image: {second} -> {third}" in out, out
    assert "canary weight" not in out and "20 -> 20" not in out, out
    code, out = mldeploy("deploy", *where, "--image", second, "--stage", "canary", "--traffic", "20", "--plan")
    assert code == 0 and "up to date, nothing to change" in out and " -> " not in out.split("traffic")[0], out


def test_crashing_canary_is_rolled_back_while_production_answers(images, endpoint):
    bundle, good, _, crashing = images
    name, port = endpoint
    where = ("--bundle", bundle, "--endpoint", name, "--port", port)
    assert mldeploy("deploy", *where, "--image", good)[0] == 0
    results: list[int] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            results.append(predict(port)[0])

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        code, out = mldeploy("deploy", *where, "--image", crashing, "--stage", "canary", "--traffic", "20")
    finally:
        stop.set()
        thread.join()
    assert code == 1 and "exited on start" in out and "traffic was not moved" in out, out
    assert len(results) > 20 and results.count(200) == len(results), f"{len(results) - results.count(200)} failed"
    code, out = mldeploy("status", *where)
    assert f"production 100%  healthy  {good}" in out and "canary" not in out.split("url")[1]


def test_port_in_use_and_missing_digest(images, endpoint, docker_client):
    bundle, good, _, _ = images
    name, _ = endpoint
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out = mldeploy("deploy", "--bundle", bundle, "--endpoint", name, "--port", port, "--image", good)
        plan_code, plan_out = mldeploy("deploy", "--bundle", bundle, "--endpoint", name, "--port", port,
                                       "--image", good, "--plan")
    # one line naming who holds the port (this test's own process), and nothing left behind
    assert code == 2 and f"port {port} is already in use on this machine: " in out, out
    assert f"(pid {os.getpid()}) holds it; nothing was created" in out, out
    assert plan_code == 2 and f"port {port} is already in use" in plan_out, plan_out  # no plan it cannot apply
    assert [n.name for n in docker_client.networks.list(names=[f"mldeploy-{name}"])] == []
    assert docker_client.containers.list(all=True, filters={"label": f"dev.mldeploy.endpoint={name}"}) == []
    code, out = mldeploy("deploy", "--bundle", bundle, "--endpoint", name, "--image", good.split("@")[0] + ":latest")
    assert code == 2 and "no image digest to deploy" in out


def test_monitoring_makes_the_slots_capture_for_drift_checks(images, endpoint, tmp_path, monkeypatch):
    bundle, good, _, _ = images
    name, port = endpoint
    monkeypatch.setenv("MLDEPLOY_CAPTURE_ROOT", str(tmp_path))
    monkeypatch.setenv("MLDEPLOY_MONITORING__ENABLED", "true")
    monkeypatch.setenv("MLDEPLOY_MONITORING__CAPTURE_SAMPLE_RATE", "1")
    code, out = mldeploy("deploy", "--bundle", bundle, "--endpoint", name, "--port", port, "--image", good)
    assert code == 0, out
    assert all(predict(port)[0] == 200 for _ in range(25))
    folder = tmp_path / name
    deadline = time.monotonic() + 10
    while len(records := [json.loads(line) for f in folder.rglob("capture-*.jsonl")
                          for line in f.read_text().splitlines()]) < 25 and time.monotonic() < deadline:
        time.sleep(0.2)  # the runtime writes in the background
    assert len(records) >= 25, list(folder.rglob("*"))  # the smoke request is captured too
    assert records[-1]["inputs"] == {"x": [[0.1, 0.2, 0.3, 0.4]]} or list(records[-1]["inputs"].values()) == [
        [[0.1, 0.2, 0.3, 0.4]]]


class Client:
    """Requests to the endpoint from a thread while commands run: every answer's status, by slot."""

    def __init__(self, port: int):
        self.port, self.results, self.stop = port, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            self.results.append(predict(self.port))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def failures(self) -> list[tuple[int, str]]:
        return [r for r in self.results if r[0] != 200]


def routed(name: str, port: int) -> dict[str, str]:
    from mldeploy.deploy.local import LocalTarget

    return {slot: s["container"] for slot, s in LocalTarget(name, port).routes().items()}


def slot_containers(docker_client, name: str) -> set[str]:
    return {c.name for c in docker_client.containers.list(all=True, filters={"label": [
        f"dev.mldeploy.endpoint={name}", "dev.mldeploy.slot"]})}


def test_the_journey_never_harms_production_and_never_misreports(images, endpoint, docker_client, tmp_path):
    """Issue 18's journey: deploy A, canary B, promote, deploy B again (a canary of production's own
    image), redeploy production: production stays up with no failed request, every command says what
    serves; then a dead production makes every command exit 1 naming it, and a redeploy heals it."""
    bundle, a, b, _ = images
    name, port = endpoint
    where = ("--bundle", bundle, "--endpoint", name, "--port", port)
    assert mldeploy("deploy", *where, "--image", a, "--stage", "production")[0] == 0
    with Client(port) as client:
        code, out = mldeploy("deploy", *where, "--image", b, "--traffic", "20", "--plan-out", tmp_path / "plan.json")
        assert code == 0 and "canary      20%  healthy" in out, out
        code, report = mldeploy("report", "--stage", "canary", "--decision", "deployed", "--plan", tmp_path / "plan.json",
                                "--endpoint", name, "--bundle", bundle)
        assert code == 0 and (f"| Serving now (read back) | production 80% healthy `{a[-19:]}`, canary 20% healthy "
                              f"`{b[-19:]}` |") in report, report
        code, out = mldeploy("promote", *where)
        assert code == 0 and f"production 100%  healthy  {b}" in out, out
        serving = routed(name, port)["production"]
        code, out = mldeploy("deploy", *where, "--image", b)  # what the second deploy did
        assert code == 0 and "the canary is production's own image" in out and "nothing to change" in out, out
        code, out = mldeploy("deploy", *where, "--image", b, "--stage", "production")
        assert code == 0 and "nothing to change" in out, out
        assert routed(name, port) == {"production": serving}  # the very container that served, untouched
        code, out = mldeploy("deploy", *where, "--image", a, "--traffic", "30")
        assert code == 0 and "canary      30%  healthy" in out, out
        code, out = mldeploy("deploy", *where, "--image", b, "--stage", "production")  # drops the canary
        assert code == 0 and routed(name, port) == {"production": serving}, out
        code, out = mldeploy("rollback", *where)
        assert code == 2 and "has no canary to roll back" in out, out
    assert len(client.results) > 50 and client.failures() == [], client.failures()[:5]
    assert {slot for _, slot in client.results} == {"production", "canary"}
    assert slot_containers(docker_client, name) == {serving}  # nothing left behind

    # production dies: no command may say "done"
    assert mldeploy("deploy", *where, "--image", a, "--traffic", "10")[0] == 0
    docker_client.containers.get(serving).kill()
    code, out = mldeploy("rollback", *where)
    assert code == 1 and "production" in out and "is not healthy" in out and "canary keeps its share" in out, out
    code, out = mldeploy("deploy", *where, "--image", a, "--traffic", "20")
    assert code == 1 and f"production ({b}) is unhealthy" in out, out
    code, out = mldeploy("deploy", *where, "--image", b, "--stage", "production")  # heals it
    assert code == 0 and f"production 100%  healthy  {b}" in out, out
    assert all(predict(port)[0] == 200 for _ in range(20))


def test_two_deploys_at_once_take_turns(images, endpoint, docker_client, tmp_path):
    """Two pull requests deploy to one endpoint at the same moment: the lock makes them take turns, so
    the endpoint ends as one of them asked, with no container left that the routes do not name."""
    import subprocess
    import sys

    bundle, a, b, _ = images
    c = variant(docker_client, a, "third", 'LABEL variant="third"', tmp_path)
    name, port = endpoint
    where = ["--bundle", str(bundle), "--endpoint", name, "--port", str(port)]
    assert mldeploy("deploy", *where, "--image", a, "--stage", "production")[0] == 0
    runs = [subprocess.Popen([sys.executable, "-m", "mldeploy", "deploy", *where, "--image", image, "--traffic",
                              traffic], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for image, traffic in ((b, "20"), (c, "30"))]
    outputs = [r.communicate(timeout=300)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    assert any("waiting for another mldeploy command" in out for out in outputs), outputs
    from mldeploy.deploy.local import LocalTarget

    slots = LocalTarget(name, port).routes()  # one canary slot here: the one that went second holds it
    assert slots["production"] == {**slots["production"], "image": a} and slots["canary"]["image"] in (b, c)
    assert slots["canary"]["weight"] == {b: 20, c: 30}[slots["canary"]["image"]]
    assert slot_containers(docker_client, name) == {s["container"] for s in slots.values()}
    assert all(predict(port)[0] == 200 for _ in range(20))


def test_destroy_removes_one_endpoint_and_only_it(images, endpoint, docker_client):
    bundle, a, _, _ = images
    name, port = endpoint
    other, other_port = f"{name}x", free_port()
    for ep, p in ((name, port), (other, other_port)):
        assert mldeploy("deploy", "--bundle", bundle, "--endpoint", ep, "--port", p, "--image", a)[0] == 0
    try:
        code, out = mldeploy("destroy", "--bundle", bundle, "--endpoint", name, "--port", port)
        assert code == 0 and f"mldeploy-{name}-router" in out and f"network mldeploy-{name}" in out, out
        assert not docker_client.containers.list(all=True, filters={"label": f"dev.mldeploy.endpoint={name}"})
        assert f"mldeploy-{name}" not in {n.name for n in docker_client.networks.list()}
        assert f"mldeploy-{other}" in {n.name for n in docker_client.networks.list()}
        assert predict(other_port)[0] == 200  # the other endpoint, whose name starts the same, serves on
        code, out = mldeploy("destroy", "--bundle", bundle, "--endpoint", name, "--port", port)
        assert code == 0 and "had nothing to remove" in out, out
    finally:
        from mldeploy.deploy.local import LocalTarget

        LocalTarget(other, other_port).destroy()


def test_faults_never_harm_production_and_a_rerun_converges(images, endpoint, docker_client, tmp_path):
    """The local target's fault table, on the real engine, with a client sending requests throughout: a new
    slot that never becomes healthy, a smoke request that fails, and the deploy SIGKILLed once its new
    container runs. Each time production answers every request, keeps its container and share, the
    command exits non-zero in one line, and a rerun with a good image converges."""
    import subprocess
    import sys

    bundle, a, b, crashing = images
    keyed = variant(docker_client, a, "keyed", "ENV MLDEPLOY_API_KEYS=k3y-the-smoke-request-lacks", tmp_path)
    name, port = endpoint
    where = ["--bundle", str(bundle), "--endpoint", name, "--port", str(port)]
    assert mldeploy("deploy", *where, "--image", a, "--stage", "production")[0] == 0
    serving = routed(name, port)

    def killed_once_its_container_runs() -> tuple[int, str]:
        proc = subprocess.Popen([sys.executable, "-m", "mldeploy", "deploy", *where, "--image", b, "--traffic", "20"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while len(slot_containers(docker_client, name)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()
        return proc.wait(), proc.stdout.read()

    faults = {
        "never healthy": lambda: mldeploy("deploy", *where, "--image", crashing, "--traffic", "20"),
        "smoke fails": lambda: mldeploy("deploy", *where, "--image", keyed, "--traffic", "20"),
        "SIGKILL": killed_once_its_container_runs,
    }
    rows = []
    for fault, command in faults.items():
        with Client(port) as client:
            code, out = command()
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        harmed = [] if routed(name, port) == serving else [f"routes {routed(name, port)}"]
        harmed += [f"{len(client.failures())} failed requests {client.failures()[:3]}"] if client.failures() else []
        rerun_code, rerun_out = mldeploy("deploy", *where, "--image", b, "--traffic", "20")
        converged = rerun_code == 0 and "canary      20%  healthy" in rerun_out and \
            slot_containers(docker_client, name) == set(routed(name, port).values())
        rows.append(f"local  deploy canary  {fault:<14} exit {code:>3}  "
                    f"{'one line' if fault == 'SIGKILL' or len(errors) == 1 else 'NOT ONE LINE'}  "
                    f"harmed: {'; '.join(harmed) or 'no'}  rerun: {'ok' if converged else rerun_out[-300:]}  "
                    f"({len(client.results)} requests during the fault)")
        assert mldeploy("rollback", *where)[0] == 0  # production alone again, for the next fault
    print("\n" + "\n".join(rows))
    assert all("harmed: no  rerun: ok" in row and "exit   0" not in row and "NOT ONE LINE" not in row for row in rows), rows


def test_the_engine_failing_never_harms_production(images, endpoint, docker_client, tmp_path, monkeypatch):
    """The local target's "cloud API failing": the engine answers 500 to each call a canary deploy makes
    while it changes things (engine_proxy.py), with a client sending requests throughout. Each time
    production answers every request and keeps its container and share, a failure is one line (exit 0
    only with the canary in place), and a rerun converges."""
    from tests.helpers.engine_proxy import EngineProxy

    bundle, a, b, _ = images
    name, port = endpoint
    where = ["--bundle", str(bundle), "--endpoint", name, "--port", str(port)]
    assert mldeploy("deploy", *where, "--image", a, "--stage", "production")[0] == 0
    serving = routed(name, port)
    engine = os.environ["DOCKER_HOST"]
    proxy = EngineProxy(engine, tmp_path)
    monkeypatch.setenv("DOCKER_HOST", proxy.url)
    canary = ["deploy", *where, "--image", b, "--traffic", "20"]
    try:
        assert mldeploy(*canary)[0] == 0
        seen: dict[str, int] = {}
        calls = []  # (call, requests of it before): each call that changes something, once
        for call in proxy.requests:
            if call.split()[0] in ("POST", "PUT", "DELETE") and call not in dict(calls):
                calls.append((call, seen.get(call, 0)))
            seen[call] = seen.get(call, 0) + 1
        assert mldeploy("rollback", *where)[0] == 0
        rows = []
        for call, skip in calls:
            proxy.faults.rules = {call: ["500", skip, 1]}
            with Client(port) as client:
                code, out = mldeploy(*canary)
            fired, proxy.faults.rules = not proxy.faults.rules[call][2], {}
            errors = [line for line in out.splitlines() if line.startswith("error:")]
            routes = routed(name, port)
            harmed = [] if (routes == serving if code else routes.get("canary") and
                            routes["production"] == serving["production"]) else [f"exit {code}, routes {routes}"]
            harmed += [f"{len(client.failures())} failed requests {client.failures()[:3]}"] if client.failures() else []
            rerun_code, rerun_out = mldeploy(*canary)
            converged = rerun_code == 0 and "canary      20%  healthy" in rerun_out
            rows.append(f"local  deploy canary  {call:<34} 500  exit {code:>3}  "
                        f"{'one line' if code == 0 or len(errors) == 1 else 'NOT ONE LINE'}  "
                        f"{'' if fired else 'NEVER FIRED  '}harmed: {'; '.join(harmed) or 'no'}  "
                        f"rerun: {'ok' if converged else rerun_out[-300:]}  ({len(client.results)} requests)")
            assert mldeploy("rollback", *where)[0] == 0
    finally:
        monkeypatch.setenv("DOCKER_HOST", engine)  # the endpoint fixture removes the endpoint after this
        proxy.close()
    print("\n" + "\n".join(rows))
    assert len(rows) >= 3, calls
    assert all("harmed: no  rerun: ok" in row and "NOT ONE LINE" not in row and "NEVER" not in row
               for row in rows), rows


def test_storage_mode_serves_the_artifact_from_a_file_store_mounted_read_only(images, endpoint, tmp_path,
                                                                               docker_client):
    """image.model: storage on the local engine: the slot container gets MLDEPLOY_MODEL_URI + _SHA256 and the
    file:// artifact mounted read-only; the server downloads, verifies and serves IT (other weights than the
    image's own bundle), and a model-only change starts a new container that answers with the new model."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from mldeploy.bundle import Bundle
    from mldeploy.deploy import smoke_body
    from mldeploy.deploy.base import model_from_env
    from tests.helpers.models import B, W, save_bundle
    from tests.helpers.storage_mode import deploys_a_model_only_change, two_models

    bundle, good, _, _ = images
    name, port = endpoint
    (tmp_path / "mldeploy.yaml").write_text(f"deploy:\n  endpoint: {name}\n  port: {port}\n")
    other = save_bundle(helper.make_graph(  # the linear model with -W: another answer for the same input
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(-W, "W"), numpy_helper.from_array(B, "B")]), tmp_path / "other")
    store = tmp_path / "store"
    store.mkdir()
    models = two_models(other, tmp_path, f"file://{store}")  # [0]: -W, [1]: -W with another signature file

    def answer() -> np.ndarray:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=BODY,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            outputs = json.loads(r.read())["outputs"]
        return np.asarray(outputs["probs"] if isinstance(outputs, dict) else outputs, dtype=np.float64)

    def served():
        found = {}
        for c in docker_client.containers.list(filters={"label": [f"dev.mldeploy.endpoint={name}", "dev.mldeploy.slot"]}):
            env = dict(e.partition("=")[::2] for e in c.attrs["Config"]["Env"])
            mounts = {m["Destination"]: m["RW"] for m in c.attrs["Mounts"]}
            model = model_from_env(env)
            assert model and mounts[model.uri.removeprefix("file://")] is False  # read-only
            found[c.labels["dev.mldeploy.slot"]] = model
        return found

    x = np.asarray(json.loads(BODY)["inputs"], dtype=np.float32)
    logits = x @ -W + B
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    smoke = smoke_body(Bundle.open(bundle).signature)
    deploys_a_model_only_change(tmp_path, good, models, served, smoke=smoke)
    np.testing.assert_allclose(answer(), expected, rtol=1e-5, atol=1e-6)  # the artifact's answer, not the image's

    # an artifact changed after publishing: the canary's server says it will never be ready, and the deploy
    # stops at once (not at the ready deadline) with production serving as it was
    from mldeploy.deploy import Desired
    from mldeploy.deploy.base import Model
    from mldeploy.errors import CheckFailed
    from tests.helpers.storage_mode import target_of

    model = models[0]
    onnx_file = Path(model.uri.removeprefix("file://")) / "model.onnx"
    tampered = store / "tampered" / model.sha256
    shutil.copytree(onnx_file.parent, tampered)
    (tampered / "model.onnx").chmod(0o644)
    (tampered / "model.onnx").write_bytes(onnx_file.read_bytes()[:-1] + bytes([onnx_file.read_bytes()[-1] ^ 1]))
    target = target_of(tmp_path)
    started = time.monotonic()
    with pytest.raises(CheckFailed, match="the canary container will never be ready: the model is not served: "):
        target.apply(target.plan(Desired(name, good, "canary", 10, smoke, model=Model(tampered.as_uri(), model.sha256))))
    assert time.monotonic() - started < 60  # READY_SECONDS is 120
    assert set(served()) == {"production"} and served()["production"] == models[1]
    np.testing.assert_allclose(answer(), expected, rtol=1e-5, atol=1e-6)
