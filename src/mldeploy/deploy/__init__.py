"""One deploy interface for every target: plan, apply, status, promote, rollback.

Every target maps the same two slots, `production` and `canary`, and the canary's traffic share
onto its own mechanism. `plan` calls nothing that mutates; `apply` verifies what it deployed (the
digest read back, a smoke request) and restores the previous state when that fails. Only a
target's own module imports its cloud SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

SLOTS = ("production", "canary")


@dataclass
class Desired:
    endpoint: str
    image: str                 # repository@sha256:... (never a tag)
    stage: str                 # canary | production
    traffic: int               # percent of requests to the canary
    smoke: dict[str, Any]      # a request body the model must answer with 200


@dataclass
class Plan:
    target: str
    desired: Desired
    changes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.changes

    def text(self) -> str:
        if self.empty:
            return f"{self.target} {self.desired.endpoint}: up to date, nothing to change"
        return "\n".join([f"{self.target} {self.desired.endpoint}: plan"] + [f"  - {c}" for c in self.changes])


class Target(Protocol):
    name: str

    def plan(self, desired: Desired) -> Plan: ...
    def apply(self, plan: Plan) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...
    def promote(self) -> dict[str, Any]: ...
    def rollback(self) -> dict[str, Any]: ...


def smoke_body(signature) -> dict[str, Any]:
    """A request every model must answer: zeros in the signature's shape, one row."""
    def zeros(shape, dtype: str) -> object:
        value: object = "" if dtype == "string" else False if dtype == "bool" else 0
        for dim in reversed(shape):
            value = [value] * (dim if isinstance(dim, int) else 1)
        return value

    return {"inputs": {t.name: zeros(t.shape, t.dtype) for t in signature.inputs}}


def target_for(cloud: str, target: str, endpoint: str, port: int) -> Target:
    if cloud == "local":
        from mldeploy.deploy.local import LocalTarget

        return LocalTarget(endpoint, port)
    from mldeploy.errors import UsageError

    raise UsageError(f"deploy.cloud {cloud} ({target}) is not available in this version yet",
                     hint="use cloud: local")
