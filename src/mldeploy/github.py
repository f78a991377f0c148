"""GitHub Actions I/O: step outputs, step summary, annotations, masking, log groups.

Inside GitHub Actions (GITHUB_ACTIONS=true, also under act) these use the runner's files and
workflow commands. Anywhere else they print plain text and touch nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any


def in_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def _escape_data(value: str) -> str:
    # Workflow-command escaping, as the runner's toolkit does it.
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


def _append(env_var: str, text: str) -> bool:
    path = os.environ.get(env_var)
    if not (in_actions() and path):
        return False
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
    return True


def set_output(name: str, value: object) -> None:
    """Write a step output; multi-line values use a random heredoc delimiter."""
    text = "" if value is None else str(value)
    if "\n" in text or "\r" in text:
        delimiter = f"ghadelimiter_{uuid.uuid4()}"
        record = f"{name}<<{delimiter}\n{text}\n{delimiter}\n"
    else:
        record = f"{name}={text}\n"
    if not _append("GITHUB_OUTPUT", record):
        print(f"{name}: {text}")


def add_summary(markdown: str) -> None:
    """Append Markdown to the job's step summary (only in Actions; the CLI prints its own text)."""
    _append("GITHUB_STEP_SUMMARY", markdown.rstrip("\n") + "\n\n")


def mask(secret: str) -> None:
    """Ask the runner to redact a value from all later logs."""
    if in_actions() and secret:
        for line in secret.splitlines():
            if line.strip():
                print(f"::add-mask::{_escape_data(line)}", flush=True)


def annotate(level: str, message: str, *, file: str | None = None, line: int | None = None,
             title: str | None = None) -> None:
    """An `error`, `warning` or `notice` annotation; outside Actions a plain line on stderr."""
    if not in_actions():
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        print(f"{level}: {where}{message}", file=sys.stderr, flush=True)
        return
    props = []
    if file:
        props.append(f"file={_escape_property(file)}")
    if line:
        props.append(f"line={int(line)}")
    if title:
        props.append(f"title={_escape_property(title)}")
    sep = " " + ",".join(props) if props else ""
    print(f"::{level}{sep}::{_escape_data(message)}", flush=True)


def error(message: str, **kw: Any) -> None:
    annotate("error", message, **kw)


def warning(message: str, **kw: Any) -> None:
    annotate("warning", message, **kw)


@contextlib.contextmanager
def verbatim() -> Iterator[None]:
    """Print third-party output inside without the runner acting on `::command::` lines in it."""
    if not in_actions():
        yield
        return
    token = uuid.uuid4().hex
    print(f"::stop-commands::{token}", flush=True)
    try:
        yield
    finally:
        print(f"::{token}::", flush=True)


@contextlib.contextmanager
def group(title: str) -> Iterator[None]:
    """Fold the output inside into one collapsible log group."""
    if in_actions():
        print(f"::group::{_escape_data(title)}", flush=True)
        try:
            yield
        finally:
            print("::endgroup::", flush=True)
    else:
        print(f"-- {title}", file=sys.stderr, flush=True)
        yield


def id_token(audience: str, why: str = "") -> str:
    """The running job's GitHub OIDC token for `audience` (the job needs `permissions: id-token: write`),
    masked. `why` names what wanted it, for the error when there is none."""
    import json
    import urllib.parse
    import urllib.request

    from mldeploy.errors import UsageError

    url, bearer = os.environ.get("ACTIONS_ID_TOKEN_REQUEST_URL"), os.environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
    if not (url and bearer):
        raise UsageError(f"no OIDC token here{f': {why}' if why else ''}",
                         hint="run in a GitHub Actions job with `permissions: id-token: write`")
    request = urllib.request.Request(f"{url}&audience={urllib.parse.quote(audience, safe='')}",
                                     headers={"authorization": f"Bearer {bearer}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            token = json.loads(answer.read())["value"]
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"could not get the job's OIDC token: {e}") from None
    mask(token)
    return str(token)


def upsert_comment(pr: int, body: str, marker: str) -> str:
    """Create the pull request's comment that starts with `marker`, or update it in place.

    Only a comment the token's own identity wrote is updated: anyone can post a comment that starts
    with the marker, and such a comment is left alone. The identity is `GET /user`'s login; a GitHub
    App's installation token (the job's GITHUB_TOKEN among them) cannot read /user, and its comments
    are by the app's bot: $MLDEPLOY_COMMENT_AUTHOR (e.g. `my-app[bot]`), else `github-actions[bot]`.
    Uses the REST API at $GITHUB_API_URL for $GITHUB_REPOSITORY with $GITHUB_TOKEN (the job needs
    `pull-requests: write`). Returns the comment's URL.
    """
    import json
    import urllib.error
    import urllib.request

    from mldeploy.errors import UsageError

    token = os.environ.get("GITHUB_TOKEN", "")
    repo = os.environ.get("GITHUB_REPOSITORY", "")
    api = os.environ.get("GITHUB_API_URL", "https://api.github.com").rstrip("/")
    if not token or not repo:
        raise UsageError("cannot comment: GITHUB_TOKEN and GITHUB_REPOSITORY must be set",
                         hint="pass `GITHUB_TOKEN: ${{ github.token }}` in the step's env")
    mask(token)

    def call(method: str, path: str, data: dict | None = None, app_refuses: bool = False) -> Any:
        request = urllib.request.Request(
            api + path, None if data is None else json.dumps(data).encode(), method=method,
            headers={"authorization": f"Bearer {token}", "accept": "application/vnd.github+json",
                     "x-github-api-version": "2022-11-28", "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as e:
            if app_refuses and e.code == 403:
                return None
            hint = ("the job needs `permissions: pull-requests: write`" if e.code in (401, 403)
                    else "check GITHUB_REPOSITORY and the pull request number")
            raise UsageError(f"GitHub refused {method} {path}: HTTP {e.code}", hint=hint) from None
        except (urllib.error.URLError, OSError) as e:
            raise UsageError(f"cannot reach GitHub at {api}: {getattr(e, 'reason', e)}") from None

    body = marker + "\n" + body if not body.startswith(marker) else body
    me = (call("GET", "/user", app_refuses=True) or {}).get("login") or \
        os.environ.get("MLDEPLOY_COMMENT_AUTHOR") or "github-actions[bot]"
    page = 1
    while comments := call("GET", f"/repos/{repo}/issues/{pr}/comments?per_page=100&page={page}"):
        for comment in comments:
            if (comment.get("user") or {}).get("login") == me and comment.get("body", "").startswith(marker):
                return call("PATCH", f"/repos/{repo}/issues/comments/{comment['id']}", {"body": body})["html_url"]
        page += 1
    return call("POST", f"/repos/{repo}/issues/{pr}/comments", {"body": body})["html_url"]
