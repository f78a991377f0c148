"""mldeploy.yaml: the typed, versioned config of a model repo.

Values come from four layers; a higher one wins:
  command-line flag / action input  >  MLDEPLOY_<SECTION>__<KEY> (and MLDEPLOY_BUNDLE) environment variables
  >  the config file  >  the defaults below.
Paths written in the file are relative to the file's folder; paths given as flags or environment
variables are relative to the working directory. Model code (model.factory, model.custom_objects) follows
the same rule: imported from the file's folder when the file names it, from the working directory when a
flag or environment variable does (Config.import_root).
A bad config fails before any work starts, naming the file, line, key, the value found and what
was expected.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mldeploy import targets as registry
from mldeploy.errors import UsageError
from mldeploy.serve.settings import check_environment

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

SCHEMA_VERSION: Final = 1
DEFAULT_CONFIG_FILE = "mldeploy.yaml"
ENV_PREFIX = "MLDEPLOY_"
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
Dtype = Literal["float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"]
# Keys whose values are file paths, resolved against the config file's folder.
PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("bundle",), ("model", "path"), ("parity", "sample"), ("optimize", "data"), ("image", "dockerfile"),
    ("monitoring", "baseline"), ("monitoring", "drift", "capture"))  # a capture URI (s3://...) stays as is
# Keys that name model code by module (`package.module:name`), imported from the config file's folder.
CODE_KEYS: tuple[tuple[str, ...], ...] = (("model", "factory"), ("model", "custom_objects"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputSpec(Section):
    """One model input. A dimension is a size or a name; a name is symbolic (the first is the batch)."""

    name: str = Field(min_length=1, description="Input name, as the model calls it.")
    dtype: Dtype = Field("float32", description="Element type.")
    shape: list[int | str] = Field(
        description="Dimensions, e.g. [batch, 3, 224, 224]. Names are symbolic.")
    range: tuple[float, float] | None = Field(
        None, description="[low, high] of generated test values (e.g. token ids [0, 30000]).")

    @field_validator("range")
    @classmethod
    def _low_below_high(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"range must be [low, high] with low < high, not {list(value)}")
        return value

    @field_validator("shape", mode="before")
    @classmethod
    def _dims(cls, shape: Any) -> Any:
        if not isinstance(shape, list):
            return shape  # pydantic reports "should be a valid list"
        for d in shape:
            ok = (isinstance(d, int) and not isinstance(d, bool) and d >= 1) or (
                isinstance(d, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", d))
            if not ok:
                raise ValueError(f"each dimension must be a positive size or a name like 'batch', not {d!r}")
        return shape


class OutputSpec(Section):
    """One model output, in the model's order: the name the signature and the served responses use."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]*$",
                      description="Output name, e.g. logits.")


class ModelSection(Section):
    path: str | None = Field(None, description="The trained model: a file or a SavedModel folder.")
    framework: Literal["auto", "torch", "tensorflow", "onnx"] = Field(
        "auto", description="Source framework; auto detects it from the file.")
    factory: str | None = Field(
        None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="For a PyTorch state_dict: `package.module:function` that builds the module. Imported from "
                    "the config file's folder (from the working directory when given as a flag or variable).")
    allow_pickle: bool = Field(
        False, description="Load a fully pickled PyTorch module. Loading a pickle runs its code.")
    opset: int = Field(18, ge=11, le=23, description="ONNX opset to export to.")
    dim_sizes: dict[str, PositiveInt] = Field(
        default_factory=dict,
        description="Example sizes for named non-batch dims during export (default 8 each).")
    custom_objects: list[Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]] = Field(
        default_factory=list,
        description="Keras custom layers, losses and functions: `package.module:Name` each, imported like factory.")
    torchscript: bool = Field(False, description="Also write a TorchScript copy (PyTorch sources).")
    tflite: bool = Field(False, description="Also write a TF Lite model (TensorFlow sources).")


class ParitySection(Section):
    atol: float = Field(1e-4, ge=0, description="Absolute tolerance: |onnx - source| <= atol + rtol*|source|.")
    rtol: float = Field(1e-3, ge=0, description="Relative tolerance.")
    sample: str | None = Field(None, description="Sample inputs (.npz, .npy or .jsonl); default: generated.")
    batch_size: int = Field(8, ge=3, le=4096,
                            description="The larger parity batch (export uses 2; 1 is always checked).")
    seed: int = Field(0, description="Seed for generated inputs.")
    reference: Literal["auto", "ort", "onnx", "none"] = Field(
        "auto", description="What an ONNX source is checked against: ort (ONNX Runtime with graph optimizations "
                            "off against on), onnx (ONNX's reference evaluator; a failure falls back to ort), "
                            "none (batch consistency only); auto is ort.")


Candidate = Literal["ort-basic", "ort-extended", "onnxslim", "dynamic-int8", "static-int8", "fp16",
                    "transformer-fusion", "prune"]
CANDIDATES: tuple[Candidate, ...] = get_args(Candidate)


class BudgetSection(Section):
    """How much accuracy a faster or smaller model may cost; every limit set must hold."""

    top1_agreement: float | None = Field(
        0.99, ge=0, le=1, description="Min share of rows whose argmax matches fp32 (classification outputs).")
    cosine_similarity: float | None = Field(None, ge=-1, le=1, description="Min mean cosine similarity to fp32.")
    max_abs_diff: float | None = Field(None, ge=0, description="Max absolute difference from fp32, any output.")
    metric_drop: float | None = Field(
        None, ge=0, description="With labels: max accuracy drop in points, or max RMSE increase.")


class OptimizeSection(Section):
    enabled: bool = True
    objective: Literal["latency", "size"] = Field(
        "latency", description="latency: fastest at batch_size within budget; size: smallest within budget.")
    require_improvement: bool = Field(False, description="Exit 1 when no candidate beats fp32.")
    device: Literal["cpu", "gpu"] = Field("cpu", description="What the model will serve on; fp16 is GPU only.")
    candidates: Literal["auto"] | list[Candidate] = Field(
        "auto", description="Candidates to try; auto picks by model type: " + ", ".join(CANDIDATES) + ".")
    data: str | None = Field(None, description="Calibration/evaluation inputs (.npz, .npy, .jsonl); "
                                               "an .npz may hold `labels` too. Default: generated.")
    labels_key: str = Field("labels", description="Name of the labels array in the .npz data file.")
    samples: int = Field(128, ge=8, le=100000, description="Rows to generate when there is no data file.")
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = Field(True, description="Per-channel weight scales for static int8.")
    batch_size: int = Field(32, ge=1, le=4096, description="The batch latency is judged at (batch 1 is reported too).")
    threads: int | None = Field(None, ge=1, description="ONNX Runtime threads for every candidate (default: CPUs available).")
    min_speedup: float = Field(1.05, ge=1, description="A candidate must beat the current choice (fp32 first) "
                                                        "by this factor, side by side, to replace it.")
    latency_seconds: float = Field(1.0, gt=0, le=60, description="Time spent measuring each latency figure.")
    prune_sparsity: float = Field(0.5, gt=0, lt=1, description="Share of weights the prune candidate zeroes.")
    budget: BudgetSection = Field(default_factory=BudgetSection)

    @field_validator("candidates", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() != "auto":
            return [v.strip() for v in value.split(",") if v.strip()]
        return value.strip() if isinstance(value, str) else value


def container_environment(env: dict[str, str], platform_names: str, platform: str,
                          secret_names: Iterable[str] = ()) -> dict[str, str]:
    """Variables for the serving container: names a shell accepts, none that `platform` sets itself
    (`platform_names`, a regular expression), and MLDEPLOY_* settings the server reads, with values
    it accepts, so a typo fails here and not at the container's start, after a deploy."""
    for name in [*env, *secret_names]:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{name!r} is not an environment variable name (letters, digits, _)")
        if re.fullmatch(platform_names, name):
            raise ValueError(f"{name} is set by {platform}")
    try:
        check_environment(env, secret_names)
    except UsageError as e:
        raise ValueError(e.describe()) from None
    return env


# A Docker image reference: [host[:port]/]path[:tag][@sha256:digest] (the distribution reference grammar)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::\d+)?/)"
IMAGE_REFERENCE = re.compile(rf"{_HOST}?{_COMPONENT}(?:/{_COMPONENT})*(?::\w[\w.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?")


class ImageSection(Section):
    base: str = Field("python:3.11-slim", description="Base image of the serving image.")

    @field_validator("base")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        if not IMAGE_REFERENCE.fullmatch(value):
            raise ValueError("expected an image reference like python:3.11-slim or registry:5000/team/base@sha256:<64 hex> "
                             "(lowercase path, no spaces or newlines)")
        return value

    model: Literal["baked", "storage"] = Field(
        "baked", description="Where the model travels: baked into the image (one image per model), or storage: "
                             "published to storage.uri by `mldeploy publish` and fetched and verified by one "
                             "runtime image per kit version (a model-only change builds nothing).")
    registry: str | None = Field(None, description="Registry host, e.g. 123.dkr.ecr.eu-west-1.amazonaws.com.")
    repository: str | None = Field(None, description="Repository name in the registry.")
    dockerfile: str | None = Field(None, description="Your own Dockerfile instead of ours.")
    environment: dict[str, str] = Field(
        default_factory=dict, description="Serving settings built into the image (ENV), e.g. MLDEPLOY_WORKERS; "
                                          "they reach every target. Never secrets: whoever pulls the image reads them.")

    @field_validator("environment")
    @classmethod
    def _serving_settings(cls, value: dict[str, str]) -> dict[str, str]:
        if "MLDEPLOY_API_KEYS" in value:
            raise ValueError("MLDEPLOY_API_KEYS would be readable by whoever pulls the image: give API keys to "
                             "the deploy (Lambda or Cloud Run environment, Cloud Run secrets)")
        if model := sorted(n for n in value if n in ("MLDEPLOY_MODEL_URI", "MLDEPLOY_MODEL_SHA256")):
            raise ValueError(f"{model[0]} is set by the deploy, from the bundle it serves: baked into the image it would "
                             "pin every slot to one model (use image.model: storage and mldeploy publish)")
        if any(c in v for v in value.values() for c in "\n\r\0"):
            raise ValueError("a value spans lines: a Dockerfile ENV holds one line")
        container_environment(value, r"PATH|PYTHON\w*|PORT|K_\w*|AIP_\w*|SAGEMAKER_\w*|AZUREML_\w*|"
                                     r"AWS_\w*|LAMBDA_\w*|_HANDLER", "the image or the cloud it runs on")
        if others := sorted(n for n in value if not n.startswith(ENV_PREFIX)):
            raise ValueError(f"{others[0]} is not a serving setting: the image's environment holds MLDEPLOY_* settings "
                             "only, since it reaches every target and the base image; set other variables in your "
                             "own dockerfile")
        return value

    @model_validator(mode="after")
    def _environment_needs_our_dockerfile(self) -> ImageSection:
        if self.environment and self.dockerfile:
            raise ValueError("environment is built into mldeploy's Dockerfile; with your own dockerfile, "
                             "set ENV there")
        return self


class SageMakerSection(Section):
    instance_type: str = Field("ml.m5.large", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$",
                               description="Instance type of each variant (ignored when serverless).")
    instance_count: int = Field(1, ge=1, le=100, description="Initial instances per variant.")
    serverless_memory_mb: Literal[1024, 2048, 3072, 4096, 5120, 6144] | None = Field(
        None, description="Serverless inference instead of instances: memory per invocation.")
    serverless_max_concurrency: int = Field(5, ge=1, le=200, description="Serverless: concurrent invocations.")
    strategy: Literal["variants", "guardrails"] = Field(
        "variants", description="variants: the canary is a second production variant at the canary share; "
                                "guardrails: production updates go blue/green (canary, then all) with "
                                "automatic rollback on our CloudWatch alarms.")
    guardrails_routing: Literal["CANARY", "LINEAR"] = Field(
        "CANARY", description="guardrails: one canary step then all, or equal linear steps.")
    guardrails_canary_percent: int = Field(10, ge=1, le=50, description="guardrails: capacity share of each step.")
    guardrails_wait_seconds: int = Field(600, ge=0, le=3600, description="guardrails: bake time of each step.")
    autoscaling_max: int | None = Field(None, ge=1, le=100, description="Target-tracking autoscaling up to this many "
                                                                        "instances per variant (min: instance_count).")
    invocations_per_instance: int = Field(100, ge=1, description="Autoscaling target: invocations per instance "
                                                                 "per minute.")
    data_capture_percent: int = Field(0, ge=0, le=100, description="Share of requests captured to S3 (monitoring).")
    data_capture_s3: str | None = Field(None, pattern=r"^s3://", description="Where captured requests go.")

    @model_validator(mode="after")
    def _consistent(self) -> SageMakerSection:
        if self.strategy == "guardrails" and self.serverless_memory_mb:
            raise ValueError("strategy guardrails needs instances: SageMaker has no blue/green for serverless variants")
        if self.data_capture_percent and not self.data_capture_s3:
            raise ValueError("data_capture_percent is set but data_capture_s3 is not: name the S3 prefix "
                             "captured requests go to")
        return self


class ApiGatewaySection(Section):
    """An API Gateway REST API in front of the function: a stage per slot, API keys and a usage plan."""
    require_key: bool = Field(True, description="Callers must send x-api-key (apiKeyRequired on the method).")
    api_keys: list[str] = Field(default_factory=list, description="Names of API keys API Gateway creates "
                                                                  "(read their values in the console or CLI).")
    key_secret: str | None = Field(None, description="A Secrets Manager secret (name or ARN) whose value is "
                                                     "imported as the API key key_name; never printed.")
    key_name: str = Field("mldeploy-imported", description="The name of the key imported from key_secret.")
    throttle_rate: float = Field(10, gt=0, description="Usage plan: steady requests per second.")
    throttle_burst: int = Field(20, ge=1, description="Usage plan: burst of requests.")
    quota_limit: int | None = Field(None, ge=1, description="Usage plan: requests per quota_period per key.")
    quota_period: Literal["DAY", "WEEK", "MONTH"] = "DAY"

    @model_validator(mode="after")
    def _keys(self) -> ApiGatewaySection:
        if self.require_key and not self.api_keys and not self.key_secret:
            raise ValueError("require_key is on but no api_keys or key_secret is given: no one could call the API")
        return self


class LambdaSection(Section):
    memory_mb: int = Field(2048, ge=128, le=10240)
    timeout_seconds: int = Field(30, ge=1, le=900)
    architecture: Literal["x86_64", "arm64"] = Field("x86_64", description="Must match the image's platform.")
    url_auth: Literal["AWS_IAM", "NONE"] = Field("AWS_IAM", description="Function URL auth; NONE makes it public.")
    provisioned_concurrency: int = Field(0, ge=0, description="Warm environments kept for the `live` alias.")
    environment: dict[str, str] = Field(default_factory=dict, description="Extra environment (MLDEPLOY_* settings).")
    api_gateway: ApiGatewaySection | None = Field(None, description="A REST API in front of the function, with "
                                                                    "API keys and a usage plan (absent: none).")

    @field_validator("environment")
    @classmethod
    def _serving_settings(cls, value: dict[str, str]) -> dict[str, str]:
        # Lambda's reserved keys (https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html)
        return container_environment(value, r"_HANDLER|_X_AMZN_TRACE_ID|AWS_REGION|AWS_DEFAULT_REGION|"
                                            r"AWS_EXECUTION_ENV|AWS_LAMBDA_\w*|AWS_ACCESS_KEY(_ID)?|"
                                            r"AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|LAMBDA_\w*", "Lambda itself")


# Fargate's task sizes: vCPU units -> the memory (MiB) each allows
# (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html#fargate-tasks-size)
FARGATE_SIZES = {256: (512, 1024, 2048), 512: tuple(range(1024, 4097, 1024)), 1024: tuple(range(2048, 8193, 1024)),
                 2048: tuple(range(4096, 16385, 1024)), 4096: tuple(range(8192, 30721, 1024)),
                 8192: tuple(range(16384, 61441, 4096)), 16384: tuple(range(32768, 122881, 8192))}


class EcsSection(Section):
    cluster: str | None = Field(None, description="The ECS cluster (name or ARN) the services run in.")
    listener_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:elasticloadbalancing:",
                                     description="The ALB listener whose rules route to the slots (given, not created).")
    subnets: list[str] = Field(default_factory=list, description="Subnets of the tasks (awsvpc), in the ALB's VPC.")
    security_groups: list[str] = Field(default_factory=list, description="Security groups of the tasks: let the "
                                                                         "ALB's group reach port 8080.")
    assign_public_ip: bool = Field(False, description="Public IPs for the tasks (subnets without a NAT gateway).")
    execution_role: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$",
                                       description="Task execution role: pulls the image from ECR, writes the logs. "
                                                   "The task role is deploy.aws.role.")
    cpu: int = Field(1024, description="Task CPU units (1024 = 1 vCPU).")
    memory: int = Field(2048, ge=512, description="Task memory (MiB); Fargate allows set sizes per CPU.")
    architecture: Literal["X86_64", "ARM64"] = Field("X86_64", description="Must match the image's platform.")
    capacity_provider: str | None = Field(None, description="An EC2 capacity provider instead of Fargate.")
    desired_count: int = Field(1, ge=1, le=1000, description="Tasks per slot (the autoscaling minimum).")
    autoscaling_max: int | None = Field(None, ge=1, le=1000, description="Target tracking up to this many tasks.")
    autoscaling_metric: Literal["cpu", "requests"] = Field(
        "cpu", description="cpu: ECSServiceAverageCPUUtilization; requests: ALBRequestCountPerTarget.")
    autoscaling_target: float = Field(70, gt=0, description="The target: CPU percent, or requests per task per minute.")
    host: str | None = Field(None, description="A host-header condition of the weighted rule (default: any host).")
    path: str = Field("/*", description="The path-pattern condition of the weighted rule.")
    rule_priority: int = Field(1000, ge=100, le=50000, description="The weighted rule's priority; each slot's "
                                                                    "x-mldeploy-slot rule takes a free one below it.")
    url: str | None = Field(None, pattern=r"^https?://", description="The listener's public URL (its DNS name or "
                                                                     "your domain); default: the ALB's DNS name.")
    log_retention_days: int = Field(30, ge=1, description="Retention of the log group /mldeploy/<endpoint>.")
    environment: dict[str, str] = Field(default_factory=dict,
                                        description="Extra environment of the container (MLDEPLOY_* settings).")

    @model_validator(mode="after")
    def _consistent(self) -> EcsSection:
        if self.capacity_provider is None and self.memory not in FARGATE_SIZES.get(self.cpu, ()):
            raise ValueError(f"Fargate has no task size of cpu {self.cpu} with memory {self.memory} MiB: with cpu "
                             f"{self.cpu} it allows {', '.join(map(str, FARGATE_SIZES.get(self.cpu, ())[:4])) or 'nothing'}"
                             f"{' ...' if len(FARGATE_SIZES.get(self.cpu, ())) > 4 else ''} "
                             f"(cpu is one of {', '.join(map(str, FARGATE_SIZES))})")
        if self.autoscaling_max is not None and self.autoscaling_max < self.desired_count:
            raise ValueError(f"autoscaling_max ({self.autoscaling_max}) is below desired_count ({self.desired_count})")
        container_environment(self.environment, r"ECS_\w*|AWS_CONTAINER_\w*|AWS_EXECUTION_ENV", "ECS itself")
        return self


class EksSection(Section):
    cluster: str | None = Field(None, pattern=r"^[0-9A-Za-z][A-Za-z0-9\-_]*$",
                                description="The EKS cluster's name: its endpoint and CA come from DescribeCluster, "
                                            "its token from the job's AWS credentials (no kubeconfig). The slots' "
                                            "settings are deploy.kubernetes's.")


class AwsSection(Section):
    role: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$",
                             description="Execution role ARN the endpoint or function runs as.")
    latency_p99_ms: float = Field(1000, gt=0, description="Alarm: model latency p99 above this (ms).")
    errors_5xx: int = Field(1, ge=1, description="Alarm: this many 5xx answers in a minute.")
    bake_seconds: int = Field(0, ge=0, le=3600, description="After a canary deploy, watch the alarms this long; "
                                                            "an alarm in ALARM rolls the canary back (exit 1).")
    wait_seconds: int = Field(1800, ge=10, description="Give up waiting for an endpoint update after this long.")
    sagemaker: SageMakerSection = Field(default_factory=SageMakerSection)
    lambda_: LambdaSection = Field(default_factory=LambdaSection, alias="lambda")
    ecs: EcsSection = Field(default_factory=EcsSection)
    eks: EksSection = Field(default_factory=EksSection)


class VertexSection(Section):
    machine_type: str = Field("n1-standard-2", description="Machine type of each replica.")
    min_replicas: int = Field(1, ge=1, le=1000, description="Replicas always running.")
    max_replicas: int | None = Field(None, ge=1, le=1000, description="Autoscale up to this many (default: min).")
    accelerator_type: str | None = Field(None, description="e.g. NVIDIA_TESLA_T4 (the image must be able to use it).")
    accelerator_count: int = Field(0, ge=0, le=8)
    service_account: str | None = Field(None, description="Service account the model runs as.")

    @model_validator(mode="after")
    def _consistent(self) -> VertexSection:
        if self.accelerator_count and not self.accelerator_type:
            raise ValueError("accelerator_count is set but accelerator_type is not (e.g. NVIDIA_TESLA_T4)")
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self


class CloudRunSection(Section):
    cpu: str = Field("1", pattern=r"^\d+(\.\d+)?m?$", description="CPU per instance, e.g. 1, 2, 1000m.")
    memory: str = Field("2Gi", pattern=r"^\d+(Mi|Gi)$", description="Memory per instance, e.g. 512Mi, 2Gi.")
    concurrency: int = Field(16, ge=1, le=1000, description="Requests one instance serves at once.")
    min_instances: int = Field(0, ge=0, le=1000)
    max_instances: int = Field(10, ge=1, le=1000)
    ingress: Literal["all", "internal", "internal-and-cloud-load-balancing"] = "all"
    allow_unauthenticated: bool = Field(False, description="Grant roles/run.invoker to allUsers (a public endpoint).")
    service_account: str | None = Field(None, description="Service account the service runs as.")
    environment: dict[str, str] = Field(default_factory=dict,
                                        description="Extra environment of the container (MLDEPLOY_* settings).")
    secrets: dict[str, str] = Field(default_factory=dict, description="Environment variables from Secret Manager: "
                                                                      "NAME: SECRET or SECRET:VERSION (default latest).")

    @model_validator(mode="after")
    def _serving_settings(self) -> CloudRunSection:
        if both := sorted(set(self.environment) & set(self.secrets)):
            raise ValueError(f"{', '.join(both)} set in both environment and secrets")
        if "MLDEPLOY_API_KEYS" in self.environment:
            raise ValueError("MLDEPLOY_API_KEYS in environment shows the keys to whoever can read the service: "
                             "keep them in Secret Manager and name the secret under secrets")
        container_environment(self.environment, r"PORT|K_\w*", "Cloud Run itself", secret_names=self.secrets)
        return self


class GkeSection(Section):
    cluster: str | None = Field(None, pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
                                description="The GKE cluster's name: its endpoint and CA come from the Container API, "
                                            "its token from the job's Google credentials (no kubeconfig). The slots' "
                                            "settings are deploy.kubernetes's.")
    location: str | None = Field(None, description="The cluster's region or zone (default: deploy.region).")


class GcpSection(Section):
    project: str | None = Field(None, description="Project id (default: the credentials' project).")
    bake_seconds: int = Field(0, ge=0, le=3600, description="After a canary deploy, keep checking it this long.")
    wait_seconds: int = Field(1800, ge=10, description="Give up waiting for a long-running operation after this long.")
    vertex: VertexSection = Field(default_factory=VertexSection)
    cloudrun: CloudRunSection = Field(default_factory=CloudRunSection)
    gke: GkeSection = Field(default_factory=GkeSection)


class AzureMlSection(Section):
    instance_type: str = Field("Standard_DS3_v2", description="VM size of each instance.")
    instance_count: int = Field(1, ge=1, le=100)
    auth_mode: Literal["key", "aad_token"] = Field("key", description="How callers authenticate to the endpoint.")
    mirror: bool = Field(False, description="Canary gets a mirrored copy of the share (shadow) instead of live traffic.")
    request_timeout_ms: int = Field(5000, ge=1, le=180000)
    max_concurrent_requests_per_instance: int = Field(1, ge=1, le=1000)
    autoscale_max: int | None = Field(None, ge=1, le=100, description="Autoscale up to this many instances.")


class ContainerAppsSection(Section):
    managed_environment: str | None = Field(None, description="The Container Apps environment (a name in the "
                                                              "resource group, or its resource id) the app runs in.")
    identity: str = Field("system", description="The managed identity that pulls the image from ACR (AcrPull) "
                                               "and reads Key Vault secrets: a user-assigned identity's resource "
                                               "id, or system (the app's own, which needs AcrPull granted after "
                                               "the app exists).")
    cpu: float = Field(1.0, gt=0, le=8, description="vCPUs per replica (0.25 to 4 on consumption).")
    memory: str = Field("2Gi", pattern=r"^\d+(\.\d+)?Gi$", description="Memory per replica: twice the CPU on "
                                                                      "consumption, e.g. 2Gi for 1 vCPU.")
    min_replicas: int = Field(0, ge=0, le=1000, description="Replicas always running (0: scale to zero).")
    max_replicas: int = Field(10, ge=1, le=1000)
    concurrency: int = Field(16, ge=1, le=10000, description="HTTP scale rule: concurrent requests per replica "
                                                             "before another replica starts.")
    allow_anonymous: bool = Field(False, description="Let anyone call the app. Off: the app must have built-in "
                                                     "authentication (requiring it) or allowed_ips.")
    allowed_ips: list[str] = Field(default_factory=list, description="CIDR ranges allowed to call the app "
                                                                     "(ingress IP restrictions; all others denied).")
    environment: dict[str, str] = Field(default_factory=dict,
                                        description="Extra environment of the container (MLDEPLOY_* settings).")
    secrets: dict[str, str] = Field(default_factory=dict, description="Environment variables from Key Vault: NAME: "
                                                                      "https://VAULT.vault.azure.net/secrets/SECRET[/VERSION], "
                                                                      "read with `identity`.")

    @model_validator(mode="after")
    def _consistent(self) -> ContainerAppsSection:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        if both := sorted(set(self.environment) & set(self.secrets)):
            raise ValueError(f"{', '.join(both)} set in both environment and secrets")
        if "MLDEPLOY_API_KEYS" in self.environment:
            raise ValueError("MLDEPLOY_API_KEYS in environment shows the keys to whoever can read the app: "
                             "keep them in Key Vault and name the secret under secrets")
        for name, url in self.secrets.items():
            if not re.fullmatch(r"https://[a-z0-9-]+\.vault\.azure\.net/secrets/[A-Za-z0-9-]+(/[0-9a-f]{32})?", url):
                raise ValueError(f"secrets.{name}: {url!r} is not a Key Vault secret URL "
                                 "(https://VAULT.vault.azure.net/secrets/NAME[/VERSION])")
        for cidr in self.allowed_ips:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"allowed_ips: {cidr!r} is not an IP range like 203.0.113.0/24") from None
        container_environment(self.environment, r"PORT|CONTAINER_APP_\w*", "Container Apps itself",
                              secret_names=self.secrets)
        return self


class AksSection(Section):
    cluster: str | None = Field(None, pattern=r"^[A-Za-z0-9]([-_A-Za-z0-9]*[A-Za-z0-9])?$",
                                description="The AKS cluster's name in deploy.azure.resource_group: its endpoint and "
                                            "CA come from the managed cluster, its token from the job's Entra ID "
                                            "login (no kubeconfig). The slots' settings are deploy.kubernetes's.")


class AzureSection(Section):
    subscription_id: str | None = Field(None, description="Default: AZURE_SUBSCRIPTION_ID.")
    resource_group: str | None = Field(None, description="Default: AZURE_RESOURCE_GROUP.")
    workspace: str | None = Field(None, description="Azure ML workspace name. Default: AZUREML_WORKSPACE_NAME.")
    bake_seconds: int = Field(0, ge=0, le=3600, description="After a canary deploy, keep checking it this long.")
    wait_seconds: int = Field(1800, ge=10, description="Give up waiting for a long-running operation after this long.")
    azureml: AzureMlSection = Field(default_factory=AzureMlSection)
    containerapps: ContainerAppsSection = Field(default_factory=ContainerAppsSection)
    aks: AksSection = Field(default_factory=AksSection)


class KubernetesSection(Section):
    kubeconfig: str | None = Field(None, description="The kubeconfig file (default: KUBECONFIG, else ~/.kube/config).")
    context: str | None = Field(None, description="The kubeconfig context (default: its current-context).")
    github_oidc_audience: str | None = Field(None, min_length=1, description="In GitHub Actions: authenticate with "
                                             "the job's own OIDC token for this audience instead of the kubeconfig's "
                                             "user (a cluster that trusts GitHub as issuer; no stored credential).")
    namespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                           description="The namespace the slots' objects live in (it must exist).")
    gateway: str | None = Field(None, pattern=r"^([a-z0-9-]+/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                description="The Gateway API Gateway the HTTPRoute attaches to: NAME or "
                                            "NAMESPACE/NAME (its controller splits the weights).")
    hostnames: list[str] = Field(default_factory=list, description="The HTTPRoute's hostnames (default: the "
                                                                   "Gateway's listeners decide).")
    traffic: Literal["gateway", "replicas"] = Field(
        "gateway", description="How the slots share traffic: gateway (an HTTPRoute's weights, exact) or replicas "
                               "(no Gateway API: one Service <endpoint> over the serving slots' pods, shares "
                               "rounded to whole replicas of `replicas`, no HPA; coarse).")
    replicas: int = Field(2, ge=1, le=1000, description="Replicas per slot (the HPA's minimum); with traffic: "
                                                       "replicas, the serving slots' total.")
    max_replicas: int = Field(4, ge=1, le=1000, description="The HPA's maximum per slot.")
    cpu_target: int = Field(70, ge=1, le=100, description="The HPA's average CPU utilization target (percent).")
    cpu: Annotated[float, Field(gt=0)] | Annotated[str, Field(pattern=r"^\d+(\.\d+)?m?$")] = Field(
        "1", description="CPU request and limit per replica (2, 0.5, 500m); the server's workers follow the limit.")
    memory: str = Field("2Gi", pattern=r"^\d+(Mi|Gi)$", description="Memory request and limit per replica.")
    gpus: int = Field(0, ge=0, le=16, description="GPUs per replica (limits of gpu_resource).")
    gpu_resource: str = Field("nvidia.com/gpu", description="The extended resource that GPUs are.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods need "
                                                                            "(e.g. a GPU node pool's).")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets the kubelet pulls the "
                                                                            "image with (none: the nodes' own access).")
    service_account: str | None = Field(None, description="The service account the pods run as.")
    environment: dict[str, str] = Field(default_factory=dict,
                                        description="Extra environment of the container (MLDEPLOY_* settings).")
    wait_seconds: int = Field(600, ge=10, description="Give up waiting for a slot's rollout after this long "
                                                      "(its progressDeadlineSeconds too).")

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesSection:
        if self.traffic == "gateway" and self.max_replicas < self.replicas:   # (replicas: no HPA)
            raise ValueError(f"max_replicas ({self.max_replicas}) is below replicas ({self.replicas})")
        if "MLDEPLOY_API_KEYS" in self.environment:
            raise ValueError("MLDEPLOY_API_KEYS in environment shows the keys to whoever can read the Deployment: "
                             "keep them in a Secret mounted as a file (MLDEPLOY_API_KEYS_FILE)")
        container_environment(self.environment, r"PORT|KUBERNETES_\w*", "Kubernetes itself")
        return self


class DeploySection(Section):
    cloud: str = Field(registry.EMBEDDED, description="Where: " + ", ".join(registry.clouds()) + ".",
                       json_schema_extra={"enum": list(registry.clouds())})
    target: str | None = Field(None, validate_default=True, description="Per cloud (the first is the default): " + "; ".join(
        f"{c} {'|'.join(registry.targets_of(c))}" for c in registry.clouds()) + ".")
    endpoint: str | None = Field(None, description="Endpoint/service name (default: the model's name).")
    region: str | None = None
    canary_traffic: int = Field(10, ge=0, le=100, description="Percent of traffic the canary slot takes.")
    canary_max_traffic: int = Field(20, ge=0, le=50, description="A pull request's run (pull_request*, "
                                    "workflow_run) deploys no canary above this share, and never production. "
                                    "At most 50: the pull request can edit this file.")
    require_provenance: bool | None = Field(None, description="Deploy only an image digest with a build provenance "
                                            "attestation from the kit's workflow in this repository. Default: on "
                                            "in GitHub Actions (not under act), off elsewhere; a pull request's run "
                                            "on GitHub checks it whatever this says.")
    port: int = Field(8080, ge=1, le=65535, description="cloud local: the port the endpoint answers on.")
    aws: AwsSection = Field(default_factory=AwsSection)
    gcp: GcpSection = Field(default_factory=GcpSection)
    azure: AzureSection = Field(default_factory=AzureSection)
    kubernetes: KubernetesSection = Field(default_factory=KubernetesSection)

    @field_validator("cloud")
    @classmethod
    def _known_cloud(cls, cloud: str) -> str:
        if cloud not in registry.clouds():
            raise ValueError(f"Input should be {' or '.join(repr(c) for c in registry.clouds())}")
        return cloud

    @field_validator("target")
    @classmethod
    def _target_fits_cloud(cls, target: str | None, info: ValidationInfo) -> str | None:
        cloud = info.data.get("cloud")
        if cloud is None:  # cloud itself was invalid and is reported on its own
            return target
        allowed = registry.targets_of(cloud)
        if target is None:
            return allowed[0]
        if target not in allowed:
            raise ValueError(f"target {target!r} does not run on cloud {cloud}; "
                             f"expected one of {', '.join(allowed)}")
        return target


# The storage URI each cloud's identity can reach (kubernetes: any cluster, any store its pods can read).
STORAGE_SCHEMES = {"aws": ("s3://",), "gcp": ("gs://",), "azure": ("https://",), "local": ("file://",),
                   "kubernetes": ("s3://", "gs://", "https://", "file://")}
STORAGE_URI = re.compile(r"^(?:s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]|gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]"
                         r"|https://[a-z0-9]{3,24}\.blob\.core\.windows\.net/[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])"
                         r"|file:///[^\s]*?)(?:/[^\s]*)?$")
STORAGE_FORMS = ("s3://BUCKET/PREFIX (aws), gs://BUCKET/PREFIX (gcp), "
                 "https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX (azure) or file:///DIR (local)")


class StorageSection(Section):
    """Where models live when image.model is storage: `mldeploy publish` uploads the bundle's served
    files to `<uri>/<model name>/<bundle sha256>/` and never overwrites them."""

    uri: str | None = Field(None, description=f"{STORAGE_FORMS}; the scheme must fit deploy.cloud. Turn object "
                                              "versioning on for the bucket (the version ids are recorded).")
    keep: PositiveInt = Field(10, description="`mldeploy publish --prune` keeps the artifacts of the last N "
                                              "publishes, and any that a slot serves.")

    @field_validator("uri")
    @classmethod
    def _storage_uri(cls, value: str | None) -> str | None:
        if value is not None and not STORAGE_URI.match(value.rstrip("/")):
            raise ValueError(f"expected {STORAGE_FORMS}")
        return value.rstrip("/") if value else value


class DriftSection(Section):
    """When live inputs count as drifted from the baseline (mldeploy monitor drift)."""

    psi: float = Field(0.2, gt=0, description="Population stability index above this flags a feature.")
    ks_pvalue: float = Field(0.01, gt=0, lt=1, description="Numeric features: a Kolmogorov-Smirnov p-value below this "
                                                           "(with PSI above psi/2) flags the feature.")
    chi2_pvalue: float = Field(0.01, gt=0, lt=1, description="Categorical features: a chi-square p-value below this "
                                                             "(with PSI above psi/2) flags the feature.")
    jensen_shannon: float = Field(0.1, gt=0, le=1, description="Categorical features and predictions: "
                                                               "Jensen-Shannon distance above this flags.")
    prediction_psi: float = Field(0.2, gt=0, description="PSI of the model's outputs above this flags prediction drift.")
    bins: int = Field(10, ge=2, le=100, description="Histogram bins of numeric features (quantile edges of the baseline).")
    min_records: int = Field(100, ge=1, description="Fewer captured records than this: report, never flag.")
    fail_on_drift: bool = Field(False, description="Exit 1 when any feature or the predictions drift.")
    capture: str | None = Field(None, description="Where captured requests are read from: a folder, s3://, gs:// "
                                                  "or https://<account>.blob.core.windows.net/<container>/<prefix>.")
    schedule: str = Field("0 * * * *", description="Cron schedule of the drift check (local: printed for cron/CI; "
                                                   "clouds: their monitoring schedule).")


class CanaryAnalysisSection(Section):
    """How `mldeploy canary analyze` judges the canary against production over the same window."""

    window_seconds: int = Field(600, ge=10, le=86400, description="How far back to look.")
    min_requests: int = Field(100, ge=1, description="Fewer canary requests than this: decision hold.")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Canary 5xx share above this: rollback.")
    max_error_rate_increase: float = Field(0.005, ge=0, le=1, description="Canary 5xx share minus production's "
                                                                          "above this: rollback.")
    max_latency_ratio: float = Field(1.5, gt=1, description="Canary p99 (or p50) latency over production's above "
                                                            "this: rollback.")
    max_prediction_divergence: float = Field(0.1, gt=0, le=1, description="Jensen-Shannon distance between the two "
                                                                          "slots' predictions above this: rollback.")


class AlertsSection(Section):
    """Alarms on the endpoint, set up by mldeploy monitor setup."""

    latency_p99_ms: float = Field(1000, gt=0, description="Model latency p99 above this (ms).")
    errors_5xx: int = Field(1, ge=1, description="This many 5xx answers in a 5-minute window.")
    cpu_percent: float = Field(90, gt=0, le=100, description="Azure: CPU utilization above this.")
    memory_percent: float = Field(90, gt=0, le=100, description="Azure: memory utilization above this.")
    invocations_anomaly: bool = Field(True, description="AWS: an anomaly-detection alarm on invocations.")
    emails: list[str] = Field(default_factory=list, description="Who is told (Vertex alert emails, an SNS "
                                                                "subscription, an Azure action group).")
    sns_topic: str | None = Field(None, description="AWS: topic ARN or name (created) the alarms notify.")
    action_group: str | None = Field(None, description="Azure: action group resource id or name (created) "
                                                       "the alerts notify.")


class MonitoringSection(Section):
    enabled: bool = Field(False, description="Capture requests and set up monitoring when deploying.")
    capture_sample_rate: float = Field(0.0, ge=0, le=1, description="Share of requests captured for drift checks.")
    baseline: str | None = Field(None, description="Baseline statistics file (default: baseline.json in the bundle).")
    s3: str | None = Field(None, pattern=r"^s3://[^/]+", description="AWS: S3 prefix for SageMaker Model Monitor's "
                                                                     "baseline files and reports (default: "
                                                                     "<capture bucket>/mldeploy-monitoring/<endpoint>).")
    drift: DriftSection = Field(default_factory=DriftSection)
    canary: CanaryAnalysisSection = Field(default_factory=CanaryAnalysisSection)
    alerts: AlertsSection = Field(default_factory=AlertsSection)

    @property
    def capture_rate(self) -> float:
        """The share of requests a deploy asks the serving runtime to capture."""
        return self.capture_sample_rate if self.enabled else 0.0


# Serving settings of the HTTP server that the Lambda runtime (one event at a time, no server) never reads.

class Config(Section):
    """mldeploy.yaml, schema version 1."""

    model_config = ConfigDict(extra="forbid", title="mldeploy.yaml", validate_assignment=True)

    version: Literal[1] = Field(SCHEMA_VERSION, description="Schema version of this file.")
    bundle: str = Field(".mldeploy/bundle", description="Folder the pipeline's bundle lives in.")
    model: ModelSection = Field(default_factory=ModelSection)
    inputs: list[InputSpec] = Field(
        default_factory=list,
        description="Model inputs. Required for TorchScript, state_dict and pickled PyTorch models; "
                    "checked against the model for ONNX, TensorFlow and .pt2 sources.")
    outputs: list[OutputSpec] = Field(
        default_factory=list, description="Names for the model's outputs, in order (default: the model's own).")
    parity: ParitySection = Field(default_factory=ParitySection)
    optimize: OptimizeSection = Field(default_factory=OptimizeSection)
    image: ImageSection = Field(default_factory=ImageSection)
    deploy: DeploySection = Field(default_factory=DeploySection)
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection)
    storage: StorageSection = Field(default_factory=StorageSection, validate_default=True)
    _code_roots: dict[str, Path] = PrivateAttr(default_factory=dict)  # see import_root

    def import_root(self, key: str) -> Path:
        """The folder model code at a dotted key of CODE_KEYS (model.factory, model.custom_objects) is
        imported from: the config file's folder when the file names it, else (a flag, the environment, no
        file) the working directory."""
        return self._code_roots.get(key) or Path.cwd()

    @field_validator("inputs")
    @classmethod
    def _unique_names(cls, inputs: list[InputSpec]) -> list[InputSpec]:
        names = [i.name for i in inputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"input names must be unique; repeated: {', '.join(dupes)}")
        return inputs

    @field_validator("outputs")
    @classmethod
    def _unique_output_names(cls, outputs: list[OutputSpec]) -> list[OutputSpec]:
        names = [o.name for o in outputs]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"output names must be unique; repeated: {', '.join(dupes)}")
        return outputs

    @field_validator("storage")
    @classmethod
    def _storage_fits(cls, storage: StorageSection, info: ValidationInfo) -> StorageSection:
        """image.model: storage needs storage.uri, and the URI must be one the cloud's identity reaches."""
        image, deploy = info.data.get("image"), info.data.get("deploy")
        if image is not None and image.model == "storage" and not storage.uri:
            raise ValueError("image.model is storage but storage.uri is not set: set it to " + STORAGE_FORMS)
        if storage.uri and deploy is not None and not storage.uri.startswith(STORAGE_SCHEMES[deploy.cloud]):
            raise ValueError(f"uri {storage.uri} does not fit deploy.cloud {deploy.cloud}: expected "
                             f"{' or '.join(s + '...' for s in STORAGE_SCHEMES[deploy.cloud])}")
        return storage

    @model_validator(mode="after")
    def _settings_the_target_reads(self) -> Config:
        """A serving setting the target's runtime would ignore, or one that would lock its platform out,
        is refused rather than deployed to do nothing (or to answer 401 to every call)."""
        entry = registry.find(self.deploy.cloud, self.deploy.target)
        own = _value_at(self, entry.settings) if entry.settings else None
        given = {**self.image.environment, **(getattr(own, "environment", None) or {})}
        for pattern, why in entry.refused_environment:
            if refused := sorted(n for n in given if re.fullmatch(pattern, n)):
                raise ValueError(f"{refused[0]} {why}")
        if not entry.capabilities.api_keys and "MLDEPLOY_API_KEYS_FILE" in self.image.environment:
            raise ValueError(f"image.environment MLDEPLOY_API_KEYS_FILE would answer 401 to {entry.name}'s own calls, "
                             "which carry no key: the platform authenticates callers itself")
        return self


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://github.com/acme/ml-deploy/schema/mldeploy.schema.json", **schema}


class ConfigError(UsageError):
    """A config that does not validate; carries every problem found, each with its place."""

    def __init__(self, problems: list[tuple[str | None, int | None, str]]):
        file, line, message = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(message + more, file=file, line=line)
        self.problems = problems


# ---------------------------------------------------------------------------- loading

def find_config_file(path: str | os.PathLike | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The explicit path, else $MLDEPLOY_CONFIG, else ./mldeploy.yaml if present, else None."""
    chosen = path or environ.get("MLDEPLOY_CONFIG")
    if chosen:
        p = Path(chosen)
        if not p.is_file():
            raise UsageError(f"config file {p} not found",
                             hint="pass an existing file with --config, or omit it to use defaults")
        return p
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def _refuse_aliases(text: str, path: Path) -> None:
    """Anchors and aliases let a few hundred bytes expand to gigabytes (a "billion laughs"): a config
    a model repo hands us never needs them."""
    from ruamel.yaml import YAML
    from ruamel.yaml.events import AliasEvent

    for event in YAML(typ="rt", pure=True).parse(text):
        if isinstance(event, AliasEvent) or getattr(event, "anchor", None):
            raise UsageError("YAML anchors and aliases are not accepted in mldeploy.yaml", file=str(path),
                             line=event.start_mark.line + 1, hint="write the values out")


def _read_yaml(path: Path) -> dict[Any, Any]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config: {e}", file=str(path)) from None
    try:
        _refuse_aliases(text, path)
        data = YAML(typ="rt", pure=True).load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problem = (e.problem or e.context or "invalid YAML").strip()
        raise UsageError(f"invalid YAML: {problem}", file=str(path), line=line,
                         hint="fix the syntax; `mldeploy config validate` checks it") from None
    except YAMLError as e:  # e.g. duplicate keys
        raise UsageError(f"invalid YAML: {str(e).splitlines()[0]}", file=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        found = "a list" if isinstance(data, list) else f"{type(data).__name__} {data!r}"
        raise UsageError(f"the top level must be a mapping of keys (version: 1, model: ...), found {found}",
                         file=str(path), line=1)
    return data


def _line_of(node: Any, loc: tuple) -> int | None:
    """1-based line of the deepest key along `loc` in a ruamel round-trip tree."""
    line = None
    for key in loc:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(node, dict) and key in node:
                line = lc.key(key)[0] + 1 if lc else line
                node = node[key]
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                line = lc.item(key)[0] + 1 if lc else line
                node = node[key]
            else:
                break
        except (KeyError, TypeError, AttributeError):
            break
    return line


def _plain(node: Any) -> Any:
    """ruamel containers -> plain dicts/lists (pydantic and JSON want plain types)."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _set_dotted(data: dict, path: tuple[str, ...], value: Any) -> None:
    node = data
    for key in path[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            node[key] = nxt
        node = nxt
    node[path[-1]] = value


def _get_dotted(data: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _value_at(section: Any, key: str) -> Any:
    """The value at a dotted key as the file spells it (aliases: deploy.aws.lambda), read from the
    attributes: no dump of the whole config to read one key. None when a part is missing."""
    for part in key.split("."):
        fields = getattr(type(section), "model_fields", {})
        name = next((n for n, f in fields.items() if (f.alias or n) == part), None)
        if name is None:
            return None
        section = getattr(section, name)
    return section


def _parse_env_value(text: str) -> Any:
    """Lists and mappings are read as YAML flow ([1, 2], {a: 1}); anything else stays a string,
    which pydantic converts where the key wants a number or a bool ("1e-5", "true")."""
    if text.strip().startswith(("[", "{")):
        from ruamel.yaml import YAML
        from ruamel.yaml.error import YAMLError

        try:
            return _plain(YAML(typ="safe", pure=True).load(text))
        except YAMLError:
            pass
    return text


def load_config(path: str | os.PathLike | None = None, *, overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] = os.environ) -> Config:
    """Load and validate the config from file, environment and flags (dotted keys in `overrides`)."""
    file = find_config_file(path, environ)
    raw = _read_yaml(file) if file else {}
    data = _plain(raw)
    if file:
        base = file.parent
        for key in PATH_KEYS:
            value = _get_dotted(data, key)
            if isinstance(value, str) and value and not os.path.isabs(value) and "://" not in value:
                _set_dotted(data, key, str(base / value))

    origin: dict[tuple[str, ...], str] = {}
    for name, text in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and ("__" in name or name == ENV_PREFIX + "BUNDLE"):
            key = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
            _set_dotted(data, key, _parse_env_value(text))
            origin[key] = f"environment variable {name}"
    for dotted, value in (overrides or {}).items():
        if value is not None:
            key = tuple(dotted.split("."))
            _set_dotted(data, key, value)
            origin[key] = f"--{dotted.split('.')[-1].replace('_', '-')}"

    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError([_describe(err, raw, file, origin) for err in e.errors()]) from None
    if file:
        cfg._code_roots = {".".join(key): file.parent.resolve() for key in CODE_KEYS
                           if _get_dotted(_plain(raw), key) and key not in origin}
    return cfg


def require_deploy_keys(cfg: Config, path: str | os.PathLike | None = None) -> None:
    """The keys a deploy to the configured target needs and can find nowhere else (the environment and the
    credentials supply the rest), checked before the plan: a plan that can never be applied is never
    printed. Commands that only read (status, doctor, drift) do not need them."""
    entry = registry.find(cfg.deploy.cloud, cfg.deploy.target)
    for key, what in entry.required:
        if not _value_at(cfg, key):
            file = find_config_file(path)
            raise UsageError(f"{key} is not set: {entry.name} needs {what}",
                             file=str(file) if file else None,
                             line=_line_of(_read_yaml(file), ("deploy", "target")) if file else None)


# The files a config names that must exist before the step that reads them (the bundle and a capture are made later).
INPUT_FILES = (("model", "path"), ("parity", "sample"), ("optimize", "data"), ("image", "dockerfile"),
               ("monitoring", "baseline"))


def check_files(cfg: Config, path: str | os.PathLike | None = None) -> list[str]:
    """`config validate`: raise ConfigError naming each file the config names that is missing (each step would
    find out only when it runs); returns the files that were checked."""
    file = find_config_file(path)
    raw = _read_yaml(file) if file else None
    values = cfg.model_dump()
    problems, checked = [], []
    for key in INPUT_FILES:
        value = _get_dotted(values, key)
        if not value:
            continue
        checked.append(f"{'.'.join(key)}: {value}")
        if not Path(value).exists():
            problems.append((str(file) if file else None, _line_of(raw, key) if raw is not None else None,
                             f"{'.'.join(key)}: {value} does not exist"))
    if problems:
        raise ConfigError(problems)
    return checked


def _describe(err: ErrorDetails, raw: Any, file: Path | None, origin: dict) -> tuple[str | None, int | None, str]:
    loc = tuple(err["loc"])
    key = ".".join(str(k) for k in loc) or "(top level)"
    found = err.get("input")
    if err["type"] == "extra_forbidden":
        parent = _schema_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), parent, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(parent)}"
        message = f"{key}: unknown key ({hint})"
    else:
        expected = err["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
        shown = json.dumps(found, default=str) if not isinstance(found, dict | BaseModel) else "a mapping"
        message = f"{key}: {expected}; found {shown}"
    for key, source in origin.items():  # set by a flag or env var, at this key, above or below it
        if loc[:len(key)] == key or key[:len(loc)] == loc:
            return None, None, f"{source}: {message}"
    return (str(file) if file else None), (_line_of(raw, loc) if file else None), message


def _schema_keys(loc: tuple) -> list[str]:
    """Known keys of the section at `loc`, for "did you mean" hints."""
    model: type[BaseModel] = Config
    for key in loc:
        if isinstance(key, int):
            continue
        field = model.model_fields.get(str(key))
        if field is None:
            return []
        ann = field.annotation
        inner = getattr(ann, "__args__", None)
        candidates = [ann, *(inner or ())]
        section = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if section is None:
            return []
        model = section
    return list(model.model_fields)
