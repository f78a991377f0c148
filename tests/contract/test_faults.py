"""Fault injection over HTTP: production is never harmed and never misreported, on SageMaker, Lambda and
ECS (moto), Vertex AI, Cloud Run, Azure ML, Azure Container Apps and Kubernetes (the fakes in fakes/).

For each command (a canary deploy, promote, rollback) the calls a clean run makes while it changes
things are recorded; then, for every one of them and a fault (fakes/faults.py: the API answering 500,
throttling, the connection dropping, the process SIGKILLed just before the call; every one of them with
MLDEPLOY_FAULTS=all, else the next in turn), the command runs against an endpoint serving A (and a
canary B where the command needs one) with that call failing, and again with no fault. A canary deploy
also meets its new slot failing the cloud's own way (never healthy, a failing smoke request). Each row
of the printed table says the exit code, whether the failure was one line, whether production was
harmed, and whether the rerun converged. The invariant: a command that exits 0 left what it was asked
for; one that fails left production as it was (a killed one: as it was, or as the command was making
it), never anything else. A second test races two deploys on one endpoint.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.helpers.aws import ROLE, ecr_image
from tests.helpers.azure_ml import RG, SUB, WS
from tests.helpers.need import need

pytestmark = [pytest.mark.slow]
TARGETS = ["sagemaker", "lambda", "ecs", "vertex", "cloudrun", "azureml", "containerapps", "kubernetes",
           "kubernetes-replicas"]   # (deploy.kubernetes.traffic: replicas: the Service over the slots' ready pods)
KINDS = ("500", "throttle", "drop", "kill")
FULL = os.environ.get("MLDEPLOY_FAULTS") == "all"
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
    reset: Callable[[], tuple[str, str, str]]           # a clean account; the images A, B and C
    serving: Callable[[], dict[str, tuple[str, int]]]   # slot -> (image, share), each slot taking traffic
    requests: Callable[[], list[tuple[str, bool, bool]]]  # so far: (call, changes state, a smoke request)
    clear: Callable[[], None]
    faults: Any                                         # fakes.faults.Faults
    breaks: dict[str, Callable[[str], None]]            # a slot fault -> what makes an image fail that way
    read_faults: tuple[str, ...] = tuple(COMMANDS)      # the commands whose reads fail too (ecs: the deploy's
                                                        # alone; promote and rollback read through the same code)
    commands: tuple[str, ...] = tuple(COMMANDS)         # the commands tabled (a variant of a target: those whose
                                                        # path differs from the target's own rows)
    reads: tuple[str, ...] | None = None                # the reads that fail and race (None: every one)
    covered: dict[str, tuple[str, ...]] = field(default_factory=dict)  # command -> its changes whose code
                                                        # another command's rows run (no fault there)

    def production(self) -> tuple[str, int] | None:
        return self.serving().get("production")

    def meets(self, command: str, call: str, mutating: bool) -> bool:
        """Whether a fault or a race is made at this call of the command (every change but those `covered`;
        the reads in `reads`); MLDEPLOY_FAULTS=all: every call."""
        if FULL:
            return True
        if mutating:
            return call not in self.covered.get(command, ())
        return self.reads is None or call in self.reads


def aws_backend(target: str, aws, url: str, bundle) -> Backend:
    import boto3

    from tests.helpers import moto_lambda, moto_patches

    def reset() -> tuple[str, str, str]:
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).read()
        moto_patches.reset()
        moto_lambda.reset(bundle)
        boto3.client("iam").create_role(RoleName=ROLE.rsplit("/", 1)[-1], AssumeRolePolicyDocument="{}")
        a, b, c = (ecr_image("models/classifier", c * 64) for c in "abc")
        return a, b, c

    def sagemaker() -> dict[str, tuple[str, int]]:
        sm = boto3.client("sagemaker")
        try:
            ep = sm.describe_endpoint(EndpointName=ENDPOINT)
        except sm.exceptions.ClientError:
            return {}
        if ep["EndpointStatus"] != "InService":
            return {}
        config = sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
        weights = {v["VariantName"]: v.get("CurrentWeight") or 0.0 for v in ep["ProductionVariants"]}
        return {v["VariantName"]: (sm.describe_model(ModelName=v["ModelName"])["PrimaryContainer"]["Image"],
                                   round(100 * weights[v["VariantName"]] / sum(weights.values())))
                for v in config["ProductionVariants"] if weights.get(v["VariantName"])}

    def lambda_() -> dict[str, tuple[str, int]]:
        lam = boto3.client("lambda")
        try:
            alias = lam.get_alias(FunctionName=ENDPOINT, Name="live")
        except lam.exceptions.ResourceNotFoundException:
            return {}
        weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}

        def image(version: str) -> str:
            return lam.get_function(FunctionName=ENDPOINT, Qualifier=version)["Code"]["ImageUri"]

        return {"production": (image(alias["FunctionVersion"]), 100 - round(100 * sum(weights.values()))),
                **{f"canary v{v}": (image(v), round(100 * w)) for v, w in weights.items() if w}}

    def requests() -> list[tuple[str, bool, bool]]:
        mutating = set(aws.mutating())
        return [(op or f"{method} {path}", (op, method, path) in mutating, path.endswith("/invocations"))
                for op, method, path in aws.requests]

    breaks = {"never healthy": moto_patches.FAILING_IMAGES.add} if target == "sagemaker" else \
        {"never healthy": moto_lambda.FAILED_IMAGES.add, "smoke fails": moto_lambda.FAILING_IMAGES.add}
    return Backend(target, f"deploy:\n  cloud: aws\n  target: {target}\n  endpoint: {ENDPOINT}\n"
                           f"  aws:\n    role: {ROLE}\n", reset, sagemaker if target == "sagemaker" else lambda_,
                   requests, aws.requests.clear, aws.faults, breaks)


def ecs_backend(aws, url: str, folder, request) -> Backend:

    from tests.helpers import aws_ecs, moto_ecs, moto_patches
    from tests.helpers.aws import ACCOUNT, REGION

    alb = moto_ecs.Alb(ACCOUNT, REGION)  # in front of whichever listener the account has now
    request.addfinalizer(alb.close)

    def reset() -> tuple[str, str, str]:  # the listener's ARN is new after every reset: so is the config
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).read()
        moto_patches.reset()
        (folder / "mldeploy.yaml").write_text(aws_ecs.config(aws_ecs.setup(stray=False), alb.url))
        a, b, c = (ecr_image("models/classifier", c * 64) for c in "abc")
        return a, b, c

    def requests() -> list[tuple[str, bool, bool]]:  # the smoke request goes to the stand-in ALB, not to moto
        mutating = set(aws.mutating())
        return [(op or f"{method} {path}", (op, method, path) in mutating, False) for op, method, path in aws.requests]

    # moto's ECR has no registry endpoint: the image's platform is not read (its ECR host never reaches AWS)
    request.getfixturevalue("monkeypatch").setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    # the reads on a path of their own: the rollout's poll (a race there: ECS rolled another deployment),
    # the running tasks' digests (a race: another image) and the guard's read before the weights move (a
    # race within it: read again). The others fail through the same retries and restore as these and
    # race between the same two changes as a kept row (DescribeRules, DescribeTasks, DescribeAlarms,
    # DescribeTaskDefinition). A rollback's removal of the canary (DeleteRule, DeleteService,
    # DeleteTargetGroup, DeleteAlarms) is the promote's _retire, whose rows meet all four faults
    return Backend("ecs", "", reset, aws_ecs.serving, requests, aws.requests.clear, aws.faults,
                   {"never healthy": moto_ecs.FAILING_IMAGES.add, "smoke fails": moto_ecs.FAILING_SMOKE.add},
                   read_faults=("deploy canary",), reads=("DescribeServices", "ListTasks", "DescribeTags"),
                   covered={"rollback": ("DeleteRule", "DeleteService", "DeleteTargetGroup", "DeleteAlarms")})


def images_in(repository: str) -> tuple[str, str, str]:
    """The images A, B and C, by digest, as a fake registry needs none pushed."""
    a, b, c = (f"{repository}@sha256:{c * 64}" for c in "abc")
    return a, b, c


def vertex_backend(fake) -> Backend:
    repository = "europe-docker.pkg.dev/acme-ml/models/classifier"

    def reset() -> tuple[str, str, str]:
        fake.reset()
        return images_in(repository)

    def serving() -> dict[str, tuple[str, int]]:  # mid-promote two models are "production": each with its share
        ep = fake.endpoint(ENDPOINT) or {}
        split = ep.get("trafficSplit", {})
        found = sorted((int(split.get(d["id"], 0)), d["displayName"], fake.image_of(d["model"]))
                       for d in ep.get("deployedModels", []))
        return {slot: (image, pct) for pct, slot, image in found if pct}

    def requests() -> list[tuple[str, bool, bool]]:
        mutating = set(fake.mutating())
        return [(f"{method} {path}", (method, path, query) in mutating, path.endswith((":predict", ":rawPredict")))
                for method, path, query in fake.requests]

    return Backend("vertex", f"deploy:\n  cloud: gcp\n  target: vertex\n  endpoint: {ENDPOINT}\n"
                             "  region: europe-west4\n  gcp:\n    project: acme-ml\n", reset, serving, requests,
                   lambda: fake.requests.clear(), fake.faults,
                   {"never healthy": lambda i: fake.fail_deploy_images.add(i),  # its deployModel LRO fails
                    "smoke fails": lambda i: fake.failing_images.add(i)})


def cloudrun_backend(fake) -> Backend:
    repository = "europe-west1-docker.pkg.dev/acme-ml/models/classifier"

    def reset() -> tuple[str, str, str]:
        fake.reset()
        return images_in(repository)

    def serving() -> dict[str, tuple[str, int]]:
        try:
            return {slot: got for slot, got in fake.serving(ENDPOINT).items() if got[1]}
        except StopIteration:  # no service yet
            return {}

    def requests() -> list[tuple[str, bool, bool]]:
        mutating = set(fake.mutating())
        return [(f"{method} {path}", (method, path) in mutating, path.startswith("/run/"))
                for method, path in fake.requests]

    return Backend("cloudrun", f"deploy:\n  cloud: gcp\n  target: cloudrun\n  endpoint: {ENDPOINT}\n"
                               "  region: europe-west1\n  gcp:\n    project: acme-ml\n", reset, serving,
                   requests, lambda: fake.requests.clear(), fake.faults,  # reset() makes new lists
                   {"never healthy": lambda i: fake.failing_images.add(i),
                    "smoke fails": lambda i: fake.failing_smoke.add(i)})


def azureml_backend(arm) -> Backend:
    from tests.helpers.fakes.azureml import call_of

    repository = "acme.azurecr.io/models/classifier"

    def reset() -> tuple[str, str, str]:
        arm.reset()
        return images_in(repository)

    def serving() -> dict[str, tuple[str, int]]:  # deployments are named <slot>-<digest8>
        try:
            found = arm.serving(ENDPOINT)
        except KeyError:  # no endpoint
            return {}
        return {name.rsplit("-", 1)[0]: got for name, got in found.items() if name != "mirror" and got[1]}

    def requests() -> list[tuple[str, bool, bool]]:
        mutating = set(arm.mutating())
        return [(call_of(method, path), (method, host, path) in mutating, path.endswith("/score"))
                for method, host, path in arm.requests]

    return Backend("azureml", f"deploy:\n  cloud: azure\n  target: azureml\n  endpoint: {ENDPOINT}\n  azure:\n"
                              f"    subscription_id: \"{SUB}\"\n    resource_group: {RG}\n    workspace: {WS}\n",
                   reset, serving, requests, lambda: arm.requests.clear(), arm.faults,
                   {"never healthy": arm.failing_images.add, "smoke fails": arm.failing_scores.add})


def containerapps_backend(fake) -> Backend:
    from tests.helpers.azure_containerapps import CONFIG
    from tests.helpers.fakes.azureml import call_of

    def reset() -> tuple[str, str, str]:
        fake.reset()
        return images_in("acme.azurecr.io/models/classifier")

    def serving() -> dict[str, tuple[str, int]]:  # slots are the app's labels
        try:
            found = fake.serving(ENDPOINT)
        except KeyError:  # no app
            return {}
        return {label: got for label, got in found.items() if got[1]}

    def requests() -> list[tuple[str, bool, bool]]:
        mutating = set(fake.mutating())
        return [(call_of(method, path), (method, host, path) in mutating, path == "/predict")
                for method, host, path in fake.requests]

    return Backend("containerapps", CONFIG, reset, serving, requests, lambda: fake.requests.clear(), fake.faults,
                   {"never healthy": fake.failing_images.add, "smoke fails": fake.failing_smoke.add})


def kubernetes_backend(fake, replicas: bool) -> Backend:
    from tests.helpers.kubernetes import CONFIG, REPLICAS_CONFIG

    def reset() -> tuple[str, str, str]:
        fake.reset()
        fake.gateway_api = not replicas   # (replicas: the mode of a cluster without the Gateway API)
        return images_in("registry.example.com/models/classifier")

    def serving() -> dict[str, tuple[str, int]]:  # the HTTPRoute's weighted slots and their Deployments' images;
        if replicas:                              # replicas: the slots' shares of the ready pods the Service selects
            return fake.spread(ENDPOINT)
        return {slot: got for slot, got in fake.serving(ENDPOINT).items() if got[1]}

    def requests() -> list[tuple[str, bool, bool]]:
        mutating = set(fake.mutating())
        return [(f"{method} {path}", (method, path) in mutating, "/proxy/" in path and path.endswith("/predict"))
                for method, path in fake.requests]

    # replicas: a canary deploy (its staging, the front Service) and a promote (the retired slot deleted before
    # the front changes, restored on failure); its rollback takes the promote's path. Its reads that fail and race
    # are the read-back of the shares (the Service, the Deployments' ready counts); the rollout's poll and the
    # pods' digests are the gateway rows' code, and so is the removal of the canary's -next copy once the shares
    # were read back (gateway removes its own there)
    nexts = {f"DELETE {path}/{ENDPOINT}-canary-next" for path in (
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets", "/api/v1/namespaces/default/services",
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers", "/apis/apps/v1/namespaces/default/deployments")}
    return Backend("kubernetes-replicas" if replicas else "kubernetes", REPLICAS_CONFIG if replicas else CONFIG, reset,
                   serving, requests, lambda: fake.requests.clear(), fake.faults,
                   {"never healthy": lambda i: fake.never_available.add(i),
                    "smoke fails": lambda i: fake.failing_smoke.add(i)},
                   read_faults=("deploy canary",) if replicas else tuple(COMMANDS),
                   commands=("deploy canary", "promote") if replicas else tuple(COMMANDS),
                   reads=(f"GET /api/v1/namespaces/default/services/{ENDPOINT}",
                          "GET /apis/apps/v1/namespaces/default/deployments") if replicas else None,
                   covered={"deploy canary": tuple(sorted(nexts))} if replicas else {})


GCP_FAKES = {  # target -> (the client its fake needs, the fake's module and class)
    "vertex": ("google.cloud.aiplatform_v1", "tests.helpers.fakes.vertex", "FakeVertex"),
    "cloudrun": ("google.cloud.run_v2", "tests.helpers.fakes.cloudrun", "FakeCloudRun"),
}


@pytest.fixture(scope="module")
def gcp_fakes():
    """A GCP target's fake, started the first time a test asks for it, stopped with the module."""
    import importlib

    started: dict[str, Any] = {}

    def fake(target: str):
        if target not in started:
            client, module, cls = GCP_FAKES[target]
            need(client, "the gcp extra installs it")
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
    if target in ("sagemaker", "lambda", "ecs"):
        need("moto", "the dev extra installs it")
        from mldeploy.clouds import aws as aws_module  # where client() reads RETRIES
        from mldeploy.deploy import ecs, lambda_, sagemaker

        monkeypatch.setattr(aws_module, "RETRIES", {"max_attempts": 2, "mode": "adaptive"})  # 3 attempts in all
        monkeypatch.setattr(lambda_, "POLL_SECONDS", 0.02)
        monkeypatch.setattr(sagemaker, "POLL_SECONDS", 0.02)
        monkeypatch.setattr(ecs, "POLL_SECONDS", 0.02)
        aws = request.getfixturevalue("aws")
        if target == "ecs":
            return ecs_backend(aws, request.getfixturevalue("moto_server")[1], request.getfixturevalue("tmp_path"),
                               request)
        return aws_backend(target, aws, request.getfixturevalue("moto_server")[1], bundle)
    if target == "azureml":
        need("azure.ai.ml", "the azure extra installs it")
        need("azure.identity", "the azure extra installs it")
        from mldeploy.deploy import azure

        monkeypatch.setenv("MLDEPLOY_AZURE_MAX_RETRIES", "2")
        monkeypatch.setattr(azure, "RETRIES", {"retry_total": 2, "retry_backoff_factor": 0.01})
        return azureml_backend(request.getfixturevalue("azure"))
    if target == "containerapps":
        need("azure.mgmt.appcontainers", "the azure extra installs it")
        from mldeploy.deploy import azure

        monkeypatch.setenv("MLDEPLOY_AZURE_MAX_RETRIES", "2")
        monkeypatch.setattr(azure, "RETRIES", {"retry_total": 2, "retry_backoff_factor": 0.01})
        return containerapps_backend(request.getfixturevalue("containerapps"))
    if target in ("kubernetes", "kubernetes-replicas"):
        need("kubernetes", "the kubernetes extra installs the client")
        return kubernetes_backend(request.getfixturevalue("kube"), target == "kubernetes-replicas")
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
        if backend.config:  # "": the backend writes it on reset
            (folder / "mldeploy.yaml").write_text(backend.config)

    def fresh(self, canary: bool) -> tuple[str, str, str]:
        """A clean account whose endpoint serves A (and B as a 10% canary where asked); the images A, B, C."""
        a, b, c = self.b.reset()
        assert self.run(["deploy", "--image", a, "--stage", "production"])[0] == 0
        if canary:
            assert self.run(["deploy", "--image", b, "--stage", "canary", "--traffic", "10"])[0] == 0
        self.b.clear()
        return a, b, c

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
        _, b, _ = self.fresh(canary)
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


@pytest.mark.parametrize("backend", TARGETS, indirect=True)
def test_no_fault_harms_production_or_reports_success(backend, mldeploy, tmp_path, bundle):
    runner = Runner(backend, mldeploy, tmp_path, bundle)
    rows: list[Row] = []
    turn = itertools.count()
    for command, (args, canary, after, share) in COMMANDS.items():
        if command not in backend.commands:
            continue
        for call, skip, mutating in runner.calls(command):
            # at a call that changes things, every fault with MLDEPLOY_FAULTS=all, else the next in turn (each
            # call meets one, each command all four); a read that fails (the client sees an exception either
            # way) is the 500 alone. That keeps CI's table minutes long.
            kinds = KINDS if FULL else (KINDS[next(turn) % len(KINDS)],)
            if not backend.meets(command, call, mutating):
                continue
            for kind in kinds if mutating else ("500",) if command in backend.read_faults else ():
                a, b, _ = runner.fresh(canary)
                before, asked = (a, 90 if canary else 100), ({"a": a, "b": b}[after], share)
                image_args = args + (["--image", b] if args[0] == "deploy" else [])
                backend.faults.rules = {call: [kind, skip, 3]}  # fails 3 times (AWS: the SDK's attempts)
                try:
                    code, err = runner.run(image_args, kill=kind == "kill")
                finally:
                    rule, backend.faults.rules = backend.faults.rules[call], {}
                assert rule[2] < 3, f"{backend.target} {command}: {call} was never made, so never failed: {err[-600:]}"
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
                one_line = code in (0, -9) or (len(lines) == 1 and "a bug in mldeploy" not in err)
                rerun_code, rerun_err = runner.run(image_args)
                final = backend.production()
                converged = final == asked and (rerun_code == 0 or code == 0 or
                                                 (code == -9 and "no canary to" in rerun_err))
                rerun = "" if converged else f"exit {rerun_code}, serves {final}: {rerun_err.strip()[-200:]}"
                rows.append(Row(backend.target, command, call, kind, code, one_line, harmed, rerun))
    for fault, break_image in backend.breaks.items():  # the new slot itself fails: its cloud's own signal
        a, b, c = runner.fresh(False)
        break_image(b)
        code, err = runner.run(["deploy", "--image", b, "--stage", "canary", "--traffic", "10"])
        serves = backend.serving()
        lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
        # a fixed image, over whatever the failure left: its leftovers must not stand in the way
        rerun_code, rerun_err = runner.run(["deploy", "--image", c, "--stage", "canary", "--traffic", "10"])
        converged = rerun_code == 0 and set(backend.serving().values()) == {(a, 90), (c, 10)}
        rows.append(Row(backend.target, "deploy canary", "(the new slot)", fault, code,
                        code != 0 and len(lines) == 1 and "a bug in mldeploy" not in err,
                        "" if serves == {"production": (a, 100)} else f"it serves {serves}",
                        "" if converged else f"exit {rerun_code}: {rerun_err.strip()[-200:]}"))
    print("\n" + "\n".join(row.text() for row in rows))
    assert len({(r.command, r.call) for r in rows}) >= 5
    assert [r.text() for r in rows if r.code == 3] == []            # never "a bug in mldeploy"
    assert [r.text() for r in rows if r.harmed] == []               # no false success, no harm
    assert [r.text() for r in rows if not r.one_line] == []
    assert [r.text() for r in rows if r.rerun] == []


@pytest.mark.parametrize("backend", TARGETS, indirect=True)
def test_two_deploys_at_once_leave_what_one_of_them_asked(backend, mldeploy, tmp_path, bundle):
    """Two canary deploys at once (two pull requests): just before each call the first makes while it
    changes things, the second runs to its end. The endpoint is then what one of them asked, never a mix
    (a canary at 0%, two canaries, the second's canary restored away), and the first exits 0 only when it
    is its own: it ran last, or the second refused (one line: another command is changing it). A first
    that failed says so in one line, and run again it converges."""
    runner = Runner(backend, mldeploy, tmp_path, bundle)
    rows = []
    for call, skip, mutating in runner.calls("deploy canary"):
        if not backend.meets("deploy canary", call, mutating):
            continue
        a, b, c = runner.fresh(False)
        first_asked, second_asked = {(a, 90), (b, 10)}, {(a, 80), (c, 20)}
        second: list[tuple[int, str]] = []
        backend.faults.race = lambda second=second, c=c: second.append(
            runner.run(["deploy", "--image", c, "--stage", "canary", "--traffic", "20"]))
        backend.faults.rules = {call: ["race", skip, 1]}
        first = ["deploy", "--image", b, "--stage", "canary", "--traffic", "10"]
        try:
            code, err = runner.run(first)
        finally:
            rule, backend.faults.rules, backend.faults.race = backend.faults.rules[call], {}, None
        serves = set(backend.serving().values())
        wrong = []
        # a second that finds traffic moving under it (traffic: replicas: the first's canary pods joining the
        # Service as they become ready) refuses in one line, and then the first's deploy stands
        refused = bool(second) and second[0][0] == 1 and "another command" in second[0][1] and \
            len([ln for ln in second[0][1].splitlines() if ln.startswith("error:")]) == 1
        if rule[2]:
            wrong.append("the call was never made: no race")
        elif not second or (second[0][0] != 0 and not refused):
            wrong.append(f"the second deploy failed: {second and second[0][1].strip()[-200:]}")
        elif refused and code != 0:
            wrong.append(f"the second refused, and the first failed too: {err.strip()[-200:]}")
        if serves != (first_asked if code == 0 else second_asked):
            wrong.append(f"exit {code}, and it serves {sorted(serves)}")
        if code != 0 and (code == 3 or len([ln for ln in err.splitlines() if ln.startswith("error:")]) != 1):
            wrong.append(f"exit {code} without one line: {err.strip()[-300:]}")
        if code != 0 and (runner.run(first)[0] != 0 or set(backend.serving().values()) != first_asked):
            wrong.append(f"run again it serves {sorted(backend.serving().values())}")
        rows.append(f"{backend.target:<9} race before {call[:58]:<58} exit {code:>2}  "
                    f"{'; '.join(wrong) or 'ok'}  {err.strip().splitlines()[-1][:150] if code else ''}")
    print("\n" + "\n".join(rows))
    assert len(rows) >= 3
    assert [r for r in rows if " ok " not in r and not r.rstrip().endswith("ok")] == []
