"""image.model: storage in a target's contract test: two real artifacts, a deploy with one, a model-only
change to the other (the plan names it, the target reads it back), and an idempotent re-run.

The artifacts are published for real (mldeploy.artifacts.publish) to the store the target's cloud uses in
the tests, so their addresses are real content hashes. Each test passes `served`: what the cloud's own
API says each slot mounts or is handed (slot -> Model), read without the target's code.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from mldeploy.deploy import Desired
from mldeploy.deploy.base import Model, Target


def two_models(bundle: Path, tmp: Path, storage_uri: str, name: str = "classifier",
               publish: bool = True) -> tuple[Model, Model]:
    """The bundle, and a copy of it with other bytes (so another content address), published to
    storage_uri; publish=False where the target never reads the store (the platform fetches it): their
    content addresses and URIs only, as publish would give them."""
    from mldeploy import artifacts

    other = tmp / "bundle-b"
    shutil.copytree(bundle, other)
    (other / "signature.json").write_text((other / "signature.json").read_text() + "\n")
    found = []
    for folder in (bundle, other):
        if publish:
            done = artifacts.publish(folder, storage_uri, name)
            found.append(Model(done.uri, done.sha256))
        else:
            sha = artifacts.address(artifacts.listing(folder))
            found.append(Model(artifacts.join(storage_uri, name, sha), sha))
    assert found[0].sha256 != found[1].sha256
    return found[0], found[1]


def target_of(folder: Path) -> Target:
    from mldeploy.config import load_config
    from mldeploy.deploy import target_for

    cfg = load_config(str(folder / "mldeploy.yaml"))
    return target_for(cfg, cfg.deploy.endpoint)


def deploys_a_model_only_change(folder: Path, image: str, models: tuple[Model, Model],
                                served: Callable[[], dict[str, Model | None]],
                                smoke: dict | None = None, stage: str = "production", traffic: int = 0) -> None:
    """First deploy with models[0], then models[1] on the same image: a real change that the plan names
    and the target reads back; then the same again: nothing to change."""
    a, b = models
    target = target_of(folder)
    slot = "production" if stage == "production" else "canary"

    def deploy(model: Model):
        return target.plan(Desired(target.endpoint, image, stage, traffic, smoke or {}, model=model))

    status = target.apply(deploy(a))
    assert status.slots[slot].model == a and status.slots[slot].image == image
    assert served()[slot] == a

    plan = deploy(b)
    assert f"model: {a} -> {b}" in plan.text(), plan.text()
    status = target.apply(plan)
    assert status.changed and status.slots[slot].model == b and status.slots[slot].image == image
    assert served()[slot] == b
    assert status.to_dict()["slots"][slot]["model"]["sha256"] == b.sha256

    again = deploy(b)
    assert again.empty, again.text()
