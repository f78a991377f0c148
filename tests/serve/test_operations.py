"""Running the server: graceful shutdown, data capture, metrics, logs, readiness, the port.

Every test starts its own `mldeploy serve` process (the shared fixtures must not be mutated) and
talks to it over real HTTP.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.models import expected_probs
from tests.helpers.server import Server, free_port, start_server, wait_ready

ROW = [0.5, -1.0, 2.0, 0.25]


def rows(i: int, n: int = 1) -> list[list[float]]:
    """n distinct rows for request i, so every request's answer is its own."""
    return [[i * 0.01, (i % 7) - 3.0, j * 0.5, -i * 0.002] for j in range(n)]


def assert_probs(got, x) -> None:
    np.testing.assert_allclose(np.asarray(got, np.float32), expected_probs(np.asarray(x, np.float32)),
                               rtol=1e-5, atol=1e-6)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def run_serve(args: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MLDEPLOY_", "GITHUB_"))}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "mldeploy", "serve", "--host", "127.0.0.1", *args], env=full,
                          capture_output=True, text=True, timeout=timeout, check=False)


def wait_all_workers(s: Server, workers: int, timeout: float = 20) -> None:
    """Until every worker has answered ready (the x-request-id prefix is the worker's pid in hex).

    The server reports ready as soon as one worker is (see test_ready_means_every_worker_can_serve);
    tests that count or time every request wait for all of them."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only {len(seen)} of {workers} workers ready:\n{s.log.read_text()}"
        reply = s.call("GET", "/v2/health/ready", timeout=5)
        if reply.status == 200:
            seen.add(reply.headers["x-request-id"].split("-")[0])
        else:
            time.sleep(0.01)


# -- (a) SIGTERM drains in-flight requests ----------------------------------------------------------
@pytest.mark.parametrize("workers,infer_thread", [(1, "off"), (2, "on")])
def test_sigterm_drains_in_flight_requests(linear_bundle, tmp_path, workers, infer_thread):
    # The batcher holds a lone request for MLDEPLOY_BATCH_WAIT_MS (1000 ms is the most it allows)
    # waiting for company, so these requests are certainly in flight when SIGTERM arrives.
    s = start_server(linear_bundle, tmp_path, workers=workers,
                     env={"MLDEPLOY_BATCH_WAIT_MS": "1000", "MLDEPLOY_INFER_THREAD": infer_thread})
    wait_all_workers(s, workers)
    results: dict[int, object] = {}

    def predict(i: int) -> None:
        try:
            results[i] = s.call("POST", "/predict", {"instances": rows(i, 2)}, timeout=15)
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=predict, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert not results, "the requests finished before SIGTERM: the test proves nothing"
    sent = time.monotonic()
    s.process.send_signal(signal.SIGTERM)
    # new connections are refused soon after SIGTERM, while the old ones are still being served
    deadline = sent + 0.6
    while not refused(s.port):
        assert time.monotonic() < deadline, "still accepting connections 0.6 s after SIGTERM"
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=15)
    code = s.process.wait(timeout=10)
    took = time.monotonic() - sent
    for i in range(4):
        reply = results.get(i)
        assert not isinstance(reply, Exception) and reply is not None, f"request {i}: {reply!r}"
        assert reply.status == 200, (i, reply)
        assert_probs(reply.json()["predictions"], rows(i, 2))
    assert code == 0, s.log.read_text()
    assert took < 5, f"exit took {took:.1f} s after SIGTERM"
    assert refused(s.port)
    stopped = [line for line in s.logs() if line["message"] == "worker stopped"]
    assert len(stopped) == workers


def test_sigterm_when_idle_exits_at_once(linear_bundle, tmp_path):
    s = start_server(linear_bundle, tmp_path, workers=2)
    wait_all_workers(s, 2)
    assert s.call("POST", "/predict", {"instances": [ROW]}).status == 200
    start = time.monotonic()
    assert s.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - start < 3
    assert refused(s.port)


def test_sigterm_soon_after_start_stops_promptly(linear_bundle, tmp_path):
    """A pod can be stopped right after it starts (a rolling update, a scale-in). Workers that are
    still starting when SIGTERM comes must stop as promptly as the others, not sit out the whole
    drain time and get killed."""
    for trial in range(4):  # a race: each trial loses it most of the time, not always
        s = start_server(linear_bundle, tmp_path, workers=2, env={"MLDEPLOY_DRAIN_SECONDS": "10"}, ready=False)
        wait_ready(s, "/")  # the first worker is up; the others are starting
        sent = time.monotonic()
        s.process.send_signal(signal.SIGTERM)
        try:
            code = s.process.wait(timeout=60)
        finally:
            if s.process.poll() is None:
                s.process.kill()
        took = time.monotonic() - sent
        killed = [x["message"] for x in s.logs() if "refused to gracefully stop" in x["message"]]
        assert took < 5 and not killed, (f"trial {trial}: exit took {took:.1f} s after SIGTERM; {killed}\n"
                                          + s.log.read_text())
        assert code == 0


@pytest.mark.parametrize("value", ["2.5", "soon"])
def test_bad_drain_seconds_refuses_to_start(linear_bundle, value):
    result = run_serve(["--bundle", str(linear_bundle), "--port", str(free_port())],
                       {"MLDEPLOY_DRAIN_SECONDS": value}, timeout=30)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MLDEPLOY_DRAIN_SECONDS" in lines[0], result.stderr


# -- (b) data capture ----------------------------------------------------------------------------
def capture_records(folder: Path) -> dict[str, list[dict]]:
    """Every capture file's records, by file name."""
    out = {}
    for file in sorted(folder.glob("capture-*.jsonl")):
        try:
            out[file.name] = [json.loads(line) for line in file.read_text().splitlines()]
        except FileNotFoundError:  # rotated away while listing
            continue
    return out


def poll(check, timeout: float = 3.0, every: float = 0.05):
    """check() until it returns something truthy (returned) or the timeout passes (the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def all_records(folder: Path) -> list[dict]:
    return [r for records in capture_records(folder).values() for r in records]


def test_capture_records_requests_and_responses(linear_bundle, tmp_path):
    folder = tmp_path / "capture"
    s = start_server(linear_bundle, tmp_path, workers=2,
                     env={"MLDEPLOY_CAPTURE_DIR": str(folder), "MLDEPLOY_CAPTURE_SAMPLE_RATE": "1"})
    try:
        wait_all_workers(s, 2)
        version = s.call("GET", "/v2/models/model").json()["versions"][0]
        sent = {}
        for i in range(12):
            x = rows(i, 1 + i % 3)
            headers = {"X-Request-Id": f"client-{i}"} if i % 2 else {}
            reply = s.call("POST", "/predict", {"instances": x}, headers)
            assert reply.status == 200
            sent[reply.headers["x-request-id"]] = (x, reply.json()["predictions"])
        # a refused request is not captured
        assert s.call("POST", "/predict", {"instances": [[1.0]]}).status == 400
        records = poll(lambda: (r := all_records(folder)) and len(r) >= len(sent) and r)
        assert sorted(r["request_id"] for r in records) == sorted(sent), records
        for record in records:
            x, predictions = sent[record["request_id"]]
            assert record["model_version"] == version
            assert set(record["inputs"]) == {"x"} and set(record["outputs"]) == {"probs"}
            np.testing.assert_allclose(record["inputs"]["x"], np.asarray(x, np.float32), rtol=1e-7)
            np.testing.assert_allclose(record["outputs"]["probs"], predictions, rtol=1e-6)
            assert_probs(record["outputs"]["probs"], x)
            assert record["latency_ms"] >= 0 and re.match(r"\d{4}-\d\d-\d\dT", record["time"])
        assert {f"client-{i}" for i in range(1, 12, 2)} <= {r["request_id"] for r in records}
    finally:
        assert s.stop() == 0


def test_capture_of_merged_batches_gives_each_request_its_own_rows(linear_bundle, tmp_path):
    folder = tmp_path / "capture"
    s = start_server(linear_bundle, tmp_path, workers=1,
                     env={"MLDEPLOY_CAPTURE_DIR": str(folder), "MLDEPLOY_BATCH_WAIT_MS": "300"})
    try:
        replies = {}

        def predict(i):
            replies[i] = s.call("POST", "/predict", {"instances": rows(i, 1 + i % 3)}, {"X-Request-Id": f"r{i}"})

        threads = [threading.Thread(target=predict, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        records = poll(lambda: (r := all_records(folder)) and len(r) >= 8 and r)
        assert len(records) == 8
        for record in records:
            i = int(record["request_id"][1:])
            assert replies[i].status == 200
            np.testing.assert_allclose(record["inputs"]["x"], np.asarray(rows(i, 1 + i % 3), np.float32))
            np.testing.assert_allclose(record["outputs"]["probs"], replies[i].json()["predictions"], rtol=1e-6)
            assert_probs(record["outputs"]["probs"], rows(i, 1 + i % 3))
        # they really were merged (otherwise this test proves nothing about slicing)
        metrics = parse_exposition(s.call("GET", "/metrics").body.decode())
        assert sample(metrics, "mldeploy_batch_size_count", model_name="model") < 8
    finally:
        s.stop()


def test_capture_rotation_keeps_the_newest_records(linear_bundle, tmp_path):
    folder = tmp_path / "capture"
    s = start_server(linear_bundle, tmp_path, workers=2,
                     env={"MLDEPLOY_CAPTURE_DIR": str(folder), "MLDEPLOY_CAPTURE_MAX_BYTES": "4096",
                          "MLDEPLOY_CAPTURE_FILES": "3"})
    try:
        wait_all_workers(s, 2)
        order = []
        for i in range(240):  # ~250 bytes a record: each worker fills many 4 KiB files
            reply = s.call("POST", "/predict", {"instances": rows(i)}, {"X-Request-Id": f"req-{i:04d}"})
            assert reply.status == 200
            order.append(f"req-{i:04d}")
        last = order[-1]
        assert poll(lambda: last in {r["request_id"] for r in all_records(folder)})
        time.sleep(0.3)  # let the other worker's writer finish too
        files = capture_records(folder)
        by_worker = defaultdict(dict)
        for name, records in files.items():
            pid = re.fullmatch(r"capture-(\d+)(?:\.(\d+))?\.jsonl", name)
            assert pid, name
            by_worker[pid[1]][int(pid[2] or 0)] = records
        assert 1 <= len(by_worker) <= 2
        kept = 0
        for pid, generations in by_worker.items():
            assert len(generations) <= 3, sorted(files)
            assert set(generations) <= {0, 1, 2}
            # oldest generation first, the live file last: ids in the order they were sent
            ids = [r["request_id"] for g in sorted(generations, reverse=True) for r in generations[g]]
            assert ids == sorted(ids), ids
            for g in (1, 2):
                if g in generations:
                    size = (folder / f"capture-{pid}.{g}.jsonl").stat().st_size
                    assert 4096 <= size < 4096 + 1024, (g, size)
            kept += len(ids)
        # rotation dropped the oldest: the first request is gone, the newest are all there
        captured = [r["request_id"] for r in all_records(folder)]
        assert len(captured) == len(set(captured)) == kept
        assert "req-0000" not in captured and last in captured
        assert kept < 240
        tail = order[-10:]
        assert set(tail) <= set(captured)
    finally:
        assert s.stop() == 0


def test_capture_sample_rate(linear_bundle, tmp_path):
    folder = tmp_path / "capture"
    s = start_server(linear_bundle, tmp_path, workers=2,
                     env={"MLDEPLOY_CAPTURE_DIR": str(folder), "MLDEPLOY_CAPTURE_SAMPLE_RATE": "0.5"})
    try:
        wait_all_workers(s, 2)
        n = 400
        ids = set()
        for i in range(n):
            reply = s.call("POST", "/predict", {"instances": rows(i)})
            assert reply.status == 200
            ids.add(reply.headers["x-request-id"])
        time.sleep(1.0)  # the writers are asynchronous
        records = poll(lambda: all_records(folder), timeout=2)
        captured = [r["request_id"] for r in records]
        assert len(captured) == len(set(captured)) and set(captured) <= ids
        # Binomial(400, 0.5): mean 200, sd 10; 150..250 is five sd either way
        assert 150 <= len(captured) <= 250, len(captured)
    finally:
        s.stop()


def test_capture_sample_rate_zero_writes_nothing(linear_bundle, tmp_path):
    folder = tmp_path / "capture"
    s = start_server(linear_bundle, tmp_path, env={"MLDEPLOY_CAPTURE_DIR": str(folder),
                                                   "MLDEPLOY_CAPTURE_SAMPLE_RATE": "0"})
    try:
        for i in range(20):
            assert s.call("POST", "/predict", {"instances": rows(i)}).status == 200
        time.sleep(0.5)
        assert not folder.exists() or all_records(folder) == []
    finally:
        s.stop()


# -- (c) metrics ------------------------------------------------------------------------------------
SAMPLE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format 0.0.4 -> {sample name: [(labels, value)]}; raises on anything malformed."""
    samples: dict[str, list] = defaultdict(list)
    types: dict[str, str] = {}
    assert text.endswith("\n")
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            parts = line.split(None, 3)
            assert parts[1] in ("HELP", "TYPE"), line
            if parts[1] == "TYPE":
                assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), line
                assert parts[2] not in types, f"second TYPE for {parts[2]}"
                types[parts[2]] = parts[3]
            continue
        assert line, f"line {number} is empty"
        m = SAMPLE.fullmatch(line)
        assert m, f"line {number} is not `name{{labels}} value`: {line!r}"
        name, label_text, value = m.groups()
        labels = {}
        rest = label_text or ""
        while rest:
            lm = LABEL.match(rest)
            assert lm, f"line {number}: bad labels {label_text!r}"
            assert lm[1] not in labels, f"line {number}: label {lm[1]} twice"
            labels[lm[1]] = lm[2].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            rest = rest[lm.end():]
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"line {number}: {name} has no # TYPE"
        samples[name].append((labels, float(value)))
    # histograms: buckets cumulative per label set, ending in +Inf == _count
    for family, kind in types.items():
        if kind != "histogram":
            continue
        series = defaultdict(list)
        for labels, value in samples.get(f"{family}_bucket", []):
            rest = {k: v for k, v in labels.items() if k != "le"}
            series[tuple(sorted(rest.items()))].append((labels["le"], value))
        counts = {tuple(sorted(lb.items())): v for lb, v in samples.get(f"{family}_count", [])}
        sums = {tuple(sorted(lb.items())) for lb, _ in samples.get(f"{family}_sum", [])}
        assert set(series) == set(counts) == sums, family
        for key, buckets in series.items():
            bounds = [math.inf if le == "+Inf" else float(le) for le, _ in buckets]
            assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), (family, bounds)
            assert buckets[-1][0] == "+Inf", (family, buckets)
            values = [v for _, v in buckets]
            assert values == sorted(values), f"{family}{dict(key)} buckets are not cumulative: {values}"
            assert values[-1] == counts[key], (family, key, values[-1], counts[key])
    return dict(samples)


def sample(metrics: dict, name: str, **labels: str) -> float:
    """The value of the one sample with exactly these labels (0 when absent: counters start at 0)."""
    found = [v for lb, v in metrics.get(name, []) if lb == labels]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def test_metrics_count_traffic_across_workers(linear_bundle, tmp_path):
    s = start_server(linear_bundle, tmp_path, workers=2)
    try:
        wait_all_workers(s, 2)
        total_rows = 0
        for i in range(20):
            n = 1 + i % 3
            reply = s.call("POST", "/predict", {"instances": rows(i, n)})
            assert reply.status == 200
            total_rows += n
        bad = [s.call("POST", "/predict", {"instances": [[1.0, 2.0]]}),
               s.call("POST", "/predict", b"{not json", {"content-type": "application/json"}),
               s.call("POST", "/predict", {"instances": [["a", "b", "c", "d"]]})]
        assert [r.status for r in bad] == [400, 400, 400]
        assert s.call("GET", "/no/such/route").status == 404

        want = {("mldeploy_requests_total", (("code", "200"), ("route", "/predict"))): 20,
                ("mldeploy_requests_total", (("code", "400"), ("route", "/predict"))): 3,
                ("request_predict_seconds_count", (("model_name", "model"),)): 20,
                ("request_preprocess_seconds_count", (("model_name", "model"),)): 20,
                ("request_postprocess_seconds_count", (("model_name", "model"),)): 20,
                ("mldeploy_queue_seconds_count", (("model_name", "model"),)): 20,
                ("mldeploy_batch_size_sum", (("model_name", "model"),)): total_rows,
                ("mldeploy_request_failures_total", (("reason", "invalid"),)): 3,
                ("mldeploy_request_duration_seconds_count", (("route", "/predict"),)): 23,
                ("mldeploy_model_ready", (("model_name", "model"),)): 1}

        def look():
            metrics = parse_exposition(s.call("GET", "/metrics").body.decode())
            got = {key: sample(metrics, key[0], **dict(key[1])) for key in want}
            for key, value in got.items():  # never more than was sent, whichever worker answers
                assert value <= want[key], (key, value)
            return metrics, got

        deadline = time.monotonic() + 3.5
        seen_workers = set()
        while True:
            reply = s.call("GET", "/metrics")
            assert reply.status == 200
            assert reply.headers["content-type"].startswith("text/plain")
            seen_workers.add(reply.headers["x-request-id"].split("-")[0])
            metrics, got = look()
            if (got == want and len(seen_workers) == 2) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got == want
        # the 404 is counted, under a route label that cannot grow without bound
        routes = {lb["route"] for lb, _ in metrics["mldeploy_requests_total"]}
        assert "/no/such/route" not in routes
        assert sample(metrics, "mldeploy_requests_total", route="unknown", code="404") >= 1
        # whichever worker answers, the totals agree once both have published
        time.sleep(1.2)
        for _ in range(6):
            _, again = look()
            assert again == want
    finally:
        assert s.stop() == 0


def test_metrics_exposition_parses(server):
    # the shared server: read only
    metrics = parse_exposition(server.call("GET", "/metrics").body.decode())
    for family in ("request_predict_seconds_bucket", "request_predict_seconds_count", "mldeploy_batch_size_sum",
                   "mldeploy_model_ready"):  # families every worker has from its start
        assert family in metrics


def test_parser_rejects_broken_histograms():
    good = ('# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 3\nh_count 2\n')
    assert sample(parse_exposition(good), "h_count") == 2
    for broken in (good.replace('le="1"} 1', 'le="1"} 3'),        # not cumulative
                   good.replace("h_count 2", "h_count 5"),         # +Inf != count
                   good.replace('h_bucket{le="+Inf"} 2\n', ""),    # no +Inf
                   good.replace("# TYPE h histogram\n", ""),       # no TYPE
                   good.replace("h_sum 3", "h_sum three")):        # not a number
        with pytest.raises((AssertionError, ValueError)):
            parse_exposition(broken)


# -- (d) JSON logs ----------------------------------------------------------------------------------
def json_lines(s: Server) -> list[dict]:
    lines = s.log.read_text().splitlines()
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
        assert isinstance(parsed[-1], dict) and {"time", "level", "message"} <= set(parsed[-1]), line
    return parsed


def test_every_output_line_is_json(linear_bundle, tmp_path):
    s = start_server(linear_bundle, tmp_path, workers=2)
    wait_all_workers(s, 2)
    s.call("POST", "/predict", {"instances": [ROW]})
    s.call("POST", "/predict", {"instances": [[1.0]]})
    s.call("POST", "/predict", b"\xff\xfe garbage", {"content-type": "application/octet-stream"})
    s.call("GET", "/v2/models/other")
    s.call("PUT", "/predict", b"x")
    assert s.stop() == 0
    logs = json_lines(s)
    messages = [line["message"] for line in logs]
    assert messages[0] == "starting"
    assert messages.count("model ready") == 2 and messages.count("worker stopped") == 2


def test_bad_request_is_logged_with_its_request_id(linear_bundle, tmp_path):
    s = start_server(linear_bundle, tmp_path)
    try:
        reply = s.call("POST", "/predict", {"instances": [[1.0, 2.0, 3.0]]})
        assert reply.status == 400
        rid = reply.headers["x-request-id"]
        assert reply.json()["request_id"] == rid
        line = poll(lambda: next((x for x in json_lines(s) if x.get("request_id") == rid), None), timeout=2)
        assert line, s.log.read_text()
        assert line["level"] == "warning" and line["status"] == 400 and line["path"] == "/predict"
        assert "'x'" in line["message"]
    finally:
        s.stop()


def test_client_request_id_is_echoed_and_logged(linear_bundle, tmp_path):
    s = start_server(linear_bundle, tmp_path, env={"MLDEPLOY_ACCESS_LOG": "1"})
    try:
        good = s.call("POST", "/predict", {"instances": [ROW]}, {"X-Request-Id": "trace-4f2a.01"})
        assert good.status == 200 and good.headers["x-request-id"] == "trace-4f2a.01"
        bad = s.call("POST", "/predict", {"instances": [[1.0]]}, {"X-Request-Id": "trace-4f2a.02"})
        assert bad.status == 400 and bad.headers["x-request-id"] == "trace-4f2a.02"
        assert bad.json()["request_id"] == "trace-4f2a.02"
        # an id that could not be a header or log field safely is replaced, not echoed
        odd = s.call("POST", "/predict", {"instances": [ROW]}, {"X-Request-Id": "x" * 300})
        assert odd.status == 200 and odd.headers["x-request-id"] != "x" * 300
        spaced = s.call("POST", "/predict", {"instances": [ROW]}, {"X-Request-Id": 'a" b'})
        assert spaced.headers["x-request-id"] != 'a" b'

        def logged():
            by_id = {x.get("request_id"): x for x in json_lines(s)}
            return by_id if {"trace-4f2a.01", "trace-4f2a.02", odd.headers["x-request-id"]} <= set(by_id) else None

        by_id = poll(logged, timeout=2)
        assert by_id, s.log.read_text()
        assert by_id["trace-4f2a.01"]["status"] == 200 and by_id["trace-4f2a.01"]["message"] == "request"
        assert by_id["trace-4f2a.02"]["status"] == 400
        assert "x" * 300 not in s.log.read_text()
    finally:
        s.stop()


# -- (e) readiness with a broken model -------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_loading_bundle(tmp_path_factory) -> Path:
    """A 64 MB model (x [batch, 4096] @ W [4096, 4096]): its workers take a noticeable time to load."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.helpers.models import save_bundle

    w = np.random.default_rng(1).normal(size=(4096, 4096)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4096])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4096])],
                              [numpy_helper.from_array(w, "W")])
    return save_bundle(graph, tmp_path_factory.mktemp("big"))


def test_ready_means_every_worker_can_serve(slow_loading_bundle, tmp_path):
    """Once a readiness probe says 200 the platform sends traffic: no request may then get 503
    "the model is loading" from a worker that is still loading."""
    body = {"instances": [[0.0] * 4096]}
    for trial in range(5):  # a race: each trial loses it more often than not
        s = start_server(slow_loading_bundle, tmp_path, workers=3)  # returns at the first 200 from /v2/health/ready
        try:
            codes = []
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                codes.append(s.call("POST", "/predict", body).status)
            assert set(codes) == {200}, (f"trial {trial}: after the server reported ready: "
                                         f"{ {c: codes.count(c) for c in set(codes)} }")
        finally:
            s.stop()


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_corrupt_model_exits_and_never_reports_ready(linear_bundle, tmp_path, damage):
    bundle = tmp_path / "bundle"
    shutil.copytree(linear_bundle, bundle)
    model = bundle / "model.onnx"
    good = model.read_bytes()
    model.write_bytes({"garbage": bytes(range(256)) * 40, "empty": b"",
                       "truncated": good[: len(good) // 2]}[damage])
    s = start_server(bundle, tmp_path, workers=1, ready=False)
    start = time.monotonic()
    ready_seen = []
    while s.process.poll() is None and time.monotonic() - start < 15:
        try:
            ready_seen.append(s.call("GET", "/v2/health/ready", timeout=1).status)
        except OSError:
            pass
        time.sleep(0.02)
    code = s.process.wait(timeout=max(0.1, 15 - (time.monotonic() - start)))
    assert code != 0
    assert 200 not in ready_seen
    logs = json_lines(s)
    assert not [x for x in logs if x["message"] == "model ready"]
    errors = [x for x in logs if x["level"] == "error" and str(model) in x["message"]]
    assert len(errors) == 1, logs
    assert "convert the model again" in errors[0]["message"]


def test_corrupt_model_with_two_workers_exits(linear_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(linear_bundle, bundle)
    (bundle / "model.onnx").write_bytes(b"\x00not an onnx model" * 100)
    s = start_server(bundle, tmp_path, workers=2, ready=False)
    code = s.process.wait(timeout=15)
    assert code != 0
    errors = [x for x in json_lines(s) if x["level"] == "error" and "model.onnx" in x["message"]]
    assert 1 <= len(errors) <= 2


# -- (f) the port is taken ----------------------------------------------------------------------------
def test_port_in_use_by_a_server(linear_bundle, tmp_path):
    port = free_port()
    first = start_server(linear_bundle, tmp_path, args=("--port", str(port)))
    try:
        result = run_serve(["--bundle", str(linear_bundle), "--port", str(port)], timeout=30)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"port {port}" in lines[0] and "in use" in lines[0], result.stderr
        # the first server is unharmed
        assert first.call("POST", "/predict", {"instances": [ROW]}).status == 200
    finally:
        assert first.stop() == 0


def test_port_in_use_by_another_program(linear_bundle):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = run_serve(["--bundle", str(linear_bundle), "--port", str(port)], timeout=30)
    assert result.returncode == 2, result
    assert f"port {port}" in result.stderr and "in use" in result.stderr
