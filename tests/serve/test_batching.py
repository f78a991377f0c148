"""Micro-batching under concurrency never mixes rows between requests.

48 clients send 2,000 requests at once, each with its own rows (1 to 3 of them, so merged batches
are sliced at uneven offsets); every answer must be the model's output for exactly its own rows.
/metrics must then show that requests were merged: model runs of more rows than any one request
holds, and exactly as many rows through the batcher as were sent. Run with the model inline on the
event loop and on its own thread.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time

import numpy as np
import pytest

from tests.helpers.models import expected_probs
from tests.helpers.server import Server, start_server

CLIENTS = 48
REQUESTS = 2_000
MAX_ROWS = 3  # per request: a model run of more rows than this merged several requests


@pytest.fixture(scope="module", params=["auto", "on"], ids=["inline", "thread"])
def batching_server(request, linear_bundle, tmp_path_factory):
    """Its own server, so /metrics counts only this test's traffic. The linear model is fast enough to
    run inline on the event loop ("auto"); "on" puts it on the model thread, where the batch grows
    while the model computes: two different paths through the batcher."""
    s = start_server(linear_bundle, tmp_path_factory.mktemp("batching"), workers=2,
                     env={"MLDEPLOY_INFER_THREAD": request.param, "MLDEPLOY_BATCHING": "on"})
    try:
        if request.param == "on":  # the worker logs "model ready" just after it starts answering ready
            deadline = time.monotonic() + 5
            while not (ready := [e for e in s.logs() if e.get("message") == "model ready"]) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ready and not any(e.get("inline") for e in ready), ready
        yield s
    finally:
        s.stop()


def batch_histogram(server: Server) -> dict[str, float]:
    """mldeploy_batch_size as {le: cumulative count, "sum": rows, "count": runs}, summed over workers."""
    text = server.call("GET", "/metrics").body.decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^mldeploy_batch_size_bucket\{[^}]*le="([^"]+)"\} (\S+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    for kind in ("sum", "count"):
        m = re.search(rf"^mldeploy_batch_size_{kind}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
        out[kind] = float(m.group(1)) if m else 0.0
    return out


def test_concurrent_requests_get_their_own_rows(batching_server):
    server = batching_server
    rng = np.random.default_rng(1234)
    sizes = rng.integers(1, MAX_ROWS + 1, size=REQUESTS)
    bodies = [rng.normal(scale=3.0, size=(int(n), 4)).astype(np.float32) for n in sizes]
    for i, rows in enumerate(bodies):  # no two requests alike, even by chance
        rows[:, 0] = i / 100
    total_rows = int(sizes.sum())
    before = batch_histogram(server)

    results: list[tuple[int, int, bytes] | None] = [None] * REQUESTS
    errors: list[str] = []
    barrier = threading.Barrier(CLIENTS)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        barrier.wait()  # all clients start together
        try:
            for i in range(k, REQUESTS, CLIENTS):
                body = json.dumps({"instances": bodies[i].tolist()})
                for attempt in range(2):
                    try:
                        conn.request("POST", "/predict", body=body, headers={"content-type": "application/json"})
                        r = conn.getresponse()
                        results[i] = (i, r.status, r.read())
                        break
                    except (http.client.HTTPException, OSError) as e:
                        conn.close()  # counted as a failure; reconnect and try once more
                        errors.append(f"request {i} attempt {attempt}: {type(e).__name__}: {e}")
                        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - start
    assert not any(t.is_alive() for t in threads), "clients still running after 120 s"
    assert not errors, f"{len(errors)} connection errors: {errors[:5]}"

    wrong = []
    for i, rows in enumerate(bodies):
        got = results[i]
        if got is None or got[1] != 200:
            wrong.append(f"request {i}: {got}")
            continue
        predictions = np.asarray(json.loads(got[2])["predictions"], dtype=np.float32)
        expected = expected_probs(rows)
        if predictions.shape != expected.shape or not np.allclose(predictions, expected, rtol=1e-5, atol=1e-6):
            wrong.append(f"request {i} rows {rows.tolist()}: got {predictions.tolist()}, "
                         f"expected {expected.tolist()}")
    assert not wrong, f"{len(wrong)} of {REQUESTS} answers are not their own rows':\n" + "\n".join(wrong[:10])

    # Each worker publishes its counters every second: wait until every row is accounted for.
    deadline = time.monotonic() + 10
    while True:
        after = batch_histogram(server)
        if after["sum"] - before["sum"] >= total_rows or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    rows_seen = after["sum"] - before["sum"]
    runs = after["count"] - before["count"]
    # Buckets are 1, 2, 4, 8, ... rows: a run above the "4" bucket merged at least two requests.
    merged = runs - (after["4"] - before.get("4", 0))
    single = after["1"] - before.get("1", 0)
    print(f"\nbatching: {REQUESTS} requests ({total_rows} rows) from {CLIENTS} clients in {elapsed:.2f} s "
          f"({REQUESTS / elapsed:.0f}/s); {runs:.0f} model runs, {single:.0f} of 1 row, "
          f"{merged:.0f} of more than 4 rows; histogram {after}")
    assert rows_seen == total_rows, f"the batcher ran {rows_seen} rows, the clients sent {total_rows}"
    assert runs < REQUESTS, f"{runs} model runs for {REQUESTS} requests: nothing was merged"
    assert merged > 0, (f"no model run had more than 4 rows under {CLIENTS} concurrent clients "
                        f"(requests carry at most {MAX_ROWS}): micro-batching never merged requests; {after}")
