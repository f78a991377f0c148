"""A small stateful fake of Azure Resource Manager for Microsoft.MachineLearningServices online endpoints.

The real azure-ai-ml client talks to it over HTTP: mldeploy's MLClient factory, given
MLDEPLOY_AZURE_ARM_ENDPOINT, sends https://management.azure.com/... and the endpoints' scoring hosts
(https://E.REGION.inference.ml.azure.com) here, keeping the original host in the Host header.

What it answers (api-version is ignored; paths as the SDK formats them):
  GET    .../workspaces/W                                    the workspace (its location)
  GET    .../workspaces/W/onlineEndpoints                    list
  GET    .../onlineEndpoints/E, PUT (create or full update: traffic, mirrorTraffic), DELETE
  POST   .../onlineEndpoints/E/listKeys, .../token
  GET    .../onlineEndpoints/E/deployments (list), GET/PUT/DELETE .../deployments/D
  GET/PUT .../environments/N/versions/V
  GET .../models/N, GET/PUT .../models/N/versions/V    registered models (image.model: storage); a version
                                                       is immutable, and a deployment's model must exist
  GET    .../locations/L/mfeOperationsStatus/ID              long-running operation status
  POST   /score on host E.L.inference.ml.azure.com           the model (answers like our server)
  GET    .../onlineEndpoints/E/providers/Microsoft.Insights/metrics   Azure Monitor metrics, from
                                                             series seeded with add_metric
  GET/PUT .../providers/Microsoft.Insights/metricAlerts/N, actionGroups/N   (synchronous)
  GET/PUT/DELETE .../providers/Microsoft.Insights/autoscalesettings/N        (synchronous; the target
                                                             must be a deployment that exists)
Endpoint and deployment writes are long-running: 201 (PUT) or 202 (DELETE) with Azure-AsyncOperation
and a short Retry-After (see RETRY_AFTER); an environment version PUT answers at once.
Like the service, it refuses traffic to a deployment that does not exist, traffic that does not
add up to 100, mirror traffic over 50% or to a deployment that takes live traffic, and deleting a
deployment that still takes traffic. Deployment responses carry properties.scaleSettings (the SDK
needs it). Every ARM request must carry the bearer token the fake authority issued.

Knobs for tests: `failing_images` (a deployment of such an image fails to provision),
`failing_scores` (its scoring answers 424 like a model error behind Azure ML's front end),
`fail_next[kind]` (the next LRO of that kind, "endpoint", "deployment" or "delete", fails with
this message), `rounds` (InProgress answers before an LRO finishes). `requests` logs
(method, host, path) of everything received, `bodies` (method, path, JSON body), `scored` each
scoring request (endpoint, deployment header, body); `mutating()` the writes among the requests.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.helpers.fakes.faults import Faults, fail

PROVIDER = "Microsoft.MachineLearningServices"
WS = (r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/" + PROVIDER +
      r"/workspaces/(?P<ws>[^/]+)")
ROUTES = [
    ("workspace", WS + r"$"),
    ("endpoints", WS + r"/onlineEndpoints$"),
    ("endpoint", WS + r"/onlineEndpoints/(?P<e>[^/]+)$"),
    ("keys", WS + r"/onlineEndpoints/(?P<e>[^/]+)/listKeys$"),
    ("token", WS + r"/onlineEndpoints/(?P<e>[^/]+)/token$"),
    ("deployments", WS + r"/onlineEndpoints/(?P<e>[^/]+)/deployments$"),
    ("deployment", WS + r"/onlineEndpoints/(?P<e>[^/]+)/deployments/(?P<d>[^/]+)$"),
    ("environment", WS + r"/environments/(?P<n>[^/]+)/versions/(?P<v>[^/]+)$"),
    ("model_container", WS + r"/models/(?P<n>[^/]+)$"),
    ("model", WS + r"/models/(?P<n>[^/]+)/versions/(?P<v>[^/]+)$"),
    ("operation", r"/subscriptions/[^/]+/providers/" + PROVIDER + r"/locations/[^/]+/mfeOperationsStatus/(?P<op>[^/]+)$"),
    # Azure Monitor (azure-mgmt-monitor): metric alerts and action groups, synchronous PUTs
    ("metric_alert", (r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Insights/"
                      r"metricAlerts/(?P<n>[^/]+)$")),
    ("action_group", (r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Insights/"
                      r"actionGroups/(?P<n>[^/]+)$")),
    ("autoscale", (r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Insights/"
                   r"autoscalesettings/(?P<n>[^/]+)$")),
    # Azure Monitor metrics of an online endpoint (canary analysis)
    ("metrics", WS + r"/onlineEndpoints/(?P<e>[^/]+)/providers/Microsoft\.Insights/metrics$"),
]
# Azure Monitor: the online endpoint metrics the fake serves, with their dimensions (a $filter naming
# another one is refused, as Azure refuses it) and unit
ENDPOINT_METRICS = {"RequestsPerMinute": (("deployment", "statusCode", "statusCodeClass", "modelStatusCode"), "Count"),
                    **{f"RequestLatency{p}": (("deployment",), "MilliSeconds") for p in ("", "_P50", "_P90", "_P95", "_P99")}}
# azure-core reads Retry-After "0" as no header at all (`if delay:`) and falls back to the SDK's own
# interval (5 s for deployments, else the client's polling_interval, 30 s by default); a small
# fraction is honoured. A 202's header must be an int (the SDK deserializes it): those get "0", and
# mldeploy's polling_interval (MLDEPLOY_POLL_SECONDS) applies.
RETRY_AFTER = "0.01"
# what ARM answers when it fails inside (fakes/faults.py injects it)
FAULT_BODY = b'{"error": {"code": "InternalServerError", "message": "injected fault"}}'
SCORING_HOST = re.compile(r"^(?P<e>[a-z0-9-]+)\.(?P<loc>[a-z0-9]+)\.inference\.ml\.azure\.com$", re.I)


def call_of(method: str, path: str) -> str:
    """A request as faults name it: operation ids, which differ from run to run, as op-N."""
    return re.sub(r"/op-\d+", "/op-N", f"{method} {path}")


class AzureMLFake:
    def __init__(self, subscription: str, resource_group: str, workspace: str, *, token: str,
                 location: str = "eastus") -> None:
        self.subscription, self.resource_group, self.workspace = subscription, resource_group, workspace
        self.location, self.token = location, token
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, dict[str, Any]]] = {}
        self.environments: dict[tuple[str, str], dict[str, Any]] = {}
        self.models: dict[tuple[str, str], dict[str, Any]] = {}   # registered model versions
        self.operations: dict[str, dict[str, Any]] = {}
        self.metric_alerts: dict[str, dict[str, Any]] = {}     # Azure Monitor, by name
        self.action_groups: dict[str, dict[str, Any]] = {}
        self.autoscale_settings: dict[str, dict[str, Any]] = {}
        self.metric_points: list[dict[str, Any]] = []          # Azure Monitor metrics, seeded by add_metric
        self.metric_queries: list[dict[str, str]] = []         # the query of every metrics request
        self.query: dict[str, list[str]] = {}                  # the query of the request being answered
        self.requests: list[tuple[str, str, str]] = []
        self.bodies: list[tuple[str, str, Any]] = []
        self.scored: list[tuple[str, str | None, Any]] = []   # (endpoint, deployment header, body)
        self.failing_images: set[str] = set()
        self.failing_scores: set[str] = set()
        self.fail_next: dict[str, str] = {}
        self.rounds = 1
        self.keys = {"primaryKey": "fake-primary-SECRET-key", "secondaryKey": "fake-secondary-SECRET-key"}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self.faults = Faults()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True   # else each keep-alive answer waits ~40 ms for a delayed ACK

            def do_GET(self):
                fake._handle(self, "GET")

            def do_PUT(self):
                fake._handle(self, "PUT")

            def do_POST(self):
                fake._handle(self, "POST")

            def do_DELETE(self):
                fake._handle(self, "DELETE")

            def do_PATCH(self):
                fake._handle(self, "PATCH")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self._lock:
            for store in (self.endpoints, self.deployments, self.environments, self.models, self.operations, self.fail_next,
                          self.metric_alerts, self.action_groups, self.autoscale_settings):
                store.clear()
            self.metric_points.clear()
            self.metric_queries.clear()
            for log in (self.requests, self.bodies, self.scored):
                log.clear()
            self.failing_images.clear()
            self.failing_scores.clear()
            self.rounds = 1

    # -- what tests read ---------------------------------------------------------------------------
    def mutating(self) -> list[tuple[str, str, str]]:
        """Requests that change state: every PUT, PATCH and DELETE, and POSTs other than reads."""
        return [r for r in self.requests if r[0] in ("PUT", "PATCH", "DELETE")
                or (r[0] == "POST" and not r[2].endswith(("/listKeys", "/token", "/score")))]

    def serving(self, endpoint: str) -> dict[str, Any]:
        """{deployment: (image, traffic %)} plus "mirror": {deployment: %}, straight from the state."""
        with self._lock:
            ep = self.endpoints[endpoint]["properties"]
            out: dict[str, Any] = {}
            for name, dep in self.deployments.get(endpoint, {}).items():
                out[name] = (self.image_of(dep), ep.get("traffic", {}).get(name, 0))
            if ep.get("mirrorTraffic"):
                out["mirror"] = dict(ep["mirrorTraffic"])
            return out

    def image_of(self, deployment: dict[str, Any]) -> str | None:
        env_id = deployment["properties"].get("environmentId") or ""
        match = re.search(r"/environments/([^/]+)/versions/([^/]+)$", env_id)
        env = self.environments.get((match.group(1), match.group(2))) if match else None
        return env["properties"].get("image") if env else None

    # -- HTTP --------------------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        path = urlsplit(handler.path).path
        query = parse_qs(urlsplit(handler.path).query)
        host = (handler.headers.get("Host") or "").split(":")[0]
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        with self._lock:
            self.requests.append((method, host, path))
        if kind := self.faults.take(call_of(method, path)):  # unlocked: a race runs another command
            return fail(handler, kind, FAULT_BODY)
        with self._lock:
            self.query = query
            self.bodies.append((method, path, body))
            status, payload, headers = self._route(method, host, path, body, handler.headers)
        data = b"" if payload is None else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("x-ms-request-id", f"req-{next(self._ids)}")
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, method, host, path, body, headers) -> tuple[int, Any, dict[str, str]]:
        scoring = SCORING_HOST.match(host)
        if scoring:
            return self._score(scoring.group("e"), headers, body)
        if headers.get("Authorization") != f"Bearer {self.token}":
            return error(401, "AuthenticationFailed", "Authentication failed: no valid bearer token")
        for kind, pattern in ROUTES:
            match = re.match(pattern, path, re.IGNORECASE)
            if match:
                args = match.groupdict()
                if "ws" in args and (args["sub"], args["rg"], args["ws"].lower()) != \
                        (self.subscription, self.resource_group, self.workspace.lower()):
                    return error(404, "ResourceNotFound", f"The Resource '{PROVIDER}/workspaces/{args['ws']}' under "
                                                          f"resource group '{args['rg']}' was not found.")
                handler = getattr(self, f"_{kind}_{method.lower()}", None)
                if handler is None:
                    return error(405, "MethodNotAllowed", f"{method} is not supported on {kind}")
                return handler(body=body, **{k: v for k, v in args.items() if k not in ("sub", "rg", "ws")})
        return error(404, "NoRoute", f"the fake has no route for {method} {path}")

    # -- resources ---------------------------------------------------------------------------------
    def _ws_id(self) -> str:
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/{PROVIDER}"
                f"/workspaces/{self.workspace}")

    def _workspace_get(self, body):
        return ok({"id": self._ws_id(), "name": self.workspace, "type": f"{PROVIDER}/workspaces",
                   "location": self.location, "kind": "Default", "tags": {},
                   "properties": {"friendlyName": self.workspace, "workspaceId": "0000aaaa-1111-2222-3333-444455556666",
                                  "discoveryUrl": f"https://{self.location}.api.azureml.ms/discovery",
                                  "provisioningState": "Succeeded"}})

    def _endpoints_get(self, body):
        return ok({"value": list(self.endpoints.values())})

    def _endpoint_get(self, body, e):
        if e not in self.endpoints:
            return error(404, "ResourceNotFound", f"Endpoint {e} not found.")
        return ok(self.endpoints[e])

    def _endpoint_put(self, body, e):
        props = (body or {}).get("properties") or {}
        deployments = self.deployments.get(e, {})
        traffic = {k: int(v) for k, v in (props.get("traffic") or {}).items()}
        mirror = {k: int(v) for k, v in (props.get("mirrorTraffic") or {}).items()}
        for name in list(traffic) + list(mirror):
            if name not in deployments:
                return error(400, "BadArgument", f"Traffic cannot be set for non-existent deployment {name}.")
        if traffic and sum(traffic.values()) not in (0, 100):
            return error(400, "BadArgument", f"Traffic must add up to 100 (or 0), not {sum(traffic.values())}.")
        if any(v > 50 for v in mirror.values()) or len(mirror) > 1:
            return error(400, "BadArgument", "Mirror traffic goes to one deployment, at most 50%.")
        if any(traffic.get(name) for name in mirror):
            return error(400, "BadArgument", "A deployment that takes live traffic cannot get mirror traffic.")
        existing = self.endpoints.get(e)
        resource = {
            "id": f"{self._ws_id()}/onlineEndpoints/{e}", "name": e,
            "type": f"{PROVIDER}/workspaces/onlineEndpoints", "location": body.get("location", self.location),
            "kind": body.get("kind") or "Managed", "tags": body.get("tags") or {},
            "identity": {"type": "SystemAssigned", "principalId": "aaaa0000-0000-0000-0000-000000000001",
                         "tenantId": "72f988bf-0000-4000-8000-00000000cafe"},
            "properties": {**props, "traffic": traffic, "mirrorTraffic": mirror,
                           "authMode": props.get("authMode") or "Key",
                           "scoringUri": f"https://{e}.{self.location}.inference.ml.azure.com/score",
                           "swaggerUri": f"https://{e}.{self.location}.inference.ml.azure.com/swagger.json",
                           "provisioningState": "Updating" if existing else "Creating"}}
        self.endpoints[e] = resource
        self.deployments.setdefault(e, {})
        failure = self.fail_next.pop("endpoint", None)

        def finish(failed: bool) -> None:
            resource["properties"]["provisioningState"] = "Failed" if failed else "Succeeded"
            if failed and existing is None:
                self.endpoints.pop(e, None)
            elif failed:
                self.endpoints[e] = existing

        return self._lro(201, resource, failure, finish)

    def _endpoint_delete(self, body, e):
        if e not in self.endpoints:
            return 204, None, {}

        def finish(failed: bool) -> None:
            if not failed:
                self.endpoints.pop(e, None)
                self.deployments.pop(e, None)

        return self._lro(202, None, self.fail_next.pop("delete", None), finish)

    def _keys_post(self, body, e):
        if e not in self.endpoints:
            return error(404, "ResourceNotFound", f"Endpoint {e} not found.")
        return ok(self.keys)

    def _token_post(self, body, e):
        return ok({"accessToken": "fake-endpoint-SECRET-token", "expiryTimeUtc": 4102444800,
                   "refreshAfterTimeUtc": 4102444800, "tokenType": "Bearer"})

    def _deployments_get(self, body, e):
        if e not in self.endpoints:
            return error(404, "ResourceNotFound", f"Endpoint {e} not found.")
        return ok({"value": list(self.deployments.get(e, {}).values())})

    def _deployment_get(self, body, e, d):
        dep = self.deployments.get(e, {}).get(d)
        if dep is None:
            return error(404, "ResourceNotFound", f"Deployment {d} not found in endpoint {e}.")
        return ok(dep)

    def _deployment_put(self, body, e, d):
        if e not in self.endpoints:
            return error(404, "ResourceNotFound", f"Endpoint {e} not found.")
        props = dict((body or {}).get("properties") or {})
        env_id = props.get("environmentId") or ""
        match = re.search(r"/environments/([^/]+)/versions/([^/]+)$", env_id)
        if not match or (match.group(1), match.group(2)) not in self.environments:
            return error(400, "BadArgument", f"Environment {env_id or '(none)'} does not exist.")
        if (model_id := props.get("model")) and not ((found := re.search(r"/models/([^/]+)/versions/([^/]+)$", model_id))
                                                     and (found.group(1), found.group(2)) in self.models):
            return error(400, "BadArgument", f"Model {model_id} does not exist.")
        existing = self.deployments[e].get(d)
        props.setdefault("scaleSettings", {"scaleType": "Default"})
        props["provisioningState"] = "Updating" if existing else "Creating"
        resource = {"id": f"{self._ws_id()}/onlineEndpoints/{e}/deployments/{d}", "name": d,
                    "type": f"{PROVIDER}/workspaces/onlineEndpoints/deployments",
                    "location": body.get("location", self.location), "kind": body.get("kind") or "Managed",
                    "tags": body.get("tags") or {}, "sku": body.get("sku") or {"name": "Default", "capacity": 1},
                    "properties": props}
        self.deployments[e][d] = resource
        image = self.image_of(resource)
        failure = self.fail_next.pop("deployment", None)
        if failure is None and image in self.failing_images:
            failure = ("ResourceNotReady: User container has crashed or terminated: the liveness probe "
                       f"failed on port 8080 (image {image})")

        def finish(failed: bool) -> None:
            resource["properties"]["provisioningState"] = "Failed" if failed else "Succeeded"

        return self._lro(201, resource, failure, finish)

    def _deployment_delete(self, body, e, d):
        if d not in self.deployments.get(e, {}):
            return 204, None, {}
        if self.endpoints[e]["properties"].get("traffic", {}).get(d):
            return error(400, "BadArgument", f"Deployment {d} still takes traffic; set its traffic to 0 first.")
        if self.endpoints[e]["properties"].get("mirrorTraffic", {}).get(d):
            return error(400, "BadArgument", f"Deployment {d} still takes mirror traffic; remove it first.")

        def finish(failed: bool) -> None:
            if not failed:
                self.deployments[e].pop(d, None)

        return self._lro(202, None, self.fail_next.pop("delete", None), finish)

    def _environment_get(self, body, n, v):
        env = self.environments.get((n, v))
        return ok(env) if env else error(404, "ResourceNotFound", f"Environment {n}:{v} not found.")

    def _environment_put(self, body, n, v):
        props = (body or {}).get("properties") or {}
        old = self.environments.get((n, v))
        if old and old["properties"].get("image") != props.get("image"):
            return error(409, "Conflict", f"Environment {n}:{v} exists with another image; versions are immutable.")
        self.environments[(n, v)] = {"id": f"{self._ws_id()}/environments/{n}/versions/{v}", "name": v,
                                     "type": f"{PROVIDER}/workspaces/environments/versions",
                                     "properties": {**props, "provisioningState": "Succeeded"}}
        return ok(self.environments[(n, v)], 201 if old is None else 200)

    def _model_container_get(self, body, n):
        if not any(name == n for name, _ in self.models):
            return error(404, "ResourceNotFound", f"Model container {n} not found.")
        return ok({"id": f"{self._ws_id()}/models/{n}", "name": n, "properties": {}})

    def _model_get(self, body, n, v):
        model = self.models.get((n, v))
        return ok(model) if model else error(404, "ResourceNotFound", f"Model {n}:{v} not found.")

    def _model_put(self, body, n, v):
        props = (body or {}).get("properties") or {}
        old = self.models.get((n, v))
        if old and old["properties"].get("modelUri") != props.get("modelUri"):
            return error(409, "Conflict", f"Model {n}:{v} exists with another path; versions are immutable.")
        self.models[(n, v)] = {"id": f"{self._ws_id()}/models/{n}/versions/{v}", "name": v,
                               "type": f"{PROVIDER}/workspaces/models/versions",
                               "properties": {"flavors": {}, **props, "provisioningState": "Succeeded"}}
        return ok(self.models[(n, v)], 201 if old is None else 200)

    # -- long-running operations -------------------------------------------------------------------
    def _lro(self, status: int, resource: Any, failure: str | None, finish) -> tuple[int, Any, dict[str, str]]:
        op = f"op-{next(self._ids)}"
        self.operations[op] = {"left": self.rounds, "failure": failure, "finish": finish}
        url = (f"https://management.azure.com/subscriptions/{self.subscription}/providers/{PROVIDER}/locations/"
               f"{self.location}/mfeOperationsStatus/{op}?api-version=2024-04-01")
        headers = {"Azure-AsyncOperation": url, "Retry-After": RETRY_AFTER}
        if status == 202:  # the SDK reads a 202's Retry-After as an int: "0" means its polling_interval
            headers.update({"Location": url, "Retry-After": "0"})
        return status, resource, headers

    def _operation_get(self, body, op):
        state = self.operations.get(op)
        if state is None:
            return error(404, "ResourceNotFound", f"Operation {op} not found.")
        if state["left"] > 0:
            state["left"] -= 1
            return 200, {"status": "InProgress"}, {"Retry-After": RETRY_AFTER}
        if "done" not in state:
            state["done"] = True
            state["finish"](state["failure"] is not None)
        if state["failure"]:
            code = state["failure"].split(":", 1)[0] if ":" in state["failure"] else "OperationFailed"
            return ok({"status": "Failed", "error": {"code": code, "message": state["failure"]}})
        return ok({"status": "Succeeded"})

    # -- Azure Monitor ---------------------------------------------------------------------------------
    def _insights(self, store: dict[str, dict[str, Any]], kind: str, n: str, body: Any, status: int):
        """A PUT of a metric alert or action group: stored whole, answered at once (200 on update)."""
        resource = {**(body or {}), "id": f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
                                          f"/providers/Microsoft.Insights/{kind}/{n}",
                    "name": n, "type": f"Microsoft.Insights/{kind}"}
        existed = n in store
        store[n] = resource
        return ok(resource, 200 if existed else status)

    def _metric_alert_get(self, body, n):
        found = self.metric_alerts.get(n)
        return ok(found) if found else error(404, "ResourceNotFound", f"Metric alert {n} not found.")

    def _metric_alert_put(self, body, n):
        criteria = ((body or {}).get("properties") or {}).get("criteria") or {}
        if not criteria.get("allOf") or not ((body or {}).get("properties") or {}).get("scopes"):
            return error(400, "BadRequest", "a metric alert needs scopes and criteria.allOf")
        return self._insights(self.metric_alerts, "metricAlerts", n, body, 200)  # Azure answers 200, not 201

    def _action_group_get(self, body, n):
        found = self.action_groups.get(n)
        return ok(found) if found else error(404, "ResourceNotFound", f"Action group {n} not found.")

    def _action_group_put(self, body, n):
        short = ((body or {}).get("properties") or {}).get("groupShortName") or ""
        if not 1 <= len(short) <= 12:
            return error(400, "BadRequest", "groupShortName must be 1 to 12 characters")
        return self._insights(self.action_groups, "actionGroups", n, body, 201)

    def _autoscale_get(self, body, n):
        found = self.autoscale_settings.get(n)
        return ok(found) if found else error(404, "ResourceNotFound", f"Autoscale setting {n} not found.")

    def _autoscale_put(self, body, n):
        """Azure's checks: a location, 1 to 20 profiles whose capacity holds minimum <= default <= maximum,
        and a target resource that exists (here: a deployment of this workspace)."""
        props = (body or {}).get("properties") or {}
        target = re.search(r"/onlineEndpoints/([^/]+)/deployments/([^/]+)$", props.get("targetResourceUri") or "")
        if not (body or {}).get("location") or not 1 <= len(props.get("profiles") or []) <= 20:
            return error(400, "BadRequest", "an autoscale setting needs a location and 1 to 20 profiles")
        for profile in props["profiles"]:
            c = profile.get("capacity") or {}
            try:
                if not 0 <= int(c["minimum"]) <= int(c["default"]) <= int(c["maximum"]):
                    raise ValueError
            except (KeyError, ValueError):
                return error(400, "InvalidCapacity", f"profile {profile.get('name')}: minimum <= default <= maximum")
        if not target or target.group(2) not in self.deployments.get(target.group(1), {}):
            return error(400, "TargetResourceNotFound", f"the target resource {props.get('targetResourceUri')} "
                                                        "was not found")
        return self._insights(self.autoscale_settings, "autoscalesettings", n, body, 201)

    def _autoscale_delete(self, body, n):
        return ok(None, 200 if self.autoscale_settings.pop(n, None) else 204)

    def add_metric(self, endpoint: str, metric: str, dimensions: dict[str, str], values: list[float]) -> None:
        """Seed Azure Monitor: one value per minute for the last len(values) minutes of any window."""
        self.metric_points.append({"endpoint": endpoint, "metric": metric, "values": list(values),
                                   "dimensions": {k.lower(): v for k, v in dimensions.items()}})

    def _metrics_get(self, body, e, metrics=None):
        """Microsoft.Insights/metrics of an endpoint, minute by minute (PT1M only): the series split by
        the $filter's dimensions ('*' or values joined by `or`), Total or Average of each minute, at
        most `top` series (10 unless asked, as Azure does)."""
        q = {k: v[-1] for k, v in self.query.items()}
        self.metric_queries.append(q)
        if e not in self.endpoints:
            return error(404, "ResourceNotFound", f"Endpoint {e} not found.")
        try:
            start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in q["timespan"].split("/"))
        except (KeyError, ValueError):
            return error(400, "BadRequest", "timespan must be START/END in ISO 8601")
        aggregation = q.get("aggregation", "")
        if q.get("interval") != "PT1M" or aggregation.lower() not in ("total", "average"):
            return error(501, "NotImplemented", "the fake answers interval PT1M with Total or Average only")
        wanted: dict[str, set[str] | None] = {}
        for group in filter(None, re.split(r"\s+and\s+", q.get("$filter", ""))):
            terms = [re.fullmatch(r"\s*(\w+) eq '([^']*)'\s*", t) for t in re.split(r"\s+or\s+", group)]
            if not all(terms) or len({t.group(1).lower() for t in terms}) != 1:
                return error(400, "BadRequest", f"Invalid $filter {group!r}: the logical or operator cannot "
                                                "separate two different metadata names")
            values = {t.group(2).lower() for t in terms}
            wanted[terms[0].group(1).lower()] = None if "*" in values else values
        minutes = [start + timedelta(minutes=i) for i in range(int((end - start).total_seconds() // 60))]
        out = []
        metrics = metrics or ENDPOINT_METRICS   # another resource type's metrics (fakes/containerapps.py)
        for name in q.get("metricnames", "").split(","):
            if name not in metrics:
                return error(400, "BadRequest", f"Failed to find metric configuration for provider: "
                                                f"{PROVIDER}, resource Type: onlineEndpoints, metric: {name}")
            dims, unit = metrics[name]
            if set(wanted) - {d.lower() for d in dims}:
                return error(400, "BadRequest", f"Metric: {name} does not support requested dimension "
                                                f"combination: {','.join(wanted)}")
            series: dict[tuple, list[list[float]]] = {}
            for point in self.metric_points:
                if point["endpoint"] != e or point["metric"] != name or any(
                        values is not None and point["dimensions"].get(d, "").lower() not in values
                        for d, values in wanted.items()):
                    continue
                per_minute = series.setdefault(tuple(point["dimensions"].get(d, "") for d in wanted),
                                               [[] for _ in minutes])
                for i, value in enumerate(point["values"][-len(minutes):] if minutes else []):
                    per_minute[len(minutes) - len(point["values"][-len(minutes):]) + i].append(value)
            key = aggregation.lower()
            out.append({"id": f"{self._ws_id()}/onlineEndpoints/{e}/providers/Microsoft.Insights/metrics/{name}",
                        "type": "Microsoft.Insights/metrics", "name": {"value": name, "localizedValue": name},
                        "unit": unit, "errorCode": "Success", "timeseries": [
                            {"metadatavalues": [{"name": {"value": d, "localizedValue": d}, "value": v}
                                                for d, v in zip(wanted, labels)],
                             "data": [{"timeStamp": m.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                       **({key: sum(vs) if key == "total" else sum(vs) / len(vs)} if vs else {})}
                                      for m, vs in zip(minutes, values)]}
                            for labels, values in list(series.items())[:int(q.get("top", 10))]]})
        return ok({"cost": len(minutes), "timespan": q["timespan"], "interval": "PT1M",
                   "namespace": q.get("metricnamespace", ""), "resourceregion": self.location, "value": out})

    # -- the model -----------------------------------------------------------------------------------
    def _score(self, e, headers, body) -> tuple[int, Any, dict[str, str]]:
        endpoint = self.endpoints.get(e)
        if endpoint is None:
            return 404, {"message": f"endpoint {e} not found"}, {}
        mode = endpoint["properties"].get("authMode", "Key").lower()
        allowed = ({f"Bearer {k}" for k in self.keys.values()} if mode == "key" else
                   {f"Bearer {self.token}"} if mode == "aadtoken" else {"Bearer fake-endpoint-SECRET-token"})
        if headers.get("Authorization", "") not in allowed:
            return 401, {"message": f"{mode} auth failed"}, {}
        name = headers.get("azureml-model-deployment")
        traffic = endpoint["properties"].get("traffic") or {}
        if not name:
            name = max(traffic, key=traffic.get) if traffic else None
        dep = self.deployments.get(e, {}).get(name or "")
        self.scored.append((e, headers.get("azureml-model-deployment"), body))
        if dep is None:
            return 404, {"message": f"no deployment {name} to route to"}, {}
        if dep["properties"].get("provisioningState") != "Succeeded":
            return 503, {"message": f"deployment {name} is {dep['properties'].get('provisioningState')}"}, {}
        if self.image_of(dep) in self.failing_scores:
            # Azure ML answers 424 when the model's container answered an error; the body is the container's
            return 424, {"error": "model run failed: input 'x' expected 4 values per row", "request_id": "r-1"}, {}
        if not isinstance(body, dict) or not any(k in body for k in ("inputs", "input", "instances", "data")):
            return 400, {"error": "expected a JSON object with 'inputs'", "request_id": "r-2"}, {}
        return 200, {"outputs": [[0.2, 0.3, 0.5]]}, {"azureml-model-deployment": name}


def ok(body: Any, status: int = 200) -> tuple[int, Any, dict[str, str]]:
    return status, body, {}


def error(status: int, code: str, message: str) -> tuple[int, Any, dict[str, str]]:
    return status, {"error": {"code": code, "message": message}}, {}
