"""A fake of the GitHub REST API's pull request comments, as `mldeploy report --comment` uses it:
who the token is (`GET /user`), list (paginated), create, update. It keeps the comments, each with
its author, and every request it saw. It also keeps artifact attestations per repository, as
actions/attest-build-provenance stores them (`POST /repos/{owner}/{repo}/attestations` with a
Sigstore bundle: 201 with its id) and the deploy reads them (`GET /repos/{owner}/{repo}/attestations/
{subject_digest}`: 200 with `attestations: [{bundle, repository_id, bundle_url}]`, 404 when there are
none); the subject digests are read from the bundle's in-toto statement. A GitHub App's installation token (`ghs_...`, as the job's
GITHUB_TOKEN is) gets 403 from /user, as on GitHub, and writes as `github-actions[bot]`; any other
token is the user `login`.

`mldeploy rehearse` serves the workflows' GitHub API with it (the report job's comment is what a pull
request would get); `state`, a JSON file, keeps the comments and attestations from one rehearsal to
the next, as GitHub keeps them between runs (the next push updates the same comment; promote finds
the attestation the canary's run stored)."""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FakeGitHub:
    def __init__(self, token: str, login: str = "octocat", state: Path | None = None) -> None:
        self.token = token
        self.author = "github-actions[bot]" if token.startswith("ghs_") else login
        self.comments: dict[int, dict] = {}   # id -> {"id", "pr", "body", "html_url", "user": {"login"}}
        self.requests: list[tuple[str, str]] = []
        self.attestations: dict[str, list[dict]] = {}  # "owner/repo" -> stored bundles
        self.state = state
        if state is not None and state.is_file():
            kept = json.loads(state.read_text(encoding="utf-8"))
            self.comments = {int(k): v for k, v in kept.get("comments", {}).items()}
            self.attestations = kept.get("attestations", {})
        fake = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                fake.requests.append((method, self.path))
                if self.headers.get("authorization") != f"Bearer {fake.token}":
                    return self._answer(401, {"message": "Bad credentials"})
                length = int(self.headers.get("content-length") or 0)
                payload = json.loads(self.rfile.read(length)) if length else {}
                if self.path == "/user" and method == "GET":
                    if fake.author.endswith("[bot]"):
                        return self._answer(403, {"message": "Resource not accessible by integration"})
                    return self._answer(200, {"login": fake.author, "type": "User"})
                if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/issues/(\d+)/comments(?:\?per_page=(\d+)&page=(\d+))?",
                                     self.path):
                    pr = int(m[2])
                    if method == "GET":
                        mine = [c for c in fake.comments.values() if c["pr"] == pr]
                        size, page = int(m[3] or 30), int(m[4] or 1)
                        return self._answer(200, mine[(page - 1) * size:page * size])
                    return self._answer(201, fake.comment(pr, payload["body"], fake.author, m[1]))
                if (m := re.fullmatch(r"/repos/([^/]+/[^/]+)/attestations", self.path)) and method == "POST":
                    return self._answer(201, {"id": fake.attest(m[1], payload["bundle"])})
                if (m := re.fullmatch(r"/repos/([^/]+/[^/]+)/attestations/(sha256:[0-9a-f]{64})(?:\?.*)?", self.path)) \
                        and method == "GET":
                    found = [{"bundle": b, "repository_id": 1000, "bundle_url": None}
                             for b in fake.attestations.get(m[1], []) if m[2] in _subject_digests(b)]
                    return self._answer(200, {"attestations": found}) if found else \
                        self._answer(404, {"message": "Not Found"})
                if (m := re.fullmatch(r"/repos/[^/]+/[^/]+/issues/comments/(\d+)", self.path)) and method == "PATCH":
                    comment = fake.comments[int(m[1])]
                    comment["body"] = payload["body"]
                    return self._answer(200, comment)
                self._answer(404, {"message": "Not Found"})

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_PATCH(self) -> None:
                self._route("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def comment(self, pr: int, body: str, author: str, repo: str = "acme/models") -> dict:
        """A new comment on the pull request, written by `author` (the API, or a test planting one)."""
        new = len(self.comments) + 1
        self.comments[new] = {"id": new, "pr": pr, "body": body, "user": {"login": author},
                              "html_url": f"https://github.com/{repo}/pull/{pr}#issuecomment-{new}"}
        return self.comments[new]

    def attest(self, repo: str, bundle: dict) -> int:
        """Store a Sigstore bundle as repo's attestation (the API, or a test planting one); its id."""
        self.attestations.setdefault(repo, []).append(bundle)
        return sum(len(v) for v in self.attestations.values())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.state is not None:
            self.state.write_text(json.dumps({"comments": self.comments, "attestations": self.attestations}),
                                  encoding="utf-8")


def _subject_digests(bundle: dict) -> set[str]:
    try:
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        return {f"sha256:{s['digest']['sha256']}" for s in statement["subject"]}
    except (KeyError, TypeError, ValueError):
        return set()
