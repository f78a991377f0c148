"""Plan lists only changes: an update whose old and new are equal is no change, and a plan left with
nothing says "up to date"."""

from __future__ import annotations

from mldeploy.deploy import Desired, Plan


def plan() -> Plan:
    return Plan("local", Desired("classifier", "r@sha256:" + "a" * 64, "canary", 20, {}))


def test_an_update_whose_old_and_new_are_equal_is_left_out():
    p = plan()
    p.add("update", "router mldeploy-classifier-router", "canary weight", 20, 20)
    p.add("update", "vertex endpoint e", "traffic split", {"production": 80, "canary": 20},
          {"production": 80, "canary": 20})
    assert p.empty and p.changes == []
    assert p.text() == "local classifier: up to date, nothing to change"
    assert "Up to date: nothing to change" in p.markdown()
    assert "-> 20" not in p.text()


def test_real_updates_creates_deletes_and_updates_without_old_or_new_stay():
    p = plan()
    p.add("update", "router mldeploy-classifier-router", "canary weight", 10, 20)
    p.add("update", "router mldeploy-classifier-router", "canary weight", 0, 0)   # no-op: left out
    p.add("update", "sagemaker endpoint e", "deployment", new="blue/green")      # no old, by design
    p.add("update", "cloud run service s", "iam roles/run.invoker")               # neither, by design
    p.add("update", "x", "from nothing", None, None)
    p.add("create", "container c", "image", new="img")
    p.add("delete", "container d")
    p.add("replace", "container p", "container", "unhealthy", "a new one")
    assert [(c.action, c.field) for c in p.changes] == [
        ("update", "canary weight"), ("update", "deployment"), ("update", "iam roles/run.invoker"),
        ("update", "from nothing"), ("create", "image"), ("delete", ""), ("replace", "container")]
    assert "canary weight: 10 -> 20" in p.text()
    assert "0 -> 0" not in p.text()


def test_a_target_that_deploys_by_digest_refuses_a_tag_or_a_short_digest():
    import pytest

    from mldeploy.errors import UsageError

    Desired("e", "r@sha256:" + "a" * 64, "canary", 20, {}).require_digest()
    for image in ("r:latest", "r@sha256:abc", "r@sha256:" + "a" * 64 + " ", "@sha256:" + "a" * 64):
        with pytest.raises(UsageError, match="is not REPOSITORY@sha256:DIGEST"):
            Desired("e", image, "canary", 20, {}).require_digest()
