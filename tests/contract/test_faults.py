"""Fault injection over HTTP: production is never harmed and never misreported, on SageMaker and Lambda
(moto), Vertex AI and Cloud Run (the fakes in fakes/).

For each command (a canary deploy, promote, rollback) the calls a clean run makes while it changes
things are recorded; then, for every one of them and every fault (fakes/faults.py: the API answering
500, throttling, the connection dropping, the process SIGKILLed just before the call), the command runs
against an endpoint serving A (and a canary B where the command needs one) with that call failing, and
again with no fault. Each row of the printed table says the exit code, whether the failure was one line,
whether production was harmed, and whether the rerun converged. The invariant: a command that exits 0
left what it was asked for; one that fails left production as it was (a killed one: as it was, or as
the command was making it), never anything else.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from tests.contract.conftest import ROLE, ecr_image

pytestmark = [pytest.mark.slow]
ENDPOINT = "classifier"
COMMANDS = {  # command -> (its arguments, needs a canary first, production's image after it, its share after)
    "deploy canary": (["deploy", "--stage", "canary", "--traffic", "10"], False, "a", 90),
    "promote": (["promote"], True, "b", 100),
    "rollback": (["rollback"], True, "a", 100),
}


@dataclass
class Backend:
    """One target over HTTP: how to reset it, what production serves, and the calls it received."""
    target: str
    config: str                                         # mldeploy.yaml
    reset: Callable[[], tuple[str, str]]                # a clean account; the images A and B
    production: Callable[[], tuple[str, int] | None]    # production's (image, share), None: nothing serves
    requests: Callable[[], list[tuple[str, bool, bool]]]  # so far: (call, changes state, a smoke request)
    clear: Callable[[], None]
    faults: Any                                         # fakes.faults.Faults


def aws_backend(target: str, aws, url: str, bundle) -> Backend:
    import boto3

    from tests.contract import moto_lambda, moto_patches

    def reset() -> tuple[str, str]:
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).read()
        moto_patches.reset()
        moto_lambda.reset(bundle)
        boto3.client("iam").create_role(RoleName=ROLE.rsplit("/", 1)[-1], AssumeRolePolicyDocument="{}")
        a, b = (ecr_image("models/classifier", c * 64) for c in "ab")
        return a, b

    def sagemaker() -> tuple[str, int] | None:
        sm = boto3.client("sagemaker")
        try:
            ep = sm.describe_endpoint(EndpointName=ENDPOINT)
        except sm.exceptions.ClientError:
            return None
        config = sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
        weights = {v["VariantName"]: v.get("CurrentWeight") or 0.0 for v in ep["ProductionVariants"]}
        variant = next((v for v in config["ProductionVariants"] if v["VariantName"] == "production"), None)
        if variant is None or ep["EndpointStatus"] != "InService":
            return None
        image = sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]["Image"]
        return image, round(100 * weights["production"] / sum(weights.values()))

    def lambda_() -> tuple[str, int] | None:
        lam = boto3.client("lambda")
        try:
            alias = lam.get_alias(FunctionName=ENDPOINT, Name="live")
        except lam.exceptions.ResourceNotFoundException:
            return None
        weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        image = lam.get_function(FunctionName=ENDPOINT, Qualifier=alias["FunctionVersion"])["Code"]["ImageUri"]
        return image, 100 - round(100 * sum(weights.values()))

    def requests() -> list[tuple[str, bool, bool]]:
        mutating = set(aws.mutating())
        return [(op or f"{method} {path}", (op, method, path) in mutating, path.endswith("/invocations"))
                for op, method, path in aws.requests]

    return Backend(target, f"deploy:\n  cloud: aws\n  target: {target}\n  endpoint: {ENDPOINT}\n"
                           f"  aws:\n    role: {ROLE}\n", reset, sagemaker if target == "sagemaker" else lambda_,
                   requests, aws.requests.clear, aws.faults)


def vertex_backend(fake) -> Backend:
    repository = "europe-docker.pkg.dev/acme-ml/models/classifier"

    def reset() -> tuple[str, str]:
        fake.reset()
        return f"{repository}@sha256:{'a' * 64}", f"{repository}@sha256:{'b' * 64}"

    def production() -> tuple[str, int] | None:  # mid-promote two models are "production": the one with traffic
        ep = fake.endpoint(ENDPOINT) or {}
        split = ep.get("trafficSplit", {})
        found = sorted((split.get(d["id"], 0), fake.image_of(d["model"])) for d in ep.get("deployedModels", [])
                       if d["displayName"] == "production")
        return (found[-1][1], found[-1][0]) if found else None

    def requests() -> list[tuple[str, bool, bool]]:
        mutating = set(fake.mutating())
        return [(f"{method} {path}", (method, path, query) in mutating, path.endswith((":predict", ":rawPredict")))
                for method, path, query in fake.requests]

    return Backend("vertex", f"deploy:\n  cloud: gcp\n  target: vertex\n  endpoint: {ENDPOINT}\n"
                             "  region: europe-west4\n  gcp:\n    project: acme-ml\n", reset, production, requests,
                   fake.requests.clear, fake.faults)


def cloudrun_backend(fake) -> Backend:
    repository = "europe-west1-docker.pkg.dev/acme-ml/models/classifier"

    def reset() -> tuple[str, str]:
        fake.reset()
        return f"{repository}@sha256:{'a' * 64}", f"{repository}@sha256:{'b' * 64}"

    def production() -> tuple[str, int] | None:
        return fake.serving(ENDPOINT).get("production")

    def requests() -> list[tuple[str, bool, bool]]:
        mutating = set(fake.mutating())
        return [(f"{method} {path}", (method, path) in mutating, path.startswith("/run/"))
                for method, path in fake.requests]

    return Backend("cloudrun", f"deploy:\n  cloud: gcp\n  target: cloudrun\n  endpoint: {ENDPOINT}\n"
                               "  region: europe-west1\n  gcp:\n    project: acme-ml\n", reset, production,
                   requests, fake.requests.clear, fake.faults)


GCP_FAKES = {  # target -> (the client its fake needs, the fake's module and class)
    "vertex": ("google.cloud.aiplatform_v1", "tests.contract.fakes.vertex", "FakeVertex"),
    "cloudrun": ("google.cloud.run_v2", "tests.contract.fakes.cloudrun", "FakeCloudRun"),
}


@pytest.fixture(scope="module")
def gcp_fakes():
    """A GCP target's fake, started the first time a test asks for it, stopped with the module."""
    import importlib

    started: dict[str, Any] = {}

    def fake(target: str):
        if target not in started:
            client, module, cls = GCP_FAKES[target]
            pytest.importorskip(client, reason=f"the gcp extra ({client}) is not installed")
            started[target] = getattr(importlib.import_module(module), cls)().start()
        return started[target]

    yield fake
    for server in started.values():
        server.stop()


@pytest.fixture
def backend(request, monkeypatch, bundle) -> Backend:
    monkeypatch.setenv("MLDEPLOY_POLL_SECONDS", "0.02")   # also for the SIGKILLed subprocesses
    monkeypatch.setenv("MLDEPLOY_AWS_MAX_ATTEMPTS", "2")
    from mldeploy import deploy

    monkeypatch.setattr(deploy, "RESTORE_BACKOFF", (0.05, 0.05, 0.05))
    target = request.param
    if target in ("sagemaker", "lambda"):
        pytest.importorskip("moto", reason="moto (the dev extra) is not installed")
        from mldeploy.deploy import aws as aws_module
        from mldeploy.deploy import lambda_, sagemaker

        monkeypatch.setattr(aws_module, "RETRIES", {"max_attempts": 2, "mode": "adaptive"})  # 3 attempts in all
        monkeypatch.setattr(lambda_, "POLL_SECONDS", 0.02)
        monkeypatch.setattr(sagemaker, "POLL_SECONDS", 0.02)
        aws = request.getfixturevalue("aws")
        return aws_backend(target, aws, request.getfixturevalue("moto_server")[1], bundle)
    from mldeploy.deploy import cloudrun, gcp

    fake = request.getfixturevalue("gcp_fakes")(target)
    monkeypatch.setenv("MLDEPLOY_GCP_API_ENDPOINT", fake.url)
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(gcp, "POLL_SECONDS", 0.02)
    monkeypatch.setattr(cloudrun, "POLL_SECONDS", 0.02)
    return vertex_backend(fake) if target == "vertex" else cloudrun_backend(fake)


@dataclass
class Row:
    target: str
    command: str
    call: str
    fault: str
    code: int
    one_line: bool
    harmed: str          # "" when what serves is as it should be
    rerun: str           # "" when the same command, run again, converged

    def text(self) -> str:
        return (f"{self.target:<9} {self.command:<13} {self.call[:58]:<58} {self.fault:<8} exit {self.code:>3}  "
                f"{'one line' if self.one_line else 'NOT ONE LINE'}  harmed: {self.harmed or 'no'}  "
                f"rerun: {self.rerun or 'ok'}")


class Runner:
    def __init__(self, backend: Backend, mldeploy, folder, bundle):
        self.b, self.mldeploy, self.folder, self.bundle = backend, mldeploy, folder, bundle
        (folder / "mldeploy.yaml").write_text(backend.config)

    def fresh(self, canary: bool) -> tuple[str, str]:
        """A clean account whose endpoint serves A (and B as a 10% canary where asked)."""
        a, b = self.b.reset()
        assert self.run(["deploy", "--image", a, "--stage", "production"])[0] == 0
        if canary:
            assert self.run(["deploy", "--image", b, "--stage", "canary", "--traffic", "10"])[0] == 0
        self.b.clear()
        return a, b

    def run(self, args: list[str], kill: bool = False) -> tuple[int, str]:
        args = [*args[:1], "--bundle", str(self.bundle), *args[1:]]
        if not kill:
            r = self.mldeploy(*args, cwd=self.folder)
            return r.code, r.err
        proc = subprocess.Popen([sys.executable, "-m", "mldeploy", *args], cwd=self.folder, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.b.faults.victim = proc.pid
        _, err = proc.communicate(timeout=300)
        self.b.faults.victim = None
        return proc.returncode, err

    def calls(self, command: str) -> list[tuple[str, int, bool]]:
        """The calls a clean run of the command makes while it changes things (from its first change to its
        last change or smoke request; the read-back after it cannot harm): (call, how many requests of it
        come before, whether it changes state)."""
        args, canary, _, _ = COMMANDS[command]
        _, b = self.fresh(canary)
        assert self.run(args + (["--image", b] if args[0] == "deploy" else []))[0] == 0
        requests = self.b.requests()
        changes = [i for i, (_, mutating, smoke) in enumerate(requests) if mutating or smoke]
        seen: dict[str, int] = {}
        calls: dict[str, tuple[int, bool]] = {}
        for i, (call, mutating, _) in enumerate(requests[:changes[-1] + 1]):
            if i >= changes[0] and call not in calls:
                calls[call] = (seen.get(call, 0), mutating)
            seen[call] = seen.get(call, 0) + 1
        return [(call, skip, mutating) for call, (skip, mutating) in calls.items()]


@pytest.mark.parametrize("backend", ["sagemaker", "lambda", "vertex", "cloudrun"], indirect=True)
def test_no_fault_harms_production_or_reports_success(backend, mldeploy, tmp_path, bundle):
    runner = Runner(backend, mldeploy, tmp_path, bundle)
    rows: list[Row] = []
    for command, (args, canary, after, share) in COMMANDS.items():
        for call, skip, mutating in runner.calls(command):
            # every fault at the calls that change things; a read that fails (for whatever reason: the
            # client sees an exception either way) is the 500 alone, which keeps the table minutes long
            for kind in ("500", "throttle", "drop", "kill") if mutating else ("500",):
                a, b = runner.fresh(canary)
                before, asked = (a, 90 if canary else 100), ({"a": a, "b": b}[after], share)
                image_args = args + (["--image", b] if args[0] == "deploy" else [])
                backend.faults.rules = {call: [kind, skip, 3]}  # fails 3 times (AWS: the SDK's attempts)
                try:
                    code, err = runner.run(image_args, kill=kind == "kill")
                finally:
                    backend.faults.rules = {}
                serves = backend.production()
                if code == 0:
                    harmed = "" if serves == asked else f"exit 0, but production is {serves}"
                elif serves is None:
                    harmed = "nothing serves"
                elif kind == "kill":  # nothing could restore: as it was, or as the command was making it
                    harmed = "" if serves[0] in (before[0], asked[0]) else f"production serves {serves[0][-8:]}"
                else:
                    harmed = "" if serves == before else f"production is {serves[0][-8:]} at {serves[1]}%"
                lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
                one_line = code in (0, -9) or (len(lines) == 1 and "internal error" not in err)
                rerun_code, rerun_err = runner.run(image_args)
                final = backend.production()
                converged = final == asked and (rerun_code == 0 or code == 0 or
                                                 (code == -9 and "no canary to" in rerun_err))
                rerun = "" if converged else f"exit {rerun_code}, serves {final}: {rerun_err.strip()[-200:]}"
                rows.append(Row(backend.target, command, call, kind, code, one_line, harmed, rerun))
    print("\n" + "\n".join(row.text() for row in rows))
    assert len({(r.command, r.call) for r in rows}) >= 5
    assert [r.text() for r in rows if r.code == 3] == []            # never "a bug in mldeploy"
    assert [r.text() for r in rows if r.harmed] == []               # no false success, no harm
    assert [r.text() for r in rows if not r.one_line] == []
    assert [r.text() for r in rows if r.rerun] == []
