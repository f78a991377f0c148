"""What the Azure targets share: the credential, the workspace, an MLClient, one-line errors, the
preflight, and the Azure Container Registry push login.

Credentials come from azure-identity's DefaultAzureCredential (in GitHub Actions: azure/login with
OIDC federated credentials, or AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_FEDERATED_TOKEN_FILE; locally
`az login`). The workspace is deploy.azure.subscription_id / resource_group / workspace, else
AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZUREML_WORKSPACE_NAME.

One seam reaches somewhere other than Azure (the contract tests' local fake, or a recording proxy):
MLDEPLOY_AZURE_ARM_ENDPOINT=http://HOST:PORT sends every request for https://management.azure.com
and for the endpoints' scoring hosts (https://*.inference.ml.azure.com), Blob storage
(https://*.blob.core.windows.net) and Container Apps (https://*.azurecontainerapps.io) there instead, through an
azure-core RequestsTransport whose requests Session rewrites those URLs (the original host stays in
the Host header). Tokens still come from the real credential chain. The credential, that transport
and the azure-core error translation live in mldeploy.clouds.azure (the model artifacts in Blob
storage use them too) and are re-exported here. Only this package's Azure modules and
mldeploy.clouds / mldeploy.artifacts import azure.*, and only inside functions.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from mldeploy import __version__
from mldeploy.clouds.azure import ARM_ENDPOINT_ENV as ARM_ENDPOINT_ENV
from mldeploy.clouds.azure import ARM_HOST as ARM_HOST
from mldeploy.clouds.azure import BLOB_SUFFIX as BLOB_SUFFIX
from mldeploy.clouds.azure import ML_CREDENTIALS_HINT as ML_CREDENTIALS_HINT
from mldeploy.clouds.azure import ROLES_HINT as ROLES_HINT
from mldeploy.clouds.azure import _credential_reason, _first_line, blob_errors, container_client
from mldeploy.clouds.azure import credential as credential
from mldeploy.clouds.azure import error_text as error_text
from mldeploy.clouds.azure import federation_help as federation_help
from mldeploy.clouds.azure import translated as core_translated
from mldeploy.clouds.azure import transport as transport
from mldeploy.deploy import storage_location
from mldeploy.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from mldeploy.config import DeploySection

SCOPE = "https://management.azure.com/.default"
ACR_USERNAME = "00000000-0000-0000-0000-000000000000"  # what ACR expects with a refresh token
CREDENTIALS_HINT = ("in GitHub Actions, use azure/login with OIDC federated credentials (permissions: "
                    "id-token: write) and give the identity AcrPush on the registry; locally, `az login`")


def acr_login(registry: str) -> dict[str, str]:
    """A push credential for an ACR host: an Azure AD token exchanged for an ACR refresh token.

    The exchange is ACR's `POST https://{registry}/oauth2/exchange` (form grant_type=access_token,
    service, access_token, tenant), which answers {"refresh_token": ...}; docker then logs in with
    the all-zero user name and that token as the password (what `az acr login` does).
    """
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    try:
        aad_token = DefaultAzureCredential().get_token(SCOPE).token
    except (ClientAuthenticationError, ValueError) as e:
        raise UsageError(f"no Azure AD token to log in to {registry}: {_credential_reason(e)}",
                         hint=CREDENTIALS_HINT) from None
    form = {"grant_type": "access_token", "service": registry, "access_token": aad_token}
    if os.environ.get("AZURE_TENANT_ID"):
        form["tenant"] = os.environ["AZURE_TENANT_ID"]
    request = urllib.request.Request(f"https://{registry}/oauth2/exchange", method="POST",
                                     data=urllib.parse.urlencode(form).encode(),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
        refresh_token = body.get("refresh_token") if isinstance(body, dict) else None
    except urllib.error.HTTPError as e:
        raise UsageError(f"ACR {registry} refused the Azure AD token exchange (HTTP {e.code}"
                         f"{_acr_error(e)})", hint=CREDENTIALS_HINT) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UsageError(f"cannot reach ACR {registry} for the token exchange: {_first_line(str(reason))}",
                         hint="check the registry address (<name>.azurecr.io) and the network") from None
    except ValueError:
        refresh_token = None
    if not refresh_token:
        raise UsageError(f"ACR {registry} answered the token exchange without a refresh token",
                         hint="check the registry address (<name>.azurecr.io)")
    return {"username": ACR_USERNAME, "password": refresh_token}


def _acr_error(error: urllib.error.HTTPError) -> str:
    """ACR's own error code and message, e.g. `: UNAUTHORIZED: ...`, or nothing."""
    try:
        body = json.loads(error.read() or b"{}")
        first = (body.get("errors") or [{}])[0] if isinstance(body, dict) else {}
        detail = ": ".join(str(first[k]) for k in ("code", "message") if first.get(k))
    except (ValueError, OSError, AttributeError, TypeError):
        return ""
    return f": {_first_line(detail)}" if detail else ""


# -- the workspace and the client (the credential: mldeploy.clouds.azure) ------------------------------
def workspace(deploy: DeploySection) -> tuple[str, str, str]:
    """(subscription id, resource group, workspace) from deploy.azure, else the environment."""
    az = deploy.azure
    found = {"deploy.azure.subscription_id (or AZURE_SUBSCRIPTION_ID)":
             az.subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID"),
             "deploy.azure.resource_group (or AZURE_RESOURCE_GROUP)":
             az.resource_group or os.environ.get("AZURE_RESOURCE_GROUP"),
             "deploy.azure.workspace (or AZUREML_WORKSPACE_NAME)":
             az.workspace or os.environ.get("AZUREML_WORKSPACE_NAME")}
    missing = [key for key, value in found.items() if not value]
    if missing:
        raise UsageError(f"no Azure ML workspace: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set",
                         hint="name the workspace the endpoint lives in, in mldeploy.yaml or the environment")
    sub, rg, ws = found.values()
    return str(sub), str(rg), str(ws)


# azure-core's retry policy for every call (its defaults: 10 retries, backing off from 0.8 s)
RETRIES = {"retry_total": int(os.environ.get("MLDEPLOY_AZURE_MAX_RETRIES", "10")), "retry_backoff_factor": 0.8}


def ml_client(deploy: DeploySection, cred: Any = None) -> Any:
    """An MLClient on the configured workspace: no telemetry, no progress bars, the SDK's INFO lines
    (it logs them to stderr) only with --debug, and long-running operations polled every
    MLDEPLOY_POLL_SECONDS (default 15) unless Azure says when (Retry-After)."""
    import logging

    from azure.ai.ml import MLClient

    if os.environ.get("MLDEPLOY_DEBUG") != "1":
        logging.getLogger("azure.ai.ml").setLevel(logging.WARNING)
    sub, rg, ws = workspace(deploy)
    kwargs: dict[str, Any] = {"enable_telemetry": False, "show_progress": False,
                              "user_agent": f"mldeploy/{__version__}",
                              "polling_interval": float(os.environ.get("MLDEPLOY_POLL_SECONDS", "15")), **RETRIES}
    custom = transport()
    if custom is not None:
        kwargs["transport"] = custom
    return MLClient(cred or credential(), sub, rg, ws, **kwargs)


@contextlib.contextmanager
def translated(doing: str) -> Iterator[None]:
    """Turn azure-core / azure-identity / azure-ai-ml errors into one line naming what we were doing."""
    from azure.ai.ml.exceptions import MlException

    with core_translated(doing):
        try:
            yield
        except MlException as e:  # the SDK's own validation of what we asked for
            raise UsageError(f"azure-ai-ml refused to {doing}: {error_text(e)}") from None


class _NoDots:
    """stdout without the lone dots azure-ai-ml's poller prints on every poll (our lines say more)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return len(text) if text == "." else self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def wait(poller: Any, what: str, seconds: int, poll: float = 10.0) -> Any:
    """The result of a long-running operation, with a progress line every `poll` seconds; an operation
    still running after `seconds` is a failed check (it goes on in Azure; nothing here waits for it)."""
    import sys

    started = time.monotonic()
    deadline = started + seconds
    stdout, sys.stdout = sys.stdout, _NoDots(sys.stdout)
    try:
        while not poller.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed(f"{what} was still {poller.status()} after {seconds} s",
                                  hint="raise deploy.azure.wait_seconds, or read the deployment's logs in Azure ML studio")
            poller.wait(min(poll, left))
            if not poller.done() and time.monotonic() - started >= poll:
                print(f"  {what}: {poller.status()} ({time.monotonic() - started:.0f} s)", flush=True)
        return poller.result()
    finally:
        sys.stdout = stdout


# -- the preflight ----------------------------------------------------------------------------------------
def _claims(token: str) -> dict[str, Any]:
    """The access token's identity claims (never the token itself); {} if it is not a JWT."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


def doctor(deploy: DeploySection) -> list[tuple[str, bool, str]]:
    """Who we are and whether we may deploy: (check, passed, detail) rows; never prints a secret."""
    from azure.core.exceptions import ClientAuthenticationError

    rows: list[tuple[str, bool, str]] = []
    try:
        sub, rg, ws = workspace(deploy)
        rows.append(("workspace coordinates", True, f"subscription {sub}, resource group {rg}, workspace {ws}"))
    except UsageError as e:
        rows.append(("workspace coordinates", False, e.describe()))
        sub = None
    cred = credential()
    try:
        token = cred.get_token(SCOPE)
    except (ClientAuthenticationError, ValueError) as e:
        rows.append(("credential", False, f"{federation_help(_credential_reason(e))} ({ML_CREDENTIALS_HINT})"))
        return rows
    claims = _claims(token.token)
    who = ", ".join(f"{k} {claims[k]}" for k in ("upn", "appid", "oid", "tid") if claims.get(k)) or "an identity"
    minutes = max(0, int((token.expires_on - time.time()) / 60))
    rows.append(("credential", True, f"a token for Azure Resource Manager as {who} (valid {minutes} min)"))
    if sub is None:
        return rows
    client = ml_client(deploy, cred)
    try:
        with translated(f"read the workspace {ws}"):
            found = client.workspaces.get(ws)
        rows.append(("workspace", True, f"{ws} in {found.location} is readable"))
        with translated("list the workspace's online endpoints"):
            count = len(list(client.online_endpoints.list()))
        rows.append(("online endpoints", True, f"listing allowed ({count} endpoint{'s' if count != 1 else ''})"))
    except (UsageError, CheckFailed) as e:
        rows.append(("workspace" if len(rows) < 3 else "online endpoints", False, e.describe()))
    return rows


# -- captured requests (mldeploy monitor drift) ---------------------------------------------------------
def capture_blobs(source: str, region: str | None,
                  suffixes: tuple[str, ...]) -> list[tuple[str, int, Any, Callable[[], bytes]]]:
    """(URL, size, modified, read) of each capture file under a Blob storage container/prefix. The
    identity needs Storage Blob Data Reader on the container."""
    account, path = storage_location(source)
    container, _, prefix = path.partition("/")
    if not container:
        raise UsageError(f"{source} names no container",
                         hint="use https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX")
    account_url = f"https://{account}"

    def storage_errors(doing: str) -> contextlib.AbstractContextManager[list[bool]]:
        return blob_errors(doing, f"{account_url}/{container}", missing_hint="check monitoring.drift.capture",
                           roles_hint="the identity needs the Storage Blob Data Reader role on the container")

    store = container_client(account_url, container)
    with storage_errors(f"list {account_url}/{container}/{prefix}"):
        blobs = [b for b in store.list_blobs(name_starts_with=prefix or None) if b.name.endswith(suffixes)]
    def reader(name: str) -> Callable[[], bytes]:
        def read() -> bytes:
            with storage_errors(f"read {account_url}/{container}/{name}"):
                return store.download_blob(name).readall()
        return read

    return [(f"{account_url}/{container}/{b.name}", b.size or 0, b.last_modified, reader(b.name)) for b in blobs]


# -- Azure Monitor metrics (mldeploy canary analyze) -----------------------------------------------------
def monitor_client(subscription: str) -> Any:
    """An azure-mgmt-monitor MonitorManagementClient, through MLDEPLOY_AZURE_ARM_ENDPOINT when set."""
    from azure.mgmt.monitor import MonitorManagementClient

    custom = transport()
    return MonitorManagementClient(credential(), subscription, **({"transport": custom} if custom is not None else {}))


def metric_series(subscription: str, resource_id: str, namespace: str, names: list[str], aggregation: str,
                  dimensions: str, seconds: float, doing: str) -> list[dict[str, Any]]:
    """Azure Monitor metrics of one resource over the last `seconds` (rounded up to whole minutes),
    minute by minute, split as the $filter `dimensions` says: per time series its metric name, its
    dimension values (names in lowercase) and [(time, value of `aggregation`)] of the minutes that
    have one. The identity needs Monitoring Reader (or Reader) on the resource."""
    import datetime as dt

    from azure.core.exceptions import HttpResponseError

    minutes = max(1, int(-(-seconds // 60)))
    end = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)  # whole minutes, as Azure keeps them
    span = f"{(end - dt.timedelta(minutes=minutes)).isoformat()}/{end.isoformat()}".replace("+00:00", "Z")
    with translated(doing):
        try:
            answer = monitor_client(subscription).metrics.list(
                resource_id, timespan=span, interval="PT1M", metricnames=",".join(names),
                aggregation=aggregation, filter=dimensions, top=1000, metricnamespace=namespace)
        except HttpResponseError as e:
            if e.status_code not in (401, 403):
                raise
            raise UsageError(f"Azure refused to {doing} (HTTP {e.status_code}): {error_text(e)}",
                             hint="the identity needs the Monitoring Reader role on the endpoint "
                                  "(or its resource group)") from None
    key = aggregation.lower()
    return [{"metric": metric.name.value,
             "dimensions": {m.name.value.lower(): m.value for m in (series.metadatavalues or [])},
             "values": [(point.time_stamp, getattr(point, key)) for point in (series.data or [])
                        if getattr(point, key) is not None]}
            for metric in answer.value for series in (metric.timeseries or [])]
