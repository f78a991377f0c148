"""A small stateful fake of the Vertex AI REST API v1 (and of Artifact Registry's repositories), for
the real google-cloud-aiplatform / google-cloud-artifact-registry clients over plain HTTP.

It answers what those clients send (see ../shared/CLOUD-TESTING.md): models:upload, models get
(also `models/ID@1`) and list (label filters), endpoints create/get/list/PATCH(trafficSplit)/
delete, :deployModel (trafficSplit key "0" is the model being deployed), :undeployModel (refused
while the deployed model still has traffic the request does not take away), :predict (Vertex's
{"predictions": [...], "deployedModelId": ...}; the deployed model is chosen by trafficSplit with a
smooth weighted round robin, so tests are deterministic), and long-running operations polled at
GET /ui/{name} (and /v1/{name}). An operation takes effect when a poll finds it done (after
`polls` polls), as on Vertex, where a deployed model appears only once it is ready.

Tests drive failures explicitly:
  fail_deploy_images   a deployModel of a model with this image ends with an operation error
  failing_images       a deployed model with this image answers predictions with 500
  denied               permission names (e.g. "aiplatform.endpoints.list") answered with 403
Model deployment monitoring jobs: create (answered at once, as Vertex does), get, list (display_name
filter) and PATCH with an updateMask (a long-running operation); `monitoring_jobs` holds them and
`job_bodies` the create/patch bodies as received.
Cloud Monitoring's timeSeries.list (GET /v3/projects/P/timeSeries), alert policies and notification
channels are answered from `monitoring` (fakes/cloud_monitoring.py: tests seed series there).
Everything the server received is in `requests` as (method, path, query); `mutating()` filters out
reads and predictions. Anything it does not know answers 501, as Google's front end does.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers.fakes.cloud_monitoring import BadRequest, CloudMonitoring
from tests.helpers.fakes.faults import Faults, fail

V1 = "type.googleapis.com/google.cloud.aiplatform.v1."
AR = "type.googleapis.com/google.devtools.artifactregistry.v1."
STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS",
          500: "INTERNAL", 501: "UNIMPLEMENTED"}
LOC = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"

# what a Google API answers when it fails inside (fakes/faults.py injects it)
FAULT_BODY = b'{"error": {"code": 500, "message": "injected fault", "status": "INTERNAL"}}'


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status or STATUS.get(code, "UNKNOWN")


class FakeVertex:
    def __init__(self, polls: int = 1):
        self.polls = polls
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str, str]] = []
        self.faults = Faults()
        self.reset()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-vertex", daemon=True)

    # -- control ----------------------------------------------------------------------------------
    def start(self) -> FakeVertex:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.models: dict[str, dict[str, Any]] = {}
            self.endpoints: dict[str, dict[str, Any]] = {}
            self.repositories: dict[str, dict[str, Any]] = {}
            self.operations: dict[str, dict[str, Any]] = {}
            self.rotation: dict[str, dict[str, float]] = {}
            self.predictions: list[tuple[str, str, Any]] = []    # (endpoint name, deployed model id, body)
            self.deploy_splits: list[dict[str, int]] = []        # trafficSplit of every deployModel request
            self.fail_deploy_images: set[str] = set()
            self.failing_images: set[str] = set()
            self.denied: set[str] = set()
            self.monitoring_jobs: dict[str, dict[str, Any]] = {}
            self.job_bodies: list[tuple[str, dict[str, Any]]] = []   # (method, body) of job writes
            self.ids = itertools.count(1001)
            self.clock = datetime(2026, 11, 25, tzinfo=UTC)
            self.monitoring = CloudMonitoring()   # Cloud Monitoring's timeSeries.list, on the same address
            self.requests.clear()

    def mutating(self) -> list[tuple[str, str, str]]:
        """Requests that change state: every write except a prediction."""
        return [r for r in self.requests if r[0] != "GET" and not r[1].endswith((":predict", ":rawPredict"))]

    def endpoint(self, display_name: str) -> dict[str, Any] | None:
        with self.lock:
            return next((e for e in self.endpoints.values() if e["displayName"] == display_name), None)

    def image_of(self, model: str) -> str:
        return self.models[model.split("@", 1)[0]]["containerSpec"]["imageUri"]

    # -- plumbing ---------------------------------------------------------------------------------
    def _now(self) -> str:
        self.clock += timedelta(seconds=1)
        return self.clock.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(parsed.path)
                query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with fake.lock:
                    fake.requests.append((self.command, path, parsed.query))
                if kind := fake.faults.take(f"{self.command} {path}"):  # unlocked: a race runs another command
                    return fail(self, kind, FAULT_BODY)
                with fake.lock:
                    try:
                        body = json.loads(raw) if raw else {}
                        code, answer = 200, fake._route(self.command, path, query, body)
                    except ApiError as e:
                        code, answer = e.code, {"error": {"code": e.code, "message": e.message, "status": e.status}}
                    except (ValueError, KeyError, TypeError) as e:
                        code, answer = 400, {"error": {"code": 400, "message": f"bad request: {e!r}",
                                                       "status": "INVALID_ARGUMENT"}}
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

        return Handler

    def _route(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        try:  # Cloud Monitoring's alert policies and channels (fakes/cloud_monitoring.py), raw query as logged
            found = self.monitoring.resource(method, path, urllib.parse.parse_qs(self.requests[-1][2]), body)
        except BadRequest as e:
            raise ApiError(e.code, e.message, e.status) from None
        if found:
            return found[1]
        routes: list[tuple[str, str, str, Callable[..., dict[str, Any]]]] = [
            ("GET", rf"/(?:ui|v1)/(?P<name>{LOC}/(?:.+/)?operations/[^/]+)", "", self._get_operation),
            ("POST", rf"/v1/{LOC}/models:upload", "aiplatform.models.upload", self._upload_model),
            ("GET", rf"/v1/(?P<name>{LOC}/models/[^/:@]+)(?:@[^/:]+)?", "aiplatform.models.get", self._get_model),
            ("GET", rf"/v1/{LOC}/models", "aiplatform.models.list", self._list_models),
            ("POST", rf"/v1/{LOC}/endpoints", "aiplatform.endpoints.create", self._create_endpoint),
            ("GET", rf"/v1/{LOC}/endpoints", "aiplatform.endpoints.list", self._list_endpoints),
            ("GET", rf"/v1/(?P<name>{LOC}/endpoints/[^/:]+)", "aiplatform.endpoints.get", self._get_endpoint),
            ("PATCH", rf"/v1/(?P<name>{LOC}/endpoints/[^/:]+)", "aiplatform.endpoints.update", self._update_endpoint),
            ("DELETE", rf"/v1/(?P<name>{LOC}/endpoints/[^/:]+)", "aiplatform.endpoints.delete", self._delete_endpoint),
            ("POST", rf"/v1/(?P<name>{LOC}/endpoints/[^/:]+):deployModel", "aiplatform.endpoints.deploy", self._deploy),
            ("POST", rf"/v1/(?P<name>{LOC}/endpoints/[^/:]+):undeployModel", "aiplatform.endpoints.undeploy",
             self._undeploy),
            ("POST", rf"/v1/(?P<name>{LOC}/endpoints/[^/:]+):predict", "aiplatform.endpoints.predict", self._predict),
            ("GET", rf"/v1/(?P<name>{LOC}/repositories/[^/:]+)", "artifactregistry.repositories.get",
             self._get_repository),
            ("POST", rf"/v1/{LOC}/repositories", "artifactregistry.repositories.create", self._create_repository),
            ("POST", rf"/v1/{LOC}/modelDeploymentMonitoringJobs", "aiplatform.modelDeploymentMonitoringJobs.create",
             self._create_monitoring_job),
            ("GET", rf"/v1/{LOC}/modelDeploymentMonitoringJobs", "aiplatform.modelDeploymentMonitoringJobs.list",
             self._list_monitoring_jobs),
            ("GET", rf"/v1/(?P<name>{LOC}/modelDeploymentMonitoringJobs/[^/:]+)",
             "aiplatform.modelDeploymentMonitoringJobs.get", self._get_monitoring_job),
            ("PATCH", rf"/v1/(?P<name>{LOC}/modelDeploymentMonitoringJobs/[^/:]+)",
             "aiplatform.modelDeploymentMonitoringJobs.update", self._update_monitoring_job),
            ("GET", r"/v3/projects/(?P<project>[^/]+)/timeSeries", "monitoring.timeSeries.list", self._list_time_series),
        ]
        for verb, pattern, permission, handler in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                if permission in self.denied:
                    raise ApiError(403, f"Permission '{permission}' denied on resource (or it may not exist).")
                return handler(match.groupdict(), query, body)
        raise ApiError(501, f"the fake does not implement {method} {path}")

    def _operation(self, loc: dict[str, str], response: Callable[[], dict[str, Any]], *,
                   fail: str | None = None, parent: str | None = None,
                   metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        name = f"{parent or 'projects/{project}/locations/{location}'.format(**loc)}/operations/{next(self.ids)}"
        self.operations[name] = {"polls": self.polls, "response": response, "fail": fail,
                                 "op": {"name": name, "done": False,
                                        "metadata": metadata or {"@type": V1 + "GenericOperationMetadata",
                                                                 "createTime": self._now()}}}
        return self._advance(name, poll=False)

    def _advance(self, name: str, poll: bool = True) -> dict[str, Any]:
        state = self.operations[name]
        op = state["op"]
        if op["done"]:
            return op
        if poll:
            state["polls"] -= 1
        if state["polls"] < 0 or (not poll and state["polls"] == 0):
            op["done"] = True
            if state["fail"]:
                op["error"] = {"code": 9, "message": state["fail"]}
            else:
                op["response"] = state["response"]()
        return op

    def _get_operation(self, m, query, body):
        if m["name"] not in self.operations:
            raise ApiError(404, f"Operation {m['name']} not found.")
        return self._advance(m["name"])

    # -- models -----------------------------------------------------------------------------------
    def _upload_model(self, m, query, body):
        model = body["model"]
        if not model.get("displayName") or not model.get("containerSpec", {}).get("imageUri"):
            raise ApiError(400, "model.display_name and model.container_spec.image_uri are required")
        model_id = str(next(self.ids))
        name = "projects/{project}/locations/{location}/models/".format(**m) + model_id

        def done() -> dict[str, Any]:
            now = self._now()
            self.models[name] = {**model, "name": name, "versionId": "1", "versionAliases": ["default"],
                                 "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"],
                                 "createTime": now, "updateTime": now, "versionCreateTime": now}
            return {"@type": V1 + "UploadModelResponse", "model": name, "modelVersionId": "1"}

        return self._operation(m, done)

    def _get_model(self, m, query, body):
        if m["name"] not in self.models:
            raise ApiError(404, f"Model {m['name']} is not found.")
        return self.models[m["name"]]

    def _list_models(self, m, query, body):
        prefix = "projects/{project}/locations/{location}/".format(**m)
        found = [x for x in self.models.values() if x["name"].startswith(prefix) and _matches(x, query.get("filter"))]
        return {"models": found} if found else {}

    # -- endpoints --------------------------------------------------------------------------------
    def _create_endpoint(self, m, query, body):
        endpoint_id = query.get("endpointId") or str(next(self.ids))
        name = "projects/{project}/locations/{location}/endpoints/".format(**m) + endpoint_id
        if name in self.endpoints:
            raise ApiError(409, f"Endpoint {name} already exists.")

        def done() -> dict[str, Any]:
            now = self._now()
            self.endpoints[name] = {"name": name, "displayName": body.get("displayName", ""),
                                    "labels": body.get("labels", {}), "createTime": now, "updateTime": now,
                                    "etag": now}
            return {"@type": V1 + "Endpoint", **self.endpoints[name]}

        return self._operation(m, done)

    def _list_endpoints(self, m, query, body):
        prefix = "projects/{project}/locations/{location}/".format(**m)
        found = [e for e in self.endpoints.values() if e["name"].startswith(prefix) and _matches(e, query.get("filter"))]
        return {"endpoints": found} if found else {}

    def _get_endpoint(self, m, query, body):
        return self._existing(m["name"])

    def _existing(self, name: str) -> dict[str, Any]:
        if name not in self.endpoints:
            raise ApiError(404, f"Endpoint {name} not found.")
        return self.endpoints[name]

    def _check_split(self, endpoint: dict[str, Any], split: dict[str, Any], new: bool = False,
                     gone: str | None = None) -> dict[str, int]:
        ids = {d["id"] for d in endpoint.get("deployedModels", [])} - {gone} | ({"0"} if new else set())
        unknown = set(split) - ids
        if unknown:
            raise ApiError(400, f"Traffic split references deployed models not on the endpoint: {sorted(unknown)}")
        if any(not isinstance(v, int) or v < 0 for v in split.values()):
            raise ApiError(400, "Traffic split percentages must be non-negative integers.")
        if split and sum(split.values()) != 100:
            raise ApiError(400, f"Traffic split must sum to 100, not {sum(split.values())}.")
        return {k: int(v) for k, v in split.items()}

    def _update_endpoint(self, m, query, body):
        endpoint = self._existing(m["name"])
        mask = {re.sub(r"_([a-z])", lambda g: g.group(1).upper(), p) for p in query.get("updateMask", "").split(",") if p}
        if not mask <= {"trafficSplit", "labels", "displayName", "description"}:
            raise ApiError(400, f"Unsupported update mask: {sorted(mask)}")
        if "trafficSplit" in mask:
            split = self._check_split(endpoint, body.get("trafficSplit", {}))
            if endpoint.get("deployedModels") and not split:
                raise ApiError(400, "Traffic split must sum to 100 while models are deployed.")
            endpoint["trafficSplit"] = split
        for field in mask - {"trafficSplit"}:
            endpoint[field] = body.get(field)
        endpoint["updateTime"] = endpoint["etag"] = self._now()
        return endpoint

    def _delete_endpoint(self, m, query, body):
        endpoint = self._existing(m["name"])
        if endpoint.get("deployedModels"):
            raise ApiError(400, "Endpoint has deployed models; undeploy them first.", "FAILED_PRECONDITION")

        def done() -> dict[str, Any]:
            self.endpoints.pop(m["name"], None)
            return {"@type": "type.googleapis.com/google.protobuf.Empty"}

        return self._operation(m, done)

    def _deploy(self, m, query, body):
        endpoint = self._existing(m["name"])
        deployed = dict(body["deployedModel"])
        model = deployed.get("model", "").split("@", 1)[0]
        if model not in self.models:
            raise ApiError(404, f"Model {deployed.get('model')} not found.")
        resources = deployed.get("dedicatedResources", {})
        if not resources.get("machineSpec", {}).get("machineType"):
            raise ApiError(400, "Model requires DEDICATED_RESOURCES: dedicated_resources.machine_spec is required.")
        self.deploy_splits.append(body.get("trafficSplit", {}))
        split = self._check_split(endpoint, body.get("trafficSplit", {}), new=True)
        image = self.image_of(model)
        fail = (f"Model server never became ready: the container {image} did not answer its health route"
                if image in self.fail_deploy_images else None)

        def done() -> dict[str, Any]:
            dm_id = str(next(self.ids))
            dm = {**deployed, "id": dm_id, "createTime": self._now(), "modelVersionId": "1",
                  "dedicatedResources": {"minReplicaCount": 1, **resources}}
            endpoint.setdefault("deployedModels", []).append(dm)
            old = endpoint.get("trafficSplit", {})
            if split:
                endpoint["trafficSplit"] = {(dm_id if k == "0" else k): v for k, v in split.items()}
            else:
                endpoint["trafficSplit"] = {**old, dm_id: 0} if old else {dm_id: 100}
            endpoint["updateTime"] = endpoint["etag"] = self._now()
            return {"@type": V1 + "DeployModelResponse", "deployedModel": dm}

        return self._operation(m, done, fail=fail, parent=m["name"])

    def _undeploy(self, m, query, body):
        endpoint = self._existing(m["name"])
        dm_id = body.get("deployedModelId")
        if dm_id not in {d["id"] for d in endpoint.get("deployedModels", [])}:
            raise ApiError(404, f"Deployed model {dm_id} not found on {m['name']}.")
        split = self._check_split(endpoint, body.get("trafficSplit", {}), gone=dm_id)
        if endpoint.get("trafficSplit", {}).get(dm_id, 0) > 0 and not split and len(endpoint["deployedModels"]) > 1:
            raise ApiError(400, f"Deployed model {dm_id} still has traffic; move it first.", "FAILED_PRECONDITION")

        def done() -> dict[str, Any]:
            endpoint["deployedModels"] = [d for d in endpoint["deployedModels"] if d["id"] != dm_id]
            rest = {k: v for k, v in endpoint.get("trafficSplit", {}).items() if k != dm_id}
            endpoint["trafficSplit"] = (split or rest) if endpoint["deployedModels"] else {}
            endpoint["updateTime"] = endpoint["etag"] = self._now()
            return {"@type": V1 + "UndeployModelResponse"}

        return self._operation(m, done, parent=m["name"])

    def _predict(self, m, query, body):
        endpoint = self._existing(m["name"])
        split = {k: v for k, v in endpoint.get("trafficSplit", {}).items() if v > 0}
        if not split:
            raise ApiError(400, f"Endpoint {m['name']} doesn't have traffic_split.", "FAILED_PRECONDITION")
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise ApiError(400, '"instances" must be a non-empty list')
        # smooth weighted round robin (nginx's): deterministic, and true to the split over any window
        current = self.rotation.setdefault(m["name"], {})
        for k in list(current):
            if k not in split:
                del current[k]
        for k, weight in split.items():
            current[k] = current.get(k, 0) + weight
        chosen = max(current, key=lambda k: (current[k], k))
        current[chosen] -= sum(split.values())
        dm = next(d for d in endpoint["deployedModels"] if d["id"] == chosen)
        self.predictions.append((m["name"], chosen, body))
        if self.image_of(dm["model"]) in self.failing_images:
            raise ApiError(500, "Internal Server Error: the model server answered 500")
        return {"predictions": [[0.25, 0.25, 0.5] for _ in instances], "deployedModelId": chosen,
                "model": dm["model"].split("@", 1)[0], "modelDisplayName": self.models[dm["model"].split("@", 1)[0]]["displayName"],
                "modelVersionId": "1"}

    # -- Artifact Registry ------------------------------------------------------------------------
    def _get_repository(self, m, query, body):
        if m["name"] not in self.repositories:
            raise ApiError(404, f"Requested entity was not found: {m['name']}")
        return self.repositories[m["name"]]

    def _create_repository(self, m, query, body):
        name = "projects/{project}/locations/{location}/repositories/".format(**m) + query["repositoryId"]
        if name in self.repositories:
            raise ApiError(409, "the repository already exists")

        def done() -> dict[str, Any]:
            self.repositories[name] = {**body, "name": name, "createTime": self._now()}
            return {"@type": AR + "Repository", **self.repositories[name]}

        # Artifact Registry's own metadata type: a client with only that library cannot read Vertex's
        return self._operation(m, done, metadata={"@type": AR + "OperationMetadata"})

    # -- model deployment monitoring jobs ---------------------------------------------------------
    def _create_monitoring_job(self, m, query, body):
        self.job_bodies.append(("POST", body))
        self._existing(body.get("endpoint", ""))
        deployed = {d["id"] for d in self._existing(body["endpoint"]).get("deployedModels", [])}
        for objective in body.get("modelDeploymentMonitoringObjectiveConfigs", []):
            if objective.get("deployedModelId") not in deployed:
                raise ApiError(400, f"Deployed model {objective.get('deployedModelId')} is not on the endpoint.")
        if not body.get("modelDeploymentMonitoringScheduleConfig", {}).get("monitorInterval"):
            raise ApiError(400, "model_deployment_monitoring_schedule_config.monitor_interval is required")
        name = "projects/{project}/locations/{location}/modelDeploymentMonitoringJobs/".format(**m) + str(next(self.ids))
        now = self._now()
        self.monitoring_jobs[name] = {**body, "name": name, "state": "JOB_STATE_RUNNING", "scheduleState": "OFFLINE",
                                      "createTime": now, "updateTime": now}
        return self.monitoring_jobs[name]

    def _list_monitoring_jobs(self, m, query, body):
        prefix = "projects/{project}/locations/{location}/".format(**m)
        found = [j for j in self.monitoring_jobs.values() if j["name"].startswith(prefix)
                 and _matches(j, query.get("filter"))]
        return {"modelDeploymentMonitoringJobs": found} if found else {}

    def _get_monitoring_job(self, m, query, body):
        if m["name"] not in self.monitoring_jobs:
            raise ApiError(404, f"ModelDeploymentMonitoringJob {m['name']} not found.")
        return self.monitoring_jobs[m["name"]]

    def _update_monitoring_job(self, m, query, body):
        job = self._get_monitoring_job(m, query, body)
        self.job_bodies.append(("PATCH", body))
        mask = [re.sub(r"_([a-z])", lambda g: g.group(1).upper(), p) for p in query.get("updateMask", "").split(",") if p]
        if not mask:
            raise ApiError(400, "update_mask is required")

        def done() -> dict[str, Any]:
            for field in mask:
                job[field] = body.get(field)
            job["updateTime"] = self._now()
            return {"@type": V1 + "ModelDeploymentMonitoringJob", **job}

        return self._operation(m, done)

    def _list_time_series(self, m, query, body):
        """Cloud Monitoring (fakes/cloud_monitoring.py), with the raw query of this request (the one
        just logged), whose groupByFields repeat."""
        try:
            return self.monitoring.list(m["project"], urllib.parse.parse_qs(self.requests[-1][2]))
        except BadRequest as e:
            raise ApiError(e.code, e.message, e.status) from None


def _matches(resource: dict[str, Any], text: str | None) -> bool:
    """Vertex's list filter, as far as we use it: `key="value"` terms joined by AND
    (display_name, labels.KEY)."""
    for term in filter(None, re.split(r"\s+AND\s+", (text or "").strip())):
        key, _, value = term.partition("=")
        key, value = key.strip(), value.strip().strip('"')
        if key.startswith("labels."):
            found = resource.get("labels", {}).get(key[len("labels."):])
        elif key in ("display_name", "displayName"):
            found = resource.get("displayName")
        else:
            raise ApiError(400, f"Unsupported filter: {term}")
        if found != value:
            return False
    return True
