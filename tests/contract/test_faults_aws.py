"""Fault injection on AWS (SageMaker and Lambda, over HTTP against moto): production is never harmed and
never misreported.

For each command (a canary deploy, promote, rollback) the mutating calls a clean run makes are recorded;
then, for every one of them and every fault - the API answering 500, throttling, the connection dropping,
the process SIGKILLed just before the call - the command runs against an endpoint serving A (and a canary
B where the command needs one) with that call failing, and again with no fault. Each row of the printed
table says: the exit code, whether production was harmed (not serving A, or what the command was asked to
make it, at its share), whether the failure was one line, and whether the rerun converged.
"""

from __future__ import annotations

import pytest

pytest.importorskip("moto", reason="moto (the dev extra) is not installed")

import subprocess
import sys
import urllib.request
from dataclasses import dataclass

import boto3

from tests.contract import moto_lambda, moto_patches
from tests.contract.conftest import ROLE, ecr_image

pytestmark = [pytest.mark.slow]
ENDPOINT = "classifier"
KINDS = ("500", "throttle", "drop", "kill")
COMMANDS = {  # command -> (its arguments, needs a canary first, production's image after it, its share after)
    "deploy canary": (["deploy", "--stage", "canary", "--traffic", "10"], False, "a", 90),
    "promote": (["promote"], True, "b", 100),
    "rollback": (["rollback"], True, "a", 100),
}


def sagemaker_production() -> tuple[str, int] | None:
    sm = boto3.client("sagemaker")
    try:
        ep = sm.describe_endpoint(EndpointName=ENDPOINT)
    except sm.exceptions.ClientError:
        return None
    config = sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
    weights = {v["VariantName"]: v.get("CurrentWeight") or 0.0 for v in ep["ProductionVariants"]}
    for v in config["ProductionVariants"]:
        if v["VariantName"] == "production" and ep["EndpointStatus"] == "InService":
            image = sm.describe_model(ModelName=v["ModelName"])["PrimaryContainer"]["Image"]
            return image, round(100 * weights["production"] / sum(weights.values()))
    return None


def lambda_production() -> tuple[str, int] | None:
    lam = boto3.client("lambda")
    try:
        alias = lam.get_alias(FunctionName=ENDPOINT, Name="live")
    except lam.exceptions.ResourceNotFoundException:
        return None
    weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    image = lam.get_function(FunctionName=ENDPOINT, Qualifier=alias["FunctionVersion"])["Code"]["ImageUri"]
    return image, 100 - round(100 * sum(weights.values()))


TARGETS = {"sagemaker": sagemaker_production, "lambda": lambda_production}


@dataclass
class Row:
    target: str
    command: str
    call: str
    fault: str
    code: int
    one_line: bool
    harmed: str          # "" when production serves as it should
    rerun: str           # "" when the same command, run again, converged

    def text(self) -> str:
        return (f"{self.target:<9} {self.command:<13} {self.call[:44]:<44} {self.fault:<8} exit {self.code:>3}  "
                f"{'one line' if self.one_line else 'NOT ONE LINE'}  harmed: {self.harmed or 'no'}  "
                f"rerun: {self.rerun or 'ok'}")


class Endpoint:
    """A fresh account with the endpoint serving A in production (and B as a canary where asked)."""

    def __init__(self, target: str, aws, moto_url: str, mldeploy, folder, bundle):
        self.target, self.aws, self.url, self.mldeploy, self.folder, self.bundle = \
            target, aws, moto_url, mldeploy, folder, bundle
        (folder / "mldeploy.yaml").write_text(f"deploy:\n  cloud: aws\n  target: {target}\n  endpoint: {ENDPOINT}\n"
                                              f"  aws:\n    role: {ROLE}\n")

    def fresh(self, canary: bool) -> tuple[str, str]:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10).read()
        moto_patches.reset()
        moto_lambda.reset(self.bundle)
        boto3.client("iam").create_role(RoleName=ROLE.rsplit("/", 1)[-1], AssumeRolePolicyDocument="{}")
        a, b = (ecr_image("models/classifier", c * 64) for c in "ab")
        assert self.run(["deploy", "--image", a, "--stage", "production"])[0] == 0
        if canary:
            assert self.run(["deploy", "--image", b, "--stage", "canary", "--traffic", "10"])[0] == 0
        self.aws.requests.clear()
        return a, b

    def run(self, args: list[str], kill: bool = False) -> tuple[int, str]:
        args = [*args[:1], "--bundle", str(self.bundle), *args[1:]]
        if not kill:
            r = self.mldeploy(*args, cwd=self.folder)
            return r.code, r.err
        proc = subprocess.Popen([sys.executable, "-m", "mldeploy", *args], cwd=self.folder, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.aws.victim = proc.pid
        _, err = proc.communicate(timeout=300)
        self.aws.victim = None
        return proc.returncode, err

    def calls(self, command: str) -> list[tuple[str, int, bool]]:
        """The calls a clean run of the command makes while it changes things (from its first change to
        its last change or smoke request; the read-back after it cannot harm): (call, how many requests of
        it come before, mutating)."""
        args, canary, _, _ = COMMANDS[command]
        _, b = self.fresh(canary)
        assert self.run(args + (["--image", b] if args[0] == "deploy" else []))[0] == 0
        requests, mutating = self.aws.requests, set(self.aws.mutating())
        changes = [i for i, r in enumerate(requests) if r in mutating or r[2].endswith("/invocations")]
        seen: dict[str, int] = {}
        calls: dict[str, tuple[int, bool]] = {}
        for i, request in enumerate(requests[:changes[-1] + 1]):
            label = request[0] or f"{request[1]} {request[2]}"
            if i >= changes[0] and label not in calls:
                calls[label] = (seen.get(label, 0), request in mutating)
            seen[label] = seen.get(label, 0) + 1
        return [(label, skip, changing) for label, (skip, changing) in calls.items()]


@pytest.mark.parametrize("target", TARGETS)
def test_no_fault_harms_production_or_reports_success(target, aws, moto_server, mldeploy, tmp_path, bundle,
                                                      monkeypatch):
    from mldeploy.deploy import aws as aws_module
    from mldeploy.deploy import lambda_

    monkeypatch.setattr(aws_module, "RETRIES", {"max_attempts": 2, "mode": "adaptive"})  # 3 attempts in all
    monkeypatch.setenv("MLDEPLOY_AWS_MAX_ATTEMPTS", "2")        # (and in the killed subprocess)
    monkeypatch.setenv("MLDEPLOY_POLL_SECONDS", "0.05")
    monkeypatch.setattr(lambda_, "POLL_SECONDS", 0.05)
    endpoint = Endpoint(target, aws, moto_server[1], mldeploy, tmp_path, bundle)
    production = TARGETS[target]
    rows: list[Row] = []
    for command, (args, canary, after, share) in COMMANDS.items():
        for call, skip, mutating in endpoint.calls(command):
            for kind in KINDS if mutating else ("500", "drop"):  # a SIGKILL matters between two changes
                a, b = endpoint.fresh(canary)
                image_args = args + (["--image", b] if args[0] == "deploy" else [])
                aws.faults = {call: [kind, skip, 3]}  # fails 3 times (the SDK's attempts), then answers
                try:
                    code, err = endpoint.run(image_args, kill=kind == "kill")
                finally:
                    aws.faults = {}
                serves = production()
                before_share = 90 if canary else 100
                # killed, nothing can restore: production may already be what the command was making it
                allowed = {a, {"a": a, "b": b}[after]} if kind == "kill" else {a}
                if serves is None:
                    harmed = "nothing serves"
                elif serves[0] not in allowed:
                    harmed = f"production serves {serves[0][-8:]}"
                elif kind != "kill" and serves[1] != before_share:
                    harmed = f"production takes {serves[1]}%, not {before_share}%"
                else:
                    harmed = ""
                lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
                one_line = kind == "kill" or (len(lines) == 1 and "internal error" not in err)
                rerun_code, rerun_err = endpoint.run(image_args)
                final = production()
                rerun = "" if rerun_code == 0 and final == ({"a": a, "b": b}[after], share) else \
                    f"exit {rerun_code}, serves {final}: {rerun_err.strip()[-200:]}"
                rows.append(Row(target, command, call, kind, code, one_line, harmed, rerun))
    print("\n" + "\n".join(row.text() for row in rows))
    assert len({(r.command, r.call) for r in rows}) >= 5
    assert [r.text() for r in rows if r.code == 0] == []            # no false success
    assert [r.text() for r in rows if r.code == 3] == []            # never "a bug in mldeploy"
    assert [r.text() for r in rows if r.harmed] == []
    assert [r.text() for r in rows if not r.one_line] == []
    assert [r.text() for r in rows if r.rerun] == []
