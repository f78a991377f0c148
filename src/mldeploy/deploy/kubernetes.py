"""Kubernetes (any cluster, through a kubeconfig context): a Deployment and Service per slot, and one
Gateway API HTTPRoute holding the weights.

    Deployment + Service + HPA + PodDisruptionBudget  <endpoint>-production | -canary | -canary-pr<N>
    HTTPRoute <endpoint>:
      one rule per canary slot matching the header x-mldeploy-slot: <slot> (each slot reachable alone)
      the default rule: backendRefs of the serving slots' Services with their weights

The cluster runs the image by digest. A deploy applies the slot's objects by server-side apply (field
manager mldeploy), waits for the Deployment's observedGeneration and all its replicas available (a
deadline, progress lines, a stuck rollout or an image pull failure named), reads the digest back from
the pods' imageID, and POSTs a smoke request to the slot's Service through the API server's service proxy;
only then is the HTTPRoute applied with the new weights (carrying the resourceVersion it was planned
from: another command's change is a 409, a Conflict), and read back. A slot that serves traffic now
is not changed in place before its new image has answered: that image runs first as <name>-next
(Deployment and Service, no traffic), and the slot's own rollout follows. Any failure re-applies the
previous objects and weights (or deletes what was new). Slots that no longer serve are deleted.

With deploy.kubernetes.traffic: replicas (a cluster with no Gateway API) there is no HTTPRoute: one Service
<endpoint> selects the pods of every serving slot (label mldeploy.dev/serves), so kube-proxy splits traffic
by ready replicas. Each slot gets a share of `replicas` pods (at least one; production the rest, no HPA),
so a share is rounded to what whole replicas give (coarse), and a slot is reachable alone only through its
own Service (no header routing). Traffic moves when a slot's pods become ready: a new image that would take
traffic answers first as <slot>-next; slots that no longer serve are deleted before the read-back.

A change of deploy.kubernetes.traffic on a live endpoint is a deploy that switches fronts, production serving
throughout: to replicas, each slot's HPA goes before its count is applied, and the HTTPRoute goes only once
the Service <endpoint> answers; to gateway, the counts are handed to a second field manager (dropping them
would reset each Deployment to 1 pod), and the Service goes only once the Gateway accepted the HTTPRoute.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mldeploy import __version__, github
from mldeploy.deploy import Conflict, Desired, Plan, canary_shares, dns_label, one_line, pick_canary
from mldeploy.deploy.base import (
    Model,
    Readiness,
    Slot,
    Status,
    Target,
    digest_of,
    model_env,
    model_from_env,
    plan_model,
    slot_models,
    verify_models,
)
from mldeploy.errors import CheckFailed, MldeployError, UsageError

if TYPE_CHECKING:
    from mldeploy.config import DeploySection
    from mldeploy.monitor.metrics import Collected

POLL_SECONDS = float(os.environ.get("MLDEPLOY_POLL_SECONDS", "2"))
PORT = 8080
MANAGER = "mldeploy"
HEADER = "x-mldeploy-slot"
GROUP = "mldeploy.dev"
STAGING = "-next"
SERVES = f"{GROUP}/serves"   # (traffic: replicas) on the pods the Service <endpoint> selects
ROUTE_API = "gateway.networking.k8s.io/v1"
# kind -> (apiVersion, collection path under the namespace); the order objects are applied in
KINDS = {"Service": ("v1", "/api/v1/namespaces/{ns}/services"),
         "Deployment": ("apps/v1", "/apis/apps/v1/namespaces/{ns}/deployments"),
         "HorizontalPodAutoscaler": ("autoscaling/v2", "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers"),
         "PodDisruptionBudget": ("policy/v1", "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets"),
         "HTTPRoute": (ROUTE_API, f"/apis/{ROUTE_API}/namespaces/{{ns}}/httproutes")}
HANDOVER = f"{MANAGER}-handover"   # the field manager that keeps a Deployment's replicas for its HPA
Rule = tuple[str, str, tuple[str, ...]]
# (API group, resource, verbs) a deploy needs in its namespace: doctor checks each and prints the Role
RULES: tuple[Rule, ...] = (
    ("apps", "deployments", ("get", "list", "create", "patch", "delete")),
    ("", "services", ("get", "create", "patch", "delete")),
    ("", "services/proxy", ("get", "create")),
    ("", "pods", ("list",)),
    ("autoscaling", "horizontalpodautoscalers", ("get", "create", "patch", "delete")),
    ("policy", "poddisruptionbudgets", ("get", "create", "patch", "delete")),
    ("gateway.networking.k8s.io", "httproutes", ("get", "create", "patch", "delete")))


def rules(by_replicas: bool, gateway_api: bool = True) -> tuple[Rule, ...]:
    """The rules of the traffic mode. traffic: replicas makes no HTTPRoute or HPA: it only reads and deletes
    those a switch from gateway leaves (the route only where the cluster has the Gateway API)."""
    if not by_replicas:
        return RULES
    cut = {"horizontalpodautoscalers": ("get", "delete"), "httproutes": ("get", "delete") if gateway_api else ()}
    return tuple((g, r, cut.get(r, verbs)) for g, r, verbs in RULES if cut.get(r, verbs))


def base_name(endpoint: str) -> str:
    """A DNS-1035 label short enough for <name>-canary-pr<N>-next (at most 63)."""
    return dns_label(endpoint, 36)


def replica_shares(counts: dict[str, int]) -> dict[str, int]:
    """Percent of traffic per slot when a Service spreads it over the slots' ready pods (production takes
    what rounding leaves)."""
    total = sum(counts.values())
    shares = {s: round(100 * n / total) if total else 0 for s, n in counts.items() if s != "production"}
    return {"production": 100 - sum(shares.values()), **shares} if "production" in counts else shares


def role_yaml(namespace: str, needed: tuple[Rule, ...] = RULES) -> str:
    """The minimal Role a deploy needs (bind it to the deploying identity with a RoleBinding)."""
    lines = ["apiVersion: rbac.authorization.k8s.io/v1", "kind: Role",
             f"metadata: {{name: mldeploy-deployer, namespace: {namespace}}}", "rules:"]
    for group, resource, verbs in needed:
        lines.append(f"- {{apiGroups: [\"{group}\"], resources: [{resource}], verbs: [{', '.join(verbs)}]}}")
    return "\n".join(lines)


class ApiError(Exception):
    """The API server's answer to a request that failed: its status code and its Status object's words."""

    def __init__(self, code: int, status: dict[str, Any], doing: str) -> None:
        self.code, self.status, self.doing = code, status, doing
        self.reason = str(status.get("reason") or "")
        self.details = status.get("details") or {}
        super().__init__(f"{doing}: HTTP {code} {status.get('message') or self.reason}".strip())

    @property
    def message(self) -> str:
        return str(self.status.get("message") or self.reason or f"HTTP {self.code}")


class KubernetesTarget(Target):
    name = "kubernetes"
    credentials = "the kubeconfig's credentials"
    credentials_hint = "renew them (an expired token?) and check deploy.kubernetes.context"

    def __init__(self, endpoint: str, cfg: DeploySection) -> None:
        super().__init__(base_name(endpoint), cfg)
        self.settings = cfg.kubernetes
        self.ns = self.settings.namespace
        self.route_name = self.endpoint   # the HTTPRoute, or (traffic: replicas) the Service over the slots
        self.by_replicas = self.settings.traffic == "replicas"
        self._api: Any = None
        self._gateway_api: bool | None = None

    # -- the API server ---------------------------------------------------------------------------
    @property
    def api(self) -> Any:
        """The kubeconfig's cluster and user (the client's own loader: tokens, client certificates, exec plugins)."""
        if self._api is None:
            from kubernetes import config
            from kubernetes.config.config_exception import ConfigException

            file = self.settings.kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
            file = file.split(os.pathsep)[0]
            if not Path(file).is_file():
                raise UsageError(f"no kubeconfig at {file}",
                                 hint="set deploy.kubernetes.kubeconfig or KUBECONFIG (for EKS, GKE and AKS the "
                                      "cloud's CLI writes one: aws eks update-kubeconfig, gcloud container clusters "
                                      "get-credentials, az aks get-credentials)")
            try:
                self._api = config.new_client_from_config(config_file=file, context=self.settings.context)
            except (ConfigException, ValueError, KeyError) as e:
                raise UsageError(f"the kubeconfig {file} is unusable: {str(e).splitlines()[0][:200]}",
                                 hint="check deploy.kubernetes.context and `kubectl config get-contexts`") from None
            self._api.user_agent = f"mldeploy/{__version__}"
            if self.settings.github_oidc_audience:
                self.credentials = f"the job's GitHub OIDC token (audience {self.settings.github_oidc_audience})"
                self.credentials_hint = ("check the cluster's AuthenticationConfiguration (issuer https://token.actions."
                                         "githubusercontent.com, this audience) and the RoleBinding of the token's "
                                         "subject (docs/targets/kubernetes.md)")
                github_bearer(self._api.configuration, self.settings.github_oidc_audience)
        return self._api

    def call(self, method: str, path: str, doing: str, body: Any = None, query: list[tuple[str, Any]] | None = None,
             content_type: str | None = None, raw: bool = False) -> Any:
        """One request through the kubernetes client's transport (TLS, auth and proxies from the kubeconfig):
        the decoded JSON (raw: (status, text)), an ApiError carrying the API server's Status otherwise."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        headers = {"Accept": "application/json" if not raw else "*/*"}
        if content_type or body is not None:
            headers["Content-Type"] = content_type or "application/json"
        try:
            # the urllib3 response itself (a non-2xx status raises ApiException). Client 37 changed call_api's
            # signature (param_serialize first): the extra pins 36, as 37 needs a python-dateutil botocore refuses
            response = self.api.call_api(path, method, query_params=query or [], header_params=headers, body=body,
                                         auth_settings=["BearerToken"], _preload_content=False,
                                         _return_http_data_only=True, _request_timeout=(10, 60))
            code, text = response.status, (response.data or b"").decode("utf-8", "replace")
        except ApiException as e:
            code, text = int(e.status or 0), str(e.body or "")
        except HTTPError as e:   # no answer (after urllib3's retries): the cluster is unreachable or dropped us
            reason = getattr(e, "reason", None) or e
            raise UsageError(f"no answer from the cluster at {self.api.configuration.host} ({doing}): "
                             f"{type(reason).__name__}: {str(reason).splitlines()[0][:160]}",
                             hint="check the kubeconfig's server and context, and that this machine can reach it "
                                  "(a private endpoint needs a runner inside its network)") from None
        if raw:
            return code, text
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {"message": " ".join(text.split())[:200]}
        if code >= 400:
            raise ApiError(code, data if isinstance(data, dict) else {}, doing)
        return data

    @contextlib.contextmanager
    def translated(self, doing: str) -> Iterator[None]:
        """The API server's refusals in one line: who may not do what, what is missing."""
        try:
            yield
        except ApiError as e:
            if e.code == 401:
                raise UsageError(f"the cluster refused {self.credentials} ({doing})", hint=self.credentials_hint) from None
            if e.code == 403:
                raise UsageError(f"the cluster forbids this: {e.message}",
                                 hint=f"bind the deploying identity to the Role `mldeploy doctor` prints "
                                      f"(namespace {self.ns})") from None
            if e.code == 404 and e.details.get("kind") == "namespaces":
                raise UsageError(f"the namespace {self.ns} does not exist",
                                 hint=f"create it (`kubectl create namespace {self.ns}`) or fix "
                                      "deploy.kubernetes.namespace") from None
            if e.code in (400, 409, 422):
                raise UsageError(f"the cluster refused to {doing}: {e.message}") from None
            raise UsageError(f"the cluster failed to {doing}: HTTP {e.code} {e.message}",
                             hint="run the same command again when the cluster answers") from None

    def _path(self, kind: str, name: str | None = None) -> str:
        path = KINDS[kind][1].format(ns=self.ns)
        return f"{path}/{name}" if name else path

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self.call("GET", self._path(kind, name), f"read {kind} {name}")
        except ApiError as e:
            if e.code == 404 and e.details.get("name") == name:
                return None
            if e.code == 404 and kind == "HTTPRoute":
                raise UsageError("the cluster has no Gateway API (the HTTPRoute kind is unknown to it)",
                                 hint="install the Gateway API CRDs and a controller (GKE Gateway, the AWS Load "
                                      "Balancer Controller, Application Gateway for Containers, Envoy Gateway...), "
                                      "or set deploy.kubernetes.traffic: replicas (coarse: shares by replica counts)"
                                 ) from None
            raise

    def apply_object(self, doc: dict[str, Any]) -> dict[str, Any]:
        kind, name = doc["kind"], doc["metadata"]["name"]
        return self.call("PATCH", self._path(kind, name), f"apply {kind} {name}", body=doc,
                         query=[("fieldManager", MANAGER), ("force", "true")],
                         content_type="application/apply-patch+yaml")

    def delete_object(self, kind: str, name: str) -> None:
        try:
            self.call("DELETE", self._path(kind, name), f"delete {kind} {name}")
        except ApiError as e:
            if e.code != 404:
                raise

    # -- what serves now --------------------------------------------------------------------------
    def object_name(self, slot: str) -> str:
        return f"{self.endpoint}-{slot}"

    def gateway_api(self) -> bool:
        """Whether the cluster serves the HTTPRoute kind (discovery: any authenticated user may read it)."""
        if self._gateway_api is None:
            try:
                found = self.call("GET", f"/apis/{ROUTE_API}", "read the Gateway API's kinds")
                self._gateway_api = any(r.get("name") == "httproutes" for r in found.get("resources", []))
            except ApiError as e:
                if e.code != 404:
                    raise
                self._gateway_api = False
        return self._gateway_api

    def read(self) -> dict[str, Any] | None:
        """The front's slots (the HTTPRoute's default rule's weights, a header rule's slot taking 0% when it is
        not weighted; traffic: replicas, the ready pods the Service <endpoint> selects) and each slot's
        Deployment: image, digest, health. None before the first deploy. The other mode's front ("other": a
        switch of deploy.kubernetes.traffic not finished) tells what serves while this mode's is not there."""
        with self.translated(f"read {self.endpoint}"):
            route = self.get("Service" if self.by_replicas else "HTTPRoute", self.route_name)
            if self.by_replicas:   # one a switch from gateway leaves (only a cluster with the Gateway API has one)
                other = self.get("HTTPRoute", self.route_name) if self.gateway_api() else None
            else:                  # the Service over the slots' pods, if a switch from replicas left it
                other = self.get("Service", self.route_name)
                other = other if other and SERVES in (other.get("spec", {}).get("selector") or {}) else None
            found = self.call("GET", self._path("Deployment"), "list the Deployments",
                              query=[("labelSelector", f"{GROUP}/endpoint={self.endpoint}")])
        deployments = {d["metadata"]["labels"].get(f"{GROUP}/slot", ""): d for d in found.get("items", [])}
        front = route if route is not None else other
        by_replicas = self.by_replicas == (route is not None)   # the mode of what serves
        read = {"route": route, "other": other, "mode": "replicas" if by_replicas else "gateway",
                "deployments": deployments}
        if front is None:
            return None if not deployments else read | {"slots": {}, "mode": self.settings.traffic}
        slots: dict[str, dict[str, Any]] = {}
        if by_replicas:   # the Service's share of each slot: its ready pods among all it selects
            ready = {s: int(d.get("status", {}).get("readyReplicas") or 0) for s, d in deployments.items()
                     if d["spec"]["template"]["metadata"].get("labels", {}).get(SERVES) == "true"}
            shares = replica_shares(ready)
            slots = {s: {"traffic": shares.get(s, 0), "pods": ready.get(s, 0)} for s in deployments
                     if not s.endswith(STAGING)}
        prefix = f"{self.endpoint}-"
        for rule in [] if by_replicas else front.get("spec", {}).get("rules", []):
            headers = [h for m in rule.get("matches", []) for h in m.get("headers", [])]
            for ref in rule.get("backendRefs", []):
                slot = ref["name"].removeprefix(prefix)
                entry = slots.setdefault(slot, {"traffic": 0})
                if not headers:
                    entry["traffic"] += int(ref.get("weight", 1))
        for slot, entry in slots.items():
            entry |= self._facts(deployments.get(slot))
        return read | {"slots": {s: slots[s] for s in sorted(slots, key=lambda s: (s != "production", s))}}

    @staticmethod
    def _facts(dep: dict[str, Any] | None) -> dict[str, Any]:
        if dep is None:
            return {"image": None, "model": None, "healthy": False, "state": "missing", "ready": "0/0",
                    "readiness": None}
        spec, status = dep.get("spec", {}), dep.get("status", {})
        want = int(spec.get("replicas", 1))
        available = int(status.get("availableReplicas") or 0)
        updated = int(status.get("updatedReplicas") or 0)
        current = int(status.get("observedGeneration") or 0) >= int(dep["metadata"].get("generation") or 0)
        containers = spec.get("template", {}).get("spec", {}).get("containers", [])
        healthy = current and available >= want and updated >= want
        # as `kubectl rollout status` judges it: the controller saw the spec, every replica is new and available,
        # no old one is left; unless the controller gave up (progressDeadlineSeconds)
        stuck = next((c for c in status.get("conditions", []) if c.get("type") == "Progressing"
                      and c.get("status") == "False"), None)
        rolling = not current or updated < want or int(status.get("replicas") or 0) > updated or available < updated
        rollout = f"stopped: {stuck.get('reason')}" if stuck else "in progress" if rolling else ""
        env = {e["name"]: e["value"] for e in containers[0].get("env", []) if "value" in e} if containers else {}
        return {"image": containers[0]["image"] if containers else None, "model": model_from_env(env),
                "healthy": healthy,
                "state": "available" if healthy else "progressing" if not current else "unavailable",
                "ready": f"{available}/{want}", "annotations": dep["metadata"].get("annotations", {}),
                "readiness": Readiness(int(status.get("readyReplicas") or 0), want, rollout)}

    def _status(self, current: dict[str, Any] | None) -> Status:
        if current is None:
            return Status(self.endpoint)
        slots = current["slots"]
        detail: dict[str, Any] = {"service": f"{self.ns}/{self.route_name}", "traffic": "by ready replicas (coarse): "
                                  + ", ".join(f"{s} {e['pods']} of {sum(x['pods'] for x in slots.values())}"
                                              for s, e in slots.items())} if current["mode"] == "replicas" \
            else {"route": f"{self.ns}/{self.route_name}", "gateway": self.settings.gateway}
        if current["other"] is not None:   # both fronts, or only the other mode's: a switch not finished
            detail["traffic"] = (f"{detail['traffic']}; " if "traffic" in detail else "by the HTTPRoute's weights; ") + \
                f"switching to traffic: {self.settings.traffic} (the next deploy finishes it)"
        return Status(self.endpoint, None, {
            slot: Slot(e["image"], e["traffic"], e["healthy"], {"deployment": f"{self.ns}/{self.object_name(slot)}"},
                       e["readiness"], model=e["model"])
            for slot, e in slots.items()}, detail)

    def canary(self, current: dict[str, Any] | None, pr: int | None, verb: str) -> str:
        if current is None:
            raise UsageError(f"{self.endpoint} is not deployed in the namespace {self.ns}",
                             hint="deploy it first with `mldeploy deploy`")
        return pick_canary(self.endpoint, current["slots"], pr, verb)

    # -- the manifests ----------------------------------------------------------------------------
    def _spec(self) -> str:
        """A short hash of what a slot runs besides its image: other settings are a new rollout."""
        return hashlib.sha256(json.dumps(self.settings.model_dump(mode="json"), sort_keys=True)
                              .encode()).hexdigest()[:8]

    def _labels(self, slot: str) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.endpoint, "app.kubernetes.io/managed-by": MANAGER,
                f"{GROUP}/endpoint": self.endpoint, f"{GROUP}/slot": slot}

    def _pod_labels(self) -> dict[str, str]:
        """Labels the pods need beyond the kit's own (a cluster's identity webhook acts on them)."""
        return {}

    def manifests(self, slot: str, image: str, previous: str | None, staging: bool = False,
                  replicas: int | None = None, serves: bool = False, model: Model | None = None) -> list[dict[str, Any]]:
        """The slot's Service, Deployment, HPA and PodDisruptionBudget (staging: the first two only; traffic:
        replicas: no HPA, `replicas` pods, labelled for the Service <endpoint> if the slot `serves`)."""
        s = self.settings
        name = self.object_name(slot)
        labels = self._labels(slot)
        selector = {f"{GROUP}/endpoint": self.endpoint, f"{GROUP}/slot": slot}
        notes = {f"{GROUP}/digest": f"sha256:{digest_of(image)}", f"{GROUP}/spec": self._spec(),
                 f"{GROUP}/previous-digest": f"sha256:{digest_of(previous)}" if previous else ""}
        meta = {"name": name, "namespace": self.ns, "labels": labels, "annotations": notes}
        text = s.cpu if isinstance(s.cpu, str) else f"{s.cpu:g}"   # a quantity: 2, 0.5, 500m
        cpu = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        limits: dict[str, Any] = {"cpu": text, "memory": s.memory}
        if s.gpus:
            limits[s.gpu_resource] = str(s.gpus)
        # a model in storage: downloaded into the /tmp emptyDir (the root is read-only) with the pod's identity
        env = {"MLDEPLOY_WORKERS": str(max(1, math.ceil(cpu))), **s.environment, **model_env(model)}
        probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5}
        container = {
            "name": "model", "image": image, "ports": [{"name": "http", "containerPort": PORT}],
            "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
            "resources": {"requests": {"cpu": text, "memory": s.memory}, "limits": limits},
            "readinessProbe": probe,
            "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10},
            "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 2,
                             "failureThreshold": 60},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}
        pod: dict[str, Any] = {
            "containers": [container], "volumes": [{"name": "tmp", "emptyDir": {}}],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "automountServiceAccountToken": False}
        if s.node_selector:
            pod["nodeSelector"] = dict(s.node_selector)
        if s.image_pull_secrets:
            pod["imagePullSecrets"] = [{"name": n} for n in s.image_pull_secrets]
        if s.service_account:
            pod["serviceAccountName"] = s.service_account
        deployment: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "selector": {"matchLabels": selector}, "progressDeadlineSeconds": s.wait_seconds,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": {**labels, **self._pod_labels(), **({SERVES: "true"} if serves else {})},
                                      "annotations": notes}, "spec": pod}}}
        if staging or self.by_replicas:
            deployment["spec"]["replicas"] = 1 if staging else replicas   # (else the HPA's, never applied)
        service = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "type": "ClusterIP", "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}
        if staging:
            return [service, deployment]
        pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta, "spec": {
            "maxUnavailable": 1, "selector": {"matchLabels": selector}}}
        if self.by_replicas:   # an HPA would change the shares
            return [service, deployment, pdb]
        hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": s.replicas, "maxReplicas": s.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": s.cpu_target}}}]}}
        return [service, deployment, hpa, pdb]

    def front(self, after: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """(traffic: replicas) The Service <endpoint> over every serving slot's pods."""
        meta = {"name": self.route_name, "namespace": self.ns,
                "labels": {"app.kubernetes.io/name": self.endpoint, "app.kubernetes.io/managed-by": MANAGER,
                           f"{GROUP}/endpoint": self.endpoint},
                "annotations": {f"{GROUP}/replicas": ",".join(f"{s}={e['replicas']}" for s, e in after.items()
                                                             if e["traffic"])}}
        return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
            "type": "ClusterIP", "selector": {f"{GROUP}/endpoint": self.endpoint, SERVES: "true"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}

    def route(self, after: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The HTTPRoute: a header rule per canary slot, then the weighted default rule."""
        gateway = self.settings.gateway or ""
        parent: dict[str, Any] = {"name": gateway.rsplit("/", 1)[-1]}
        if "/" in gateway:
            parent["namespace"] = gateway.split("/", 1)[0]

        def ref(slot: str, weight: int) -> dict[str, Any]:
            return {"name": self.object_name(slot), "port": 80, "weight": weight}

        rules: list[dict[str, Any]] = [
            {"matches": [{"headers": [{"type": "Exact", "name": HEADER, "value": slot}]}], "backendRefs": [ref(slot, 1)]}
            for slot in after if slot != "production"]
        rules.append({"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                      "backendRefs": [ref(slot, e["traffic"]) for slot, e in after.items() if e["traffic"]]})
        meta: dict[str, Any] = {"name": self.route_name, "namespace": self.ns,
                                "labels": {"app.kubernetes.io/name": self.endpoint,
                                           "app.kubernetes.io/managed-by": MANAGER, f"{GROUP}/endpoint": self.endpoint},
                                "annotations": {f"{GROUP}/weights": ",".join(f"{s}={e['traffic']}"
                                                                             for s, e in after.items())}}
        spec: dict[str, Any] = {"parentRefs": [parent], "rules": rules}
        if self.settings.hostnames:
            spec["hostnames"] = list(self.settings.hostnames)
        return {"apiVersion": ROUTE_API, "kind": "HTTPRoute", "metadata": meta, "spec": spec}

    # -- the interface ----------------------------------------------------------------------------
    def plan(self, desired: Desired) -> Plan:
        desired.require_digest()
        current = self.read()
        slots = current["slots"] if current else {}
        if "production" not in slots or desired.slot == "production":
            after = {"production": {"image": desired.image, "traffic": 100, "model": desired.model}}
        else:
            shares = canary_shares({s: e["traffic"] for s, e in slots.items()}, desired.slot, desired.traffic)
            after = {s: {"image": slots[s]["image"], "traffic": shares[s], "model": slots[s]["model"]}
                     for s in shares if s != desired.slot}
            after[desired.slot] = {"image": desired.image, "traffic": desired.traffic, "model": desired.model}
        return self._plan(desired, current, after)

    def layout(self, desired: Desired, current: Any, images: dict[str, str], share: dict[str, int]) -> Plan:
        models = slot_models(desired, {s: e["model"] for s, e in current["slots"].items()}, images)
        return self._plan(desired, current, {s: {"image": images[s], "traffic": share[s], "model": models[s]}
                                             for s in images})

    def _by_replicas(self, after: dict[str, dict[str, Any]]) -> str:
        """(traffic: replicas) Whole replicas of `replicas` per slot for the shares asked (at least one each,
        production the rest); each share becomes what those give. What was asked and given, for the plan."""
        total = self.settings.replicas
        asked = {s: e["traffic"] for s, e in after.items()}
        counts = {s: max(1, round(p * total / 100)) for s, p in asked.items() if s != "production"}
        counts["production"] = max(1, total - sum(counts.values()))
        serving = {s: counts[s] for s in after if asked[s]}
        shares = replica_shares(serving)
        for s, e in after.items():
            e["replicas"], e["traffic"] = counts[s], shares.get(s, 0)
        n = sum(serving.values())
        return "traffic by replica counts, coarse: " + ", ".join(
            f"{s} {asked[s]}% asked, {counts[s]} of {n} replicas = {shares[s]}%" for s in serving)

    def _plan(self, d: Desired, current: dict[str, Any] | None, after: dict[str, dict[str, Any]]) -> Plan:
        note = ""
        if self.by_replicas:
            note = self._by_replicas(after)
        elif not self.settings.gateway:
            raise UsageError("deploy.kubernetes.gateway is not set: the HTTPRoute needs a Gateway to attach to",
                             hint="name it as NAME or NAMESPACE/NAME, or set deploy.kubernetes.traffic: replicas "
                                  "(coarse: shares by replica counts)")
        slots = current["slots"] if current else {}
        deployments = current["deployments"] if current else {}
        front = self.by_replicas and bool(current and current["route"])   # pods of a serving slot take traffic
        other = current["other"] if current else None   # the other mode's front: this deploy switches the mode
        was_replicas = bool(current and current["mode"] == "replicas")
        plan = Plan(self.name, d, traffic_before={s: e["traffic"] for s, e in slots.items()},
                    traffic_after={s: e["traffic"] for s, e in after.items()}, note=note)
        spec = self._spec()
        rollouts: dict[str, dict[str, Any]] = {}   # slot -> how it is rolled out
        for slot, e in after.items():
            dep = deployments.get(slot)
            facts = self._facts(dep)
            name = f"Deployment {self.ns}/{self.object_name(slot)}"
            if dep is None or (facts["image"], facts["model"]) != (e["image"], e["model"]):
                plan.add("create" if dep is None else "update", name, "image", facts["image"], e["image"])
                plan_model(plan, name, facts["model"], e["model"])
            elif facts["annotations"].get(f"{GROUP}/spec") != spec:   # deploy.kubernetes changed
                plan.add("update", name, "settings", facts["annotations"].get(f"{GROUP}/spec") or "unknown", spec)
            elif self.by_replicas and self._count(dep) != self._count(None, e):
                plan.add("update", name, "replicas", self._count(dep), self._count(None, e))
            elif slot not in slots or not slots[slot]["healthy"]:  # an interrupted run's, or one that failed since
                plan.add("update", name, "rollout", "not serving" if slot not in slots else facts["state"], "checked")
            else:
                continue
            if (facts["image"], facts["model"]) == (e["image"], e["model"]):   # checked again: what it ran before stays recorded
                previous = facts["annotations"].get(f"{GROUP}/previous-digest") or None
            else:   # what the slot ran before (its rollback), or production's for a new slot
                previous = facts["image"] or (slots.get("production") or {}).get("image")
            serving = {(x["image"], x["model"]) for s, x in slots.items() if x["traffic"] and x["healthy"] and s != slot}
            # a slot that serves and would run an image nothing has answered with yet: that image answers first
            serves = bool(slots.get(slot, {}).get("traffic")) or (front and e["traffic"] > 0)
            staged = serves and (facts["image"], facts["model"]) != (e["image"], e["model"]) \
                and (e["image"], e["model"]) not in serving
            rollouts[slot] = {"image": e["image"], "model": e["model"], "previous": previous, "staged": staged, "serves": serves,
                              "replicas": e.get("replicas"), "label": e["traffic"] > 0,
                              # (a switch from replicas) the count this run stops applying, kept for the HPA
                              "handover": dep["spec"].get("replicas") if dep and was_replicas
                              and not self.by_replicas else None}
        retire = sorted(s for s in deployments if s not in after)
        for slot in retire:
            plan.add("delete", f"Deployment {self.ns}/{self.object_name(slot)}", old=self._facts(deployments[slot])["image"])
        before = {s: e["traffic"] for s, e in slots.items()}
        weights = {s: e["traffic"] for s, e in after.items()}
        if before != weights or (current and current["route"] is None):
            plan.add("create" if not current or current["route"] is None else "update",
                     f"{'Service' if self.by_replicas else 'HTTPRoute'} {self.ns}/{self.route_name}", "weights",
                     ", ".join(f"{s} {p}%" for s, p in before.items()) or None,
                     ", ".join(f"{s} {p}%" for s, p in weights.items()))
        documents = [doc for slot, r in rollouts.items() for doc in self._manifests(slot, r)]
        documents.append(self.front(after) if self.by_replicas else self.route(after))
        retired: dict[str, Any] = {}   # (traffic: replicas) deleted before the read-back: restored on failure
        with self.translated(f"read the objects of {self.endpoint}"):
            for slot, r in rollouts.items():   # as they are: each is changed only if it still is (or is still absent)
                r["objects"] = self._objects(slot, deployments)
            for slot in retire if self.by_replicas else ():
                retired[slot] = self._objects(slot, deployments)
        if self.by_replicas:   # an HPA (a switch from gateway's) would change the counts: it goes before them
            for slot, r in rollouts.items():
                if r["objects"]["HorizontalPodAutoscaler"] is not None:
                    plan.add("delete", f"HorizontalPodAutoscaler {self.ns}/{self.object_name(slot)}",
                             "(traffic: replicas sets the counts)")
        if other is not None:
            plan.add("delete", f"{other['kind']} {self.ns}/{self.route_name}",
                     f"(switch to traffic: {self.settings.traffic}, once the "
                     f"{'Service' if self.by_replicas else 'HTTPRoute'} {self.route_name} serves)")
        plan.state = {"current": current, "after": after, "rollouts": rollouts, "retire": retire,
                      "retired": retired, "documents": documents}
        return plan

    def _objects(self, slot: str, deployments: dict[str, Any]) -> dict[str, Any]:
        return {kind: deployments.get(slot) if kind == "Deployment" else self.get(kind, self.object_name(slot))
                for kind in KINDS if kind != "HTTPRoute"}

    def _manifests(self, slot: str, r: dict[str, Any]) -> list[dict[str, Any]]:
        return self.manifests(slot, r["image"], r["previous"], replicas=r["replicas"], serves=r["label"],
                              model=r["model"])

    @staticmethod
    def _count(dep: dict[str, Any] | None, e: dict[str, Any] | None = None) -> str:
        """(traffic: replicas) A slot's replicas and whether the Service <endpoint> selects them."""
        if dep is not None:
            labels = dep["spec"]["template"]["metadata"].get("labels", {})
            n, serves = dep["spec"].get("replicas"), labels.get(SERVES) == "true"
        else:
            n, serves = (e or {}).get("replicas"), bool((e or {}).get("traffic"))
        return f"{n}" if serves else f"{n} (no traffic)"

    def write_manifests(self, plan: Plan, folder: str) -> list[Path]:
        """`deploy --manifests DIR`: the objects this plan applies, one YAML file each (for review, or for
        `kubectl apply --server-side -f DIR` by whoever deploys by hand)."""
        from ruamel.yaml import YAML

        dumper = YAML(typ="safe", pure=True)
        dumper.default_flow_style = False
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for doc in plan.state["documents"]:
            path = out / f"{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
            with path.open("w", encoding="utf-8") as f:
                dumper.dump(doc, f)
            written.append(path)
        return written

    def apply(self, plan: Plan) -> Status:
        if plan.empty:
            return self.changed(False)
        s = plan.state
        current, after = s["current"], s["after"]
        other = current["other"] if current else None   # the other mode's front, which this deploy removes
        done: dict[str, Any] = {"slots": [], "staged": [], "route": False, "retired": [], "other": False}   # to undo
        checked = False   # the guard ran just before traffic first moved
        with self.changing(current, {e["image"] for e in after.values()}, lambda: self._restore(s, done)) as guard, \
                self.translated(f"deploy {self.endpoint}"):
            for slot, r in s["rollouts"].items():
                if r["staged"]:  # the slot serves: its new image answers first as <slot>-next
                    stage = f"{slot}{STAGING}"
                    done["staged"].append(stage)
                    self._roll_out(stage, self.manifests(stage, r["image"], r["previous"], staging=True,
                                                                 model=r["model"]), r["image"])
                    self._smoke(stage, plan.desired.smoke)
                if r["serves"] and not checked:
                    guard.check()  # the slot serves: its own rollout moves its traffic
                    checked = True
                done["slots"].append(slot)
                self._roll_out(slot, self._manifests(slot, r), r["image"], r["objects"], r["handover"])
                if not r["staged"]:
                    self._smoke(slot, plan.desired.smoke)
            if not checked:
                guard.check()  # just before traffic moves: a rollout takes minutes
            weights = ", ".join(f"{k} {e['traffic']}%" for k, e in after.items())
            done["route"] = True
            if self.by_replicas:
                if other is None:   # (while an HTTPRoute still sends them traffic, they go with it)
                    self._retire(s, done)
                print(f"  Applying Service {self.route_name} ({weights}, by replica counts)", flush=True)
                self._put(self.front(after), current["route"] if current else None)
                if other is not None:   # a switch from gateway: the route goes once the Service answers
                    self._await_front()
                    done["other"] = True
                    print(f"  Deleting HTTPRoute {self.route_name} (traffic: replicas now)", flush=True)
                    self.delete_object("HTTPRoute", self.route_name)
                    self._retire(s, done)
            else:
                print(f"  Applying HTTPRoute {self.route_name} ({weights})", flush=True)
                self._put(self.route(after), current["route"] if current else None)
            self._verify(after)
            if other is not None and not self.by_replicas:   # a switch from replicas: the route serves, read back
                self._await_route()
                done["other"] = True
                print(f"  Deleting Service {self.route_name} (traffic: gateway now)", flush=True)
                self.delete_object("Service", self.route_name)
        for slot in ([] if self.by_replicas else s["retire"]) + done["staged"]:
            try:
                with self.translated(f"delete {self.object_name(slot)}"):
                    self._delete_slot(slot)
            except Exception as e:  # what serves was verified: a leftover takes no traffic, and the next deploy deletes it
                github.warning(f"{one_line(e)} ({self.object_name(slot)} takes no traffic; the next deploy deletes it)")
        return self.changed(True)

    # -- applying ---------------------------------------------------------------------------------
    def _roll_out(self, slot: str, docs: list[dict[str, Any]], image: str,
                  planned: dict[str, dict[str, Any] | None] | None = None, handover: int | None = None) -> None:
        """Apply the slot's objects (planned: each as the plan read it, changed only if it still is so), then
        wait for its rollout."""
        name = self.object_name(slot)
        print(f"  Applying {', '.join(d['kind'] for d in docs)} {name} ({image})", flush=True)
        if planned and self.by_replicas and planned.get("HorizontalPodAutoscaler") is not None:
            self.delete_object("HorizontalPodAutoscaler", name)   # a switch from gateway's: it would change the count
        if planned and handover is not None:
            planned = {**planned, "Deployment": self._hand_over(name, handover, planned["Deployment"])}
        for doc in docs:
            if planned is None:
                self.apply_object(doc)
            else:
                self._put(doc, planned.get(doc["kind"]))
        self._await(name, image)

    def _put(self, doc: dict[str, Any], seen: dict[str, Any] | None) -> None:
        """Compare-and-set against what the plan read: an object that was absent is created (409 if another
        command made it meanwhile), one that was there is applied with its resourceVersion (409 if it changed
        since). A 409 is a Conflict: another command is deploying this endpoint."""
        kind, name = doc["kind"], doc["metadata"]["name"]
        try:
            if seen is None:
                self.call("POST", self._path(kind), f"create {kind} {name}", body=doc,
                          query=[("fieldManager", MANAGER)])
            else:
                self.apply_object({**doc, "metadata": {**doc["metadata"],
                                                       "resourceVersion": seen["metadata"]["resourceVersion"]}})
        except ApiError as e:
            if e.code != 409:
                raise
            raise Conflict(f"another command changed the {kind} {name} after this one read it ({e.message})",
                           hint="run it again: it plans from what is there then") from None

    def _await(self, name: str, image: str) -> None:
        """observedGeneration caught up and every replica updated and available, by the deadline; then the
        pods' imageID must be the planned digest."""
        deadline = time.monotonic() + self.settings.wait_seconds
        started = time.monotonic()
        while True:
            dep = self.get("Deployment", name)
            if dep is None:
                raise CheckFailed(f"the Deployment {self.ns}/{name} is gone")
            facts, status = self._facts(dep), dep.get("status", {})
            stuck = next((c for c in status.get("conditions", []) if c.get("type") == "Progressing"
                          and c.get("status") == "False"), None)
            pods = self._pods(name)
            for pod in pods:
                for cs in pod.get("status", {}).get("containerStatuses", []):
                    waiting = (cs.get("state") or {}).get("waiting") or {}
                    if waiting.get("reason") in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
                        secrets = ", ".join(self.settings.image_pull_secrets) or "none (the nodes' own access)"
                        raise CheckFailed(f"the pods of {name} cannot pull {cs.get('image')} ({waiting['reason']})",
                                          hint=f"check the image exists and the pull secrets ({secrets}) or the "
                                               "nodes' registry access allow it")
            if facts["healthy"]:
                break
            if stuck:
                raise CheckFailed(f"the rollout of {self.ns}/{name} stopped: {stuck.get('reason')} "
                                  f"({stuck.get('message', '')})",
                                  hint=f"`kubectl -n {self.ns} describe deployment {name}` shows why")
            if time.monotonic() >= deadline:
                raise CheckFailed(f"the Deployment {self.ns}/{name} had {facts['ready']} replicas available after "
                                  f"{self.settings.wait_seconds} s", hint="raise deploy.kubernetes.wait_seconds, or "
                                                                          f"`kubectl -n {self.ns} describe pods`")
            if time.monotonic() - started >= 10:
                print(f"  {name}: {facts['ready']} available ({time.monotonic() - started:.0f} s)", flush=True)
            time.sleep(POLL_SECONDS)
        want = digest_of(image)
        running = [pod for pod in self._pods(name) if pod.get("status", {}).get("phase") == "Running"]
        ids = [cs.get("imageID", "") for pod in running for cs in pod["status"].get("containerStatuses", [])]
        if not ids or any(digest_of(i) != want for i in ids):
            raise CheckFailed(f"the pods of {name} run {sorted(set(ids)) or 'nothing'}, not the planned {image}")

    def _hand_over(self, name: str, count: int, seen: dict[str, Any] | None) -> dict[str, Any]:
        """(a switch from replicas) Server-side apply removes a field its only manager stops applying: without
        this, the first apply of the Deployment with no replicas (the HPA's) would reset it to 1 pod. Another
        field manager applies the count first and keeps it (Kubernetes' documented transfer of ownership),
        compare-and-set against what the plan read."""
        meta = {"name": name, "namespace": self.ns, **({"resourceVersion": seen["metadata"]["resourceVersion"]}
                                                        if seen else {})}
        try:
            return self.call("PATCH", self._path("Deployment", name), f"hand over the replicas of {name}",
                             body={"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                                   "spec": {"replicas": count}}, query=[("fieldManager", HANDOVER), ("force", "true")],
                             content_type="application/apply-patch+yaml")
        except ApiError as e:
            if e.code != 409:
                raise
            raise Conflict(f"another command changed the Deployment {name} after this one read it ({e.message})",
                           hint="run it again: it plans from what is there then") from None

    def _await_front(self) -> None:
        """(a switch from gateway) The Service <endpoint> has a ready pod that answers (its health, through the
        service proxy), by the deadline: only then may the HTTPRoute go."""
        deadline = time.monotonic() + self.settings.wait_seconds
        while True:
            code, _ = self.call("GET", f"/api/v1/namespaces/{self.ns}/services/{self.route_name}:http/proxy"
                                   "/v2/health/ready", f"call {self.route_name}", raw=True)
            if code == 200:
                return
            if time.monotonic() >= deadline:
                raise CheckFailed(f"the Service {self.ns}/{self.route_name} answered {code} after "
                                  f"{self.settings.wait_seconds} s, not 200 from a ready pod: the HTTPRoute stays",
                                  hint=f"`kubectl -n {self.ns} get endpointslices -l kubernetes.io/service-name="
                                       f"{self.route_name}` shows what it selects")
            time.sleep(POLL_SECONDS)

    def _await_route(self) -> None:
        """(a switch from replicas) The Gateway's controller accepted the HTTPRoute and resolved its backends
        (the route's status.parents), by the deadline: only then may the Service <endpoint> go."""
        deadline = time.monotonic() + self.settings.wait_seconds
        while True:
            route = self.get("HTTPRoute", self.route_name) or {}
            said = {c.get("type"): c for p in route.get("status", {}).get("parents", []) for c in p.get("conditions", [])}
            if all(said.get(t, {}).get("status") == "True" for t in ("Accepted", "ResolvedRefs")):
                return
            refused = [c for c in said.values() if c.get("status") == "False"]   # the controller's answer: final
            if refused or time.monotonic() >= deadline:
                why = next((f"{c.get('type')} {c.get('status')}: {c.get('reason')} {c.get('message') or ''}".strip()
                            for c in refused), f"no answer from its controller in {self.settings.wait_seconds} s")
                raise CheckFailed(f"the Gateway {self.settings.gateway} has not accepted the HTTPRoute {self.ns}/"
                                  f"{self.route_name} ({why}): the Service {self.route_name} stays",
                                  hint=f"`kubectl -n {self.ns} describe httproute {self.route_name}` shows why")
            time.sleep(POLL_SECONDS)

    def _retire(self, s: dict[str, Any], done: dict[str, Any]) -> None:
        """(traffic: replicas) Slots that no longer serve go before the read-back: their pods leave the share."""
        for slot in s["retire"]:
            done["retired"].append(slot)
            self._delete_slot(slot)

    def _pods(self, name: str) -> list[dict[str, Any]]:
        slot = name.removeprefix(f"{self.endpoint}-")
        found = self.call("GET", f"/api/v1/namespaces/{self.ns}/pods", "list the pods",
                          query=[("labelSelector", f"{GROUP}/endpoint={self.endpoint},{GROUP}/slot={slot}")])
        return list(found.get("items", []))

    def _proxy(self, slot: str, method: str, path: str, body: Any = None) -> tuple[int, str]:
        """A request to the slot's Service through the API server's service proxy (the slot alone)."""
        return self.call(method, f"/api/v1/namespaces/{self.ns}/services/{self.object_name(slot)}:http/proxy{path}",
                         f"call {self.object_name(slot)}", body=body, raw=True)

    def _smoke(self, slot: str, body: dict[str, Any]) -> None:
        if not body:
            return
        code, text = self._proxy(slot, "POST", "/predict", body)
        if code != 200:
            raise CheckFailed(f"the smoke request to {self.object_name(slot)} (through the service proxy) answered "
                              f"{code}: {' '.join(text.split())[:200]}")

    def _verify(self, after: dict[str, dict[str, Any]]) -> None:
        current = self.read()
        served = {s: (e["image"], e["traffic"]) for s, e in (current or {"slots": {}})["slots"].items()}
        planned = {s: (e["image"], e["traffic"]) for s, e in after.items()}
        if served != planned:
            raise CheckFailed(f"the {'Service' if self.by_replicas else 'HTTPRoute'} {self.route_name} serves "
                              f"{served}, not the planned {planned}")
        verify_models({s: e["model"] for s, e in (current or {"slots": {}})["slots"].items()},
                      {s: e["model"] for s, e in after.items()})

    def _delete_slot(self, slot: str) -> None:
        name = self.object_name(slot)
        print(f"  Deleting {name}", flush=True)
        for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler", "Deployment", "Service"):
            self.delete_object(kind, name)

    def _applicable(self, doc: dict[str, Any], gateway: bool | None = None) -> dict[str, Any]:
        """An object as read, as an apply configuration again (no status, server-set metadata or, for an object
        of traffic: gateway, replicas the HPA set)."""
        gateway = not self.by_replicas if gateway is None else gateway
        meta = {k: v for k, v in doc["metadata"].items() if k in ("name", "namespace", "labels", "annotations")}
        spec = {k: v for k, v in doc.get("spec", {}).items()
                if not (doc["kind"] == "Deployment" and k == "replicas" and gateway)}
        return {"apiVersion": doc["apiVersion"], "kind": doc["kind"], "metadata": meta, "spec": spec}

    def _reapply(self, doc: dict[str, Any], gateway: bool) -> None:
        """An object as the plan read it, applied again. Restoring traffic: gateway's Deployment in a run that
        applied counts (a switch to replicas) hands the count over first, as a switch from replicas does."""
        if doc["kind"] == "Deployment" and gateway and self.by_replicas and doc["spec"].get("replicas") is not None:
            self._hand_over(doc["metadata"]["name"], doc["spec"]["replicas"], None)
        self.apply_object(self._applicable(doc, gateway))

    def _restore(self, s: dict[str, Any], done: dict[str, Any]) -> str:
        """Put the previous objects and weights back; delete what this run made."""
        previous = s["current"]
        gateway = not previous or previous["mode"] == "gateway"   # the mode of what the plan read
        with self.translated("restore what served"):
            if done["other"]:   # the other mode's front first: it serves again as it did
                self.apply_object(self._applicable(previous["other"]))
            if done["route"]:
                if previous and previous["route"]:
                    self.apply_object(self._applicable(previous["route"]))
                else:
                    self.delete_object("Service" if self.by_replicas else "HTTPRoute", self.route_name)
            for slot in done["retired"]:
                for doc in s["retired"][slot].values():
                    if doc is not None:
                        self._reapply(doc, gateway)
            for slot in reversed(done["slots"]):
                for kind, doc in s["rollouts"][slot]["objects"].items():
                    if doc is None:
                        self.delete_object(kind, self.object_name(slot))
                    else:
                        self._reapply(doc, gateway)
            for stage in done["staged"]:
                self._delete_slot(stage)
        if not previous or not previous["slots"]:
            return "rolled back: what this deploy made was deleted"
        before = ", ".join(f"{slot} {e['traffic']}%" for slot, e in previous["slots"].items())
        return f"rolled back: {self.endpoint} serves as before ({before})"

    # -- monitoring -----------------------------------------------------------------------------------
    def slot_metrics(self, window: float, pr: int | None = None) -> Collected:
        """Both slots' /metrics (the server's Prometheus text) through the service proxy, at the start and
        the end of the window, differenced (window 0: since the pods started). The proxy reaches one pod
        of each Service per scrape: with several replicas the numbers are one pod's."""
        from mldeploy.monitor.metrics import POLL_SECONDS as STEP
        from mldeploy.monitor.metrics import Collected, parse_prometheus, window_stats

        current = self.read()
        canary = self.compared(current, pr)

        def scrape(slot: str) -> dict:
            with self.translated(f"read the metrics of {self.object_name(slot)}"):
                code, text = self._proxy(slot, "GET", "/metrics")
            if code != 200:
                raise CheckFailed(f"the metrics of {self.object_name(slot)} answered {code}")
            return parse_prometheus(text)

        slots = ("production", canary)
        before = {s: scrape(s) for s in slots} if window > 0 else dict.fromkeys(slots)
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(STEP, left))
        stats = {s: window_stats(s, before[s], scrape(s)) for s in slots}
        return Collected(stats["production"], stats[canary], window, f"kubernetes {self.ns}/{self.endpoint} /metrics",
                         notes=["prediction divergence not measured: the cluster does not capture requests"])

    @classmethod
    def doctor(cls, deploy: DeploySection) -> list[tuple[str, bool, str]]:
        """The cluster answers the kubeconfig's credentials; a SelfSubjectAccessReview per verb a deploy needs;
        the minimal Role."""
        target = cls("doctor", deploy)
        ns = target.ns
        try:
            with target.translated("read the cluster's version"):
                version = target.call("GET", "/version", "read the cluster's version")
        except (MldeployError, ApiError, OSError) as e:
            return [("cluster", False, e.describe() if isinstance(e, MldeployError) else str(e).splitlines()[0])]
        except Exception as e:  # urllib3's connection errors: the cluster is not reachable
            return [("cluster", False, f"no answer from the cluster: {type(e).__name__}: {str(e).splitlines()[0][:160]}")]
        rows = [("cluster", True, f"Kubernetes {version.get('gitVersion', '?')} answers the kubeconfig's credentials")]
        try:
            with target.translated("read the cluster's API groups"):
                needed = rules(target.by_replicas, not target.by_replicas or target.gateway_api())
        except MldeployError as e:
            return [*rows, ("API groups", False, e.describe())]
        denied = []
        for group, resource, verbs in needed:
            plural, _, sub = resource.partition("/")
            for verb in verbs:
                review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                          "spec": {"resourceAttributes": {"namespace": ns, "group": group, "resource": plural,
                                                          "subresource": sub, "verb": verb}}}
                try:
                    with target.translated("review access"):
                        answer = target.call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                                             "review access", body=review)
                except MldeployError as e:
                    return [*rows, ("access review", False, e.describe())]
                if not answer.get("status", {}).get("allowed"):
                    denied.append(f"{verb} {resource}{f' ({group})' if group else ''}")
        rows.append(("permissions", not denied, f"every verb a deploy needs is allowed in {ns}" if not denied
                     else f"denied in {ns}: {', '.join(denied)}"))
        rows.append(("role needed", True, "\n" + role_yaml(ns, needed)))
        return rows


class EksTarget(KubernetesTarget):
    """An EKS cluster reached with the job's AWS credentials (the OIDC role), no kubeconfig: the endpoint and
    CA from DescribeCluster, a token as `aws eks get-token` makes it (a presigned STS GetCallerIdentity
    whose signature covers the cluster's name, valid 60 s: each command gets its own)."""
    name = "eks"
    credentials = "the EKS token of the job's AWS identity"
    credentials_hint = ("give the role an access entry on the cluster (`aws eks create-access-entry`, plus an access "
                        "policy or the Role `mldeploy doctor` prints), or map it in the aws-auth ConfigMap")

    @property
    def api(self) -> Any:
        if self._api is None:
            from kubernetes import client

            from mldeploy.deploy import aws

            assert self.deploy is not None
            cluster, region = self.deploy.aws.eks.cluster, self.deploy.region
            if not cluster:
                raise UsageError("deploy.aws.eks.cluster is not set", hint="name the EKS cluster in mldeploy.yaml")
            with aws.translated(f"describe the EKS cluster {cluster}"):
                eks = aws.client("eks", region)
                try:
                    found = eks.describe_cluster(name=cluster)["cluster"]
                except eks.exceptions.ResourceNotFoundException:
                    raise UsageError(f"no EKS cluster {cluster} in {eks.meta.region_name}",
                                     hint="check deploy.aws.eks.cluster and deploy.region") from None
            if found.get("status") != "ACTIVE" or not found.get("endpoint"):
                raise UsageError(f"the EKS cluster {cluster} is {found.get('status')}, not ACTIVE",
                                 hint="deploy when the cluster is active")
            self._api = _client(client, found["endpoint"], found["certificateAuthority"]["data"],
                                eks_token(cluster, eks.meta.region_name))
        return self._api

    @classmethod
    def doctor(cls, deploy: DeploySection) -> list[tuple[str, bool, str]]:
        from mldeploy.deploy import aws

        rows = aws.doctor(deploy, {"eks:DescribeCluster": ("eks", "describe_cluster",
                                                           {"name": deploy.aws.eks.cluster or "-"})})
        return rows + super().doctor(deploy)


class GkeTarget(KubernetesTarget):
    """A GKE cluster reached with the job's Google credentials (ADC: Workload Identity Federation in Actions),
    no kubeconfig: endpoint and CA from the Container API's cluster, the bearer token ADC's access token."""
    name = "gke"
    credentials = "the access token of the job's Google identity"
    credentials_hint = ("grant it roles/container.developer (or bind it to the Role `mldeploy doctor` prints) "
                        "on the cluster")

    @property
    def api(self) -> Any:
        if self._api is None:
            from google.auth.transport.requests import AuthorizedSession
            from kubernetes import client

            from mldeploy.deploy import gcp

            assert self.deploy is not None
            cluster, location = self.deploy.gcp.gke.cluster, self.deploy.gcp.gke.location or self.deploy.region
            if not cluster or not location:
                raise UsageError("deploy.gcp.gke.cluster and its location (deploy.gcp.gke.location or deploy.region) "
                                 "must be set", hint="name the GKE cluster and its region or zone in mldeploy.yaml")
            creds, found = gcp.credentials()
            project = gcp.project(self.deploy, found)
            base = gcp.override() or "https://container.googleapis.com"
            session = AuthorizedSession(creds)
            with gcp.translated(f"read the GKE cluster {cluster}"):
                response = session.get(f"{base}/v1/projects/{project}/locations/{location}/clusters/{cluster}",
                                       timeout=60)
                if response.status_code == 404:
                    raise UsageError(f"no GKE cluster {cluster} in {project}/{location}",
                                     hint="check deploy.gcp.gke.cluster, its location and deploy.gcp.project")
                if response.status_code != 200:
                    from google.api_core import exceptions

                    raise exceptions.from_http_response(response)
            found = response.json()
            if found.get("status") not in ("RUNNING", "RECONCILING") or not found.get("endpoint"):
                raise UsageError(f"the GKE cluster {cluster} is {found.get('status')}, not RUNNING")
            endpoint = found["endpoint"]
            self._api = _client(client, endpoint if endpoint.startswith("https://") else f"https://{endpoint}",
                                found["masterAuth"]["clusterCaCertificate"], getattr(creds, "token", None))
        return self._api


class AksTarget(KubernetesTarget):
    """An AKS cluster (Entra ID integration on) reached with the job's Entra ID login (azure/login's OIDC,
    DefaultAzureCredential), no kubeconfig: the endpoint and CA from the managed cluster's user credential
    (listClusterUserCredential, whose kubeconfig would otherwise need kubelogin), the bearer token one for
    the AKS Entra ID server application."""
    name = "aks"
    credentials = "the Entra ID token of the job's Azure identity"
    credentials_hint = ("give it the Azure Kubernetes Service RBAC Writer role on the cluster (or bind it to the "
                        "Role `mldeploy doctor` prints), and Azure Kubernetes Service Cluster User on the resource")
    SERVER_APP = "6dae42f8-4368-4678-94ff-3960e28e3630"   # AKS's Entra ID server application, the same everywhere
    API_VERSION = "2024-05-01"

    def _pod_labels(self) -> dict[str, str]:
        # Azure workload identity's webhook gives a pod its service account's Entra ID identity (what
        # downloads a model in storage) only when the pod is labelled so
        return {"azure.workload.identity/use": "true"} if self.settings.service_account else {}

    @property
    def api(self) -> Any:
        if self._api is None:
            from kubernetes import client
            from ruamel.yaml import YAML

            from mldeploy.clouds import azure

            assert self.deploy is not None
            az = self.deploy.azure
            cluster = az.aks.cluster
            sub, group = az.subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID"), \
                az.resource_group or os.environ.get("AZURE_RESOURCE_GROUP")
            if not cluster or not sub or not group:
                raise UsageError("deploy.azure.aks.cluster, subscription_id and resource_group must be set",
                                 hint="name them in mldeploy.yaml (the last two may come from AZURE_SUBSCRIPTION_ID "
                                      "and AZURE_RESOURCE_GROUP)")
            credential = azure.credential()
            path = (f"/subscriptions/{sub}/resourceGroups/{group}/providers/"
                    f"Microsoft.ContainerService/managedClusters/{cluster}")
            with azure.translated(f"read the AKS cluster {cluster}"):
                found = azure.arm_request("GET", path, self.API_VERSION, credential)
                if found.status_code == 404:
                    raise UsageError(f"no AKS cluster {cluster} in the resource group {group}",
                                     hint="check deploy.azure.aks.cluster and resource_group")
                found.raise_for_status()
                state = found.json().get("properties", {}).get("provisioningState")
                if state != "Succeeded":
                    raise UsageError(f"the AKS cluster {cluster} is {state}, not Succeeded")
                listed = azure.arm_request("POST", f"{path}/listClusterUserCredential", self.API_VERSION, credential,
                                           format="exec")
                listed.raise_for_status()
                token = credential.get_token(f"{self.SERVER_APP}/.default").token
            kubeconfig = YAML(typ="safe", pure=True).load(base64.b64decode(listed.json()["kubeconfigs"][0]["value"]))
            server = kubeconfig["clusters"][0]["cluster"]
            self._api = _client(client, server["server"], server["certificate-authority-data"], token)
        return self._api


def github_bearer(configuration: Any, audience: str) -> None:
    """The job's own GitHub OIDC token as the bearer, in place of the kubeconfig's user; fetched again a minute
    before it expires (GitHub's last minutes, a rollout may last longer)."""
    held: dict[str, Any] = {"expires": 0.0}

    def refresh(conf: Any) -> None:
        if time.time() > held["expires"] - 60:
            token = github.id_token(audience, "deploy.kubernetes.github_oidc_audience wants the job's own")
            try:
                payload = token.split(".")[1]
                held["expires"] = float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
            except (IndexError, ValueError, KeyError, TypeError):
                held["expires"] = time.time() + 120   # not a JWT we can read: ask again in a minute or so
            conf.api_key = {"BearerToken": token}
            conf.api_key_prefix = {"BearerToken": "Bearer"}

    configuration.refresh_api_key_hook = refresh
    refresh(configuration)   # now: a job without id-token: write fails before any request


def _client(client: Any, host: str, ca_data: str, token: str | None) -> Any:
    """An ApiClient for a managed cluster: its endpoint, its CA (base64, as the clouds' APIs give it), a token."""
    folder = tempfile.mkdtemp(prefix="mldeploy-ca-")   # the client reads the CA from a file
    atexit.register(shutil.rmtree, folder, True)
    ca = Path(folder) / "ca.crt"
    ca.write_bytes(base64.b64decode(ca_data))
    config = client.Configuration()
    config.host = host.rstrip("/")
    config.ssl_ca_cert = str(ca)
    if token:
        config.api_key = {"authorization": f"Bearer {token}"}
    api = client.ApiClient(config)
    api.user_agent = f"mldeploy/{__version__}"
    return api


def eks_token(cluster: str, region: str) -> str:
    """A bearer token for EKS: `k8s-aws-v1.` and the base64url of a presigned STS GetCallerIdentity URL (the
    regional endpoint) whose signed headers include x-k8s-aws-id: <cluster>. Signing calls nothing."""
    import boto3
    from botocore.config import Config

    sts = boto3.session.Session(region_name=region).client(
        "sts", endpoint_url=f"https://sts.{region}.amazonaws.com", config=Config(signature_version="v4"))

    def named(request: Any, **_: Any) -> None:
        request.headers["x-k8s-aws-id"] = cluster

    sts.meta.events.register("before-sign.sts.GetCallerIdentity", named)
    url = sts.generate_presigned_url("get_caller_identity", Params={}, ExpiresIn=60, HttpMethod="GET")
    return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
