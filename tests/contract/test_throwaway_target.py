"""A new target is one module and one fake: a throwaway target, written here into a temporary
package that registers itself with an entry point (group mldeploy.targets), is reached by every
command (config validation, deploy --plan, deploy, status, promote, rollback, canary analyze,
monitor setup, doctor) through the real CLI, with no file of the kit touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import onnx
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[2]
A = "registry.example/toy@sha256:" + "a" * 64
B = "registry.example/toy@sha256:" + "b" * 64

TARGET = '''
"""The toy cloud: an endpoint holds named slots, each an image and a share, behind one JSON API."""
import json
import os
import urllib.error
import urllib.request

from mldeploy.deploy import Desired, Plan, canary_shares
from mldeploy.deploy.base import Slot, Status, Target
from mldeploy.targets import Entry
from mldeploy.errors import CheckFailed

ENTRY = Entry("toy", "toy", "toy_target", "ToyTarget", "the toy cloud", "named slots and their shares")


def call(method, path, body=None):
    request = urllib.request.Request(os.environ["TOY_API"] + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


class ToyTarget(Target):
    name = "toy"

    def read(self):
        return call("GET", f"/endpoints/{self.endpoint}")

    def _status(self, current):
        if current is None:
            return Status(self.endpoint)
        return Status(self.endpoint, f"toy://{self.endpoint}",
                      {s: Slot(e["image"], e["traffic"], True) for s, e in current["slots"].items()})

    def plan(self, desired):
        current = self.read()
        slots = self._status(current).slots
        if "production" not in slots or desired.slot == "production":
            images, share = {"production": desired.image}, {"production": 100}
        else:
            share = canary_shares({s: e.traffic for s, e in slots.items()}, desired.slot, desired.traffic)
            images = {s: desired.image if s == desired.slot else slots[s].image for s in share}
        return self.layout(desired, current, images, share)

    def layout(self, desired, current, images, share):
        slots = self._status(current).slots
        plan = Plan(self.name, desired, traffic_before={s: e.traffic for s, e in slots.items()}, traffic_after=share)
        plan.state = {"current": current, "images": images}
        for slot, image in images.items():
            if slot not in slots or slots[slot].image != image or slots[slot].traffic != share[slot]:
                plan.add("update" if slot in slots else "create", f"toy slot {slot}", "image",
                         slots[slot].image if slot in slots else None, image)
        for slot in set(slots) - set(images):
            plan.add("delete", f"toy slot {slot}")
        return plan

    def apply(self, plan):
        if plan.empty:
            return self.changed(False)
        current, images = plan.state["current"], plan.state["images"]
        wanted = {s: {"image": i, "traffic": plan.traffic_after[s]} for s, i in images.items()}

        def restore():
            call("PUT", f"/endpoints/{self.endpoint}", current or {"slots": {}})
            return "rolled back"

        with self.changing(current, images.values(), restore) as guard:
            guard.check()
            call("PUT", f"/endpoints/{self.endpoint}", {"slots": wanted})
            if self.read()["slots"] != wanted:
                raise CheckFailed("the toy cloud does not serve what was planned")
            call("POST", f"/endpoints/{self.endpoint}/{plan.desired.slot}/predict", plan.desired.smoke)
        return self.changed(True)

    def slot_metrics(self, window, pr=None):
        from mldeploy.monitor.canary import SlotStats
        from mldeploy.monitor.metrics import Collected

        current = self.read()
        canary = self.canary(current, pr, "analyze")
        counts = call("GET", f"/endpoints/{self.endpoint}/metrics")
        stats = {s: SlotStats(s, *counts[s]) for s in ("production", canary)}
        return Collected(stats["production"], stats[canary], window, f"toy metrics of {self.endpoint}")

    def monitor_plan(self, cfg, config_file=None):
        from mldeploy.monitor.setup import SetupPlan

        result = SetupPlan("toy toy", self.endpoint)
        if self.endpoint not in call("GET", "/alerts"):
            result.add("create", f"toy alert {self.endpoint}", lambda: call("POST", "/alerts", {"endpoint": self.endpoint}))
        return result

    @classmethod
    def doctor(cls, deploy):
        return [("toy api", call("GET", "/alerts") is not None, os.environ["TOY_API"])]
'''


class Fake(BaseHTTPRequestHandler):
    """The toy cloud's API: endpoints (slots), predictions counted per slot (a canary's tenth fail), alerts."""
    endpoints: ClassVar[dict] = {}
    alerts: ClassVar[list] = []
    calls: ClassVar[list] = []

    def log_message(self, *args):
        pass

    def _answer(self, code, body=None):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        return json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"null")

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if parts == ["alerts"]:
            return self._answer(200, self.alerts)
        endpoint = self.endpoints.get(parts[1])
        if endpoint is None:
            return self._answer(404, {"error": "no such endpoint"})
        if parts[2:] == ["metrics"]:  # (requests, errors) per slot
            return self._answer(200, {s: [1000, 100 if s != "production" else 0] for s in endpoint["slots"]})
        return self._answer(200, endpoint)

    def do_PUT(self):
        self.calls.append(("PUT", self.path))
        self.endpoints[self.path.strip("/").split("/")[1]] = self._body()
        self._answer(200, {})

    def do_POST(self):
        self.calls.append(("POST", self.path))
        body = self._body()
        if self.path == "/alerts":
            self.alerts.append(body["endpoint"])
        self._answer(200, {"outputs": body})


@pytest.fixture
def toy(tmp_path):
    """The temporary package (the target module, registered by its dist-info), the fake serving its API,
    a model repo with a converted bundle, and a function running the real CLI there."""
    package = tmp_path / "site"
    package.mkdir()
    (package / "toy_target.py").write_text(textwrap.dedent(TARGET))
    info = package / "toy_target-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-target\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mldeploy.targets]\ntoy = toy_target:ENTRY\n")
    Fake.endpoints, Fake.alerts, Fake.calls = {}, [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    repo = tmp_path / "repo"
    repo.mkdir()
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "toy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), repo / "model.onnx")
    (repo / "mldeploy.yaml").write_text("model: {path: model.onnx}\n"
                                        "deploy: {cloud: toy, target: toy, endpoint: clf, require_provenance: false}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "MLDEPLOY_"))}
    env |= {"PYTHONPATH": str(package), "TOY_API": f"http://127.0.0.1:{server.server_port}"}

    def mldeploy(*args, plugin=True):
        r = subprocess.run([sys.executable, "-m", "mldeploy", *args], cwd=repo, capture_output=True, text=True,
                           timeout=300, env=env if plugin else {**env, "PYTHONPATH": ""}, check=False)
        return r.returncode, r.stdout + r.stderr

    code, out = mldeploy("convert")
    assert code == 0, out
    yield mldeploy
    server.shutdown()


def serving() -> dict:
    return {s: (e["image"], e["traffic"]) for s, e in Fake.endpoints["clf"]["slots"].items()}


def test_a_target_in_its_own_package_is_reached_by_every_command(toy):
    code, out = toy("config", "validate")
    assert code == 0, out
    code, out = toy("config", "validate", plugin=False)  # without the package, the config names no target
    assert code == 2 and "deploy.cloud" in out and "toy" in out, out

    code, out = toy("deploy", "--stage", "production", "--image", A)
    assert code == 0 and serving() == {"production": (A, 100)}, out
    code, out = toy("deploy", "--image", B, "--traffic", "10", "--plan")
    assert code == 0 and "toy clf: plan" in out and "create toy slot canary" in out, out
    assert serving() == {"production": (A, 100)}  # a plan changes nothing
    code, out = toy("deploy", "--image", B, "--traffic", "10")
    assert code == 0 and serving() == {"production": (A, 90), "canary": (B, 10)}, out
    assert ("POST", "/endpoints/clf/canary/predict") in Fake.calls  # the smoke request reached the new slot

    code, out = toy("status")
    assert code == 0 and "canary      10%  healthy" in out and B in out, out
    code, out = toy("canary", "analyze", "--window", "60")
    assert code == 1 and "rollback" in out and "toy metrics of clf" in out, out  # a tenth of the canary's fail
    code, out = toy("rollback")
    assert code == 0 and serving() == {"production": (A, 100)}, out
    toy("deploy", "--image", B, "--traffic", "10")
    code, out = toy("promote")
    assert code == 0 and serving() == {"production": (B, 100)}, out

    code, out = toy("monitor", "setup", "--plan")
    assert code == 0 and "create toy alert clf" in out and Fake.alerts == [], out
    code, out = toy("monitor", "setup")
    assert code == 0 and Fake.alerts == ["clf"], out
    code, out = toy("monitor", "setup")
    assert code == 0 and "up to date" in out and Fake.alerts == ["clf"], out
    code, out = toy("doctor")
    assert code == 0 and "toy api" in out, out


def test_the_kit_names_no_throwaway_target():
    # the test above touched nothing of the kit: no file in it knows the toy cloud
    found = subprocess.run(["git", "grep", "-l", "-i", "toy_target", "--", "src", "scripts", "action.yml", "actions"],
                           cwd=ROOT, capture_output=True, text=True, check=False)
    assert found.stdout == "", found.stdout
