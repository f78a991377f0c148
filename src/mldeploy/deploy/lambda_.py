"""AWS Lambda: slots are published versions of one function, the canary share is the alias's weight.

    function <name>   (PackageType Image; $LATEST holds the image and settings last deployed)
      version N       immutable; description "mldeploy slot=<slot> image=sha256:..."
      alias live  ->  FunctionVersion P                               production: 100 - W %
                      RoutingConfig.AdditionalVersionWeights {C: W}   canary:     W %
      function URL on live (AuthType AWS_IAM unless `url_auth: NONE`), provisioned concurrency on live

A deploy updates $LATEST (image, memory, timeout, architecture, environment, role) where it differs,
waits until Lambda has applied it, and publishes a version; a version that already runs this image
with these settings (production's, the canary's or the latest published) is reused, so a re-run
changes nothing. The new version is invoked directly with the smoke request BEFORE it takes any
traffic; then the alias moves: a first or production deploy points live at it with no weights, a
canary keeps live's version and gives the new one its share, a promote points live at the canary, a
rollback drops the weights. Then the alias and each version's image are read back and must equal the
plan, and a canary's alarms (Errors and Duration p99 of the canary's ExecutedVersion behind live) are
watched for `bake_seconds`; a mismatch or an alarm puts the alias back as it was (exit 1).

One canary at a time: Lambda routes an alias to ONE additional version only, so pull requests'
canaries cannot run side by side as SageMaker variants do. A canary deploy while another slot's
canary holds the weight is refused (exit 2), naming that pull request: roll it back or promote it
first. The slot holding the weight is written in the alias's description (`mldeploy canary=<slot>`,
set with every weight change); each version's description records the slot it was published for,
read as a fallback (versions cannot be tagged).
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from mldeploy.deploy import Conflict, Desired, NoCanary, Plan, restoring
from mldeploy.deploy import aws as aws_cloud
from mldeploy.deploy.aws import (
    ECR_HOST,
    alarm_spec,
    bake,
    client,
    ecr_has_image,
    resource_name,
    tags,
    translated,
)
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
    without_model,
)
from mldeploy.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from mldeploy.config import Config, DeploySection
    from mldeploy.monitor.metrics import Collected
    from mldeploy.monitor.setup import SetupPlan

POLL_SECONDS = float(os.environ.get("MLDEPLOY_POLL_SECONDS", "5"))
ALIAS = "live"
NEW = "(new)"          # a version the plan will publish; its number is known only then
# a public URL (url_auth NONE) needs a resource policy letting anyone call it: since October 2025 both
# InvokeFunctionUrl and InvokeFunction (through the URL only)
PUBLIC: dict[str, dict[str, Any]] = {
    "mldeploy-public-url": {"Action": "lambda:InvokeFunctionUrl", "FunctionUrlAuthType": "NONE"},
    "mldeploy-public-invoke": {"Action": "lambda:InvokeFunction", "InvokedViaFunctionUrl": True}}


def ecr_region_of(registry: str) -> str | None:
    match = ECR_HOST.match(registry)
    return match.group(2) if match else None  # not ECR at all: ecr_has_image says so


def _description_field(text: str | None, key: str) -> str | None:
    for word in (text or "").split():
        if word.startswith(f"{key}="):
            return word.split("=", 1)[1]
    return None


class LambdaTarget(Target):
    name = "lambda"

    def __init__(self, endpoint: str, cfg: DeploySection) -> None:
        super().__init__(resource_name(endpoint, limit=64), cfg)
        self.function = self.endpoint
        self.aws = cfg.aws
        self.settings = cfg.aws.lambda_
        self.lam = client("lambda", cfg.region)
        self.region: str = self.lam.meta.region_name

    # -- what serves now --------------------------------------------------------------------------
    def _get(self, doing: str, call: str, **kwargs: Any) -> dict[str, Any] | None:
        """A read that answers None where the resource does not exist."""
        not_found = (self.lam.exceptions.ResourceNotFoundException,
                     self.lam.exceptions.ProvisionedConcurrencyConfigNotFoundException)
        with translated(doing):
            try:
                return getattr(self.lam, call)(FunctionName=self.function, **kwargs)
            except not_found:
                return None

    def _version(self, version: str) -> dict[str, Any]:
        """One published version: its image, settings, the slot it was published for, its health."""
        got = self._get(f"read version {version} of the Lambda function {self.function}", "get_function",
                        Qualifier=version)
        if got is None:
            raise CheckFailed(f"version {version} of {self.function} does not exist (the alias {ALIAS} names it)")
        cfg = got["Configuration"]
        settings = self._settings_of(cfg)
        return {"version": version, "image": got.get("Code", {}).get("ImageUri"), "settings": settings,
                "model": model_from_env(settings["environment"]),
                "slot": _description_field(cfg.get("Description"), "slot"),
                "healthy": cfg.get("State", "Active") == "Active" and cfg.get("LastUpdateStatus") != "Failed"}

    def read(self) -> dict[str, Any] | None:
        """The function, the alias live and per slot its version, image and share; None before a deploy."""
        fn = self._get(f"read the Lambda function {self.function}", "get_function")
        if fn is None:
            return None
        latest = {"image": fn.get("Code", {}).get("ImageUri"), "settings": self._settings_of(fn["Configuration"])}
        alias = self._get(f"read the alias {ALIAS} of {self.function}", "get_alias", Name=ALIAS)
        current: dict[str, Any] = {"latest": latest, "alias": None, "slots": {}, "url": None,
                                   "api": self._front().read() if self.settings.api_gateway else None}
        if alias is None:
            return current
        weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        current["alias"] = {"version": alias["FunctionVersion"], "weights": dict(weights),
                            "description": alias.get("Description") or "", "revision": alias.get("RevisionId")}
        canary_share = 0
        for version, weight in weights.items():
            entry = self._version(version)
            slot = (_description_field(alias.get("Description"), "canary") or entry["slot"] or "canary")
            slot = slot if slot.startswith("canary") else "canary"
            entry["weight"] = round(100 * weight)
            canary_share += entry["weight"]
            current["slots"][slot] = entry
        production = self._version(alias["FunctionVersion"])
        production["weight"] = 100 - canary_share
        current["slots"] = {"production": production, **current["slots"]}
        url = self._get(f"read the function URL of {self.function}", "get_function_url_config", Qualifier=ALIAS)
        if url is not None:
            current["url"] = {"url": url["FunctionUrl"], "auth": url["AuthType"]}
        return current

    # -- the interface ----------------------------------------------------------------------------
    def plan(self, desired: Desired) -> Plan:
        registry = desired.image.split("/", 1)[0]
        if ecr_region_of(registry) not in (None, self.region):
            raise UsageError(f"the image {desired.image} is in ECR in {ecr_region_of(registry)}, the function in "
                             f"{self.region}", hint="Lambda runs images from its own region: push to that region's registry")
        if not ecr_has_image(desired.image, self.region):
            raise UsageError(f"the image {desired.image} is not in ECR",
                             hint="push it first: `mldeploy build --push` with image.registry set to your ECR registry")
        current = self.read()
        slots = current["slots"] if current else {}
        version = self._reusable(current, desired.image, desired.model)
        if "production" not in slots or desired.slot == "production":
            after = {"production": version or NEW}
            share = {"production": 100}
        else:
            holder = next((s for s in slots if s != "production"), None)
            if holder and holder != desired.slot:
                raise UsageError(self._one_canary(holder, slots[holder]),
                                 hint=f"roll it back (`mldeploy rollback{self._pr_flag(holder)}`) or promote it, "
                                      "then deploy this canary again")
            if version == slots["production"]["version"]:
                raise UsageError(f"production (version {version}) already runs {desired.image} with these settings",
                                 hint="a canary of it would change nothing; deploy another image or settings")
            after = {"production": slots["production"]["version"], desired.slot: version or NEW}
            share = {"production": 100 - desired.traffic, desired.slot: desired.traffic}
        return self._plan(desired, current, after, share)

    def apply(self, plan: Plan) -> Status:
        if plan.empty:
            return self.changed(False)
        d, current = plan.desired, plan.state["current"]
        after, share = dict(plan.state["after"]), plan.traffic_after
        before = current["alias"] if current else None
        if NEW in after.values():
            version = self._publish(d, current, next(s for s, v in after.items() if v == NEW))
            after = {s: version if v == NEW else v for s, v in after.items()}
        if d.smoke:  # before any traffic moves: Lambda invokes a version directly
            try:
                self._smoke(after[d.slot] if d.slot in after else after["production"], d.smoke)
            except CheckFailed as e:
                raise CheckFailed(f"{e.message}; rolled back: it never took traffic, "
                                  f"{self._serving_text(current)}") from None
        self._ensure_alarms(after)
        guard = self.guard(current, plan.state["images"].values())
        ours: dict[str, str] = {}  # the alias revision this command wrote: a restore puts back only that
        # no guard.check() here: the alias's RevisionId is Lambda's own compare-and-set, one read fewer
        with restoring(lambda: self._restore(before, current, ours.get("revision")), guard):  # e.g. no URL permission
            ours["revision"] = self._set_alias(after, share, before)
            self._ensure_url()
            if self.settings.api_gateway:
                self._front().ensure(after, self._function_arn())
            self._ensure_provisioned_concurrency()
            self._verify(after, share, plan.state["images"], plan.state["models"])
            canary = next((s for s in after if s != "production"), None)
            if canary and canary == d.slot and self.aws.bake_seconds:
                bake(self.region, self._alarm_names(canary), self.aws.bake_seconds, canary, POLL_SECONDS)
        return self.changed(True)

    def _status(self, current: dict[str, Any] | None) -> Status:
        if current is None:
            return Status(self.function)
        api = current.get("api")
        detail = {"api_gateway": {"url": api["url"], "stages": api["stages"], "key_required": api["key_required"],
                                  "keys": api["keys"], "usage_plan": api["usage_plan"]}} if api else {}
        return Status(self.function, current["url"] and current["url"]["url"],
                      {slot: Slot(s["image"], s["weight"], s["healthy"], {"version": s["version"]}, model=s["model"])
                       for slot, s in current["slots"].items()}, detail)

    def _front(self) -> Any:
        from mldeploy.deploy.lambda_api import ApiGatewayFront

        assert self.settings.api_gateway is not None
        return ApiGatewayFront(self.function, self.region, self.settings.api_gateway)

    def _function_arn(self) -> str:
        with translated(f"read the Lambda function {self.function}"):
            return str(self.lam.get_function(FunctionName=self.function)["Configuration"]["FunctionArn"])

    # promote and rollback move the alias between published versions (one image can run as two
    # versions with different settings), so they are planned by version, not by image
    def promote(self, pr: int | None = None) -> Status:
        current = self.read()
        slot = self.canary(current, pr, "promote")
        assert current is not None  # canary() found one in it
        entry = current["slots"][slot]
        plan = self._plan(Desired(self.function, entry["image"], "production", 0, {}, model=entry["model"]), current,
                          {"production": entry["version"]}, {"production": 100})
        return self.apply(plan)

    def rollback(self, pr: int | None = None) -> Status:
        current = self.read()
        self.canary(current, pr, "roll back")
        assert current is not None  # canary() found one in it
        production = current["slots"]["production"]
        plan = self._plan(Desired(self.function, production["image"], "production", 0, {}, model=production["model"]),
                          current,
                          {"production": production["version"]}, {"production": 100})
        return self.apply(plan)

    # -- planning ---------------------------------------------------------------------------------
    def _wanted_settings(self, model: Model | None) -> dict[str, Any]:
        """The settings a new version gets; a model in storage is handed over in its environment (the
        function's role reads it from S3 at init)."""
        s = self.settings
        return {"memory": s.memory_mb, "timeout": s.timeout_seconds, "architecture": s.architecture,
                "environment": {**s.environment, **model_env(model)}, "role": self.aws.role}

    @staticmethod
    def _settings_of(cfg: dict[str, Any]) -> dict[str, Any]:
        return {"memory": cfg.get("MemorySize"), "timeout": cfg.get("Timeout"),
                "architecture": (cfg.get("Architectures") or ["x86_64"])[0],
                "environment": (cfg.get("Environment") or {}).get("Variables") or {}, "role": cfg.get("Role")}

    def _latest_published(self) -> str | None:
        with translated(f"list the versions of {self.function}"):
            pages = self.lam.get_paginator("list_versions_by_function").paginate(FunctionName=self.function)
            numbers = [int(v["Version"]) for page in pages for v in page["Versions"] if v["Version"].isdigit()]
        return str(max(numbers)) if numbers else None

    def _reusable(self, current: dict[str, Any] | None, image: str, model: Model | None) -> str | None:
        """A published version that runs this image and model with these settings: re-runs reuse it."""
        if current is None:
            return None
        wanted = self._wanted_settings(model)
        candidates = list(current["slots"].values())
        for c in candidates:
            if c["image"] == image and c["settings"] == wanted:
                return c["version"]
        latest = self._latest_published()
        if latest and latest not in {c["version"] for c in candidates}:
            c = self._version(latest)
            if c["image"] == image and c["settings"] == wanted:
                return latest
        return None

    def _one_canary(self, holder: str, entry: dict[str, Any]) -> str:
        who = f"PR {holder.removeprefix('canary-pr')}'s canary" if holder.startswith("canary-pr") else f"the {holder}"
        return (f"{who} (version {entry['version']}, {entry['weight']}%) holds the canary weight of "
                f"{self.function}:{ALIAS}; Lambda routes an alias to one additional version only")

    @staticmethod
    def _pr_flag(slot: str) -> str:
        return f" --pr {slot.removeprefix('canary-pr')}" if slot.startswith("canary-pr") else ""

    def canary(self, current: dict[str, Any] | None, pr: int | None, verb: str) -> str:
        """The one canary Lambda can hold; a pull request's promote or rollback must name it."""
        holder = next((s for s in (current or {}).get("slots", {}) if s != "production"), None)
        if holder is None:
            raise NoCanary(f"{self.function} has no canary{f' for PR {pr}' if pr else ''} to {verb}",
                             hint="deploy one with --stage canary" if verb == "promote" else "nothing changed")
        if pr and holder != f"canary-pr{pr}":
            raise UsageError(f"{self.function} has no canary for PR {pr} to {verb}; its canary is {holder}",
                             hint=f"use{self._pr_flag(holder) or ' no --pr'} to {verb} that one")
        return holder

    def _plan(self, d: Desired, current: dict[str, Any] | None, after: dict[str, str], share: dict[str, int]) -> Plan:
        """The changes that take `current` to `after` (slot -> version, NEW for one to publish) at `share`."""
        slots = current["slots"] if current else {}
        plan = Plan(self.name, d, traffic_before={s: e["weight"] for s, e in slots.items()}, traffic_after=share)
        images = {s: slots[s]["image"] if s in slots and slots[s]["version"] == v else d.image for s, v in after.items()}
        models = {s: slots[s]["model"] if s in slots and slots[s]["version"] == v else d.model for s, v in after.items()}
        plan.state = {"current": current, "after": after, "images": images, "models": models}
        fn = f"lambda function {self.function}"
        if NEW in after.values():
            wanted = self._wanted_settings(d.model)
            if current is None:
                plan.add("create", fn, "image", new=d.image)
                for key in ("memory", "timeout", "architecture"):
                    plan.add("create", fn, key, new=wanted[key])
            else:
                if current["latest"]["image"] != d.image:
                    plan.add("update", fn, "image", current["latest"]["image"], d.image)
                plan_model(plan, fn, model_from_env(current["latest"]["settings"]["environment"]), d.model)
                for key, value in wanted.items():
                    old = current["latest"]["settings"][key]
                    if key == "environment":   # the model's variables are the line above
                        old, value = without_model(old), without_model(value)
                    if old != value and key == "environment" and sorted(old) == sorted(value):
                        # values may be secrets: only the names whose values change are shown (an update
                        # shown as names -> the same names would read as no change, and be left out)
                        changed = sorted(k for k in value if old[k] != value[k])
                        plan.add("update", fn, f"environment values of {', '.join(changed)}")
                    elif old != value:  # environment values may be secrets: only their names are shown
                        shown = (sorted(old), sorted(value)) if key == "environment" else (old, value)
                        plan.add("update", fn, key, *shown)
            plan.add("create", f"lambda version {self.function}", "image", new=d.image)
        alias = current["alias"] if current else None
        weights = self._weights(after, share)
        if alias is None:
            plan.add("create", f"lambda alias {self.function}:{ALIAS}", "version", new=after["production"])
        else:
            if alias["version"] != after["production"]:
                plan.add("update", f"lambda alias {self.function}:{ALIAS}", "version", alias["version"],
                         after["production"])
            if {v: round(100 * w) for v, w in alias["weights"].items()} != {v: round(100 * w) for v, w in weights.items()}:
                plan.add("update", f"lambda alias {self.function}:{ALIAS}", "weights", alias["weights"], weights)
        self._plan_url(plan, current)
        if self.settings.api_gateway:
            self._front().plan(plan, after, current["api"] if current else None)
        self._plan_provisioned_concurrency(plan, alias is not None)
        self._plan_alarms(plan, after)
        return plan

    def _plan_url(self, plan: Plan, current: dict[str, Any] | None) -> None:
        url = current["url"] if current else None
        resource = f"lambda function-url {self.function}:{ALIAS}"
        if url is None:
            plan.add("create", resource, "auth", new=self.settings.url_auth)
        elif url["auth"] != self.settings.url_auth:
            plan.add("update", resource, "auth", url["auth"], self.settings.url_auth)
        public = self._public_statements() if current is not None and current["alias"] is not None else set()
        for sid, statement in PUBLIC.items():
            if self.settings.url_auth == "NONE" and sid not in public:
                plan.add("create", f"lambda permission {self.function}:{ALIAS} {sid}", statement["Action"],
                         new="anyone, through the URL")
            elif self.settings.url_auth != "NONE" and sid in public:
                plan.add("delete", f"lambda permission {self.function}:{ALIAS} {sid}", statement["Action"])

    def _public_statements(self) -> set[str]:
        """Which of our public-URL statements the alias's resource policy holds."""
        policy = self._get(f"read the resource policy of {self.function}:{ALIAS}", "get_policy", Qualifier=ALIAS)
        statements = json.loads(policy["Policy"]).get("Statement", []) if policy else []
        return {s.get("Sid") for s in statements} & set(PUBLIC)

    def _provisioned(self) -> int:
        got = self._get(f"read the provisioned concurrency of {self.function}:{ALIAS}",
                        "get_provisioned_concurrency_config", Qualifier=ALIAS)
        return int(got["RequestedProvisionedConcurrentExecutions"]) if got else 0

    def _plan_provisioned_concurrency(self, plan: Plan, alias_exists: bool) -> None:
        old = self._provisioned() if alias_exists else 0
        new = self.settings.provisioned_concurrency
        if old != new:
            plan.add("update" if old and new else "create" if new else "delete",
                     f"lambda provisioned-concurrency {self.function}:{ALIAS}", "environments", old or None, new or None)

    # -- applying ---------------------------------------------------------------------------------
    def _publish(self, d: Desired, current: dict[str, Any] | None, slot: str) -> str:
        """Bring $LATEST to the image and settings wanted, then publish it as a version; its number."""
        s, wanted = self.settings, self._wanted_settings(d.model)
        config = {"Role": self.aws.role, "MemorySize": s.memory_mb, "Timeout": s.timeout_seconds,
                  "Environment": {"Variables": wanted["environment"]}}
        if current is None:
            with translated(f"create the Lambda function {self.function}"):
                self.lam.create_function(FunctionName=self.function, PackageType="Image",
                                         Code={"ImageUri": d.image}, Architectures=[s.architecture],
                                         Tags=tags(self.function), **config)
            self._wait(None, "create the function")
        else:
            # Lambda refuses a change while one is in progress; a failed earlier image is what this replaces
            self._wait(None, "finish an earlier update", failed_ok=True)
            latest = current["latest"]
            if latest["image"] != d.image or latest["settings"]["architecture"] != s.architecture:
                with translated(f"update the code of {self.function}"):
                    self.lam.update_function_code(FunctionName=self.function, ImageUri=d.image,
                                                  Architectures=[s.architecture])
                self._wait(None, "update the function's image")
            if {k: v for k, v in latest["settings"].items() if k != "architecture"} != \
                    {k: v for k, v in wanted.items() if k != "architecture"}:
                with translated(f"update the configuration of {self.function}"):
                    self.lam.update_function_configuration(FunctionName=self.function, **config)
                self._wait(None, "update the function's configuration")
        with translated(f"publish a version of {self.function}"):
            version = self.lam.publish_version(
                FunctionName=self.function, Description=f"mldeploy slot={slot} image=sha256:{digest_of(d.image)}")["Version"]
        self._wait(version, f"publish version {version}")
        published = self._version(version)
        if (published["image"], published["model"]) != (d.image, d.model):  # another deploy changed $LATEST
            raise CheckFailed(f"version {version} of {self.function} runs {published['image']} "  # in between
                              f"(model {published['model']}), not {d.image} (model {d.model}); "
                              "nothing moved (was another deploy running?)")
        print(f"  {self.function}: published version {version}", flush=True)
        return version

    def _wait(self, qualifier: str | None, doing: str, failed_ok: bool = False) -> None:
        """Until Lambda has applied a change: State Active and LastUpdateStatus Successful (failed_ok: or
        Failed, settled either way)."""
        what = f"{self.function}:{qualifier}" if qualifier else self.function
        started = time.monotonic()
        while True:
            with translated(f"read the state of {what}"):
                cfg = self.lam.get_function_configuration(FunctionName=self.function,
                                                          **({"Qualifier": qualifier} if qualifier else {}))
            state, update = cfg.get("State", "Active"), cfg.get("LastUpdateStatus") or "Successful"
            if failed_ok and state != "Pending" and update != "InProgress":
                return
            if state == "Failed" or update == "Failed":
                reason = cfg.get("StateReason") or cfg.get("LastUpdateStatusReason") or "no reason given"
                raise CheckFailed(f"Lambda could not {doing} ({what}): {reason}")
            if state == "Active" and update == "Successful":
                return
            if time.monotonic() - started > self.aws.wait_seconds:
                raise CheckFailed(f"{what} was still {state}/{update} after {self.aws.wait_seconds} s")
            print(f"  {what}: {state}, update {update} ({time.monotonic() - started:.0f} s)", flush=True)
            time.sleep(POLL_SECONDS)

    def _smoke(self, version: str, body: dict[str, Any]) -> None:
        """Invoke the version itself; a function error or an answer with status >= 400 fails."""
        what = f"the smoke request to version {version}"
        try:
            with translated(f"invoke {self.function}:{version}"):
                r = self.lam.invoke(FunctionName=self.function, Qualifier=version, Payload=json.dumps(body).encode())
                payload = r["Payload"].read()
        except UsageError as e:  # an invoke Lambda refuses is a failed smoke test, not bad usage
            raise CheckFailed(f"{what} failed: {e.message}") from None
        try:
            answer = json.loads(payload or b"null")
        except ValueError:
            answer = None
        if r.get("FunctionError"):
            message = answer.get("errorMessage") if isinstance(answer, dict) else payload[:200].decode(errors="replace")
            raise CheckFailed(f"{what} failed: the function raised ({r['FunctionError']}): {message}")
        if isinstance(answer, dict) and isinstance(answer.get("status"), int) and answer["status"] >= 400:
            raise CheckFailed(f"{what} was answered {answer['status']}: {answer.get('error', '')}")

    @staticmethod
    def _weights(after: dict[str, str], share: dict[str, int]) -> dict[str, float]:
        return {v: share[s] / 100 for s, v in after.items() if s != "production"}

    def _set_alias(self, after: dict[str, str], share: dict[str, int], before: dict[str, Any] | None) -> str:
        """Production is the alias's version, the canary its one additional weighted version; the
        description says which slot holds the weight. Only the alias as read is changed (its RevisionId:
        Lambda's compare-and-set). The alias's new revision."""
        canary = next((s for s in after if s != "production"), None)
        args = {"FunctionName": self.function, "Name": ALIAS, "FunctionVersion": after["production"],
                "Description": f"mldeploy canary={canary}" if canary else "mldeploy",
                "RoutingConfig": {"AdditionalVersionWeights": self._weights(after, share)}}
        with translated(f"point {self.function}:{ALIAS} at version {after['production']}"):
            try:
                if before is None:
                    return self.lam.create_alias(**args)["RevisionId"]
                return self.lam.update_alias(**args, RevisionId=before["revision"])["RevisionId"]
            except self.lam.exceptions.PreconditionFailedException:
                raise Conflict(f"another command changed {self.function}:{ALIAS} after this one read it; "
                               "this one moved no traffic", hint="run it again: it plans from what serves then") from None

    def _ensure_url(self) -> None:
        url = self._get(f"read the function URL of {self.function}", "get_function_url_config", Qualifier=ALIAS)
        auth = self.settings.url_auth
        with translated(f"set up the function URL of {self.function}:{ALIAS}"):
            if url is None:
                self.lam.create_function_url_config(FunctionName=self.function, Qualifier=ALIAS, AuthType=auth)
            elif url["AuthType"] != auth:
                self.lam.update_function_url_config(FunctionName=self.function, Qualifier=ALIAS, AuthType=auth)
            public = self._public_statements()
            for sid, statement in PUBLIC.items():
                if auth == "NONE" and sid not in public:
                    self.lam.add_permission(FunctionName=self.function, Qualifier=ALIAS, StatementId=sid,
                                            Principal="*", **statement)
                elif auth != "NONE" and sid in public:
                    self.lam.remove_permission(FunctionName=self.function, Qualifier=ALIAS, StatementId=sid)

    def _ensure_provisioned_concurrency(self) -> None:
        wanted, old = self.settings.provisioned_concurrency, self._provisioned()
        if wanted == old:
            return
        with translated(f"set the provisioned concurrency of {self.function}:{ALIAS}"):
            if not wanted:
                self.lam.delete_provisioned_concurrency_config(FunctionName=self.function, Qualifier=ALIAS)
                return
            self.lam.put_provisioned_concurrency_config(FunctionName=self.function, Qualifier=ALIAS,
                                                        ProvisionedConcurrentExecutions=wanted)
        started = time.monotonic()
        while True:  # environments are started for the alias's versions: READY, or FAILED with a reason
            got = self._get("read the provisioned concurrency", "get_provisioned_concurrency_config", Qualifier=ALIAS)
            status = (got or {}).get("Status", "FAILED")
            if status == "READY":
                return
            if status == "FAILED" or time.monotonic() - started > self.aws.wait_seconds:
                raise CheckFailed(f"provisioned concurrency of {self.function}:{ALIAS} is {status}: "
                                  f"{(got or {}).get('StatusReason', 'no reason given')}")
            print(f"  {self.function}:{ALIAS}: provisioned concurrency {status}", flush=True)
            time.sleep(POLL_SECONDS)

    def _verify(self, after: dict[str, str], share: dict[str, int], images: dict[str, str],
                models: dict[str, Model | None]) -> None:
        current = self.read()
        alias = current["alias"] if current else None
        if current is None or alias is None or alias["version"] != after["production"]:
            raise CheckFailed(f"{self.function}:{ALIAS} points at {alias and alias['version']}, "
                              f"not the planned version {after['production']}")
        served = {s: (e["version"], e["image"], e["weight"]) for s, e in current["slots"].items()}
        planned = {s: (v, images[s], share[s]) for s, v in after.items()}
        if served != planned:
            raise CheckFailed(f"{self.function}:{ALIAS} serves {served}, not the planned {planned}")
        verify_models({s: e["model"] for s, e in current["slots"].items()}, models)

    def _restore(self, before: dict[str, Any] | None, current: dict[str, Any] | None, ours: str | None) -> str:
        """Put the alias back as it was, only if it is still as this command left it (ours: its revision
        then; None where the answer never came); say so in the words the failure message ends with."""
        with translated(f"restore {self.function}:{ALIAS}"):
            if before is None:  # there was no alias: nothing served, and nothing shall
                try:
                    self.lam.delete_function_url_config(FunctionName=self.function, Qualifier=ALIAS)
                except self.lam.exceptions.ResourceNotFoundException:
                    pass
                try:
                    self.lam.delete_alias(FunctionName=self.function, Name=ALIAS)
                except self.lam.exceptions.ResourceNotFoundException:
                    return "nothing serves, as before"
                return f"rolled back: the alias {ALIAS} was removed, nothing serves"
            try:
                self.lam.update_alias(FunctionName=self.function, Name=ALIAS, FunctionVersion=before["version"],
                                      Description=before["description"], **({"RevisionId": ours} if ours else {}),
                                      RoutingConfig={"AdditionalVersionWeights": before["weights"]})
            except self.lam.exceptions.PreconditionFailedException:
                return "not restored: another command changed the alias meanwhile; `mldeploy status` shows what serves"
        return f"rolled back: {self._serving_text(current)}"

    def _serving_text(self, current: dict[str, Any] | None) -> str:
        if not current or not current["slots"]:
            return f"nothing serves {self.function} yet"
        return f"{ALIAS} serves as before (" + ", ".join(
            f"{s} v{e['version']} {e['weight']}%" for s, e in current["slots"].items()) + ")"

    # -- alarms -----------------------------------------------------------------------------------
    def _alarm_names(self, slot: str) -> list[str]:
        return [resource_name("mldeploy", self.function, slot, kind, limit=255) for kind in ("5xx", "latency-p99")]

    def _alarm_dims(self, slot: str, version: str) -> dict[str, str]:
        """Lambda's metrics through an alias: Resource is function:alias; a weighted alias's versions
        are told apart by ExecutedVersion (production watches the whole alias)."""
        dims = {"FunctionName": self.function, "Resource": f"{self.function}:{ALIAS}"}
        return dims if slot == "production" else {**dims, "ExecutedVersion": version}

    def _alarms_wanted(self, after: dict[str, str]) -> dict[str, dict[str, Any]]:
        wanted = {}
        for slot, version in after.items():
            five, latency = self._alarm_names(slot)
            common = alarm_spec("AWS/Lambda", self._alarm_dims(slot, version), tags(self.function, slot))
            wanted[five] = {"AlarmName": five, "MetricName": "Errors", "Statistic": "Sum",
                            "Threshold": float(self.aws.errors_5xx), **common}
            wanted[latency] = {"AlarmName": latency, "MetricName": "Duration", "ExtendedStatistic": "p99",
                               "Threshold": float(self.aws.latency_p99_ms), **common}  # Duration is in ms
        return wanted

    def _alarms_existing(self, names: list[str]) -> dict[str, dict[str, Any]]:
        with translated("read the CloudWatch alarms"):
            alarms = client("cloudwatch", self.region).describe_alarms(AlarmNames=names)["MetricAlarms"]
        return {a["AlarmName"]: a for a in alarms}

    @staticmethod
    def _alarm_differs(spec: dict[str, Any], alarm: dict[str, Any] | None) -> str | None:
        """'create', 'redefine' (other dimensions: a new alarm, not the old one's state), 'update' or None."""
        if alarm is None:
            return "create"
        def dims(alarm: dict[str, Any]) -> list[tuple[str, str]]:
            return sorted((d["Name"], d["Value"]) for d in alarm.get("Dimensions", []))

        if dims(alarm) != dims(spec):
            return "redefine"
        if alarm.get("Threshold") != spec["Threshold"] or alarm.get("MetricName") != spec["MetricName"]:
            return "update"
        return None

    def _plan_alarms(self, plan: Plan, after: dict[str, str]) -> None:
        wanted = self._alarms_wanted(after)
        existing = self._alarms_existing(list(wanted))
        for name, spec in wanted.items():
            change = self._alarm_differs(spec, existing.get(name))
            if change:
                plan.add("create" if change == "create" else "update", f"cloudwatch alarm {name}",
                         "" if change == "create" else "dimensions" if change == "redefine" else "threshold")

    def _ensure_alarms(self, after: dict[str, str]) -> None:
        cw = client("cloudwatch", self.region)
        wanted = self._alarms_wanted(after)
        existing = self._alarms_existing(list(wanted))
        for name, spec in wanted.items():
            change = self._alarm_differs(spec, existing.get(name))
            with translated(f"set up the CloudWatch alarm {name}"):
                if change == "redefine":  # an alarm about another version: its state must not carry over
                    cw.delete_alarms(AlarmNames=[name])
                if change:
                    cw.put_metric_alarm(**spec)

    # -- monitoring -----------------------------------------------------------------------------------
    def slot_metrics(self, window: float, pr: int | None = None) -> Collected:
        """CloudWatch AWS/Lambda Invocations, Errors, Duration p50/p99 per version behind the alias."""
        from mldeploy.monitor.metrics import Collected

        current = self.read()
        slots, canary = self._status(current).slots, self.compared(current, pr)
        # each version behind the alias on its own, so production's figures leave the canary's requests out
        dims = {slot: {"FunctionName": self.function, "Resource": f"{self.function}:{ALIAS}",
                       "ExecutedVersion": slots[slot].detail["version"]} for slot in ("production", canary)}
        stats = aws_cloud.cloudwatch_slot_stats(self.region, "AWS/Lambda", dims, ("Invocations", "Errors", "Duration"),
                                                1.0, window)
        return Collected(stats["production"], stats[canary], window, f"CloudWatch AWS/Lambda {self.function}:{ALIAS}",
                         notes=["Lambda counts function errors (crashes, timeouts) as errors, not 5xx answers",
                                "prediction divergence not measured: Lambda does not capture requests"])

    def monitor_plan(self, cfg: Config, config_file: str | None = None) -> SetupPlan:
        """The alarms' SNS topic and an invocations anomaly alarm; drift is checked on a schedule."""
        from mldeploy.deploy import aws_alarms
        from mldeploy.monitor.setup import SetupPlan, schedule_snippets

        result = SetupPlan(f"aws {self.name}", self.function)
        result.notes.append("Lambda has no SageMaker Model Monitor: alarms and SNS only; check drift with "
                            "`mldeploy monitor drift` on a schedule")
        result.notes += schedule_snippets(cfg, config_file)
        aws_alarms.plan(cfg, self.function, self.region, ("AWS/Lambda", {"FunctionName": self.function}), result)
        return result

    @classmethod
    def doctor(cls, deploy: DeploySection) -> list[tuple[str, bool, str]]:
        return aws_cloud.doctor(deploy, {"lambda:ListFunctions": ("lambda", "list_functions", {"MaxItems": 1})})
