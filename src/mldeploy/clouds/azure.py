"""Azure credentials, the test seam and errors for every module that calls Azure: the deploy targets
(mldeploy.deploy.azure re-exports these) and the model artifacts in Blob storage
(mldeploy.artifacts.blob, which the serving runtime runs; it has azure-identity and
azure-storage-blob, never azure-ai-ml).

Credentials come from azure-identity's DefaultAzureCredential (in GitHub Actions: azure/login with
OIDC federated credentials; on a platform, its managed identity; locally `az login`).
MLDEPLOY_AZURE_ARM_ENDPOINT=http://HOST:PORT sends every request for https://management.azure.com
and for the scoring, Blob storage and Container Apps hosts there instead (see transport()); tokens
still come from the real credential chain. azure.* is imported only inside functions.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator
from typing import Any

from mldeploy.errors import CheckFailed, UsageError

ML_CREDENTIALS_HINT = ("in GitHub Actions, use azure/login with OIDC federated credentials (permissions: "
                       "id-token: write); locally, `az login`; `mldeploy doctor --cloud azure` checks it")
ROLES_HINT = ("the deploying identity needs the AzureML Data Scientist role on the workspace; "
              "`mldeploy doctor --cloud azure` checks it")
ARM_ENDPOINT_ENV = "MLDEPLOY_AZURE_ARM_ENDPOINT"
ARM_HOST = "management.azure.com"
SCORING_SUFFIX = ".inference.ml.azure.com"
BLOB_SUFFIX = ".blob.core.windows.net"   # captured requests (monitor drift) go the same way
CONTAINERAPPS_SUFFIX = ".azurecontainerapps.io"  # Container Apps label URLs (smoke requests) too
FEDERATION_HELP = {
    "AADSTS700213": "Entra ID has no federated credential matching this workflow's OIDC token: the app "
                    "registration's (or managed identity's) federated credential must have issuer "
                    "https://token.actions.githubusercontent.com, audience api://AzureADTokenExchange, and a "
                    "subject equal to the token's sub, character for character: repo:OWNER/REPO:ref:refs/heads/"
                    "BRANCH for a branch, repo:OWNER/REPO:pull_request for pull requests, "
                    "repo:OWNER/REPO:environment:NAME when the job has an environment (which then wins)",
    "AADSTS700024": "the workflow's OIDC token expired before it was exchanged (tokens live minutes): "
                    "log in (azure/login) in the same job, shortly before the deploy",
    "AADSTS700016": "Entra ID does not know the client id: AZURE_CLIENT_ID (azure/login's client-id) names no "
                    "app registration or managed identity in the tenant AZURE_TENANT_ID; check both values",
    "AADSTS90002": "the tenant AZURE_TENANT_ID (azure/login's tenant-id) does not exist; check the value",
}


def _credential_reason(error: Exception) -> str:
    """One line from DefaultAzureCredential's multi-line report (one tab-indented line per credential
    tried): Entra ID's refusal when there was one (AADSTS...), else which credentials were tried."""
    message = str(getattr(error, "message", None) or error)
    tried = [line.strip() for line in message.split("\n") if line.startswith("\t")]
    refused = [line for line in tried if any(m in line for m in ("AADSTS", "Entra ID error", "Authentication failed"))]
    if refused:
        return _first_line(refused[-1].replace("\r", "\n"))
    if tried:
        return "none of the credentials it tried is configured ({})".format(
            ", ".join(line.split(":", 1)[0] for line in tried))
    return _first_line(message)


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or ["unknown error"])[0][:200]


def credential() -> Any:
    """DefaultAzureCredential: azure/login's OIDC environment, workload identity, managed identity, az.
    Its own failure warnings are not logged (our one line says why); --debug shows them."""
    import logging

    from azure.identity import DefaultAzureCredential

    if os.environ.get("MLDEPLOY_DEBUG") != "1":
        logging.getLogger("azure.identity").setLevel(logging.ERROR)
    return DefaultAzureCredential()


def transport() -> Any:
    """None (talk to Azure), or with MLDEPLOY_AZURE_ARM_ENDPOINT set, a transport that sends Azure's
    management and scoring hosts to that URL instead (see the module docstring)."""
    base = os.environ.get(ARM_ENDPOINT_ENV, "").strip().rstrip("/")
    if not base:
        return None
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"{ARM_ENDPOINT_ENV}={base!r} is not a URL", hint="e.g. http://127.0.0.1:8443")
    import requests
    import requests.adapters
    from azure.core.pipeline.transport import RequestsTransport

    class Redirect(requests.adapters.HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]  # passes requests' arguments on as they came
            url = urllib.parse.urlsplit(request.url)
            if url.hostname and (url.hostname == ARM_HOST or
                                 url.hostname.endswith((SCORING_SUFFIX, BLOB_SUFFIX, CONTAINERAPPS_SUFFIX))):
                request.headers["Host"] = url.netloc
                request.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, url.path, url.query, ""))
            return super().send(request, **kwargs)

    session = requests.Session()
    adapter = Redirect(max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session, session_owner=False)


def arm_request(method: str, path: str, api_version: str, credential_: Any = None, **query: str) -> Any:
    """One call of ARM's REST API that no SDK client of ours makes (an azure.core HttpResponse; the
    caller reads its status), on the credential chain, through MLDEPLOY_AZURE_ARM_ENDPOINT when set."""
    from azure.core import PipelineClient
    from azure.core.pipeline.policies import BearerTokenCredentialPolicy
    from azure.core.rest import HttpRequest

    custom = transport()
    arm = PipelineClient(f"https://{ARM_HOST}", per_call_policies=[BearerTokenCredentialPolicy(
        credential_ or credential(), f"https://{ARM_HOST}/.default")], **({"transport": custom} if custom else {}))
    params = urllib.parse.urlencode({"api-version": api_version, **query})
    return arm.send_request(HttpRequest(method, f"https://{ARM_HOST}{path}?{params}"))


def error_text(error: Exception) -> str:
    """The service's own code and message, one line, from an azure-core or azure-ai-ml error."""
    inner = getattr(error, "error", None)
    code, message = getattr(inner, "code", None), getattr(inner, "message", None)
    if message:
        return _first_line(f"{code}: {message}" if code and not str(message).startswith(str(code)) else message)
    text = str(getattr(error, "message", None) or error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:  # azure-core's "(Code) message" / "Code: X" / "Message: Y" layouts
        if line.lower().startswith("message:"):
            return _first_line(line.split(":", 1)[1])
    return _first_line(lines[0] if lines else type(error).__name__)


def federation_help(text: str) -> str:
    """Entra ID's refusal in plain words, when we know the AADSTS code; else the text itself."""
    for code, words in FEDERATION_HELP.items():
        if code in text:
            return f"{code}: {words}"
    return text


@contextlib.contextmanager
def translated(doing: str) -> Iterator[None]:
    """Turn azure-core / azure-identity errors into one line naming what we were doing."""
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.identity import CredentialUnavailableError

    try:
        yield
    except CredentialUnavailableError as e:
        raise UsageError(f"no Azure credentials to {doing}: {_credential_reason(e)}", hint=ML_CREDENTIALS_HINT) from None
    except ClientAuthenticationError as e:
        if e.status_code in (401, 403):
            raise UsageError(f"Azure refused to {doing} (HTTP {e.status_code}): {error_text(e)}",
                             hint=ROLES_HINT) from None
        reason = _credential_reason(e)
        if reason.startswith("none of the credentials"):
            raise UsageError(f"no Azure credentials to {doing}: {reason}", hint=ML_CREDENTIALS_HINT) from None
        raise UsageError(f"Entra ID gave no token to {doing}: {federation_help(reason)}",
                         hint=ML_CREDENTIALS_HINT) from None
    except ResourceNotFoundError as e:
        raise UsageError(f"Azure could not {doing}: {error_text(e)}",
                         hint="check deploy.azure.subscription_id, resource_group and workspace") from None
    except HttpResponseError as e:
        status = e.status_code or 0
        if status == 403:
            raise UsageError(f"Azure refused to {doing} (HTTP 403): {error_text(e)}", hint=ROLES_HINT) from None
        if status in (400, 422):
            raise UsageError(f"Azure rejected the request to {doing}: {error_text(e)}") from None
        if status == 409:
            raise CheckFailed(f"Azure could not {doing} now (HTTP 409): {error_text(e)}",
                              hint="another operation on it is still running; run again when it is done") from None
        raise CheckFailed(f"Azure could not {doing}: {error_text(e)}") from None
    except (ServiceRequestError, ServiceResponseError) as e:
        raise CheckFailed(f"cannot reach Azure to {doing}: {error_text(e)}", hint="check the network") from None
    except AzureError as e:
        raise CheckFailed(f"Azure could not {doing}: {error_text(e)}") from None


def container_client(account_url: str, container: str) -> Any:
    """A Blob ContainerClient on the credential chain (through MLDEPLOY_AZURE_ARM_ENDPOINT when set)."""
    from azure.storage.blob import ContainerClient

    custom = transport()
    return ContainerClient(account_url, container, credential=credential(),
                           **({"transport": custom} if custom is not None else {}))


@contextlib.contextmanager
def blob_errors(doing: str, container_url: str, missing_hint: str, roles_hint: str,
                missing_ok: bool = False) -> Iterator[list[bool]]:
    """translated(), with a missing container and a storage-role refusal as one line (exit 2); with
    missing_ok a missing blob sets the flag instead of raising."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    missing: list[bool] = []
    with translated(doing):
        try:
            yield missing
        except ResourceNotFoundError as e:
            if missing_ok and getattr(e, "error_code", None) == "BlobNotFound":
                missing.append(True)
                return
            raise UsageError(f"the Blob container {container_url} does not exist", hint=missing_hint) from None
        except HttpResponseError as e:   # (ClientAuthenticationError too) a refusal is about storage roles
            if e.status_code not in (401, 403):
                raise
            raise UsageError(f"Azure Storage refused to {doing} (HTTP {e.status_code}): {error_text(e)}",
                             hint=roles_hint) from None
