"""What the Azure targets share. For now: the Azure Container Registry push login.

Credentials come from azure-identity's DefaultAzureCredential (in GitHub Actions: azure/login with
OIDC federated credentials, or AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_FEDERATED_TOKEN_FILE; locally
`az login`). Only this package's Azure modules import azure.*, and only inside functions.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

from mldeploy.errors import UsageError

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
