"""What a pull request's run may do to an endpoint, whatever its config and workflow file say.

No cloud's IAM can keep the canary identity off the production slot of the same endpoint (docs/security.md,
"What the canary identity can do"), and a pull request edits both mldeploy.yaml and, on
`pull_request`, the workflow file that calls the kit. So the kit itself refuses, on a run started by
a pull request (pull_request, pull_request_target, workflow_run), anything that changes production
(a production deploy, a promote, a canary onto an endpoint that has no production, which would make
it production) and a canary share above deploy.canary_max_traffic (at most 50 whatever the file says).
"""

from __future__ import annotations

import os

from mldeploy.errors import UsageError

PR_EVENTS = ("pull_request", "pull_request_target", "workflow_run")


def pull_request_event() -> str | None:
    """The event of the GitHub Actions run this is part of, when a pull request started it."""
    event = os.environ.get("GITHUB_EVENT_NAME", "")
    return event if os.environ.get("GITHUB_ACTIONS") == "true" and event in PR_EVENTS else None


def check_pull_request(stage: str, traffic: int = 0, cap: int = 0, has_production: bool = True) -> None:
    """Refuse (exit 2, one line) what a pull request's run must not do; nothing on other runs.
    stage: production, canary, promote or rollback; has_production: the endpoint has a production slot."""
    event = pull_request_event()
    if event is None:
        return
    hint = "run it from a release tag or by hand (workflow_dispatch) in the production environment"
    if stage in ("production", "promote"):
        raise UsageError(f"a {event} run never changes production ({stage} refused)", hint=hint)
    if stage == "canary" and not has_production:
        raise UsageError(f"a {event} run never changes production: the endpoint has none yet, so this canary "
                         "would become it", hint="deploy production first, from a release tag")
    if stage == "canary" and traffic > cap:
        raise UsageError(f"a {event} run's canary takes at most {cap}% of the traffic "
                         f"(deploy.canary_max_traffic), not {traffic}%",
                         hint="lower deploy.canary_traffic, or give the canary more traffic from a release run")
