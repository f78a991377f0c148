"""The target registry, the one list of deploy targets: where each runs, the module and class that do it, the extra that
installs its SDK, and what it can do. Everything that differs by target is derived from here:
config validation, the CLI's choices, `target_for`, registry logins, capture readers, the actions'
extras and the docs' target table. A target is its module (plus its fake in tests), one entry here
and a docs page; nothing else names it.

Module paths are strings and this file imports only the standard library, so the serving image,
config validation and `scripts/action-setup.sh` (which runs this file before the kit is installed:
`python3 targets.py extras`, `extra CLOUD TARGET`) read it without importing any target or SDK.

Targets outside the kit register themselves with an entry point in the group `mldeploy.targets`
whose object is an `Entry`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import cache

ENTRY_POINT_GROUP = "mldeploy.targets"


@dataclass(frozen=True)
class Capabilities:
    """What a target can do, declared as data (callers read these, they never branch on names)."""
    pr_slots: bool = True            # a pull request's canary gets its own slot beside others
    shadow: bool = False             # mirrored (shadow) traffic instead of a live share
    capture: bool = False            # the platform captures requests, so canary analysis compares predictions
    api_keys: bool = True            # MLDEPLOY_API_KEYS_FILE works (False: the platform's own calls carry
                                     # no key, so the config refuses it: every call would answer 401)


@dataclass(frozen=True)
class Entry:
    cloud: str                       # deploy.cloud
    name: str                        # deploy.target
    module: str                      # the module holding the target class (imports its SDK lazily)
    cls: str                         # the Target subclass
    title: str                       # what it deploys to, for docs and errors
    slots: str                       # how the production/canary slots map onto the cloud
    extra: str = ""                  # the pip extra with its SDK ("" needs none)
    capabilities: Capabilities = Capabilities()
    # (dotted config key, what it holds) a deploy needs and can find nowhere else
    required: tuple[tuple[str, str], ...] = ()
    # (pattern of serving environment variable names, why) the config refuses for this target
    refused_environment: tuple[tuple[str, str], ...] = ()
    settings: str = ""               # the config section holding its settings, dotted (deploy.aws.lambda)
    capture_reader: str = ""         # "module:Class" that decodes the platform's own captured requests


@dataclass(frozen=True)
class Storage:
    """A cloud's object storage: URIs it holds, and the module function that lists them."""
    pattern: str                     # matched against the whole URI
    module: str
    lister: str                      # (source, region, suffixes) -> [(name, size, modified, read)]
    extra: str
    example: str


@dataclass(frozen=True)
class Registry:
    """A container registry family: host pattern, and the module functions that log in and make a
    missing repository (None: the registry makes it on push)."""
    pattern: str
    module: str
    login: str
    ensure: str | None = None
    extra: str = ""

    def matches(self, host: str) -> bool:
        return re.match(self.pattern, host.lower()) is not None


_ROLE = (("deploy.aws.role", "the ARN of the execution role it runs as (arn:aws:iam::<account>:role/<name>)"),)
_SERVER_SETTINGS = r"MLDEPLOY_(HEADER_TIMEOUT|BODY_TIMEOUT|MAX_CONNECTIONS|WORKERS|HOST|DRAIN_SECONDS|GRPC_PORT|" \
                   r"BATCHING|MAX_BATCH|BATCH_WAIT_MS|INFER_THREAD|CAPTURE_\w+|ACCESS_LOG|(LIVENESS|READINESS|SCORING)_ROUTE)"

EMBEDDED = "local"  # the embedded default cloud: everything on this machine's Docker engine

# how slots map on the kubernetes target, whichever cluster it reaches
KUBERNETES_SLOTS = "a Deployment and Service per slot; one HTTPRoute's weights (and a header rule per slot)"

BUILTIN: tuple[Entry, ...] = (
    Entry(EMBEDDED, "docker", "mldeploy.deploy.local", "LocalTarget", "a local Docker engine",
          "one container per slot behind a weighted router on 127.0.0.1", extra="image",
          capabilities=Capabilities(pr_slots=False, capture=True)),
    Entry("aws", "sagemaker", "mldeploy.deploy.sagemaker", "SageMakerTarget", "SageMaker real-time endpoints",
          "production variants and their weights", extra="aws", required=_ROLE,
          capabilities=Capabilities(capture=True, api_keys=False),
          settings="deploy.aws.sagemaker", capture_reader="mldeploy.deploy.sagemaker_monitor:CapturedRecords"),
    Entry("aws", "lambda", "mldeploy.deploy.lambda_", "LambdaTarget", "AWS Lambda container functions",
          "versions behind the alias `live` and its AdditionalVersionWeights", extra="aws",
          required=_ROLE, capabilities=Capabilities(pr_slots=False), settings="deploy.aws.lambda",
          refused_environment=((_SERVER_SETTINGS, ("does nothing on Lambda (one request at a time per execution "
                                                   "environment, no HTTP server of ours): remove it")),)),
    Entry("aws", "ecs", "mldeploy.deploy.ecs", "EcsTarget", "Amazon ECS services behind an ALB (Fargate by default)",
          "one service and target group per slot, weighted in one listener rule", extra="aws",
          required=(*_ROLE, ("deploy.aws.ecs.cluster", "the ECS cluster the services run in"),
                    ("deploy.aws.ecs.listener_arn", "the ALB listener that routes to the slots"),
                    ("deploy.aws.ecs.subnets", "the subnets of the tasks, in the ALB's VPC"),
                    ("deploy.aws.ecs.execution_role", "the task execution role (pulls from ECR, writes logs)")),
          settings="deploy.aws.ecs"),
    Entry("gcp", "vertex", "mldeploy.deploy.vertex", "VertexTarget", "Vertex AI endpoints",
          "deployed models and the endpoint's trafficSplit", extra="gcp",
          capabilities=Capabilities(api_keys=False),
          settings="deploy.gcp.vertex"),
    Entry("gcp", "cloudrun", "mldeploy.deploy.cloudrun", "CloudRunTarget", "Cloud Run services",
          "revisions, tagged per slot, and the service's traffic", extra="gcp", settings="deploy.gcp.cloudrun"),
    Entry("azure", "azureml", "mldeploy.deploy.azureml", "AzureMLTarget", "Azure ML managed online endpoints",
          "deployments and the endpoint's traffic (or mirror traffic)", extra="azure",
          capabilities=Capabilities(shadow=True, api_keys=False),
          settings="deploy.azure.azureml"),
    Entry("azure", "containerapps", "mldeploy.deploy.containerapps", "ContainerAppsTarget",
          "Azure Container Apps (multiple-revision mode)",
          "revisions, labelled per slot, and the app's ingress traffic", extra="azure",
          required=(("deploy.azure.containerapps.managed_environment",
                     "the Container Apps environment the app runs in (a name or a resource id)"),),
          settings="deploy.azure.containerapps"),
    Entry("aws", "eks", "mldeploy.deploy.kubernetes", "EksTarget",
          "Amazon EKS clusters (as kubernetes, credentials from the job's AWS role)",
          KUBERNETES_SLOTS,
          extra="eks",
          required=(("deploy.aws.eks.cluster", "the EKS cluster's name"),),
          settings="deploy.kubernetes"),
    Entry("gcp", "gke", "mldeploy.deploy.kubernetes", "GkeTarget",
          "Google Kubernetes Engine clusters (as kubernetes, credentials from the job's Google identity)",
          KUBERNETES_SLOTS,
          extra="gke",
          required=(("deploy.gcp.gke.cluster", "the GKE cluster's name"),),
          settings="deploy.kubernetes"),
    Entry("azure", "aks", "mldeploy.deploy.kubernetes", "AksTarget",
          "Azure Kubernetes Service clusters (as kubernetes, credentials from the job's Entra ID login)",
          KUBERNETES_SLOTS,
          extra="aks",
          required=(("deploy.azure.aks.cluster", "the AKS cluster's name"),),
          settings="deploy.kubernetes"),
    Entry("kubernetes", "kubernetes", "mldeploy.deploy.kubernetes", "KubernetesTarget",
          "any Kubernetes cluster (a kubeconfig context) with a Gateway API controller",
          KUBERNETES_SLOTS,
          extra="kubernetes",
          settings="deploy.kubernetes"),
)

REGISTRIES: tuple[Registry, ...] = (
    Registry(r"^\d{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$", "mldeploy.deploy.aws", "ecr_login",
             "ensure_ecr_repository", "aws"),
    Registry(r"^([a-z0-9-]+-docker\.pkg\.dev|([a-z]+\.)?gcr\.io)$", "mldeploy.deploy.gcp", "artifact_registry_login",
             "ensure_artifact_repository", "gcp"),
    Registry(r"^[a-z0-9]+\.azurecr\.io$", "mldeploy.deploy.azure", "acr_login", None, "azure"),
)


STORAGE: tuple[Storage, ...] = (
    Storage(r"^s3://", "mldeploy.deploy.aws", "capture_objects", "aws", "s3://BUCKET/PREFIX"),
    Storage(r"^gs://", "mldeploy.deploy.gcp", "capture_objects", "gcp", "gs://BUCKET/PREFIX"),
    Storage(r"^https://[^/]+\.blob\.core\.windows\.net(/|$)", "mldeploy.deploy.azure", "capture_blobs", "azure",
            "https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX"),
)


@cache
def entries() -> tuple[Entry, ...]:
    """The kit's targets, then those other packages register (entry point group mldeploy.targets)."""
    from importlib.metadata import entry_points

    found = list(BUILTIN)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        entry = point.load()
        if not isinstance(entry, Entry):
            raise TypeError(f"entry point {point.name} ({point.value}) is not a mldeploy.targets.Entry")
        found.append(entry)
    return tuple(found)


def clouds() -> list[str]:
    return list(dict.fromkeys(e.cloud for e in entries()))


def targets_of(cloud: str) -> list[str]:
    """The targets of one cloud, its default first."""
    return [e.name for e in entries() if e.cloud == cloud]


def find(cloud: str, target: str | None) -> Entry:
    """The entry of deploy.cloud/deploy.target (target None: the cloud's default). KeyError when none."""
    for e in entries():
        if e.cloud == cloud and (target is None or e.name == target):
            return e
    raise KeyError((cloud, target))


def extras() -> list[str]:
    return sorted({e.extra for e in entries() if e.extra} | {r.extra for r in REGISTRIES} | {s.extra for s in STORAGE})


def storage_for(uri: str) -> Storage | None:
    return next((s for s in STORAGE if re.match(s.pattern, uri, re.IGNORECASE)), None)


def registry_for(host: str) -> Registry | None:
    return next((r for r in REGISTRIES if r.matches(host)), None)


def markdown_table() -> str:
    """The docs' target table (docs/deploy.md, between the `targets` markers; scripts/gen-docs.py writes it)."""
    rows = [("| `deploy.cloud` | `deploy.target` | deploys to | slots are | per-PR slots | shadow traffic | "
             "canary analysis compares predictions | API keys | extra |"), "|---|---|---|---|---|---|---|---|---|"]
    for e in entries():
        c = e.capabilities
        rows.append(f"| {e.cloud} | {e.name} | {e.title} | {e.slots} | "
                    f"{'yes' if c.pr_slots else 'one canary at a time'} | {'yes' if c.shadow else 'no'} | "
                    f"{'yes' if c.capture else 'no'} | {'yes' if c.api_keys else 'no: the platform authenticates'} | "
                    f"{f'`{e.extra}`' if e.extra else '-'} |")
    return "\n".join(rows)


if __name__ == "__main__":  # scripts/action-setup.sh: the extras a composite action may install
    if sys.argv[1:] == ["extras"]:
        print(" ".join(extras()))
    elif sys.argv[1:2] == ["extra"] and len(sys.argv) in (3, 4):  # the one a deploy to CLOUD [TARGET] needs
        try:
            print(find(sys.argv[2], sys.argv[3] if len(sys.argv) == 4 and sys.argv[3] else None).extra)
        except KeyError:
            print(f"no target {' '.join(sys.argv[2:])!r}: deploy.cloud and deploy.target are one of "
                  + ", ".join(f"{e.cloud} {e.name}" for e in entries()), file=sys.stderr)
            sys.exit(2)
    elif sys.argv[1:] == ["table"]:
        print(markdown_table())
    else:
        sys.exit("usage: targets.py extras | extra CLOUD [TARGET] | table")
