"""What the GCP targets share. For now: the Artifact Registry (and gcr.io) push login.

Credentials are Application Default Credentials (in GitHub Actions: google-github-actions/auth
with Workload Identity Federation; locally `gcloud auth application-default login`). Only this
package's GCP modules import google.*, and only inside functions.
"""

from __future__ import annotations

from mldeploy.errors import UsageError

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
CREDENTIALS_HINT = ("in GitHub Actions, use google-github-actions/auth with Workload Identity Federation "
                    "(permissions: id-token: write); locally, `gcloud auth application-default login`")


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
    return {"username": "oauth2accesstoken", "password": credentials.token}


def _first_line(error: Exception) -> str:
    """The error's own words, one line: the server's error code and description (never a token)."""
    text = str(error.args[0] if error.args else error)
    return (text.strip().splitlines() or [type(error).__name__])[0][:200]
