"""Amazon ECS: one service and one target group per slot, weighted in one ALB listener rule.

    task definition family mldeploy-<endpoint>     a revision per image digest and settings
    service <endpoint>-<slot>                      circuit breaker with rollback; target tracking
    target group <endpoint>-<slot> (ip, :8080)     health check GET /v2/health/ready
    listener rule (rule_priority)                  ForwardConfig production 100 - N, canary[-prN] N
    listener rule per slot (below it)              x-mldeploy-slot: <slot> -> that slot's target group

The network (VPC, subnets, ALB, listener) is given in deploy.aws.ecs, never created. ECS-native
blue/green and canary deployments finish on their own after a bake time and allow one deployment per
service, so they cannot hold parallel per-PR canaries: a slot is a service of its own instead.

A deploy: the slot's target group and header rule are made if missing, a task definition revision is
registered (one that runs this digest with these settings is reused, so a re-run changes nothing), and
the slot's service is created or updated. It must then roll out: the deployment ECS answered with must
be PRIMARY and its rolloutState COMPLETED ("steady state" alone is not success: when the circuit breaker
rolls a service back, the service is steady again, on the old task definition). The running tasks'
image digests are read back, and a smoke request goes through the ALB with the slot's header, so it
reaches that slot's target group alone. Only then (after the guard against a concurrent command) does
the weighted rule move. Any failure puts back the services' task definitions and the rule's weights,
and removes what this run made. Slots that no longer serve are removed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from mldeploy import __version__, github
from mldeploy.deploy import Desired, Guard, Plan, canary_shares
from mldeploy.deploy import aws as aws_cloud
from mldeploy.deploy.aws import alarm_spec, bake, client, error_code, resource_name, tags, translated
from mldeploy.deploy.base import (
    Model,
    Slot,
    Status,
    Target,
    digest_of,
    model_env,
    model_from_env,
    plan_model,
    verify_models,
)
from mldeploy.errors import CheckFailed, MldeployError, UsageError

if TYPE_CHECKING:
    from mldeploy.config import Config, DeploySection
    from mldeploy.monitor.metrics import Collected
    from mldeploy.monitor.setup import SetupPlan

POLL_SECONDS = float(os.environ.get("MLDEPLOY_POLL_SECONDS", "5"))
PORT = 8080
HEADER = "x-mldeploy-slot"
CONTAINER = "model"
READY = "/v2/health/ready"
NEW = "(new)"   # a task definition revision the plan will register
SCALING = "ecs:service:DesiredCount"
# a stopped task's reason when the image has no build for the task's platform (a single manifest or an index)
PLATFORM_REFUSED = r"descriptor matching platform '([^']+)'|no matching manifest for (\S+)"
PLATFORM_OF = {"X86_64": "linux/amd64", "ARM64": "linux/arm64"}   # deploy.aws.ecs.architecture -> image platform


def _slot_of(tagged: list[dict[str, str]], endpoint: str) -> str | None:
    found = {t["Key"]: t["Value"] for t in tagged}
    return found.get("mldeploy:slot") if found.get("mldeploy:endpoint") == endpoint else None


class EcsTarget(Target):
    name = "ecs"

    def __init__(self, endpoint: str, cfg: DeploySection) -> None:
        super().__init__(resource_name(endpoint, limit=24), cfg)
        self.aws = cfg.aws
        self.settings = cfg.aws.ecs
        self.ecs = client("ecs", cfg.region)
        self.elb = client("elbv2", cfg.region)
        self.region: str = self.ecs.meta.region_name
        self.cluster = str(self.settings.cluster)
        self.family = resource_name("mldeploy", self.endpoint, limit=255)
        self._net: dict[str, Any] | None = None           # the listener and its ALB: config, read once
        self._definitions: dict[str, dict[str, Any]] = {}  # task definition revisions are immutable
        self._groups: dict[str, str] = {}                  # slot -> its target group's ARN, once known

    # -- names --------------------------------------------------------------------------------------
    def service_name(self, slot: str) -> str:
        return resource_name(self.endpoint, slot, limit=255)

    def group_name(self, slot: str) -> str:
        return resource_name(self.endpoint, slot, limit=32)   # target group names: at most 32

    def _scaling_id(self, slot: str) -> str:
        return f"service/{self.cluster.rsplit('/', 1)[-1]}/{self.service_name(slot)}"

    # -- what serves now --------------------------------------------------------------------------
    def _network(self) -> dict[str, Any]:
        """The listener, its load balancer and the URL requests reach it by (config, not created)."""
        if self._net is None:
            self._net = self._read_network()
        return self._net

    def _read_network(self) -> dict[str, Any]:
        arn = str(self.settings.listener_arn)
        with translated(f"read the ALB listener {arn}"):
            try:
                listener = self.elb.describe_listeners(ListenerArns=[arn])["Listeners"][0]
            except self.elb.exceptions.ListenerNotFoundException:
                raise UsageError(f"the ALB listener {arn} does not exist",
                                 hint="check deploy.aws.ecs.listener_arn (docs/targets/ecs.md says how to make one)") \
                    from None
            lb = self.elb.describe_load_balancers(LoadBalancerArns=[listener["LoadBalancerArn"]])["LoadBalancers"][0]
        scheme = "https" if listener["Protocol"] == "HTTPS" else "http"
        default = {"http": 80, "https": 443}[scheme]
        port = "" if listener["Port"] == default else f":{listener['Port']}"
        url = self.settings.url or f"{scheme}://{lb['DNSName']}{port}"
        return {"listener": listener, "lb": lb, "url": url.rstrip("/")}

    def read(self) -> dict[str, Any] | None:
        """The rules forwarding to this endpoint's target groups, and per slot its service, task
        definition, image, share and health; None before a deploy."""
        net = self._network()
        with translated(f"read the rules of {net['listener']['ListenerArn']}"):
            rules = [r for page in self.elb.get_paginator("describe_rules").paginate(
                ListenerArn=net["listener"]["ListenerArn"]) for r in page["Rules"]]
            arns = sorted({g["TargetGroupArn"] for r in rules for a in r["Actions"] if a["Type"] == "forward"
                           for g in (a.get("ForwardConfig") or {}).get("TargetGroups", [])
                           or ([{"TargetGroupArn": a["TargetGroupArn"]}] if a.get("TargetGroupArn") else [])})
            groups: dict[str, str] = {}   # target group arn -> slot
            for i in range(0, len(arns), 20):
                for d in self.elb.describe_tags(ResourceArns=arns[i:i + 20])["TagDescriptions"]:
                    if slot := _slot_of(d.get("Tags", []), self.endpoint):
                        groups[d["ResourceArn"]] = slot
        main, headers, used = None, {}, set()
        for r in rules:
            if r["Priority"] != "default":
                used.add(int(r["Priority"]))
            forward = next((a for a in r["Actions"] if a["Type"] == "forward"), None)
            targets = (forward.get("ForwardConfig") or {}).get("TargetGroups") if forward else None
            targets = targets or ([{"TargetGroupArn": forward["TargetGroupArn"], "Weight": 1}]
                                  if forward and forward.get("TargetGroupArn") else [])
            if not targets or not all(t["TargetGroupArn"] in groups for t in targets):
                continue
            header = next((c["HttpHeaderConfig"]["Values"][0] for c in r["Conditions"]
                           if c["Field"] == "http-header" and c["HttpHeaderConfig"]["HttpHeaderName"].lower() == HEADER),
                          None)
            if header:
                headers[header] = r["RuleArn"]
            else:
                total = sum(t.get("Weight", 1) for t in targets) or 1
                main = {"arn": r["RuleArn"], "priority": r["Priority"], "actions": r["Actions"],
                        "weights": {groups[t["TargetGroupArn"]]: round(100 * t.get("Weight", 1) / total)
                                    for t in targets}}
        if main is None and not headers:
            return None
        by_slot = {slot: arn for arn, slot in groups.items()}
        self._groups |= by_slot
        slots: dict[str, dict[str, Any]] = {}
        for slot in sorted(set(main["weights"] if main else ()) | set(headers), key=lambda s: (s != "production", s)):
            slots[slot] = {"traffic": (main or {"weights": {}})["weights"].get(slot, 0), "group": by_slot.get(slot),
                           "header": headers.get(slot), **self._service(slot)}
        return {**net, "main": main, "slots": slots, "used": used, "groups": by_slot}

    def _service(self, slot: str) -> dict[str, Any]:
        """A slot's service: its task definition, image, PRIMARY deployment and whether that is done."""
        name = self.service_name(slot)
        with translated(f"read the ECS service {name}"):
            found = self.ecs.describe_services(cluster=self.cluster, services=[name])["services"]
        svc = next((s for s in found if s.get("status") == "ACTIVE"), None)
        if svc is None:
            return {"service": None, "td": None, "image": None, "model": None, "healthy": False, "state": "missing"}
        primary: dict[str, Any] = next((d for d in svc.get("deployments", []) if d["status"] == "PRIMARY"), {})
        td = primary.get("taskDefinition") or svc.get("taskDefinition")
        facts = self._task_definition(td) if td else {}
        return {"service": name, "td": td, "image": facts.get("image"), "spec": facts.get("spec"),
                "model": facts.get("model"),
                "desired": svc.get("desiredCount", 0), "running": svc.get("runningCount", 0),
                "state": primary.get("rolloutState", "?"),
                "healthy": primary.get("rolloutState") == "COMPLETED" and svc.get("runningCount", 0) > 0}

    def _task_definition(self, arn: str) -> dict[str, Any]:
        if arn in self._definitions:
            return self._definitions[arn]
        with translated(f"read the task definition {arn}"):
            td = self.ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
        container = next((c for c in td["containerDefinitions"] if c["name"] == CONTAINER), td["containerDefinitions"][0])
        facts = {"arn": td["taskDefinitionArn"], "image": container.get("image"),
                 "spec": (container.get("dockerLabels") or {}).get("mldeploy.spec"),
                 "model": model_from_env({e["name"]: e["value"] for e in container.get("environment") or []})}
        if ":" in arn.rsplit("/", 1)[-1]:  # family:revision names one for good; a family alone, its latest
            self._definitions[arn] = facts
        return facts

    def _status(self, current: dict[str, Any] | None) -> Status:
        if current is None:
            return Status(self.endpoint)
        return Status(self.endpoint, current["url"], {
            slot: Slot(e["image"], e["traffic"], e["healthy"],
                       {"service": e["service"], "task_definition": (e["td"] or "").rsplit("/", 1)[-1],
                        "rollout": e["state"], "header": f"{HEADER}: {slot}"}, model=e["model"])
            for slot, e in current["slots"].items() if current["main"] and slot in current["main"]["weights"]},
            {"cluster": self.cluster})

    def guard(self, current: Any, images: Any) -> Guard:
        """The base guard, reading what serves so that another command that finished while it read is seen:
        the weighted rule is read again last, and where it moved meanwhile, everything is read again."""
        def served() -> Status:
            now = self.read()
            rule = (now or {}).get("main")
            if rule is not None:
                with translated("read the weighted listener rule"):
                    again = self.elb.describe_rules(RuleArns=[rule["arn"]])["Rules"]
                if not again or again[0]["Actions"] != rule["actions"]:
                    now = self.read()
            return self._status(now)

        guard = super().guard(current, images)
        guard.read = served
        return guard

    # -- the interface ----------------------------------------------------------------------------
    def plan(self, desired: Desired) -> Plan:
        desired.require_digest()
        current = self.read()
        slots = current["slots"] if current else {}
        weighted = current["main"]["weights"] if current and current["main"] else {}
        serving = {s: e for s, e in slots.items() if s in weighted}  # header-only slots: an interrupted run's
        if "production" not in serving or desired.slot == "production":
            after = {"production": {"image": desired.image, "traffic": 100, "model": desired.model}}
        else:
            shares = canary_shares({s: e["traffic"] for s, e in serving.items()}, desired.slot, desired.traffic)
            after = {s: {"image": serving[s]["image"], "traffic": shares[s], "td": serving[s]["td"],
                         "model": serving[s]["model"]} for s in shares if s != desired.slot}
            after[desired.slot] = {"image": desired.image, "traffic": desired.traffic, "model": desired.model}
        return self._plan(desired, current, after)

    def layout(self, desired: Desired, current: Any, images: dict[str, str], share: dict[str, int]) -> Plan:
        """Promote and rollback: the task definitions that run these images, at these shares (a promoted
        canary's task definition goes to the production service; nothing is registered)."""
        by_image = {(e["image"], e["model"]): e["td"] for e in current["slots"].values() if e["td"]}
        models = {slot: desired.model if slot == desired.slot else current["slots"][slot]["model"] for slot in images}
        after = {slot: {"image": image, "traffic": share[slot], "model": models[slot],
                        "td": current["slots"][slot]["td"] if slot in current["slots"] and (current["slots"][slot]["image"],
                        current["slots"][slot]["model"]) == (image, models[slot]) else by_image[(image, models[slot])]}
                 for slot, image in images.items()}
        return self._plan(desired, current, after)

    def apply(self, plan: Plan) -> Status:
        if plan.empty:
            return self.changed(False)
        s, d = plan.state, plan.desired
        current, after = s["current"], s["after"]
        net = current or self._network()
        done: dict[str, Any] = {"groups": [], "rules": [], "services": [], "updated": {}, "main": None}
        images = {e["image"] for e in after.values()}
        with self.changing(current, images, lambda: self._restore(current, done)) as guard:
            for slot in s["rolled"]:
                e = after[slot]
                group = self._ensure_group(slot, net, done)
                self._ensure_header_rule(slot, group, net, current, done)
                td = e["td"] if e["td"] and e["td"] != NEW else self._register(slot, e["image"], e["model"])
                e["td"] = td
                if current and current["slots"].get(slot, {}).get("service"):
                    # a rolling update moves what the slot serves: the check made before the weights move (a
                    # service that is created needs none: ECS refuses a second CreateService of one name)
                    guard.check()
                deployment = self._roll(slot, td, group, current, done)
                self._await_rollout(slot, deployment, e["image"])
                if current and current["slots"].get(slot, {}).get("traffic"):
                    guard.seen = guard.read().served()  # what this command made it serve, for the next check
                self._check_tasks(slot, e["image"])
                if d.smoke:
                    self._smoke(net["url"], slot, d.smoke)
            self._ensure_alarms(after, net, fresh=set(s["rolled"]))
            if s["moves"]:
                guard.check()  # just before traffic moves: a rollout takes minutes
                self._set_weights(after, net, current, done)
                self._converge(after, done)
            self._verify(after)
            if d.slot != "production" and d.slot in after and self.aws.bake_seconds:
                bake(self.region, self._alarm_names(d.slot), self.aws.bake_seconds, d.slot, POLL_SECONDS)
        for slot in s["scaling"]:
            self._ensure_scaling(slot, net)
        for slot in s["retire"]:
            self._retire(slot, current)
        return self.changed(True)

    # -- planning ---------------------------------------------------------------------------------
    def _spec(self, model: Model | None = None) -> str:
        """A short hash of what a task runs besides its image: other settings, or another model in storage,
        are another revision."""
        st = self.settings
        spec = [st.cpu, st.memory, st.architecture, st.capacity_provider, st.environment, self.aws.role,
                st.execution_role, PORT, READY] + ([model.uri, model.sha256] if model else [])  # (baked: as before)
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def _reusable(self, image: str, model: Model | None, current: dict[str, Any] | None) -> str | None:
        """A task definition that runs this image and model with these settings: a slot's, or the family's latest."""
        spec = self._spec(model)
        for e in (current or {}).get("slots", {}).values():
            if e["td"] and e["image"] == image and e.get("spec") == spec:
                return str(e["td"])
        with translated(f"read the task definition family {self.family}"):
            try:
                latest = self.ecs.describe_task_definition(taskDefinition=self.family)["taskDefinition"]
            except self.ecs.exceptions.ClientException:
                return None
        facts = self._task_definition(latest["taskDefinitionArn"])
        return facts["arn"] if facts["image"] == image and facts["spec"] == spec else None

    def _checks(self, net: dict[str, Any]) -> None:
        """What ECS would refuse late or vaguely, refused now in one line: a missing cluster, subnets
        outside the ALB's VPC, roles ECS tasks cannot assume."""
        with translated(f"read the ECS cluster {self.cluster}"):
            found = self.ecs.describe_clusters(clusters=[self.cluster])["clusters"]
        cluster = next((c for c in found if c.get("status") == "ACTIVE"), None)
        if cluster is None:
            raise UsageError(f"the ECS cluster {self.cluster} does not exist",
                             hint="create it (`aws ecs create-cluster`) or fix deploy.aws.ecs.cluster")
        provider, associated = self.settings.capacity_provider, cluster.get("capacityProviders") or []
        if provider and provider not in associated:  # ECS refuses the service only when it is created
            raise UsageError(f"the capacity provider {provider} (deploy.aws.ecs.capacity_provider) is not associated "
                             f"with the cluster {self.cluster} (it has {', '.join(associated) or 'none'})",
                             hint=f"`aws ecs put-cluster-capacity-providers --cluster {self.cluster}` with it, or "
                                  "fix the name")
        vpc = net["lb"]["VpcId"]
        with translated("read the tasks' subnets"):
            try:
                subnets = client("ec2", self.region).describe_subnets(SubnetIds=list(self.settings.subnets))["Subnets"]
            except Exception as e:
                if error_code(e) == "InvalidSubnetID.NotFound":
                    raise UsageError(f"a subnet of deploy.aws.ecs.subnets does not exist: {e}") from None
                raise
        other = sorted({f"{s['SubnetId']} ({s['VpcId']})" for s in subnets if s["VpcId"] != vpc})
        if other:
            raise UsageError(f"the listener {net['listener']['ListenerArn']} belongs to {net['lb']['LoadBalancerName']} "
                             f"in {vpc}, but the subnets {', '.join(other)} are in another VPC",
                             hint="the listener and deploy.aws.ecs.subnets must be in one VPC")
        for what, arn in (("task role (deploy.aws.role)", self.aws.role),
                          ("execution role (deploy.aws.ecs.execution_role)", self.settings.execution_role)):
            self._assumable(what, str(arn))

    def _check_platform(self, image: str) -> None:
        """The image must have a build for the task definition's platform, read from its registry now: ECS
        finds out only when the new tasks cannot pull it (or start and die with `exec format error`). A
        registry that cannot be read is not judged (ECS's stopped-task reason is read after a failure)."""
        from mldeploy.image.platforms import Unreadable, platforms

        arch = self.settings.architecture
        wanted = PLATFORM_OF[arch]
        try:
            found = platforms(image)
        except Unreadable as e:
            print(f"  Image platform not checked: {e}", flush=True)
            return
        if wanted in found:
            print(f"  Image platform: {wanted} ({', '.join(sorted(found))} in the registry)", flush=True)
            return
        other = next((a for a, p in PLATFORM_OF.items() if p in found), None)
        raise UsageError(f"the image {image} is built for {', '.join(sorted(found)) or 'no platform'}, but the task "
                         f"definition runs {wanted} (deploy.aws.ecs.architecture {arch})",
                         hint=f"build and push it for {wanted} (`docker buildx build --platform {wanted} --push`)"
                              + (f", or set deploy.aws.ecs.architecture: {other}" if other else ""))

    def _assumable(self, what: str, arn: str) -> None:
        """The role's trust policy must let ecs-tasks.amazonaws.com assume it (unreadable: not judged)."""
        iam = client("iam", self.region)
        try:
            doc = iam.get_role(RoleName=arn.rsplit("/", 1)[-1])["Role"]["AssumeRolePolicyDocument"]
        except Exception as e:
            if error_code(e) == "NoSuchEntity":
                raise UsageError(f"the {what} {arn} does not exist", hint="create it (docs/targets/ecs.md)") from None
            return  # no iam:GetRole: ECS says so itself when it cannot assume the role
        if isinstance(doc, str):
            doc = json.loads(urllib.parse.unquote(doc))
        statements = doc.get("Statement", [])
        for st in statements if isinstance(statements, list) else [statements]:
            services = (st.get("Principal") or {}).get("Service", []) if isinstance(st.get("Principal"), dict) else []
            services = [services] if isinstance(services, str) else services
            if st.get("Effect") == "Allow" and "ecs-tasks.amazonaws.com" in services:
                return
        raise UsageError(f"ECS cannot assume the {what} {arn}: its trust policy does not allow "
                         "ecs-tasks.amazonaws.com", hint="add ecs-tasks.amazonaws.com as a trusted service "
                                                         "(sts:AssumeRole) to the role")

    def _scaling_wanted(self, slot: str) -> bool:
        """Whether the slot's service lacks the target tracking the config asks for."""
        if not self.settings.autoscaling_max:
            return False
        aas = client("application-autoscaling", self.region)
        with translated("read the service's scalable target"):
            found = aas.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[self._scaling_id(slot)],
                                                  ScalableDimension=SCALING)["ScalableTargets"]
        return not found or (found[0]["MinCapacity"], found[0]["MaxCapacity"]) != (
            self.settings.desired_count, self.settings.autoscaling_max)

    def _plan(self, d: Desired, current: dict[str, Any] | None, after: dict[str, dict[str, Any]]) -> Plan:
        net = current or self._network()
        slots = current["slots"] if current else {}
        plan = Plan(self.name, d, traffic_before={s: e["traffic"] for s, e in slots.items() if e["traffic"]},
                    traffic_after={s: e["traffic"] for s, e in after.items()})
        rolled = []
        for slot, e in after.items():
            e.setdefault("td", None)
            e["td"] = e["td"] or self._reusable(e["image"], e["model"], current) or NEW
            own = slots.get(slot, {})
            if e["td"] == NEW:
                self._check_platform(e["image"])
                plan.add("create", f"ecs task definition {self.family}", f"{slot} image", new=e["image"])
            if not own.get("group"):
                plan.add("create", f"elbv2 target group {self.group_name(slot)}", "port", new=PORT)
            if not own.get("header"):
                plan.add("create", f"elbv2 listener rule {HEADER}: {slot}", "forward", new=self.group_name(slot))
            if not own.get("service"):
                plan.add("create", f"ecs service {self.service_name(slot)}", "image", new=e["image"])
                for name in self._alarm_names(slot):
                    plan.add("create", f"cloudwatch alarm {name}")
                rolled.append(slot)
            elif own["td"] != e["td"] or not own["healthy"]:
                plan.add("update", f"ecs service {self.service_name(slot)}", "image", own["image"], e["image"])
                plan_model(plan, f"ecs service {self.service_name(slot)}", own["model"], e["model"])
                rolled.append(slot)
        if any(c.action == "create" and c.resource.startswith(("ecs task definition", "ecs service"))
               for c in plan.changes):
            self._checks(net)  # what a new task definition or service would use (a weights-only change uses none)
        main = current["main"] if current else None
        weights = {s: e["traffic"] for s, e in after.items()}
        moves = main is None or main["weights"] != weights
        if main is None:
            plan.add("create", "elbv2 listener rule (weighted)", "weights", new=weights)
        elif moves:
            plan.add("update", "elbv2 listener rule (weighted)", "weights", main["weights"], weights)
        retire = [s for s in slots if s not in after]
        for slot in retire:
            plan.add("delete", f"ecs service {self.service_name(slot)}", old=slots[slot]["image"])
        scaling = [s for s in after if self._scaling_wanted(s)]
        for slot in scaling:
            plan.add("update", f"application-autoscaling {self._scaling_id(slot)}", "tasks",
                     new=f"{self.settings.desired_count}-{self.settings.autoscaling_max}")
        plan.state = {"current": current, "after": after, "rolled": rolled, "moves": moves, "retire": retire,
                      "scaling": scaling}
        return plan

    # -- applying ---------------------------------------------------------------------------------
    def _ensure_group(self, slot: str, net: dict[str, Any], done: dict[str, Any]) -> str:
        name = self.group_name(slot)
        if known := self._groups.get(slot):
            return known
        with translated(f"make the target group {name}"):
            try:
                found = str(self.elb.describe_target_groups(Names=[name])["TargetGroups"][0]["TargetGroupArn"])
                self._groups[slot] = found
                return found
            except self.elb.exceptions.TargetGroupNotFoundException:
                pass
            arn = self.elb.create_target_group(
                Name=name, Protocol="HTTP", Port=PORT, VpcId=net["lb"]["VpcId"], TargetType="ip",
                HealthCheckPath=READY, HealthCheckIntervalSeconds=15, HealthyThresholdCount=2, Matcher={"HttpCode": "200"},
                Tags=aws_cloud.tag_list(tags(self.endpoint, slot)))["TargetGroups"][0]["TargetGroupArn"]
        done["groups"].append(arn)
        self._groups[slot] = str(arn)
        return str(arn)

    def _free_priority(self, net: dict[str, Any], current: dict[str, Any] | None) -> int:
        """The highest free priority below the weighted rule's (header rules are looked at first)."""
        with translated("read the listener's rules"):
            used = {int(r["Priority"]) for page in self.elb.get_paginator("describe_rules").paginate(
                ListenerArn=net["listener"]["ListenerArn"]) for r in page["Rules"] if r["Priority"] != "default"}
        top = self.settings.rule_priority
        free = next((p for p in range(top - 1, max(top - 100, 0), -1) if p not in used), None)
        if free is None:
            raise UsageError(f"no free rule priority within 99 below {top} on the listener",
                             hint="raise deploy.aws.ecs.rule_priority")
        return free

    def _conditions(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"Field": "path-pattern", "PathPatternConfig": {"Values": [self.settings.path]}}]
        if self.settings.host:
            out.append({"Field": "host-header", "HostHeaderConfig": {"Values": [self.settings.host]}})
        return out

    def _ensure_header_rule(self, slot: str, group: str, net: dict[str, Any], current: dict[str, Any] | None,
                            done: dict[str, Any]) -> None:
        if current and current["slots"].get(slot, {}).get("header"):
            return
        conditions = [*self._conditions(), {"Field": "http-header", "HttpHeaderConfig": {
            "HttpHeaderName": HEADER, "Values": [slot]}}]
        with translated(f"make the listener rule {HEADER}: {slot}"):
            arn = self.elb.create_rule(ListenerArn=net["listener"]["ListenerArn"], Priority=self._free_priority(net, current),
                                       Conditions=conditions, Actions=[{"Type": "forward", "TargetGroupArn": group}],
                                       Tags=aws_cloud.tag_list(tags(self.endpoint, slot)))["Rules"][0]["RuleArn"]
        done["rules"].append(arn)

    def _register(self, slot: str, image: str, model: Model | None) -> str:
        st = self.settings
        fargate = st.capacity_provider is None
        container = {
            "name": CONTAINER, "image": image, "essential": True,
            "portMappings": [{"containerPort": PORT, "protocol": "tcp"}],
            # a model in storage: the server downloads it with the task role (s3:GetObject on the prefix)
            "environment": [{"name": k, "value": v} for k, v in sorted({**st.environment, **model_env(model)}.items())],
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": f"/mldeploy/{self.endpoint}", "awslogs-region": self.region,
                "awslogs-stream-prefix": "model", "awslogs-create-group": "true"}},
            # the image has Python, not curl: the container's own check of the v2 ready route
            "healthCheck": {"command": ["CMD", "python", "-c", ("import urllib.request as u; "
                                        f"u.urlopen('http://127.0.0.1:{PORT}{READY}', timeout=4)")],
                            "interval": 15, "timeout": 5, "retries": 3, "startPeriod": 60},
            "dockerLabels": {"mldeploy.spec": self._spec(model), "mldeploy.image": digest_of(image)}}
        print(f"  Registering a task definition of {self.family} for {image}", flush=True)
        with translated(f"register a task definition of {self.family}"):
            td = self.ecs.register_task_definition(
                family=self.family, taskRoleArn=self.aws.role, executionRoleArn=st.execution_role,
                networkMode="awsvpc", requiresCompatibilities=["FARGATE" if fargate else "EC2"],
                cpu=str(st.cpu), memory=str(st.memory), containerDefinitions=[container],
                runtimePlatform={"cpuArchitecture": st.architecture, "operatingSystemFamily": "LINUX"},
                tags=[{"key": k, "value": v} for k, v in tags(self.endpoint, slot, image).items()])["taskDefinition"]
        return str(td["taskDefinitionArn"])

    def _roll(self, slot: str, td: str, group: str, current: dict[str, Any] | None, done: dict[str, Any]) -> str:
        """Create or update the slot's service on this task definition; the id of the deployment ECS started."""
        st = self.settings
        name = self.service_name(slot)
        own = (current or {"slots": {}})["slots"].get(slot, {})
        print(f"  {'Updating' if own.get('service') else 'Creating'} ECS service {name} ({td.rsplit('/', 1)[-1]})",
              flush=True)
        with translated(f"{'update' if own.get('service') else 'create'} the ECS service {name}"):
            if own.get("service"):
                done["updated"][slot] = own["td"]
                svc = self.ecs.update_service(cluster=self.cluster, service=name, taskDefinition=td,
                                              forceNewDeployment=own["td"] == td)["service"]
            else:
                capacity = {"capacityProviderStrategy": [{"capacityProvider": st.capacity_provider, "weight": 1}]} \
                    if st.capacity_provider else {"launchType": "FARGATE"}
                svc = self.ecs.create_service(
                    cluster=self.cluster, serviceName=name, taskDefinition=td, desiredCount=st.desired_count,
                    **capacity, loadBalancers=[{"targetGroupArn": group, "containerName": CONTAINER,
                                                "containerPort": PORT}],
                    networkConfiguration={"awsvpcConfiguration": {
                        "subnets": list(st.subnets), "securityGroups": list(st.security_groups),
                        "assignPublicIp": "ENABLED" if st.assign_public_ip else "DISABLED"}},
                    deploymentConfiguration={"deploymentCircuitBreaker": {"enable": True, "rollback": True},
                                             "maximumPercent": 200, "minimumHealthyPercent": 100},
                    healthCheckGracePeriodSeconds=60, propagateTags="SERVICE", enableECSManagedTags=True,
                    tags=[{"key": k, "value": v} for k, v in tags(self.endpoint, slot).items()])["service"]
                done["services"].append(slot)
        primary = next(dep for dep in svc["deployments"] if dep["status"] == "PRIMARY")
        return str(primary["id"])

    def _await_rollout(self, slot: str, deployment: str, image: str) -> None:
        """Until the deployment ECS started is PRIMARY and COMPLETED. Steady alone is not success: after
        the circuit breaker rolled the service back it is steady on the previous task definition."""
        name = self.service_name(slot)
        started = time.monotonic()
        while True:
            with translated(f"read the ECS service {name}"):
                svc = self.ecs.describe_services(cluster=self.cluster, services=[name])["services"][0]
            ours = next((dep for dep in svc.get("deployments", []) if dep["id"] == deployment), None)
            if ours is None or ours["status"] != "PRIMARY" or ours.get("rolloutState") == "FAILED":
                reason = (ours or {}).get("rolloutStateReason") or next(
                    (e["message"] for e in svc.get("events", []) if "circuit breaker" in e.get("message", "")), "")
                stopped = self._stopped_reason(deployment)
                if refused := re.search(PLATFORM_REFUSED, stopped):
                    platform = refused.group(1) or refused.group(2)
                    raise UsageError(f"the image {image} has no {platform} build, the platform of the task definition "
                                     f"(deploy.aws.ecs.architecture {self.settings.architecture}): {name}'s new tasks "
                                     "could not pull it and the deployment failed",
                                     hint=f"build and push the image for {platform} (`docker buildx build --platform "
                                          f"{platform}`), or set deploy.aws.ecs.architecture to the image's")
                raise CheckFailed(f"the deployment {deployment} of {name} failed and ECS rolled the service back"
                                  f"{f' ({reason})' if reason else ''}{f'; a task stopped: {stopped}' if stopped else ''}",
                                  hint=f"read the stopped tasks' reasons: `aws ecs describe-services --cluster "
                                       f"{self.cluster} --services {name}` and the log group /mldeploy/{self.endpoint}")
            if ours.get("rolloutState") == "COMPLETED":
                return
            self._placeable(name, svc, ours)
            if time.monotonic() - started > self.aws.wait_seconds:
                raise CheckFailed(f"the deployment {deployment} of {name} was still {ours.get('rolloutState')} after "
                                  f"{self.aws.wait_seconds} s", hint="raise deploy.aws.wait_seconds")
            print(f"  {name}: {ours.get('rolloutState')}, {ours.get('runningCount', 0)}/{ours.get('desiredCount', 0)} "
                  f"running ({time.monotonic() - started:.0f} s)", flush=True)
            time.sleep(POLL_SECONDS)

    def _placeable(self, name: str, svc: dict[str, Any], ours: dict[str, Any]) -> None:
        """ECS keeps trying to place a task no container instance has room for, saying so in the service's
        events: that is the config's task size against the cluster's capacity, refused now, not at the timeout."""
        since = ours.get("createdAt")
        unplaced = next((e["message"] for e in svc.get("events", []) if "unable to place a task" in e.get("message", "")
                         and (since is None or e.get("createdAt") is None or e["createdAt"] >= since)), None)
        if unplaced and not ours.get("runningCount"):
            st = self.settings
            short = next((w for w in ("memory", "CPU", "GPU") if f"insufficient {w}" in unplaced), "room")
            raise UsageError(f"no container instance of the cluster {self.cluster} has the {short} for a task of cpu "
                             f"{st.cpu} and memory {st.memory} MiB (deploy.aws.ecs, capacity provider "
                             f"{st.capacity_provider or 'none'}): ECS could not place {name}'s new tasks",
                             hint="add instances (or raise the capacity provider's Auto Scaling group maximum) with "
                                  "that much room, or lower deploy.aws.ecs.cpu and memory")

    def _stopped_reason(self, deployment: str) -> str:
        """Why the failed deployment's tasks stopped, as ECS says it ('' where it cannot be read: the
        failure is said anyway)."""
        try:
            with translated(f"read the stopped tasks of {deployment}"):
                arns = self.ecs.list_tasks(cluster=self.cluster, startedBy=deployment, desiredStatus="STOPPED",
                                           maxResults=10)["taskArns"]
                found = self.ecs.describe_tasks(cluster=self.cluster, tasks=arns)["tasks"] if arns else []
        except MldeployError:
            return ""
        return " ".join(next((t["stoppedReason"] for t in found if t.get("stoppedReason")), "").split())

    def _check_tasks(self, slot: str, image: str) -> None:
        """The running tasks of the slot's service must run the planned digest (ECS resolves the reference)."""
        name = self.service_name(slot)
        with translated(f"read the tasks of {name}"):
            arns = self.ecs.list_tasks(cluster=self.cluster, serviceName=name, desiredStatus="RUNNING")["taskArns"]
            found = self.ecs.describe_tasks(cluster=self.cluster, tasks=arns)["tasks"] if arns else []
        digests = sorted({c.get("imageDigest") for t in found for c in t.get("containers", [])
                          if c.get("name") == CONTAINER})
        want = f"sha256:{digest_of(image)}"
        if not found or digests != [want]:
            raise CheckFailed(f"the running tasks of {name} run {', '.join(map(str, digests)) or 'nothing'}, "
                              f"not the planned {want}")

    def _smoke(self, url: str, slot: str, body: dict[str, Any]) -> None:
        """POST the smoke body through the ALB with the slot's header: only that slot's target group answers."""
        request = urllib.request.Request(f"{url}/predict", data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", HEADER: slot, "User-Agent": f"mldeploy/{__version__}"})
        what = f"the smoke request to {slot} ({url}/predict, {HEADER}: {slot})"
        for attempt in range(4):  # the ALB answers 502/503 until a new target has passed its checks
            try:
                with urllib.request.urlopen(request, timeout=30) as r:
                    r.read()
                    return
            except urllib.error.HTTPError as e:
                text = " ".join(e.read().decode(errors="replace").split())[:200]
                if e.code in (502, 503, 504) and attempt < 3:
                    time.sleep(POLL_SECONDS)
                    continue
                raise CheckFailed(f"{what} answered {e.code}: {text or e.reason}") from None
            except (urllib.error.URLError, OSError) as e:
                if attempt < 3:
                    time.sleep(POLL_SECONDS)
                    continue
                raise CheckFailed(f"{what} failed: {getattr(e, 'reason', e)}") from None

    def _forward(self, after: dict[str, dict[str, Any]], net: dict[str, Any]) -> list[dict[str, Any]]:
        groups = {slot: self._ensure_group_arn(slot) for slot in after}
        return [{"Type": "forward", "ForwardConfig": {"TargetGroups": [
            {"TargetGroupArn": groups[s], "Weight": e["traffic"]} for s, e in after.items()]}}]

    def _ensure_group_arn(self, slot: str) -> str:
        if known := self._groups.get(slot):
            return known
        with translated(f"read the target group {self.group_name(slot)}"):
            return str(self.elb.describe_target_groups(Names=[self.group_name(slot)])["TargetGroups"][0]["TargetGroupArn"])

    def _set_weights(self, after: dict[str, dict[str, Any]], net: dict[str, Any], current: dict[str, Any] | None,
                     done: dict[str, Any]) -> None:
        shown = ", ".join(f"{s} {e['traffic']}%" for s, e in after.items())
        print(f"  Moving traffic ({shown})", flush=True)
        actions = self._forward(after, net)
        main = current["main"] if current else None
        with translated("set the weighted listener rule"):
            if main is None:
                done["main"] = self.elb.create_rule(
                    ListenerArn=net["listener"]["ListenerArn"], Priority=self.settings.rule_priority,
                    Conditions=self._conditions(), Actions=actions,
                    Tags=aws_cloud.tag_list(tags(self.endpoint)))["Rules"][0]["RuleArn"]
            else:
                done["main"] = main["arn"]
                self.elb.modify_rule(RuleArn=main["arn"], Actions=actions)

    def _alarm_names(self, slot: str) -> list[str]:
        return [resource_name("mldeploy", self.endpoint, slot, kind, limit=255) for kind in ("5xx", "latency-p99")]

    def _ensure_alarms(self, after: dict[str, dict[str, Any]], net: dict[str, Any], fresh: set[str]) -> None:
        """A 5XX and a p99 latency alarm on each slot's target group (what a bake watches); a slot that
        now runs a new image starts them from INSUFFICIENT_DATA, so an earlier canary's ALARM cannot fail it."""
        cw = client("cloudwatch", self.region)
        names = [n for slot in after for n in self._alarm_names(slot)]
        existing = set(aws_cloud.cloudwatch_alarm_states(self.region, names))
        for slot in after:
            five, latency = self._alarm_names(slot)
            common = alarm_spec("AWS/ApplicationELB", self._metric_dims({**net, "slots": {}}, slot),
                                tags(self.endpoint, slot))
            with translated(f"create the CloudWatch alarms of {slot}"):
                if five not in existing:
                    cw.put_metric_alarm(AlarmName=five, MetricName="HTTPCode_Target_5XX_Count", Statistic="Sum",
                                        Threshold=float(self.aws.errors_5xx), **common)
                if latency not in existing:  # TargetResponseTime is in seconds
                    cw.put_metric_alarm(AlarmName=latency, MetricName="TargetResponseTime", ExtendedStatistic="p99",
                                        Threshold=self.aws.latency_p99_ms / 1000, **common)
                for name in (five, latency) if slot in fresh else ():
                    if name in existing:
                        cw.set_alarm_state(AlarmName=name, StateValue="INSUFFICIENT_DATA",
                                           StateReason=f"mldeploy: {slot} now serves a new image")

    def _converge(self, after: dict[str, dict[str, Any]], done: dict[str, Any]) -> None:
        """The weights this command just set are the last word (ELB has no compare-and-set), so the slots'
        services must run what it planned: another command that rolled one of them in the last round trip
        is rolled back onto this command's task definition."""
        for slot, e in after.items():
            now = self._service(slot)
            if now["service"] and now["td"] != e["td"]:
                print(f"  {self.service_name(slot)} was changed meanwhile: back to {e['td'].rsplit('/', 1)[-1]}",
                      flush=True)
                deployment = self._roll(slot, e["td"], "", {"slots": {slot: now}}, done)
                self._await_rollout(slot, deployment, e["image"])
                self._check_tasks(slot, e["image"])

    def _verify(self, after: dict[str, dict[str, Any]]) -> None:
        current = self.read()
        served = {s: (e["image"], e["traffic"]) for s, e in (current or {"slots": {}})["slots"].items() if e["traffic"]}
        planned = {s: (e["image"], e["traffic"]) for s, e in after.items() if e["traffic"]}
        if served != planned:
            raise CheckFailed(f"the listener serves {served}, not the planned {planned}")
        verify_models({s: e["model"] for s, e in current["slots"].items() if s in after},  # type: ignore[index]
                      {s: e["model"] for s, e in after.items()})
        for slot in after:
            if not current["slots"][slot]["healthy"]:  # type: ignore[index]
                raise CheckFailed(f"the service of {slot} is {current['slots'][slot]['state']}")  # type: ignore[index]

    def _ensure_scaling(self, slot: str, net: dict[str, Any]) -> None:
        """Target tracking on the slot's service (CPU, or requests per target behind its target group)."""
        st = self.settings
        aas = client("application-autoscaling", self.region)
        rid = self._scaling_id(slot)
        metric: dict[str, Any] = {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"}
        if st.autoscaling_metric == "requests":
            lb = net["lb"]["LoadBalancerArn"].split(":loadbalancer/", 1)[1]
            group = self._ensure_group_arn(slot).split(":", 5)[5]
            metric = {"PredefinedMetricType": "ALBRequestCountPerTarget", "ResourceLabel": f"{lb}/{group}"}
        with translated(f"set up the target tracking of {rid}"):
            aas.register_scalable_target(ServiceNamespace="ecs", ResourceId=rid, ScalableDimension=SCALING,
                                         MinCapacity=st.desired_count, MaxCapacity=int(st.autoscaling_max or 1))
            aas.put_scaling_policy(PolicyName="mldeploy-target-tracking", ServiceNamespace="ecs", ResourceId=rid,
                                   ScalableDimension=SCALING, PolicyType="TargetTrackingScaling",
                                   TargetTrackingScalingPolicyConfiguration={
                                       "TargetValue": float(st.autoscaling_target), "PredefinedMetricSpecification": metric,
                                       "ScaleInCooldown": 300, "ScaleOutCooldown": 60})

    def _delete_service(self, name: str) -> None:
        try:
            self.ecs.update_service(cluster=self.cluster, service=name, desiredCount=0)
        except self.ecs.exceptions.ServiceNotFoundException:
            return
        self.ecs.delete_service(cluster=self.cluster, service=name, force=True)

    def _retire(self, slot: str, current: dict[str, Any] | None) -> None:
        """Remove a slot that takes no traffic any more: its header rule, scaling, service, target group.
        A failure is a warning (what serves was verified)."""
        e = (current or {"slots": {}})["slots"].get(slot, {})
        print(f"  Removing {slot} ({self.service_name(slot)})", flush=True)
        try:
            with translated(f"remove the slot {slot}"):
                if e.get("header"):
                    self.elb.delete_rule(RuleArn=e["header"])
                if self.settings.autoscaling_max:
                    aas = client("application-autoscaling", self.region)
                    try:
                        aas.deregister_scalable_target(ServiceNamespace="ecs", ResourceId=self._scaling_id(slot),
                                                       ScalableDimension=SCALING)
                    except aas.exceptions.ObjectNotFoundException:
                        pass
                if e.get("service"):
                    self._delete_service(e["service"])
                if e.get("group"):
                    self.elb.delete_target_group(TargetGroupArn=e["group"])
                    self._groups.pop(slot, None)
                client("cloudwatch", self.region).delete_alarms(AlarmNames=self._alarm_names(slot))
        except MldeployError as err:
            github.warning(f"{err.message} (it takes no traffic; remove it in the console)")

    def _restore(self, before: dict[str, Any] | None, done: dict[str, Any]) -> str:
        """Put back the weights and the services' task definitions; remove what this run made."""
        undone = []
        with translated("restore the listener rule and the services"):
            if done["main"] and before and before["main"]:
                self.elb.modify_rule(RuleArn=before["main"]["arn"], Actions=before["main"]["actions"])
            elif done["main"]:
                self.elb.delete_rule(RuleArn=done["main"])
            for slot, td in done["updated"].items():
                self.ecs.update_service(cluster=self.cluster, service=self.service_name(slot), taskDefinition=td)
                undone.append(f"{self.service_name(slot)} is back on {td.rsplit('/', 1)[-1]}")
            for arn in done["rules"]:
                self.elb.delete_rule(RuleArn=arn)
            for slot in done["services"]:
                self._delete_service(self.service_name(slot))
                undone.append(f"{self.service_name(slot)} was removed")
            for arn in done["groups"]:
                self.elb.delete_target_group(TargetGroupArn=arn)
                self._groups = {s: g for s, g in self._groups.items() if g != arn}
        if before is None or not before["main"]:
            return "rolled back: nothing serves, as before" + (f" ({'; '.join(undone)})" if undone else "")
        weights = ", ".join(f"{s} {pct}%" for s, pct in before["main"]["weights"].items())
        return f"rolled back: the listener serves as before ({weights})" + (f"; {'; '.join(undone)}" if undone else "")

    # -- monitoring -----------------------------------------------------------------------------------
    def _metric_dims(self, current: dict[str, Any], slot: str) -> dict[str, str]:
        group = current["slots"].get(slot, {}).get("group") or self._ensure_group_arn(slot)
        return {"TargetGroup": group.split(":", 5)[5],
                "LoadBalancer": current["lb"]["LoadBalancerArn"].split(":loadbalancer/", 1)[1]}

    def slot_metrics(self, window: float, pr: int | None = None) -> Collected:
        """CloudWatch AWS/ApplicationELB RequestCount, HTTPCode_Target_5XX_Count and TargetResponseTime
        (seconds) per slot's target group."""
        from mldeploy.monitor.metrics import Collected

        current = self.read()
        canary = self.compared(current, pr)
        assert current is not None
        dims = {slot: self._metric_dims(current, slot) for slot in ("production", canary)}
        stats = aws_cloud.cloudwatch_slot_stats(self.region, "AWS/ApplicationELB", dims,
                                                ("RequestCount", "HTTPCode_Target_5XX_Count", "TargetResponseTime"),
                                                1000.0, window)
        return Collected(stats["production"], stats[canary], window,
                         f"CloudWatch AWS/ApplicationELB {current['lb']['LoadBalancerName']}",
                         notes=["errors are the targets' 5xx answers (the ALB's own 5xx are not the model's)",
                                "prediction divergence not measured: ECS does not capture requests"])

    def monitor_plan(self, cfg: Config, config_file: str | None = None) -> SetupPlan:
        """The alarms' SNS topic and a request-count anomaly alarm on production's target group."""
        from mldeploy.deploy import aws_alarms
        from mldeploy.monitor.setup import SetupPlan, schedule_snippets

        result = SetupPlan(f"aws {self.name}", self.endpoint)
        result.notes.append("ECS has no SageMaker Model Monitor: alarms and SNS only; check drift with "
                            "`mldeploy monitor drift` on a schedule")
        result.notes += schedule_snippets(cfg, config_file)
        current = self.read()
        if current is None or "production" not in current["slots"]:
            raise UsageError(f"{self.endpoint} has no production slot to watch", hint="deploy it first")
        aws_alarms.plan(cfg, self.endpoint, self.region,
                        ("AWS/ApplicationELB", self._metric_dims(current, "production")), result,
                        metric_name="RequestCount")
        return result

    @classmethod
    def doctor(cls, deploy: DeploySection) -> list[tuple[str, bool, str]]:
        """Identity and permissions, then the pieces the config names: cluster, listener, subnets, roles."""
        st = deploy.aws.ecs
        rows = aws_cloud.doctor(deploy, {
            "ecs:ListClusters": ("ecs", "list_clusters", {"maxResults": 1}),
            "elasticloadbalancing:DescribeLoadBalancers": ("elbv2", "describe_load_balancers", {"PageSize": 1}),
            "application-autoscaling:DescribeScalableTargets": ("application-autoscaling", "describe_scalable_targets",
                                                               {"ServiceNamespace": "ecs", "MaxResults": 1}),
            "cloudwatch:DescribeAlarms": ("cloudwatch", "describe_alarms", {"MaxRecords": 1})})
        if not rows or not rows[0][1] or not (st.cluster and st.listener_arn):
            return rows
        try:
            target = cls("doctor", deploy)
            net = target._network()
            rows.append(("listener", True, (f"{net['listener']['Protocol']}:{net['listener']['Port']} on "
                                           f"{net['lb']['LoadBalancerName']} in {net['lb']['VpcId']}; url {net['url']}")))
            target._checks(net)
            rows.append(("cluster, subnets, roles", True, (f"{target.cluster}; subnets in {net['lb']['VpcId']}; "
                                                          "both roles trust ecs-tasks.amazonaws.com")))
        except MldeployError as e:
            rows.append(("ecs pieces", False, e.describe()))
        return rows
