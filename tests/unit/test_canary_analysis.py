"""Canary analysis: the decision on synthetic figures, thresholds from the config, and the numbers
read from a real serving runtime's /metrics."""

from __future__ import annotations

import json
import urllib.request

import pytest

from mldeploy.config import CanaryAnalysisSection, load_config
from mldeploy.monitor.canary import (
    HOLD,
    PROMOTE,
    ROLLBACK,
    SlotStats,
    analyze,
    divergence,
    histogram_quantile,
    prediction_values,
)
from mldeploy.monitor.metrics import parse_prometheus, runtime_counts, window_stats

T = CanaryAnalysisSection()  # the defaults: min 100 requests, 1% errors, +0.5 points, latency x1.5, JS 0.1


def slot(name, requests, errors=0, p50=20.0, p99=80.0, predictions=None):
    return SlotStats(name, requests, errors, p50, p99, predictions)


def test_healthy_canary_is_promoted():
    a = analyze(slot("production", 5000, 10), slot("canary", 500, 1, p50=21, p99=90), T, 600)
    assert a.decision == PROMOTE, a.reasons
    assert "500 canary and 5000 production requests" in a.reasons[0]


def test_each_breach_is_named_with_its_numbers():
    a = analyze(slot("production", 5000, 5, p50=20, p99=80, predictions=["class 0"] * 90 + ["class 1"] * 10),
                slot("canary", 400, 12, p50=50, p99=400, predictions=["class 0"] * 40 + ["class 1"] * 60), T, 600)
    assert a.decision == ROLLBACK
    text = "\n".join(a.reasons)
    assert "canary error rate 3.00% (12 of 400) is above max_error_rate 1.00%" in text
    assert "2.90 points above production's 0.10%" in text
    assert "latency p50 50.0 ms is 2.50x production's 20.0 ms" in text
    assert "latency p99 400.0 ms is 5.00x production's 80.0 ms" in text
    assert "prediction divergence 0.4" in text and a.divergence > 0.4
    assert len(a.reasons) == 5


@pytest.mark.parametrize("canary", [slot("canary", 0), slot("canary", 99, 99)])
def test_too_few_canary_requests_hold_even_when_they_fail(canary):
    a = analyze(slot("production", 1000), canary, T, 600)
    assert a.decision == HOLD and f"answered {canary.requests} requests, fewer than min_requests 100" in a.reasons[0]


def test_an_empty_window_holds_and_the_report_still_renders():
    a = analyze(SlotStats("production"), SlotStats("canary"), T, 600)
    assert a.decision == HOLD and "no requests reached either slot over the last 600 s" in a.reasons[0]
    assert "| requests | 0 | 0 |" in a.markdown() and "decision: hold" in a.text()
    assert json.loads(a.to_json())["slots"]["canary"]["error_rate"] is None


def test_a_thin_production_holds_unless_the_canary_fails_on_its_own():
    assert analyze(slot("production", 10), slot("canary", 500), T, 600).decision == HOLD
    failing = analyze(slot("production", 10), slot("canary", 500, 50), T, 600)
    assert failing.decision == ROLLBACK and len(failing.reasons) == 1  # the absolute error rate only


def test_small_latency_differences_are_noise_not_a_regression():
    # 3x slower, but by 1 ms: under LATENCY_NOISE_MS, so it does not count
    a = analyze(slot("production", 1000, p50=0.3, p99=0.5), slot("canary", 1000, p50=0.9, p99=1.5), T, 60)
    assert a.decision == PROMOTE
    assert any("ratio 3.00 ignored" in n for n in a.notes)
    b = analyze(slot("production", 1000, p50=0.3, p99=2.0), slot("canary", 1000, p50=0.3, p99=9.0), T, 60)
    assert b.decision == ROLLBACK and "latency p99 9.0 ms is 4.50x" in b.reasons[0]


def test_no_metrics_source_holds_with_the_reason():
    a = analyze(SlotStats("production"), SlotStats("canary"), T, 600, unavailable="no metrics source for gcp vertex yet")
    assert a.decision == HOLD and a.reasons == ["no metrics source for gcp vertex yet"]


def test_thresholds_come_from_the_config(tmp_path):
    (tmp_path / "mldeploy.yaml").write_text("monitoring:\n  canary:\n    min_requests: 20\n    max_error_rate: 0.2\n"
                                            "    max_error_rate_increase: 0.2\n    max_latency_ratio: 10\n")
    loose = load_config(tmp_path / "mldeploy.yaml").monitoring.canary
    production, canary = slot("production", 200), slot("canary", 150, 15, p99=500)  # 10% errors, p99 x6
    assert analyze(production, canary, T, 600).decision == ROLLBACK
    assert analyze(production, canary, loose, 600).decision == PROMOTE
    assert analyze(slot("production", 100), slot("canary", 30), T, 600).decision == HOLD
    assert analyze(slot("production", 100), slot("canary", 30), loose, 600).decision == PROMOTE


def test_histogram_quantile_matches_prometheus():
    buckets = [(0.1, 10), (0.5, 60), (1.0, 100), (float("inf"), 100)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (50 - 10) / 50)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * 39 / 40)
    assert histogram_quantile(0.99, [(0.1, 1), (float("inf"), 100)]) == 0.1  # in +Inf: the largest finite bound
    assert histogram_quantile(0.5, [(0.1, 0), (float("inf"), 0)]) is None


def test_predictions_from_capture_records_and_their_divergence():
    records = [{"outputs": {"probs": [[0.1, 0.9], [0.8, 0.2]]}}, {"outputs": {"probs": [[0.3, 0.7]]}}]
    assert prediction_values(records) == ["class 1", "class 0", "class 1"]
    assert prediction_values([{"outputs": {"y": [1.5, 2.5]}}]) == [1.5, 2.5]
    same = [float(i) for i in range(1000)]
    assert divergence(same, same) == 0.0
    assert divergence(same, [v + 2000 for v in same]) == pytest.approx(1.0)  # disjoint
    assert divergence(["class 0"] * 50 + ["class 1"] * 50, ["class 0"] * 50 + ["class 1"] * 50) == 0.0


# -- a real serving runtime's /metrics -------------------------------------------------------------
@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    from tests.helpers.models import linear_graph, save_bundle
    from tests.helpers.server import start_server

    tmp = tmp_path_factory.mktemp("canary-runtime")
    server = start_server(save_bundle(linear_graph(), tmp / "bundle"), tmp, workers=1)
    yield server
    server.stop()


def scrape(server) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
        return parse_prometheus(r.read().decode())


def test_counts_and_quantiles_from_a_real_runtime(runtime):
    before = scrape(runtime)
    for _ in range(30):
        assert runtime.call("POST", "/predict", {"inputs": [[0.1, 0.2, 0.3, 0.4]]}).status == 200
    for _ in range(5):
        assert runtime.call("POST", "/invocations", {"inputs": [[0.1, 0.2]]}).status == 400  # wrong shape
    for _ in range(7):  # probes and scrapes are not predictions
        runtime.call("GET", "/ping")
        scrape(runtime)
    after = scrape(runtime)
    requests, _errors, buckets = runtime_counts(after)
    assert buckets[float("inf")] >= 35 and requests >= 35
    stats = window_stats("canary", before, after)
    assert (stats.requests, stats.errors) == (35, 0)  # a 400 is the client's, not a 5xx
    assert 0 < stats.p50_ms <= stats.p99_ms < 100  # a linear model answers in well under 100 ms
    since_start = window_stats("canary", None, after)
    assert since_start.requests == requests
    restarted = window_stats("canary", after, before)  # counters went down: the container restarted
    assert restarted.requests == int(runtime_counts(before)[0])


def test_prometheus_parser_reads_labels_with_escapes():
    text = ('# HELP x y\nmldeploy_requests_total{route="/a\\"b",code="503"} 4\n'
            'mldeploy_request_duration_seconds_bucket{route="/a\\"b",le="+Inf"} 4\nplain 1.5e3\n')
    samples = parse_prometheus(text)
    assert samples[("plain", ())] == 1500.0
    assert runtime_counts(samples) == (4.0, 4.0, {float("inf"): 4.0})


# -- the command -----------------------------------------------------------------------------------
def test_cli_says_when_nothing_answers_locally(mldeploy, tmp_path):
    from tests.helpers.server import free_port

    r = mldeploy("canary", "analyze", "--cloud", "local", "--endpoint", "clf", "--port", free_port(),
                 "--window", "0", cwd=tmp_path)
    assert r.code == 2 and "nothing answers on 127.0.0.1" in r.err


def test_cli_reads_a_local_runtime_since_start(mldeploy, tmp_path, runtime, monkeypatch):
    """A lone runtime answers /metrics whatever x-mldeploy-slot says, so both 'slots' read the same:
    the whole local path (scrape, window, decision, exit code, summary, outputs) without Docker."""
    summary, outputs = tmp_path / "summary.md", tmp_path / "out.txt"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    for _ in range(30):  # its own traffic: the module's runtime may have answered nothing before this test
        assert runtime.call("POST", "/predict", {"inputs": [[0.1, 0.2, 0.3, 0.4]]}).status == 200
    r = mldeploy("canary", "analyze", "--cloud", "local", "--endpoint", "clf", "--port", runtime.port,
                 "--window", "0", "--json", tmp_path / "d.json", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "Canary analysis" in summary.read_text() and "decision=hold" in outputs.read_text()
    found = json.loads((tmp_path / "d.json").read_text())
    assert found["slots"]["production"]["requests"] == found["slots"]["canary"]["requests"] >= 30
    assert found["decision"] == HOLD and "fewer than min_requests 100" in found["reasons"][0]
