"""What the AWS targets share: clients, one-line errors, names and tags, ECR, and the preflight.

Credentials come from boto3's standard chain (in GitHub Actions: OIDC through
aws-actions/configure-aws-credentials; no stored keys). `AWS_ENDPOINT_URL` (boto3's own setting)
points every client elsewhere, which is how the tests reach moto. The client and the error
translation live in mldeploy.clouds.aws (the model artifacts in S3 use them too) and are re-exported
here. Only this package's AWS modules and mldeploy.clouds / mldeploy.artifacts import boto3, and only
inside functions.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mldeploy.clouds.aws import CREDENTIALS_HINT as CREDENTIALS_HINT
from mldeploy.clouds.aws import RETRIES as RETRIES
from mldeploy.clouds.aws import client as client
from mldeploy.clouds.aws import error_code as error_code
from mldeploy.clouds.aws import translated as translated
from mldeploy.deploy import storage_location
from mldeploy.deploy.base import digest_of
from mldeploy.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from mldeploy.config import DeploySection
    from mldeploy.monitor.canary import SlotStats

ECR_HOST = re.compile(r"^(\d{12})\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


def resource_name(*parts: str, limit: int = 63) -> str:
    """A name AWS accepts (letters, digits, hyphens), unique and stable for the same parts."""
    name = re.sub(r"[^A-Za-z0-9-]+", "-", "-".join(p for p in parts if p)).strip("-")
    if len(name) > limit:  # keep it unique: shorten and add a hash of the whole
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:limit - 9].rstrip('-')}-{digest}"
    return name


def tags(endpoint: str, slot: str | None = None, image: str | None = None) -> dict[str, str]:
    """Tags on every resource: which endpoint, slot, repo, commit and image it belongs to."""
    found = {"mldeploy:endpoint": endpoint, "mldeploy:slot": slot,
             "mldeploy:repo": os.environ.get("GITHUB_REPOSITORY"), "mldeploy:sha": os.environ.get("GITHUB_SHA"),
             "mldeploy:image": image and digest_of(image)}
    return {k: v for k, v in found.items() if v}


def tag_list(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in values.items()]


# -- ECR --------------------------------------------------------------------------------------------
def ecr_region(registry: str) -> str:
    match = ECR_HOST.match(registry)
    if not match:
        raise UsageError(f"{registry} is not an ECR registry (ACCOUNT.dkr.ecr.REGION.amazonaws.com)")
    return match.group(2)


def ecr_login(registry: str) -> dict[str, str]:
    """A 12-hour push credential for an ECR registry, from the standard credential chain."""
    with translated(f"get an ECR login for {registry}"):
        data = client("ecr", ecr_region(registry)).get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    return {"username": user, "password": password}


def ensure_ecr_repository(repository: str) -> bool:
    """Create the ECR repository when missing (scan on push, immutable tags); True if created."""
    registry, name = repository.split("/", 1)
    ecr = client("ecr", ecr_region(registry))
    with translated(f"look up the ECR repository {name}"):
        try:
            ecr.describe_repositories(repositoryNames=[name])
            return False
        except ecr.exceptions.RepositoryNotFoundException:
            pass
    with translated(f"create the ECR repository {name}"):
        ecr.create_repository(repositoryName=name, imageTagMutability="IMMUTABLE",
                              imageScanningConfiguration={"scanOnPush": True},
                              tags=tag_list(tags(name.rsplit("/", 1)[-1])))
    print(f"created ECR repository {name} (scan on push, immutable tags)")
    return True


def ecr_has_image(image: str, region: str | None) -> bool:
    """Whether ECR holds this repository@digest (a deploy of a missing image fails late and vaguely)."""
    repository, digest = image.split("@", 1)
    registry, name = repository.split("/", 1)
    if not ECR_HOST.match(registry):
        raise UsageError(f"the image {image} is not in ECR; SageMaker and Lambda only run images from ECR",
                         hint="set image.registry to ACCOUNT.dkr.ecr.REGION.amazonaws.com and build again")
    ecr = client("ecr", ecr_region(registry))
    with translated(f"look up {image} in ECR"):
        try:
            ecr.describe_images(repositoryName=name, imageIds=[{"imageDigest": digest}])
            return True
        except (ecr.exceptions.ImageNotFoundException, ecr.exceptions.RepositoryNotFoundException):
            return False


# -- the preflight ----------------------------------------------------------------------------------
WEB_IDENTITY_HELP = (
    "AssumeRoleWithWebIdentity was refused. The usual causes: the role's trust policy does not match "
    "the token's claims (token.actions.githubusercontent.com:sub must match repo:OWNER/REPO:ref:refs/heads/BRANCH, "
    "repo:OWNER/REPO:pull_request or repo:OWNER/REPO:environment:NAME exactly; "
    "token.actions.githubusercontent.com:aud must be sts.amazonaws.com), the OIDC provider is missing "
    "from the account, or the job lacks `permissions: id-token: write`.")


def doctor(deploy: DeploySection, probes: dict[str, tuple[str, str, dict[str, Any]]]) -> list[tuple[str, bool, str]]:
    """Who we are and what we may do: (check, passed, detail) rows; never prints a secret. probes:
    permission -> (service, read-only call, its arguments), the target's own besides ECR's."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    region = deploy.region

    rows: list[tuple[str, bool, str]] = []
    try:
        identity = client("sts", region).get_caller_identity()
        rows.append(("identity", True, f"{identity['Arn']} (account {identity['Account']})"))
    except NoCredentialsError:
        return [("identity", False, f"no credentials found: {CREDENTIALS_HINT}")]
    except ClientError as e:
        code = error_code(e)
        detail = WEB_IDENTITY_HELP if "WebIdentity" in str(e) or code == "InvalidIdentityToken" else str(e)
        return [("identity", False, detail)]
    probes = {"ecr:DescribeRepositories": ("ecr", "describe_repositories", {"maxResults": 1}), **probes}
    for permission, (service, call, kwargs) in probes.items():
        try:
            getattr(client(service, region), call)(**kwargs)
            rows.append((permission, True, "allowed"))
        except (ClientError, BotoCoreError) as e:
            rows.append((permission, False, f"{error_code(e) or type(e).__name__}: see the role policy in docs/clouds/aws.md"))
    return rows


def cloudwatch_alarm_states(region: str | None, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    with translated("read the CloudWatch alarms"):
        alarms = client("cloudwatch", region).describe_alarms(AlarmNames=names)["MetricAlarms"]
    return {a["AlarmName"]: a["StateValue"] for a in alarms}


def alarm_spec(namespace: str, dimensions: dict[str, str], tagged: dict[str, str]) -> dict[str, Any]:
    """What every canary alarm shares: one minute, one period, at or over the threshold, no data is fine."""
    return {"Namespace": namespace, "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
            "Period": 60, "EvaluationPeriods": 1, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching", "Tags": tag_list(tagged)}


def bake(region: str | None, names: list[str], seconds: int, slot: str, poll: float) -> None:
    """Watch these alarms for `seconds`; one going to ALARM fails the canary (CheckFailed)."""
    deadline = time.monotonic() + seconds
    print(f"  baking {slot} for {seconds} s, watching {', '.join(names)}", flush=True)
    while True:
        firing = [n for n, state in cloudwatch_alarm_states(region, names).items() if state == "ALARM"]
        if firing:
            raise CheckFailed(f"the alarm {firing[0]} went to ALARM while {slot} baked")
        if time.monotonic() >= deadline:
            return
        time.sleep(min(poll, max(deadline - time.monotonic(), 0)))


def metric_window(region: str | None, queries: dict[str, tuple[str, str, dict[str, str], str]],
                  seconds: float) -> dict[str, list[float]]:
    """CloudWatch GetMetricData over the last `seconds` as one period (rounded up to whole minutes, as
    CloudWatch wants): query id -> (namespace, metric, dimensions, statistic such as Sum or p99) ->
    the values CloudWatch returned (none when nothing was recorded). Canary analysis reads it."""
    import datetime as dt

    period = max(60, int(-(-seconds // 60)) * 60)
    end = dt.datetime.now(dt.UTC).replace(microsecond=0)
    request = [{"Id": qid, "ReturnData": True, "MetricStat": {
        "Metric": {"Namespace": ns, "MetricName": metric, "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()]},
        "Period": period, "Stat": stat}} for qid, (ns, metric, dims, stat) in queries.items()]
    found: dict[str, list[float]] = {qid: [] for qid in queries}
    cw = client("cloudwatch", region)
    with translated("read the endpoint's CloudWatch metrics"):
        for page in cw.get_paginator("get_metric_data").paginate(
                MetricDataQueries=request, StartTime=end - dt.timedelta(seconds=period), EndTime=end):
            for result in page["MetricDataResults"]:
                found[result["Id"]] += [v for v in result.get("Values", []) if v is not None]
    return found


# -- captured requests (mldeploy monitor drift) -----------------------------------------------------
def capture_objects(source: str, region: str | None,
                    suffixes: tuple[str, ...]) -> list[tuple[str, int, Any, Callable[[], bytes]]]:
    """(s3 URI, size, modified, read) of each capture file under s3://bucket/prefix (SageMaker data
    capture and copied serving-runtime files alike)."""
    bucket, prefix = storage_location(source)
    s3 = client("s3", region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    with translated(f"list s3://{bucket}/{prefix}"):
        try:
            found = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                     for o in page.get("Contents", []) if o["Key"].endswith(suffixes)]
        except s3.exceptions.NoSuchBucket:
            raise UsageError(f"the S3 bucket {bucket} does not exist", hint="check monitoring.drift.capture") from None
    def reader(key: str) -> Callable[[], bytes]:
        def read() -> bytes:
            with translated(f"read s3://{bucket}/{key}"):
                return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return read

    return [(f"s3://{bucket}/{o['Key']}", o["Size"], o["LastModified"], reader(o["Key"])) for o in found]


# -- canary analysis: CloudWatch -------------------------------------------------------------------
def cloudwatch_slot_stats(region: str | None, namespace: str, dims: dict[str, dict[str, str]], metrics: tuple[str, str, str],
                latency_to_ms: float, window: float) -> dict[str, SlotStats]:
    """Per slot: requests (Sum), errors (Sum) and latency p50/p99 of one namespace's metrics."""
    from mldeploy.monitor.canary import SlotStats

    invocations, errors, latency = metrics
    queries = {}
    for i, d in enumerate(dims.values()):
        queries[f"s{i}_requests"] = (namespace, invocations, d, "Sum")
        queries[f"s{i}_errors"] = (namespace, errors, d, "Sum")
        queries[f"s{i}_p50"] = (namespace, latency, d, "p50")
        queries[f"s{i}_p99"] = (namespace, latency, d, "p99")
    values = metric_window(region, queries, window)
    out = {}
    for i, slot in enumerate(dims):
        stats = out[slot] = SlotStats(slot, int(sum(values[f"s{i}_requests"])), int(sum(values[f"s{i}_errors"])))
        for q in ("p50", "p99"):  # one period normally; over several, the worst one counts
            found = values[f"s{i}_{q}"]
            setattr(stats, f"{q}_ms", max(found) * latency_to_ms if found else None)
    return out
