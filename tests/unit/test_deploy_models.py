"""The target-side logic of image.model: storage that every target shares (mldeploy.deploy.base)."""

from __future__ import annotations

import pytest

from mldeploy.deploy import Desired, Plan
from mldeploy.deploy.base import (
    Model,
    Slot,
    Status,
    model_env,
    model_from_env,
    plan_model,
    slot_models,
    verify_models,
    without_model,
)
from mldeploy.errors import CheckFailed

A = Model("s3://acme/models/m/" + "a" * 64, "a" * 64)
B = Model("s3://acme/models/m/" + "b" * 64, "b" * 64)


def test_the_environment_names_the_model_and_is_read_back():
    env = {"MLDEPLOY_WORKERS": "2", **model_env(A)}
    assert model_from_env(env) == A and without_model(env) == {"MLDEPLOY_WORKERS": "2"}
    assert model_env(A, uri=False) == {"MLDEPLOY_MODEL_SHA256": A.sha256}   # a platform that mounts it
    assert model_from_env(model_env(A, uri=False), uri=A.uri) == A
    assert model_env(None) == {} and model_from_env({"MLDEPLOY_WORKERS": "2"}) is None


def test_a_model_change_is_a_plan_line_and_baked_to_baked_is_none():
    plan = Plan("t", Desired("e", "r@sha256:" + "0" * 64, "production", 0, {}, model=B))
    plan_model(plan, "slot production", None, None)
    plan_model(plan, "slot canary", A, A)
    assert plan.empty
    plan_model(plan, "slot production", A, B)
    assert plan.text().endswith(f"update slot production model: sha256:{'a' * 12} -> sha256:{'b' * 12}")


def test_the_deployed_slot_gets_the_model_and_the_others_keep_theirs():
    d = Desired("e", "r@sha256:" + "0" * 64, "canary", 10, {}, pr=7, model=B)
    assert slot_models(d, {"production": A, "canary": None}, ["production", "canary", "canary-pr7"]) == {
        "production": A, "canary": None, "canary-pr7": B}


def test_the_read_back_names_the_slot_and_both_models():
    verify_models({"production": A}, {"production": A})
    with pytest.raises(CheckFailed, match=f"production serves the model sha256:{'a' * 12} at s3://.*, not "
                                          "baked into its image"):
        verify_models({"production": A}, {"production": None})
    status = Status("e", slots={"production": Slot("r@sha256:x", 100, True, model=A)})
    assert status.to_dict()["slots"]["production"]["model"] == {"uri": A.uri, "sha256": A.sha256}
