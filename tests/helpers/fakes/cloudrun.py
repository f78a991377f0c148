"""A small, stateful fake of the Cloud Run Admin API v2 (REST), for the real google-cloud-run clients.

It answers what `mldeploy.deploy.cloudrun` sends, as Cloud Run does, over plain HTTP on loopback:

    POST   /v2/projects/P/locations/L/services?serviceId=S     create (a long-running operation)
    GET    /v2/projects/P/locations/L/services[/S]             list (the preflight), read
    PATCH  /v2/projects/P/locations/L/services/S               update: a full Service (etag checked)
    DELETE /v2/projects/P/locations/L/services/S               delete (an operation)
    GET    /v2/projects/P/locations/L/services/S/revisions[/R] revisions
    GET    /v2/projects/P/locations/L/operations/O             poll an operation
    GET    .../services/S:getIamPolicy, POST .../services/S:setIamPolicy
    GET    /v3/projects/P/timeSeries                            Cloud Monitoring, from `monitoring`
    .../v3/projects/P/alertPolicies, notificationChannels       Cloud Monitoring, in `monitoring`
                                                                (fakes/cloud_monitoring.py)
    POST   /run/S/predict, /run/S/tag/T/predict                the service URL and its tag URLs

What it models, because the deploy code depends on it: a template change creates a revision (named by
template.revision, else `S-00001-abc`); a named revision that exists with another template is
refused (400); traffic must add up to 100 and name revisions that exist, tags must be unique; the
traffic statuses (what serves) move only when every revision in the new split is ready; a revision
whose image is in `failing_images` never gets ready, and its operation FAILS as Cloud Run's does
(the service keeps serving as before); a revision whose image is in `failing_smoke` answers 500.
`slow_polls` keeps each new operation running for that many polls; a request matching `denied`
gets 403 PERMISSION_DENIED. Every request is logged.
Enums arrive as integers (the REST transport sends `$alt=json;enum-encoding=int`) and are kept so.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.helpers.fakes.cloud_monitoring import PATH as MONITORING_PATH
from tests.helpers.fakes.cloud_monitoring import BadRequest, CloudMonitoring
from tests.helpers.fakes.faults import Faults, fail

REVISION_TYPE = 2  # TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
LATEST_TYPE = 1
SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"
NOT_READY = ("Revision '{}' is not ready and cannot serve traffic. The user-provided container failed to start "
             "and listen on the port defined provided by the PORT=8080 environment variable.")
READ_ONLY = ("uid", "generation", "createTime", "updateTime", "creator", "lastModifier", "observedGeneration",
             "terminalCondition", "conditions", "latestReadyRevision", "latestCreatedRevision", "trafficStatuses",
             "uri", "urls", "reconciling", "etag")

# what a Google API answers when it fails inside (fakes/faults.py injects it)
FAULT_BODY = b'{"error": {"code": 500, "message": "injected fault", "status": "INTERNAL"}}'


class ApiError(Exception):
    def __init__(self, code: int, status: str, message: str):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


def _ready(state: str, message: str = "") -> dict[str, Any]:
    return {"type": "Ready", "state": state, **({"message": message} if message else {})}


class FakeCloudRun:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.faults = Faults()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.reset()

    # -- lifecycle and switches -------------------------------------------------------------------
    def start(self) -> FakeCloudRun:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with getattr(self, "lock", threading.RLock()):
            self.services: dict[str, dict[str, Any]] = {}
            self.revisions: dict[str, dict[str, Any]] = {}
            self.operations: dict[str, dict[str, Any]] = {}
            self.policies: dict[str, dict[str, Any]] = {}
            self.requests: list[tuple[str, str]] = []          # (method, path)
            self.smokes: list[tuple[str, str]] = []            # (path, revision that answered)
            self.failing_images: set[str] = set()              # revisions of these never get ready
            self.failing_smoke: set[str] = set()               # revisions of these images answer 500
            self.slow_polls = 0                                # polls before a new operation is done
            self.denied: set[str] = set()                      # "METHOD suffix" of requests answered 403
            self.counter = itertools.count(1)
            self.monitoring = CloudMonitoring()                # Cloud Monitoring, on the same address

    def mutating(self) -> list[tuple[str, str]]:
        """Requests that change state: API writes (IAM reads and permission tests are POSTs too)."""
        return [(m, p) for m, p in self.requests if m in ("POST", "PATCH", "PUT", "DELETE") and p.startswith("/v2/")
                and not p.endswith((":testIamPermissions", ":getIamPolicy"))]

    def serving(self, service: str) -> dict[str, tuple[str, int]]:
        """What a service serves: tag (production for the untagged) -> (image, percent)."""
        with self.lock:
            svc = next(s for n, s in self.services.items() if n.endswith(f"/services/{service}"))
            return {t.get("tag") or "production": (self.revisions[f"{svc['name']}/revisions/{t['revision']}"]
                                                   ["containers"][0]["image"], t.get("percent", 0))
                    for t in svc["trafficStatuses"]}

    def public(self, service: str) -> bool:
        with self.lock:
            policy = next((p for n, p in self.policies.items() if n.endswith(f"/services/{service}")), {})
            return any(b["role"] == "roles/run.invoker" and {"allUsers", "allAuthenticatedUsers"} & set(b["members"])
                       for b in policy.get("bindings", []))

    # -- HTTP -------------------------------------------------------------------------------------
    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet: the request log is fake.requests
                pass

            def _answer(self, method: str) -> None:
                parts = urlsplit(self.path)
                path, query = unquote(parts.path), parse_qs(parts.query)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with fake.lock:
                    fake.requests.append((method, path))
                if kind := fake.faults.take(f"{method} {path}"):
                    return fail(self, kind, FAULT_BODY)
                try:
                    body = json.loads(raw) if raw else {}
                    status, answer = fake.route(method, path, query, body, dict(self.headers))
                except ApiError as e:
                    status, answer = e.code, {"error": {"code": e.code, "message": e.message, "status": e.status}}
                except (ValueError, KeyError, TypeError) as e:
                    status, answer = 400, {"error": {"code": 400, "message": f"bad request: {e}",
                                                     "status": "INVALID_ARGUMENT"}}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def do_PATCH(self) -> None:
                self._answer("PATCH")

            def do_DELETE(self) -> None:
                self._answer("DELETE")

        return Handler

    def route(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any],
              headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if any(f"{method} {path}".endswith(rule) for rule in self.denied):
                raise ApiError(403, "PERMISSION_DENIED", f"Permission denied on resource {path} (or it may not exist).")
            m = MONITORING_PATH.fullmatch(path)
            if m and method == "GET":
                try:
                    return 200, self.monitoring.list(m.group("project"), query)
                except BadRequest as e:
                    raise ApiError(e.code, e.status, e.message) from None
            try:
                found = self.monitoring.resource(method, path, query, body)  # alert policies, channels
            except BadRequest as e:
                raise ApiError(e.code, e.status, e.message) from None
            if found:
                return found
            m = re.fullmatch(r"/run/([a-z0-9-]+)(?:/tag/([a-z0-9-]+))?/predict", path)
            if m and method == "POST":
                return self._predict(m.group(1), m.group(2), body)
            m = re.fullmatch(r"/v2/(projects/[^/]+/locations/[^/]+)/(services|operations)(?:/([^/:]+))?"
                             r"(?::(getIamPolicy|setIamPolicy))?(?:/revisions(?:/([^/]+))?)?", path)
            if not m:
                raise ApiError(501, "UNIMPLEMENTED", f"the fake does not answer {method} {path}")
            parent, kind, ident, verb, revision = m.groups()
            is_revisions = "/revisions" in path
            if kind == "operations" and ident and method == "GET":
                return 200, self._poll(f"{parent}/operations/{ident}")
            if kind != "services":
                raise ApiError(501, "UNIMPLEMENTED", f"the fake does not answer {method} {path}")
            name = f"{parent}/services/{ident}" if ident else None
            if name is None and method == "POST":
                return 200, self._create(parent, query["serviceId"][0], body)
            if name is None and method == "GET":  # the preflight lists at most one
                return 200, {"services": [s for n, s in self.services.items() if n.startswith(f"{parent}/")][:1]}
            if name is None:
                raise ApiError(501, "UNIMPLEMENTED", f"the fake does not answer {method} {path}")
            if verb == "getIamPolicy" and method == "GET":
                self._service(name)
                return 200, self.policies.get(name, {"version": 1, "etag": self._etag(name, 0)})
            if verb == "setIamPolicy" and method == "POST":
                return 200, self._set_policy(name, body["policy"])
            if is_revisions and method == "GET":
                self._service(name)
                if revision:
                    return 200, self._revision(f"{name}/revisions/{revision}")
                return 200, {"revisions": [r for n, r in self.revisions.items() if n.startswith(f"{name}/revisions/")]}
            if method == "GET":
                return 200, self._service(name)
            if method == "PATCH":
                return 200, self._update(name, body)
            if method == "DELETE":
                svc = self._service(name)
                del self.services[name]
                self.policies.pop(name, None)
                for n in [n for n in self.revisions if n.startswith(f"{name}/revisions/")]:
                    del self.revisions[n]
                return 200, self._operation(parent, svc)
            raise ApiError(501, "UNIMPLEMENTED", f"the fake does not answer {method} {path}")

    # -- resources --------------------------------------------------------------------------------
    def _service(self, name: str) -> dict[str, Any]:
        if name not in self.services:
            raise ApiError(404, "NOT_FOUND", f"Resource '{name.rsplit('/', 1)[-1]}' of kind 'SERVICE' in region "
                                             f"'{name.split('/')[3]}' in project '{name.split('/')[1]}' does not exist.")
        return self.services[name]

    def _revision(self, name: str) -> dict[str, Any]:
        if name not in self.revisions:
            raise ApiError(404, "NOT_FOUND", f"Revision {name.rsplit('/', 1)[-1]} does not exist.")
        return self.revisions[name]

    def _etag(self, name: str, generation: int) -> str:
        return base64.b64encode(f"{name}#{generation}".encode()).decode()

    def _operation(self, parent: str, service: dict[str, Any], error: str | None = None) -> dict[str, Any]:
        name = f"{parent}/operations/{next(self.counter):08d}-op"
        op: dict[str, Any] = {"name": name, "metadata": {"@type": SERVICE_TYPE, **copy.deepcopy(service)}}
        if error:
            op["error"] = {"code": 9, "message": error}  # FAILED_PRECONDITION, as a revision that never gets ready
        else:
            op["response"] = {"@type": SERVICE_TYPE, **copy.deepcopy(service)}
        self.operations[name] = {"op": op, "polls_left": self.slow_polls}
        return self._poll(name, count=False)

    def _poll(self, name: str, count: bool = True) -> dict[str, Any]:
        if name not in self.operations:
            raise ApiError(404, "NOT_FOUND", f"Operation {name} does not exist.")
        entry = self.operations[name]
        if entry["polls_left"] > 0:
            if count:
                entry["polls_left"] -= 1
            return {"name": name, "metadata": entry["op"]["metadata"]}
        return {**entry["op"], "done": True}

    def _validate(self, spec: dict[str, Any]) -> None:
        template = spec.get("template") or {}
        containers = template.get("containers") or []
        if len(containers) != 1 or "@sha256:" not in containers[0].get("image", "@sha256:"):
            raise ApiError(400, "INVALID_ARGUMENT", "template.containers: exactly one container with an image")
        ports = containers[0].get("ports") or [{"containerPort": 8080}]
        if not 1 <= int(ports[0].get("containerPort", 8080)) <= 65535:
            raise ApiError(400, "INVALID_ARGUMENT", "template.containers[0].ports: bad port")
        revision = template.get("revision", "")
        if revision and not revision.startswith(f"{spec['_id']}-"):
            raise ApiError(400, "INVALID_ARGUMENT", f"template.revision must start with '{spec['_id']}-'")
        if revision and (len(revision) > 63 or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", revision)):
            raise ApiError(400, "INVALID_ARGUMENT", f"template.revision {revision!r} is not a valid name")
        for key, value in {**spec.get("labels", {}), **template.get("labels", {})}.items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(r"[a-z0-9_-]{0,63}", value):
                raise ApiError(400, "INVALID_ARGUMENT", f"label {key}={value!r} is not a valid label")

    def _new_revision(self, service_name: str, spec: dict[str, Any], generation: int) -> str:
        """The revision the template names; created when new, refused when it exists with another template."""
        template = spec["template"]
        short = template.get("revision") or f"{spec['_id']}-{generation:05d}-{next(self.counter):03d}"
        name = f"{service_name}/revisions/{short}"
        body = {k: v for k, v in template.items() if k != "revision"}
        if name in self.revisions:
            if self.revisions[name]["_template"] != body:
                raise ApiError(400, "INVALID_ARGUMENT",
                               f"Revision named '{short}' with different configuration already exists.")
            return short
        failing = template["containers"][0]["image"] in self.failing_images
        self.revisions[name] = {
            "name": name, "uid": f"uid-{next(self.counter)}", "generation": "1", "service": service_name,
            "labels": dict(template.get("labels", {})), "containers": copy.deepcopy(template["containers"]),
            "scaling": copy.deepcopy(template.get("scaling", {})),
            "maxInstanceRequestConcurrency": template.get("maxInstanceRequestConcurrency", 80),
            "serviceAccount": template.get("serviceAccount") or "123456789-compute@developer.gserviceaccount.com",
            "conditions": [_ready("CONDITION_FAILED", NOT_READY.format(short)) if failing
                           else _ready("CONDITION_SUCCEEDED")],
            "_template": copy.deepcopy(body)}
        return short

    def _apply(self, name: str, spec: dict[str, Any], current: dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
        """Store the service as asked; move what serves only when every revision in the split is ready."""
        generation = int(current["generation"]) + 1 if current else 1
        created = None
        if current is None or spec["template"] != current["template"]:
            created = self._new_revision(name, spec, generation)
        latest = created or current["latestCreatedRevision"]
        traffic = spec.get("traffic") or [{"type": LATEST_TYPE, "percent": 100}]
        resolved = []
        for t in traffic:
            revision = latest if t.get("type") in (LATEST_TYPE, "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST") \
                else t.get("revision", "")
            if f"{name}/revisions/{revision}" not in self.revisions:
                raise ApiError(400, "INVALID_ARGUMENT", f"traffic: revision '{revision}' does not exist")
            resolved.append({**t, "revision": revision, "percent": int(t.get("percent", 0))})
        if sum(t["percent"] for t in resolved) != 100:
            raise ApiError(400, "INVALID_ARGUMENT", "traffic: the percentages must add up to 100")
        tags = [t["tag"] for t in resolved if t.get("tag")]
        if len(tags) != len(set(tags)) or any(not re.fullmatch(r"[a-z]([-a-z0-9]{0,44}[a-z0-9])?", t) for t in tags):
            raise ApiError(400, "INVALID_ARGUMENT", f"traffic: tags must be unique, valid names: {tags}")
        stored = {k: copy.deepcopy(v) for k, v in spec.items() if k not in READ_ONLY and k != "_id"}
        base = f"{self.url}/run/{spec['_id']}"
        not_ready = [t["revision"] for t in resolved
                     if self.revisions[f"{name}/revisions/{t['revision']}"]["conditions"][0]["state"] != "CONDITION_SUCCEEDED"]
        statuses = current["trafficStatuses"] if current else []
        if not not_ready:
            statuses = [{"type": REVISION_TYPE, "revision": t["revision"], "percent": t["percent"],
                         **({"tag": t["tag"], "uri": f"{base}/tag/{t['tag']}"} if t.get("tag") else {})}
                        for t in resolved]
        ready = current["latestReadyRevision"] if current else ""
        if created and created not in not_ready:
            ready = created
        stored |= {"name": name, "uid": current["uid"] if current else f"uid-{next(self.counter)}",
                   "generation": str(generation), "observedGeneration": str(generation),
                   "traffic": traffic, "trafficStatuses": statuses, "uri": base, "urls": [base],
                   "latestCreatedRevision": latest, "latestReadyRevision": ready, "etag": self._etag(name, generation),
                   "terminalCondition": _ready("CONDITION_FAILED", NOT_READY.format(not_ready[0])) if not_ready
                   else _ready("CONDITION_SUCCEEDED")}
        self.services[name] = stored
        return stored, NOT_READY.format(not_ready[0]) if not_ready else None

    def _create(self, parent: str, service_id: str, body: dict[str, Any]) -> dict[str, Any]:
        name = f"{parent}/services/{service_id}"
        if name in self.services:
            raise ApiError(409, "ALREADY_EXISTS", f"Resource '{service_id}' already exists.")
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,47}[a-z0-9])?", service_id):
            raise ApiError(400, "INVALID_ARGUMENT", f"service id {service_id!r} is not a valid name")
        spec = {**body, "_id": service_id}
        self._validate(spec)
        stored, error = self._apply(name, spec, None)
        return self._operation(parent, stored, error)

    def _update(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        current = self._service(name)
        if body.get("etag") and body["etag"] != current["etag"]:
            raise ApiError(409, "ABORTED", "the service was changed by another request (etag mismatch)")
        spec = {**body, "_id": name.rsplit("/", 1)[-1]}
        self._validate(spec)
        stored, error = self._apply(name, spec, current)
        return self._operation(name.split("/services/")[0], stored, error)

    def _set_policy(self, name: str, policy: dict[str, Any]) -> dict[str, Any]:
        self._service(name)
        current = self.policies.get(name, {"etag": self._etag(name, 0)})
        if policy.get("etag") and policy["etag"] != current["etag"]:
            raise ApiError(409, "ABORTED", "the policy was changed by another request (etag mismatch)")
        stored = {"version": 1, "bindings": policy.get("bindings", []), "etag": self._etag(name, next(self.counter))}
        self.policies[name] = stored
        return stored

    # -- the data plane ---------------------------------------------------------------------------
    def _predict(self, service: str, tag: str | None, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        svc = next((s for n, s in self.services.items() if n.endswith(f"/services/{service}")), None)
        if svc is None:
            return 404, {"error": "no such service"}
        targets = svc["trafficStatuses"]
        target = next((t for t in targets if t.get("tag") == tag), None) if tag \
            else max(targets, key=lambda t: t["percent"], default=None)
        if target is None:
            return 404, {"error": f"no tag {tag}"}
        revision = self.revisions[f"{svc['name']}/revisions/{target['revision']}"]
        self.smokes.append((f"/run/{service}{f'/tag/{tag}' if tag else ''}/predict", target["revision"]))
        if revision["containers"][0]["image"] in self.failing_smoke:
            return 500, {"error": "internal error", "detail": "the model crashed"}
        if "inputs" not in body:
            return 400, {"error": "the body has no inputs"}
        return 200, {"outputs": {"probabilities": [[0.2, 0.3, 0.5]]}}
