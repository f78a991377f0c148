"""`mldeploy deploy|promote|rollback|status|doctor` with `target: ecs` against moto over HTTP.

moto stores ECS services and ALB rules but runs nothing: tests/helpers/moto_ecs.py imitates ECS's
deployments (rollout states, the circuit breaker's rollback, running tasks with their digests) and
stands in for the ALB's forwarding, so the smoke request goes through the listener's rules as moto
stores them."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest

from tests.helpers.aws import ACCOUNT, REGION, ROLE, ecr_image
from tests.helpers.aws_ecs import (
    CLUSTER,
    EXECUTION,
    capacity_provider,
    config,
    header_rules,
    platform_image,
    serving,
    setup,
)
from tests.helpers.cli import one_line
from tests.helpers.need import need

need("moto", "the dev extra installs it")

import boto3  # noqa: E402

from tests.helpers import moto_ecs  # noqa: E402  (patches moto's ECS on import)


@pytest.fixture
def project(tmp_path, bundle, aws, monkeypatch):
    """A model repo configured for ECS, the cluster, roles and network it names, a stand-in ALB, two images."""
    from mldeploy.deploy import ecs

    monkeypatch.setattr(ecs, "POLL_SECONDS", 0.01)
    # moto's ECR has no registry endpoint: reading an image's platform fails at once (and is not judged),
    # where in CI the ECR host's real name would reach AWS
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    net = setup()
    alb = moto_ecs.Alb(ACCOUNT, REGION, net["listener"])
    (tmp_path / "mldeploy.yaml").write_text(config(net, alb.url))
    images = [ecr_image("models/classifier", c * 64) for c in "abc"]
    aws.requests.clear()
    yield tmp_path, bundle, images, net
    alb.close()


def deploy(mldeploy, project, image, *args):
    folder, bundle, _, _ = project
    return mldeploy("deploy", "--bundle", bundle, "--image", image, *args, cwd=folder)


def test_first_deploy_canary_two_prs_promote_rollback(mldeploy, project, aws):
    folder, _, (a, b, c), net = project
    r = deploy(mldeploy, project, a)
    assert r.code == 0, r.err
    assert serving(net) == {"production": (a, 100)}
    assert header_rules(net) == {"production": "classifier-production"}
    assert [("production", a.split("@")[1])] == moto_ecs.HITS  # the smoke went through the slot's own rule
    ecs = boto3.client("ecs")
    svc = ecs.describe_services(cluster=CLUSTER, services=["classifier-production"])["services"][0]
    assert svc["deploymentConfiguration"]["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
    assert svc["launchType"] == "FARGATE"
    td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
    container = td["containerDefinitions"][0]
    assert (td["cpu"], td["memory"], td["taskRoleArn"], td["executionRoleArn"]) == ("512", "1024", ROLE, EXECUTION)
    assert container["environment"] == [{"name": "MLDEPLOY_NONFINITE", "value": "reject"}]
    assert container["logConfiguration"]["options"]["awslogs-group"] == "/mldeploy/classifier"
    assert "/v2/health/ready" in " ".join(container["healthCheck"]["command"])
    group = boto3.client("elbv2").describe_target_groups(Names=["classifier-production"])["TargetGroups"][0]
    assert (group["HealthCheckPath"], group["TargetType"], group["Port"]) == ("/v2/health/ready", "ip", 8080)
    assert "production 100%  healthy" in r.out

    aws.requests.clear()
    r = deploy(mldeploy, project, a, "--stage", "production")
    assert r.code == 0 and "up to date" in r.out, r.out + r.err
    assert aws.mutating() == []  # a re-run changes nothing

    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    assert serving(net) == {"production": (a, 90), "canary": (b, 10)}
    assert moto_ecs.HITS[-1] == ("canary", b.split("@")[1])

    # two pull requests' canaries side by side, each with its own header rule
    for pr, image in ((1, c), (2, a)):
        r = deploy(mldeploy, project, image, "--stage", "canary", "--traffic", "5", "--pr", str(pr))
        assert r.code == 0, r.err
    assert serving(net) == {"production": (a, 80), "canary": (b, 10), "canary-pr1": (c, 5), "canary-pr2": (a, 5)}
    assert header_rules(net)["canary-pr1"] == "classifier-canary-pr1"
    r = mldeploy("rollback", "--pr", "2", cwd=folder)
    assert r.code == 0, r.err
    assert serving(net) == {"production": (a, 85), "canary": (b, 10), "canary-pr1": (c, 5)}
    assert ecs.describe_services(cluster=CLUSTER, services=["classifier-canary-pr2"])["services"][0]["status"] != "ACTIVE"
    assert "canary-pr2" not in header_rules(net)

    r = mldeploy("promote", "--pr", "1", cwd=folder)
    assert r.code == 0, r.err
    assert serving(net) == {"production": (c, 100)}
    assert set(header_rules(net)) == {"production"}

    assert deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "30").code == 0
    r = mldeploy("rollback", cwd=folder)
    assert r.code == 0, r.err
    assert serving(net) == {"production": (c, 100)}
    r = mldeploy("status", cwd=folder)
    assert r.code == 0 and f"production 100%  healthy  {c}" in r.out and "canary" not in r.out


def test_a_rollout_the_circuit_breaker_rolls_back_is_a_failure(mldeploy, project):
    """ECS rolls the service back and is steady again on the old task definition: the false success
    that amazon-ecs-deploy-task-definition reported. The deployment we started is no longer PRIMARY."""
    _, _, (a, b, _), net = project
    assert deploy(mldeploy, project, a).code == 0
    moto_ecs.FAILING_IMAGES.add(b)
    r = deploy(mldeploy, project, b, "--stage", "production")
    assert r.code == 1, r.out + r.err
    assert "failed and ECS rolled the service back (ECS deployment circuit breaker: tasks failed to start.)" in r.err
    assert "rolled back: the listener serves as before (production 100%)" in r.err
    assert serving(net) == {"production": (a, 100)}


def test_an_image_without_the_tasks_platform_is_one_line_exit_2(mldeploy, project):
    """An arm64-only image (built on an Apple silicon Mac) for x86_64 tasks: ECS's pull fails, the tasks
    stop saying which platform the image lacks, the circuit breaker rolls the service back. The kit
    says so in one line naming that platform, and production keeps serving."""
    _, _, (a, b, _), net = project
    assert deploy(mldeploy, project, a).code == 0
    moto_ecs.PLATFORMS[b] = "linux/arm64"
    r = deploy(mldeploy, project, b, "--stage", "production")
    assert r.code == 2 and one_line(r), r.out + r.err
    assert f"the image {b} has no linux/amd64 build" in r.err and "architecture X86_64" in r.err, r.err
    assert "rolled back: the listener serves as before (production 100%)" in r.err
    assert serving(net) == {"production": (a, 100)}


def test_an_image_built_for_another_platform_is_refused_before_anything_changes(mldeploy, project, aws, docker_env,
                                                                                monkeypatch):
    """The image's platform, read from its registry (a real arm64 image in the local registry: one
    manifest with its config blob, or an index), against the task definition's: refused by the plan,
    not when ECS's tasks fail to pull it. The same image deploys once the architecture matches."""
    _, _, (a, _, _), net = project
    registry = docker_env["MLDEPLOY_IMAGE__REGISTRY"]
    amd64 = platform_image(registry, "mldeploy-test/platforms", "amd64")
    arm64, arm64_index = (platform_image(registry, "mldeploy-test/platforms", "arm64", index=i) for i in (False, True))
    r = deploy(mldeploy, project, amd64)
    assert r.code == 0 and "Image platform: linux/amd64 (linux/amd64 in the registry)" in r.out, r.out + r.err
    for image in (arm64, arm64_index):
        aws.requests.clear()
        r = deploy(mldeploy, project, image, "--stage", "canary", "--traffic", "10")
        assert r.code == 2 and one_line(r) and aws.mutating() == [], r.out + r.err
        assert (f"the image {image} is built for linux/arm64, but the task definition runs linux/amd64 "
                "(deploy.aws.ecs.architecture X86_64)") in r.err and "architecture: ARM64" in r.err, r.err
        assert serving(net) == {"production": (amd64, 100)}
    monkeypatch.setenv("MLDEPLOY_DEPLOY__AWS__ECS__ARCHITECTURE", "ARM64")
    r = deploy(mldeploy, project, arm64_index, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "Image platform: linux/arm64" in r.out, r.out + r.err
    assert serving(net) == {"production": (amd64, 90), "canary": (arm64_index, 10)}
    r = deploy(mldeploy, project, a, "--stage", "canary", "--traffic", "10")  # moto's ECR: no registry to read
    assert r.code == 0 and "Image platform not checked: " in r.out, r.out + r.err


def test_a_task_size_no_instance_has_room_for_is_one_line_exit_2(mldeploy, project, monkeypatch):
    """An EC2 capacity provider whose largest free instance has 4 GiB, and a task of 8 GiB: ECS never
    places it and keeps saying so in the service's events. Refused at the first such event."""
    folder, _, (a, b, _), net = project
    text = (folder / "mldeploy.yaml").read_text()
    (folder / "mldeploy.yaml").write_text(text.replace("      cpu: 512\n", "      cpu: 512\n      capacity_provider: models-ec2\n"))
    capacity_provider("models-ec2")
    assert deploy(mldeploy, project, a).code == 0
    moto_ecs.ROOM.update(cpu=2048, memory=4096)
    monkeypatch.setenv("MLDEPLOY_DEPLOY__AWS__ECS__MEMORY", "8192")
    monkeypatch.setenv("MLDEPLOY_DEPLOY__AWS__WAIT_SECONDS", "10")  # without the check: the timeout's exit 1
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    assert r.code == 2 and one_line(r), r.out + r.err
    assert ("no container instance of the cluster models has the memory for a task of cpu 512 and memory 8192 MiB "
            "(deploy.aws.ecs, capacity provider models-ec2)") in r.err, r.err
    assert "classifier-canary was removed" in r.err and serving(net) == {"production": (a, 100)}


def test_a_failing_smoke_request_never_takes_traffic(mldeploy, project):
    _, _, (a, b, _), net = project
    assert deploy(mldeploy, project, a).code == 0
    moto_ecs.FAILING_SMOKE.add(b)
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "20")
    assert r.code == 1 and one_line(r), r.err
    assert "the smoke request to canary" in r.err and "answered 500" in r.err and "classifier-canary was removed" in r.err
    assert serving(net) == {"production": (a, 100)}
    assert set(header_rules(net)) == {"production"}
    assert boto3.client("elbv2").describe_target_groups()["TargetGroups"][0]["TargetGroupName"] == "classifier-production"
    assert len(boto3.client("elbv2").describe_target_groups()["TargetGroups"]) == 1


def test_plan_calls_nothing_that_mutates(mldeploy, project, aws, tmp_path):
    _, _, (a, b, _), net = project
    assert deploy(mldeploy, project, a).code == 0
    aws.requests.clear()
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10", "--plan", "--plan-out", tmp_path / "p.json")
    assert r.code == 0, r.err
    assert aws.requests and aws.mutating() == []
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["traffic_after"] == {"production": 90, "canary": 10}
    changes = {(c["action"], c["resource"]) for c in plan["changes"]}
    assert {("create", "ecs task definition mldeploy-classifier"), ("create", "ecs service classifier-canary"),
            ("create", "elbv2 target group classifier-canary"), ("update", "elbv2 listener rule (weighted)")} <= changes
    assert serving(net) == {"production": (a, 100)}


@pytest.mark.parametrize("case", ["untrusted task role", "subnets of another vpc", "fargate size"])
def test_bad_input_is_one_line_exit_2_and_production_keeps_serving(mldeploy, project, aws, case):
    folder, _, (a, b, _), net = project
    assert deploy(mldeploy, project, a).code == 0
    text = (folder / "mldeploy.yaml").read_text()
    if case == "untrusted task role":
        boto3.client("iam").update_assume_role_policy(RoleName=ROLE.rsplit("/", 1)[-1], PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                                     "Action": "sts:AssumeRole"}]}))
        message = "ECS cannot assume the task role (deploy.aws.role)"
    elif case == "subnets of another vpc":
        (folder / "mldeploy.yaml").write_text(text.replace(net["subnets"][0], net["stray"]))
        message = f"but the subnets {net['stray']}"
    else:
        (folder / "mldeploy.yaml").write_text(text.replace("memory: 1024", "memory: 8192"))
        message = "Fargate has no task size of cpu 512 with memory 8192 MiB"
    aws.requests.clear()
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    assert r.code == 2 and one_line(r) and message in r.err, r.err
    assert aws.mutating() == []
    assert serving(net) == {"production": (a, 100)}


def test_autoscaling_canary_metrics_monitor_and_doctor(mldeploy, project, tmp_path):
    folder, _, (a, b, _), net = project
    (folder / "mldeploy.yaml").write_text((folder / "mldeploy.yaml").read_text() + """      autoscaling_max: 4
      autoscaling_metric: requests
      autoscaling_target: 500
""")
    assert deploy(mldeploy, project, a).code == 0
    assert deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10").code == 0
    aas = boto3.client("application-autoscaling")
    targets = {t["ResourceId"]: (t["MinCapacity"], t["MaxCapacity"])
               for t in aas.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"]}
    assert targets == {"service/models/classifier-production": (1, 4), "service/models/classifier-canary": (1, 4)}
    policy = aas.describe_scaling_policies(ServiceNamespace="ecs", ResourceId="service/models/classifier-canary")
    spec = policy["ScalingPolicies"][0]["TargetTrackingScalingPolicyConfiguration"]
    assert spec["TargetValue"] == 500 and spec["PredefinedMetricSpecification"]["PredefinedMetricType"] == \
        "ALBRequestCountPerTarget"
    assert spec["PredefinedMetricSpecification"]["ResourceLabel"].endswith(
        boto3.client("elbv2").describe_target_groups(Names=["classifier-canary"])["TargetGroups"][0]
        ["TargetGroupArn"].split(":", 5)[5])

    # canary analysis reads each slot's target group from CloudWatch
    cw = boto3.client("cloudwatch")
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    lb = net["lb"].split(":loadbalancer/", 1)[1]
    for slot, requests, errors in (("production", 900, 1), ("canary", 100, 9)):
        tg = boto3.client("elbv2").describe_target_groups(Names=[f"classifier-{slot}"])["TargetGroups"][0]
        dims = [{"Name": "TargetGroup", "Value": tg["TargetGroupArn"].split(":", 5)[5]}, {"Name": "LoadBalancer", "Value": lb}]
        cw.put_metric_data(Namespace="AWS/ApplicationELB", MetricData=[
            {"MetricName": "RequestCount", "Dimensions": dims, "Value": requests, "Timestamp": when},
            {"MetricName": "HTTPCode_Target_5XX_Count", "Dimensions": dims, "Value": errors, "Timestamp": when},
            {"MetricName": "TargetResponseTime", "Dimensions": dims, "Value": 0.05, "Timestamp": when}])
    out = tmp_path / "analysis.json"
    r = mldeploy("canary", "analyze", "--window", "600", "--json", out, cwd=folder)
    found = json.loads(out.read_text())
    assert r.code == 1 and found["decision"] == "rollback", (r.err, found)  # 9% errors against 0.1%
    assert (found["slots"]["production"]["requests"], found["slots"]["production"]["errors"]) == (900, 1)
    assert (found["slots"]["canary"]["requests"], found["slots"]["canary"]["errors"]) == (100, 9)
    assert found["slots"]["canary"]["p99_ms"] == pytest.approx(50.0)  # TargetResponseTime is in seconds

    r = mldeploy("monitor", "setup", "--plan", cwd=folder)
    assert r.code == 0, r.err

    r = mldeploy("doctor", cwd=folder)
    assert "ecs:ListClusters" in r.out and "models in " + net["vpc"] in r.out, r.out
    assert "both roles trust ecs-tasks.amazonaws.com" in r.out


def test_an_alarm_during_the_bake_rolls_the_canary_back(mldeploy, project, monkeypatch):
    _, _, (a, b, _), net = project
    # the bake is long enough for the thread below to see the canary serving and raise the alarm on a
    # busy machine (it ends as soon as the alarm is seen, so a passing run does not wait it out)
    monkeypatch.setenv("MLDEPLOY_DEPLOY__AWS__BAKE_SECONDS", "30")
    assert deploy(mldeploy, project, a).code == 0
    alarm = "mldeploy-classifier-canary-5xx"

    def fire():  # the canary's target group starts answering 5xx once it takes traffic
        cw = boto3.client("cloudwatch")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if serving(net).get("canary"):
                cw.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="5xx from the canary")
                return
            time.sleep(0.01)

    thread = threading.Thread(target=fire)
    thread.start()
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10")
    thread.join()
    assert r.code == 1 and f"the alarm {alarm} went to ALARM" in r.err and "rolled back" in r.err, r.err
    assert serving(net) == {"production": (a, 100)}
    (five,) = boto3.client("cloudwatch").describe_alarms(AlarmNames=[alarm])["MetricAlarms"]
    assert (five["Namespace"], five["MetricName"], five["Statistic"]) == ("AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", "Sum")
    assert {d["Name"] for d in five["Dimensions"]} == {"TargetGroup", "LoadBalancer"}
    assert "targetgroup/classifier-canary/" in next(d["Value"] for d in five["Dimensions"] if d["Name"] == "TargetGroup")


def test_an_ec2_capacity_provider_deploys_ec2_tasks(mldeploy, project, aws, tmp_path):
    """deploy.aws.ecs.capacity_provider: the services run on it (a capacity provider strategy, no Fargate
    launch type) and the task definitions are EC2's (awsvpc, the one network mode behind an ip target group).
    A provider the cluster is not associated with is refused by the plan, before ECS refuses the service."""
    folder, _, (a, b, _), net = project
    text = (folder / "mldeploy.yaml").read_text()
    (folder / "mldeploy.yaml").write_text(text.replace("      cpu: 512\n", "      cpu: 512\n      capacity_provider: models-ec2\n"))
    capacity_provider("models-ec2", associate=False)
    aws.requests.clear()
    r = deploy(mldeploy, project, a)
    assert r.code == 2 and one_line(r) and aws.mutating() == [], r.err
    assert "the capacity provider models-ec2 (deploy.aws.ecs.capacity_provider) is not associated with the cluster " \
           "models (it has none)" in r.err, r.err
    boto3.client("ecs").put_cluster_capacity_providers(cluster=CLUSTER, capacityProviders=["models-ec2"],
                                                       defaultCapacityProviderStrategy=[])
    assert deploy(mldeploy, project, a).code == 0
    r = deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10", "--plan", "--plan-out", tmp_path / "p.json")
    assert r.code == 0 and serving(net) == {"production": (a, 100)}, r.err
    assert ("create", "ecs service classifier-canary") in {(c["action"], c["resource"])
                                                           for c in json.loads((tmp_path / "p.json").read_text())["changes"]}
    assert deploy(mldeploy, project, b, "--stage", "canary", "--traffic", "10").code == 0
    assert serving(net) == {"production": (a, 90), "canary": (b, 10)}
    ecs = boto3.client("ecs")
    for svc in ecs.describe_services(cluster=CLUSTER, services=["classifier-production", "classifier-canary"])["services"]:
        assert [(s["capacityProvider"], s["weight"]) for s in svc["capacityProviderStrategy"]] == [("models-ec2", 1)]
        assert "launchType" not in svc and svc["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == net["subnets"]
        td = ecs.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
        assert (td["requiresCompatibilities"], td["networkMode"], td["cpu"], td["memory"]) == (["EC2"], "awsvpc", "512", "1024")


def test_storage_mode_names_the_artifact_in_the_task_definition(mldeploy, project, tmp_path):
    """image.model: storage: the task definition's container gets MLDEPLOY_MODEL_URI + _SHA256 (the server
    downloads it with the task role); a model-only change registers a new task definition, rolled out;
    a promote of a (baked) canary of production's own image moves the canary's task definition."""
    from mldeploy.deploy.base import model_from_env
    from tests.helpers.storage_mode import deploys_a_model_only_change, two_models

    folder, bundle, (a, _b, _c), _net = project
    models = two_models(bundle, tmp_path, "s3://acme-models/models", publish=False)  # the tasks read it, not us
    ecs = boto3.client("ecs")

    def served():
        found = {}
        for svc in ecs.list_services(cluster=CLUSTER)["serviceArns"]:
            (s,) = ecs.describe_services(cluster=CLUSTER, services=[svc])["services"]
            if s["status"] == "ACTIVE":
                (container,) = ecs.describe_task_definition(taskDefinition=s["taskDefinition"])["taskDefinition"][
                    "containerDefinitions"]
                found[svc.rsplit("-", 1)[-1]] = model_from_env({e["name"]: e["value"] for e in container["environment"]})
        return found

    deploys_a_model_only_change(folder, a, models, served)
    assert deploy(mldeploy, project, a, "--stage", "canary", "--traffic", "10").code == 0  # baked, same image
    r = mldeploy("promote", cwd=folder)
    assert r.code == 0 and served() == {"production": None}, r.out  # the canary's baked task definition
