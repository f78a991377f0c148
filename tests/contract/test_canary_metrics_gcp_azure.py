"""`mldeploy canary analyze` on GCP and Azure: endpoints deployed by mldeploy against the fakes, then
the metrics read over HTTP, with the series seeded as the clouds publish them.

  Vertex AI / Cloud Run  Cloud Monitoring timeSeries.list (REST, google-auth's session, the
                         google-cloud-monitoring message types) answered by fakes/cloud_monitoring.py
                         on the same MLDEPLOY_GCP_API_ENDPOINT as the deploy fakes
  Azure ML               azure-mgmt-monitor MonitorManagementClient.metrics.list against the ARM fake
                         (Microsoft.Insights/metrics), with the real DefaultAzureCredential
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from tests.helpers import azure_ml as az
from tests.helpers import gcp_cloudrun as cr
from tests.helpers import gcp_vertex as vx
from tests.helpers.cli import deploy, one_line
from tests.helpers.fakes.cloud_monitoring import distribution
from tests.helpers.need import need

for module, extra in (("google.cloud.monitoring_v3", "gcp"), ("google.cloud.aiplatform_v1", "gcp"),
                      ("google.cloud.run_v2", "gcp"), ("azure.mgmt.monitor", "azure"), ("azure.ai.ml", "azure"),
                      ("azure.identity", "azure")):
    need(module, f"the {extra} extra installs it")


@pytest.fixture
def gcp(cloudrun):
    return cloudrun

WINDOW = "600"
VERTEX_BOUNDS = [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0]   # ms; bucket i holds values below bound i


def analyze(mldeploy, folder, *args):
    r = mldeploy("canary", "analyze", "--window", WINDOW, "--json", folder / "decision.json", *args, cwd=folder)
    found = json.loads((folder / "decision.json").read_text()) if (folder / "decision.json").exists() else None
    (folder / "decision.json").unlink(missing_ok=True)
    return r, found


def near(ms: float) -> list[int]:
    """Bucket counts (underflow first) of 100 latencies around `ms` over VERTEX_BOUNDS: most in the
    bucket ending at `ms`, a tail in the next one."""
    counts = [0] * (len(VERTEX_BOUNDS) + 1)
    i = VERTEX_BOUNDS.index(ms)
    counts[i], counts[i + 1] = 95, 5
    return counts


def seconds_between(query: dict, start: str, end: str) -> float:
    parse = dt.datetime.fromisoformat
    return (parse(query[end][-1].replace("Z", "+00:00")) - parse(query[start][-1].replace("Z", "+00:00"))).total_seconds()


# -- Vertex AI ---------------------------------------------------------------------------------------
def test_vertex_reads_each_deployed_model_and_decides(mldeploy, tmp_path, bundle, vertex):
    (tmp_path / "mldeploy.yaml").write_text(vx.CONFIG)
    for image, args in ((vx.A, ()), (vx.B, ("--stage", "canary", "--traffic", "20"))):
        r = deploy(mldeploy, (tmp_path, bundle), image, *args)
        assert r.code == 0, r.err
    ids = vx.ids(vertex)
    endpoint_id = vertex.endpoint(vx.ENDPOINT)["name"].rsplit("/", 1)[-1]
    where = {"resource_container": "123456", "location": vx.REGION, "endpoint_id": endpoint_id}
    monitoring = vertex.monitoring

    def seed(slot: str, ok: int, failed: int, ms: float) -> None:
        model = {"deployed_model_id": ids[slot]}
        for code, count in (("200", ok), ("500", failed), ("400", 7)):  # a client's 400 is no error
            monitoring.add("aiplatform.googleapis.com/prediction/online/response_count", {**model, "response_code": code},
                           "aiplatform.googleapis.com/Endpoint", where, count)
        for kind, at in (("total", ms), ("model", 5.0)):  # the filter keeps the total latency only
            monitoring.add("aiplatform.googleapis.com/prediction/online/prediction_latencies",
                           {**model, "latency_type": kind}, "aiplatform.googleapis.com/Endpoint", where,
                           distribution(near(at), bounds=VERTEX_BOUNDS))
        # another endpoint's series with the same deployed model id is not this endpoint's
        monitoring.add("aiplatform.googleapis.com/prediction/online/response_count", {**model, "response_code": "500"},
                       "aiplatform.googleapis.com/Endpoint", {**where, "endpoint_id": "999"}, 5000)

    seed("production", 900, 1, 40.0)
    seed("canary", 300, 0, 40.0)
    vertex.requests.clear()
    r, found = analyze(mldeploy, tmp_path)
    assert r.code == 0, r.err
    assert found["decision"] == "promote", found
    production, canary = found["slots"]["production"], found["slots"]["canary"]
    assert (production["requests"], production["errors"], canary["requests"], canary["errors"]) == (908, 1, 307, 0)
    assert 20 < canary["p50_ms"] < 40 and 40 < canary["p99_ms"] <= 80  # linear within the buckets
    assert f"Vertex AI endpoint classifier ({endpoint_id})" in found["source"]
    assert vertex.mutating() == []
    counts, latencies = monitoring.queries
    resource = (f'resource.type = "aiplatform.googleapis.com/Endpoint" AND resource.labels.location = "{vx.REGION}" '
                f'AND resource.labels.endpoint_id = "{endpoint_id}" AND metric.labels.deployed_model_id = '
                f'one_of("{ids["production"]}", "{ids["canary"]}")')
    assert counts["filter"] == [f'metric.type = "aiplatform.googleapis.com/prediction/online/response_count" AND {resource}']
    assert counts["aggregation.groupByFields"] == ["metric.label.deployed_model_id", "metric.label.response_code"]
    assert latencies["filter"] == [('metric.type = "aiplatform.googleapis.com/prediction/online/prediction_latencies" '
                                    f'AND {resource} AND metric.labels.latency_type = "total"')]
    assert latencies["aggregation.groupByFields"] == ["metric.label.deployed_model_id"]
    for query in (counts, latencies):
        assert (query["aggregation.alignmentPeriod"], query["aggregation.perSeriesAligner"],
                query["aggregation.crossSeriesReducer"]) == (["600s"], ["ALIGN_DELTA"], ["REDUCE_SUM"])
        assert seconds_between(query, "interval.startTime", "interval.endTime") == 600
    assert [p for _, p, _ in vertex.requests if p.startswith("/v3/")] == [f"/v3/projects/{vx.PROJECT}/timeSeries"] * 2

    monitoring.series.clear()
    seed("production", 900, 0, 40.0)
    seed("canary", 200, 10, 160.0)   # 5% errors, and about 4x slower
    r, found = analyze(mldeploy, tmp_path)
    assert r.code == 1 and found["decision"] == "rollback", found
    assert "canary error rate 4.61% (10 of 217) is above max_error_rate 1.00%" in r.out
    assert any(reason.startswith("canary latency p50 ") for reason in found["reasons"]), found["reasons"]

    monitoring.series.clear()
    seed("production", 900, 0, 40.0)
    seed("canary", 50, 0, 40.0)
    r, found = analyze(mldeploy, tmp_path)
    assert r.code == 0 and found["decision"] == "hold"
    assert "the canary answered 57 requests, fewer than min_requests 100" in found["reasons"][0]


def test_vertex_without_monitoring_viewer_is_one_line_exit_2(mldeploy, tmp_path, bundle, vertex):
    (tmp_path / "mldeploy.yaml").write_text(vx.CONFIG)
    for image, args in ((vx.A, ()), (vx.B, ("--stage", "canary"))):
        assert deploy(mldeploy, (tmp_path, bundle), image, *args).code == 0
    vertex.denied.add("monitoring.timeSeries.list")
    r, found = analyze(mldeploy, tmp_path)
    assert r.code == 2 and found is None
    assert "Google Cloud refused to read aiplatform.googleapis.com/prediction/online/response_count " \
           "(PERMISSION_DENIED)" in r.err
    assert "Traceback" not in r.err and one_line(r)


# -- Cloud Run -----------------------------------------------------------------------------------------
def test_cloudrun_reads_each_revision_and_decides(mldeploy, tmp_path, bundle, gcp):
    (tmp_path / "mldeploy.yaml").write_text(cr.CONFIG)
    for image, args in ((cr.A, ()), (cr.B, ("--stage", "canary", "--traffic", "20"))):
        r = deploy(mldeploy, (tmp_path, bundle), image, *args)
        assert r.code == 0, r.err
    revisions = {t.get("tag") or "production": t["revision"] for t in gcp.services[cr.SERVICE]["trafficStatuses"]}
    assert set(revisions) == {"production", "canary"}
    monitoring = gcp.monitoring
    exponential = (16, 2.0, 1.0)   # bounds 1, 2, 4, ... 65536 ms, as Cloud Run's distributions go

    def seed(slot: str, ok: int, failed: int, bucket: int) -> None:
        where = {"project_id": cr.PROJECT, "service_name": cr.ENDPOINT, "revision_name": revisions[slot],
                 "location": cr.REGION, "configuration_name": cr.ENDPOINT}
        for code_class, count in (("2xx", ok), ("5xx", failed), ("4xx", 3)):
            monitoring.add("run.googleapis.com/request_count", {"response_code_class": code_class,
                                                                 "response_code": code_class[0] + "00"},
                           "cloud_run_revision", where, count)
        counts = [0] * 18
        counts[bucket], counts[bucket + 1] = 90, 10
        monitoring.add("run.googleapis.com/request_latencies", {"response_code_class": "2xx"}, "cloud_run_revision",
                       where, distribution(counts, exponential=exponential))

    seed("production", 1000, 2, 5)    # 16-32 ms
    seed("canary", 250, 0, 5)
    r, found = analyze(mldeploy, tmp_path)
    assert r.code == 0 and found["decision"] == "promote", (r.err, found)
    assert (found["slots"]["canary"]["requests"], found["slots"]["production"]["errors"]) == (253, 2)
    assert 16 < found["slots"]["canary"]["p50_ms"] < 32 < found["slots"]["canary"]["p99_ms"] <= 64
    assert found["source"] == "Cloud Monitoring Cloud Run classifier"
    counts, latencies = monitoring.queries
    resource = (f'resource.type = "cloud_run_revision" AND resource.labels.location = "{cr.REGION}" AND '
                f'resource.labels.service_name = "{cr.ENDPOINT}" AND resource.labels.revision_name = '
                f'one_of("{revisions["production"]}", "{revisions["canary"]}")')
    assert counts["filter"] == [f'metric.type = "run.googleapis.com/request_count" AND {resource}']
    assert counts["aggregation.groupByFields"] == ["resource.label.revision_name", "metric.label.response_code_class"]
    assert latencies["filter"] == [f'metric.type = "run.googleapis.com/request_latencies" AND {resource}']
    assert latencies["aggregation.groupByFields"] == ["resource.label.revision_name"]
    assert seconds_between(latencies, "interval.startTime", "interval.endTime") == 600

    monitoring.series.clear()
    seed("production", 1000, 0, 5)
    seed("canary", 250, 0, 8)          # 128-256 ms: about 8x slower
    r, found = analyze(mldeploy, tmp_path)
    assert r.code == 1 and found["decision"] == "rollback"
    assert found["reasons"][0].startswith("canary latency p50 199.1 ms is 8.00x production's 24.9 ms")
    assert len(found["reasons"]) == 2 and found["reasons"][1].startswith("canary latency p99 486.4 ms")

    monitoring.series.clear()
    r, found = analyze(mldeploy, tmp_path)
    assert r.code == 0 and found["decision"] == "hold"
    assert "no requests reached either slot over the last 600 s" in found["reasons"][0]


# -- Azure ML ------------------------------------------------------------------------------------------
AZURE_CONFIG = f"""
deploy:
  cloud: azure
  target: azureml
  endpoint: {az.ENDPOINT}
  azure:
    subscription_id: "{az.SUB}"
    resource_group: {az.RG}
    workspace: {az.WS}
"""


def test_azureml_reads_each_deployment_and_decides(mldeploy, tmp_path, bundle, azure):
    (tmp_path / "mldeploy.yaml").write_text(AZURE_CONFIG)
    for image, args in ((az.A, ()), (az.B, ("--stage", "canary", "--traffic", "20"))):
        r = deploy(mldeploy, (tmp_path, bundle), image, *args)
        assert r.code == 0, r.err
    production, canary = az.name("production", az.A), az.name("canary", az.B)

    def seed(deployment: str, per_minute: int, model_errors: int, p50: float, p99: float) -> None:
        codes = (("200", "2xx", "200", per_minute), ("424", "4xx", "500", model_errors),  # a model's 500, passed on
                 ("424", "4xx", "400", 2), ("503", "5xx", "", 0))                        # a model's 400 is no error
        for status, status_class, model, count in codes:   # the last minute: hardly any successes
            azure.add_metric(az.ENDPOINT, "RequestsPerMinute", {"deployment": deployment, "statusCode": status,
                                                                "statusCodeClass": status_class, "modelStatusCode": model},
                             [count] * 9 + [1] if status == "200" else [count] * 10)
        azure.add_metric(az.ENDPOINT, "RequestLatency_P50", {"deployment": deployment}, [p50] * 10)
        # that thin minute was slow: weighted by its requests, it moves p99 little
        azure.add_metric(az.ENDPOINT, "RequestLatency_P99", {"deployment": deployment}, [p99] * 9 + [p99 * 5])

    seed(production, 90, 0, 20.0, 60.0)
    seed(canary, 30, 0, 21.0, 62.0)
    r, found = analyze(mldeploy, tmp_path)
    assert r.code == 0 and found["decision"] == "promote", (r.err, found)
    assert (found["slots"]["production"]["requests"], found["slots"]["canary"]["requests"]) == (831, 291)
    assert found["slots"]["canary"]["errors"] == 0 and found["slots"]["canary"]["p50_ms"] == pytest.approx(21.0)
    assert found["slots"]["canary"]["p99_ms"] == pytest.approx((62 * 32 * 9 + 310 * 3) / 291)  # not the mean, 86.8
    counts, latencies = azure.metric_queries
    which = f"deployment eq '{production}' or deployment eq '{canary}'"
    assert (counts["metricnames"], counts["aggregation"], counts["interval"]) == ("RequestsPerMinute", "Total", "PT1M")
    assert counts["$filter"] == f"{which} and statusCode eq '*' and modelStatusCode eq '*'"
    assert (latencies["metricnames"], latencies["aggregation"]) == ("RequestLatency_P50,RequestLatency_P99", "Average")
    assert latencies["$filter"] == which
    for query in (counts, latencies):
        start, end = (dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in query["timespan"].split("/"))
        assert (end - start).total_seconds() == 600 and int(query["top"]) >= 100
        assert query["metricnamespace"] == "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
    metric_paths = [p for m, _, p in azure.requests if p.endswith("/providers/Microsoft.Insights/metrics")]
    assert metric_paths == [(f"/subscriptions/{az.SUB}/resourceGroups/{az.RG}/providers/Microsoft.MachineLearningServices"
                             f"/workspaces/{az.WS}/onlineEndpoints/{az.ENDPOINT}/providers/Microsoft.Insights/metrics")] * 2

    azure.metric_points.clear()
    seed(production, 90, 0, 20.0, 60.0)
    seed(canary, 30, 3, 21.0, 62.0)   # the model answers 500 to 3 of 35 a minute: Azure ML says 424
    r, found = analyze(mldeploy, tmp_path)
    assert r.code == 1 and found["decision"] == "rollback"
    assert "canary error rate 9.35% (30 of 321) is above max_error_rate 1.00%" in r.out

    azure.metric_points.clear()
    seed(production, 90, 0, 20.0, 60.0)
    seed(canary, 5, 0, 21.0, 62.0)
    r, found = analyze(mldeploy, tmp_path)
    assert r.code == 0 and found["decision"] == "hold"
    assert "the canary answered 66 requests, fewer than min_requests 100" in found["reasons"][0]


def test_azureml_without_a_workspace_is_one_line_exit_2(mldeploy, tmp_path, azure):
    r, found = analyze(mldeploy, tmp_path, "--cloud", "azure", "--endpoint", "clf")
    assert r.code == 2 and found is None
    assert "no Azure ML workspace" in r.err and "Traceback" not in r.err


# -- no canary -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cloud", ["vertex", "cloudrun", "azureml"])
def test_no_endpoint_or_no_canary_is_one_line_exit_2(mldeploy, tmp_path, bundle, request, cloud):
    """A canary analysis of an endpoint that is not there (never deployed, or deleted since), then of one
    that serves production alone: the decision is not made up, the command says there is no canary."""
    image, config = {"vertex": (vx.A, vx.CONFIG), "cloudrun": (cr.A, cr.CONFIG),
                      "azureml": (az.A, AZURE_CONFIG)}[cloud]
    request.getfixturevalue({"vertex": "vertex", "cloudrun": "gcp", "azureml": "azure"}[cloud])
    (tmp_path / "mldeploy.yaml").write_text(config)
    for deployed in (False, True):
        if deployed:
            assert deploy(mldeploy, (tmp_path, bundle), image).code == 0
        r, found = analyze(mldeploy, tmp_path)
        assert r.code == 2 and found is None, r.err
        assert "has no canary to analyze" in r.err and one_line(r) and "Traceback" not in r.err, r.err
