"""Vertex AI online endpoints: slots are deployed models, the canary share is the trafficSplit.

    endpoint <name> (display name; labelled mldeploy-endpoint)
        deployed model "production"      (model <name>-<digest12>)   traffic 100 - canaries
        deployed model "canary[-prN]"    (model <name>-<digest12>)   traffic N

A slot is the display name of its deployed model; a model (our image as a custom container: port
8080, predict route /predict, health route /health, which Vertex passes to the server as
AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE) is uploaded once per endpoint and digest, and reused.
A canary deploy adds a deployed model with `trafficSplit {"0": N, production: 100 - N, ...}` (a pull
request's canary is its own deployed model, so parallel PRs never touch each other); a deploy to a
slot that already serves another image deploys the new model next to the old one, moves the
slot's share to it, and only then undeploys the old one. A production deploy or a promote deploys
production anew with 100% and then undeploys the old production and every canary (they were
measured against the old production). A deployed model's display name cannot change (MutateDeployedModel
changes replica counts only), so a promote deploys the canary's model as a new "production" next to
the serving ones rather than renaming the canary; the canary keeps its share until that one is
ready. A rollback moves the canary's share back to production and undeploys the canary.

After every change: read the endpoint back (each deployed model's image must be the digest planned
and the trafficSplit the planned one), then smoke requests through the endpoint. Vertex routes a
request by trafficSplit only (no call reaches one chosen deployed model), so the smoke sends up to
N requests, N chosen so that a deployed model taking p% of the traffic answers at least one of them
with probability 99.9%; every answer must be a 200, and one of them must come from the new deployed
model (Vertex names it in `deployedModelId`). A deployed model taking 0% cannot be reached: then
only Vertex's own readiness check (its deploy waits for the health route) vouches for it.
On a failure the previous trafficSplit is restored and what was deployed is undeployed (a new
endpoint is deleted): the old deployed models are only undeployed after the checks pass.
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Any

from mldeploy import github
from mldeploy.deploy import Desired, Plan, canary_shares, gcp
from mldeploy.deploy.base import (
    MODEL_SHA256,
    Model,
    Slot,
    Status,
    Target,
    model_env,
    plan_model,
    slot_models,
    verify_models,
)
from mldeploy.deploy.gcp import translated
from mldeploy.errors import CheckFailed, MldeployError, UsageError

if TYPE_CHECKING:
    from mldeploy.config import Config, DeploySection
    from mldeploy.monitor.metrics import Collected
    from mldeploy.monitor.setup import SetupPlan

SLOT = re.compile(r"^(production|canary|canary-pr\d+)$")
IMAGE = re.compile(r"^([a-z0-9-]+-docker\.pkg\.dev|([a-z]+\.)?gcr\.io)/[^@\s]+@sha256:[0-9a-f]{64}$")
PORT, PREDICT_ROUTE, HEALTH_ROUTE = 8080, "/predict", "/health"
SMOKE_MISS = 0.001       # the chance a healthy deployed model is never reached by the smoke requests
# Cloud Monitoring: the endpoint's series (canary analysis and alert policies read them)
RESPONSES = "aiplatform.googleapis.com/prediction/online/response_count"
LATENCIES = "aiplatform.googleapis.com/prediction/online/prediction_latencies"
TOTAL = ' AND metric.labels.latency_type = "total"'   # the whole request, not the model alone
ALERT_SERIES = {"5xx": (RESPONSES, ' AND metric.labels.response_code = starts_with("5")'),
                "latency p99": (LATENCIES, TOTAL)}
SMOKE_MAX = 1000         # requests at most (a 0.7% share still gets 99.9%)


def smoke_tries(share: int) -> int:
    """Requests through the endpoint after which a deployed model with this share answered one of
    them with probability 1 - SMOKE_MISS (0 for a 0% share: no request can reach it)."""
    if share <= 0:
        return 0
    if share >= 100:
        return 1
    return min(SMOKE_MAX, math.ceil(math.log(SMOKE_MISS) / math.log(1 - share / 100)))


def instances_of(body: dict[str, Any]) -> list[Any]:
    """The smoke body ({"inputs": {name: rows}}) as Vertex instances: one object per row, by name."""
    inputs = body.get("inputs", {})
    if not isinstance(inputs, dict):
        return inputs if isinstance(inputs, list) else [inputs]
    rows = max((len(v) for v in inputs.values() if isinstance(v, list)), default=1) or 1
    return [{name: (value[i] if isinstance(value, list) and len(value) == rows else value)
             for name, value in inputs.items()} for i in range(rows)]


def artifact_of(model: Any) -> Model | None:
    """The artifact a Vertex AI model is handed (artifactUri, AIP_STORAGE_URI) and the hash its server checks."""
    env = {e.name: e.value for e in model.container_spec.env}
    return Model(model.artifact_uri, env.get(MODEL_SHA256, "")) if model.artifact_uri or MODEL_SHA256 in env else None


class VertexTarget(Target):
    name = "vertex"

    def __init__(self, endpoint: str, cfg: DeploySection) -> None:
        super().__init__(endpoint, cfg)
        self.gcp = cfg.gcp
        self.vertex = cfg.gcp.vertex
        self.region = gcp.region(cfg)
        self.creds, found = gcp.credentials()
        self.project = gcp.project(cfg, found)
        self.parent = f"projects/{self.project}/locations/{self.region}"
        self._clients: dict[str, Any] = {}
        self._images: dict[str, str] = {}
        self._artifacts: dict[str, Model | None] = {}   # model resource -> the artifact it is handed

    # -- clients ----------------------------------------------------------------------------------
    def _client(self, kind: str) -> Any:
        if kind not in self._clients:
            from google.cloud import aiplatform_v1

            cls = {"models": aiplatform_v1.ModelServiceClient, "endpoints": aiplatform_v1.EndpointServiceClient,
                   "predict": aiplatform_v1.PredictionServiceClient}[kind]
            self._clients[kind] = gcp.client(cls, self.creds, self.region)
        return self._clients[kind]

    # -- what serves now --------------------------------------------------------------------------
    def _find_endpoint(self) -> Any:
        with translated(f"look up the Vertex AI endpoint {self.endpoint}"):
            found = [e for e in self._client("endpoints").list_endpoints(
                request={"parent": self.parent, "filter": f'display_name="{self.endpoint}"'}, retry=gcp.read_retry())
                if e.display_name == self.endpoint]
        if len(found) > 1:
            raise UsageError(f"{len(found)} Vertex AI endpoints in {self.region} are named {self.endpoint}",
                             hint="delete the extra ones, or deploy under another endpoint name")
        return found[0] if found else None

    def _image(self, model: str) -> str:
        """The container image of a model (resource name, maybe with @version)."""
        if model not in self._images:
            with translated(f"read the Vertex AI model {model}"):
                found = self._client("models").get_model(name=model, retry=gcp.read_retry())
            self._images[model] = found.container_spec.image_uri
            self._artifacts[model] = artifact_of(found)
        return self._images[model]

    def _artifact(self, model: str) -> Model | None:
        self._image(model)
        return self._artifacts[model]

    def read(self) -> dict[str, Any] | None:
        """The endpoint: per slot its deployed model, model, image and share; leftovers (a second
        deployed model of a slot, at 0%) as stale; deployed models that are not ours as foreign."""
        ep = self._find_endpoint()
        if ep is None:
            return None
        split = {k: int(v) for k, v in ep.traffic_split.items()}
        slots: dict[str, dict[str, Any]] = {}
        stale, foreign = [], []
        ordered = sorted(ep.deployed_models, key=lambda d: (split.get(d.id, 0), d.create_time.timestamp()
                                                            if d.create_time else 0), reverse=True)
        for dm in ordered:
            entry = {"id": dm.id, "slot": dm.display_name, "model": dm.model, "image": self._image(dm.model),
                     "artifact": self._artifact(dm.model),
                     "traffic": split.get(dm.id, 0),
                     "healthy": not ("status" in dm and dm.status.available_replica_count == 0)}
            if not SLOT.match(dm.display_name):
                foreign.append(entry)
            elif dm.display_name in slots:
                stale.append(entry)
            else:
                slots[dm.display_name] = entry
        return {"name": ep.name, "slots": slots, "stale": stale, "foreign": foreign, "split": split}

    # -- the interface ----------------------------------------------------------------------------
    def plan(self, desired: Desired) -> Plan:
        if desired.model and not desired.model.uri.startswith("gs://"):
            raise UsageError(f"Vertex AI hands a model over from Cloud Storage only, not {desired.model.uri}",
                             hint="set storage.uri to gs://BUCKET/PREFIX and publish again")
        if not IMAGE.match(desired.image):
            raise UsageError(f"the image {desired.image} is not in Artifact Registry; Vertex AI runs custom "
                             "containers from Artifact Registry (or gcr.io)",
                             hint="set image.registry to LOCATION-docker.pkg.dev/PROJECT/REPOSITORY and build again")
        self._resources()  # a bad machine spec fails here, before anything is made
        current = self.read()
        slots = current["slots"] if current else {}
        if "production" not in slots or desired.slot == "production":
            images = {"production": desired.image}
            share = {"production": 100}
        else:
            share = canary_shares({s: e["traffic"] for s, e in slots.items()}, desired.slot, desired.traffic)
            images = {s: desired.image if s == desired.slot else slots[s]["image"] for s in share}
        return self.layout(desired, current, images, share)

    def apply(self, plan: Plan) -> Status:
        if plan.empty:
            return self.changed(False)
        d, current = plan.desired, plan.state["current"]
        images, share, deploy = plan.state["images"], plan.traffic_after, plan.state["deploy"]
        artifacts = plan.state["models"]
        models = {slot: self._ensure_model(slot, images[slot], artifacts[slot]) for slot in deploy}
        endpoint = current["name"] if current else self._create_endpoint()
        added: dict[str, str] = {}   # slot -> deployed model id deployed now
        kept = self._kept(current, images, artifacts)
        with self.changing(current, images.values(), lambda: self._restore(current, endpoint)) as guard:
            guard.check()  # deployModel and a traffic update take no etag that covers both
            ep = self._get(endpoint)
            split = {dm.id: 0 for dm in ep.deployed_models}      # replaced, removed and stale ones: 0%
            split |= {kept[s]: share[s] for s in kept}
            if deploy:  # at most one: the desired slot (or production, on a first deploy)
                (slot,) = deploy
                added[slot] = self._deploy(endpoint, slot, models[slot], {**split, "0": share[slot]})
            elif split != {k: int(v) for k, v in ep.traffic_split.items()}:
                self._set_traffic(endpoint, split)
            ids = {**kept, **added}
            self._verify(endpoint, images, share, ids, artifacts)
            if d.smoke:
                slot = d.slot if d.slot in share else next(iter(deploy), "production")
                self._smoke(endpoint, slot, ids[slot], share[slot], d.smoke)
            if d.slot.startswith("canary") and d.slot in added and self.gcp.bake_seconds:
                self._bake(endpoint, d.slot, ids[d.slot], share[d.slot], d.smoke)
        for entry in plan.state["remove"]:  # what serves is done and verified: a leftover is not a failure
            try:
                self._undeploy(endpoint, entry)
            except MldeployError as e:
                github.warning(f"{entry['slot']} ({entry['id']}) is still deployed, taking no traffic: {e.message}; "
                               "the next deploy removes it", title="mldeploy deploy")
        self._verify(endpoint, images, share, {s: i for s, i in ids.items() if s in images}, artifacts)
        return self.changed(True)

    def _status(self, current: dict[str, Any] | None) -> Status:
        if current is None:
            return Status(self.endpoint)
        return Status(self.endpoint, f"https://{self.region}-aiplatform.googleapis.com/v1/{current['name']}:predict",
                      {slot: Slot(s["image"], s["traffic"], s["healthy"], {"deployed_model": s["id"]},
                                  model=s["artifact"])
                       for slot, s in current["slots"].items()}, {"name": current["name"]})

    # -- planning ---------------------------------------------------------------------------------
    @staticmethod
    def _kept(current: dict[str, Any] | None, images: dict[str, str],
              artifacts: dict[str, Model | None]) -> dict[str, str]:
        """slot -> the id of its deployed model that stays (same slot, same image, same artifact)."""
        slots = current["slots"] if current else {}
        return {s: slots[s]["id"] for s in images
                if s in slots and slots[s]["image"] == images[s] and slots[s]["artifact"] == artifacts[s]}

    def layout(self, d: Desired, current: dict[str, Any] | None, images: dict[str, str],
               share: dict[str, int]) -> Plan:
        if current and current["foreign"]:
            names = ", ".join(f"{e['slot']!r} ({e['id']})" for e in current["foreign"])
            raise UsageError(f"the Vertex AI endpoint {self.endpoint} serves deployed models mldeploy does not "
                             f"manage: {names}", hint="undeploy them, or deploy under another endpoint name")
        slots = current["slots"] if current else {}
        plan = Plan(self.name, d, traffic_before={s: e["traffic"] for s, e in slots.items()}, traffic_after=share)
        artifacts = slot_models(d, {s: e["artifact"] for s, e in slots.items()}, images)
        kept = self._kept(current, images, artifacts)
        deploy = [s for s in images if s not in kept]
        remove = [e for s, e in slots.items() if kept.get(s) != e["id"]] + (current["stale"] if current else [])
        plan.state = {"current": current, "images": images, "models": artifacts, "deploy": deploy, "remove": remove}
        for slot in deploy:
            name = self._model_name(images[slot], artifacts[slot])
            if self._find_model(images[slot], artifacts[slot]) is None:
                plan.add("create", f"vertex model {name}", "image", new=images[slot])
        if current is None:
            plan.add("create", f"vertex endpoint {self.endpoint}", "region", new=self.region)
        for slot in deploy:
            plan.add("create", f"vertex deployed model {slot}", "model",
                     new=self._model_name(images[slot], artifacts[slot]))
            if slot in slots:
                plan_model(plan, f"vertex slot {slot}", slots[slot]["artifact"], artifacts[slot])
        split_before = {s: e["traffic"] for s, e in slots.items()}
        if current is not None and split_before != share:
            plan.add("update", f"vertex endpoint {self.endpoint}", "traffic split", split_before, share)
        for entry in remove:
            plan.add("delete", f"vertex deployed model {entry['slot']} ({entry['id']})")
        return plan

    # -- models and endpoint ----------------------------------------------------------------------
    def _model_name(self, image: str, artifact: Model | None) -> str:
        name = f"{self.endpoint}-{image.rsplit('@', 1)[-1].removeprefix('sha256:')[:12]}"
        return f"{name[:115]}-{artifact.sha256[:12]}" if artifact else name[:128]

    def _find_model(self, image: str, artifact: Model | None) -> str | None:
        """The resource name of our model of this image and artifact for this endpoint (labels, then the
        image itself and the artifact it is handed)."""
        mine = gcp.labels(self.endpoint, image=image)
        query = " AND ".join(f'labels.{k}="{mine[k]}"' for k in ("mldeploy-endpoint", "mldeploy-image"))
        with translated(f"look up the Vertex AI model of {image}"):
            for model in self._client("models").list_models(request={"parent": self.parent, "filter": query},
                                                            retry=gcp.read_retry()):
                spec = model.container_spec
                if (spec.image_uri == image and spec.predict_route == PREDICT_ROUTE and spec.health_route == HEALTH_ROUTE
                        and [p.container_port for p in spec.ports] == [PORT] and artifact_of(model) == artifact):
                    self._images[model.name], self._artifacts[model.name] = image, artifact
                    return model.name
        return None

    def _ensure_model(self, slot: str, image: str, artifact: Model | None) -> str:
        found = self._find_model(image, artifact)
        if found:
            return found
        from google.cloud import aiplatform_v1 as v1

        name = self._model_name(image, artifact)
        env = {"MLDEPLOY_MODEL_NAME": self.endpoint, **model_env(artifact, uri=False)}
        spec = v1.ModelContainerSpec(image_uri=image, ports=[v1.Port(container_port=PORT)],
                                     predict_route=PREDICT_ROUTE, health_route=HEALTH_ROUTE,
                                     env=[v1.EnvVar(name=k, value=v) for k, v in env.items()])
        # artifactUri: Vertex hands the server AIP_STORAGE_URI (the server fetches and verifies it by the hash)
        with translated(f"upload the Vertex AI model {name}"):
            operation = self._client("models").upload_model(parent=self.parent, model=v1.Model(
                display_name=name, labels=gcp.labels(self.endpoint, slot, image), container_spec=spec,
                artifact_uri=artifact.uri if artifact else "", description=f"mldeploy: {image}"))
        model = gcp.wait(operation, f"upload the Vertex AI model {name}", self.gcp.wait_seconds).model
        self._images[model], self._artifacts[model] = image, artifact
        print(f"  uploaded Vertex AI model {name} ({model})", flush=True)
        return model

    def _create_endpoint(self) -> str:
        from google.cloud import aiplatform_v1 as v1

        with translated(f"create the Vertex AI endpoint {self.endpoint}"):
            operation = self._client("endpoints").create_endpoint(parent=self.parent, endpoint=v1.Endpoint(
                display_name=self.endpoint, labels=gcp.labels(self.endpoint),
                description="mldeploy: slots are deployed models named production, canary, canary-pr<N>"))
        endpoint = gcp.wait(operation, f"create the Vertex AI endpoint {self.endpoint}", self.gcp.wait_seconds)
        print(f"  created Vertex AI endpoint {self.endpoint} ({endpoint.name})", flush=True)
        return endpoint.name

    # -- traffic and deployed models ---------------------------------------------------------------
    def _get(self, endpoint: str) -> Any:
        with translated(f"read the Vertex AI endpoint {self.endpoint}"):
            return self._client("endpoints").get_endpoint(name=endpoint, retry=gcp.read_retry())

    def _resources(self) -> Any:
        from google.cloud import aiplatform_v1 as v1

        vx = self.vertex
        known = sorted(a.name for a in v1.AcceleratorType  # type: ignore[attr-defined]  # a proto-plus enum is iterable
                       if a.name != "ACCELERATOR_TYPE_UNSPECIFIED")
        if vx.accelerator_type and vx.accelerator_type not in known:
            raise UsageError(f"deploy.gcp.vertex.accelerator_type {vx.accelerator_type!r} is not a Vertex AI "
                             "accelerator", hint=f"one of {', '.join(known)}")
        machine = v1.MachineSpec(machine_type=vx.machine_type)
        if vx.accelerator_type:
            machine.accelerator_type = vx.accelerator_type  # type: ignore[assignment]  # proto-plus takes the name
            machine.accelerator_count = vx.accelerator_count or 1
        return v1.DedicatedResources(machine_spec=machine, min_replica_count=vx.min_replicas,
                                     max_replica_count=max(vx.max_replicas or vx.min_replicas, vx.min_replicas))

    def _deploy(self, endpoint: str, slot: str, model: str, split: dict[str, int]) -> str:
        from google.cloud import aiplatform_v1 as v1

        deployed = v1.DeployedModel(display_name=slot, model=model, dedicated_resources=self._resources())
        if self.vertex.service_account:
            deployed.service_account = self.vertex.service_account
        doing = f"deploy {slot} to the Vertex AI endpoint {self.endpoint}"
        with translated(doing):
            operation = self._client("endpoints").deploy_model(endpoint=endpoint, deployed_model=deployed,
                                                               traffic_split=split)
        result = gcp.wait(operation, doing, self.gcp.wait_seconds)
        print(f"  deployed {slot} ({result.deployed_model.id}) to {self.endpoint}", flush=True)
        return result.deployed_model.id

    def _set_traffic(self, endpoint: str, split: dict[str, int]) -> None:
        from google.cloud import aiplatform_v1 as v1
        from google.protobuf import field_mask_pb2

        with translated(f"change the traffic of {self.endpoint}"):
            self._client("endpoints").update_endpoint(endpoint=v1.Endpoint(name=endpoint, traffic_split=split),
                                                      update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]))

    def _undeploy(self, endpoint: str, entry: dict[str, Any], split: dict[str, int] | None = None) -> None:
        doing = f"undeploy {entry['slot']} ({entry['id']}) from {self.endpoint}"
        with translated(doing):
            operation = self._client("endpoints").undeploy_model(endpoint=endpoint, deployed_model_id=entry["id"],
                                                                 traffic_split=split or {})
        gcp.wait(operation, doing, self.gcp.wait_seconds)
        print(f"  undeployed {entry['slot']} ({entry['id']}) from {self.endpoint}", flush=True)

    # -- checks -----------------------------------------------------------------------------------
    def _verify(self, endpoint: str, images: dict[str, str], share: dict[str, int],
                ids: dict[str, str] | None = None, artifacts: dict[str, Model | None] | None = None) -> None:
        """The endpoint serves the planned digest in every slot at the planned share (by deployed
        model id while old ones are still deployed at 0%); every other deployed model takes 0%."""
        ep = self._get(endpoint)
        split = {k: int(v) for k, v in ep.traffic_split.items()}
        by_id = {dm.id: dm for dm in ep.deployed_models}
        if ids is None:
            slots = [dm.display_name for dm in ep.deployed_models]
            if sorted(slots) != sorted(images):
                raise CheckFailed(f"the endpoint {self.endpoint} has deployed models {sorted(slots)}, "
                                  f"not the planned {sorted(images)}")
            ids = {dm.display_name: dm.id for dm in ep.deployed_models}
        served, traffic = {}, {}
        for slot, dm_id in ids.items():
            if dm_id not in by_id:
                raise CheckFailed(f"the deployed model {dm_id} ({slot}) is not on the endpoint {self.endpoint}")
            served[slot], traffic[slot] = self._image(by_id[dm_id].model), split.get(dm_id, 0)
        if served != images:
            raise CheckFailed(f"the endpoint serves {served}, not the planned {images}")
        if traffic != share:
            raise CheckFailed(f"the endpoint's traffic is {traffic}, not the planned {share}")
        if artifacts is not None:
            verify_models({slot: self._artifact(by_id[dm_id].model) for slot, dm_id in ids.items()}, artifacts)
        extra = {k: v for k, v in split.items() if k not in ids.values() and v}
        if extra:
            raise CheckFailed(f"deployed models {sorted(extra)} of {self.endpoint} still take traffic ({extra})")

    def _smoke(self, endpoint: str, slot: str, dm_id: str, share: int, body: dict[str, Any],
               quiet: bool = False) -> None:
        from google.api_core import exceptions

        tries = smoke_tries(share)
        if not tries:
            if not quiet:
                print(f"  smoke: {slot} takes 0% of the traffic, which no request can reach; "
                      "Vertex's readiness check passed", flush=True)
            return
        instances = instances_of(body)
        for n in range(1, tries + 1):
            with translated(f"send a smoke request through {self.endpoint}"):
                try:
                    answer = self._client("predict").predict(endpoint=endpoint, instances=instances)
                except exceptions.GoogleAPICallError as e:  # any refusal is a failed check, not bad usage
                    raise CheckFailed(f"smoke request {n} through {self.endpoint} got {gcp.status_of(e)}: "
                                      f"{gcp.message_of(e)}") from None
            if answer.deployed_model_id == dm_id:
                if not quiet:
                    print(f"  smoke: {slot} ({dm_id}) answered request {n} of at most {tries}; all 200", flush=True)
                return
        raise CheckFailed(f"none of {tries} smoke requests through {self.endpoint} reached {slot} ({dm_id}), "
                          f"which should take {share}% of the traffic")

    def _bake(self, endpoint: str, slot: str, dm_id: str, share: int, body: dict[str, Any]) -> None:
        """Keep checking the canary for deploy.gcp.bake_seconds: still deployed at its share, and answering."""
        deadline = time.monotonic() + self.gcp.bake_seconds
        print(f"  baking {slot} for {self.gcp.bake_seconds} s", flush=True)
        rounds = 0
        while time.monotonic() < deadline:
            time.sleep(min(gcp.POLL_SECONDS, max(deadline - time.monotonic(), 0)))
            ep = self._get(endpoint)
            if int(ep.traffic_split.get(dm_id, 0)) != share:
                raise CheckFailed(f"{slot} ({dm_id}) no longer takes {share}% of {self.endpoint} while it baked")
            if body:
                try:
                    self._smoke(endpoint, slot, dm_id, share, body, quiet=True)
                except CheckFailed as e:
                    raise CheckFailed(f"{slot} failed while it baked: {e.message}") from None
            rounds += 1
        print(f"  {slot} baked: {rounds} checks passed", flush=True)

    def _restore(self, previous: dict[str, Any] | None, endpoint: str) -> str:
        """Put back what served before: its traffic split, and no deployed model it did not have (one a
        failed deploy left half-made included); say so in the words the failure message ends with."""
        ep = self._get(endpoint)
        if previous is None:
            for dm in ep.deployed_models:
                self._undeploy(endpoint, {"slot": dm.display_name, "id": dm.id})
            with translated(f"delete the new endpoint {self.endpoint}"):
                operation = self._client("endpoints").delete_endpoint(name=endpoint)
            gcp.wait(operation, f"delete the new endpoint {self.endpoint}", self.gcp.wait_seconds)
            return "rolled back: the new endpoint was deleted"
        known = {e["id"]: e["traffic"] for e in [*previous["slots"].values(), *previous["stale"]]}
        before = {i: t for i, t in known.items() if i in {dm.id for dm in ep.deployed_models}}
        new = [{"slot": dm.display_name, "id": dm.id} for dm in ep.deployed_models if dm.id not in known]
        if {k: int(v) for k, v in ep.traffic_split.items() if k in before} != before or new:
            if new:  # one call moves the traffic back and takes the first new one away
                self._undeploy(endpoint, new[0], split=before)
                for entry in new[1:]:
                    self._undeploy(endpoint, entry)
            else:
                self._set_traffic(endpoint, before)
        shares = ", ".join(f"{s} {e['traffic']}%" for s, e in previous["slots"].items())
        return f"rolled back: the endpoint serves as before ({shares})"

    # -- monitoring -----------------------------------------------------------------------------------
    def _resource(self, current: dict[str, Any]) -> str:
        return (f'resource.type = "aiplatform.googleapis.com/Endpoint" AND resource.labels.location = '
                f'"{self.region}" AND resource.labels.endpoint_id = "{current["name"].rsplit("/", 1)[-1]}"')

    def slot_metrics(self, window: float, pr: int | None = None) -> Collected:
        """Cloud Monitoring response_count (by response_code) and prediction_latencies (total) per
        deployed_model_id of the endpoint."""
        from mldeploy.monitor.metrics import Collected

        current = self.read()
        canary = self.compared(current, pr)  # no endpoint or no canary: NoCanary, in one line
        assert current is not None
        stats = gcp.cloud_monitoring_slot_stats(
            self.project, self._resource(current), "metric.labels.deployed_model_id",
            {slot: current["slots"][slot]["id"] for slot in ("production", canary)},
            (RESPONSES, "metric.labels.response_code"), (LATENCIES, TOTAL), window)
        return Collected(stats["production"], stats[canary], window,
                         f"Cloud Monitoring Vertex AI endpoint {self.endpoint} ({current['name'].rsplit('/', 1)[-1]})",
                         notes=["prediction divergence not measured: Vertex AI request-response logging is not read yet"])

    def monitor_plan(self, cfg: Config, config_file: str | None = None) -> SetupPlan:
        """A model deployment monitoring job (drift of each deployed model), and alert policies."""
        from mldeploy.deploy import gcp_alerts
        from mldeploy.deploy.vertex_monitor import monitoring_job
        from mldeploy.monitor.setup import SetupPlan

        result = SetupPlan(f"gcp {self.name}", self.endpoint)
        current = self.read()
        if current is None or not current["slots"]:
            raise UsageError(f"the Vertex AI endpoint {self.endpoint} does not exist or serves nothing",
                             hint="deploy it first (`mldeploy deploy`)")
        monitoring_job(cfg, self.endpoint, self, current, result)
        gcp_alerts.plan(cfg, self.endpoint, self.project, self.name, ALERT_SERIES, self._resource(current), result)
        return result

    @classmethod
    def doctor(cls, deploy: DeploySection) -> list[tuple[str, bool, str]]:
        def list_endpoints(creds: Any, location: str, parent: str) -> None:
            from google.cloud import aiplatform_v1

            next(iter(gcp.client(aiplatform_v1.EndpointServiceClient, creds, location).list_endpoints(
                request={"parent": parent, "page_size": 1})), None)

        return gcp.doctor(deploy, {"aiplatform.endpoints.list": list_endpoints})
