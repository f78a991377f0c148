"""Deploy only what the kit's own workflow built: GitHub artifact attestations (deploy.require_provenance).

The reusable workflow's push job attests the image it pushed (actions/attest-build-provenance: an
in-toto statement with a SLSA provenance v1 predicate, whose subject is the image's digest, signed
with the job's Sigstore certificate and stored with this repository's attestations). Before a
deploy, the kit lists the attestations GitHub holds for the digest in this repository
(`GET /repos/{owner}/{repo}/attestations/{subject_digest}`, with the job's token) and accepts the
digest only when one of them is a SLSA provenance statement that
- names this very digest as its subject,
- was made by the kit's workflow (`runDetails.builder.id`: the reusable workflow's
  `job_workflow_ref`, at any ref), and
- was built from this repository (`buildDefinition.externalParameters.workflow.repository`).
What it does not check is the Sigstore signature chain of the bundle (that needs the Sigstore trust
root: `gh attestation verify` does it, docs/security.md "Provenance"): the statement is trusted because GitHub's
API returns it for this repository, where only a job holding `attestations: write` can store one.
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.error
import urllib.request
from typing import Any

from mldeploy.errors import CheckFailed, UsageError

SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
IN_TOTO = "application/vnd.in-toto+json"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def required(setting: bool | None) -> bool:
    """deploy.require_provenance: None means on in GitHub Actions (not under act, which has no
    attestations), off elsewhere. A pull request's run on GitHub checks it whatever the config says:
    the pull request can edit the config."""
    from mldeploy.trust import pull_request_event

    on_github = os.environ.get("GITHUB_ACTIONS") == "true" and not os.environ.get("ACT")
    if on_github and pull_request_event():
        return True
    return on_github if setting is None else setting


def signer_workflow() -> str:
    """The workflow an attestation must come from, owner/repo/path without the ref: MLDEPLOY_SIGNER_WORKFLOW
    outside GitHub (a stand-in under act, or by hand), else the running job's own `job_workflow_ref` claim:
    the kit's reusable workflow that pushed the image also runs this deploy."""
    on_github = os.environ.get("GITHUB_ACTIONS") == "true" and not os.environ.get("ACT")
    given = os.environ.get("MLDEPLOY_SIGNER_WORKFLOW", "").strip()
    if given and not on_github:
        return given.split("@", 1)[0]
    from mldeploy.doctor import load_claims

    try:
        ref = load_claims(None, audience="mldeploy-provenance").get("job_workflow_ref", "")
    except UsageError as e:
        raise UsageError(f"deploy.require_provenance: cannot tell which workflow must have attested the image "
                         f"({e.message})", hint="set MLDEPLOY_SIGNER_WORKFLOW=owner/repo/.github/workflows/deploy.yml "
                         "outside GitHub Actions, or set deploy.require_provenance: false") from None
    if "@" not in ref:
        raise UsageError("deploy.require_provenance: the job's OIDC token has no job_workflow_ref claim")
    return ref.split("@", 1)[0]


def _statement(attestation: dict) -> dict | None:
    envelope = ((attestation or {}).get("bundle") or {}).get("dsseEnvelope") or {}
    if envelope.get("payloadType") != IN_TOTO:
        return None
    try:
        statement = json.loads(base64.b64decode(envelope.get("payload", ""), validate=True))
    except (ValueError, TypeError):
        return None
    return statement if isinstance(statement, dict) else None


def _get(value: Any, *keys: str) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def attestations(repo: str, digest: str) -> list[dict]:
    """The attestations GitHub holds for the digest in repo ([] when none), from $GITHUB_API_URL with $GITHUB_TOKEN."""
    api = os.environ.get("GITHUB_API_URL", "https://api.github.com").rstrip("/")
    token = os.environ.get("GITHUB_TOKEN", "")
    if not token:
        raise UsageError("deploy.require_provenance: GITHUB_TOKEN is not set, so the image's attestations "
                         "cannot be read", hint="give the deploy step `GITHUB_TOKEN: ${{ github.token }}` and "
                         "the job `attestations: read`")
    from mldeploy import github

    github.mask(token)
    request = urllib.request.Request(f"{api}/repos/{repo}/attestations/{digest}?per_page=100",
                                     headers={"authorization": f"Bearer {token}",
                                              "accept": "application/vnd.github+json",
                                              "x-github-api-version": "2022-11-28"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            listed = json.loads(answer.read()).get("attestations") or []
    except urllib.error.HTTPError as e:
        if e.code == 404:  # GitHub's answer for a digest with no attestation in this repository
            return []
        raise CheckFailed(f"cannot list the attestations of {digest} in {repo}: GitHub answered {e.code}",
                          hint="the deploy job needs `attestations: read`") from None
    except (OSError, ValueError) as e:
        raise CheckFailed(f"cannot list the attestations of {digest} in {repo}: {e}") from None
    return [a for a in listed if isinstance(a, dict)]


def verify(image: str, repo: str, signer: str, server: str = "https://github.com") -> str:
    """Raise CheckFailed (one line) unless repo holds a SLSA provenance attestation of the image's digest
    made by the signer workflow (owner/repo/path) from repo's own code; returns what was found."""
    digest = image.rsplit("@", 1)[-1]
    if not DIGEST.fullmatch(digest):
        raise UsageError(f"provenance: {image} is not pinned to a sha256 digest")
    builder_prefix = f"{server}/{signer}@"
    seen = []
    for attestation in attestations(repo, digest):
        statement = _statement(attestation)
        if statement is None or statement.get("predicateType") != SLSA_PROVENANCE_V1:
            continue
        if not any(_get(s, "digest", "sha256") == digest.removeprefix("sha256:")
                   for s in statement.get("subject") or [] if isinstance(s, dict)):
            continue
        builder = str(_get(statement, "predicate", "runDetails", "builder", "id") or "")
        source = _get(statement, "predicate", "buildDefinition", "externalParameters", "workflow", "repository")
        if builder.startswith(builder_prefix) and source == f"{server}/{repo}":
            return f"{digest} was built by {builder.removeprefix(server + '/')} from {repo}"
        seen.append(builder.removeprefix(server + "/") or "no builder")
    if seen:
        raise CheckFailed(f"refusing {image}: its provenance in {repo} is not from {signer} "
                          f"(attested by {', '.join(sorted(set(seen)))})",
                          hint="deploy only images the kit's workflow built and attested")
    raise CheckFailed(f"refusing {image}: it has no build provenance attestation in {repo}",
                      hint="deploy only images the kit's workflow built and attested (deploy.require_provenance)")


def check(setting: bool | None, image: str) -> None:
    """The deploy's check: nothing when provenance is not required, else verify() against this repository
    ($GITHUB_REPOSITORY) and the signer workflow, printing what was found."""
    if not required(setting):
        return
    repo = os.environ.get("GITHUB_REPOSITORY", "")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise UsageError("deploy.require_provenance: GITHUB_REPOSITORY (owner/repo) is not set",
                         hint="set it, or set deploy.require_provenance: false outside GitHub Actions")
    server = os.environ.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
    print(f"provenance: {verify(image, repo, signer_workflow(), server)}")
