"""One change a plan would make: a deploy's plan and a monitoring setup's plan list them alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Change:
    action: str                # create | update | delete
    resource: str              # e.g. "sagemaker endpoint-config classifier-3f2a..."
    field: str = ""
    old: Any = None
    new: Any = None

    def text(self) -> str:
        what = f"{self.action} {self.resource}"
        if self.field:
            what += f" {self.field}"
        if self.action == "update" and (self.old is not None or self.new is not None):
            what += f": {self.old} -> {self.new}"
        elif self.new is not None and self.action == "create" and self.field:
            what += f" = {self.new}"
        return what
