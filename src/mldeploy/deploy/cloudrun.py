"""Cloud Run services: slots are revisions, the canary share is the service's traffic split.

    service <name>   (projects/P/locations/L/services/<name>, private unless allow_unauthenticated)
      revision <name>-production-<digest10>-<spec4>   traffic 100 - canaries   no tag: the service URL
      revision <name>-canary[-prN]-<digest10>-<spec4> traffic N                tag canary[-prN]:
                                                                                 https://canary---<service host>

A revision's name says which slot it was made for, which image (the digest's first 10 hex digits) and
which settings (a hash of cpu, memory, concurrency, scaling, service account), so deploying the same
image with the same settings to the same slot names a revision that exists: nothing new is built and
a re-run changes nothing. A production deploy reuses any serving revision that already runs the image
with these settings (a promoted canary stays the revision it was). Slots are read from the traffic:
the untagged entry is production, an entry tagged `canary` or `canary-prN` is that canary.

A deploy is one UpdateService (CreateService the first time) carrying the template of a new revision
when one is needed and the whole traffic split; Cloud Run moves traffic only once the new revision is
ready, and fails the long-running operation when it cannot start. A canary keeps production's revision
at 100 - N (minus other canaries) and gives the new one N with a tag, so it has its own URL; a
production deploy or a promote gives one revision 100% and drops every canary and its tag; a rollback
gives the canaries' share back to production. IAM: the service stays private (allUsers and
allAuthenticatedUsers are never invokers) unless `allow_unauthenticated`, which grants roles/run.invoker
to allUsers. After every change: the service is read back (what serves must be the planned revisions
and shares, each revision running the planned digest), then a smoke POST /predict goes to the slot's
URL (the tag URL for a canary) with an identity token unless the service is public, and a canary is
re-checked for `bake_seconds`; a failure restores the previous service and IAM policy (exit 1).

Credentials, project, region, clients, error translation, long-running operations and labels come
from mldeploy.deploy.gcp, as for Vertex AI (MLDEPLOY_GCP_API_ENDPOINT points the clients elsewhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mldeploy import __version__
from mldeploy.deploy import Desired, Plan, gcp, pick_canary, restoring
from mldeploy.deploy.base import (
    Model,
    Slot,
    Status,
    Target,
    digest_of,
    model_env,
    model_from_env,
    plan_model,
    verify_revisions,
)
from mldeploy.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from mldeploy.config import Config, DeploySection
    from mldeploy.monitor.metrics import Collected
    from mldeploy.monitor.setup import SetupPlan

POLL_SECONDS = float(os.environ.get("MLDEPLOY_POLL_SECONDS", "5"))  # bake checks, smoke retries (LROs: gcp's)
INVOKER = "roles/run.invoker"
PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")
PORT = 8080
# Cloud Monitoring: the service's series (canary analysis and alert policies read them)
REQUESTS = "run.googleapis.com/request_count"
LATENCIES = "run.googleapis.com/request_latencies"
ALERT_SERIES = {"5xx": (REQUESTS, ' AND metric.labels.response_code_class = "5xx"'), "latency p99": (LATENCIES, "")}
SMOKE_TIMEOUT = 120.0  # a cold start of a large model can take a while


@contextlib.contextmanager
def _refused(doing: str, conflict: str, forbidden: str | None = None) -> Iterator[None]:
    """gcp.translated, with what Cloud Run's own refusals mean: 409 ABORTED is an etag that moved on
    (someone changed the service or policy since we read it); a 403 may need a named role."""
    from google.api_core import exceptions

    with gcp.translated(doing):
        try:
            yield
        except exceptions.Conflict as e:
            raise CheckFailed(f"could not {doing} ({gcp.status_of(e)}): {gcp.message_of(e)}", hint=conflict) from None
        except exceptions.Forbidden as e:
            if forbidden is None:
                raise
            raise UsageError(f"Google Cloud refused to {doing} ({gcp.status_of(e)}): {gcp.message_of(e)}",
                             hint=forbidden) from None


def _not_found() -> type[Exception]:
    from google.api_core.exceptions import NotFound

    return NotFound


# -- names ------------------------------------------------------------------------------------------
def _hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def service_name(endpoint: str) -> str:
    """A Cloud Run service id: lowercase letters, digits and hyphens, a letter first, at most 49 characters."""
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]+", "-", endpoint.lower())).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}".rstrip("-")
    if len(name) > 49:  # keep it unique: shorten and add a hash of the whole
        name = f"{name[:40].rstrip('-')}-{_hash(name, 8)}"
    return name


class CloudRunTarget(Target):
    name = "cloudrun"

    def __init__(self, endpoint: str, cfg: DeploySection) -> None:
        super().__init__(service_name(endpoint), cfg)
        self.service = self.endpoint
        self.options = cfg.gcp
        self.settings = cfg.gcp.cloudrun
        self.location = gcp.region(cfg)
        self.credentials, found = gcp.credentials()
        self.project = gcp.project(cfg, found)
        self.parent = f"projects/{self.project}/locations/{self.location}"
        self.resource = f"{self.parent}/services/{self.service}"
        self.public = self.settings.allow_unauthenticated
        self._tokens: dict[str, str] = {}
        from google.cloud import run_v2

        self.run: Any = run_v2  # run.googleapis.com serves every region; MLDEPLOY_GCP_API_ENDPOINT overrides it
        self.services = gcp.client(run_v2.ServicesClient, self.credentials, service="run")
        self.revisions = gcp.client(run_v2.RevisionsClient, self.credentials, service="run")

    # -- what serves now --------------------------------------------------------------------------
    def _revision(self, short: str) -> Any | None:
        with gcp.translated(f"read the Cloud Run revision {short}"):
            try:
                return self.revisions.get_revision(name=f"{self.resource}/revisions/{short}", retry=gcp.read_retry())
            except _not_found():
                return None

    def read(self) -> dict[str, Any] | None:
        """The service as Cloud Run reports it: per slot its revision, image, share, health and URL."""
        with gcp.translated(f"read the Cloud Run service {self.service}"):
            try:
                svc = self.services.get_service(name=self.resource, retry=gcp.read_retry())
            except _not_found():
                return None
        latest = self.run.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
        slots: dict[str, dict[str, Any]] = {}
        kept, foreign = [], []  # others' zero-percent tags are kept as they are; others' shares are refused
        for t in list(svc.traffic_statuses) or list(svc.traffic):
            revision = svc.latest_ready_revision if t.type_ == latest else t.revision
            slot = t.tag if t.tag.startswith("canary") else "production" if not t.tag else None
            if slot is not None and slot not in slots:
                slots[slot] = {"revision": revision, "traffic": t.percent, "url": getattr(t, "uri", "") or None}
            elif t.tag and not t.percent:
                kept.append(self.run.TrafficTarget(type_=t.type_, revision=t.revision, percent=0, tag=t.tag))
            else:
                foreign.append(f"{t.tag or revision} {t.percent}%")
        if "production" not in slots and slots:
            foreign.append("no untagged production share")
        for entry in slots.values():
            rev = self._revision(entry["revision"])
            containers = list(rev.containers) if rev else []
            entry["image"] = containers[0].image if containers else None
            entry["model"] = model_from_env({e.name: e.value for e in containers[0].env}) if containers else None
            entry["spec"] = rev.labels.get("mldeploy-spec") if rev else None
            entry["healthy"] = bool(rev and any(c.type_ == "Ready" and c.state == c.State.CONDITION_SUCCEEDED
                                                for c in rev.conditions))
        slots = {s: slots[s] for s in sorted(slots, key=lambda s: (s != "production", s))}
        return {"service": svc, "url": svc.uri or None, "slots": slots, "ingress": svc.ingress, "kept": kept,
                "foreign": foreign}

    def _policy(self) -> Any:
        with gcp.translated(f"read the IAM policy of {self.service}"):
            return self.services.get_iam_policy(request={"resource": self.resource}, retry=gcp.read_retry())

    @staticmethod
    def _is_public(policy: Any) -> bool:
        return any(b.role == INVOKER and set(PUBLIC_MEMBERS) & set(b.members) for b in policy.bindings)

    # -- the interface ----------------------------------------------------------------------------
    def plan(self, desired: Desired) -> Plan:
        if "@sha256:" not in desired.image:
            raise UsageError(f"the image {desired.image} is not pinned by digest",
                             hint="deploy REPOSITORY@sha256:... as `mldeploy build --push` records it")
        current = self.read()
        slots = current["slots"] if current else {}
        spec = self._spec(desired.model)
        if "production" not in slots or desired.slot == "production":
            revision = next((e["revision"] for s, e in slots.items() if e["image"] == desired.image
                             and e["spec"] == spec), None) or self._revision_name("production", desired.image,
                                                                                  desired.model)
            after = {"production": {"revision": revision, "traffic": 100, "image": desired.image,
                                    "model": desired.model}}
        else:
            others = {s: e for s, e in slots.items() if s not in ("production", desired.slot)}
            taken = sum(e["traffic"] for e in others.values())
            if taken + desired.traffic > 100:
                raise UsageError(f"the canaries would take {taken + desired.traffic}% of traffic",
                                 hint=f"lower --traffic or roll back one of {', '.join(others)}")
            own = slots.get(desired.slot)
            revision = own["revision"] if own and own["image"] == desired.image and own["spec"] == spec \
                else self._revision_name(desired.slot, desired.image, desired.model)
            production = slots["production"]
            after = {"production": {**self._entry(production), "traffic": 100 - taken - desired.traffic},
                     **{s: self._entry(e) for s, e in others.items()},
                     desired.slot: {"revision": revision, "traffic": desired.traffic, "image": desired.image,
                                    "model": desired.model}}
        return self._plan(desired, current, after)

    def apply(self, plan: Plan) -> Status:
        if plan.empty:
            return self.changed(False)
        d, current, after = plan.desired, plan.state["current"], plan.state["after"]
        if d.smoke and self._needs_token():  # before anything changes: can we call a private service at all?
            self._identity_token(current["url"] if current and current["url"] else "https://run.googleapis.com")
        spec = self._service_spec(current, after, plan.state["new"])
        changed = {"service": False}   # what _restore must put back: a refused update changed only IAM
        # the service's etag is the compare-and-set of the update; the guard keeps a restore off another's work
        guard = self.guard(current, {e["image"] for e in after.values()})
        with restoring(lambda: self._restore(plan.state, service=changed["service"]), guard):
            if plan.state["iam"] and current is not None:  # before traffic moves
                self._set_public(self.public)
            with _refused(f"{'create' if current is None else 'update'} the Cloud Run service {self.service}",
                          "another deploy changed the service at the same time: run this one again"):
                if current is None:
                    op = self.services.create_service(parent=self.parent, service=spec, service_id=self.service)
                else:
                    op = self.services.update_service(service=spec)
            changed["service"] = True
            gcp.wait(op, f"{'create' if current is None else 'update'} {self.service}", self.options.wait_seconds)
            if plan.state["iam"] and current is None:
                self._set_public(self.public)
            self._verify(after)
            slot = d.slot if d.slot in after else "production"
            if d.smoke:
                self._smoke(slot, d.smoke)
            if slot != "production" and self.options.bake_seconds:
                self._bake(slot, d.smoke)
        return self.changed(True)

    def _status(self, current: dict[str, Any] | None) -> Status:
        if current is None:
            return Status(self.service)
        return Status(self.service, current["url"], {
            slot: Slot(s["image"], s["traffic"], s["healthy"],
                       {"revision": s["revision"], "url": s["url"] if slot != "production" else current["url"]},
                       model=s["model"])
            for slot, s in current["slots"].items()})

    # promote and rollback keep each slot's revision (an image can run as two revisions with different
    # settings), so they are planned by revision, not by image
    def promote(self, pr: int | None = None) -> Status:
        current = self.read()
        slot = self.canary(current, pr, "promote")
        assert current is not None  # canary() found one in it
        entry = current["slots"][slot]
        plan = self._plan(Desired(self.service, entry["image"], "production", 0, {}, model=entry["model"]), current,
                          {"production": {**self._entry(entry), "traffic": 100}})
        return self.apply(plan)

    def rollback(self, pr: int | None = None) -> Status:
        current = self.read()
        gone = {self.canary(current, pr, "roll back")} if pr else \
            {s for s in (current or {}).get("slots", {}) if s != "production"}
        if not gone:
            self.canary(current, None, "roll back")  # says why: no service, or no canary
        assert current is not None  # canary() found one in it
        keep = {s: self._entry(e) for s, e in current["slots"].items() if s not in gone and s != "production"}
        production = current["slots"]["production"]
        after = {"production": {**self._entry(production), "traffic": 100 - sum(e["traffic"] for e in keep.values())},
                 **keep}
        plan = self._plan(Desired(self.service, production["image"], "production", 0, {}, model=production["model"]),
                          current, after)
        return self.apply(plan)

    # -- planning ---------------------------------------------------------------------------------
    @staticmethod
    def _entry(e: dict[str, Any]) -> dict[str, Any]:
        return {"revision": e["revision"], "traffic": e["traffic"], "image": e["image"], "model": e["model"]}

    def canary(self, current: dict[str, Any] | None, pr: int | None, verb: str) -> str:
        if current is None:
            raise UsageError(f"the Cloud Run service {self.service} does not exist in {self.parent}",
                             hint="deploy it first with `mldeploy deploy`")
        return pick_canary(self.service, current["slots"], pr, verb)

    def _spec(self, model: Model | None = None) -> str:
        """A short hash of what a revision runs besides its image: a change of settings or of the model in
        storage is a new revision."""
        s = self.settings
        spec: list[Any] = [s.cpu, s.memory, s.concurrency, s.min_instances, s.max_instances, s.service_account, PORT]
        if s.environment or s.secrets:  # only then: revisions deployed before these keys keep their names
            spec += [s.environment, s.secrets]
        if model:  # likewise: a baked revision keeps its name
            spec += [model.uri, model.sha256]
        return _hash(json.dumps(spec, sort_keys=True), 4)

    def _revision_name(self, slot: str, image: str, model: Model | None) -> str:
        name = f"{self.service}-{slot}-{digest_of(image)[:10]}-{self._spec(model)}"
        if len(name) > 63:  # service ids are at most 49 characters: 13 are left for a unique suffix
            name = f"{self.service}-{_hash(name, 62 - len(self.service))}"
        return name

    def _plan(self, d: Desired, current: dict[str, Any] | None, after: dict[str, dict[str, Any]]) -> Plan:
        if current and current["foreign"]:
            raise UsageError(f"the traffic of {self.service} is split in a way mldeploy did not make "
                             f"({', '.join(current['foreign'])})",
                             hint="give one revision 100% (`gcloud run services update-traffic --to-revisions`) "
                                  "and deploy again")
        slots = current["slots"] if current else {}
        plan = Plan(self.name, d, traffic_before={s: e["traffic"] for s, e in slots.items()},
                    traffic_after={s: e["traffic"] for s, e in after.items()})
        serving = {e["revision"] for e in slots.values()}
        new = {}
        for slot, e in after.items():
            if e["revision"] not in serving and e["revision"] not in new and self._revision(e["revision"]) is None:
                new[e["revision"]] = (slot, e["image"], e["model"])
                plan.add("create", f"cloud run revision {e['revision']}", f"{slot} image", new=e["image"])
        if current is None:
            plan.add("create", f"cloud run service {self.service}", "ingress", new=self.settings.ingress)
        for slot, e in after.items():
            what = f"{e['revision']} {e['traffic']}%"
            if slot not in slots:
                if current is not None:
                    plan.add("create", f"cloud run tag {slot}", "traffic", new=what)
            else:
                plan_model(plan, f"cloud run slot {slot}", slots[slot]["model"], e["model"])
            if slot in slots and (slots[slot]["revision"], slots[slot]["traffic"]) != (e["revision"], e["traffic"]):
                plan.add("update", f"cloud run service {self.service}", f"traffic {slot}",
                         f"{slots[slot]['revision']} {slots[slot]['traffic']}%", what)
        for slot in slots:
            if slot not in after:
                plan.add("delete", f"cloud run tag {slot}", old=f"{slots[slot]['revision']} {slots[slot]['traffic']}%")
        if current is not None and current["ingress"] != self._ingress():
            plan.add("update", f"cloud run service {self.service}", "ingress",
                     self.run.IngressTraffic(current["ingress"]).name, self.settings.ingress)
        iam = None
        policy = self._policy() if current is not None else None
        if self.public and (policy is None or not self._is_public(policy)):
            iam = "grant"
            plan.add("update", f"cloud run service {self.service}", f"iam {INVOKER}",
                     new="allUsers (public: anyone on the internet may call it)")
        elif not self.public and policy is not None and self._is_public(policy):
            iam = "revoke"
            members = sorted({m for b in policy.bindings if b.role == INVOKER for m in b.members} & set(PUBLIC_MEMBERS))
            plan.add("update", f"cloud run service {self.service}", f"iam {INVOKER}",
                     f"{', '.join(members)} (public)", "private (identity token required)")
        plan.state = {"current": current, "after": after, "new": new, "iam": iam, "policy": policy}
        return plan

    # -- applying ---------------------------------------------------------------------------------
    def _ingress(self) -> Any:
        names = {"all": "INGRESS_TRAFFIC_ALL", "internal": "INGRESS_TRAFFIC_INTERNAL_ONLY",
                 "internal-and-cloud-load-balancing": "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"}
        return self.run.IngressTraffic[names[self.settings.ingress]]

    def _labels(self, slot: str | None = None, image: str | None = None, model: Model | None = None) -> dict[str, str]:
        found = gcp.labels(self.service, slot, image)
        return found | {"mldeploy-spec": self._spec(model)} if image else found

    def _template(self, revision: str, slot: str, image: str, model: Model | None) -> Any:
        run, s = self.run, self.settings
        # a model in storage: the server downloads it with the service account's identity (storage.objects.get)
        env = [run.EnvVar(name=k, value=v) for k, v in sorted({**s.environment, **model_env(model)}.items())]
        for name, ref in sorted(s.secrets.items()):  # SECRET or SECRET:VERSION (a name or projects/P/secrets/S)
            secret, _, version = ref.partition(":")
            env.append(run.EnvVar(name=name, value_source=run.EnvVarSource(
                secret_key_ref=run.SecretKeySelector(secret=secret, version=version or "latest"))))
        container = run.Container(image=image, ports=[run.ContainerPort(name="http1", container_port=PORT)],
                                  resources=run.ResourceRequirements(limits={"cpu": s.cpu, "memory": s.memory}),
                                  env=env)
        return run.RevisionTemplate(revision=revision, labels=self._labels(slot, image, model), containers=[container],
                                    scaling=run.RevisionScaling(min_instance_count=s.min_instances,
                                                                max_instance_count=s.max_instances),
                                    max_instance_request_concurrency=s.concurrency,
                                    service_account=s.service_account or "")

    def _traffic(self, after: dict[str, dict[str, Any]]) -> list[Any]:
        kind = self.run.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
        return [self.run.TrafficTarget(type_=kind, revision=e["revision"], percent=e["traffic"],
                                       tag="" if slot == "production" else slot) for slot, e in after.items()]

    def _service_spec(self, current: dict[str, Any] | None, after: dict[str, dict[str, Any]],
                      new: dict[str, tuple[str, str, Model | None]]) -> Any:
        """The whole service as it should be: the read one (etag included) with a new template and traffic."""
        svc = self.run.Service() if current is None else type(current["service"]).deserialize(
            type(current["service"]).serialize(current["service"]))
        for revision, (slot, image, model) in new.items():
            svc.template = self._template(revision, slot, image, model)
        svc.traffic = self._traffic(after) + (current["kept"] if current else [])
        svc.ingress = self._ingress()
        svc.labels.update(self._labels())
        return svc  # CreateService names a new one from service_id

    def _set_public(self, public: bool, bindings: list[Any] | None = None) -> None:
        """Grant or revoke roles/run.invoker for allUsers (or put back the given bindings)."""
        from google.iam.v1 import policy_pb2

        policy = self._policy()
        if bindings is None:
            bindings = []
            for b in policy.bindings:
                members = [m for m in b.members if not (b.role == INVOKER and m in PUBLIC_MEMBERS)]
                if members:
                    kept = policy_pb2.Binding(role=b.role, members=members)
                    if b.HasField("condition"):
                        kept.condition.CopyFrom(b.condition)
                    bindings.append(kept)
            if public:
                bindings.append(policy_pb2.Binding(role=INVOKER, members=["allUsers"]))
        wanted = policy_pb2.Policy(version=policy.version, etag=policy.etag, bindings=bindings)
        with _refused(f"set the IAM policy of {self.service}",
                      "someone changed the service's IAM policy at the same time: run this again",
                      "making a service public or private needs run.services.setIamPolicy (roles/run.admin)"):
            self.services.set_iam_policy(request={"resource": self.resource, "policy": wanted})

    def _verify(self, after: dict[str, dict[str, Any]]) -> None:
        self._read_back = verify_revisions(self.read(), after, f"service {self.service}")

    def _url(self, slot: str) -> str:
        """Production: the service URL; a canary: its tag's URL as Cloud Run reports it."""
        current = self._read_back
        if slot == "production":
            return current["url"]
        if current["slots"][slot]["url"]:
            return current["slots"][slot]["url"]
        scheme, host = current["url"].split("://", 1)  # the form of a tag's URL: https://<tag>---<service host>
        return f"{scheme}://{slot}---{host}"

    def _needs_token(self) -> bool:
        """A private service wants an identity token; a local plain-HTTP fake has no tokens to give."""
        from google.auth.credentials import AnonymousCredentials

        return not self.public and not isinstance(self.credentials, AnonymousCredentials)

    def _identity_token(self, audience: str) -> str:
        """An ID token for a private service: a service account key, the metadata server, or the
        service account that Workload Identity Federation impersonates; never printed."""
        if audience in self._tokens:
            return self._tokens[audience]
        import google.auth.transport.requests
        import google.oauth2.id_token
        from google.auth import exceptions, impersonated_credentials

        request = google.auth.transport.requests.Request()
        hint = ("the deploy identity must be a service account (a key, the metadata server, or Workload Identity "
                "Federation impersonating one, with roles/iam.serviceAccountTokenCreator on itself), "
                "or set deploy.gcp.cloudrun.allow_unauthenticated: true for a public service")
        token = None
        try:
            try:
                token = google.oauth2.id_token.fetch_id_token(request, audience)
            except exceptions.DefaultCredentialsError:
                email = getattr(self.credentials, "service_account_email", None)
                if email:
                    target = impersonated_credentials.Credentials(source_credentials=self.credentials,
                                                                  target_principal=email, target_scopes=gcp.SCOPES)
                    creds = impersonated_credentials.IDTokenCredentials(target, target_audience=audience,
                                                                        include_email=True)
                    creds.refresh(request)
                    token = creds.token
                elif hasattr(self.credentials, "refresh"):
                    self.credentials.refresh(request)
                    token = getattr(self.credentials, "id_token", None)  # user credentials (gcloud ADC)
        except exceptions.GoogleAuthError as e:
            raise UsageError(f"no identity token to call the private service {self.service}: {gcp.message_of(e)}",
                             hint=hint) from None
        if not token:
            raise UsageError(f"no identity token to call the private service {self.service}", hint=hint)
        self._tokens[audience] = token
        return token

    def _smoke(self, slot: str, body: dict[str, Any]) -> None:
        url = self._url(slot)
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": f"mldeploy/{__version__}"}
        if self._needs_token():
            headers["Authorization"] = f"Bearer {self._identity_token(self._read_back['url'])}"
        request = urllib.request.Request(f"{url}/predict", data=json.dumps(body).encode(), headers=headers,
                                         method="POST")
        for attempt in range(3):
            try:
                with urllib.request.urlopen(request, timeout=SMOKE_TIMEOUT) as r:
                    r.read()
                return
            except urllib.error.HTTPError as e:
                if e.code in (429, 503) and attempt < 2:  # no instance yet: Cloud Run asks to come back
                    time.sleep(POLL_SECONDS)
                    continue
                text = e.read().decode(errors="replace").strip().replace("\n", " ")[:200]
                raise CheckFailed(f"the smoke request to {slot} ({url}/predict) answered {e.code}: {text}") from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise CheckFailed(f"the smoke request to {slot} ({url}/predict) failed: {reason}") from None

    def _bake(self, slot: str, body: dict[str, Any]) -> None:
        """Keep checking the canary for bake_seconds: its revision stays ready and answers the smoke request."""
        deadline = time.monotonic() + self.options.bake_seconds
        print(f"  baking {slot} for {self.options.bake_seconds} s", flush=True)
        while time.monotonic() < deadline:
            time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))
            entry = (self.read() or {"slots": {}})["slots"].get(slot)
            if entry is None or not entry["healthy"]:
                raise CheckFailed(f"the canary {slot} stopped being ready while it baked")
            if body:
                self._smoke(slot, body)

    def _restore(self, state: dict[str, Any], service: bool = True) -> str:
        """Put back what served before; say what happened, in the words the failure message ends with."""
        previous = state["current"]
        with gcp.translated(f"restore {self.service}"):
            if previous is None:
                if not service:
                    return "nothing was created"
                gcp.wait(self.services.delete_service(name=self.resource), f"delete {self.service}",
                         self.options.wait_seconds)
                return "rolled back: the new service was deleted"
            if service:
                live = self.services.get_service(name=self.resource)
                spec = type(previous["service"]).deserialize(type(previous["service"]).serialize(previous["service"]))
                spec.etag = live.etag
                gcp.wait(self.services.update_service(service=spec), f"restore {self.service}",
                         self.options.wait_seconds)
            if state["iam"]:
                self._set_public(not self.public, list(state["policy"].bindings))
        before = ", ".join(f"{s} {e['traffic']}%" for s, e in previous["slots"].items())
        return f"rolled back: the service serves as before ({before})"

    # -- monitoring -----------------------------------------------------------------------------------
    def _resource(self) -> str:
        return (f'resource.type = "cloud_run_revision" AND resource.labels.location = "{self.location}" '
                f'AND resource.labels.service_name = "{self.service}"')

    def slot_metrics(self, window: float, pr: int | None = None) -> Collected:
        """Cloud Monitoring request_count (by response_code_class) and request_latencies per revision."""
        from mldeploy.monitor.metrics import Collected

        current = self.read()
        canary = self.compared(current, pr)  # no endpoint or no canary: NoCanary, in one line
        assert current is not None
        stats = gcp.cloud_monitoring_slot_stats(
            self.project, self._resource(), "resource.labels.revision_name",
            {slot: current["slots"][slot]["revision"] for slot in ("production", canary)},
            (REQUESTS, "metric.labels.response_code_class"), (LATENCIES, ""), window)
        return Collected(stats["production"], stats[canary], window, f"Cloud Monitoring Cloud Run {self.service}",
                         notes=["Cloud Run counts every request to a revision, probes and smoke requests included",
                                "prediction divergence not measured: Cloud Run does not capture requests"])

    def monitor_plan(self, cfg: Config, config_file: str | None = None) -> SetupPlan:
        """Alert policies; Cloud Run has no model monitoring, so drift is checked on a schedule."""
        from mldeploy.deploy import gcp_alerts
        from mldeploy.monitor.setup import SetupPlan, schedule_snippets

        result = SetupPlan(f"gcp {self.name}", self.service)
        gcp_alerts.plan(cfg, self.service, self.project, self.name, ALERT_SERIES, self._resource(), result)
        result.notes.append("Cloud Run has no model monitoring: run `mldeploy monitor drift` on a schedule (below)")
        result.notes += schedule_snippets(cfg, config_file)
        return result

    @classmethod
    def doctor(cls, deploy: DeploySection) -> list[tuple[str, bool, str]]:
        def list_services(creds: Any, location: str, parent: str) -> None:
            from google.cloud import run_v2

            next(iter(gcp.client(run_v2.ServicesClient, creds, location, "run").list_services(
                request={"parent": parent, "page_size": 1})), None)

        return gcp.doctor(deploy, {"run.services.list": list_services})
