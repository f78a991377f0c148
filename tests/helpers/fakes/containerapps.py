"""A small stateful fake of Azure Resource Manager for Microsoft.App container apps and their revisions.

It extends the Azure ML fake (fakes/azureml.py: the same HTTP server, bearer-token check, request logs,
fault injection and Azure Monitor alert routes), so the real azure-mgmt-appcontainers client reaches it
through MLDEPLOY_AZURE_ARM_ENDPOINT, and the apps' label URLs (https://<app>---<label>.<domain>) too.

What it answers (api-version is ignored; paths as the SDK formats them):
  GET    .../providers/Microsoft.App/managedEnvironments/E             the environment (location, defaultDomain)
  GET    .../providers/Microsoft.App/containerApps                    list
  GET/PUT/PATCH/DELETE .../containerApps/A                           PUT 201 + Azure-AsyncOperation; PATCH
                                                                     (JSON merge patch) and DELETE 202 + Location
  GET    .../containerApps/A/revisions, .../revisions/R; POST .../revisions/R/activate|deactivate
  GET    .../containerApps/A/authConfigs/current                      404 unless `auth[A]` is set
  GET    /subscriptions/S/providers/Microsoft.App/locations/L/containerappOperationStatuses/ID  (and
         .../containerappOperationResults/ID, the Location form: 202 until done, then the app)
  GET    .../containerApps/A/providers/Microsoft.Insights/metrics     Requests / ResponseTime, seeded by add_metric
  GET    .../providers/Microsoft.ManagedIdentity/userAssignedIdentities/I   the identity (its clientId from the name)
  POST   https://A---LABEL.DOMAIN/predict                             the label's revision answers like our server

Like the service: a template change makes a revision named <app>--<revisionSuffix>, and a suffix that
exists is refused; ingress.traffic must name revisions that exist (or the one being made) and are
active, add up to 100, and use each label once; a write while someone else's operation on the app
runs (`hold`) is 409 ContainerAppOperationInProgress; a revision of a weighted share cannot be deactivated; an app in
single-revision mode sends all traffic to its latest revision. A new revision is Provisioning/Processing
for `revision_rounds` reads, then Provisioned and Running (ScaledToZero with minReplicas 0, until a
request to one of its labels wakes it), or Failed (`failing_images`, or an image whose
registry is in `pull_denied`: the app's identity may not pull). Label URLs honour the ingress IP rules.

Not modelled: Azure refuses a write while the app's own previous operation still runs; here only a
held one does, since the fault table's race runs a second command inside the first one's poll.
Replicas and scale rules (stored, never acted on), Key Vault (secret references are stored, never
resolved), built-in authentication beyond its settings document, the time a revision really takes.
Knobs: `failing_images`, `failing_smoke` (images), `failing_labels`, `pull_denied`, `rounds` (InProgress answers of an LRO),
`absent_identities`, `revision_rounds`, `hold(app)` (an operation that runs until `release(app)`); logs: `requests`,
`bodies`, `smokes` (label, revision, body); `mutating()` the writes.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import re
import uuid
from typing import Any

from tests.helpers.fakes.azureml import AzureMLFake, error, ok

PROVIDER = "Microsoft.App"
RG = r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/" + PROVIDER
APP = RG + r"/containerApps/(?P<a>[^/]+)"
APP_ROUTES = [
    ("environment", RG + r"/managedEnvironments/(?P<e>[^/]+)$"),
    ("apps", RG + r"/containerApps$"),
    ("app", APP + r"$"),
    ("revisions", APP + r"/revisions$"),
    ("revision", APP + r"/revisions/(?P<r>[^/]+)$"),
    ("revision_action", APP + r"/revisions/(?P<r>[^/]+)/(?P<action>activate|deactivate)$"),
    ("auth", APP + r"/authConfigs/(?P<n>[^/]+)$"),
    ("ca_metrics", APP + r"/providers/Microsoft\.Insights/metrics$"),
    ("user_identity", (r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
                       r"Microsoft\.ManagedIdentity/userAssignedIdentities/(?P<i>[^/]+)$")),
    ("ca_operation", r"/subscriptions/[^/]+/providers/" + PROVIDER +
     r"/locations/[^/]+/containerappOperation(?P<form>Statuses|Results)/(?P<op>[^/]+)$"),
]
LABEL_HOST = re.compile(r"^(?P<a>[a-z0-9-]+?)---(?P<label>[a-z0-9-]+)\.(?P<domain>.+\.azurecontainerapps\.io)$")
CA_METRICS = {"Requests": (("revisionName", "statusCodeCategory", "statusCode"), "Count"),
              "ResponseTime": (("revisionName", "statusCodeCategory"), "MilliSeconds")}


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7396): objects merge, anything else (arrays too) replaces, null removes."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class ContainerAppsFake(AzureMLFake):
    def __init__(self, subscription: str, resource_group: str, *, token: str, location: str = "westeurope") -> None:
        self.apps: dict[str, dict[str, Any]] = {}
        self.revisions: dict[str, dict[str, dict[str, Any]]] = {}
        self.managed_environments: dict[str, dict[str, Any]] = {}
        self.auth: dict[str, dict[str, Any]] = {}
        self.ca_operations: dict[str, dict[str, Any]] = {}
        self.held: dict[str, str] = {}
        self.failing_smoke: set[str] = set()
        self.failing_labels: set[str] = set()   # labels whose requests answer 500 (a revision failing later)
        self.pull_denied: set[str] = set()
        self.absent_identities: set[str] = set()   # user-assigned identities (names) that do not exist
        self.smokes: list[tuple[str, str, Any]] = []
        self.revision_rounds = 1
        self.client_ip = "127.0.0.1"
        self._caller: str | None = None   # the Authorization header of the request being answered
        self._reads: dict[str, int] = {}
        self._ops = itertools.count(1)
        super().__init__(subscription, resource_group, "unused-ws", token=token, location=location)
        self.reset()

    def reset(self) -> None:
        super().reset()
        with self._lock:
            for store in (self.apps, self.revisions, self.auth, self.ca_operations, self.held, self._reads):
                store.clear()
            self.failing_smoke.clear()
            self.failing_labels.clear()
            self.pull_denied.clear()
            self.absent_identities.clear()
            self.smokes.clear()
            self.revision_rounds = 1
            self.managed_environments.clear()
            self.add_environment("ml-env")

    # -- what tests set and read -------------------------------------------------------------------
    def add_environment(self, name: str) -> None:
        self.managed_environments[name] = {
            "id": f"{self._rg_id()}/managedEnvironments/{name}", "name": name, "location": self.location,
            "type": f"{PROVIDER}/managedEnvironments",
            "properties": {"provisioningState": "Succeeded", "defaultDomain": f"{name}-4f2a.{self.location}"
                                                                              ".azurecontainerapps.io"}}

    def hold(self, app: str) -> None:
        """An operation on the app that runs until release() (someone else's update)."""
        self.held[app] = "held"

    def release(self, app: str) -> None:
        self.held.pop(app, None)

    def mutating(self) -> list[tuple[str, str, str]]:
        return [r for r in super().mutating() if not r[2].endswith("/predict")]

    def serving(self, app: str) -> dict[str, tuple[str | None, int]]:
        """{label: (image, weight)} straight from the app's ingress, labelled entries only."""
        with self._lock:
            out = {}
            for t in self.apps[app]["properties"]["configuration"]["ingress"].get("traffic") or []:
                if t.get("label"):
                    rev = self.revisions[app].get(t["revisionName"])
                    out[t["label"]] = (self.image_of_revision(rev), int(t.get("weight") or 0))
            return out

    @staticmethod
    def image_of_revision(rev: dict[str, Any] | None) -> str | None:
        containers = (rev or {}).get("properties", {}).get("template", {}).get("containers") or [{}]
        return containers[0].get("image")

    # -- HTTP ----------------------------------------------------------------------------------------
    def _route(self, method, host, path, body, headers):
        label = LABEL_HOST.match(host)
        self._caller = headers.get("Authorization")
        if label:
            return self._label_request(label.group("a"), label.group("label"), path, body)
        if headers.get("Authorization") == f"Bearer {self.token}":
            for kind, pattern in APP_ROUTES:
                match = re.match(pattern, path, re.IGNORECASE)
                if match:
                    args = {k: v for k, v in match.groupdict().items() if k not in ("sub", "rg")}
                    if match.groupdict().get("rg") not in (None, self.resource_group) or \
                            match.groupdict().get("sub") not in (None, self.subscription):
                        return error(404, "ResourceGroupNotFound",
                                     f"Resource group '{match.groupdict().get('rg')}' could not be found.")
                    handler = getattr(self, f"_{kind}_{method.lower()}", None)
                    if handler is None:
                        return error(405, "MethodNotAllowed", f"{method} is not supported on {kind}")
                    return handler(body=body, **args)
        return super()._route(method, host, path, body, headers)

    def _rg_id(self) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/{PROVIDER}"

    # -- environments, apps ----------------------------------------------------------------------------
    def _environment_get(self, body, e, **_):
        found = self.managed_environments.get(e)
        return ok(found) if found else error(404, "ResourceNotFound",
                                             f"The Resource '{PROVIDER}/managedEnvironments/{e}' under resource "
                                             f"group '{self.resource_group}' was not found.")

    def _user_identity_get(self, body, i):
        """A user-assigned identity (any name but one in `absent_identities`), its client id derived from the name."""
        if i in self.absent_identities:
            return error(404, "ResourceNotFound", f"The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/{i}' "
                                                  f"under resource group '{self.resource_group}' was not found.")
        return ok({"id": f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/"
                         f"Microsoft.ManagedIdentity/userAssignedIdentities/{i}", "name": i,
                   "type": "Microsoft.ManagedIdentity/userAssignedIdentities", "location": self.location,
                   "properties": {"clientId": self.client_id(i), "principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"p/{i}")),
                                  "tenantId": "72f988bf-0000-4000-8000-00000000cafe"}})

    @staticmethod
    def client_id(identity: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, identity.rsplit("/", 1)[-1]))

    def _apps_get(self, body):
        return ok({"value": list(self.apps.values())})

    def _app_get(self, body, a):
        app = self.apps.get(a)
        return ok(app) if app else error(404, "ResourceNotFound", f"The Resource '{PROVIDER}/containerApps/{a}' "
                                                                  f"under resource group '{self.resource_group}' "
                                                                  "was not found.")

    def _busy(self, a: str):
        if a in self.held:
            return error(409, "ContainerAppOperationInProgress",
                         f"Cannot modify a container app '{a}' because there is a pending operation on it.")
        return None

    def _app_put(self, body, a):
        if busy := self._busy(a):
            return busy
        body = body or {}
        props = body.get("properties") or {}
        env = (props.get("environmentId") or props.get("managedEnvironmentId") or "").rsplit("/", 1)[-1]
        if env not in self.managed_environments:
            return error(404, "ManagedEnvironmentNotFound", f"Managed environment '{env}' was not found.")
        if not body.get("location"):
            return error(400, "LocationRequired", "The location property is required for this definition.")
        existing = self.apps.get(a)
        app = {"id": f"{self._rg_id()}/containerApps/{a}", "name": a, "type": f"{PROVIDER}/containerApps",
               "location": body["location"], "tags": body.get("tags") or {},
               "identity": self._identity(body.get("identity")),
               "properties": {"environmentId": self.managed_environments[env]["id"],
                              "managedEnvironmentId": self.managed_environments[env]["id"],
                              "configuration": props.get("configuration") or {}, "template": {}}}
        return self._write(a, app, props.get("template") or {}, existing, 201)

    def _app_patch(self, body, a):
        if a not in self.apps:
            return self._app_get(None, a)
        if busy := self._busy(a):
            return busy
        patch = copy.deepcopy(body or {})
        template = (patch.get("properties") or {}).pop("template", None)
        app = merge(copy.deepcopy(self.apps[a]), patch)
        app["identity"] = self._identity(app.get("identity"))
        return self._write(a, app, template, self.apps[a], 202)

    @staticmethod
    def _identity(identity: dict[str, Any] | None) -> dict[str, Any] | None:
        if not identity:
            return None
        out = {**identity}
        if "SystemAssigned" in str(identity.get("type")):
            out |= {"principalId": "cafe0000-0000-0000-0000-000000000001", "tenantId": "72f988bf-0000-4000-8000-00000000cafe"}
        return out

    def _write(self, a: str, app: dict[str, Any], template: dict[str, Any] | None, existing, status: int):
        """Validate the app as it would be, make a revision from a template, store it, answer an LRO."""
        config = app["properties"].setdefault("configuration", {})
        single = str(config.get("activeRevisionsMode") or "Single").lower() == "single"
        revisions = self.revisions.get(a, {})
        new = None
        if template:
            merged = merge(copy.deepcopy((existing or {}).get("properties", {}).get("template") or {}), template)
            suffix = merged.get("revisionSuffix") or f"r{next(self._ops):07d}"
            name = f"{a}--{suffix}"
            if name in revisions:
                return error(400, "ContainerAppRevisionSuffixConflict",
                             f"Revision with suffix {suffix} already exists. Please use a different suffix.")
            containers = merged.get("containers") or []
            if not containers or not containers[0].get("image"):
                return error(400, "ContainerAppInvalidTemplate", "A container with an image is required.")
            app["properties"]["template"] = merged
            new = name
        ingress = config.get("ingress")
        known = set(revisions) | ({new} if new else set())
        if ingress and not single:
            traffic = ingress.get("traffic") or []
            labels = [t["label"] for t in traffic if t.get("label")]
            for t in traffic:
                rev = t.get("revisionName")
                if t.get("latestRevision"):
                    continue
                if rev not in known:
                    return error(400, "ContainerAppInvalidTrafficWeight", f"Revision '{rev}' does not exist.")
                if rev != new and not revisions[rev]["properties"]["active"]:
                    return error(400, "ContainerAppInvalidTrafficWeight", f"Revision '{rev}' is not active.")
            if traffic and sum(int(t.get("weight") or 0) for t in traffic) != 100:
                return error(400, "ContainerAppInvalidTrafficWeight", "The sum of traffic weights must be 100.")
            if len(labels) != len(set(labels)):
                return error(400, "ContainerAppDuplicateLabel", "Each label may be used once in ingress.traffic.")
        if ingress is not None:
            domain = self.managed_environments[app["properties"]["environmentId"].rsplit("/", 1)[-1]]["properties"][
                "defaultDomain"]
            ingress["fqdn"] = f"{a}.{domain}"
        self.apps[a] = app
        self.revisions.setdefault(a, {})
        if new:
            self._make_revision(a, new, app)
        if single and new:  # single-revision mode: the latest revision takes everything, the others stop
            for name, rev in self.revisions[a].items():
                rev["properties"]["active"] = name == new
            if ingress is not None:
                ingress["traffic"] = [{"latestRevision": True, "weight": 100}]
        app["properties"]["provisioningState"] = "InProgress"
        app["properties"]["latestRevisionName"] = new or app["properties"].get("latestRevisionName")
        self._weights(a)
        return self._ca_lro(a, status, app)

    def _make_revision(self, a: str, name: str, app: dict[str, Any]) -> None:
        template = copy.deepcopy(app["properties"]["template"])
        image = template["containers"][0]["image"]
        server = image.split("/", 1)[0]
        registries = {r.get("server"): r for r in app["properties"]["configuration"].get("registries") or []}
        error_text = None
        if image in self.failing_images:
            error_text = f"Container 'model' crashed: the readiness probe failed on port 8080 (image {image})"
        elif server.endswith(".azurecr.io") and (server not in registries or server in self.pull_denied):
            error_text = (f"ImagePullFailure: failed to pull image {image}: unauthorized: the identity "
                          f"{(registries.get(server) or {}).get('identity') or '(none)'} may not pull from {server}")
        domain = app["properties"]["configuration"].get("ingress", {}).get("fqdn", "").split(".", 1)[-1]
        self.revisions[a][name] = {
            "id": f"{self._rg_id()}/containerApps/{a}/revisions/{name}", "name": name,
            "type": f"{PROVIDER}/containerApps/revisions",
            "properties": {"createdTime": "2026-12-07T10:00:00Z", "fqdn": f"{name}.{domain}", "template": template,
                           "active": True, "replicas": 0, "trafficWeight": 0, "healthState": "None",
                           "provisioningState": "Provisioning", "runningState": "Processing"},
            "_error": error_text}
        self._reads[name] = self.revision_rounds

    def _weights(self, a: str) -> None:
        weights: dict[str, int] = {}
        for t in self.apps[a]["properties"]["configuration"].get("ingress", {}).get("traffic") or []:
            rev = self.apps[a]["properties"]["latestRevisionName"] if t.get("latestRevision") else t.get("revisionName")
            weights[rev] = weights.get(rev, 0) + int(t.get("weight") or 0)
        for name, rev in self.revisions[a].items():
            rev["properties"]["trafficWeight"] = weights.get(name, 0)

    def _app_delete(self, body, a):
        if a not in self.apps:
            return 204, None, {}
        if busy := self._busy(a):
            return busy

        def finish() -> None:
            self.apps.pop(a, None)
            self.revisions.pop(a, None)

        return self._ca_lro(a, 202, None, finish)

    # -- long-running operations -----------------------------------------------------------------------
    def _ca_lro(self, a: str, status: int, resource: Any, finish=None):
        op = f"op-{next(self._ids)}"
        self.ca_operations[op] = {"app": a, "left": self.rounds, "finish": finish, "resource": resource}
        base = (f"https://management.azure.com/subscriptions/{self.subscription}/providers/{PROVIDER}/locations/"
                f"{self.location}/containerappOperation")
        # the SDK reads an initial answer's Retry-After as an int: "0" leaves the client's polling_interval
        headers = {"Retry-After": "0"}
        if status == 201:
            headers["Azure-AsyncOperation"] = f"{base}Statuses/{op}?api-version=2026-07-01"
        else:
            headers["Location"] = f"{base}Results/{op}?api-version=2026-07-01"
        return status, resource, headers

    def _ca_operation_get(self, body, form, op):
        state = self.ca_operations.get(op)
        if state is None:
            return error(404, "ResourceNotFound", f"Operation {op} not found.")
        if state["left"] > 0:
            state["left"] -= 1
            return (200, {"status": "InProgress"}, {"Retry-After": "0"}) if form == "Statuses" else \
                (202, None, {"Retry-After": "0"})
        if "done" not in state:
            state["done"] = True
            if state["finish"]:
                state["finish"]()
            elif state["resource"] is not None:
                state["resource"]["properties"]["provisioningState"] = "Succeeded"
        if form == "Statuses":
            return ok({"id": op, "name": op, "status": "Succeeded"})
        return ok(self.apps.get(state["app"])) if state["resource"] is not None else (204, None, {})

    # -- revisions ---------------------------------------------------------------------------------------
    def _revisions_get(self, body, a):
        if a not in self.apps:
            return self._app_get(None, a)
        for name in list(self.revisions.get(a, {})):
            self._advance(a, name)
        return ok({"value": [self._public(r) for r in self.revisions[a].values()]})

    def _revision_get(self, body, a, r):
        if r not in self.revisions.get(a, {}):
            return error(404, "ResourceNotFound", f"Revision '{r}' of container app '{a}' was not found.")
        self._advance(a, r)
        return ok(self._public(self.revisions[a][r]))

    @staticmethod
    def _public(rev: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in rev.items() if not k.startswith("_")}

    def _advance(self, a: str, name: str) -> None:
        """A revision provisions over `revision_rounds` reads, then runs, or fails as its image says."""
        props = self.revisions[a][name]["properties"]
        if props["provisioningState"] != "Provisioning":
            return
        if self._reads.get(name, 0) > 0:
            self._reads[name] -= 1
            return
        failure = self.revisions[a][name]["_error"]
        if failure:
            props.update(provisioningState="Failed", runningState="Failed", healthState="Unhealthy",
                         provisioningError=failure)
        else:
            idle = (props["template"].get("scale") or {}).get("minReplicas", 0) == 0   # scale to zero: no replica yet
            props.update(provisioningState="Provisioned", runningState="ScaledToZero" if idle else "Running",
                         healthState="Healthy", replicas=0 if idle else 1)

    def _revision_action_post(self, body, a, r, action):
        rev = self.revisions.get(a, {}).get(r)
        if rev is None:
            return error(404, "ResourceNotFound", f"Revision '{r}' of container app '{a}' was not found.")
        if action == "deactivate" and rev["properties"]["trafficWeight"]:
            return error(400, "ContainerAppRevisionInUse",
                         f"Revision '{r}' receives {rev['properties']['trafficWeight']}% of traffic; it cannot be "
                         "deactivated.")
        rev["properties"]["active"] = action == "activate"
        if action == "deactivate":
            rev["properties"].update(replicas=0, runningState="Stopped")
        elif rev["properties"]["provisioningState"] == "Provisioned":
            rev["properties"]["runningState"] = "ScaledToZero"   # active again: a request wakes it
        return 200, None, {}

    def _auth_get(self, body, a, n):
        found = self.auth.get(a)
        if found is None:
            return error(404, "ResourceNotFound", f"AuthConfig '{n}' of container app '{a}' was not found.")
        return ok({"id": f"{self._rg_id()}/containerApps/{a}/authConfigs/{n}", "name": n,
                   "type": f"{PROVIDER}/containerApps/authConfigs", "properties": found})

    # -- the app's label URLs ----------------------------------------------------------------------------
    def _label_request(self, a: str, label: str, path: str, body: Any):
        app = self.apps.get(a)
        if app is None:
            return 404, {"error": f"no container app {a}"}, {}
        ingress = app["properties"]["configuration"].get("ingress") or {}
        rules = ingress.get("ipSecurityRestrictions") or []
        if rules and not any(r.get("action") == "Allow" and ipaddress.ip_address(self.client_ip) in
                             ipaddress.ip_network(r["ipAddressRange"], strict=False) for r in rules):
            return 403, {"error": "Forbidden: the caller's IP address is not allowed"}, {}
        auth = self.auth.get(a) or {}
        if (auth.get("platform") or {}).get("enabled") and auth.get("globalValidation", {}).get(
                "unauthenticatedClientAction") == "Return401" and self._caller != f"Bearer {self.token}":
            return 401, {"error": "Unauthorized: sign in"}, {}
        entry = next((t for t in ingress.get("traffic") or [] if t.get("label") == label), None)
        rev = self.revisions.get(a, {}).get(entry["revisionName"]) if entry else None
        if rev is None:
            return 404, {"error": f"no revision has the label {label}"}, {}
        self.smokes.append((label, rev["name"], body))
        props = rev["properties"]
        if props["active"] and props["runningState"] == "ScaledToZero":   # a request wakes it
            props.update(runningState="Running", replicas=1)
        if not props["active"] or props["runningState"] != "Running":
            return 503, {"error": f"revision {rev['name']} is {props['runningState']}"}, {}
        if self.image_of_revision(rev) in self.failing_smoke or label in self.failing_labels:
            return 500, {"error": "model run failed: input 'x' expected 4 values per row"}, {}
        if path != "/predict" or not isinstance(body, dict) or "inputs" not in body:
            return 400, {"error": "expected a JSON object with 'inputs'"}, {}
        return 200, {"outputs": [[0.2, 0.3, 0.5]]}, {}

    # -- Azure Monitor -------------------------------------------------------------------------------------
    def _ca_metrics_get(self, body, a):
        """Requests (Total) and ResponseTime (Average) of an app, seeded with add_metric(app, ...)."""
        if a not in self.apps:
            return self._app_get(None, a)
        saved = self.endpoints.get(a)
        self.endpoints[a] = self.apps[a]   # the online endpoint's metric code, on the app's series
        try:
            status, answer, headers = self._metrics_get(body, a, metrics=CA_METRICS)
        finally:
            if saved is None:
                self.endpoints.pop(a, None)
        return status, answer, headers
