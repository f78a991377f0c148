"""`mldeploy doctor --trust FILE`: check a cloud's trust setup against a job's OIDC token claims.

The trust file holds what docs/security.md ("Trust") sets up, for one cloud: per identity (push,
canary, production) the AWS role's trust policy, the GCP service account's principal sets (with the
pool's attribute condition and mapping), or the Azure app's federated credentials. Given the claims
of a GitHub Actions OIDC token (the running job's, or a file), it says which identities this job may
assume, and fails (one line, exit 1) when the setup lets a token assume what it must not:
- a pull request's job (or a pull_request_target / workflow_run one) gets the production identity;
- any identity trusts a job outside the kit's reusable workflow (a job the pull request writes in its
  own workflow file carries the same repository and event, but its own job_workflow_ref);
- the identity this job is about to use (`--identity`) does not trust it.
The same token is tried as such other jobs would present it, so one run checks the whole setup.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
from pathlib import Path
from typing import Any

from mldeploy.errors import CheckFailed, UsageError

IDENTITIES = ("push", "canary", "production")
PR_EVENTS = ("pull_request", "pull_request_target", "workflow_run")
CLAIMS = ("sub", "repository", "ref", "event_name", "job_workflow_ref")
AUDIENCE = {"aws": "sts.amazonaws.com", "azure": "api://AzureADTokenExchange"}
ISSUER = "token.actions.githubusercontent.com"


def subject(claims: dict[str, Any]) -> str:
    """The `sub` GitHub would issue for these claims, in the template `claims["sub"]` uses: the default
    (repo, context) or with job_workflow_ref as well (docs/security.md: the subject)."""
    context = (f"environment:{claims['environment']}" if claims.get("environment") else
               "pull_request" if claims.get("event_name") in ("pull_request", "pull_request_target")
               else f"ref:{claims.get('ref', '')}")
    sub = f"repo:{claims['repository']}:{context}"
    if ":job_workflow_ref:" in claims.get("sub", ""):
        sub += f":job_workflow_ref:{claims['job_workflow_ref']}"
    return sub


# --- AWS: IAM trust policies (StringEquals / StringLike on token.actions.githubusercontent.com:KEY) ---

def _aws_allows(policy: dict, claims: dict) -> bool:
    statements = policy.get("Statement", [])
    for st in statements if isinstance(statements, list) else [statements]:
        actions = st.get("Action", [])
        federated = (st.get("Principal") or {}).get("Federated", "")
        if st.get("Effect") != "Allow" or "sts:AssumeRoleWithWebIdentity" not in (
                [actions] if isinstance(actions, str) else actions) or not str(federated).endswith(ISSUER):
            continue
        if all(_aws_condition(op, tests, claims) for op, tests in (st.get("Condition") or {}).items()):
            return True
    return False


def _aws_condition(op: str, tests: dict, claims: dict) -> bool:
    match = {"StringEquals": lambda v, p: v == p, "StringLike": lambda v, p: fnmatch.fnmatchcase(v, p),
             "ForAnyValue:StringLike": lambda v, p: fnmatch.fnmatchcase(v, p)}.get(op)
    if match is None:
        raise UsageError(f"trust policy: condition operator {op} is not one doctor knows",
                         hint="StringEquals and StringLike on token.actions.githubusercontent.com:KEY")
    for key, patterns in tests.items():
        claim = key.removeprefix(f"{ISSUER}:")
        value = str(claims.get(claim, ""))
        if not any(match(value, p) for p in ([patterns] if isinstance(patterns, str) else patterns)):
            return False
    return True


# --- GCP: Workload Identity Federation (a CEL subset: literals, assertion.X, ==, !=, &&, ||, !, ?:,
#     .startsWith(), .endsWith(), (...)) ---

_TOKEN = re.compile(r"\s*(?:('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(==|!=|&&|\|\||[!?:().,\[\]])|([A-Za-z_][\w]*))")


def cel(expression: str, assertion: dict[str, Any]) -> Any:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expression.rstrip()):
        m = _TOKEN.match(expression, pos)
        if not m or m.end() == pos:
            raise UsageError(f"attribute condition: cannot read {expression[pos:pos + 20]!r}",
                             hint="doctor reads assertion.X, ==, !=, &&, ||, !, ?:, startsWith, endsWith")
        tokens.append((m.group(1) and ("str", m.group(1)[1:-1])) or (m.group(2) and ("op", m.group(2)))
                      or ("name", m.group(3)))
        pos = m.end()
    tokens.append(("end", ""))
    at = 0

    def peek(value: str) -> bool:
        return tokens[at][1] == value and tokens[at][0] == "op"

    def take(value: str | None = None) -> tuple[str, str]:
        nonlocal at
        token = tokens[at]
        if value is not None and token != ("op", value):
            raise UsageError(f"attribute condition: expected {value!r} in {expression!r}")
        at += 1
        return token

    def ternary() -> Any:
        test = either()
        if peek("?"):
            take("?")
            yes = ternary()
            take(":")
            no = ternary()
            return yes if test else no
        return test

    def either() -> Any:
        value = both()
        while peek("||"):
            take()
            right = both()
            value = value or right
        return value

    def both() -> Any:
        value = unary()
        while peek("&&"):
            take()
            right = unary()
            value = value and right
        return value

    def unary() -> Any:
        if peek("!"):
            take()
            return not unary()
        left = primary()
        for op in ("==", "!="):
            if peek(op):
                take()
                right = primary()
                return (left == right) if op == "==" else (left != right)
        return left

    def primary() -> Any:
        kind, value = take()
        if kind == "str":
            result: Any = value
        elif kind == "op" and value == "(":
            result = ternary()
            take(")")
        elif kind == "name" and value in ("assertion", "attribute"):
            result = assertion
            while peek("."):
                take()
                name = take()[1]
                if peek("("):
                    take("(")
                    arg = ternary()
                    take(")")
                    if name not in ("startsWith", "endsWith"):
                        raise UsageError(f"attribute condition: {name}() is not one doctor knows")
                    result = str(result).startswith(arg) if name == "startsWith" else str(result).endswith(arg)
                else:
                    result = result.get(name, "") if isinstance(result, dict) else ""
        elif kind == "name" and value in ("true", "false"):
            result = value == "true"
        else:
            raise UsageError(f"attribute condition: unexpected {value!r} in {expression!r}")
        return result

    result = ternary()
    if tokens[at][0] != "end":
        raise UsageError(f"attribute condition: unexpected {tokens[at][1]!r} in {expression!r}")
    return result


def _gcp_allows(pool: dict, identity: dict, claims: dict) -> bool:
    if not cel(pool.get("attribute_condition", "true"), claims):
        return False
    attributes = {key.removeprefix("attribute."): str(cel(expr, claims))
                  for key, expr in (pool.get("attribute_mapping") or {}).items() if key.startswith("attribute.")}
    subject_ = str(cel((pool.get("attribute_mapping") or {}).get("google.subject", "assertion.sub"), claims))
    pool_path = r"://iam\.googleapis\.com/.+/workloadIdentityPools/[^/]+/"
    for member in identity.get("members", []):
        if (m := re.fullmatch(rf"principalSet{pool_path}attribute\.(\w+)/(.+)", member)) and attributes.get(m[1]) == m[2]:
            return True
        if (m := re.fullmatch(rf"principal{pool_path}subject/(.+)", member)) and subject_ == m[1]:
            return True
    return False


# --- Azure: federated identity credentials (exact subject, or a flexible claimsMatchingExpression) ---

def _azure_allows(identity: dict, claims: dict) -> bool:
    for credential in identity.get("federated_credentials", []):
        if credential.get("issuer", f"https://{ISSUER}") != f"https://{ISSUER}":
            continue
        if AUDIENCE["azure"] not in credential.get("audiences", [AUDIENCE["azure"]]):
            continue
        if "subject" in credential and credential["subject"] == claims.get("sub"):
            return True
        expression = (credential.get("claimsMatchingExpression") or {}).get("value", "")
        m = re.fullmatch(r"claims\['sub'\] matches '([^']*)'", expression.strip())
        if m and fnmatch.fnmatchcase(str(claims.get("sub", "")), m[1]):
            return True
    return False


def may_assume(trust: dict, claims: dict) -> list[str]:
    """The identities of the trust file whose trust these claims satisfy."""
    cloud = trust["cloud"]
    claims = {**claims, "aud": AUDIENCE.get(cloud, claims.get("aud", ""))}
    found = []
    for name, identity in trust["identities"].items():
        if cloud == "aws":
            allowed = _aws_allows(identity.get("trust_policy") or {}, claims)
        elif cloud == "gcp":
            allowed = _gcp_allows(trust.get("pool") or {}, identity, claims)
        else:
            allowed = _azure_allows(identity, claims)
        if allowed:
            found.append(name)
    return found


def _as(claims: dict, **change: str | None) -> dict:
    """The same token as another job would present it (sub re-made in the same template)."""
    other = {k: v for k, v in {**claims, **change}.items() if v is not None}
    other["sub"] = subject({**other, "sub": claims.get("sub", "")})
    return other


def check(trust: dict, claims: dict, identity: str | None = None) -> list[str]:
    """Which identities this job may assume; raises CheckFailed (one line) on the first hole found."""
    missing = [c for c in CLAIMS if not claims.get(c)]
    if missing:
        raise UsageError(f"the token claims lack {', '.join(missing)}", hint="pass the whole token's claims")
    may = may_assume(trust, claims)
    event, repo = claims["event_name"], claims["repository"]
    if event in PR_EVENTS and "production" in may:
        raise CheckFailed(f"a {event} job may assume the production identity: its trust must require "
                          f"environment:production (and that environment must not allow pull request refs)")
    if identity and identity not in may:
        raise CheckFailed(f"this job may not assume the {identity} identity (sub {claims['sub']}): "
                          f"its trust does not match this job (docs/security.md)")
    # the token as a job of the pull request's own workflow file would present it
    own = f"{repo}/.github/workflows/pr.yml@refs/pull/1/merge"
    for other in (_as(claims, job_workflow_ref=own), _as(claims, job_workflow_ref=own, environment=None,
                                                          event_name="pull_request", ref="refs/pull/1/merge")):
        if outside := may_assume(trust, other):
            raise CheckFailed(f"the {outside[0]} identity trusts jobs outside the kit's workflow "
                              f"(job_workflow_ref {own}): a pull request's own code could assume it; "
                              f"require the kit's job_workflow_ref")
    # the token as a pull request's run of the kit's workflow would present it
    as_pr = _as(claims, environment=None, event_name="pull_request", ref="refs/pull/1/merge")
    if "production" in may_assume(trust, as_pr):
        raise CheckFailed("a pull_request job may assume the production identity: its trust must require "
                          "environment:production")
    return may


def load_trust(path: str) -> dict:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        trust = YAML(typ="safe", pure=True).load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read the trust file {path}: {e.strerror}") from None
    except YAMLError as e:
        raise UsageError(f"{path} is not YAML/JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(trust, dict) or trust.get("cloud") not in ("aws", "gcp", "azure") \
            or not isinstance(trust.get("identities"), dict) or not set(trust["identities"]) <= set(IDENTITIES):
        raise UsageError(f"{path}: expected `cloud: aws|gcp|azure` and `identities:` with push, canary, production",
                         hint="docs/security.md has one per cloud")
    return trust


def load_claims(path: str | None, audience: str = "mldeploy-doctor") -> dict:
    """The claims from a file (JSON claims, or a JWT), or the running job's own OIDC token (for audience)."""
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise UsageError(f"cannot read the claims {path}: {e.strerror}") from None
    else:
        text = _job_token(audience)
    if text.count(".") == 2 and not text.startswith("{"):
        payload = text.split(".")[1]
        text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    try:
        claims = json.loads(text)
    except json.JSONDecodeError:
        raise UsageError(f"{path or 'the job token'} holds neither JSON claims nor a JWT") from None
    if not isinstance(claims, dict):
        raise UsageError(f"{path or 'the job token'}: the claims must be a JSON object")
    return claims


def _job_token(audience: str) -> str:
    from mldeploy import github

    return github.id_token(audience, "pass --claims FILE")


def run(trust_path: str | None, claims_path: str | None, identity: str | None) -> int:
    if not trust_path:
        raise UsageError("--claims and --identity check a trust setup: give it with --trust FILE")
    trust, claims = load_trust(trust_path), load_claims(claims_path)
    may = check(trust, claims, identity)
    print(f"doctor: {claims.get('sub')} may assume: {', '.join(may) or 'no identity'} "
          f"({trust['cloud']}; checked against pull requests, their own workflows and production)")
    return 0
