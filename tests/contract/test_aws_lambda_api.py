"""The API Gateway front of a Lambda target (deploy.aws.lambda.api_gateway) against moto over HTTP.

moto stores REST APIs, stages, usage plans and keys but enforces neither keys nor throttling, so a
request without a key is asserted on the method's configuration (apiKeyRequired), as API Gateway
reads it."""

from __future__ import annotations

import json

import pytest

from tests.contract import test_aws_lambda
from tests.contract.test_aws_lambda import FUNCTION, deploy
from tests.helpers.cli import one_line
from tests.helpers.need import need

need("moto", "the dev extra installs it")

import boto3  # noqa: E402

API = f"mldeploy-{FUNCTION}"
FRONT = """      api_gateway:
        api_keys: [partner-a]
        key_secret: partner-b-key
        key_name: partner-b
        throttle_rate: 5
        throttle_burst: 10
        quota_limit: 1000
"""
SECRET = "k3y-value-never-printed-0123456789"
project = pytest.fixture(test_aws_lambda.project.__wrapped__)  # the Lambda tests' project, as this module's fixture


def front() -> dict:
    """The REST API's wiring, read straight from the APIs."""
    api = boto3.client("apigateway")
    rest = next(a for a in api.get_rest_apis()["items"] if a["name"] == API)
    proxy = next(r for r in api.get_resources(restApiId=rest["id"])["items"] if r.get("pathPart") == "{proxy+}")
    method = api.get_method(restApiId=rest["id"], resourceId=proxy["id"], httpMethod="ANY")
    plan = next(p for p in api.get_usage_plans()["items"] if p["name"] == API)
    keys = {k["name"]: api.get_api_key(apiKey=k["id"], includeValue=True)["value"]
            for k in api.get_usage_plan_keys(usagePlanId=plan["id"])["items"]}
    return {"id": rest["id"], "key_required": method["apiKeyRequired"],
            "uri": method["methodIntegration"]["uri"], "type": method["methodIntegration"]["type"],
            "stages": {s["stageName"]: s["variables"]["alias"] for s in api.get_stages(restApiId=rest["id"])["item"]},
            "throttle": plan["throttle"], "quota": plan.get("quota"),
            "plan_stages": sorted(s["stage"] for s in plan["apiStages"]), "keys": keys}


def invokers(qualifier: str) -> set[str]:
    policy = json.loads(boto3.client("lambda").get_policy(FunctionName=FUNCTION, Qualifier=qualifier)["Policy"])
    return {s["Principal"]["Service"] for s in policy["Statement"] if s["Sid"] == "mldeploy-apigateway"}


def test_stages_keys_usage_plan_and_permissions_follow_the_slots(mldeploy, project, aws):
    folder, _, (a, b) = project
    (folder / "mldeploy.yaml").write_text((folder / "mldeploy.yaml").read_text() + FRONT)
    boto3.client("secretsmanager").create_secret(Name="partner-b-key", SecretString=SECRET)
    r = deploy(mldeploy, project, a)
    assert r.code == 0, r.err
    assert SECRET not in r.out + r.err
    got = front()
    assert got["key_required"] and got["type"] == "AWS_PROXY"
    assert got["uri"].endswith(f"function:{FUNCTION}:${{stageVariables.alias}}/invocations")
    assert got["stages"] == {"production": "live"} and got["plan_stages"] == ["production"]
    assert got["throttle"] == {"rateLimit": 5.0, "burstLimit": 10} and got["quota"]["limit"] == 1000
    assert set(got["keys"]) == {"partner-a", "partner-b"} and got["keys"]["partner-b"] == SECRET
    assert invokers("live") == {"apigateway.amazonaws.com"}

    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10", "--plan")
    assert r.code == 0 and "create apigateway stage mldeploy-classifier/canary alias" in r.out, r.out
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    got = front()
    assert got["stages"] == {"production": "live", "canary": "2"} and got["plan_stages"] == ["canary", "production"]
    assert invokers("2") == {"apigateway.amazonaws.com"}
    from mldeploy.config import load_config
    from mldeploy.deploy import target_for

    status = target_for(load_config(folder / "mldeploy.yaml", environ={}), FUNCTION).status().to_dict()
    assert status["api_gateway"]["stages"] == {"production": "live", "canary": "2"}  # status reads the wiring back
    assert status["api_gateway"]["keys"] == ["partner-a", "partner-b"] and SECRET not in json.dumps(status)

    aws.requests.clear()
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "up to date" in r.out, r.out  # a re-run changes nothing
    assert aws.mutating() == []

    assert mldeploy("promote", cwd=folder).code == 0
    got = front()
    assert got["stages"] == {"production": "live"} and got["plan_stages"] == ["production"]


def test_a_key_in_another_usage_plan_is_refused(mldeploy, project, aws):
    folder, _, (a, _) = project
    (folder / "mldeploy.yaml").write_text((folder / "mldeploy.yaml").read_text() + FRONT)
    boto3.client("secretsmanager").create_secret(Name="partner-b-key", SecretString=SECRET)
    api = boto3.client("apigateway")
    plan = api.create_usage_plan(name="someone-elses")["id"]
    key = api.create_api_key(name="partner-a", enabled=True)["id"]
    api.create_usage_plan_key(usagePlanId=plan, keyId=key, keyType="API_KEY")
    aws.requests.clear()
    r = deploy(mldeploy, project, a)
    assert r.code == 2 and one_line(r), r.err
    assert "the API key partner-a is in another usage plan (someone-elses)" in r.err
    assert aws.mutating() == []
