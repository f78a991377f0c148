"""`mldeploy monitor setup`: the cloud's own monitoring of a deployed endpoint, planned then applied.

Each target's `monitor_plan` (deploy/base.py; the cloud's parts in deploy/) reads what exists and
returns a SetupPlan: one step per resource to create or update, each with the call
that makes it, plus notes (what was left alone, and what to change). `--plan` prints the steps and
calls nothing that mutates; a re-run with the same inputs finds nothing to do and says so.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mldeploy.changes import Change
from mldeploy.errors import UsageError

if TYPE_CHECKING:
    from mldeploy.config import Config


@dataclass
class SetupPlan:
    cloud: str
    endpoint: str
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    steps: list[Callable[[], object]] = field(default_factory=list, repr=False)

    @property
    def empty(self) -> bool:
        return not self.changes

    def add(self, action: str, resource: str, run: Callable[[], object], field: str = "", old: Any = None,
            new: Any = None) -> None:
        self.changes.append(Change(action, resource, field, old, new))
        self.steps.append(run)

    def text(self) -> str:
        head = f"monitoring {self.cloud} {self.endpoint}"
        lines = [f"{head}: up to date, nothing to change" if self.empty else f"{head}: plan"]
        lines += [f"  - {c.text()}" for c in self.changes]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def markdown(self) -> str:
        md = f"### Monitoring setup: {self.cloud} `{self.endpoint}`\n\n"
        if self.empty:
            md += "Up to date: nothing to change.\n"
        else:
            md += "| action | resource | field | old | new |\n|---|---|---|---|---|\n" + "\n".join(
                f"| {c.action} | `{c.resource}` | {c.field} | {'' if c.old is None else f'`{c.old}`'} | "
                f"{'' if c.new is None else f'`{c.new}`'} |" for c in self.changes) + "\n"
        if self.notes:
            md += "\n" + "\n".join(f"- {n}" for n in self.notes) + "\n"
        return md

    def to_json(self) -> str:
        return json.dumps({"cloud": self.cloud, "endpoint": self.endpoint, "changes": [asdict(c) for c in self.changes],
                           "notes": self.notes, "outputs": self.outputs}, indent=2, default=str)

    def apply(self) -> None:
        for change, run in zip(self.changes, self.steps):
            run()
            print(f"  done: {change.text()}", flush=True)


def run(result: SetupPlan, *, plan_only: bool = False) -> SetupPlan:
    """Print the plan a target made (Target.monitor_plan), and apply it unless plan_only."""
    print(result.text(), flush=True)
    if not (plan_only or result.empty):
        result.apply()
        print(f"monitoring {result.cloud} {result.endpoint}: set up ({len(result.changes)} changes)")
    return result


# -- shared rules -------------------------------------------------------------------------------------
CRON = re.compile(r"^\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")


def cron_hours(schedule: str) -> tuple[int, int | None]:
    """(every N hours, at hour H or None) of monitoring.drift.schedule. The clouds' monitoring jobs run
    on whole hours only (SageMaker: hourly, every N hours or daily; Vertex: an interval in hours)."""
    match = CRON.match(schedule or "")
    hint = "use '0 * * * *' (hourly), '0 */6 * * *' (every 6 hours) or '0 3 * * *' (daily at 03:00)"
    if not match:
        raise UsageError(f"monitoring.drift.schedule {schedule!r} is not a cron expression (5 fields)", hint=hint)
    minute, hour, dom, month, dow = match.groups()
    if minute not in ("0", "00") or (dom, month, dow) != ("*", "*", "*"):
        raise UsageError(f"monitoring.drift.schedule {schedule!r} cannot be a cloud monitoring schedule: "
                         "they run on the hour, hourly, every N hours or daily", hint=hint)
    if hour == "*":
        return 1, None
    if every := re.fullmatch(r"\*/(\d{1,2})", hour):
        hours = int(every.group(1))
        if not 1 <= hours <= 24:
            raise UsageError(f"monitoring.drift.schedule {schedule!r}: every {hours} hours is out of range", hint=hint)
        return hours, None
    if hour.isdigit() and 0 <= int(hour) <= 23:
        return 24, int(hour)
    raise UsageError(f"monitoring.drift.schedule {schedule!r}: the hour field must be *, */N or one hour", hint=hint)


def load_baseline(cfg: Config) -> dict[str, Any] | None:
    """The baseline (monitoring.baseline, else baseline.json in the bundle), or None when there is none."""
    from mldeploy.monitor.baseline import load

    path = Path(cfg.monitoring.baseline) if cfg.monitoring.baseline else Path(cfg.bundle) / "baseline.json"
    if not path.is_file() and not cfg.monitoring.baseline:
        return None
    return load(path)   # a missing or damaged file named by monitoring.baseline: exit 2, one line


def drift_args(cfg_file: str | None, capture: str | None = None) -> list[str]:
    """The arguments of `mldeploy monitor drift` for a scheduled check."""
    return (["--config", cfg_file] if cfg_file else []) + (["--capture", capture] if capture else [])


def drift_command(cfg_file: str | None, capture: str | None = None) -> str:
    return shlex.join(["mldeploy", "monitor", "drift", *drift_args(cfg_file, capture)])


def schedule_snippets(cfg: Config, cfg_file: str | None, capture: str | None = None) -> list[str]:
    """A cron line and a GitHub Actions schedule that run the drift check (for targets the cloud does
    not monitor, and for local)."""
    schedule = cfg.monitoring.drift.schedule
    cron = f"{schedule} cd {shlex.quote(os.getcwd())} && {drift_command(cfg_file, capture)}"
    args = "".join(f"\n            {a}" for a in drift_args(cfg_file, capture))
    actions = (f"on:\n  schedule:\n    - cron: \"{schedule}\"\njobs:\n  drift:\n    runs-on: ubuntu-latest\n"
               "    steps:\n      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2\n"
               "      - uses: acme/ml-deploy@v2\n        with:\n"
               "          command: monitor\n          extras: monitor\n          args: |\n            drift" + args)
    return [f"cron: {cron}", f"GitHub Actions:\n{actions}"]
