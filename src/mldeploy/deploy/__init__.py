"""One deploy interface for every target: plan, apply, status, promote, rollback.

Every target maps the same two slots, `production` and `canary`, and the canary's traffic share
onto its own mechanism. `plan` calls nothing that mutates; `apply` verifies what it deployed (the
digest read back, a smoke request) and restores the previous state when that fails. Only a
target's own module imports its cloud SDK.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mldeploy.changes import Change
from mldeploy.errors import CheckFailed, MldeployError, UsageError
from mldeploy.errors import one_line as one_line

if TYPE_CHECKING:  # the serving image runs deploy.router without pydantic
    from mldeploy.bundle import Signature
    from mldeploy.config import Config, DeploySection
    from mldeploy.deploy.base import Model, Status, Target


@dataclass
class Desired:
    endpoint: str
    image: str                 # repository@sha256:... (never a tag)
    stage: str                 # canary | production
    traffic: int               # percent of requests to the canary
    smoke: dict[str, Any]      # a request body the model must answer with 200
    pr: int | None = None      # a pull request's canary gets its own slot: parallel PRs never collide
    model: Model | None = None  # image.model: storage: the artifact the slot serves (None: baked in the image)

    @property
    def slot(self) -> str:
        """The slot this deploy fills: production, canary, or canary-pr<N> for a pull request."""
        if self.stage == "production":
            return "production"
        return f"canary-pr{self.pr}" if self.pr else "canary"

    def require_digest(self) -> None:
        """A target that deploys only by digest refuses anything else (a tag can move under a deploy)."""
        if not re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", self.image):
            raise UsageError(f"the image {self.image} is not REPOSITORY@sha256:DIGEST",
                             hint="deploy by digest: `mldeploy build --push` records it")


@dataclass
class Plan:
    target: str
    desired: Desired
    changes: list[Change] = field(default_factory=list)
    traffic_before: dict[str, int] = field(default_factory=dict)   # slot -> percent
    traffic_after: dict[str, int] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)            # what the target read; apply reuses it
    note: str = ""                                                 # why the plan is what it is, when not plain

    @property
    def empty(self) -> bool:
        return not self.changes

    def add(self, action: str, resource: str, field: str = "", old: Any = None, new: Any = None) -> None:
        """One change. An update whose old and new are both given and equal changes nothing, so it is
        left out: a plan lists only what would change, and one with nothing left says "up to date". An
        update that carries no old or new (a deployment strategy, a grant) is always kept."""
        if action == "update" and old is not None and new is not None and old == new:
            return
        self.changes.append(Change(action, resource, field, old, new))

    def _traffic(self, split: dict[str, int]) -> str:
        return ", ".join(f"{slot} {pct}%" for slot, pct in split.items()) or "none"

    def text(self) -> str:
        note = f" ({self.note})" if self.note else ""
        if self.empty:
            return f"{self.target} {self.desired.endpoint}: up to date, nothing to change{note}"
        lines = [f"{self.target} {self.desired.endpoint}: plan{note}"] + [f"  - {c.text()}" for c in self.changes]
        if self.traffic_before or self.traffic_after:
            lines.append(f"  traffic: {self._traffic(self.traffic_before)} -> {self._traffic(self.traffic_after)}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"target": self.target, "endpoint": self.desired.endpoint, "image": self.desired.image,
                           "stage": self.desired.stage, "slot": self.desired.slot,
                           "changes": [asdict(c) for c in self.changes],
                           "traffic_before": self.traffic_before, "traffic_after": self.traffic_after},
                          indent=2, default=str)

    def markdown(self) -> str:
        head = f"### Deploy plan: {self.target} `{self.desired.endpoint}`\n\n"
        if self.empty:
            return head + f"Up to date: nothing to change{f' ({self.note})' if self.note else ''}.\n"
        rows = "\n".join(f"| {c.action} | `{c.resource}` | {c.field} | {'' if c.old is None else f'`{c.old}`'} | "
                         f"{'' if c.new is None else f'`{c.new}`'} |" for c in self.changes)
        return (head + "| action | resource | field | old | new |\n|---|---|---|---|---|\n" + rows +
                f"\n\nTraffic: {self._traffic(self.traffic_before)} -> {self._traffic(self.traffic_after)}\n")


# Errors raised by the clouds' SDKs and HTTP stacks (by the package that raised them: only a target imports
# its SDK), which a deploy half-way through meets when a cloud fails: the user's problem, never exit 3.
RESTORE_BACKOFF = (1.0, 2.0, 4.0)  # seconds between a failed restore and the next try
CLOUD_ERROR_PACKAGES = frozenset({"botocore", "boto3", "google", "grpc", "azure", "msrest", "requests", "urllib3",
                                  "docker", "http"})


class Conflict(CheckFailed):
    """Another command changed the endpoint after this one read it (exit 1; this one moved no traffic)."""


@dataclass
class Guard:
    """Compare-and-set for two commands on one endpoint at once (two pull requests, a promote beside a
    deploy), where a cloud offers none: a command moves traffic only while what serves is what it
    planned from, and never restores over another command's work. `check` runs just before the call
    that moves traffic, so the window left is that one call's round trip."""
    endpoint: str
    read: Callable[[], Status]           # the target's status()
    seen: dict[str, tuple[str, int]]     # served() when the command read the endpoint
    ours: frozenset[str]                 # the images this command deploys

    def check(self) -> None:
        if (now := self.read().served()) != self.seen:
            raise Conflict(f"another command changed {self.endpoint} after this one read it (it serves "
                           f"{_shares(now)}, not {_shares(self.seen)}); this one moved no traffic",
                           hint="run it again: it plans from what serves then")

    def others(self) -> list[str]:
        """Images that serve now which neither served before nor are this command's: another command's."""
        known = {image for image, _ in self.seen.values()} | self.ours
        return sorted({image for image, _ in self.read().served().values()} - known)


def _shares(slots: dict[str, tuple[str, int]]) -> str:
    shown = [f"{slot} {image.rsplit('@', 1)[-1][:19]} {pct}%" for slot, (image, pct) in slots.items()]
    return ", ".join(shown) or "nothing"


@contextmanager
def restoring(restore: Callable[[], str], guard: Guard | None = None) -> Iterator[None]:
    """The one restore path of every target. Once apply has changed something, any exception (a failed
    check, a refusal, the SDK's error, a dropped connection, a timeout, Ctrl-C) puts back what served
    before, and the error goes on saying what was restored. `restore` returns those words. With a
    guard, what another command deployed meanwhile is left serving, never restored over."""
    def put_back() -> str:
        if guard and (others := guard.others()):
            return (f"not restored: another command deployed {', '.join(others)} meanwhile; "
                    "`mldeploy status` shows what serves")
        return restore()

    try:
        yield
    except Conflict:  # raised before this command moved any traffic: a restore would undo the other's work
        raise
    except BaseException as e:
        for wait in (*RESTORE_BACKOFF, None):  # the API that just failed may fail the restore's first call too
            try:
                restored = put_back()
                break
            except Exception as again:  # said, never hidden: the caller's read-back shows what serves
                restored = f"the restore failed too ({one_line(again)}): `mldeploy status` shows what serves"
                if wait is not None:
                    time.sleep(wait)
        if isinstance(e, MldeployError):
            raise type(e)(f"{e.message}; {restored}", hint=e.hint) from None
        if isinstance(e, KeyboardInterrupt):
            print(f"interrupted; {restored}", file=sys.stderr, flush=True)
            raise
        if isinstance(e, (OSError, TimeoutError)) or type(e).__module__.split(".")[0] in CLOUD_ERROR_PACKAGES:
            raise UsageError(f"the cloud failed half-way: {one_line(e)}; {restored}",
                             hint="run the same command again when the cloud answers") from None
        raise  # a bug of ours: exit 3 with its traceback under --debug, after the restore


def storage_location(source: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://BUCKET/PREFIX or gs://..., (host, path) of an https:// storage URL."""
    scheme, _, rest = source.partition("://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(f"{source} names no bucket", hint=f"use {scheme}://BUCKET/PREFIX")
    return bucket, prefix.lstrip("/")


def dns_label(endpoint: str, limit: int) -> str:
    """The endpoint as lowercase letters, digits and single hyphens, a letter first, at most `limit`
    characters (a long name keeps its start and gains 8 hex of its hash, so two never collide)."""
    import hashlib

    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]+", "-", endpoint.lower())).strip("-")
    if not name or not name[0].isalpha():
        name = f"m-{name}".rstrip("-")
    if len(name) > limit:
        name = f"{name[:limit - 9].rstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


def read_back_problems(status: Status, expect: Mapping[str, str | None]) -> list[str]:
    """What is wrong with what serves (a target's status()), slot by slot: expect maps a slot to the
    image it must serve (None: any image, but serving and healthy)."""
    problems = []
    for slot, image in expect.items():
        got = status.slots.get(slot)
        if got is None:
            problems.append(f"no {slot} slot is serving")
        elif image and got.image != image:
            problems.append(f"{slot} serves {got.image}, not {image}")
        elif not got.healthy:
            problems.append(f"{slot} ({got.image}) is unhealthy")
    total = sum(s.traffic for s in status.slots.values())
    if status.slots and total != 100:
        problems.append(f"the slots take {total}% of the traffic, not 100%")
    return problems


def smoke_body(signature: Signature) -> dict[str, Any]:
    """A request every model must answer: zeros in the signature's shape, one row."""
    def zeros(shape: Sequence[int | str | None], dtype: str) -> object:
        value: object = "" if dtype == "string" else False if dtype == "bool" else 0
        for dim in reversed(shape):
            value = [value] * (dim if isinstance(dim, int) else 1)
        return value

    return {"inputs": {t.name: zeros(t.shape, t.dtype) for t in signature.inputs}}


class NoCanary(UsageError):
    """A promote or rollback found no canary to act on (exit 2; `rollback --missing-ok` says so and exits 0)."""


def canary_shares(current: dict[str, int], slot: str, traffic: int) -> dict[str, int]:
    """Traffic after a canary deploy: production gives the canary its share, other canaries keep theirs."""
    others = {s: pct for s, pct in current.items() if s not in ("production", slot)}
    if sum(others.values()) + traffic > 100:
        raise UsageError(f"the canaries would take {sum(others.values()) + traffic}% of traffic",
                         hint=f"lower --traffic or roll back one of {', '.join(others)}")
    return {"production": 100 - sum(others.values()) - traffic, **others, slot: traffic}


def pick_canary(endpoint: str, slots: Iterable[str], pr: int | None, verb: str) -> str:
    """The canary a promote or a rollback acts on: the pull request's, else the only one."""
    canaries = sorted(s for s in slots if s != "production")
    wanted = f"canary-pr{pr}" if pr else None
    if wanted and wanted in canaries:
        return wanted
    if not wanted and len(canaries) == 1:
        return canaries[0]
    if not canaries or wanted:
        raise NoCanary(f"{endpoint} has no canary{f' for PR {pr}' if pr else ''} to {verb}",
                         hint="deploy one with --stage canary" if verb == "promote" else "nothing changed")
    raise UsageError(f"{endpoint} has {len(canaries)} canaries ({', '.join(canaries)})",
                     hint=f"say which with --pr N to {verb} it")


def rollback_layout(endpoint: str, slots: dict[str, tuple[str, int]], pr: int | None
                    ) -> tuple[dict[str, str], dict[str, int]]:
    """Images and traffic after a rollback of the PR's canary (or of every canary): production
    takes their share back. slots: slot -> (image, percent)."""
    gone = {pick_canary(endpoint, slots, pr, "roll back")} if pr else {s for s in slots if s != "production"}
    if not gone:
        raise NoCanary(f"{endpoint} has no canary to roll back", hint="production is already all the traffic")
    keep = {s: v for s, v in slots.items() if s not in gone}
    canaries = {s: pct for s, (_, pct) in keep.items() if s != "production"}
    return {s: image for s, (image, _) in keep.items()}, {"production": 100 - sum(canaries.values()), **canaries}


def target_for(cfg: Config, endpoint: str) -> Target:
    """The target of deploy.cloud/deploy.target, from the registry (its module imports its own SDK)."""
    return target_class(cfg.deploy).from_config(endpoint, cfg)


def target_class(deploy: DeploySection) -> type[Target]:
    from mldeploy import targets as registry

    entry = registry.find(deploy.cloud, deploy.target)  # config validation allows only registered pairs
    cls: type[Target] = getattr(importlib.import_module(entry.module), entry.cls)
    cls.entry = entry
    return cls


def doctor(deploy: DeploySection) -> list[tuple[str, bool, str]]:
    """The cloud's preflight: identity and permission rows (check, passed, detail)."""
    return target_class(deploy).doctor(deploy)
