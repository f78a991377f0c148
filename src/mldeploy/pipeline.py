"""`mldeploy run`: the whole pipeline from mldeploy.yaml, each step in the order a release takes.

    convert -> optimize -> build -> push -> deploy (canary, or production the first time) -> smoke
            -> promote (with --promote)

Every step is the same function its own command runs, so a re-run with nothing changed is quick
(convert and optimize say "up to date", the image build hits the cache, the deploy plan is empty).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from mldeploy import github
from mldeploy.config import Config, require_deploy_keys
from mldeploy.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from mldeploy.deploy.base import Status

SMOKE_REQUESTS = 200


def run(cfg: Config, *, promote: bool = False) -> tuple[Status, dict[str, Any]]:
    from mldeploy.bundle import Bundle
    from mldeploy.convert import convert
    from mldeploy.deploy import Desired, smoke_body, target_for
    from mldeploy.image import _model_name, build_and_push
    from mldeploy.optimize import optimize
    from mldeploy.publish import publish, published_model

    require_deploy_keys(cfg)
    steps = ["convert", *(["optimize"] if cfg.optimize.enabled else []), "build and push",
             *(["publish"] if cfg.image.model == "storage" else []), "deploy", "smoke",
             *(["promote"] if promote else [])]
    started = time.monotonic()
    timings: dict[str, float] = {}

    def step(name: str) -> AbstractContextManager[None]:
        print(f"[{len(timings) + 1}/{len(steps)}] {name} ...", flush=True)
        timings[name] = time.monotonic()
        return github.group(name)

    def done(name: str) -> None:
        timings[name] = time.monotonic() - timings[name]
        print(f"[{list(timings).index(name) + 1}/{len(steps)}] {name}: done in {timings[name]:.1f} s", flush=True)

    with step("convert"):
        convert(cfg)
    done("convert")
    if cfg.optimize.enabled:
        with step("optimize"):
            optimize(cfg)
        done("optimize")
    if not cfg.image.registry:
        raise UsageError("image.registry is not set: nowhere to push the image",
                         hint="set it in mldeploy.yaml or MLDEPLOY_IMAGE__REGISTRY (scripts/docker-up.sh "
                              "starts one on 127.0.0.1:5000)")
    with step("build and push"):
        built = build_and_push(cfg.bundle, base=cfg.image.base, registry=cfg.image.registry,
                               repository=cfg.image.repository, dockerfile=cfg.image.dockerfile,
                               environment=cfg.image.environment, push_image=True,
                               model=cfg.image.model, storage_uri=cfg.storage.uri)
    done("build and push")

    model = None
    if cfg.image.model == "storage":   # the model travels beside the runtime image, not in it
        with step("publish"):
            published = publish(cfg)
            print(f"{'up to date' if published['up_to_date'] else 'published'}: {published['uri']}")
        done("publish")
        model = published_model(cfg, Bundle.open(cfg.bundle))
    bundle = Bundle.open(cfg.bundle)
    target = target_for(cfg, cfg.deploy.endpoint or _model_name(bundle))
    body = smoke_body(bundle.signature)
    with step("deploy"):
        plan = target.plan(Desired(target.endpoint, str(built["image"]), "canary", cfg.deploy.canary_traffic, body,
                                   model=model))
        print(plan.text())
        report = target.apply(plan)
        _production_serves(report)
    done("deploy")

    with step("smoke"):
        url = report.url
        served = smoke(str(url), body)
        share = ", ".join(f"{slot} {n / SMOKE_REQUESTS:.0%}" for slot, n in sorted(served.items()))
        print(f"{SMOKE_REQUESTS} requests to {url}/predict: all answered; {share}")
    done("smoke")
    if promote and "canary" in report.slots:
        with step("promote"):
            report = target.promote()
            _production_serves(report)
        done("promote")
    elif promote:
        timings["promote"] = 0.0
        print(f"[{len(steps)}/{len(steps)}] promote: nothing to promote (this deploy went straight to production)")
    total = time.monotonic() - started
    print(f"pipeline done in {total:.1f} s; endpoint {report.url}")
    return report, {**report.to_dict(), "image": built["image"], "seconds": round(total, 1),
                    "timings": {k: round(v, 1) for k, v in timings.items()}}


def _production_serves(status: Status) -> None:
    """The read-back the step ends with: production serving and healthy, whatever the step did."""
    from mldeploy.deploy import read_back_problems

    if problems := read_back_problems(status, {"production": None}):
        raise CheckFailed("; ".join(problems), hint="`mldeploy status` shows every slot")


def smoke(url: str, body: dict) -> Counter:
    """SMOKE_REQUESTS predictions through the endpoint; which slot answered each; exit 1 on any failure."""
    import json

    data = json.dumps(body).encode()
    served: Counter = Counter()
    for _ in range(SMOKE_REQUESTS):
        req = urllib.request.Request(f"{url}/predict", data=data, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                served[r.headers.get("x-mldeploy-slot", "production")] += 1
        except (urllib.error.URLError, OSError) as e:
            raise CheckFailed(f"smoke request to {url}/predict failed: {e}") from None
    return served

