"""Google Cloud credentials and errors for every module that calls Google Cloud: the deploy targets
(mldeploy.deploy.gcp re-exports these) and the model artifacts in Cloud Storage
(mldeploy.artifacts.gcs, which the serving runtime runs).

Credentials are Application Default Credentials (in GitHub Actions: google-github-actions/auth with
Workload Identity Federation; on a platform, its service account; locally
`gcloud auth application-default login`). `MLDEPLOY_GCP_API_ENDPOINT` points every client at one
address instead of Google's hosts; a plain http:// one (a local fake) gets AnonymousCredentials, so
no bearer token ever travels unencrypted. google.* is imported only inside functions.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from mldeploy.errors import CheckFailed, MldeployError, UsageError

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
CREDENTIALS_HINT = ("in GitHub Actions, use google-github-actions/auth with Workload Identity Federation "
                    "(permissions: id-token: write); locally, `gcloud auth application-default login`")
PERMISSION_HINT = ("the deploy service account lacks a role: see docs/clouds/gcp.md; "
                   "`mldeploy doctor --cloud gcp` checks them")
ENDPOINT_ENV = "MLDEPLOY_GCP_API_ENDPOINT"
PROJECT_ENVS = ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT", "GCP_PROJECT")

def override() -> str | None:
    """MLDEPLOY_GCP_API_ENDPOINT, if set: every GCP client talks to it instead of Google's hosts."""
    return os.environ.get(ENDPOINT_ENV, "").strip().rstrip("/") or None


def plain_http() -> bool:
    return (override() or "").startswith("http://")


def credentials() -> tuple[Any, str | None]:
    """(credentials, the project they name or None): ADC, or anonymous for a plain-http endpoint."""
    if plain_http():
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), _env_project()
    import google.auth
    from google.auth import exceptions

    try:
        return google.auth.default(scopes=SCOPES)
    except exceptions.DefaultCredentialsError as e:
        raise UsageError(f"no Google credentials: {_first_line(e)}", hint=CREDENTIALS_HINT) from None
    except exceptions.GoogleAuthError as e:
        raise UsageError(f"Google refused or could not issue a token: {_first_line(e)}", hint=CREDENTIALS_HINT) from None


def read_retry() -> Any:
    """Retries for reads only (a retried write could act twice): throttling and unavailability."""
    from google.api_core import exceptions, retry

    return retry.Retry(predicate=retry.if_exception_type(exceptions.ServiceUnavailable, exceptions.TooManyRequests),
                       initial=1.0, maximum=10.0, timeout=60.0)


@contextlib.contextmanager
def translated(doing: str) -> Iterator[None]:
    """Turn google.api_core / google.auth errors into one line naming what we were doing: refusals and
    rejections (400, 401, 403, 404) are exit 2, the rest (server errors, timeouts, network) exit 1."""
    from google.api_core import exceptions
    from google.auth import exceptions as auth

    try:
        yield
    except MldeployError:
        raise
    except auth.DefaultCredentialsError as e:
        raise UsageError(f"no Google credentials to {doing}: {_first_line(e)}", hint=CREDENTIALS_HINT) from None
    except auth.GoogleAuthError as e:  # RefreshError, OAuthError (STS), TransportError
        raise UsageError(f"Google refused or could not issue a token to {doing}: {_first_line(e)}",
                         hint=CREDENTIALS_HINT) from None
    except (exceptions.Unauthorized, exceptions.Forbidden) as e:  # Unauthenticated, PermissionDenied
        disabled = "SERVICE_DISABLED" in str(getattr(e, "reason", "")) or "has not been used in project" in str(e)
        raise UsageError(f"Google Cloud refused to {doing} ({status_of(e)}): {message_of(e)}",
                         hint="enable the API in the project (`gcloud services enable SERVICE.googleapis.com`)"
                         if disabled else PERMISSION_HINT) from None
    except (exceptions.BadRequest, exceptions.NotFound) as e:  # InvalidArgument, FailedPrecondition, OutOfRange
        raise UsageError(f"Google Cloud rejected the request to {doing} ({status_of(e)}): {message_of(e)}") from None
    except exceptions.MethodNotImplemented as e:
        raise CheckFailed(f"the API does not implement the call to {doing}: {message_of(e)}",
                          hint=f"check {ENDPOINT_ENV}" if override() else None) from None
    except exceptions.GoogleAPICallError as e:
        raise CheckFailed(f"Google Cloud could not {doing} ({status_of(e)}): {message_of(e)}") from None
    except exceptions.GoogleAPIError as e:  # RetryError and the like
        raise CheckFailed(f"Google Cloud could not {doing}: {_first_line(e)}") from None
    except OSError as e:  # requests' ConnectionError and timeouts are OSErrors
        where = f" at {override()}" if override() else ""
        reason = re.search(r"\[Errno -?\d+\] [^'\")]+|timed out|Name or service not known", str(e))
        raise CheckFailed(f"cannot reach Google Cloud{where} to {doing}: {reason.group(0) if reason else type(e).__name__}",
                          hint="check the network, the region and any proxy") from None


def status_of(error: Exception) -> str:
    """The error's status in Google's words (PERMISSION_DENIED, ...), else its HTTP code."""
    code = getattr(error, "grpc_status_code", None)
    if code is not None:
        return code.name
    response = getattr(error, "response", None)
    try:
        status = response.json().get("error", {}).get("status") if response is not None else None
    except Exception:  # a body that is not JSON
        status = None
    return status or str(getattr(error, "code", None) or type(error).__name__)


def message_of(error: Exception) -> str:
    """The server's own words, one line, without the 'METHOD URL: ' the REST transport puts first."""
    text = str(getattr(error, "message", None) or _first_line(error))
    text = re.sub(r"^[A-Z]+ \S+: ", "", text.strip())
    return (text.splitlines() or [type(error).__name__])[0][:300]


def _first_line(error: Exception) -> str:
    """The error's own words, one line: the server's error code and description (never a token)."""
    text = str(error.args[0] if error.args else error)
    return (text.strip().splitlines() or [type(error).__name__])[0][:200]


def _env_project() -> str | None:
    return next((os.environ[v] for v in PROJECT_ENVS if os.environ.get(v)), None)


def storage_client() -> Any:
    """A Cloud Storage client on ADC (MLDEPLOY_GCP_API_ENDPOINT reaches another storage API: a fake).
    Buckets are global; the project only bills list calls, so any known one will do."""
    from google.cloud import storage  # type: ignore[attr-defined]  # google-cloud-storage ships no types

    creds, found = credentials()
    options = {"api_endpoint": override()} if override() else None
    return storage.Client(project=found or _env_project() or "<none>", credentials=creds, client_options=options)
