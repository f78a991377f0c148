"""An API Gateway REST API in front of a Lambda target (deploy.aws.lambda.api_gateway): keys and limits.

    REST API mldeploy-<function>   /{proxy+} ANY, apiKeyRequired; AWS_PROXY integration invoking
                                   <function>:${stageVariables.alias}
      stage production             alias = live          (the alias keeps the weighted split)
      stage <canary slot>          alias = its version   (the canary alone, at its own URL)
    usage plan mldeploy-<function> throttle (rate, burst) and quota, on every stage; its API keys
    lambda permissions             apigateway.amazonaws.com may invoke live and the canary's version

API Gateway's stage canarySettings are not used: the traffic split stays on the alias, so the
production stage serves exactly what the function URL serves. Key values are never printed: a key is
created by API Gateway, or imported from a Secrets Manager secret (its value masked in the log).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mldeploy import github
from mldeploy.deploy import Plan
from mldeploy.deploy.aws import client, resource_name, tags, translated
from mldeploy.errors import UsageError

if TYPE_CHECKING:
    from mldeploy.config import ApiGatewaySection

STATEMENT = "mldeploy-apigateway"
VARIABLE = "alias"


class ApiGatewayFront:
    def __init__(self, function: str, region: str, settings: ApiGatewaySection) -> None:
        self.function, self.region, self.settings = function, region, settings
        self.api = client("apigateway", region)
        self.lam = client("lambda", region)
        self.name = resource_name("mldeploy", function, limit=128)

    # -- reading ----------------------------------------------------------------------------------
    def read(self) -> dict[str, Any] | None:
        """The REST API, its stages (slot -> the stage variable's alias), usage plan and key names."""
        with translated(f"read the REST API {self.name}"):
            api = next((a for page in self.api.get_paginator("get_rest_apis").paginate() for a in page["items"]
                        if a["name"] == self.name), None)
            if api is None:
                return None
            stages = {s["stageName"]: (s.get("variables") or {}).get(VARIABLE)
                      for s in self.api.get_stages(restApiId=api["id"])["item"]}
            proxy = next((r for r in self.api.get_resources(restApiId=api["id"])["items"]
                          if r.get("pathPart") == "{proxy+}"), None)
            method = (proxy or {}).get("resourceMethods", {}).get("ANY")
            if proxy and method is not None:
                method = self.api.get_method(restApiId=api["id"], resourceId=proxy["id"], httpMethod="ANY")
            plan = self._usage_plan()
            keys = sorted(k["name"] for k in self.api.get_usage_plan_keys(usagePlanId=plan["id"])["items"]) \
                if plan else []
        return {"id": api["id"], "url": f"https://{api['id']}.execute-api.{self.region}.amazonaws.com",
                "stages": stages, "proxy": proxy and proxy["id"], "root": self._root(api["id"]),
                "key_required": bool(method and method.get("apiKeyRequired")),
                "usage_plan": plan and {"id": plan["id"], "throttle": plan.get("throttle"), "quota": plan.get("quota"),
                                        "stages": sorted(s["stage"] for s in plan.get("apiStages", []))},
                "keys": keys}

    def _root(self, api_id: str) -> str:
        return next(r["id"] for r in self.api.get_resources(restApiId=api_id)["items"] if r["path"] == "/")

    def _usage_plan(self) -> dict[str, Any] | None:
        return next((p for page in self.api.get_paginator("get_usage_plans").paginate() for p in page["items"]
                     if p["name"] == self.name), None)

    def _throttle(self) -> dict[str, Any]:
        return {"rateLimit": float(self.settings.throttle_rate), "burstLimit": int(self.settings.throttle_burst)}

    def _quota(self) -> dict[str, Any] | None:
        s = self.settings
        return {"limit": s.quota_limit, "period": s.quota_period, "offset": 0} if s.quota_limit else None

    def _key_names(self) -> list[str]:
        return sorted({*self.settings.api_keys, *([self.settings.key_name] if self.settings.key_secret else [])})

    def _foreign_keys(self, plan_id: str | None) -> None:
        """A key of ours that another usage plan holds would be limited twice: refused, one line."""
        with translated("read the API keys"):
            for name in self._key_names():
                for key in self.api.get_api_keys(nameQuery=name)["items"]:
                    if key["name"] != name:
                        continue
                    others = [p["name"] for p in self.api.get_usage_plans(keyId=key["id"])["items"]
                              if p["id"] != plan_id]
                    if others:
                        raise UsageError(f"the API key {name} is in another usage plan ({', '.join(others)})",
                                         hint="use another key name in deploy.aws.lambda.api_gateway, or remove "
                                              "the key from that plan")

    # -- planning and applying --------------------------------------------------------------------
    def wanted_stages(self, after: dict[str, str]) -> dict[str, str]:
        """Stage -> the alias or version its variable names (production: the alias live)."""
        return {slot: "live" if slot == "production" else version for slot, version in after.items()}

    def plan(self, plan: Plan, after: dict[str, str], current: dict[str, Any] | None) -> None:
        self._foreign_keys((current or {}).get("usage_plan", {}) and current["usage_plan"]["id"])  # type: ignore[index]
        if current is None:
            plan.add("create", f"apigateway rest-api {self.name}", "integration", new=f"{self.function}:${{stageVariables.alias}}")
        elif current["key_required"] != self.settings.require_key or not current["proxy"]:
            plan.add("update", f"apigateway rest-api {self.name}", "apiKeyRequired", current["key_required"],
                     self.settings.require_key)
        stages = current["stages"] if current else {}
        for stage, alias in self.wanted_stages(after).items():
            if stages.get(stage) != alias:
                plan.add("create" if stage not in stages else "update", f"apigateway stage {self.name}/{stage}",
                         VARIABLE, stages.get(stage), alias)
        for stage in stages:
            if stage not in after:
                plan.add("delete", f"apigateway stage {self.name}/{stage}", old=stages[stage])
        used = current["usage_plan"] if current else None
        if used is None:
            plan.add("create", f"apigateway usage-plan {self.name}", "throttle", new=self._throttle())
        elif (used["throttle"], used["quota"]) != (self._throttle(), self._quota()) \
                or used["stages"] != sorted(after):
            plan.add("update", f"apigateway usage-plan {self.name}", "limits and stages",
                     f"{used['throttle']} {used['quota']} {used['stages']}", f"{self._throttle()} {self._quota()} {sorted(after)}")
        for name in self._key_names():
            if name not in (current or {}).get("keys", []):
                plan.add("create", f"apigateway api-key {name}", "usage plan", new=self.name)

    def ensure(self, after: dict[str, str], function_arn: str) -> None:
        """Make the wiring so (after: slot -> the version it serves, the production slot through live)."""
        current = self.read()
        with translated(f"set up the REST API {self.name}"):
            api_id = current["id"] if current else self.api.create_rest_api(
                name=self.name, description=f"mldeploy: {self.function}", endpointConfiguration={"types": ["REGIONAL"]},
                tags=tags(self.function))["id"]
            proxy = current["proxy"] if current else None
            if proxy is None:
                proxy = self.api.create_resource(restApiId=api_id, parentId=self._root(api_id), pathPart="{proxy+}")["id"]
            self.api.put_method(restApiId=api_id, resourceId=proxy, httpMethod="ANY", authorizationType="NONE",
                                apiKeyRequired=self.settings.require_key)
            uri = (f"arn:aws:apigateway:{self.region}:lambda:path/2015-03-31/functions/{function_arn}:"
                   f"${{stageVariables.{VARIABLE}}}/invocations")
            self.api.put_integration(restApiId=api_id, resourceId=proxy, httpMethod="ANY", type="AWS_PROXY",
                                     integrationHttpMethod="POST", uri=uri)
            deployment = self.api.create_deployment(restApiId=api_id, description="mldeploy")["id"]
            stages = current["stages"] if current else {}
            wanted = self.wanted_stages(after)
            for stage, alias in wanted.items():
                if stage in stages:
                    self.api.update_stage(restApiId=api_id, stageName=stage, patchOperations=[
                        {"op": "replace", "path": "/deploymentId", "value": deployment},
                        {"op": "replace", "path": f"/variables/{VARIABLE}", "value": alias}])
                else:
                    self.api.create_stage(restApiId=api_id, stageName=stage, deploymentId=deployment,
                                          variables={VARIABLE: alias})
                self._permit(alias, api_id, function_arn)
            plan_id = self._ensure_usage_plan(api_id, sorted(wanted))
            for stage in stages:
                if stage not in wanted:
                    self.api.delete_stage(restApiId=api_id, stageName=stage)
            self._ensure_keys(plan_id, (current or {}).get("keys", []))

    def _permit(self, qualifier: str, api_id: str, function_arn: str) -> None:
        """API Gateway may invoke this alias or version, from this API only."""
        try:
            policy = json.loads(self.lam.get_policy(FunctionName=self.function, Qualifier=qualifier)["Policy"])
            if any(s.get("Sid") == STATEMENT for s in policy.get("Statement", [])):
                return
        except self.lam.exceptions.ResourceNotFoundException:
            pass
        account = function_arn.split(":")[4]
        self.lam.add_permission(FunctionName=self.function, Qualifier=qualifier, StatementId=STATEMENT,
                                Action="lambda:InvokeFunction", Principal="apigateway.amazonaws.com",
                                SourceArn=f"arn:aws:execute-api:{self.region}:{account}:{api_id}/*/*/*")

    def _ensure_usage_plan(self, api_id: str, stages: list[str]) -> str:
        plan = self._usage_plan()
        quota = self._quota()
        if plan is None:
            return str(self.api.create_usage_plan(
                name=self.name, description=f"mldeploy: {self.function}", throttle=self._throttle(),
                apiStages=[{"apiId": api_id, "stage": s} for s in stages], tags=tags(self.function),
                **({"quota": quota} if quota else {}))["id"])
        ops = [{"op": "replace", "path": "/throttle/rateLimit", "value": f"{self._throttle()['rateLimit']:g}"},
               {"op": "replace", "path": "/throttle/burstLimit", "value": str(self._throttle()["burstLimit"])}]
        if quota:
            ops += [{"op": "replace", "path": "/quota/limit", "value": str(quota["limit"])},
                    {"op": "replace", "path": "/quota/period", "value": quota["period"]}]
        have = {s["stage"] for s in plan.get("apiStages", [])}
        ops += [{"op": "add", "path": "/apiStages", "value": f"{api_id}:{s}"} for s in stages if s not in have]
        ops += [{"op": "remove", "path": "/apiStages", "value": f"{api_id}:{s}"} for s in have if s not in stages]
        self.api.update_usage_plan(usagePlanId=plan["id"], patchOperations=ops)
        return str(plan["id"])

    def _ensure_keys(self, plan_id: str, have: list[str]) -> None:
        """Each key named in the config, in the usage plan; an imported key's value comes from its secret."""
        for name in self._key_names():
            if name in have:
                continue
            found = next((k for k in self.api.get_api_keys(nameQuery=name)["items"] if k["name"] == name), None)
            if found is None:
                value: dict[str, str] = {}
                if self.settings.key_secret and name == self.settings.key_name:
                    secret = client("secretsmanager", self.region).get_secret_value(
                        SecretId=self.settings.key_secret)["SecretString"]
                    github.mask(secret)
                    value = {"value": secret}
                found = self.api.create_api_key(name=name, enabled=True, tags=tags(self.function), **value)
            self.api.create_usage_plan_key(usagePlanId=plan_id, keyId=found["id"], keyType="API_KEY")
