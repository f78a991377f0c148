"""The base of every deploy target: what serves (typed), and what is the same on every cloud.

A target supplies its cloud's mechanism only: `read` (the endpoint as the cloud describes it),
`_status` (that, slot by slot), `plan` and `apply`, and `layout` (a plan that leaves given images
with given shares: how a promote and a rollback are expressed). status, promote, rollback, the guard
against a concurrent command and "verify, else restore and say what was restored" are written here
once. Monitoring is the target's too: `slot_metrics` for canary analysis and `monitor_plan` for
`mldeploy monitor setup`, so monitor/ never branches on a cloud.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from mldeploy.deploy import Desired, Guard, Plan, pick_canary, restoring, rollback_layout
from mldeploy.errors import CheckFailed, UsageError
from mldeploy.targets import Entry

if TYPE_CHECKING:
    from mldeploy.config import Config, DeploySection
    from mldeploy.monitor.metrics import Collected
    from mldeploy.monitor.setup import SetupPlan


# -- models in object storage (image.model: storage) --------------------------------------------------
MODEL_URI, MODEL_SHA256 = "MLDEPLOY_MODEL_URI", "MLDEPLOY_MODEL_SHA256"   # what the server reads (serve/)


@dataclass(frozen=True)
class Model:
    """The artifact a slot serves: its prefix in object storage and its bundle sha256 (the content address)."""
    uri: str       # <storage.uri>/<model>/<sha256>, no trailing slash
    sha256: str

    def __str__(self) -> str:   # how plans and status name it
        return f"sha256:{self.sha256[:12]}"


def model_env(model: Model | None, uri: bool = True) -> dict[str, str]:
    """The server's environment for a model (uri=False where the platform hands the artifact over itself:
    a mount, AIP_STORAGE_URI; the hash alone then makes the server verify what it was given)."""
    if model is None:
        return {}
    return {MODEL_URI: model.uri, MODEL_SHA256: model.sha256} if uri else {MODEL_SHA256: model.sha256}


def model_from_env(env: Mapping[str, str], uri: str | None = None) -> Model | None:
    """The model a slot's environment names (uri: where the platform set the location instead)."""
    sha = env.get(MODEL_SHA256)
    return Model(uri if uri is not None else env.get(MODEL_URI, ""), sha) if sha else None


def without_model(env: Mapping[str, str]) -> dict[str, str]:
    """An environment without the model's variables: what a deploy compares apart from the model."""
    return {k: v for k, v in env.items() if k not in (MODEL_URI, MODEL_SHA256)}


def slot_models(desired: Desired, current: Mapping[str, Model | None], slots: Iterable[str]) -> dict[str, Model | None]:
    """Each slot's model after a deploy: the deployed slot gets the desired one (none: baked in the
    image), every other slot keeps its own."""
    return {s: desired.model if s == desired.slot else current.get(s) for s in slots}


def plan_model(plan: Plan, resource: str, old: Model | None, new: Model | None) -> None:
    """A slot's model change in a plan ("model: sha256:.. -> sha256:.."); none when it stays (baked
    stays baked: Plan.add would keep an update of None to None)."""
    if old != new:
        plan.add("update", resource, "model", old, new)


def model_problems(serving: Mapping[str, Model | None], wanted: Mapping[str, Model | None]) -> list[str]:
    """What the read-back finds wrong with the models, slot by slot (uri and hash both compared)."""
    problems = []
    for slot, want in wanted.items():
        got = serving.get(slot)
        if got != want:
            problems.append(f"{slot} serves the model {_named(got)}, not {_named(want)}")
    return problems


def verify_models(serving: Mapping[str, Model | None], wanted: Mapping[str, Model | None]) -> None:
    """The read-back of the models a deploy set: a mismatch is not serving what was asked (exit 1)."""
    if problems := model_problems(serving, wanted):
        raise CheckFailed("; ".join(problems))


def digest_of(image: str | None) -> str:
    """The hex digest of an image reference by digest (REPO@sha256:HEX); "" for no image."""
    return (image or "").rsplit("@", 1)[-1].removeprefix("sha256:")


def verify_revisions(current: dict[str, Any] | None, after: dict[str, dict[str, Any]], what: str) -> dict[str, Any]:
    """The read-back of a revision-based target (Cloud Run, Container Apps): each slot's revision and
    share as planned, running the planned image, healthy, with the planned model (else exit 1). Returns
    what was read."""
    if current is None:
        raise CheckFailed(f"the {what} is gone")
    served = {s: f"{e['revision']} {e['traffic']}%" for s, e in current["slots"].items()}
    planned = {s: f"{e['revision']} {e['traffic']}%" for s, e in after.items()}
    if served != planned:
        raise CheckFailed(f"the {what} serves {served}, not the planned {planned}")
    for slot, e in after.items():
        found = current["slots"][slot]
        if found["image"] is None or digest_of(found["image"]) != digest_of(e["image"]):
            raise CheckFailed(f"the revision {e['revision']} ({slot}) runs {found['image']}, not the planned {e['image']}")
        if not found["healthy"]:
            raise CheckFailed(f"the revision {e['revision']} ({slot}) is {found.get('state') or 'not ready'}")
    verify_models({s: e["model"] for s, e in current["slots"].items()}, {s: e["model"] for s, e in after.items()})
    return current


def _named(model: Model | None) -> str:
    return f"{model} at {model.uri}" if model else "baked into its image"


@dataclass
class Readiness:
    """A slot's instances as its cloud counts them (replicas, tasks...): ready of desired, and a rollout the
    cloud is still making (or gave up on), in its words: "in progress", "stopped: <reason>"."""
    ready: int
    desired: int
    rollout: str = ""

    def __str__(self) -> str:
        return f"{self.ready}/{self.desired} ready" + (f", rollout {self.rollout}" if self.rollout else "")


@dataclass
class Slot:
    image: str | None
    traffic: int                                          # percent of live requests
    healthy: bool
    detail: dict[str, Any] = field(default_factory=dict)  # the cloud's own names: version, revision, deployment...
    readiness: Readiness | None = None                    # where the target counts its instances
    model: Model | None = None                            # image.model: storage: the artifact it serves


@dataclass
class Status:
    """What serves, read back from the cloud."""
    endpoint: str
    url: str | None = None
    slots: dict[str, Slot] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. the endpoint's own state
    changed: bool | None = None                           # set by apply, promote and rollback

    def served(self) -> dict[str, tuple[str, int]]:
        """What takes traffic, slot by slot: (image, percent). A slot at 0% serves nothing."""
        return {slot: (s.image or "", s.traffic) for slot, s in self.slots.items() if s.traffic}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.changed is None else {"changed": self.changed}
        out |= {"endpoint": self.endpoint, "url": self.url, **self.detail, "slots": {
            name: {"image": s.image, "traffic": s.traffic, "healthy": s.healthy, **s.detail,
                   **({"readiness": asdict(s.readiness)} if s.readiness else {}),
                   **({"model": asdict(s.model)} if s.model else {})}
            for name, s in self.slots.items()}}
        return out


class Target(ABC):
    """One deploy target. Subclasses set `name` (deploy.target) and implement the abstract methods."""
    name: ClassVar[str]
    entry: ClassVar[Entry]      # set by target_for from the registry
    endpoint: str

    def __init__(self, endpoint: str, deploy: DeploySection | None = None) -> None:
        self.endpoint = endpoint
        self.deploy = deploy   # None where a target needs none (local)

    @classmethod
    def from_config(cls, endpoint: str, cfg: Config) -> Target:
        return cls(endpoint, cfg.deploy)

    # -- the cloud's mechanism ----------------------------------------------------------------------
    @abstractmethod
    def read(self) -> Any:
        """The endpoint as the cloud describes it (the target's own shape), or None before a deploy."""

    @abstractmethod
    def _status(self, current: Any) -> Status:
        """What `read` returned, slot by slot."""

    @abstractmethod
    def plan(self, desired: Desired) -> Plan:
        """What a deploy would change; calls nothing that mutates."""

    @abstractmethod
    def apply(self, plan: Plan) -> Status:
        """Make the plan so, verify it, and restore what served before when that fails."""

    def layout(self, desired: Desired, current: Any, images: dict[str, str], share: dict[str, int]) -> Plan:
        """A plan leaving `images` (slot -> image) serving with `share` (slot -> percent): what promote
        and rollback apply. Targets whose promote or rollback differ override those instead."""
        raise NotImplementedError(f"{self.name} promotes and rolls back its own way")

    # -- written once ---------------------------------------------------------------------------------
    def status(self) -> Status:
        return self._status(self.read())

    def changed(self, changed: bool) -> Status:
        status = self.status()
        status.changed = changed
        return status

    def canary(self, current: Any, pr: int | None, verb: str) -> str:
        """The canary a promote, a rollback or an analysis acts on: the pull request's, else the only one."""
        return pick_canary(self.endpoint, self._status(current).slots, pr, verb)

    def promote(self, pr: int | None = None) -> Status:
        current = self.read()
        slots = self._status(current).slots
        canary = slots[pick_canary(self.endpoint, slots, pr, "promote")]
        return self.apply(self.layout(production(self.endpoint, canary), current,
                                      {"production": canary.image or ""}, {"production": 100}))

    def rollback(self, pr: int | None = None) -> Status:
        current = self.read()
        served = self._status(current).slots
        slots = {s: (e.image or "", e.traffic) for s, e in served.items()}
        images, share = rollback_layout(self.endpoint, slots, pr)
        return self.apply(self.layout(production(self.endpoint, served["production"]), current, images, share))

    def guard(self, current: Any, images: Iterable[str]) -> Guard:
        """Compare-and-set against what `current` served, for a command deploying `images`."""
        return Guard(self.endpoint, self.status, self._status(current).served(), frozenset(images))

    @contextmanager
    def changing(self, current: Any, images: Iterable[str],
                 restore: Callable[[], str]) -> Iterator[Guard]:
        """Around every change: a guard to check just before traffic moves, and on any failure the
        restore of what served before (never over another command's work), said in the error."""
        guard = self.guard(current, images)
        with restoring(restore, guard):
            yield guard

    # -- monitoring -----------------------------------------------------------------------------------
    def slot_metrics(self, window: float, pr: int | None = None) -> Collected:
        """Both slots' requests, errors and latency over the last `window` seconds, for canary analysis."""
        from mldeploy.monitor.canary import SlotStats
        from mldeploy.monitor.metrics import Collected

        where = f"{self.entry.cloud} {self.name}"
        return Collected(SlotStats("production"), SlotStats("canary"), window, where,
                         unavailable=f"no metrics source for {where} yet: judge the canary in the cloud's console")

    def monitor_plan(self, cfg: Config, config_file: str | None = None) -> SetupPlan:
        """What `mldeploy monitor setup` would create in the cloud (reads only); by default nothing, and
        how to run the drift check on a schedule."""
        from mldeploy.monitor.setup import SetupPlan, drift_command, schedule_snippets

        result = SetupPlan(f"{self.entry.cloud} {self.name}", self.endpoint)
        result.notes.append(f"{self.name} has no cloud monitoring that mldeploy sets up")
        result.notes += schedule_snippets(cfg, config_file)
        result.outputs["drift-command"] = drift_command(config_file)
        return result

    def compared(self, current: Any, pr: int | None) -> str:
        """The canary to analyze; production must be there to compare it with."""
        slots = self._status(current).slots
        canary = pick_canary(self.endpoint, slots, pr, "analyze")
        if "production" not in slots:
            raise UsageError(f"{self.endpoint} has {canary} but no production slot to compare it with",
                             hint="deploy production first (`mldeploy deploy --stage production`)")
        return canary

    @classmethod
    def doctor(cls, deploy: DeploySection) -> list[tuple[str, bool, str]]:
        """The cloud's preflight: identity and permission rows (check, passed, detail)."""
        return []


def production(endpoint: str, slot: Slot) -> Desired:
    """A production deploy of what a slot serves (its image and its model): a promote, a rollback."""
    return Desired(endpoint, slot.image or "", "production", 0, {}, model=slot.model)


@runtime_checkable
class Removable(Protocol):
    """A target whose endpoints `mldeploy destroy` may remove (local only: a cloud's endpoint is removed
    in the cloud, where its owners can see it go)."""
    endpoint: str

    def destroy(self) -> dict[str, Any]: ...
