"""An ECS target's world in moto: the roles, the cluster and the network docs/targets/ecs.md has the user make."""

from __future__ import annotations

import json

from tests.helpers.aws import ACCOUNT, REGION, ROLE

ENDPOINT, CLUSTER = "classifier", "models"
EXECUTION = f"arn:aws:iam::{ACCOUNT}:role/mldeploy-ecs-execution"
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


def setup(stray: bool = True) -> dict[str, str]:
    """The task and execution roles (trusting ECS tasks), the cluster, and network()."""
    import boto3

    from tests.helpers import moto_ecs

    moto_ecs.reset()
    iam = boto3.client("iam")
    for role in (ROLE, EXECUTION):
        iam.create_role(RoleName=role.rsplit("/", 1)[-1], AssumeRolePolicyDocument=TRUST)
    boto3.client("ecs").create_cluster(clusterName=CLUSTER)
    return network(stray)


def platform_image(registry: str, name: str, architecture: str, index: bool = False) -> str:
    """Push a real image of one platform to a registry over its HTTP API (an OCI manifest, a config blob
    saying the architecture, one empty layer), or an OCI index listing it; returns registry/name@digest.
    Nothing ever runs it, so no emulation is needed."""
    import gzip
    import hashlib
    import io
    import tarfile
    import urllib.request

    def put(kind: str, body: bytes, media: str = "", ref: str = "") -> str:
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        if kind == "blobs":
            start = urllib.request.Request(f"http://{registry}/v2/{name}/blobs/uploads/", method="POST")
            with urllib.request.urlopen(start, timeout=10) as r:
                location = r.headers["Location"]
            url = f"{location}{'&' if '?' in location else '?'}digest={digest}"
            url = url if url.startswith("http") else f"http://{registry}{url}"
            request = urllib.request.Request(url, data=body, method="PUT",
                                             headers={"Content-Type": "application/octet-stream"})
        else:
            request = urllib.request.Request(f"http://{registry}/v2/{name}/manifests/{ref or digest}", data=body,
                                             method="PUT", headers={"Content-Type": media})
        urllib.request.urlopen(request, timeout=10).read()
        return digest

    tar = io.BytesIO()
    tarfile.open(fileobj=tar, mode="w").close()
    layer = gzip.compress(tar.getvalue(), mtime=0)
    config = json.dumps({"architecture": architecture, "os": "linux", "config": {}, "rootfs": {
        "type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar.getvalue()).hexdigest()}"]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                                      "digest": put("blobs", config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": len(layer),
                                       "digest": put("blobs", layer)}]}).encode()
    digest = put("manifests", manifest, "application/vnd.oci.image.manifest.v1+json")
    if index:
        listing = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                              "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                             "size": len(manifest), "digest": digest,
                                             "platform": {"architecture": architecture, "os": "linux"}}]}).encode()
        digest = put("manifests", listing, "application/vnd.oci.image.index.v1+json")
    return f"{registry}/{name}@{digest}"


def capacity_provider(name: str, associate: bool = True) -> None:
    """An EC2 capacity provider over an Auto Scaling group, associated with the cluster (or not)."""
    import boto3

    ecs = boto3.client("ecs")
    ecs.create_capacity_provider(name=name, autoScalingGroupProvider={"autoScalingGroupArn": (
        f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:1a2b3c4d:autoScalingGroupName/{name}")})
    if associate:
        ecs.put_cluster_capacity_providers(cluster=CLUSTER, capacityProviders=[name], defaultCapacityProviderStrategy=[])


def network(stray: bool = True) -> dict[str, str]:
    """A VPC with two subnets, an ALB and an HTTP listener; a subnet of another VPC ("stray") if asked."""
    import boto3

    ec2, elb = boto3.client("ec2"), boto3.client("elbv2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{z}")["Subnet"]["SubnetId"]
               for i, z in enumerate("ab")]
    sg = ec2.create_security_group(GroupName="tasks", Description="tasks", VpcId=vpc)["GroupId"]
    lb = elb.create_load_balancer(Name="models", Subnets=subnets, SecurityGroups=[sg], Type="application")
    lb_arn = lb["LoadBalancers"][0]["LoadBalancerArn"]
    listener = elb.create_listener(LoadBalancerArn=lb_arn, Protocol="HTTP", Port=80, DefaultActions=[
        {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}])["Listeners"][0]["ListenerArn"]
    found = {"vpc": vpc, "subnets": subnets, "sg": sg, "listener": listener, "lb": lb_arn}
    if stray:
        other = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
        found["stray"] = ec2.create_subnet(VpcId=other, CidrBlock="10.1.0.0/24")["Subnet"]["SubnetId"]
    return found


def config(net: dict[str, str], url: str, extra: str = "") -> str:
    return f"""
deploy:
  cloud: aws
  target: ecs
  endpoint: {ENDPOINT}
  aws:
    role: {ROLE}
    ecs:
      cluster: {CLUSTER}
      listener_arn: {net['listener']}
      subnets: [{', '.join(net['subnets'])}]
      security_groups: [{net['sg']}]
      execution_role: {EXECUTION}
      cpu: 512
      memory: 1024
      url: {url}
      environment: {{MLDEPLOY_NONFINITE: reject}}
{extra}"""


def listener(net: dict[str, str] | None) -> str:
    import boto3

    if net:
        return net["listener"]
    elb = boto3.client("elbv2")
    lb = elb.describe_load_balancers()["LoadBalancers"][0]["LoadBalancerArn"]
    return str(elb.describe_listeners(LoadBalancerArn=lb)["Listeners"][0]["ListenerArn"])


def serving(net: dict[str, str] | None = None) -> dict[str, tuple[str, int]]:
    """What the weighted rule serves, read straight from the APIs: slot -> (the running tasks' image, weight %),
    slots at 0% left out ({} before the rule exists)."""
    import boto3

    elb, ecs = boto3.client("elbv2"), boto3.client("ecs")
    rules = elb.describe_rules(ListenerArn=listener(net))["Rules"]
    main = [r for r in rules if r["Priority"] != "default" and not any(c["Field"] == "http-header" for c in r["Conditions"])]
    assert len(main) <= 1, main
    if not main:
        return {}
    out: dict[str, tuple[str, int]] = {}
    for g in main[0]["Actions"][0]["ForwardConfig"]["TargetGroups"]:
        name = g["TargetGroupArn"].split(":", 5)[5].split("/")[1]        # targetgroup/<name>/<id>
        slot = name.removeprefix(f"{ENDPOINT}-")
        if not g["Weight"]:
            continue
        tasks = ecs.list_tasks(cluster=CLUSTER, serviceName=name, desiredStatus="RUNNING")["taskArns"]
        described = ecs.describe_tasks(cluster=CLUSTER, tasks=tasks)["tasks"]
        images = {ecs.describe_task_definition(taskDefinition=t["taskDefinitionArn"])["taskDefinition"]
                  ["containerDefinitions"][0]["image"] for t in described}
        out[slot] = (images.pop() if len(images) == 1 else f"{len(images)} images", g["Weight"])
    return out


def header_rules(net: dict[str, str]) -> dict[str, str]:
    """x-mldeploy-slot value -> the target group's name its rule forwards to."""
    import boto3

    rules = boto3.client("elbv2").describe_rules(ListenerArn=net["listener"])["Rules"]
    return {c["HttpHeaderConfig"]["Values"][0]: r["Actions"][0]["TargetGroupArn"].split("/")[1]
            for r in rules for c in r["Conditions"] if c["Field"] == "http-header"}
