"""`deploy.kubernetes.traffic: replicas` (a cluster with no Gateway API CRDs) against the fake API server:
one Service <endpoint> over the serving slots' pods, shares given by whole replicas, no HTTPRoute or HPA."""

from __future__ import annotations

import pytest
import yaml

from tests.helpers.cli import deploy, one_line
from tests.helpers.kubernetes import CONFIG, ENDPOINT, A, B, C
from tests.helpers.kubernetes import REPLICAS_CONFIG as REPLICAS
from tests.helpers.need import need
from tests.helpers.paths import ROOT

need("kubernetes", "the kubernetes extra installs the client")


@pytest.fixture
def project(tmp_path, bundle, kube):
    (tmp_path / "mldeploy.yaml").write_text(REPLICAS)
    kube.gateway_api = False   # no Gateway API CRDs: the reason for this mode
    return tmp_path, bundle


def serving(kube) -> dict[str, tuple[str, int]]:
    """slot -> (image, replicas) of the Deployments whose pods the Service <endpoint> selects."""
    selector = kube.get("services", ENDPOINT)["spec"]["selector"]
    out = {}
    for name in kube.names("deployments"):
        dep = kube.get("deployments", name)
        if all(dep["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items()):
            out[name.removeprefix(f"{ENDPOINT}-")] = (dep["spec"]["template"]["spec"]["containers"][0]["image"],
                                                      dep["spec"]["replicas"])
    return out


def test_canary_promote_rollback_by_replica_counts(mldeploy, project, kube):
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    assert serving(kube) == {"production": (A, 10)}
    assert kube.names("horizontalpodautoscalers") == [] and kube.smokes[-1][:2] == (f"{ENDPOINT}-production", A)

    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    assert "canary 10% asked, 1 of 10 replicas = 10%" in r.out, r.out
    assert serving(kube) == {"production": (A, 9), "canary": (B, 1)}
    assert (f"{ENDPOINT}-canary-next", B, "/predict") in kube.smokes   # answered before its pods took traffic
    r = mldeploy("status", cwd=project[0])
    assert r.code == 0 and "production 90%" in " ".join(r.out.split()) and "canary 10%" in " ".join(r.out.split())
    assert "traffic by ready replicas (coarse): production 9 of 10, canary 1 of 10" in r.out, r.out

    kube.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "up to date, nothing to change" in r.out and kube.mutating() == [], r.out

    r = deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "5", "--pr", "7")
    assert r.code == 0 and "canary-pr7 5% asked, 1 of 10 replicas = 10%" in r.out, r.out   # coarse: said so
    assert serving(kube) == {"production": (A, 8), "canary": (B, 1), "canary-pr7": (C, 1)}
    r = mldeploy("rollback", "--pr", "7", cwd=project[0])
    assert r.code == 0, r.err
    assert serving(kube) == {"production": (A, 9), "canary": (B, 1)}
    assert f"{ENDPOINT}-canary-pr7" not in kube.names("deployments")

    kube.get("deployments", f"{ENDPOINT}-canary")["status"]["readyReplicas"] = 0   # the share is what is ready
    r = mldeploy("status", cwd=project[0])
    assert "production 100%" in " ".join(r.out.split()) and "canary 0%" in " ".join(r.out.split()), r.out
    kube.get("deployments", f"{ENDPOINT}-canary")["status"]["readyReplicas"] = 1

    kube.never_available.add(C)   # a stuck canary rollout: production's count and the canary come back
    r = deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "20")
    assert r.code == 1 and one_line(r) and "ProgressDeadlineExceeded" in r.err, r.err
    assert serving(kube) == {"production": (A, 9), "canary": (B, 1)}
    assert f"{ENDPOINT}-canary-next" not in kube.names("deployments")
    kube.never_available.clear()

    r = mldeploy("promote", cwd=project[0])
    assert r.code == 0, r.err
    assert serving(kube) == {"production": (B, 10)} and kube.names("deployments") == [f"{ENDPOINT}-production"]
    assert deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "30").code == 0
    assert serving(kube) == {"production": (B, 7), "canary": (C, 3)}
    r = mldeploy("rollback", cwd=project[0])
    assert r.code == 0, r.err
    assert serving(kube) == {"production": (B, 10)}
    assert kube.names("httproutes") == []


def test_plan_changes_nothing_and_the_manifests_validate(mldeploy, project, kube, tmp_path):
    kubernetes_validate = need("kubernetes_validate", "the dev extra installs kubernetes-validate")
    assert deploy(mldeploy, project, A).code == 0
    kube.requests.clear()
    out = tmp_path / "manifests"
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10", "--plan", "--manifests", out)
    assert r.code == 0 and "1 of 10 replicas = 10%" in r.out and "production 90%" in r.out, r.out
    assert kube.requests and kube.mutating() == [] and serving(kube) == {"production": (A, 10)}
    docs = [yaml.safe_load(p.read_text()) for p in sorted(out.iterdir())]
    assert sorted(d["kind"] for d in docs) == ["Deployment"] * 2 + ["PodDisruptionBudget"] * 2 + ["Service"] * 3
    # (production's and the canary's objects, and the Service over both)
    for doc in docs:
        kubernetes_validate.validate(doc, "1.32.0", strict=True)
    assert {d["metadata"]["name"]: d["spec"]["replicas"] for d in docs if d["kind"] == "Deployment"} == {
        f"{ENDPOINT}-production": 9, f"{ENDPOINT}-canary": 1}


def test_no_gateway_api_names_the_fallback(mldeploy, project, kube):
    (project[0] / "mldeploy.yaml").write_text(CONFIG)   # traffic: gateway, on a cluster without the CRDs
    r = deploy(mldeploy, project, A)
    assert r.code == 2 and one_line(r), r.err
    assert "has no Gateway API" in r.err and "deploy.kubernetes.traffic: replicas" in r.err, r.err
    assert kube.mutating() == []


def test_switching_traffic_modes_keeps_production_serving_and_leaves_no_orphans(mldeploy, project, kube):
    """gateway -> replicas -> gateway on a live endpoint: at every request the kit makes, each front that exists
    (the HTTPRoute, the Service <endpoint>) reaches production's available pods; the HTTPRoute goes only once the
    Service answers, the Service only once the route is read back; the HPAs go (replicas) and come back
    (gateway) with production's count kept, never reset to 1; a failed switch is restored."""
    folder = project[0]
    gateway = CONFIG.replace("replicas: 2", "replicas: 10").replace("max_replicas: 5", "max_replicas: 12")
    kube.gateway_api = True   # (the cluster has the CRDs: the switch is the team's choice)
    (folder / "mldeploy.yaml").write_text(gateway)
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
    assert kube.names("horizontalpodautoscalers") == [f"{ENDPOINT}-canary", f"{ENDPOINT}-production"]

    def production_reached() -> bool:
        """Every front there reaches an available production pod; one front at least."""
        fronts = []
        if route := kube.get("httproutes", ENDPOINT):
            refs = [ref["name"] for rule in route["spec"]["rules"] if not rule["matches"][0].get("headers")
                    for ref in rule["backendRefs"] if ref["weight"]]
            dep = kube.get("deployments", f"{ENDPOINT}-production")
            fronts.append(f"{ENDPOINT}-production" in refs and kube.get("services", f"{ENDPOINT}-production")
                          is not None and bool(dep and dep.get("status", {}).get("availableReplicas")))
        if (svc := kube.get("services", ENDPOINT)) and "mldeploy.dev/serves" in svc["spec"]["selector"]:
            dep = kube.get("deployments", f"{ENDPOINT}-production")
            fronts.append(bool(dep and dep.get("status", {}).get("availableReplicas"))
                          and dep["spec"]["template"]["metadata"]["labels"].get("mldeploy.dev/serves") == "true")
        return bool(fronts) and all(fronts)

    seen: list[tuple[str, str, bool, int]] = []   # each mutating request: whether production was reached, its count

    def watch(method: str, path: str) -> None:
        if method in ("POST", "PATCH", "DELETE") and "/proxy/" not in path and "accessreviews" not in path:
            dep = kube.get("deployments", f"{ENDPOINT}-production")
            seen.append((method, path, production_reached(), dep["spec"].get("replicas", 0) if dep else 0))

    (folder / "mldeploy.yaml").write_text(REPLICAS)
    r = mldeploy("status", cwd=folder)   # before the switch: what serves is the route's
    assert r.code == 0 and "production 90%" in " ".join(r.out.split()), r.out
    assert "traffic by the HTTPRoute's weights; switching to traffic: replicas (the next deploy finishes it)" in r.out
    kube.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10", "--plan")
    assert r.code == 0 and kube.mutating() == [], r.out
    assert "delete HTTPRoute default/classifier (switch to traffic: replicas, once the Service classifier serves)" \
        in r.out and f"delete HorizontalPodAutoscaler default/{ENDPOINT}-production" in r.out, r.out
    assert f"create Service default/{ENDPOINT} weights" in r.out, r.out

    route = f"/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/{ENDPOINT}"

    def fail_after_the_route_went(method: str, path: str) -> None:   # the read-back fails: all comes back as it was
        if (method, path) == ("DELETE", route):
            kube.faults.rules = {"GET /apis/apps/v1/namespaces/default/deployments": ["500", 0, 1]}

    kube.watch = fail_after_the_route_went
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    kube.faults.rules, kube.watch = {}, None
    assert r.code == 1 and one_line(r) and "serves as before (production 90%, canary 10%)" in r.err, r.err
    assert kube.serving(ENDPOINT) == {"production": (A, 90), "canary": (B, 10)} and kube.get("services", ENDPOINT) is None
    assert kube.names("horizontalpodautoscalers") == [f"{ENDPOINT}-canary", f"{ENDPOINT}-production"]
    assert kube.get("deployments", f"{ENDPOINT}-production")["spec"]["replicas"] == 10   # the HPA's, kept

    kube.watch = watch
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    assert [s for s in seen if not s[2]] == [], seen
    deleted = next(i for i, s in enumerate(seen) if s[:2] == ("DELETE", route))
    assert any(s[:2] == ("POST", "/api/v1/namespaces/default/services") for s in seen[:deleted])   # the Service first
    assert (ENDPOINT, "/v2/health/ready") in [(svc, path) for svc, _, path in kube.smokes]   # it answered
    assert kube.names("httproutes") == [] and kube.names("horizontalpodautoscalers") == []
    assert serving(kube) == {"production": (A, 9), "canary": (B, 1)}
    r = mldeploy("status", cwd=folder)
    assert "traffic by ready replicas (coarse): production 9 of 10, canary 1 of 10" in r.out, r.out
    kube.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "up to date, nothing to change" in r.out and kube.mutating() == [], r.out

    (folder / "mldeploy.yaml").write_text(gateway)   # and back
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10", "--plan")
    assert "delete Service default/classifier (switch to traffic: gateway, once the HTTPRoute classifier serves)" \
        in r.out, r.out
    kube.route_refused = "NotAllowedByListeners"   # the Gateway will not take the route: the Service stays
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 1 and one_line(r) and "has not accepted the HTTPRoute default/classifier" in r.err, r.err
    assert "NotAllowedByListeners" in r.err and "the Service classifier stays" in r.err, r.err
    assert serving(kube) == {"production": (A, 9), "canary": (B, 1)} and kube.names("httproutes") == []
    assert kube.names("horizontalpodautoscalers") == []
    kube.route_refused = None
    seen.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    assert [s for s in seen if not s[2]] == [], seen
    assert min(s[3] for s in seen) == 9, seen   # production's 9 pods kept for its HPA, never reset to 1
    assert kube.serving(ENDPOINT) == {"production": (A, 90), "canary": (B, 10)}
    assert kube.get("services", ENDPOINT) is None
    assert kube.names("horizontalpodautoscalers") == [f"{ENDPOINT}-canary", f"{ENDPOINT}-production"]
    assert kube.get("deployments", f"{ENDPOINT}-production")["spec"]["replicas"] == 9
    r = mldeploy("status", cwd=folder)
    assert r.code == 0 and f"production  90%  healthy  9/9 ready  {A}" in r.out and "switching" not in r.out, r.out


def test_doctor_reviews_only_the_verbs_replicas_uses(mldeploy, project, kube):
    kube.denied |= {("create", "httproutes"), ("patch", "horizontalpodautoscalers")}   # verbs it never uses
    r = mldeploy("doctor", cwd=project[0])   # no Gateway API: no httproutes rule at all
    assert "every verb a deploy needs is allowed in default" in r.out and "httproutes" not in r.out, r.out
    assert "resources: [horizontalpodautoscalers], verbs: [get, delete]" in r.out, r.out
    assert sum(1 for m, p in kube.requests if p.endswith("selfsubjectaccessreviews")) == 18
    kube.gateway_api, kube.requests = True, []   # a route a switch from gateway leaves is read and deleted
    kube.denied.add(("delete", "httproutes"))
    r = mldeploy("doctor", cwd=project[0])
    assert "denied in default: delete httproutes (gateway.networking.k8s.io)" in r.out, r.out
    assert "resources: [httproutes], verbs: [get, delete]" in r.out, r.out
    assert sum(1 for m, p in kube.requests if p.endswith("selfsubjectaccessreviews")) == 20
    from mldeploy.deploy.kubernetes import role_yaml, rules

    assert role_yaml("ml", rules(True, False)) in (ROOT / "docs" / "targets" / "kubernetes.md").read_text()
