"""Azure Container Apps: slots are revision labels, the canary share is the app's ingress traffic.

    container app <name>  (multiple-revision mode, in deploy.azure.containerapps.managed_environment)
      revision <name>--production-<digest8>-<spec4>   label production    weight 100 - canaries
      revision <name>--canary[-prN]-<digest8>-<spec4> label canary[-prN]  weight N
    each label has its own URL: https://<name>---<label>.<environment's default domain>

A revision's suffix says which slot it was made for, which image (the digest's first 8 hex digits) and
which settings (a hash of CPU, memory, scale, identity, environment and secrets), so deploying the same
image with the same settings to the same slot names a revision that exists: a re-run changes nothing.
A production deploy reuses a serving revision that runs the image with these settings (a promoted
canary stays the revision it was).

A deploy: the new revision is made (a PATCH of the app's template) at 0% under a staging label
`next-<slot>`, so it has its own URL and takes no traffic; it must provision and run, run the planned
image by digest (read back), and answer a smoke request at that label's URL; only then (after the
guard against a concurrent command) does one PATCH of ingress.traffic move the slot's label and
weights to it, which is read back. Any failure puts the previous traffic back and deactivates
the new revision. The first deploy creates the app with its revision at 100% under `production` (nothing
served before), checked the same way; its failure deletes the app. Revisions that no longer serve are
deactivated (a production deploy or a promote ends every canary; a rollback gives the canaries' share
back to production). A revision that failed keeps its name taken (Azure never reuses a suffix): the next
deploy of the same image and settings salts the spec part.

The image is pulled with a managed identity (deploy.azure.containerapps.identity: a user-assigned
identity's resource id, or the app's system-assigned one), which needs AcrPull on the registry; the same
identity reads the Key Vault secrets (Key Vault Secrets User). Callers: with allow_anonymous false (the
default) the app must either have allowed_ips (ingress IP restrictions that the kit sets) or its own
built-in authentication requiring a login; the smoke request then carries a token for the app's Entra
ID registration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mldeploy import __version__, github
from mldeploy.clouds.azure import arm_request
from mldeploy.deploy import Conflict, Desired, Plan, canary_shares, dns_label, pick_canary
from mldeploy.deploy import azure as azure_cloud
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
    verify_revisions,
)
from mldeploy.errors import CheckFailed, MldeployError, UsageError

if TYPE_CHECKING:
    from mldeploy.config import Config, DeploySection
    from mldeploy.monitor.metrics import Collected
    from mldeploy.monitor.setup import SetupPlan

POLL_SECONDS = float(os.environ.get("MLDEPLOY_POLL_SECONDS", "5"))
PORT = 8080
STAGING = "next-"       # the label of a revision being checked before it takes traffic
# a provisioned revision's runningState when it can serve (ScaledToZero: minReplicas 0 and no request
# yet, its first request waits for a replica), and when it never will
RUNNING = ("Running", "RunningAtMaxScale", "ScaledToZero")
STOPPED = ("Failed", "ActivationFailed")
REVISION = re.compile(r"^(?P<app>[a-z0-9-]+?)--(?P<slot>[a-z0-9-]+)-(?P<digest>[0-9a-f]{8})-(?P<spec>[0-9a-f]{4})$")
METRICS = "Microsoft.App/containerApps"
# the roles a deploy needs (doctor names them; the identity's own roles are the user's to grant)
ROLES = ("Container Apps Contributor (or Contributor) on the resource group: create the app, revisions, traffic",
         "Reader on the Container Apps environment: read its default domain",
         "Managed Identity Operator on the user-assigned identity (when deploy.azure.containerapps.identity is one)",
         "Monitoring Reader on the app: canary analysis; Monitoring Contributor: monitor setup",
         "for the app's identity (not the deployer): AcrPull on the registry, Key Vault Secrets User on the vault")
IDENTITY_API_VERSION = "2023-01-31"   # Microsoft.ManagedIdentity/userAssignedIdentities
ROLES_HINT = "the deploying identity needs Container Apps Contributor on the resource group (`mldeploy doctor` lists the roles)"


def app_name(endpoint: str) -> str:
    """A Container App name: lowercase letters, digits and single hyphens, a letter first, at most 32."""
    return dns_label(endpoint, 32)


def coordinates(deploy: DeploySection) -> tuple[str, str]:
    """(subscription id, resource group) from deploy.azure, else AZURE_SUBSCRIPTION_ID / AZURE_RESOURCE_GROUP."""
    az = deploy.azure
    sub = az.subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID")
    rg = az.resource_group or os.environ.get("AZURE_RESOURCE_GROUP")
    missing = [k for k, v in (("deploy.azure.subscription_id (or AZURE_SUBSCRIPTION_ID)", sub),
                              ("deploy.azure.resource_group (or AZURE_RESOURCE_GROUP)", rg)) if not v]
    if missing:
        raise UsageError(f"no Azure resource group for the container app: {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not set",
                         hint="name them in mldeploy.yaml or the environment")
    return str(sub), str(rg)


@contextlib.contextmanager
def translated(doing: str) -> Iterator[None]:
    """azure.translated, with Container Apps' own hints: a refusal names the role, a 404 the resource group."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

    with azure_cloud.translated(doing):
        try:
            yield
        except ResourceNotFoundError as e:
            raise UsageError(f"Azure could not {doing}: {azure_cloud.error_text(e)}",
                             hint="check deploy.azure.subscription_id and resource_group") from None
        except (ClientAuthenticationError, HttpResponseError) as e:
            if e.status_code != 403:
                raise
            raise UsageError(f"Azure refused to {doing} (HTTP 403): {azure_cloud.error_text(e)}",
                             hint=ROLES_HINT) from None


def _text(value: Any) -> str:
    """An SDK enum or string as its REST value."""
    return str(getattr(value, "value", value) or "")


def _missing(error: Exception) -> bool:
    """A 404 about the app itself (not its resource group or subscription)."""
    code = str(getattr(getattr(error, "error", None), "code", "") or "")
    return code not in ("ResourceGroupNotFound", "SubscriptionNotFound", "InvalidSubscriptionId")


class ContainerAppsTarget(Target):
    name = "containerapps"

    def __init__(self, endpoint: str, cfg: DeploySection) -> None:
        super().__init__(app_name(endpoint), cfg)
        self.app = self.endpoint
        self.cfg = cfg
        self.azure = cfg.azure
        self.settings = cfg.azure.containerapps
        self.subscription, self.group = coordinates(cfg)
        self.client = self._client()
        self._client_id: str | None = None   # the user-assigned identity's, read once when needed

    def _client(self) -> Any:
        from azure.mgmt.appcontainers import ContainerAppsAPIClient

        kwargs: dict[str, Any] = {"polling_interval": POLL_SECONDS, "user_agent": f"mldeploy/{__version__}",
                                  **azure_cloud.RETRIES}
        custom = azure_cloud.transport()
        if custom is not None:
            kwargs["transport"] = custom
        return ContainerAppsAPIClient(azure_cloud.credential(), self.subscription, **kwargs)

    # -- what serves now --------------------------------------------------------------------------
    def read(self) -> dict[str, Any] | None:
        """The app as Container Apps reports it: per slot (label) its revision, share, image, health, URL;
        a share under no slot's label is foreign (the plan refuses to guess whose it is)."""
        from azure.core.exceptions import ResourceNotFoundError

        with translated(f"read the container app {self.app}"):
            try:
                app = self.client.container_apps.get(self.group, self.app)
            except ResourceNotFoundError as e:
                if _missing(e):
                    return None
                raise
            revisions = {r.name: r for r in self.client.container_apps_revisions.list_revisions(self.group, self.app)}
        props = app.properties
        ingress = props.configuration.ingress if props.configuration else None
        traffic = [dict(t) for t in (ingress.traffic if ingress and ingress.traffic else [])]
        slots: dict[str, dict[str, Any]] = {}
        foreign = []
        for t in (ingress.traffic if ingress and ingress.traffic else []):
            revision = props.latest_revision_name if t.latest_revision else t.revision_name
            label, weight = t.label or "", int(t.weight or 0)
            if (label == "production" or label.startswith("canary")) and label not in slots:
                slots[label] = {"revision": revision, "traffic": weight}
            elif weight:  # zero-percent labels (others', or a staging label an interrupted run left) serve nothing
                foreign.append(f"{label or revision} {weight}%")
        if slots and "production" not in slots:
            foreign.append("no production label")
        fqdn = ingress.fqdn if ingress else None
        for label, entry in slots.items():
            entry |= self._revision_facts(revisions.get(entry["revision"]))
            entry["url"] = self._label_url(fqdn, label)
        slots = {s: slots[s] for s in sorted(slots, key=lambda s: (s != "production", s))}
        return {"app": app, "mode": _text(props.configuration.active_revisions_mode) if props.configuration else "",
                "fqdn": fqdn, "url": f"https://{fqdn}" if fqdn else None, "state": _text(props.provisioning_state),
                "slots": slots, "foreign": foreign, "revisions": revisions, "traffic": traffic,
                "ips": [(r.name, r.ip_address_range, _text(r.action)) for r in (ingress.ip_security_restrictions or [])]
                if ingress else []}

    @staticmethod
    def _revision_facts(rev: Any) -> dict[str, Any]:
        if rev is None:
            return {"image": None, "model": None, "healthy": False, "active": False, "state": "missing"}
        p = rev.properties
        containers = (p.template.containers or []) if p.template else []
        env = {e.name: e.value for e in (containers[0].env or []) if e.value is not None} if containers else {}
        return {"image": containers[0].image if containers else None, "model": model_from_env(env),
                "active": bool(p.active),
                "state": f"{_text(p.provisioning_state)}/{_text(p.running_state)}",
                "healthy": _text(p.provisioning_state) == "Provisioned" and _text(p.running_state) in RUNNING,
                "error": p.provisioning_error}

    def _label_url(self, fqdn: str | None, label: str) -> str | None:
        """A label's URL: https://<app>---<label>.<the environment's default domain>."""
        if not fqdn:
            return None
        domain = fqdn.split(".", 1)[1] if fqdn.startswith(f"{self.app}.") else fqdn
        return f"https://{self.app}---{label}.{domain}"

    def _status(self, current: dict[str, Any] | None) -> Status:
        if current is None:
            return Status(self.app)
        return Status(self.app, current["url"], {
            slot: Slot(e["image"], e["traffic"], e["healthy"], {"revision": e["revision"], "url": e["url"]},
                       model=e["model"])
            for slot, e in current["slots"].items()}, {"status": current["state"]})

    def canary(self, current: dict[str, Any] | None, pr: int | None, verb: str) -> str:
        if current is None:
            raise UsageError(f"the container app {self.app} does not exist in the resource group {self.group}",
                             hint="deploy it first with `mldeploy deploy`")
        return pick_canary(self.app, current["slots"], pr, verb)

    # -- the interface ----------------------------------------------------------------------------
    def plan(self, desired: Desired) -> Plan:
        desired.require_digest()
        self._download_identity(desired.model)   # (read now: a missing identity is refused before any change)
        current = self.read()
        slots = current["slots"] if current else {}
        revisions = current["revisions"] if current else {}
        if "production" not in slots or desired.slot == "production":
            revision = next((e["revision"] for e in slots.values() if self._same(e, desired.image, desired.model)),
                            None) or self._new_name("production", desired.image, revisions, desired.model)
            after = {"production": {"revision": revision, "traffic": 100, "image": desired.image,
                                    "model": desired.model}}
        else:
            shares = canary_shares({s: e["traffic"] for s, e in slots.items()}, desired.slot, desired.traffic)
            own = slots.get(desired.slot)
            revision = own["revision"] if own and self._same(own, desired.image, desired.model) else \
                self._new_name(desired.slot, desired.image, revisions, desired.model)
            after = {s: {**self._entry(slots[s]), "traffic": shares[s]} for s in shares if s != desired.slot}
            after[desired.slot] = {"revision": revision, "traffic": desired.traffic, "image": desired.image,
                                   "model": desired.model}
        return self._plan(desired, current, after)

    def layout(self, desired: Desired, current: Any, images: dict[str, str], share: dict[str, int]) -> Plan:
        """Promote and rollback: the slots' revisions that run these images take these shares (a promoted
        canary's revision becomes production; nothing new is made)."""
        assert current is not None
        by_image = {(e["image"], e["model"]): e for e in current["slots"].values()}

        def serving(slot: str, image: str) -> dict[str, Any]:  # (the desired slot takes the desired model)
            own = current["slots"].get(slot)
            model = desired.model if slot == desired.slot else own and own["model"]
            return own if own and (own["image"], own["model"]) == (image, model) else by_image[(image, model)]

        after = {slot: {**self._entry(serving(slot, image)), "traffic": share[slot]} for slot, image in images.items()}
        return self._plan(desired, current, after)

    def apply(self, plan: Plan) -> Status:
        if plan.empty:
            return self.changed(False)
        s, d = plan.state, plan.desired
        current, after, new = s["current"], s["after"], s["new"]
        checked = new["revision"] if new else s["activate"]   # the revision to check before traffic moves
        slot = next((slot for slot, e in after.items() if e["revision"] == checked), d.slot)
        done: dict[str, Any] = {"app": False, "revision": None}   # what _restore must undo
        with self.changing(current, {e["image"] for e in after.values()}, lambda: self._restore(s, done)) as guard:
            if current is None:
                assert new is not None  # a first deploy always makes its revision
                self._create_app(s, new)
                done["app"] = True
            elif new or s["activate"] or s["config"]:
                if s["activate"]:
                    self._call(f"activate the revision {s['activate']}", self.client.container_apps_revisions
                               .activate_revision, self.group, self.app, s["activate"])
                    done["revision"] = s["activate"]
                self._update_app(s, new)
                done["revision"] = done["revision"] or (new and new["revision"])
            if checked:
                self._await_revision(checked, after[slot]["image"], after[slot]["model"])
                if d.smoke:
                    label = slot if current is None else f"{STAGING}{slot}"
                    self._smoke(label, d.smoke)
            if current is not None and s["moves"]:
                guard.check()  # just before traffic moves: a new revision takes minutes to come up
                self._set_traffic(self._traffic(after, current), f"move traffic ({self._shown(after)})")
            self._verify(after)
            if checked and slot != "production" and self.azure.bake_seconds and d.smoke:
                self._bake(slot, d.smoke)
        self._deactivate(s["retire"])
        return self.changed(True)

    # -- planning ---------------------------------------------------------------------------------
    @staticmethod
    def _entry(e: dict[str, Any]) -> dict[str, Any]:
        return {"revision": e["revision"], "traffic": e["traffic"], "image": e["image"], "model": e["model"]}

    def _spec(self, model: Model | None = None) -> str:
        """A short hash of what a revision runs besides its image: other settings, or another model in
        storage, are another revision."""
        s = self.settings
        spec = [s.cpu, s.memory, s.min_replicas, s.max_replicas, s.concurrency, s.identity, PORT, s.environment,
                s.secrets] + ([model.uri, model.sha256] if model else [])  # (a baked revision keeps its name)
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:4]

    def _specs(self, model: Model | None = None) -> list[str]:
        """The spec part of a revision's name: the settings' hash, then salted ones for the retries of a
        revision that failed (its name stays taken: Azure never reuses a revision's suffix)."""
        spec = self._spec(model)
        return [spec] + [hashlib.sha256(f"{spec}-{n}".encode()).hexdigest()[:4] for n in range(1, 10)]

    def _same(self, entry: dict[str, Any], image: str, model: Model | None) -> bool:
        """Whether a slot's revision runs this image and model with these settings."""
        match = REVISION.match(entry["revision"] or "")
        return (entry["image"], entry["model"]) == (image, model) and match is not None \
            and match.group("spec") in self._specs(model)

    def _new_name(self, slot: str, image: str, revisions: dict[str, Any], model: Model | None) -> str:
        """<app>--<slot>-<digest8>-<spec4>, a DNS label (at most 63: a long slot is shortened); the first
        whose revision did not fail, so a re-run after a fix (a role granted) makes a new one."""
        part = slot if len(f"{self.app}--{slot}-") + 13 <= 63 else f"s{hashlib.sha256(slot.encode()).hexdigest()[:6]}"
        for spec in self._specs(model):
            name = f"{self.app}--{part}-{digest_of(image)[:8]}-{spec}"
            found = revisions.get(name)
            if found is None or _text(found.properties.provisioning_state) != "Failed":
                return name
        raise UsageError(f"the last {len(self._specs())} revisions of {image} in {slot} failed to provision",
                         hint="read their logs (`az containerapp revision list`) and fix the image or settings")

    def _environment_id(self) -> str:
        env = self.settings.managed_environment or ""
        if env.startswith("/subscriptions/"):
            return env
        return (f"/subscriptions/{self.subscription}/resourceGroups/{self.group}/providers/Microsoft.App/"
                f"managedEnvironments/{env}")

    def _environment(self) -> Any:
        """The Container Apps environment the configuration names (read before the first deploy)."""
        from azure.core.exceptions import ResourceNotFoundError

        env_id = self._environment_id()
        parts = env_id.split("/")
        with translated(f"read the Container Apps environment {parts[-1]}"):
            try:
                return self.client.managed_environments.get(parts[4], parts[-1])
            except ResourceNotFoundError:
                raise UsageError(f"the Container Apps environment {parts[-1]} does not exist in the resource group "
                                 f"{parts[4]}", hint="create it (`az containerapp env create`) or fix "
                                                     "deploy.azure.containerapps.managed_environment") from None

    def _auth_required(self) -> bool:
        """Whether the app's built-in authentication is on and turns away callers without a login."""
        from azure.core.exceptions import ResourceNotFoundError

        with translated(f"read the authentication settings of {self.app}"):
            try:
                auth = self.client.container_apps_auth_configs.get(self.group, self.app, "current")
            except ResourceNotFoundError:
                return False
        p = auth.properties
        enabled = bool(p and p.platform and p.platform.enabled)
        action = _text(p.global_validation.unauthenticated_client_action) if p and p.global_validation else ""
        return enabled and action in ("Return401", "Return403", "RedirectToLoginPage")

    def _wanted_ips(self, current: dict[str, Any] | None) -> list[tuple[str, str, str]]:
        """Others' ingress IP rules as they are, then ours (named mldeploy-N) from allowed_ips."""
        others = [r for r in (current or {}).get("ips", []) if not r[0].startswith("mldeploy-")]
        return others + [(f"mldeploy-{i}", cidr, "Allow") for i, cidr in enumerate(self.settings.allowed_ips)]

    def _plan(self, d: Desired, current: dict[str, Any] | None, after: dict[str, dict[str, Any]]) -> Plan:
        if current and not current["mode"].lower().startswith("multiple"):
            raise UsageError(f"the container app {self.app} is in single-revision mode: it cannot keep a canary "
                             "beside production",
                             hint=f"switch it: `az containerapp revision set-mode --name {self.app} --resource-group "
                                  f"{self.group} --mode multiple`, then deploy again")
        if current and current["foreign"]:
            raise UsageError(f"the traffic of {self.app} is split in a way mldeploy did not make "
                             f"({', '.join(current['foreign'])})",
                             hint="give one revision 100% with the label production (`az containerapp ingress "
                                  "traffic set`, `az containerapp revision label add`) and deploy again")
        if not self.settings.allow_anonymous and not self.settings.allowed_ips and (
                current is None or not self._auth_required()):
            raise UsageError(f"the container app {self.app} would answer anyone: allow_anonymous is false, no "
                             "allowed_ips are set and the app has no built-in authentication requiring a login",
                             hint="set deploy.azure.containerapps.allowed_ips, or turn on the app's authentication "
                                  "(`az containerapp auth microsoft update`, on an app that exists), or set "
                                  "allow_anonymous: true for a public endpoint")
        if current is None:
            self._environment()
        slots = current["slots"] if current else {}
        revisions = current["revisions"] if current else {}
        plan = Plan(self.name, d, traffic_before={s: e["traffic"] for s, e in slots.items()},
                    traffic_after={s: e["traffic"] for s, e in after.items()})
        serving = {e["revision"] for e in slots.values()}
        new, activate = None, None
        for slot, e in after.items():
            if slot in slots:
                plan_model(plan, f"container app slot {slot}", slots[slot]["model"], e["model"])
            if e["revision"] in serving:
                continue
            found = revisions.get(e["revision"])
            if found is None:
                new = {"slot": slot, "revision": e["revision"], "image": e["image"], "model": e["model"]}
                plan.add("create", f"container app revision {e['revision']}", f"{slot} image", new=e["image"])
            elif not found.properties.active:
                facts = self._revision_facts(found)
                if _text(found.properties.provisioning_state) == "Failed":
                    raise UsageError(f"the revision {e['revision']} failed to provision before "
                                     f"({facts['error'] or facts['state']})",
                                     hint="a revision's name is its slot, image and settings: fix the image "
                                          "(a new digest) or the settings, and deploy again")
                activate = e["revision"]
                plan.add("update", f"container app revision {e['revision']}", "active", "inactive", "active")
        if current is None:
            plan.add("create", f"container app {self.app}", "environment", new=self.settings.managed_environment)
        for slot, e in after.items():
            what = f"{e['revision']} {e['traffic']}%"
            if slot not in slots:
                if current is not None:
                    plan.add("create", f"container app label {slot}", "traffic", new=what)
            elif (slots[slot]["revision"], slots[slot]["traffic"]) != (e["revision"], e["traffic"]):
                plan.add("update", f"container app {self.app}", f"traffic {slot}",
                         f"{slots[slot]['revision']} {slots[slot]['traffic']}%", what)
        for slot in slots:
            if slot not in after:
                plan.add("delete", f"container app label {slot}",
                         old=f"{slots[slot]['revision']} {slots[slot]['traffic']}%")
        kept = {e["revision"] for e in after.values()}
        retire = sorted({e["revision"] for e in slots.values()} - kept)
        for name in retire:
            plan.add("update", f"container app revision {name}", "active", "active", "inactive")
        config = bool(current and current["ips"] != self._wanted_ips(current))
        if current and config:
            plan.add("update", f"container app {self.app}", "allowed ips",
                     ", ".join(r[1] for r in current["ips"]) or "any",
                     ", ".join(r[1] for r in self._wanted_ips(current)) or "any")
        moves = {s: (e["revision"], e["traffic"]) for s, e in after.items()} != \
            {s: (e["revision"], e["traffic"]) for s, e in slots.items()}
        plan.state = {"current": current, "after": after, "new": new, "activate": activate, "retire": retire,
                      "config": config, "moves": moves}
        return plan

    # -- applying ---------------------------------------------------------------------------------
    def _call(self, doing: str, call: Any, *args: Any) -> Any:
        with translated(doing):
            return call(*args)

    def _wait(self, doing: str, start: Any, *args: Any, first: bool = False) -> Any:
        """Start a long-running operation and wait for it (Azure's Retry-After, else MLDEPLOY_POLL_SECONDS).
        A first write refused with 409 (another operation on the app is running) changed nothing: it is a
        Conflict, which restores nothing."""
        from azure.core.exceptions import HttpResponseError

        with translated(doing):
            try:
                poller = start(*args)
            except HttpResponseError as e:
                if not first or e.status_code != 409:
                    raise
                raise Conflict(f"Azure could not {doing} now (HTTP 409): {azure_cloud.error_text(e)}; nothing changed",
                               hint="another operation on the app is still running: run this again when it is done") \
                    from None
            return azure_cloud.wait(poller, doing, self.azure.wait_seconds, max(POLL_SECONDS, 1.0))

    def _identity(self) -> tuple[dict[str, Any], str]:
        """The app's identity block and the value registries and secrets name it by."""
        ident = self.settings.identity
        if ident == "system":
            return {"type": "SystemAssigned"}, "system"
        return {"type": "UserAssigned", "userAssignedIdentities": {ident: {}}}, ident

    def _download_identity(self, model: Model | None) -> dict[str, str]:
        """A model in storage is downloaded with the app's identity (Storage Blob Data Reader). Where that
        is a user-assigned identity, the server's credential picks it by its client id (AZURE_CLIENT_ID),
        which the identity's own resource holds (read with Managed Identity Operator)."""
        ident = self.settings.identity
        if model is None or ident == "system":
            return {}
        if self._client_id is None:
            with translated(f"read the managed identity {ident}"):
                found = arm_request("GET", ident, IDENTITY_API_VERSION)
                if found.status_code == 404:
                    raise UsageError(f"there is no user-assigned managed identity {ident}",
                                     hint="check deploy.azure.containerapps.identity")
                found.raise_for_status()
            self._client_id = str(found.json()["properties"]["clientId"])
        return {"AZURE_CLIENT_ID": self._client_id}

    def _template(self, new: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        model = new["model"]
        env = [{"name": k, "value": v} for k, v in
               sorted({**self._download_identity(model), **s.environment, **model_env(model)}.items())]
        env += [{"name": k, "secretRef": self._secret_name(k)} for k in sorted(s.secrets)]
        scale: dict[str, Any] = {"minReplicas": s.min_replicas, "maxReplicas": s.max_replicas,
                                 "rules": [{"name": "http-concurrency",
                                            "http": {"metadata": {"concurrentRequests": str(s.concurrency)}}}]}
        memory = s.memory
        return {"revisionSuffix": new["revision"].split("--", 1)[1],
                "containers": [{"name": "model", "image": new["image"], "env": env,
                                "resources": {"cpu": s.cpu, "memory": memory},
                                "probes": [{"type": "Readiness", "httpGet": {"path": "/v2/health/ready", "port": PORT}},
                                           {"type": "Liveness", "httpGet": {"path": "/v2/health/live", "port": PORT}}]}],
                "scale": scale}

    @staticmethod
    def _secret_name(env: str) -> str:
        return re.sub(r"[^a-z0-9-]", "-", env.lower()).strip("-")

    def _configuration(self, current: dict[str, Any] | None, traffic: list[dict[str, Any]],
                       image: str | None) -> dict[str, Any]:
        _, by = self._identity()
        config: dict[str, Any] = {
            "activeRevisionsMode": "Multiple",
            "ingress": {"external": True, "targetPort": PORT, "transport": "auto", "allowInsecure": False,
                        "traffic": traffic,
                        "ipSecurityRestrictions": [{"name": n, "ipAddressRange": r, "action": a}
                                                   for n, r, a in self._wanted_ips(current)]}}
        if image and "/" in image:
            config["registries"] = [{"server": image.split("/", 1)[0], "identity": by}]
        if self.settings.secrets:
            config["secrets"] = [{"name": self._secret_name(k), "keyVaultUrl": v, "identity": by}
                                 for k, v in sorted(self.settings.secrets.items())]
        return config

    def _tags(self) -> dict[str, str]:
        found = {"mldeploy-endpoint": self.app, "mldeploy-repo": os.environ.get("GITHUB_REPOSITORY"),
                 "mldeploy-sha": os.environ.get("GITHUB_SHA")}
        return {k: v for k, v in found.items() if v}

    def _create_app(self, s: dict[str, Any], new: dict[str, Any]) -> None:
        env = self._environment()
        identity, _ = self._identity()
        traffic = [{"revisionName": new["revision"], "weight": 100, "label": "production"}]
        body = {"location": env.location, "tags": self._tags(), "identity": identity,
                "properties": {"environmentId": self._environment_id(),
                               "configuration": self._configuration(None, traffic, new["image"]),
                               "template": self._template(new)}}
        print(f"  Creating container app {self.app} with {new['revision']} ({new['image']})", flush=True)
        self._wait(f"create the container app {self.app}", self.client.container_apps.begin_create_or_update,
                   self.group, self.app, body, first=True)

    def _update_app(self, s: dict[str, Any], new: dict[str, Any] | None) -> None:
        """One PATCH: the new revision's template (if any) and the traffic as it is, plus the staging label
        on the revision to check (0%), and the app's configuration."""
        current = s["current"]
        checked = new["revision"] if new else s["activate"]
        traffic = [t for t in current["traffic"] if not (t.get("label") or "").startswith(STAGING)]  # as it is
        if checked:
            slot = next(slot for slot, e in s["after"].items() if e["revision"] == checked)
            traffic.append({"revisionName": checked, "weight": 0, "label": f"{STAGING}{slot}"})
        body: dict[str, Any] = {"properties": {"configuration": self._configuration(
            current, traffic, new["image"] if new else None)}}
        if new:
            body["properties"]["template"] = self._template(new)
            body["identity"] = self._identity()[0]
            print(f"  Creating revision {new['revision']} ({new['image']}) at 0%", flush=True)
        self._wait(f"update the container app {self.app}", self.client.container_apps.begin_update,
                   self.group, self.app, body, first=not s["activate"])

    def _traffic(self, after: dict[str, dict[str, Any]], current: dict[str, Any] | None) -> list[dict[str, Any]]:
        """ingress.traffic for these slots, plus others' zero-percent labels as they are; our staging labels
        are dropped."""
        out = [{"revisionName": e["revision"], "weight": e["traffic"], "label": slot} for slot, e in after.items()]
        for t in current["traffic"] if current else []:
            label = t.get("label") or ""
            if not t.get("weight") and label and not label.startswith(STAGING) \
                    and label != "production" and not label.startswith("canary"):
                out.append(t)
        return out

    def _set_traffic(self, traffic: list[dict[str, Any]], doing: str) -> None:
        print(f"  {doing[0].upper()}{doing[1:]}", flush=True)
        self._wait(f"{doing} of {self.app}", self.client.container_apps.begin_update, self.group, self.app,
                   {"properties": {"configuration": {"ingress": {"traffic": traffic}}}})

    @staticmethod
    def _shown(after: dict[str, dict[str, Any]]) -> str:
        return ", ".join(f"{slot} {e['traffic']}%" for slot, e in after.items())

    def _await_revision(self, name: str, image: str, model: Model | None) -> None:
        """Poll the revision until it is provisioned and running; it must run the planned image by digest."""
        deadline = time.monotonic() + self.azure.wait_seconds
        started = time.monotonic()
        while True:
            rev = self._call(f"read the revision {name}", self.client.container_apps_revisions.get_revision,
                             self.group, self.app, name)
            facts = self._revision_facts(rev)
            p = rev.properties
            if _text(p.provisioning_state) == "Failed" or _text(p.running_state) in STOPPED:
                raise CheckFailed(f"the revision {name} failed to start ({facts['error'] or facts['state']})",
                                  hint="read its logs: `az containerapp logs show --revision " + name + "`")
            if facts["healthy"]:
                break
            if time.monotonic() >= deadline:
                raise CheckFailed(f"the revision {name} was still {facts['state']} after {self.azure.wait_seconds} s",
                                  hint="raise deploy.azure.wait_seconds, or read the revision's logs")
            if time.monotonic() - started >= 10:
                print(f"  revision {name}: {facts['state']} ({time.monotonic() - started:.0f} s)", flush=True)
            time.sleep(POLL_SECONDS)
        if facts["image"] is None or digest_of(facts["image"]) != digest_of(image):
            raise CheckFailed(f"the revision {name} runs {facts['image']}, not the planned {image}")
        verify_models({name: facts["model"]}, {name: model})

    def _smoke(self, label: str, body: dict[str, Any]) -> None:
        """POST the smoke body to the label's URL (the app's URL as Container Apps reports it), with a
        token for the app's Entra ID registration when its built-in authentication requires one."""
        from azure.core import PipelineClient
        from azure.core.exceptions import AzureError
        from azure.core.rest import HttpRequest

        current = self.read()
        url = self._label_url(current["fqdn"] if current else None, label)
        if url is None:
            raise CheckFailed(f"the container app {self.app} reports no URL (is its ingress enabled?)")
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": f"mldeploy/{__version__}"}
        token = self._auth_token()
        if token:
            github.mask(token)
            headers["Authorization"] = f"Bearer {token}"
        custom = azure_cloud.transport()
        client = PipelineClient(url, retry_total=5, retry_backoff_factor=max(POLL_SECONDS / 2, 0.01),
                                **({"transport": custom} if custom else {}))
        try:  # a revision scaled to zero answers once a replica has started: 503s are retried
            response = client.send_request(HttpRequest("POST", f"{url}/predict", json=body, headers=headers))
            text = response.text()
        except AzureError as e:
            raise CheckFailed(f"the smoke request to {label} ({url}/predict) failed: "
                              f"{azure_cloud.error_text(e)}") from None
        if response.status_code != 200:
            raise CheckFailed(f"the smoke request to {label} ({url}/predict) answered {response.status_code}: "
                              f"{' '.join(text.split())[:200] or response.reason}")

    def _auth_token(self) -> str | None:
        """A token for the app's own Entra ID registration, when its built-in authentication has one."""
        from azure.core.exceptions import ResourceNotFoundError

        if self.settings.allow_anonymous or self.settings.allowed_ips:
            return None
        with translated(f"read the authentication settings of {self.app}"):
            try:
                auth = self.client.container_apps_auth_configs.get(self.group, self.app, "current")
            except ResourceNotFoundError:
                return None
        aad = auth.properties.identity_providers.azure_active_directory \
            if auth.properties and auth.properties.identity_providers else None
        client_id = aad.registration.client_id if aad and aad.registration else None
        if not client_id:
            return None
        with translated(f"get a token for the app {self.app}'s Entra ID registration"):
            return str(azure_cloud.credential().get_token(f"api://{client_id}/.default").token)

    def _verify(self, after: dict[str, dict[str, Any]]) -> None:
        verify_revisions(self.read(), after, f"container app {self.app}")

    def _bake(self, slot: str, body: dict[str, Any]) -> None:
        """Keep checking the canary for bake_seconds: its revision stays healthy and answers at its label."""
        deadline = time.monotonic() + self.azure.bake_seconds
        print(f"  baking {slot} for {self.azure.bake_seconds} s", flush=True)
        while time.monotonic() < deadline:
            time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))
            entry = (self.read() or {"slots": {}})["slots"].get(slot)
            if entry is None or not entry["healthy"]:
                raise CheckFailed(f"the canary {slot} stopped being healthy while it baked")
            self._smoke(slot, body)

    def _deactivate(self, names: list[str]) -> None:
        """Deactivate revisions that serve no more; a failure is a warning (what serves was verified)."""
        for name in names:
            print(f"  Deactivating revision {name}", flush=True)
            try:
                self._call(f"deactivate the revision {name}",
                           self.client.container_apps_revisions.deactivate_revision, self.group, self.app, name)
            except MldeployError as e:
                github.warning(f"{e.message} (it takes no traffic; deactivate it in the portal)")

    def _restore(self, s: dict[str, Any], done: dict[str, Any]) -> str:
        """Put back what served before and deactivate what this run made; say what happened."""
        previous = s["current"]
        if previous is None:
            if not done["app"] and self.read() is None:
                return "nothing was created"
            self._wait(f"delete the container app {self.app}", self.client.container_apps.begin_delete,
                       self.group, self.app)
            return "rolled back: the new container app was deleted"
        self._set_traffic(previous["traffic"], "put the previous traffic back")
        removed = ""
        if done["revision"]:
            self._call(f"deactivate the revision {done['revision']}",
                       self.client.container_apps_revisions.deactivate_revision, self.group, self.app,
                       done["revision"])
            removed = f"; {done['revision']} was deactivated"
        before = ", ".join(f"{slot} {e['traffic']}%" for slot, e in previous["slots"].items())
        return f"rolled back: the app serves as before ({before}){removed}"

    # -- monitoring -----------------------------------------------------------------------------------
    def slot_metrics(self, window: float, pr: int | None = None) -> Collected:
        """Azure Monitor's Requests (Total, by revisionName and statusCodeCategory) and ResponseTime
        (Average, by revisionName) of the app: an error is a 5xx answer; p50 and p99 are the minutes'
        average response time weighted by their requests (Container Apps keeps no percentiles)."""
        from mldeploy.monitor.canary import SlotStats
        from mldeploy.monitor.metrics import Collected

        current = self.read()
        canary = self.compared(current, pr)  # no app or no canary: one line
        assert current is not None
        names = {current["slots"][slot]["revision"]: slot for slot in ("production", canary)}
        which = " or ".join(f"revisionName eq '{name}'" for name in names)
        resource = current["app"].id
        stats = {slot: SlotStats(slot) for slot in names.values()}
        per_minute: dict[str, dict] = {slot: {} for slot in names.values()}
        for series in azure_cloud.metric_series(self.subscription, resource, METRICS, ["Requests"], "Total",
                                                f"{which} and statusCodeCategory eq '*'", window,
                                                f"read the Azure Monitor metrics of {self.app}"):
            slot = names.get(series["dimensions"].get("revisionname"))
            if not slot:
                continue
            failed = str(series["dimensions"].get("statuscodecategory", "")).startswith("5")
            for minute, count in series["values"]:
                per_minute[slot][minute] = per_minute[slot].get(minute, 0) + count
                stats[slot].requests += int(count)
                stats[slot].errors += int(count) if failed else 0
        for series in azure_cloud.metric_series(self.subscription, resource, METRICS, ["ResponseTime"], "Average",
                                                which, window, f"read the Azure Monitor response time of {self.app}"):
            slot = names.get(series["dimensions"].get("revisionname"))
            if slot and series["values"]:
                weights = [per_minute[slot].get(minute, 0) for minute, _ in series["values"]]
                if not sum(weights):
                    weights = [1] * len(weights)
                value = sum(w * v for w, (_, v) in zip(weights, series["values"])) / sum(weights)
                stats[slot].p50_ms = stats[slot].p99_ms = value
        return Collected(stats["production"], stats[canary], window, f"Azure Monitor container app {self.app}",
                         notes=["Container Apps keeps average response time only: p50 and p99 are that average",
                                "prediction divergence not measured: Container Apps does not capture requests"])

    def monitor_plan(self, cfg: Config, config_file: str | None = None) -> SetupPlan:
        """Azure Monitor metric alerts on the app (5xx requests, response time) and an action group."""
        from mldeploy.deploy import containerapps_monitor

        return containerapps_monitor.plan(cfg, self, config_file)

    @classmethod
    def doctor(cls, deploy: DeploySection) -> list[tuple[str, bool, str]]:
        """Who we are, whether the resource group and environment are readable, and the roles a deploy needs."""
        rows: list[tuple[str, bool, str]] = []
        try:
            sub, rg = coordinates(deploy)
            rows.append(("resource group", True, f"subscription {sub}, resource group {rg}"))
        except UsageError as e:
            return [("resource group", False, e.describe())]
        from azure.core.exceptions import ClientAuthenticationError

        try:
            token = azure_cloud.credential().get_token(azure_cloud.SCOPE)
        except (ClientAuthenticationError, ValueError) as e:
            rows.append(("credential", False, azure_cloud.federation_help(azure_cloud._credential_reason(e))))
            return rows
        claims = azure_cloud._claims(token.token)
        who = ", ".join(f"{k} {claims[k]}" for k in ("upn", "appid", "oid") if claims.get(k)) or "an identity"
        rows.append(("credential", True, f"a token for Azure Resource Manager as {who}"))
        try:
            target = cls("doctor", deploy)
            env = target._environment()
            rows.append(("container apps environment", True, f"{env.name} in {env.location} is readable"))
            with translated("list the resource group's container apps"):
                count = len(list(target.client.container_apps.list_by_resource_group(rg)))
            rows.append(("container apps", True, f"listing allowed ({count} app{'s' if count != 1 else ''})"))
        except MldeployError as e:
            rows.append(("container apps environment", False, e.describe()))
        rows += [("role needed", True, role) for role in ROLES]
        return rows
