"""A small stateful fake of the Kubernetes API server, over HTTPS with a bearer token, for the real
`kubernetes` client (and kubectl).

What it answers:
  GET  /version, /api, /apis, /api/v1, /apis/G/V                  discovery (kubectl's legacy form)
  POST (create), GET/PATCH(apply)/DELETE  /api/v1/namespaces/NS/services[/N], /apis/apps/v1/.../deployments[/N],
       /apis/autoscaling/v2/.../horizontalpodautoscalers[/N], /apis/policy/v1/.../poddisruptionbudgets[/N],
       /apis/gateway.networking.k8s.io/v1/.../httproutes[/N]        (lists honour labelSelector a=b,c=d)
  GET  /api/v1/namespaces/NS/pods                                 the Deployments' pods, with imageID
  ANY  /api/v1/namespaces/NS/services/N:http/proxy/PATH            the Service's pods: a real model server
  POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews     allowed unless (verb, resource) in `denied`
  (and a request whose verb and resource are in `denied` is 403 Forbidden, as RBAC answers)

Like the API server: server-side apply (application/apply-patch+yaml, fieldManager required) keeps
managedFields per manager; a non-forced apply by another manager than the owner is a 409 conflict; a
metadata.resourceVersion that is not the stored one is a 409 ("the object has been modified"); a spec
change bumps metadata.generation; a Deployment's selector must match its template's labels and never
changes (422 Invalid); an object in a namespace that does not exist is 404 with details.kind
namespaces; errors are Status objects. A Deployment's spec.replicas has owners (the managers that applied
it, or none when the HPA's default set it): an apply without it by its only owner removes the field, so it
is defaulted to 1 (the trap of handing replicas to an HPA); an apply of spec.replicas alone merges into
the object (a transfer of ownership, as Kubernetes documents it).
A Deployment's rollout takes `rollout_rounds` reads (of it, the Deployments or the pods): then its
status catches up (observedGeneration, replicas from spec or its HPA's minReplicas, all available) and
its pods run the image (imageID: the image by digest, or `image_ids[image]`). Knobs: `never_available`
(images or Deployment names whose rollout stops with ProgressDeadlineExceeded), `pull_denied` (pods in ImagePullBackOff),
`failing_smoke` (the proxy answers 500 for pods of that image), `backends` (an image's own server), `gateway_api` (False: no HTTPRoute
kind), `route_refused` (a reason: every HTTPRoute's status says its Gateway did not accept it; else each is
Accepted and ResolvedRefs at once), `denied`, `watch` (called with each request's method and path, before it is answered),
`faults` (tests/helpers/fakes/faults.py, by "METHOD /path"). Not modelled: controllers
beyond that (no ReplicaSets, the HPA never scales, a route status set at once, not per listener), watches, strategic merge patch.
"""

from __future__ import annotations

import copy
import datetime
import http.client
import json
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.helpers.fakes.faults import Faults, fail

# (group/version, plural) -> (kind, short names)
RESOURCES = {("v1", "services"): ("Service", ["svc"]), ("v1", "pods"): ("Pod", ["po"]),
             ("v1", "namespaces"): ("Namespace", ["ns"]),
             ("apps/v1", "deployments"): ("Deployment", ["deploy"]),
             ("autoscaling/v2", "horizontalpodautoscalers"): ("HorizontalPodAutoscaler", ["hpa"]),
             ("policy/v1", "poddisruptionbudgets"): ("PodDisruptionBudget", ["pdb"]),
             ("gateway.networking.k8s.io/v1", "httproutes"): ("HTTPRoute", [])}


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details or {}, "code": code}


class Answer(Exception):
    def __init__(self, code: int, body: Any, content_type: str = "application/json") -> None:
        self.code, self.body, self.content_type = code, body, content_type


class KubernetesFake:
    def __init__(self, tls: ssl.SSLContext, token: str, backend: tuple[str, int] | None = None) -> None:
        self.token, self.backend = token, backend
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.lock = threading.RLock()
        self.reset()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}   # (plural, namespace, name)
            self.replica_owners: dict[tuple[str, str, str], set[str]] = {}   # a Deployment's spec.replicas
            self.namespaces = {"default", "ml"}
            self.version = 100
            self.reads: dict[str, int] = {}
            self.rollout_rounds = 2
            self.never_available: set[str] = set()
            self.pull_denied: set[str] = set()
            self.failing_smoke: set[str] = set()
            self.image_ids: dict[str, str] = {}
            self.backends: dict[str, tuple[str, int]] = {}   # image -> its own model server (else `backend`)
            self.gateway_api = True
            self.route_refused: str | None = None   # the reason the Gateway's controller refuses every HTTPRoute
            self.denied: set[tuple[str, str]] = set()
            self.faults = getattr(self, "faults", None) or Faults()   # the same one: the fault table holds it
            self.faults.rules, self.faults.victim, self.faults.race = {}, None, None
            self.requests: list[tuple[str, str]] = []
            self.tokens: list[str] = []                       # the bearer tokens requests carried
            self.accept: Callable[[str], bool] | None = None  # which tokens are good (else only `token`)
            self.smokes: list[tuple[str, str, str]] = []     # (service, image, path)
            self.watch: Callable[[str, str], None] | None = None   # sees each request before it is answered

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what the tests read ------------------------------------------------------------------
    def mutating(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.requests if m in ("PATCH", "PUT", "DELETE", "POST")
                and "/proxy" not in p and "accessreviews" not in p]

    def get(self, plural: str, name: str, ns: str = "default") -> dict[str, Any] | None:
        return self.objects.get((plural, ns, name))

    def serving(self, route: str, ns: str = "default") -> dict[str, tuple[str, int]]:
        """slot -> (image, weight) from the HTTPRoute's default rule and the slots' Deployments."""
        found = self.get("httproutes", route, ns)
        if not found:
            return {}
        out = {}
        for rule in found["spec"]["rules"]:
            if any(m.get("headers") for m in rule.get("matches", [])):
                continue
            for ref in rule["backendRefs"]:
                dep = self.get("deployments", ref["name"], ns)
                image = dep["spec"]["template"]["spec"]["containers"][0]["image"] if dep else None
                out[ref["name"].removeprefix(f"{route}-")] = (image, ref.get("weight", 1))
        return out

    def spread(self, service: str, ns: str = "default") -> dict[str, tuple[str, int]]:
        """(traffic: replicas) slot -> (image, percent of the pods) of the Deployments the Service selects, by their
        spec.replicas: the shares the cluster converges to (their ready counts lag here until a read progresses them)."""
        found = self.get("services", service, ns)
        if not found:
            return {}
        pods = {}
        for (p, s, name), dep in list(self.objects.items()):
            labels = dep["spec"]["template"]["metadata"].get("labels", {}) if p == "deployments" and s == ns else {}
            if labels and all(labels.get(k) == v for k, v in found["spec"]["selector"].items()):
                pods[name.removeprefix(f"{service}-")] = (self._image(dep), dep["spec"].get("replicas") or 0)
        total = sum(n for _, n in pods.values())
        return {slot: (image, round(100 * n / total)) for slot, (image, n) in pods.items() if n}

    def names(self, plural: str, ns: str = "default") -> list[str]:
        return sorted(n for p, s, n in self.objects if p == plural and s == ns)

    # -- HTTP -----------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()   # headers and body are two writes: without this, Nagle adds 40 ms to each answer
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _answer(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.requests.append((self.command, parts.path))
                if fake.watch:
                    fake.watch(self.command, parts.path)
                if (kind := fake.faults.take(f"{self.command} {parts.path}")) is not None:
                    fail(self, kind, json.dumps(status(500, "InternalError", "injected")).encode())
                    return
                try:
                    given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                    fake.tokens.append(given)
                    if not (fake.accept(given) if fake.accept else given == fake.token):
                        raise Answer(401, status(401, "Unauthorized", "Unauthorized"))
                    with fake.lock:
                        result = fake.route(self.command, parts.path, parse_qs(parts.query), raw,
                                            self.headers.get("Content-Type", ""))
                    answer = Answer(200, result)
                except Answer as a:
                    answer = a
                body = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
                self.send_response(answer.code)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

        return Handler

    def route(self, method: str, path: str, query: dict[str, list[str]], raw: bytes, content_type: str) -> Any:
        parts = path.strip("/").split("/")
        if path == "/version":
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-fake", "platform": "linux/amd64"}
        if path.startswith("/openapi"):   # not served: the manifests are validated offline (kubernetes-validate)
            raise Answer(404, status(404, "NotFound", "the server could not find the requested resource"))
        if path in ("/api", "/apis") or (method == "GET" and len(parts) <= 3 and "namespaces" not in parts):
            return self._discovery(path)
        if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
            review = json.loads(raw)
            attrs = review["spec"]["resourceAttributes"]
            resource = attrs["resource"] + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
            review["status"] = {"allowed": (attrs["verb"], resource) not in self.denied}
            return review
        gv, rest = (parts[1], parts[2:]) if parts[0] == "api" else (f"{parts[1]}/{parts[2]}", parts[3:])
        if len(rest) < 3 or rest[0] != "namespaces":
            raise Answer(404, status(404, "NotFound", "the server could not find the requested resource"))
        ns, plural, name = rest[1], rest[2], rest[3] if len(rest) > 3 else None
        if (gv, plural.split(":")[0]) not in RESOURCES or (plural == "httproutes" and not self.gateway_api):
            raise Answer(404, status(404, "NotFound", "the server could not find the requested resource"))
        verb = {"GET": "get" if name else "list", "POST": "create", "PATCH": "patch", "DELETE": "delete"}.get(method, "")
        resource = plural.split(":")[0] + ("/proxy" if len(rest) > 4 and rest[4] == "proxy" else "")
        if (verb if not resource.endswith("/proxy") else {"GET": "get"}.get(method, "create"), resource) in self.denied:
            group = gv.rsplit("/", 1)[0] if "/" in gv else ""
            raise Answer(403, status(403, "Forbidden", f'{resource} "{name or ""}" is forbidden: User "deployer" cannot '
                                     f'{verb} resource "{resource}" in API group "{group}" in the namespace "{ns}"',
                                     {"name": name or "", "kind": plural}))
        if plural == "services" and len(rest) > 5 and rest[4] == "proxy":
            return self._proxy(method, ns, name.split(":")[0], "/" + "/".join(rest[5:]), raw)
        key = (plural, ns, name or "")
        kind = RESOURCES[(gv, plural)][0]
        if name is None and method == "POST":   # create: 409 AlreadyExists when it is there
            doc = json.loads(raw)
            name = (doc.get("metadata") or {}).get("name", "")
            if (plural, ns, name) in self.objects:
                raise Answer(409, status(409, "AlreadyExists", f'{plural} "{name}" already exists',
                                         {"name": name, "kind": plural}))
            if ns not in self.namespaces:
                raise Answer(404, status(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}))
            doc.get("metadata", {}).pop("resourceVersion", None)
            raise Answer(201, self._apply(gv, kind, (plural, ns, name), doc, {"fieldManager": query.get(
                "fieldManager", ["unknown"]), "force": ["true"]}, operation="Update"))
        if name is None:
            if method != "GET":
                raise Answer(405, status(405, "MethodNotAllowed", f"{method} on a collection is not modelled"))
            return self._list(gv, plural, kind, ns, query.get("labelSelector", [""])[0])
        if method == "GET":
            found = self.objects.get(key)
            if found is None:
                raise Answer(404, status(404, "NotFound", f'{plural} "{name}" not found',
                                         {"name": name, "kind": plural}))
            if plural == "deployments":
                self._progress(found)
            return found
        if method == "DELETE":
            self.replica_owners.pop(key, None)
            if self.objects.pop(key, None) is None:
                raise Answer(404, status(404, "NotFound", f'{plural} "{name}" not found', {"name": name, "kind": plural}))
            return status(200, "", "") | {"status": "Success"}
        if method == "PATCH" and content_type.startswith("application/apply-patch"):
            if ns not in self.namespaces:
                raise Answer(404, status(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}))
            return self._apply(gv, kind, key, yaml.safe_load(raw), query)
        raise Answer(415, status(415, "UnsupportedMediaType", f"{method} {content_type} is not modelled"))

    def _discovery(self, path: str) -> dict[str, Any]:
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        versions = sorted({gv for gv, _ in RESOURCES if "/" in gv} | {"authorization.k8s.io/v1"})
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                 "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}}
                for gv in versions if self.gateway_api or not gv.startswith("gateway")]}
        gv = path.strip("/").split("/", 1)[1] if path.startswith("/apis/") else "v1"
        if gv.startswith("gateway") and not self.gateway_api:
            raise Answer(404, status(404, "NotFound", "the server could not find the requested resource"))
        resources = [{"name": plural, "singularName": kind.lower(), "namespaced": plural != "namespaces",
                      "kind": kind, "shortNames": short,
                      "verbs": ["get", "list", "patch", "delete", "create", "update", "watch"]}
                     for (g, plural), (kind, short) in RESOURCES.items() if g == gv]
        if not resources and gv != "authorization.k8s.io/v1":
            raise Answer(404, status(404, "NotFound", "the server could not find the requested resource"))
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    def _list(self, gv: str, plural: str, kind: str, ns: str, selector: str) -> dict[str, Any]:
        wanted = dict(p.split("=", 1) for p in selector.split(",") if "=" in p)
        for (p, s, _), dep in list(self.objects.items()):   # the rollouts go on whoever reads
            if p == "deployments" and s == ns and plural in ("deployments", "pods"):
                self._progress(dep)
        if plural == "pods":
            items = [pod for (p, s, _), dep in list(self.objects.items()) if p == "deployments" and s == ns
                     for pod in self._pods(dep)]
        else:
            items = [o for (p, s, _), o in self.objects.items() if p == plural and s == ns]
        items = [o for o in items if all(o["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())]
        return {"kind": f"{kind}List", "apiVersion": gv, "metadata": {"resourceVersion": str(self.version)},
                "items": copy.deepcopy(items)}

    def _apply(self, gv: str, kind: str, key: tuple[str, str, str], doc: dict[str, Any],
               query: dict[str, list[str]], operation: str = "Apply") -> dict[str, Any]:
        manager = query.get("fieldManager", [""])[0]
        if not manager:
            raise Answer(400, status(400, "BadRequest", "PATCH is not supported for apply without a fieldManager"))
        meta = doc.get("metadata") or {}
        if doc.get("kind") != kind or doc.get("apiVersion") != gv or meta.get("name") != key[2]:
            raise Answer(400, status(400, "BadRequest", "the object's kind, apiVersion or name does not match the URL"))
        stored = self.objects.get(key)
        if meta.get("resourceVersion") and (stored is None or stored["metadata"]["resourceVersion"] != meta["resourceVersion"]):
            raise Answer(409, status(409, "Conflict", f'Operation cannot be fulfilled on {key[0]} "{key[2]}": the object '
                                     "has been modified; please apply your changes to the latest version and try again",
                                     {"name": key[2], "kind": key[0]}))
        force = query.get("force", ["false"])[0] == "true"
        owners = {f["manager"] for f in (stored or {}).get("metadata", {}).get("managedFields", [])}
        if stored is not None and not force and owners - {manager}:
            raise Answer(409, status(409, "Conflict", f"Apply failed with 1 conflict: conflict with "
                                     f"\"{sorted(owners - {manager})[0]}\": .spec", {"name": key[2], "kind": key[0]}))
        spec = copy.deepcopy(doc.get("spec") or {})
        if kind == "Deployment" and stored and set(spec) == {"replicas"}:   # a field handed over: merged
            spec = {**copy.deepcopy(stored["spec"]), "replicas": spec["replicas"]}
        if kind == "Deployment":
            labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
            if any(labels.get(k) != v for k, v in spec.get("selector", {}).get("matchLabels", {}).items()):
                raise Answer(422, status(422, "Invalid", f'Deployment.apps "{key[2]}" is invalid: spec.template.'
                                         "metadata.labels: Invalid value: `selector` does not match template `labels`",
                                         {"name": key[2], "kind": "Deployment"}))
            if stored and stored["spec"]["selector"] != spec.get("selector"):
                raise Answer(422, status(422, "Invalid", f'Deployment.apps "{key[2]}" is invalid: spec.selector: '
                                         "Invalid value: field is immutable", {"name": key[2], "kind": "Deployment"}))
            owners = self.replica_owners.get(key, set())
            if "replicas" in spec:
                same = stored is not None and stored["spec"].get("replicas") == spec["replicas"]
                self.replica_owners[key] = {manager} | (owners if same else set())
            elif stored:   # kept while another manager (or none: the HPA's default) owns it; else removed
                self.replica_owners[key] = owners - {manager}
                spec["replicas"] = 1 if owners == {manager} else stored["spec"].get("replicas", 1)
        if kind == "HTTPRoute" and not spec.get("parentRefs"):
            raise Answer(422, status(422, "Invalid", "HTTPRoute spec.parentRefs: Required value"))
        self.version += 1
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        new = copy.deepcopy(stored) if stored else {
            "apiVersion": gv, "kind": kind, "metadata": {"name": key[2], "namespace": key[1], "uid": str(uuid.uuid4()),
                                                         "creationTimestamp": now, "generation": 0}, "spec": {}}
        for field in ("labels", "annotations"):
            if field in meta:
                new["metadata"][field] = dict(meta[field])
        if new["spec"] != spec or stored is None:
            new["metadata"]["generation"] += 1
            new["spec"] = spec
            if kind == "Deployment":
                self.reads[key[2]] = 0
                new.setdefault("status", {})["observedGeneration"] = new["metadata"]["generation"] - 1
        if kind == "HTTPRoute":   # the Gateway's controller, at once: accepted (or refused) and its backends resolved
            accepted = ("False", self.route_refused) if self.route_refused else ("True", "Accepted")
            new["status"] = {"parents": [{"parentRef": spec["parentRefs"][0], "controllerName": "example.net/fake-gateway",
                                          "conditions": [{"type": "Accepted", "status": accepted[0], "reason": accepted[1]},
                                                         {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs"}]}]}
        new["metadata"]["resourceVersion"] = str(self.version)
        new["metadata"]["managedFields"] = [{"manager": manager, "operation": operation, "apiVersion": gv, "time": now,
                                             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
        self.objects[key] = new
        return copy.deepcopy(new)

    # -- the controllers, as far as they are modelled -----------------------------------------------
    def _image(self, dep: dict[str, Any]) -> str:
        return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])

    def _progress(self, dep: dict[str, Any]) -> None:
        """A read of a Deployment: after rollout_rounds reads its status is the rollout's outcome."""
        name, gen = dep["metadata"]["name"], dep["metadata"]["generation"]
        self.reads[name] = self.reads.get(name, 0) + 1
        done = dep.get("status", {}).get("observedGeneration") == gen and "conditions" in dep["status"]
        if self.reads[name] < self.rollout_rounds or done:
            return
        hpa = self.objects.get(("horizontalpodautoscalers", dep["metadata"]["namespace"], name))
        dep["spec"].setdefault("replicas", hpa["spec"]["minReplicas"] if hpa else 1)
        n = dep["spec"]["replicas"]
        if self._image(dep) in self.never_available or name in self.never_available:
            dep["status"] = {"observedGeneration": gen, "replicas": n, "updatedReplicas": n, "availableReplicas": 0,
                             "unavailableReplicas": n, "conditions": [
                                 {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                  "message": f'ReplicaSet "{name}-7d9f" has timed out progressing.'}]}
        elif self._image(dep) not in self.pull_denied:
            dep["status"] = {"observedGeneration": gen, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
                             "availableReplicas": n, "conditions": [
                                 {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                                 {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}

    def _pods(self, dep: dict[str, Any]) -> list[dict[str, Any]]:
        image = self._image(dep)
        template = dep["spec"]["template"]
        out = []
        for i in range(dep["spec"].get("replicas") or 1):
            if image in self.pull_denied:
                state, ready, phase = {"waiting": {"reason": "ImagePullBackOff",
                                                   "message": f'Back-off pulling image "{image}"'}}, False, "Pending"
            else:
                state, ready, phase = {"running": {"startedAt": "2026-12-07T00:00:00Z"}}, True, "Running"
            out.append({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"{dep['metadata']['name']}-{dep['metadata']['generation']}-{i}",
                "namespace": dep["metadata"]["namespace"], "labels": dict(template["metadata"].get("labels", {}))},
                "spec": copy.deepcopy(template["spec"]),
                "status": {"phase": phase, "containerStatuses": [
                    {"name": "model", "image": image, "imageID": "" if not ready else self.image_ids.get(image, image),
                     "ready": ready, "restartCount": 0, "state": state}]}})
        return out

    def _proxy(self, method: str, ns: str, service: str, path: str, raw: bytes) -> Any:
        svc = self.objects.get(("services", ns, service))
        if svc is None:
            raise Answer(404, status(404, "NotFound", f'services "{service}" not found', {"name": service, "kind": "services"}))
        selector = svc["spec"]["selector"]
        deps = [d for (p, s, _), d in self.objects.items() if p == "deployments" and s == ns and all(
            d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())]
        deps = [d for d in deps if d.get("status", {}).get("availableReplicas")]   # its ready endpoints
        if not deps:
            raise Answer(503, status(503, "ServiceUnavailable", f'no endpoints available for service "{service}"'))
        image = self._image(deps[0])
        self.smokes.append((service, image, path))
        if image in self.failing_smoke:
            raise Answer(500, {"error": "model failed"})
        backend = self.backends.get(image, self.backend)
        assert backend, "the fake has no model server to proxy to"
        conn = http.client.HTTPConnection(*backend, timeout=30)
        conn.request(method, path, body=raw or None, headers={"Content-Type": "application/json"} if raw else {})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        raise Answer(r.status, body, r.getheader("Content-Type") or "text/plain")
