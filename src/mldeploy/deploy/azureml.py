"""Azure ML managed online endpoints: slots are deployments, the canary share is endpoint traffic.

    endpoint <name>  (auth key or aad_token; https://<name>.<region>.inference.ml.azure.com/score)
        deployment production-<digest8>     environment mldeploy-<name>:<hash>, our image   traffic 100 - canaries
        deployment canary[-prN]-<digest8>   (the same, with the canary's image)            traffic N, or mirror N

A deployment's name is its slot and the image's short digest, because a new image always gets a new
deployment (Azure ML's blue/green): it must provision (its readiness probe is our server's
/v2/health/ready, which answers only once the model is loaded and warmed up), serve the digest asked
for and answer a smoke request sent to it alone (`azureml-model-deployment`) before any traffic
moves; the deployment it replaces is deleted only after the traffic moved and was read back. A pull
request's canary is its own slot (canary-pr<N>), so parallel PRs never touch each other. With
`mirror: true` a canary gets a mirrored copy of its share (shadow traffic; Azure ML mirrors to one
deployment, at most 50%) and live traffic stays as it was. A production deploy or a promote leaves
one deployment serving 100% and ends every canary (they were measured against the old production);
a promote starts a production deployment of the canary's image (the canary keeps its share until it
is ready). A rollback moves the canaries' shares back to production and deletes them. Any failure
before the new layout is read back puts the previous traffic back and deletes what was added.
With autoscale_max, each new deployment gets an Azure Monitor autoscale setting (Azure ML scales
through those): instance_count to autoscale_max instances on the deployment's CPU; it is deleted
with its deployment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from typing import TYPE_CHECKING, Any

from mldeploy import github
from mldeploy.deploy import Desired, NoCanary, Plan
from mldeploy.deploy import azure as azure_cloud
from mldeploy.deploy.azure import error_text, ml_client, monitor_client, translated, transport, wait
from mldeploy.deploy.base import (
    MODEL_SHA256,
    Model,
    Slot,
    Status,
    Target,
    digest_of,
    model_env,
    plan_model,
    verify_models,
)
from mldeploy.errors import CheckFailed, MldeployError, UsageError

if TYPE_CHECKING:
    from mldeploy.config import Config, DeploySection
    from mldeploy.monitor.metrics import Collected
    from mldeploy.monitor.setup import SetupPlan

POLL_SECONDS = float(os.environ.get("MLDEPLOY_POLL_SECONDS", "15"))
PORT = 8080
# the Azure ML routes our server answers (docs/serve.md)
INFERENCE_CONFIG = {"liveness_route": {"path": "/", "port": PORT},
                    "readiness_route": {"path": "/v2/health/ready", "port": PORT},
                    "scoring_route": {"path": "/score", "port": PORT}}
SUFFIX = re.compile(r"^(?P<slot>.+)-[0-9a-f]{8}$")
# autoscale: one instance more when the deployment's CPU averages above 70% for 5 minutes, one less
# below 25% for 10 minutes, at most one change per 5 minutes (Azure ML's documented example rules)
SCALE_RULES = (("GreaterThan", 70, 5, "Increase"), ("LessThan", 25, 10, "Decrease"))


def azure_name(*parts: str, limit: int = 32) -> str:
    """A name Azure ML accepts for endpoints and deployments: starts with a letter; lowercase
    letters, digits and hyphens; at most `limit` characters (shortened with a hash, stable)."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(p for p in parts if p).lower()).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}".rstrip("-")
    if len(name) > limit:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = f"{name[:limit - 9].rstrip('-')}-{digest}"
    return name


def _missing_parent(error: Exception) -> bool:
    """Whether a 404 is about the workspace, resource group or subscription, not the endpoint (ARM's
    own wording for a missing parent resource)."""
    code = str(getattr(getattr(error, "error", None), "code", "") or "")
    text = error_text(error)
    return code in ("ResourceGroupNotFound", "SubscriptionNotFound", "InvalidSubscriptionId") or (
        "/workspaces/" in text and "under resource group" in text)


class AzureMLTarget(Target):
    name = "azureml"

    def __init__(self, endpoint: str, cfg: DeploySection) -> None:
        super().__init__(azure_name(endpoint), cfg)
        self.cfg = cfg
        self.azure = cfg.azure
        self.settings = cfg.azure.azureml
        self.ml = ml_client(cfg)   # the workspace's coordinates are checked here (UsageError when missing)
        self._environments: dict[str, str | None] = {}
        self._models: dict[str, str] = {}    # registered model id -> its path (the artifact's URI)

    # -- what serves now --------------------------------------------------------------------------
    def read(self) -> dict[str, Any] | None:
        """The endpoint and its deployments: per deployment its slot, image and state; per slot the
        deployment serving it (others of the same slot are stale leftovers), its traffic and mirror."""
        from azure.core.exceptions import ResourceNotFoundError

        with translated(f"read the Azure ML endpoint {self.endpoint}"):
            try:
                ep = self.ml.online_endpoints.get(self.endpoint)
            except ResourceNotFoundError as e:
                if _missing_parent(e):
                    raise
                return None
            found = list(self.ml.online_deployments.list(self.endpoint))
        traffic = {k: int(v) for k, v in (ep.traffic or {}).items() if int(v)}
        mirror = {k: int(v) for k, v in (ep.mirror_traffic or {}).items() if int(v)}
        deployments: dict[str, dict[str, Any]] = {}
        for dep in found:
            tags = dep.tags or {}
            match = SUFFIX.match(dep.name)
            deployments[dep.name] = {"slot": tags.get("mldeploy:slot") or (match.group("slot") if match else dep.name),
                                     "image": self._image(dep.environment), "artifact": self._artifact(dep),
                                     "state": str(dep.provisioning_state or ""),
                                     "traffic": traffic.get(dep.name, 0), "mirror": mirror.get(dep.name, 0)}
        slots: dict[str, dict[str, Any]] = {}
        stale = []
        for name, dep in sorted(deployments.items(), key=lambda kv: -(kv[1]["traffic"] + kv[1]["mirror"])):
            if dep["slot"] in slots:
                stale.append(name)
            else:
                slots[dep["slot"]] = {"deployment": name, **dep}
        return {"entity": ep, "auth_mode": str(ep.auth_mode or "key").lower(), "url": ep.scoring_uri,
                "state": str(ep.provisioning_state or ""), "traffic": traffic, "mirror": mirror,
                "deployments": deployments, "slots": slots, "stale": stale}

    def _image(self, environment: Any) -> str | None:
        """The image of a deployment's environment (an ARM id or azureml:name:version)."""
        env_id = str(getattr(environment, "id", None) or environment or "")
        if env_id not in self._environments:
            match = (re.search(r"/environments/([^/]+)/versions/([^/]+)$", env_id)
                     or re.match(r"^azureml:([^:]+):([^:]+)$", env_id))
            image = None
            if match:
                with translated(f"read the environment {match.group(1)}:{match.group(2)}"):
                    image = self.ml.environments.get(match.group(1), version=match.group(2)).image
            self._environments[env_id] = image
        return self._environments[env_id]

    def _artifact(self, dep: Any) -> Model | None:
        """The artifact a deployment mounts (its registered model's path, at AZUREML_MODEL_DIR) and the
        hash its server verifies (MLDEPLOY_MODEL_SHA256)."""
        sha = (dep.environment_variables or {}).get(MODEL_SHA256)
        model_id = str(getattr(dep.model, "id", None) or dep.model or "")
        if model_id and model_id not in self._models:
            match = (re.search(r"/models/([^/]+)/versions/([^/]+)$", model_id)
                     or re.match(r"^azureml:([^:]+):([^:]+)$", model_id))
            path = ""
            if match:
                with translated(f"read the model {match.group(1)}:{match.group(2)}"):
                    path = str(self.ml.models.get(match.group(1), version=match.group(2)).path or "")
            self._models[model_id] = path
        return Model(self._models.get(model_id, ""), sha or "") if model_id or sha else None

    # -- the interface ----------------------------------------------------------------------------
    def plan(self, desired: Desired) -> Plan:
        desired.require_digest()
        if desired.model and not desired.model.uri.startswith("https://"):
            raise UsageError(f"Azure ML mounts a registered model from Blob storage, not {desired.model.uri}",
                             hint="set storage.uri to https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX "
                                  "and publish again")
        current = self.read()
        slots = current["slots"] if current else {}
        new = self._deployment_name(desired.slot, desired.image, desired.model)
        if "production" not in slots or desired.slot == "production":
            new = self._deployment_name("production", desired.image, desired.model)
            return self._plan(desired, current, "production", new, {new: 100}, {},
                              [n for n in (current or {}).get("deployments", {}) if n != new])
        assert current is not None  # production serves in it
        old = slots.get(desired.slot, {}).get("deployment")
        others = {s: e for s, e in slots.items() if s not in ("production", desired.slot)}
        live = {e["deployment"]: e["traffic"] for e in others.values() if e["traffic"]}
        mirror = {e["deployment"]: e["mirror"] for e in others.values() if e["mirror"]}
        production = slots["production"]["deployment"]
        if self.settings.mirror:
            if desired.traffic > 50:
                raise UsageError(f"--traffic {desired.traffic}: Azure ML mirrors at most 50% of traffic",
                                 hint="lower --traffic, or set deploy.azure.azureml.mirror: false")
            if mirror:
                taken = ", ".join(s for s, e in others.items() if e["mirror"])
                raise UsageError(f"{taken} already gets the mirrored traffic; Azure ML mirrors to one deployment only",
                                 hint=f"roll back {taken} first")
            traffic = {production: 100 - sum(live.values()), **live}
            mirror = {new: desired.traffic} if desired.traffic else {}
        else:
            if sum(live.values()) + desired.traffic > 100:
                raise UsageError(f"the canaries would take {sum(live.values()) + desired.traffic}% of traffic",
                                 hint=f"lower --traffic or roll back one of {', '.join(others)}")
            traffic = {production: 100 - sum(live.values()) - desired.traffic, **live, new: desired.traffic}
        delete = ([old] if old and old != new else []) + current["stale"]
        return self._plan(desired, current, desired.slot, new, traffic, mirror, delete)

    def apply(self, plan: Plan) -> Status:
        if plan.empty:
            return self.changed(False)
        s, d = plan.state, plan.desired
        current = s["current"]
        done = {"deployment": False, "traffic": False}   # what _restore must undo
        with self.changing(current, {d.image}, lambda: self._restore(current, s, done)) as guard:
            if current is None:
                self._put_endpoint(None, {}, {})
            elif s["auth_changed"]:
                guard.check()  # the whole endpoint is PUT back, its traffic as read
                self._put_endpoint(current, current["traffic"], current["mirror"])
            if s["build"]:
                done["deployment"] = s["new"] not in (current or {}).get("deployments", {})
                self._put_deployment(s["new"], s["slot"], d.image, d.model)
            if s["new"]:
                deployment_id = self._check_deployment(s["new"], d.image, d.model)
                if d.smoke:
                    self._smoke(s["new"], d.smoke)
                if s["autoscale"]:
                    self._put_autoscale(s["new"], deployment_id)
            if s["traffic"] != (current or {}).get("traffic", {}) or s["mirror"] != (current or {}).get("mirror", {}):
                guard.check()  # just before traffic moves: a new deployment takes minutes to come up
                done["traffic"] = True
                self._put_endpoint(self.read(), s["traffic"], s["mirror"])
            self._verify(s)
            if s["slot"] != "production" and self.azure.bake_seconds and s["new"] and d.smoke:
                self._bake(s["new"], d.smoke)
        self._delete(s["delete"])
        return self.changed(True)

    def _status(self, current: dict[str, Any] | None) -> Status:
        if current is None:
            return Status(self.endpoint)
        return Status(self.endpoint, current["url"], {
            slot: Slot(e["image"], e["traffic"], e["state"].lower().endswith("succeeded"),
                       {"deployment": e["deployment"], **({"mirror": e["mirror"]} if e["mirror"] else {})},
                       model=e["artifact"])
            for slot, e in current["slots"].items()}, {"status": current["state"]})

    # promote and rollback move traffic between deployments (a mirrored canary holds no live share)
    def promote(self, pr: int | None = None) -> Status:
        current = self.read()
        slot = self.canary(current, pr, "promote")
        assert current is not None  # canary() found one in it
        canary = current["slots"][slot]
        return self.apply(self.plan(Desired(self.endpoint, canary["image"], "production", 0, {},
                                            model=canary["artifact"])))

    def rollback(self, pr: int | None = None) -> Status:
        current = self.read()
        gone = {self.canary(current, pr, "roll back")} if pr else {s for s in (current or {}).get("slots", {})
                                                                    if s != "production"}
        if not gone or current is None:
            raise NoCanary(f"{self.endpoint} has no canary to roll back", hint="production is already all the traffic")
        slots = current["slots"]
        keep = {s: e for s, e in slots.items() if s not in gone and s != "production"}
        live = {e["deployment"]: e["traffic"] for e in keep.values() if e["traffic"]}
        mirror = {e["deployment"]: e["mirror"] for e in keep.values() if e["mirror"]}
        production = slots["production"]
        traffic = {production["deployment"]: 100 - sum(live.values()), **live}
        desired = Desired(self.endpoint, production["image"], "production", 0, {}, model=production["artifact"])
        return self.apply(self._plan(desired, current, "production", None, traffic, mirror,
                                     [slots[s]["deployment"] for s in sorted(gone)] + current["stale"]))

    # -- planning ---------------------------------------------------------------------------------
    def _deployment_name(self, slot: str, image: str, model: Model | None = None) -> str:
        """slot-<digest8>; with a model in storage the 8 hex are of the image and the artifact together (a
        model-only change is a new deployment, blue/green, like a new image)."""
        if model is None:
            return f"{azure_name(slot, limit=23)}-{digest_of(image)[:8]}"
        both = hashlib.sha256(f"{digest_of(image)}:{model.sha256}".encode()).hexdigest()
        return f"{azure_name(slot, limit=23)}-{both[:8]}"

    def _environment(self, image: str) -> tuple[str, str]:
        return azure_name("mldeploy", self.endpoint, limit=64), hashlib.sha256(image.encode()).hexdigest()[:16]

    def _by_slot(self, split: dict[str, int], deployments: dict[str, str]) -> dict[str, int]:
        return {deployments.get(name, name): pct for name, pct in split.items()}

    def _plan(self, d: Desired, current: dict[str, Any] | None, slot: str, new: str | None,
              traffic: dict[str, int], mirror: dict[str, int], delete: list[str]) -> Plan:
        existing = (current or {}).get("deployments", {})
        slot_of = {name: e["slot"] for name, e in existing.items()} | ({new: slot} if new else {})
        traffic = {k: v for k, v in traffic.items() if v}
        plan = Plan(self.name, d, traffic_before=self._by_slot((current or {}).get("traffic", {}), slot_of),
                    traffic_after=self._by_slot(traffic, slot_of))
        ep = f"azureml endpoint {self.endpoint}"
        auth_changed = bool(current and current["auth_mode"] != self.settings.auth_mode)
        build = False
        if current is None:
            plan.add("create", ep, "auth", new=self.settings.auth_mode)
        elif auth_changed:
            plan.add("update", ep, "auth", current["auth_mode"], self.settings.auth_mode)
        if new and (was := (current or {}).get("slots", {}).get(slot)):
            plan_model(plan, f"azureml slot {slot}", was["artifact"], d.model)
        if new:
            found = existing.get(new)
            if found is None:
                build = True
                plan.add("create", f"azureml deployment {new}", "image", new=d.image)
            elif found["image"] != d.image:
                build = True
                plan.add("update", f"azureml deployment {new}", "image", found["image"], d.image)
            elif found["artifact"] != d.model:
                build = True
                plan_model(plan, f"azureml deployment {new}", found["artifact"], d.model)
            elif not found["state"].lower().endswith("succeeded"):
                build = True
                plan.add("update", f"azureml deployment {new}", "state", found["state"], "Succeeded")
        if traffic != (current or {}).get("traffic", {}):
            plan.add("update", ep, "traffic", (current or {}).get("traffic", {}), traffic)
        if mirror != (current or {}).get("mirror", {}):
            plan.add("update", ep, "mirror traffic", (current or {}).get("mirror", {}), mirror)
        autoscale = False
        if new and self.settings.autoscale_max:
            found = None if build else self._autoscale_capacity(new)
            wanted = (self.settings.instance_count, self.settings.autoscale_max)
            if found != wanted:
                autoscale = True
                plan.add("update" if found else "create", f"azure monitor autoscale setting {self._autoscale_name(new)}",
                         "instances", found and "{}-{}".format(*found), "{}-{}".format(*wanted))
        for name in delete:
            plan.add("delete", f"azureml deployment {name}")
        plan.state = {"current": current, "slot": slot, "new": new, "build": build, "auth_changed": auth_changed,
                      "autoscale": autoscale,
                      "traffic": traffic, "mirror": mirror, "delete": delete,
                      "images": {n: e["image"] for n, e in existing.items() if n not in delete} | (
                          {new: d.image} if new else {}),
                      "models": {n: e["artifact"] for n, e in existing.items() if n not in delete} | (
                          {new: d.model} if new else {})}
        return plan

    # -- applying ---------------------------------------------------------------------------------
    def _tags(self, slot: str | None = None, image: str | None = None) -> dict[str, str]:
        found = {"mldeploy:endpoint": self.endpoint, "mldeploy:slot": slot,
                 "mldeploy:repo": os.environ.get("GITHUB_REPOSITORY"), "mldeploy:sha": os.environ.get("GITHUB_SHA"),
                 "mldeploy:image": image and digest_of(image)}
        return {k: v for k, v in found.items() if v}

    def _put_endpoint(self, current: dict[str, Any] | None, traffic: dict[str, int], mirror: dict[str, int]) -> None:
        """Create the endpoint, or PUT it whole with this traffic and mirror traffic (how Azure ML
        changes traffic); the endpoint's other settings are kept as read."""
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        if current is None:
            entity = ManagedOnlineEndpoint(name=self.endpoint, auth_mode=self.settings.auth_mode, tags=self._tags(),
                                           description="deployed by mldeploy")
            doing = f"create the Azure ML endpoint {self.endpoint}"
        else:
            entity = current["entity"]
            entity.auth_mode = self.settings.auth_mode
            entity.traffic = dict(traffic)
            entity.mirror_traffic = dict(mirror)
            shown = ", ".join(f"{k} {v}%" for k, v in traffic.items()) or "none"
            doing = f"set the traffic of {self.endpoint} ({shown}{', mirror ' if mirror else ''}" \
                    f"{', '.join(f'{k} {v}%' for k, v in mirror.items())})"
        print(f"  {doing[0].upper()}{doing[1:]}", flush=True)
        with translated(doing):
            wait(self.ml.online_endpoints.begin_create_or_update(entity), f"endpoint {self.endpoint}",
                 self.azure.wait_seconds, POLL_SECONDS)

    def _register(self, model: Model) -> str:
        """The artifact as a registered model version (Azure ML mounts it at AZUREML_MODEL_DIR): named
        for the endpoint, versioned by the bundle sha256, its URI and hash in the tags. Returns its id."""
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model as RegisteredModel
        from azure.core.exceptions import ResourceNotFoundError

        name, version = azure_name("mldeploy", self.endpoint, limit=64), model.sha256[:32]
        with translated(f"register the model {name}:{version}"):
            try:
                found = self.ml.models.get(name, version=version)
            except ResourceNotFoundError:
                found = self.ml.models.create_or_update(RegisteredModel(
                    name=name, version=version, path=model.uri, type=AssetTypes.CUSTOM_MODEL,
                    description=f"mldeploy: {model.uri} (bundle sha256 {model.sha256})",
                    tags={**self._tags(), "mldeploy:uri": model.uri, "mldeploy:sha256": model.sha256}))
        return str(found.id)

    def _put_deployment(self, name: str, slot: str, image: str, model: Model | None = None) -> None:
        from azure.ai.ml.entities import Environment, ManagedOnlineDeployment, OnlineRequestSettings
        from azure.core.exceptions import ResourceNotFoundError

        env_name, version = self._environment(image)
        with translated(f"register the environment {env_name}:{version}"):
            try:
                env = self.ml.environments.get(env_name, version=version)
            except ResourceNotFoundError:
                env = self.ml.environments.create_or_update(Environment(
                    name=env_name, version=version, image=image, inference_config=INFERENCE_CONFIG,
                    description=f"mldeploy serving image for {self.endpoint}", tags=self._tags(image=image)))
        s = self.settings
        deployment = ManagedOnlineDeployment(
            name=name, endpoint_name=self.endpoint, environment=env.id, instance_type=s.instance_type,
            instance_count=s.instance_count, tags=self._tags(slot, image),
            model=self._register(model) if model else None, environment_variables=model_env(model, uri=False) or None,
            request_settings=OnlineRequestSettings(request_timeout_ms=s.request_timeout_ms,
                                                   max_concurrent_requests_per_instance=s.max_concurrent_requests_per_instance))
        print(f"  Deploying {image} as {name} ({s.instance_count} x {s.instance_type})", flush=True)
        with translated(f"deploy {name} to {self.endpoint}"):
            wait(self.ml.online_deployments.begin_create_or_update(deployment), f"deployment {name}",
                 self.azure.wait_seconds, POLL_SECONDS)

    def _check_deployment(self, name: str, image: str, model: Model | None = None) -> str:
        """Check the deployment is provisioned with the image and the model; returns its ARM id."""
        with translated(f"read the deployment {name}"):
            dep = self.ml.online_deployments.get(name, self.endpoint)
        state = str(dep.provisioning_state or "")
        if not state.lower().endswith("succeeded"):
            raise CheckFailed(f"the deployment {name} is {state or 'in no state'}, not Succeeded")
        self._environments.clear()
        served = self._image(dep.environment)
        if served != image:
            raise CheckFailed(f"the deployment {name} runs {served}, not the planned {image}")
        verify_models({name: self._artifact(dep)}, {name: model})
        return dep.id

    # -- autoscale --------------------------------------------------------------------------------
    def _autoscale_name(self, deployment: str) -> str:
        return f"{self.endpoint}-{deployment}-autoscale"

    def _monitor(self) -> Any:
        return monitor_client(self.ml.subscription_id)

    def _autoscale_capacity(self, deployment: str) -> tuple[int, int] | None:
        """(minimum, maximum) instances of the deployment's autoscale setting, or None."""
        from azure.core.exceptions import ResourceNotFoundError

        name = self._autoscale_name(deployment)
        with translated(f"read the autoscale setting {name}"):
            try:
                found = self._monitor().autoscale_settings.get(self.ml.resource_group_name, name)
            except ResourceNotFoundError:
                return None
        capacity = found.profiles[0].capacity if found.profiles else None
        return (int(capacity.minimum), int(capacity.maximum)) if capacity else None

    def _put_autoscale(self, deployment: str, deployment_id: str) -> None:
        from datetime import timedelta

        from azure.mgmt.monitor.models import (
            AutoscaleProfile,
            AutoscaleSettingResource,
            MetricTrigger,
            ScaleAction,
            ScaleCapacity,
            ScaleRule,
        )

        s, name = self.settings, self._autoscale_name(deployment)
        rules = [ScaleRule(
            metric_trigger=MetricTrigger(metric_name="CpuUtilizationPercentage", metric_resource_uri=deployment_id,
                                         time_grain=timedelta(minutes=1), statistic="Average", operator=operator,
                                         time_window=timedelta(minutes=minutes), time_aggregation="Average",
                                         threshold=threshold),
            scale_action=ScaleAction(direction=direction, type="ChangeCount", value="1", cooldown=timedelta(minutes=5)))
            for operator, threshold, minutes, direction in SCALE_RULES]
        with translated(f"read the location of {self.endpoint}"):
            location = self.ml.online_endpoints.get(self.endpoint).location
        setting = AutoscaleSettingResource(
            location=location, target_resource_uri=deployment_id, enabled=True, tags=self._tags(),
            profiles=[AutoscaleProfile(name="mldeploy", rules=rules, capacity=ScaleCapacity(
                minimum=str(s.instance_count), maximum=str(s.autoscale_max), default=str(s.instance_count)))])
        print(f"  Autoscaling {deployment}: {s.instance_count} to {s.autoscale_max} instances on CPU", flush=True)
        with translated(f"set the autoscale setting {name}"):
            self._monitor().autoscale_settings.create_or_update(self.ml.resource_group_name, name, setting)

    def _delete_autoscale(self, deployment: str) -> None:
        """Delete a deployment's autoscale setting with the deployment (none there is fine)."""
        from azure.core.exceptions import ResourceNotFoundError

        if not self.settings.autoscale_max:
            return
        name = self._autoscale_name(deployment)
        with translated(f"delete the autoscale setting {name}"):
            try:
                self._monitor().autoscale_settings.delete(self.ml.resource_group_name, name)
            except ResourceNotFoundError:
                pass

    def _smoke(self, name: str, body: dict[str, Any]) -> None:
        """POST the smoke body to the endpoint's scoring URI, routed to this deployment alone
        (`azureml-model-deployment`, which reaches a deployment with no traffic too), with the
        endpoint's key or token. Not online_endpoints.invoke: it crashes on an error body that is not
        ARM-shaped (ours is {"error": "..."}), and the answer's status and body are the diagnosis."""
        from azure.core import PipelineClient
        from azure.core.exceptions import AzureError
        from azure.core.rest import HttpRequest

        with translated(f"read the scoring URI and keys of {self.endpoint}"):
            url = self.ml.online_endpoints.get(self.endpoint).scoring_uri
            keys = self.ml.online_endpoints.get_keys(self.endpoint)
        secret = getattr(keys, "primary_key", None) or getattr(keys, "access_token", None)
        github.mask(secret or "")
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "azureml-model-deployment": name, **({"Authorization": f"Bearer {secret}"} if secret else {})}
        custom = transport()
        client = PipelineClient(url, retry_total=2, **({"transport": custom} if custom else {}))
        try:
            response = client.send_request(HttpRequest("POST", url, json=body, headers=headers))
            text = response.text()
        except AzureError as e:
            raise CheckFailed(f"the smoke request to {name} failed: {error_text(e)}") from None
        if response.status_code != 200:
            raise CheckFailed(f"the smoke request to {name} failed (HTTP {response.status_code}): "
                              f"{' '.join(text.split())[:200] or response.reason}")
        try:
            json.loads(text)
        except ValueError:
            raise CheckFailed(f"the smoke request to {name} did not answer JSON: {text[:100]!r}") from None

    def _verify(self, s: dict[str, Any]) -> None:
        """Read back what serves: each deployment's image, the traffic and the mirror traffic, as planned."""
        self._environments.clear()
        after = self.read()
        if after is None:
            raise CheckFailed(f"the endpoint {self.endpoint} is gone")
        for name, image in s["images"].items():
            served = after["deployments"].get(name, {}).get("image")
            if served != image:
                raise CheckFailed(f"the deployment {name} serves {served}, not the planned {image}")
        verify_models({n: e["artifact"] for n, e in after["deployments"].items()}, s["models"])
        if after["traffic"] != s["traffic"]:
            raise CheckFailed(f"the endpoint's traffic is {after['traffic']}, not the planned {s['traffic']}")
        if after["mirror"] != s["mirror"]:
            raise CheckFailed(f"the endpoint's mirror traffic is {after['mirror']}, not the planned {s['mirror']}")

    def _bake(self, name: str, body: dict[str, Any]) -> None:
        """Keep checking the canary for bake_seconds: still provisioned, still answering."""
        deadline = time.monotonic() + self.azure.bake_seconds
        print(f"  baking {name} for {self.azure.bake_seconds} s", flush=True)
        while True:
            with translated(f"read the deployment {name}"):
                state = str(self.ml.online_deployments.get(name, self.endpoint).provisioning_state or "")
            if not state.lower().endswith("succeeded"):
                raise CheckFailed(f"the deployment {name} went {state} while it baked")
            self._smoke(name, body)
            if time.monotonic() >= deadline:
                return
            time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))

    def _delete(self, names: list[str]) -> None:
        """Delete replaced deployments (they take no traffic any more); a failure leaves a leftover the
        next deploy deletes, and is a warning: what serves was verified."""
        pollers = []
        for name in names:
            print(f"  Deleting deployment {name}", flush=True)
            try:
                with translated(f"delete the deployment {name}"):
                    pollers.append((name, self.ml.online_deployments.begin_delete(name, self.endpoint)))
            except MldeployError as e:
                github.warning(f"{e.message} (the next deploy deletes it)")
        for name, poller in pollers:
            try:
                with translated(f"delete the deployment {name}"):
                    wait(poller, f"deleting {name}", self.azure.wait_seconds, POLL_SECONDS)
            except MldeployError as e:
                github.warning(f"{e.message} (the next deploy deletes it)")
                continue
            try:
                self._delete_autoscale(name)
            except MldeployError as e:
                github.warning(f"{e.message} (it scales a deployment that is gone: delete it in the portal)")

    def _restore(self, previous: dict[str, Any] | None, s: dict[str, Any], done: dict[str, bool]) -> str:
        """Put back what served before and delete what this run added; say what happened, in the words
        the failure message ends with."""
        if previous is None:
            if self.read() is None:
                return "rolled back: no endpoint was left behind"
            with translated(f"delete the endpoint {self.endpoint}"):
                wait(self.ml.online_endpoints.begin_delete(self.endpoint), f"deleting {self.endpoint}",
                     self.azure.wait_seconds, POLL_SECONDS)
            if s["autoscale"]:
                self._delete_autoscale(s["new"])
            return "rolled back: the new endpoint was deleted"
        if done["traffic"]:
            self._put_endpoint(self.read(), previous["traffic"], previous["mirror"])
        if done["deployment"]:
            with translated(f"delete the deployment {s['new']}"):
                wait(self.ml.online_deployments.begin_delete(s["new"], self.endpoint), f"deleting {s['new']}",
                     self.azure.wait_seconds, POLL_SECONDS)
            if s["autoscale"]:
                self._delete_autoscale(s["new"])
        before = ", ".join(f"{slot} {e['traffic']}%" for slot, e in previous["slots"].items() if e["traffic"])
        removed = f"; {s['new']} was deleted" if done["deployment"] else ""
        return f"rolled back: the endpoint serves as before ({before or 'no traffic'}){removed}"

    # -- monitoring -----------------------------------------------------------------------------------
    def slot_metrics(self, window: float, pr: int | None = None) -> Collected:
        """Requests and errors from RequestsPerMinute split by deployment, statusCode and modelStatusCode:
        an error is a 5xx answer, or a model's 5xx that Azure ML passed on as 424. Latency p50/p99 are
        the minutes' RequestLatency_P50/P99 weighted by that minute's requests (Azure Monitor keeps
        percentiles per minute only)."""
        from mldeploy.deploy.azure import metric_series, workspace
        from mldeploy.deploy.azureml_monitor import ENDPOINT_METRICS
        from mldeploy.monitor.canary import SlotStats
        from mldeploy.monitor.metrics import Collected

        current = self.read()
        canary = self.compared(current, pr)  # no endpoint or no canary: NoCanary, in one line
        assert current is not None
        slots = current["slots"]
        names = {slots[slot]["deployment"]: slot for slot in ("production", canary)}
        which = " or ".join(f"deployment eq '{name}'" for name in names)
        subscription = workspace(self.cfg)[0]
        resource_id = current["entity"].id
        stats = {slot: SlotStats(slot) for slot in names.values()}
        per_minute: dict[str, dict] = {slot: {} for slot in names.values()}
        for series in metric_series(subscription, resource_id, ENDPOINT_METRICS, ["RequestsPerMinute"], "Total",
                                    f"{which} and statusCode eq '*' and modelStatusCode eq '*'", window,
                                    f"read the Azure Monitor metrics of {self.endpoint}"):
            slot = names.get(series["dimensions"].get("deployment"))
            if not slot:
                continue
            dims = series["dimensions"]
            failed = str(dims.get("statuscode", "")).startswith("5") or str(dims.get("modelstatuscode", "")).startswith("5")
            for minute, count in series["values"]:
                per_minute[slot][minute] = per_minute[slot].get(minute, 0) + count
                stats[slot].requests += int(count)
                stats[slot].errors += int(count) if failed else 0
        for series in metric_series(subscription, resource_id, ENDPOINT_METRICS, ["RequestLatency_P50", "RequestLatency_P99"],
                                    "Average", which, window, f"read the Azure Monitor latency of {self.endpoint}"):
            slot = names.get(series["dimensions"].get("deployment"))
            if slot and series["values"]:
                weights = [per_minute[slot].get(minute, 0) for minute, _ in series["values"]]
                if not sum(weights):  # latency without counted requests: every minute alike
                    weights = [1] * len(weights)
                value = sum(w * v for w, (_, v) in zip(weights, series["values"])) / sum(weights)
                setattr(stats[slot], "p50_ms" if series["metric"].endswith("P50") else "p99_ms", value)
        return Collected(stats["production"], stats[canary], window,
                         f"Azure Monitor online endpoint {self.endpoint}",
                         notes=["prediction divergence not measured: Azure ML data collection is not read yet"])

    def monitor_plan(self, cfg: Config, config_file: str | None = None) -> SetupPlan:
        """Azure Monitor metric alerts on the endpoint and each slot's deployment, and an action group."""
        from mldeploy.deploy import azureml_monitor

        return azureml_monitor.plan(cfg, self)

    @classmethod
    def doctor(cls, deploy: DeploySection) -> list[tuple[str, bool, str]]:
        return azure_cloud.doctor(deploy)
