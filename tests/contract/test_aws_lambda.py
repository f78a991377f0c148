"""`mldeploy deploy|promote|rollback|status --cloud aws --target lambda` against moto over HTTP.

Invoking an image function runs our own Lambda handler on the test bundle (tests/helpers/moto_lambda.py)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.helpers.aws import ROLE, ecr_image
from tests.helpers.need import need

need("moto", "the dev extra installs it")

import boto3  # noqa: E402

from tests.helpers import moto_lambda  # noqa: E402

FUNCTION = "classifier"


@pytest.fixture
def project(tmp_path, bundle, aws, monkeypatch):
    """A model repo configured for Lambda, the execution role, and two images in ECR."""
    from mldeploy.deploy import lambda_

    monkeypatch.setattr(lambda_, "POLL_SECONDS", 0.05)
    moto_lambda.reset(bundle)
    boto3.client("iam").create_role(RoleName=ROLE.rsplit("/", 1)[-1], AssumeRolePolicyDocument="{}")
    (tmp_path / "mldeploy.yaml").write_text(f"""
deploy:
  cloud: aws
  target: lambda
  endpoint: {FUNCTION}
  aws:
    role: {ROLE}
    lambda:
      memory_mb: 3008
      environment: {{MLDEPLOY_NONFINITE: reject}}
""")
    images = [ecr_image("models/classifier", c * 64) for c in "ab"]
    aws.requests.clear()
    return tmp_path, bundle, images


def deploy(mldeploy, project, image, *args):
    folder, bundle, _ = project
    return mldeploy("deploy", "--bundle", bundle, "--image", image, *args, cwd=folder)


def serving() -> dict[str, tuple[str, str, int]]:
    """What the alias live serves, read straight from the API: version -> (image, weight %)."""
    lam = boto3.client("lambda")
    alias = lam.get_alias(FunctionName=FUNCTION, Name="live")
    weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    share = {alias["FunctionVersion"]: 100 - round(100 * sum(weights.values())),
             **{v: round(100 * w) for v, w in weights.items()}}
    return {v: (lam.get_function(FunctionName=FUNCTION, Qualifier=v)["Code"]["ImageUri"], pct) for v, pct in share.items()}


def test_first_deploy_canary_rerun_promote_rollback(mldeploy, project, aws):
    folder, _, (a, b) = project
    r = deploy(mldeploy, project, a)
    assert r.code == 0, r.err
    assert "create lambda function classifier image" in r.out and "create lambda alias classifier:live" in r.out
    assert serving() == {"1": (a, 100)}
    lam = boto3.client("lambda")
    config = lam.get_function_configuration(FunctionName=FUNCTION, Qualifier="1")
    assert (config["PackageType"], config["MemorySize"], config["Role"]) == ("Image", 3008, ROLE)
    assert config["Environment"]["Variables"] == {"MLDEPLOY_NONFINITE": "reject"}
    assert config["Description"] == f"mldeploy slot=production image={a.split('@')[1]}"
    url = lam.get_function_url_config(FunctionName=FUNCTION, Qualifier="live")
    assert url["AuthType"] == "AWS_IAM"
    assert f"url: {url['FunctionUrl']}" in r.out and "production 100%  healthy" in r.out
    # the smoke request ran our handler on version 1 and was answered with probabilities
    assert [(v, image) for v, image, _ in moto_lambda.INVOCATIONS] == [("1", a)]

    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    assert lam.get_alias(FunctionName=FUNCTION, Name="live")["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.1}}
    assert serving() == {"1": (a, 90), "2": (b, 10)}
    assert moto_lambda.INVOCATIONS[-1][:2] == ("2", b)  # the new version, before it took traffic
    assert "production  90%" in r.out and "canary      10%" in r.out

    aws.requests.clear()
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "up to date, nothing to change" in r.out, r.out + r.err
    assert aws.mutating() == []  # a re-run changes nothing

    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "25")
    assert r.code == 0 and "update lambda alias classifier:live weights: {'2': 0.1} -> {'2': 0.25}" in r.out, r.out
    assert serving() == {"1": (a, 75), "2": (b, 25)}

    r = mldeploy("promote", cwd=folder)
    assert r.code == 0, r.err
    assert serving() == {"2": (b, 100)}
    assert lam.get_alias(FunctionName=FUNCTION, Name="live")["RoutingConfig"] == {"AdditionalVersionWeights": {}}

    assert deploy(mldeploy, project, a, "--stage", "canary", "--traffic", "30").code == 0
    assert serving() == {"2": (b, 70), "3": (a, 30)}
    r = mldeploy("rollback", cwd=folder)
    assert r.code == 0, r.err
    assert serving() == {"2": (b, 100)}
    r = mldeploy("status", cwd=folder)
    assert r.code == 0 and f"production 100%  healthy  {b}" in r.out and "canary" not in r.out

    # a production deploy of an image a version already runs with these settings reuses it
    aws.requests.clear()
    r = deploy(mldeploy, project, a, "--stage", "production")
    assert r.code == 0, r.err
    assert serving() == {"3": (a, 100)}
    assert not any(p.endswith("/versions") and m == "POST" for _, m, p in aws.requests)


def test_plan_calls_nothing_that_mutates(mldeploy, project, aws, tmp_path):
    _, _, (a, b) = project
    assert deploy(mldeploy, project, a).code == 0
    aws.requests.clear()
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10", "--plan", "--plan-out", tmp_path / "plan.json")
    assert r.code == 0, r.err
    assert aws.requests and aws.mutating() == []
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["traffic_before"] == {"production": 100} and plan["traffic_after"] == {"production": 90, "canary": 10}
    changes = {(c["action"], c["resource"], c["field"]) for c in plan["changes"]}
    assert {("update", "lambda function classifier", "image"), ("create", "lambda version classifier", "image"),
            ("update", "lambda alias classifier:live", "weights"),
            ("create", "cloudwatch alarm mldeploy-classifier-canary-5xx", "")} <= changes
    assert serving() == {"1": (a, 100)}


def test_settings_change_publishes_a_version_and_config_drives_url_and_concurrency(mldeploy, project, aws):
    folder, _, (a, _) = project
    assert deploy(mldeploy, project, a).code == 0
    (folder / "mldeploy.yaml").write_text((folder / "mldeploy.yaml").read_text().replace(
        "memory_mb: 3008", "memory_mb: 4096\n      url_auth: NONE\n      provisioned_concurrency: 2"))
    r = deploy(mldeploy, project, a, "--stage", "production")
    assert r.code == 0, r.err
    assert "update lambda function classifier memory: 3008 -> 4096" in r.out
    assert "create lambda provisioned-concurrency classifier:live environments = 2" in r.out
    assert serving() == {"2": (a, 100)}
    lam = boto3.client("lambda")
    assert lam.get_function_configuration(FunctionName=FUNCTION, Qualifier="2")["MemorySize"] == 4096
    assert lam.get_function_url_config(FunctionName=FUNCTION, Qualifier="live")["AuthType"] == "NONE"
    policy = json.loads(lam.get_policy(FunctionName=FUNCTION, Qualifier="live")["Policy"])
    # a public URL needs both statements since October 2025, InvokeFunction only through the URL
    assert {s["Sid"]: s["Action"] for s in policy["Statement"] if s["Principal"] == "*"} == {
        "mldeploy-public-url": "lambda:InvokeFunctionUrl", "mldeploy-public-invoke": "lambda:InvokeFunction"}
    invoke = next(s for s in policy["Statement"] if s["Sid"] == "mldeploy-public-invoke")
    assert invoke["InvokedViaFunctionUrl"] is True  # never public through the Invoke API (moto keeps the request field)
    assert moto_lambda.PROVISIONED == {(FUNCTION, "live"): 2}
    aws.requests.clear()
    assert "up to date" in deploy(mldeploy, project, a, "--stage", "production").out and aws.mutating() == []


def test_a_failing_smoke_never_takes_traffic(mldeploy, project):
    _, _, (a, b) = project
    assert deploy(mldeploy, project, a).code == 0
    moto_lambda.FAILING_IMAGES.add(b)
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    assert r.code == 1, r.out
    assert "the smoke request to version 2 failed: the function raised (Unhandled)" in r.err
    assert "rolled back: it never took traffic, live serves as before (production v1 100%)" in r.err
    assert serving() == {"1": (a, 100)}
    assert boto3.client("lambda").get_alias(FunctionName=FUNCTION, Name="live")["RoutingConfig"] in (
        None, {"AdditionalVersionWeights": {}})


def test_a_model_that_refuses_the_smoke_request_fails_the_deploy(mldeploy, project, monkeypatch):
    _, _, (a, _) = project
    # the smoke body no longer fits the model's signature: the handler answers {"status": 400, ...}
    monkeypatch.setattr("mldeploy.deploy.smoke_body", lambda signature: {"inputs": {"wrong": [[0]]}})
    r = deploy(mldeploy, project, a)
    assert r.code == 1 and "the smoke request to version 1 was answered 400" in r.err, r.err
    assert "nothing serves classifier yet" in r.err
    lam = boto3.client("lambda")
    assert lam.list_aliases(FunctionName=FUNCTION)["Aliases"] == []


def test_an_alarm_during_the_bake_rolls_the_canary_back(mldeploy, project, monkeypatch):
    _, _, (a, b) = project
    monkeypatch.setenv("MLDEPLOY_DEPLOY__AWS__BAKE_SECONDS", "3")
    assert deploy(mldeploy, project, a).code == 0
    alarm = "mldeploy-classifier-canary-5xx"

    def fire():  # the canary starts failing once it takes traffic
        cw = boto3.client("cloudwatch")
        for _ in range(200):
            if cw.describe_alarms(AlarmNames=[alarm])["MetricAlarms"]:
                cw.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="errors from the canary")
                return
            time.sleep(0.02)

    thread = threading.Thread(target=fire)
    thread.start()
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    thread.join()
    assert r.code == 1 and f"the alarm {alarm} went to ALARM" in r.err and "rolled back" in r.err, r.err
    assert serving() == {"1": (a, 100)}
    (five,) = boto3.client("cloudwatch").describe_alarms(AlarmNames=[alarm])["MetricAlarms"]
    assert (five["Namespace"], five["MetricName"], five["Statistic"]) == ("AWS/Lambda", "Errors", "Sum")
    assert {d["Name"]: d["Value"] for d in five["Dimensions"]} == {
        "FunctionName": FUNCTION, "Resource": f"{FUNCTION}:live", "ExecutedVersion": "2"}


def test_one_canary_at_a_time(mldeploy, project):
    folder, _, (a, b) = project
    c = ecr_image("models/classifier", "c" * 64)
    assert deploy(mldeploy, project, a).code == 0
    assert deploy(mldeploy, project, b, "--pr", "12", "--traffic", "10").code == 0
    r = deploy(mldeploy, project, c, "--pr", "13", "--traffic", "20")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "PR 12's canary (version 2, 10%) holds the canary weight of classifier:live" in r.err
    assert "mldeploy rollback --pr 12" in r.err
    assert serving() == {"1": (a, 90), "2": (b, 10)}
    # PR 12 pushes again: its own canary is replaced
    assert deploy(mldeploy, project, c, "--pr", "12", "--traffic", "10").code == 0
    assert serving() == {"1": (a, 90), "3": (c, 10)}
    assert "canary-pr12  10%  healthy" in mldeploy("status", cwd=folder).out
    r = mldeploy("promote", "--pr", "13", cwd=folder)
    assert r.code == 2 and "no canary for PR 13" in r.err
    assert mldeploy("promote", "--pr", "12", cwd=folder).code == 0
    assert serving() == {"3": (c, 100)}


@pytest.mark.parametrize("case, args, message", [
    ("no role", [], "deploy.aws.role is not set"),
    ("image not in ECR", ["--image", "123456789012.dkr.ecr.us-east-1.amazonaws.com/models/classifier@sha256:" + "9" * 64],
     "is not in ECR"),
    ("image in another region", ["--image", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/models/classifier@sha256:"
                                 + "9" * 64], "Lambda runs images from its own region"),
    ("promote with no canary", None, "classifier has no canary to promote"),
    ("rollback with no canary", None, "classifier has no canary to roll back"),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(mldeploy, project, aws, case, args, message):
    folder, bundle, (a, _) = project
    if case == "no role":
        (folder / "mldeploy.yaml").write_text((folder / "mldeploy.yaml").read_text().replace(f"role: {ROLE}", "role: null"))
    if args is None:
        assert deploy(mldeploy, project, a).code == 0
        aws.requests.clear()
        r = mldeploy(case.split()[0], cwd=folder)
    else:
        aws.requests.clear()
        r = mldeploy("deploy", "--bundle", bundle, *(args if "--image" in args else ["--image", a, *args]), cwd=folder)
    assert r.code == 2, (case, r.out, r.err)
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert message in r.err, r.err
    assert aws.mutating() == []


def test_status_before_any_deploy_and_doctor(mldeploy, project):
    folder = project[0]
    r = mldeploy("status", cwd=folder)
    assert r.code == 0 and "endpoint: classifier  url: -" in r.out
    r = mldeploy("doctor", cwd=folder)
    assert r.code == 0 and "ok    lambda:ListFunctions: allowed" in r.out, r.out


def test_an_environment_value_change_is_planned_by_name_never_hidden_as_no_change(mldeploy, project, aws):
    """Values may be secrets, so the plan shows names: a change of value alone (the same names) is named
    as such, and applied, never read as `[names] -> [the same names]` and left out as no change."""
    folder, _, (a, _) = project
    assert deploy(mldeploy, project, a).code == 0
    (folder / "mldeploy.yaml").write_text((folder / "mldeploy.yaml").read_text().replace(
        "MLDEPLOY_NONFINITE: reject", "MLDEPLOY_NONFINITE: allow"))
    r = deploy(mldeploy, project, a, "--stage", "production")
    assert r.code == 0, r.err
    assert "update lambda function classifier environment values of MLDEPLOY_NONFINITE" in r.out, r.out
    assert "reject" not in r.out  # a value itself is never shown
    lam = boto3.client("lambda")
    config = lam.get_function_configuration(FunctionName=FUNCTION, Qualifier=serving().popitem()[0])
    assert config["Environment"]["Variables"]["MLDEPLOY_NONFINITE"] == "allow"


def test_storage_mode_hands_the_artifact_over_in_the_environment(project, aws, tmp_path, monkeypatch):
    """image.model: storage: a version's environment names the artifact (MLDEPLOY_MODEL_URI + _SHA256); the
    handler downloads it from S3 and verifies it at init (the smoke request runs it); a model-only change
    publishes a new version, and the re-run reuses it."""
    from mldeploy.bundle import Bundle
    from mldeploy.deploy import smoke_body
    from mldeploy.deploy.base import model_from_env
    from tests.helpers.storage_mode import deploys_a_model_only_change, two_models

    folder, bundle, (a, _b) = project
    cache = tmp_path / "cache"
    monkeypatch.setenv("MLDEPLOY_MODEL_CACHE", str(cache))  # the handler's download folder (Lambda: /tmp)
    boto3.client("s3").create_bucket(Bucket="acme-models")
    models = two_models(bundle, tmp_path, "s3://acme-models/models")
    lam = boto3.client("lambda")

    def served():
        alias = lam.get_alias(FunctionName=FUNCTION, Name="live")
        env = lam.get_function(FunctionName=FUNCTION, Qualifier=alias["FunctionVersion"])["Configuration"]
        assert env["Environment"]["Variables"]["MLDEPLOY_NONFINITE"] == "reject"  # the config's own are kept
        return {"production": model_from_env(env["Environment"]["Variables"])}

    deploys_a_model_only_change(folder, a, models, served, smoke=smoke_body(Bundle.open(bundle).signature))
    assert sorted(p.name for p in cache.iterdir()) == sorted(m.sha256 for m in models)  # each one downloaded
