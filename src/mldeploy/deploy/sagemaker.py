"""SageMaker real-time endpoints: slots are production variants, the canary share is their weights.

    endpoint <name>  ->  endpoint config <name>-<hash of its variants>
                            variant production     (model <name>-<digest12>)   weight 100 - canaries
                            variant canary[-prN]   (model <name>-<digest12>)   weight N

A canary deploy adds a variant (a pull request's canary is its own variant, so parallel PRs never
touch each other); a production deploy or a promote leaves one variant serving 100% and ends every
canary (they were measured against the old production); a rollback removes canaries. Changes go
through a new endpoint config and UpdateEndpoint, which SageMaker applies without downtime and
undoes by itself when the new variants fail to start; a change of weights alone goes through
UpdateEndpointWeightsAndCapacities. With `strategy: guardrails` a production update is a blue/green
deployment (canary step, bake, then all) that SageMaker rolls back when our alarms fire.
After every change: read back each variant's image and weight, then a smoke request to the new
variant; on a mismatch, a failed smoke or an alarm during the bake, the previous config is restored.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import TYPE_CHECKING, Any

from mldeploy.deploy import Desired, Plan, canary_shares
from mldeploy.deploy import aws as aws_cloud
from mldeploy.deploy.aws import (
    alarm_spec,
    bake,
    client,
    ecr_has_image,
    error_code,
    resource_name,
    tag_list,
    tags,
    translated,
)
from mldeploy.deploy.base import (
    MODEL_SHA256,
    Model,
    Slot,
    Status,
    Target,
    digest_of,
    model_env,
    plan_model,
    slot_models,
    verify_models,
)
from mldeploy.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from mldeploy.config import Config, DeploySection
    from mldeploy.monitor.metrics import Collected
    from mldeploy.monitor.setup import SetupPlan

POLL_SECONDS = float(os.environ.get("MLDEPLOY_POLL_SECONDS", "15"))


def percentages(weights: dict[str, float]) -> dict[str, int]:
    total = sum(weights.values()) or 1.0
    return {slot: round(100 * w / total) for slot, w in weights.items()}


def artifact_of(container: dict[str, Any]) -> Model | None:
    """The artifact a SageMaker model mounts (ModelDataSource) with the hash its server verifies."""
    uri = container.get("ModelDataSource", {}).get("S3DataSource", {}).get("S3Uri")
    sha = container.get("Environment", {}).get(MODEL_SHA256)
    return Model((uri or "").rstrip("/"), sha or "") if uri or sha else None


class SageMakerTarget(Target):
    name = "sagemaker"

    def __init__(self, endpoint: str, cfg: DeploySection) -> None:
        super().__init__(resource_name(endpoint), cfg)
        self.aws = cfg.aws
        self.sm = client("sagemaker", cfg.region)
        self.region: str = self.sm.meta.region_name
        self.runtime = client("sagemaker-runtime", self.region)

    # -- what serves now --------------------------------------------------------------------------
    def read(self) -> dict[str, Any] | None:
        """The endpoint as SageMaker describes it: status, config, and per slot its model, image, share."""
        with translated(f"describe the SageMaker endpoint {self.endpoint}"):
            try:
                ep = self.sm.describe_endpoint(EndpointName=self.endpoint)
            except self.sm.exceptions.ClientError as e:
                if error_code(e) == "ValidationException" and "find endpoint" in str(e).lower():
                    return None
                raise
            config = self.sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
            weights = {v["VariantName"]: v.get("CurrentWeight", v.get("DesiredWeight", 0.0))
                       for v in ep.get("ProductionVariants", [])}
            slots = {}
            for v in config["ProductionVariants"]:
                container = self.sm.describe_model(ModelName=v["ModelName"])["PrimaryContainer"]
                slots[v["VariantName"]] = {"model": v["ModelName"], "image": container["Image"],
                                           "artifact": artifact_of(container)}
                weights.setdefault(v["VariantName"], v.get("InitialVariantWeight", 1.0))
        share = percentages({s: weights[s] for s in slots})
        for slot, entry in slots.items():
            entry["weight"] = share[slot]
        return {"status": ep["EndpointStatus"], "config": ep["EndpointConfigName"], "slots": slots,
                "failure": ep.get("FailureReason")}

    # -- the interface ----------------------------------------------------------------------------
    def plan(self, desired: Desired) -> Plan:
        if not ecr_has_image(desired.image, self.region):
            raise UsageError(f"the image {desired.image} is not in ECR",
                             hint="push it first: `mldeploy build --push` with image.registry set to your ECR registry")
        current = self.read()
        slots = current["slots"] if current else {}
        if "production" not in slots or desired.slot == "production":
            images = {"production": desired.image}
            share = {"production": 100}
        else:
            share = canary_shares({s: e["weight"] for s, e in slots.items()}, desired.slot, desired.traffic)
            images = {s: desired.image if s == desired.slot else slots[s]["image"] for s in share}
        return self.layout(desired, current, images, share)

    def apply(self, plan: Plan) -> Status:
        if plan.empty:
            return self.changed(False)
        d, current = plan.desired, plan.state["current"]
        images, models, share = plan.state["images"], plan.state["models"], plan.traffic_after
        for slot, image in images.items():
            self._ensure_model(slot, image, models[slot])
        was = {s: (e["image"], e["artifact"]) for s, e in (current or {}).get("slots", {}).items()}
        self._ensure_alarms(images, fresh={s for s, image in images.items() if was.get(s) != (image, models[s])})
        with self.changing(current, images.values(), lambda: self._restore(current)) as guard:
            if plan.state["weights_only"]:
                guard.check()
                self._set_weights(share)
            else:
                config = self._ensure_config(images, models, share)
                guard.check()  # UpdateEndpoint takes no precondition: this is the closest to one
                with translated(f"update the SageMaker endpoint {self.endpoint}"):
                    if current is None:
                        self.sm.create_endpoint(EndpointName=self.endpoint, EndpointConfigName=config,
                                                Tags=tag_list(tags(self.endpoint)))
                    else:
                        self._deregister_scaling(set(current["slots"]) - set(images))
                        self.sm.update_endpoint(EndpointName=self.endpoint, EndpointConfigName=config,
                                                **self._deployment_config(d, current))
            self._wait(plan.state.get("config"))
            self._verify(images, models, share)
            if d.smoke:
                self._smoke(d.slot, d.smoke)
            self._ensure_scaling(images)
            if d.slot.startswith("canary") and self.aws.bake_seconds:
                self._bake(d.slot)
        return self.changed(True)

    def _status(self, current: dict[str, Any] | None) -> Status:
        if current is None:
            return Status(self.endpoint)
        healthy = current["status"] == "InService"
        return Status(self.endpoint, f"https://runtime.sagemaker.{self.region}.amazonaws.com/endpoints/"
                                     f"{self.endpoint}/invocations",
                      {slot: Slot(s["image"], s["weight"], healthy, model=s["artifact"])
                       for slot, s in current["slots"].items()},
                      {"status": current["status"]})

    # -- planning ---------------------------------------------------------------------------------
    def layout(self, d: Desired, current: dict[str, Any] | None, images: dict[str, str],
               share: dict[str, int]) -> Plan:
        slots = current["slots"] if current else {}
        plan = Plan(self.name, d, traffic_before={s: e["weight"] for s, e in slots.items()}, traffic_after=share)
        models = slot_models(d, {s: e["artifact"] for s, e in slots.items()}, images)
        same_images = ({s: e["image"] for s, e in slots.items()} == images
                       and {s: e["artifact"] for s, e in slots.items()} == models)
        plan.state = {"current": current, "images": images, "models": models,
                      "weights_only": bool(current) and same_images}
        for slot, image in images.items():
            if not self._exists("describe_model", ModelName=self._model_name(image, models[slot])):
                plan.add("create", f"sagemaker model {self._model_name(image, models[slot])}", "image", new=image)
        for name in self._alarm_names(images):
            if name not in self._existing_alarms(images):
                plan.add("create", f"cloudwatch alarm {name}")
        if current is None:
            plan.state["config"] = self._config_name(images, models, share)
            plan.add("create", f"sagemaker endpoint-config {plan.state['config']}", "variants", new=share)
            plan.add("create", f"sagemaker endpoint {self.endpoint}")
        elif same_images:
            for slot, pct in share.items():
                if slots[slot]["weight"] != pct:
                    plan.add("update", f"sagemaker endpoint {self.endpoint}", f"variant {slot} weight",
                             slots[slot]["weight"], pct)
        else:
            plan.state["config"] = self._config_name(images, models, share)
            if not self._exists("describe_endpoint_config", EndpointConfigName=plan.state["config"]):
                plan.add("create", f"sagemaker endpoint-config {plan.state['config']}", "variants", new=share)
            plan.add("update", f"sagemaker endpoint {self.endpoint}", "endpoint config",
                     current["config"], plan.state["config"])
            for slot in images:
                if slot in slots and slots[slot]["image"] != images[slot]:
                    plan.add("update", f"sagemaker variant {slot}", "image", slots[slot]["image"], images[slot])
                if slot in slots:
                    plan_model(plan, f"sagemaker variant {slot}", slots[slot]["artifact"], models[slot])
            for slot in set(slots) - set(images):
                plan.add("delete", f"sagemaker variant {slot}")
            if self._deployment_config(d, current):
                plan.add("update", f"sagemaker endpoint {self.endpoint}", "deployment",
                         new=f"blue/green {self.aws.sagemaker.strategy}: canary {self._canary_step()}%, "
                             f"bake {self.aws.sagemaker.guardrails_wait_seconds} s, auto-rollback on alarms")
        return plan

    def _exists(self, call: str, **kwargs: str) -> bool:
        with translated(f"{call.replace('_', ' ')} {next(iter(kwargs.values()))}"):
            try:
                getattr(self.sm, call)(**kwargs)
                return True
            except self.sm.exceptions.ClientError as e:
                if error_code(e) == "ValidationException":
                    return False
                raise

    def _model_name(self, image: str, model: Model | None) -> str:
        """One SageMaker model per image and artifact (a model-only change is a new SageMaker model)."""
        return resource_name(self.endpoint, digest_of(image)[:12], model.sha256[:12] if model else "")

    def _variants(self, images: dict[str, str], models: dict[str, Model | None],
                  share: dict[str, int]) -> list[dict[str, Any]]:
        sm = self.aws.sagemaker
        variants = []
        for slot, image in images.items():
            v: dict[str, Any] = {"VariantName": slot, "ModelName": self._model_name(image, models[slot]),
                                 "InitialVariantWeight": float(share[slot])}
            if sm.serverless_memory_mb:
                v["ServerlessConfig"] = {"MemorySizeInMB": sm.serverless_memory_mb,
                                         "MaxConcurrency": sm.serverless_max_concurrency}
            else:
                v |= {"InstanceType": sm.instance_type, "InitialInstanceCount": sm.instance_count}
            variants.append(v)
        return variants

    def _data_capture(self) -> dict[str, Any]:
        sm = self.aws.sagemaker
        if not sm.data_capture_percent:
            return {}
        return {"DataCaptureConfig": {
            "EnableCapture": True, "InitialSamplingPercentage": sm.data_capture_percent,
            "DestinationS3Uri": sm.data_capture_s3,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}}

    def _config_name(self, images: dict[str, str], models: dict[str, Model | None], share: dict[str, int]) -> str:
        spec = json.dumps([self._variants(images, models, share), self._data_capture()], sort_keys=True)
        return resource_name(self.endpoint, hashlib.sha256(spec.encode()).hexdigest()[:12])

    def _canary_step(self) -> int:
        return min(max(self.aws.sagemaker.guardrails_canary_percent, 1), 50)

    def _deployment_config(self, d: Desired, current: dict[str, Any] | None) -> dict[str, Any]:
        """Guardrails: a production update shifts traffic blue/green and rolls back on our alarms."""
        sm = self.aws.sagemaker
        if sm.strategy != "guardrails" or d.slot != "production" or current is None:
            return {}
        step = {"Type": "CAPACITY_PERCENT", "Value": self._canary_step()}
        routing: dict[str, Any] = {"Type": sm.guardrails_routing, "WaitIntervalInSeconds": sm.guardrails_wait_seconds}
        routing["CanarySize" if sm.guardrails_routing == "CANARY" else "LinearStepSize"] = step
        return {"DeploymentConfig": {
            "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing,
                                      "TerminationWaitInSeconds": 300,
                                      "MaximumExecutionTimeoutInSeconds": self.aws.wait_seconds},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": n} for n in self._alarm_names({"production": ""})]}},
            "RetainAllVariantProperties": False}

    # -- applying ---------------------------------------------------------------------------------
    def _ensure_model(self, slot: str, image: str, model: Model | None) -> None:
        name = self._model_name(image, model)
        if self._exists("describe_model", ModelName=name):
            return
        container: dict[str, Any] = {"Image": image, "Mode": "SingleModel"}
        if model:  # SageMaker mounts the uncompressed prefix at /opt/ml/model; the hash makes the server verify it
            container |= {"ModelDataSource": {"S3DataSource": {"S3Uri": f"{model.uri}/", "S3DataType": "S3Prefix",
                                                                "CompressionType": "None"}},
                          "Environment": model_env(model, uri=False)}
        with translated(f"create the SageMaker model {name}"):
            self.sm.create_model(ModelName=name, ExecutionRoleArn=self.aws.role, PrimaryContainer=container,
                                 Tags=tag_list(tags(self.endpoint, slot, image)))

    def _ensure_config(self, images: dict[str, str], models: dict[str, Model | None], share: dict[str, int]) -> str:
        name = self._config_name(images, models, share)
        if not self._exists("describe_endpoint_config", EndpointConfigName=name):
            with translated(f"create the SageMaker endpoint config {name}"):
                self.sm.create_endpoint_config(EndpointConfigName=name,
                                               ProductionVariants=self._variants(images, models, share),
                                               Tags=tag_list(tags(self.endpoint)), **self._data_capture())
        return name

    def _set_weights(self, share: dict[str, int]) -> None:
        with translated(f"change the traffic of {self.endpoint}"):
            self.sm.update_endpoint_weights_and_capacities(
                EndpointName=self.endpoint,
                DesiredWeightsAndCapacities=[{"VariantName": s, "DesiredWeight": float(p)} for s, p in share.items()])

    def _wait(self, config: str | None) -> None:
        """Until the endpoint is InService again; an update SageMaker undid is a failure, not success."""
        deadline = time.monotonic() + self.aws.wait_seconds
        started = time.monotonic()
        while True:
            with translated(f"describe the SageMaker endpoint {self.endpoint}"):
                ep = self.sm.describe_endpoint(EndpointName=self.endpoint)
            status = ep["EndpointStatus"]
            if status == "InService":
                break
            if status in ("Failed", "OutOfService", "UpdateRollbackFailed"):
                raise CheckFailed(f"the endpoint {self.endpoint} is {status}: {ep.get('FailureReason', 'no reason given')}")
            if time.monotonic() > deadline:
                raise CheckFailed(f"the endpoint {self.endpoint} was still {status} after {self.aws.wait_seconds} s")
            print(f"  {self.endpoint}: {status} ({time.monotonic() - started:.0f} s)", flush=True)
            time.sleep(POLL_SECONDS)
        if config and ep["EndpointConfigName"] != config:
            raise CheckFailed(f"SageMaker did not apply {config} ({ep.get('FailureReason') or 'it rolled the update back'})")

    def _verify(self, images: dict[str, str], models: dict[str, Model | None], share: dict[str, int]) -> None:
        current = self.read()
        slots = current["slots"] if current else {}  # (None: the endpoint is gone, said as serving nothing)
        serving = {s: e["image"] for s, e in slots.items()}
        if serving != images:
            raise CheckFailed(f"the endpoint serves {serving}, not the planned {images}")
        verify_models({s: e["artifact"] for s, e in slots.items()}, models)
        weights = {s: e["weight"] for s, e in slots.items()}
        if any(abs(weights[s] - share[s]) > 1 for s in share):
            raise CheckFailed(f"the endpoint's traffic is {weights}, not the planned {share}")

    def _smoke(self, slot: str, body: dict[str, Any]) -> None:
        try:
            with translated(f"invoke {self.endpoint} (variant {slot})"):
                r = self.runtime.invoke_endpoint(EndpointName=self.endpoint, TargetVariant=slot,
                                                 ContentType="application/json", Accept="application/json",
                                                 Body=json.dumps(body).encode())
                r["Body"].read()
        except UsageError as e:  # an invoke the model refuses is a failed smoke test, not bad usage
            raise CheckFailed(f"the smoke request to {slot} failed: {e.message}") from None

    def _bake(self, slot: str) -> None:
        bake(self.region, self._alarm_names({slot: ""}), self.aws.bake_seconds, slot, POLL_SECONDS)

    def _restore(self, previous: dict[str, Any] | None) -> str:
        """Put back what served before; say what happened, in the words the failure message ends with."""
        with translated(f"restore {self.endpoint}"):
            if previous is None:
                if self.read() is None:
                    return "nothing was created"
                self.sm.delete_endpoint(EndpointName=self.endpoint)
                return "the new endpoint was deleted"
            ep = self.sm.describe_endpoint(EndpointName=self.endpoint)
            if ep["EndpointConfigName"] != previous["config"]:
                self.sm.update_endpoint(EndpointName=self.endpoint, EndpointConfigName=previous["config"])
                self._wait(previous["config"])
            self._set_weights({s: e["weight"] for s, e in previous["slots"].items()})
        before = ", ".join(f"{s} {e['weight']}%" for s, e in previous["slots"].items())
        return f"rolled back: the endpoint serves as before ({before})"

    # -- alarms and autoscaling -------------------------------------------------------------------
    def _alarm_names(self, images: dict[str, str]) -> list[str]:
        return [resource_name("mldeploy", self.endpoint, slot, kind, limit=255)
                for slot in images for kind in ("5xx", "latency-p99")]

    def _existing_alarms(self, images: dict[str, str]) -> set[str]:
        from mldeploy.deploy.aws import cloudwatch_alarm_states

        return set(cloudwatch_alarm_states(self.region, self._alarm_names(images)))

    def _ensure_alarms(self, images: dict[str, str], fresh: set[str]) -> None:
        """Alarms for every variant; a slot getting a new image starts from INSUFFICIENT_DATA, so an
        alarm an earlier canary left in ALARM cannot fail this one's bake."""
        cw = client("cloudwatch", self.region)
        existing = self._existing_alarms(images)
        for slot in images:
            five, latency = self._alarm_names({slot: ""})
            common = alarm_spec("AWS/SageMaker", {"EndpointName": self.endpoint, "VariantName": slot},
                                tags(self.endpoint, slot))
            with translated(f"create the CloudWatch alarms of {slot}"):
                if five not in existing:
                    cw.put_metric_alarm(AlarmName=five, MetricName="Invocation5XXErrors", Statistic="Sum",
                                        Threshold=float(self.aws.errors_5xx), **common)
                if latency not in existing:  # ModelLatency is in microseconds
                    cw.put_metric_alarm(AlarmName=latency, MetricName="ModelLatency", ExtendedStatistic="p99",
                                        Threshold=self.aws.latency_p99_ms * 1000, **common)
                for name in (five, latency) if slot in fresh else ():
                    if name in existing:
                        cw.set_alarm_state(AlarmName=name, StateValue="INSUFFICIENT_DATA",
                                           StateReason=f"mldeploy: {slot} now serves a new image")

    def _scaling_id(self, slot: str) -> str:
        return f"endpoint/{self.endpoint}/variant/{slot}"

    def _ensure_scaling(self, images: dict[str, str]) -> None:
        sm = self.aws.sagemaker
        if not sm.autoscaling_max or sm.serverless_memory_mb:
            return
        scaling = client("application-autoscaling", self.region)
        for slot in images:
            with translated(f"set up autoscaling of {slot}"):
                scaling.register_scalable_target(
                    ServiceNamespace="sagemaker", ResourceId=self._scaling_id(slot),
                    ScalableDimension="sagemaker:variant:DesiredInstanceCount",
                    MinCapacity=sm.instance_count, MaxCapacity=max(sm.autoscaling_max, sm.instance_count))
                scaling.put_scaling_policy(
                    PolicyName=resource_name(self.endpoint, slot, "invocations"), ServiceNamespace="sagemaker",
                    ResourceId=self._scaling_id(slot), ScalableDimension="sagemaker:variant:DesiredInstanceCount",
                    PolicyType="TargetTrackingScaling",
                    TargetTrackingScalingPolicyConfiguration={
                        "TargetValue": float(sm.invocations_per_instance),
                        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                        "ScaleInCooldown": 300, "ScaleOutCooldown": 60})

    def _deregister_scaling(self, slots: set[str]) -> None:
        """A variant with a scalable target cannot be removed: deregister it first."""
        if not slots or not self.aws.sagemaker.autoscaling_max:
            return
        scaling = client("application-autoscaling", self.region)
        for slot in slots:
            with translated(f"remove the autoscaling of {slot}"):
                try:
                    scaling.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=self._scaling_id(slot),
                                                       ScalableDimension="sagemaker:variant:DesiredInstanceCount")
                except scaling.exceptions.ObjectNotFoundException:
                    pass

    # -- monitoring -----------------------------------------------------------------------------------
    def slot_metrics(self, window: float, pr: int | None = None) -> Collected:
        """CloudWatch AWS/SageMaker Invocations, Invocation5XXErrors, ModelLatency p50/p99 per variant;
        predictions from each variant's data capture in S3 when the endpoint captures."""
        from mldeploy.deploy.sagemaker_monitor import variant_predictions
        from mldeploy.monitor.metrics import Collected

        canary = self.compared(self.read(), pr)
        dims = {slot: {"EndpointName": self.endpoint, "VariantName": slot} for slot in ("production", canary)}
        stats = aws_cloud.cloudwatch_slot_stats(self.region, "AWS/SageMaker", dims,
                                                ("Invocations", "Invocation5XXErrors", "ModelLatency"),
                                                1e-3, window)  # ModelLatency is in microseconds
        found = Collected(stats["production"], stats[canary], window, f"CloudWatch AWS/SageMaker {self.endpoint}")
        capture = self.aws.sagemaker
        if not (capture.data_capture_percent and capture.data_capture_s3):
            found.notes.append("prediction divergence not measured: the endpoint does not capture requests "
                               "(deploy.aws.sagemaker.data_capture_percent and data_capture_s3)")
            return found
        since = time.time() - window
        for slot in ("production", canary):  # SageMaker writes DestinationS3Uri/ENDPOINT/VARIANT/yyyy/mm/dd/hh/
            stats[slot].predictions = variant_predictions(
                f"{capture.data_capture_s3.rstrip('/')}/{self.endpoint}/{slot}/", since, self.region)
        return found

    def monitor_plan(self, cfg: Config, config_file: str | None = None) -> SetupPlan:
        """Model Monitor (data quality) of the endpoint, and the alarms' SNS topic and anomaly alarm."""
        from mldeploy.deploy import aws_alarms
        from mldeploy.deploy.sagemaker_monitor import model_monitor
        from mldeploy.monitor.setup import SetupPlan

        result = SetupPlan(f"aws {self.name}", self.endpoint)
        model_monitor(cfg, self.endpoint, self.region, result)
        aws_alarms.plan(cfg, self.endpoint, self.region,
                        ("AWS/SageMaker", {"EndpointName": self.endpoint, "VariantName": "production"}), result)
        return result

    @classmethod
    def doctor(cls, deploy: DeploySection) -> list[tuple[str, bool, str]]:
        return aws_cloud.doctor(deploy, {"sagemaker:ListEndpoints": ("sagemaker", "list_endpoints", {"MaxResults": 1})})
