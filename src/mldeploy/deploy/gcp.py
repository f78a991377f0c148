"""What the GCP targets (Vertex AI, Cloud Run) share: credentials and project, API endpoints and
clients, one-line errors, long-running operations, labels, Artifact Registry, and the preflight.

Credentials are Application Default Credentials (in GitHub Actions: google-github-actions/auth
with Workload Identity Federation; locally `gcloud auth application-default login`). The project
is deploy.gcp.project, else the one ADC names (GOOGLE_CLOUD_PROJECT, which the auth action exports,
or the credentials' own).

`MLDEPLOY_GCP_API_ENDPOINT` points every GCP client at one address instead of Google's hosts
(`{region}-aiplatform.googleapis.com` for Vertex AI, and so on), over the REST transport:
  - an https:// URL or a bare host (a private endpoint, a proxy) gets the ADC credentials;
  - a plain http:// URL (a local fake, as in the contract tests) gets AnonymousCredentials, so that
    no bearer token ever travels unencrypted; ADC is then not read at all, and the project must
    come from deploy.gcp.project or GOOGLE_CLOUD_PROJECT.
The credentials, the retry and the error translation live in mldeploy.clouds.gcp (the model artifacts
in Cloud Storage use them too) and are re-exported here. Only this package's GCP modules and
mldeploy.clouds / mldeploy.artifacts import google.*, and only inside functions.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mldeploy.clouds.gcp import CREDENTIALS_HINT as CREDENTIALS_HINT
from mldeploy.clouds.gcp import ENDPOINT_ENV as ENDPOINT_ENV
from mldeploy.clouds.gcp import PERMISSION_HINT as PERMISSION_HINT
from mldeploy.clouds.gcp import SCOPES as SCOPES
from mldeploy.clouds.gcp import _env_project, _first_line
from mldeploy.clouds.gcp import credentials as credentials
from mldeploy.clouds.gcp import message_of as message_of
from mldeploy.clouds.gcp import override as override
from mldeploy.clouds.gcp import plain_http as plain_http
from mldeploy.clouds.gcp import read_retry as read_retry
from mldeploy.clouds.gcp import status_of as status_of
from mldeploy.clouds.gcp import storage_client as storage_client
from mldeploy.clouds.gcp import translated as translated
from mldeploy.deploy import storage_location
from mldeploy.errors import CheckFailed, MldeployError, UsageError

if TYPE_CHECKING:
    from mldeploy.config import DeploySection
    from mldeploy.monitor.canary import SlotStats

POLL_SECONDS = float(os.environ.get("MLDEPLOY_POLL_SECONDS", "15"))
REGION = re.compile(r"^[a-z]+(-[a-z]+)+\d+$")
AR_HOST = re.compile(r"^([a-z0-9-]+)-docker\.pkg\.dev$")


# -- project, endpoints, clients (credentials: mldeploy.clouds.gcp) ------------------------------------
def project(deploy: DeploySection, found: str | None = None) -> str:
    """deploy.gcp.project, else the credentials' project (`found`, from credentials())."""
    chosen = deploy.gcp.project or found or _env_project()
    if not chosen:
        raise UsageError("no GCP project is set", hint="set deploy.gcp.project in mldeploy.yaml, or GOOGLE_CLOUD_PROJECT "
                                                       "(google-github-actions/auth exports it)")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.:-]{2,99}", chosen):  # ids, and legacy domain:id ones
        raise UsageError(f"{chosen!r} is not a GCP project id")
    return chosen


def region(deploy: DeploySection) -> str:
    """deploy.region: the location (e.g. europe-west4) of every GCP resource we make."""
    if not deploy.region:
        raise UsageError("no GCP region is set", hint="set deploy.region in mldeploy.yaml (e.g. europe-west4) or pass --region")
    if not REGION.match(deploy.region):
        raise UsageError(f"deploy.region {deploy.region!r} is not a GCP region", hint="e.g. us-central1, europe-west4")
    return deploy.region


def api_endpoint(region: str | None = None, service: str = "aiplatform") -> str:
    """The API host for a service: MLDEPLOY_GCP_API_ENDPOINT, else `{region}-{service}.googleapis.com`
    (Vertex AI's low-level clients default to the global host, which serves no regional resources),
    else `{service}.googleapis.com` for a global service."""
    return override() or (f"{region}-{service}.googleapis.com" if region else f"{service}.googleapis.com")


def client(cls: Any, creds: Any = None, region: str | None = None, service: str = "aiplatform") -> Any:
    """A low-level GAPIC client (REST transport) at the service's (regional) API endpoint."""
    from google.api_core.gapic_v1.client_info import ClientInfo

    from mldeploy import __version__

    if creds is None:
        creds, _ = credentials()
    return cls(credentials=creds, transport="rest", client_options={"api_endpoint": api_endpoint(region, service)},
               client_info=ClientInfo(user_agent=f"mldeploy/{__version__}"))


# -- errors and long-running operations --------------------------------------------------------------
def wait(operation: Any, doing: str, timeout: float) -> Any:
    """Wait for a long-running operation, printing progress; its result, or CheckFailed (it failed or
    ran past `timeout` seconds)."""
    started = time.monotonic()
    name = getattr(getattr(operation, "operation", None), "name", "")
    while True:
        with translated(f"follow the operation to {doing}"):
            done = operation.done(retry=read_retry())
        if done:
            break
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise CheckFailed(f"{doing} was still running after {timeout:.0f} s (operation {name})",
                              hint="raise deploy.gcp.wait_seconds, or look at the operation in the console")
        print(f"  {doing}: running ({elapsed:.0f} s)", flush=True)
        time.sleep(max(min(POLL_SECONDS, timeout - elapsed), 0.0))
    error = operation.exception()
    if error is not None:
        raise CheckFailed(f"{doing} failed ({status_of(error)}): {message_of(error)}")
    return operation.result()


# -- labels ------------------------------------------------------------------------------------------
def label_value(text: str) -> str:
    """A GCP label value: lowercase letters, digits, _ and -, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-")[:63]


def labels(endpoint: str, slot: str | None = None, image: str | None = None) -> dict[str, str]:
    """Labels on every resource: which endpoint, slot, image digest, repo and commit it belongs to."""
    found = {"mldeploy-endpoint": endpoint, "mldeploy-slot": slot,
             "mldeploy-image": image and image.rsplit("@", 1)[-1].removeprefix("sha256:"),
             "mldeploy-repo": os.environ.get("GITHUB_REPOSITORY"), "mldeploy-sha": os.environ.get("GITHUB_SHA")}
    return {k: label_value(v) for k, v in found.items() if v}


# -- registry ----------------------------------------------------------------------------------------
def artifact_registry_login(registry: str) -> dict[str, str]:
    """A short-lived (about 1 hour) push credential for an Artifact Registry or gcr.io host."""
    import google.auth
    import google.auth.transport.requests
    from google.auth import exceptions

    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
        credentials.refresh(google.auth.transport.requests.Request())
    except exceptions.DefaultCredentialsError as e:
        raise UsageError(f"no Google credentials to log in to {registry}: {_first_line(e)}",
                         hint=CREDENTIALS_HINT) from None
    except exceptions.GoogleAuthError as e:  # RefreshError, OAuthError (STS), TransportError
        raise UsageError(f"Google refused or could not issue a token for {registry}: {_first_line(e)}",
                         hint=CREDENTIALS_HINT) from None
    assert credentials.token is not None  # refresh() issued it, or raised
    return {"username": "oauth2accesstoken", "password": credentials.token}


def artifact_repository(repository: str) -> tuple[str, str, str]:
    """(location, project, repository id) of `LOCATION-docker.pkg.dev/PROJECT/REPO[/IMAGE...]`."""
    parts = repository.split("/")
    match = AR_HOST.match(parts[0].lower())
    if not match or len(parts) < 3 or not all(parts[1:3]):
        raise UsageError(f"{repository} is not an Artifact Registry repository (LOCATION-docker.pkg.dev/PROJECT/REPO)")
    return match.group(1), parts[1], parts[2]


def ensure_artifact_repository(repository: str, timeout: float = 300) -> bool:
    """Create the Docker-format Artifact Registry repository of `repository` (a registry path or an
    image repository below it) when missing, with immutable tags as on ECR (a tag never moves to
    another image; the push copes with tags that exist); True if created. gcr.io hosts are left alone (their
    repositories are made by Google, or by an admin with `gcloud artifacts repositories create`)."""
    if not AR_HOST.match(repository.split("/", 1)[0].lower()):
        return False
    from google.api_core import exceptions
    from google.cloud import artifactregistry_v1 as ar

    location, project_id, repo = artifact_repository(repository)
    registry = client(ar.ArtifactRegistryClient, service="artifactregistry")
    name = f"projects/{project_id}/locations/{location}/repositories/{repo}"
    with translated(f"look up the Artifact Registry repository {repo}"):
        try:
            registry.get_repository(name=name, retry=read_retry())
            return False
        except exceptions.NotFound:
            pass
    with translated(f"create the Artifact Registry repository {repo}"):
        operation = registry.create_repository(
            parent=f"projects/{project_id}/locations/{location}", repository_id=repo,
            repository=ar.Repository(format_=ar.Repository.Format.DOCKER, labels=labels(repo),
                                     description="Serving images pushed by mldeploy",
                                     docker_config=ar.Repository.DockerRepositoryConfig(immutable_tags=True)))
    wait(operation, f"create the Artifact Registry repository {repo}", timeout)
    print(f"created Artifact Registry repository {location}-docker.pkg.dev/{project_id}/{repo} "
          "(Docker, immutable tags)")
    return True


# -- the preflight -----------------------------------------------------------------------------------
def identity(creds: Any) -> str:
    """Who the credentials are, in words (an email where they carry one; never a token)."""
    kind = type(creds).__name__
    if kind == "AnonymousCredentials":
        return f"anonymous ({ENDPOINT_ENV} is plain http)"
    email = getattr(creds, "service_account_email", None)
    if kind == "Credentials" and "external_account" in type(creds).__module__:
        kind = "Workload Identity Federation"
    return f"{email} ({kind})" if email and email != "default" else kind


def doctor(deploy: DeploySection, probes: dict[str, Callable[[Any, str, str], None]]) -> list[tuple[str, bool, str]]:
    """Who we are and what we may do: (check, passed, detail) rows; probes: permission -> a read-only
    call of the target's API (credentials, location, parent)."""
    try:
        creds, found = credentials()
        chosen = project(deploy, found)
    except UsageError as e:
        return [("identity", False, e.describe())]
    rows = [("identity", True, f"{identity(creds)}, project {chosen}")]
    try:
        location = region(deploy)
    except UsageError as e:
        return [*rows, ("region", False, e.describe())]
    parent = f"projects/{chosen}/locations/{location}"
    for permission, probe in probes.items():
        try:
            with translated(f"check {permission}"):
                probe(creds, location, parent)
            rows.append((permission, True, "allowed"))
        except MldeployError as e:
            rows.append((permission, False, e.message))
    return rows


# -- captured requests (mldeploy monitor drift) ------------------------------------------------------
def capture_objects(source: str, region: str | None,
                    suffixes: tuple[str, ...]) -> list[tuple[str, int, Any, Callable[[], bytes]]]:
    """(gs URI, size, modified, read) of each capture file under gs://bucket/prefix.
    MLDEPLOY_GCP_API_ENDPOINT reaches another storage API (a fake)."""
    bucket, prefix = storage_location(source)
    from google.api_core import exceptions

    gcs = storage_client()
    with translated(f"list gs://{bucket}/{prefix}"):
        try:
            blobs = [b for b in gcs.list_blobs(bucket, prefix=prefix or None, retry=read_retry())
                     if b.name.endswith(suffixes)]
        except exceptions.NotFound:
            raise UsageError(f"the Cloud Storage bucket {bucket} does not exist",
                             hint="check monitoring.drift.capture") from None
    def reader(blob: Any) -> Callable[[], bytes]:
        def read() -> bytes:
            with translated(f"read gs://{bucket}/{blob.name}"):
                return blob.download_as_bytes()
        return read

    return [(f"gs://{bucket}/{b.name}", b.size or 0, b.updated, reader(b)) for b in blobs]


# -- Cloud Monitoring (mldeploy canary analyze) --------------------------------------------------------
MONITORING_HOST = "monitoring.googleapis.com"


def time_series(project_id: str, query: str, seconds: float, group_by: list[str],
                doing: str) -> list[dict[str, Any]]:
    """Cloud Monitoring timeSeries.list of the last `seconds` as one alignment period (rounded up to
    whole minutes), each series' points summed over the period (ALIGN_DELTA) and across series into
    `group_by` fields (REDUCE_SUM). Per series: its metric labels, resource labels, and point values:
    an int, or a distribution as [(bucket upper bound, count)].

    google-cloud-monitoring speaks gRPC only, so this is the REST API v3 (monitoring_call), and the
    library's own message type reads the answer."""
    import datetime as dt
    import json

    from google.cloud.monitoring_v3 import ListTimeSeriesResponse

    period = max(60, int(-(-seconds // 60)) * 60)
    end = dt.datetime.now(dt.UTC).replace(microsecond=0)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    params: dict[str, Any] = {
        "filter": query, "interval.startTime": (end - dt.timedelta(seconds=period)).strftime(stamp),
        "interval.endTime": end.strftime(stamp), "aggregation.alignmentPeriod": f"{period}s",
        "aggregation.perSeriesAligner": "ALIGN_DELTA", "aggregation.crossSeriesReducer": "REDUCE_SUM",
        "aggregation.groupByFields": group_by}
    found = []
    while True:
        answer = ListTimeSeriesResponse.from_json(
            json.dumps(monitoring_call("GET", project_id, "timeSeries", doing, params=params)),
            ignore_unknown_fields=True)
        for series in answer.time_series:
            found.append({"metric": dict(series.metric.labels), "resource": dict(series.resource.labels),
                          "values": [_point_value(p.value) for p in series.points]})
        if not answer.next_page_token:
            return found
        params["pageToken"] = answer.next_page_token


def monitoring_call(method: str, project_id: str, path: str, doing: str, *, params: dict | None = None,
                    body: dict | None = None) -> dict[str, Any]:
    """One call of the Cloud Monitoring REST API v3 on projects/P/`path`, with Application Default
    Credentials (MLDEPLOY_GCP_API_ENDPOINT reaches another host, as for the other clients); its JSON
    answer. Reads are retried like the other clients' reads; errors are translated."""
    from google.api_core import exceptions
    from google.auth.transport.requests import AuthorizedSession

    from mldeploy import __version__

    base = override() or MONITORING_HOST
    url = f"{base if base.startswith(('http://', 'https://')) else 'https://' + base}/v3/projects/{project_id}/{path}"
    session = AuthorizedSession(credentials()[0])
    session.headers["User-Agent"] = f"mldeploy/{__version__}"

    def call() -> dict[str, Any]:
        response = session.request(method, url, params=params, json=body, timeout=60)
        if response.status_code != 200:
            raise exceptions.from_http_response(response)
        return response.json()

    with translated(doing):
        return read_retry()(call)() if method == "GET" else call()


def _point_value(value: Any) -> int | float | list[tuple[float, int]]:
    """A point's number, or its distribution's buckets as (upper bound, count), +Inf last (Cloud
    Monitoring leaves trailing empty buckets out)."""
    if "distribution_value" not in value:
        return value.int64_value if "int64_value" in value else value.double_value
    d = value.distribution_value
    options = d.bucket_options
    if "explicit_buckets" in options:
        bounds = list(options.explicit_buckets.bounds)
    elif "exponential_buckets" in options:
        e = options.exponential_buckets
        bounds = [e.scale * e.growth_factor ** i for i in range(e.num_finite_buckets + 1)]
    elif "linear_buckets" in options:
        lin = options.linear_buckets
        bounds = [lin.offset + lin.width * i for i in range(lin.num_finite_buckets + 1)]
    else:
        bounds = []
    return list(zip([*bounds, float("inf")], (int(c) for c in d.bucket_counts)))


# -- canary analysis: Cloud Monitoring --------------------------------------------------------------
def cloud_monitoring_slot_stats(project_id: str, resource: str, slot_label: str, slots: dict[str, str],
                      requests: tuple[str, str], latency: tuple[str, str], window: float) -> dict[str, SlotStats]:
    """Per slot (the value of `slot_label`, e.g. resource.labels.revision_name): requests and 5xx answers
    of the metric `requests` (name, label holding the response code or its class) and p50/p99 of the
    latency distribution `latency` (name, extra filter), in ms, over the window."""
    from mldeploy.monitor.canary import SlotStats, histogram_quantile

    def field(label: str) -> str:  # resource.labels.x (filters) -> resource.label.x (groupByFields)
        return label.replace(".labels.", ".label.")

    def slot_of(series: dict) -> str | None:
        kind, name = slot_label.split(".labels.")
        return by_value.get(series[kind].get(name))

    by_value = {value: slot for slot, value in slots.items()}
    quoted = ", ".join(f'"{v}"' for v in slots.values())
    which = f"{resource} AND {slot_label} = one_of({quoted})"
    stats = {slot: SlotStats(slot) for slot in slots}
    metric, code_label = requests
    code_kind, code_name = code_label.split(".labels.")
    for series in time_series(project_id, f'metric.type = "{metric}" AND {which}', window,
                              [field(slot_label), field(code_label)], f"read {metric}"):
        slot, count = slot_of(series), int(sum(series["values"]))
        if slot:
            stats[slot].requests += count
            stats[slot].errors += count if series[code_kind].get(code_name, "").startswith("5") else 0
    metric, extra = latency
    buckets: dict[str, dict[float, int]] = {slot: {} for slot in slots}
    for series in time_series(project_id, f'metric.type = "{metric}" AND {which}{extra}', window,
                              [field(slot_label)], f"read {metric}"):
        slot = slot_of(series)
        if not slot:
            continue
        for distribution in series["values"]:
            for upper, count in distribution:
                buckets[slot][upper] = buckets[slot].get(upper, 0) + count
    for slot, counts in buckets.items():
        cumulative, total = [], 0
        for upper in sorted(counts):
            total += counts[upper]
            cumulative.append((upper, total))
        stats[slot].p50_ms = histogram_quantile(0.5, cumulative)
        stats[slot].p99_ms = histogram_quantile(0.99, cumulative)
    return stats
