"""The server's parts on their own: settings, bundle discovery, the batcher, metrics, rate limits."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from mldeploy.bundle import TensorSpec
from mldeploy.errors import UsageError
from mldeploy.serve.batching import Batcher
from mldeploy.serve.codec import BadRequest, array
from mldeploy.serve.metrics import Metrics
from mldeploy.serve.model import Model, ModelError
from mldeploy.serve.security import Auth, RateLimiter
from mldeploy.serve.settings import DEFAULT_MAX_BODY, find_bundle, from_env, locate_bundle
from tests.helpers.models import TABLE, expected_probs


# -- settings ------------------------------------------------------------------------------------
def test_defaults_and_platform_ports(linear_bundle):
    s = from_env({"MLDEPLOY_BUNDLE": str(linear_bundle)})
    assert (s.port, s.max_body_bytes, s.allow_nonfinite, s.api_keys) == (8080, DEFAULT_MAX_BODY, False, ())
    assert s.workers >= 1 and s.threads >= 1
    env = {"MLDEPLOY_BUNDLE": str(linear_bundle), "PORT": "9001"}
    assert from_env(env).port == 9001
    assert from_env({**env, "SAGEMAKER_BIND_TO_PORT": "9002"}).port == 9002
    assert from_env({**env, "SAGEMAKER_BIND_TO_PORT": "9002", "AIP_HTTP_PORT": "9003"}).port == 9003
    assert from_env(env, port=9004).port == 9004  # the flag wins


@pytest.mark.parametrize("name, value, message", [
    ("MLDEPLOY_WORKERS", "two", "MLDEPLOY_WORKERS='two' is not a whole number"),
    ("MLDEPLOY_MAX_BODY_BYTES", "10", "out of range"),
    ("MLDEPLOY_NONFINITE", "sometimes", "must be reject or allow"),
    ("MLDEPLOY_RATE_LIMIT", "fast", "is not a rate"),
    ("MLDEPLOY_API_KEYS", "short", "shorter than 16 characters"),
    ("AIP_PREDICT_ROUTE", "no-slash", "is not a URL path"),
    ("MLDEPLOY_ACCESS_LOG", "maybe", "must be true or false"),
    ("PORT", "70000", "out of range"),
])
def test_bad_settings_name_the_variable(linear_bundle, name, value, message):
    with pytest.raises(UsageError, match=None) as e:
        from_env({"MLDEPLOY_BUNDLE": str(linear_bundle), name: value})
    assert message in e.value.describe()


def test_rates_per_second_and_minute(linear_bundle):
    env = {"MLDEPLOY_BUNDLE": str(linear_bundle)}
    assert from_env({**env, "MLDEPLOY_RATE_LIMIT": "600/min"}).rate_per_second == 10
    s = from_env({**env, "MLDEPLOY_RATE_LIMIT": "5/s"})
    assert (s.rate_per_second, s.rate_burst) == (5, 5)


def test_bundle_discovery(linear_bundle, tmp_path):
    azure = tmp_path / "azure" / "1"
    shutil.copytree(linear_bundle, azure / "model-folder")
    assert locate_bundle(None, {"AZUREML_MODEL_DIR": str(azure)}) == azure / "model-folder"
    vertex = tmp_path / "vertex"
    shutil.copytree(linear_bundle, vertex)
    assert locate_bundle(None, {"AIP_STORAGE_URI": str(vertex)}) == vertex
    with pytest.raises(UsageError, match="no bundle found"):
        locate_bundle(None, {"AIP_STORAGE_URI": "gs://bucket/model"})  # remote: never fetched
    with pytest.raises(UsageError, match="is not a bundle"):
        locate_bundle(str(tmp_path), {})
    assert find_bundle(tmp_path / "azure", depth=1) is None
    assert find_bundle(tmp_path / "azure", depth=2) == azure / "model-folder"


# -- the batcher ---------------------------------------------------------------------------------
class Observed:
    def __init__(self):
        self.batches: list[int] = []

    def observe_batch(self, rows, run_seconds, queued):
        self.batches.append(rows)


async def _concurrently(batcher: Batcher, requests: list[dict]) -> list:
    """Requests that arrive together, as the App hands them over: counted while being decoded."""
    batcher.arriving += len(requests)

    async def one(feeds):
        batcher.arriving -= 1  # decoded
        return await batcher.run(feeds, len(next(iter(feeds.values()))))

    return await asyncio.gather(*[one(f) for f in requests], return_exceptions=True)


@pytest.mark.parametrize("infer_thread", ["off", "on"])
def test_concurrent_requests_share_runs_and_get_their_own_rows(linear_bundle, infer_thread):
    model = Model.load(linear_bundle)
    seen = Observed()
    batcher = Batcher(model, max_batch=4, wait_ms=0, infer_thread=infer_thread, observer=seen, batching="on")
    rows = [np.random.default_rng(i).normal(size=(1 + i % 2, 4)).astype(np.float32) for i in range(6)]
    results = asyncio.run(_concurrently(batcher, [{"x": r} for r in rows]))
    batcher.close()
    for r, (probs,) in zip(rows, results):
        np.testing.assert_allclose(probs, expected_probs(r), rtol=1e-5)
    assert sum(seen.batches) == sum(len(r) for r in rows)
    assert max(seen.batches) > 1 and max(seen.batches) <= 4  # merged, never beyond max_batch


def test_a_bad_row_fails_only_its_own_request(two_io_bundle):
    model = Model.load(two_io_bundle)
    batcher = Batcher(model, max_batch=64, wait_ms=0, infer_thread="off", observer=Observed(), batching="on")
    x = np.zeros((1, 4), np.float32)
    ks = [[[1]], [[99]], [[2]]]
    results = asyncio.run(_concurrently(batcher, [{"x": x, "k": np.asarray(k, np.int64)} for k in ks]))
    assert isinstance(results[1], ModelError)
    np.testing.assert_allclose(results[0][1], TABLE[[[1]]])
    np.testing.assert_allclose(results[2][1], TABLE[[[2]]])


def test_a_lone_request_runs_at_once(linear_bundle):
    seen = Observed()
    batcher = Batcher(Model.load(linear_bundle), max_batch=64, wait_ms=0, infer_thread="off", observer=seen)

    asyncio.run(batcher.run({"x": np.zeros((1, 4), np.float32)}, 1))
    assert seen.batches == [1] and not batcher.queue


def test_wait_collects_company_up_to_max_batch(linear_bundle):
    model = Model.load(linear_bundle)
    seen = Observed()
    batcher = Batcher(model, max_batch=64, wait_ms=50, infer_thread="off", observer=seen)

    async def staggered():
        first = asyncio.ensure_future(batcher.run({"x": np.zeros((1, 4), np.float32)}, 1))
        await asyncio.sleep(0.01)  # arrives while the first waits for company
        second = asyncio.ensure_future(batcher.run({"x": np.ones((1, 4), np.float32)}, 1))
        return await asyncio.gather(first, second)

    asyncio.run(staggered())
    assert seen.batches == [2]


# -- metrics -------------------------------------------------------------------------------------
def test_metrics_sum_across_workers(tmp_path):
    a, b = Metrics("m", tmp_path), Metrics("m", tmp_path)
    a.request("/predict", 200, 0.002)
    a.observe_batch(3, 0.001, [0.0, 0.0001, 0.0002])
    b.request("/predict", 200, 0.004)
    b.request("/predict", 400, 0.0001)
    b.snapshot()
    (tmp_path / "worker-1.json").write_bytes(__import__("orjson").dumps(b.snapshot()))  # b, published
    text = a.exposition().decode()
    assert 'mldeploy_requests_total{route="/predict",code="200"} 2' in text
    assert 'mldeploy_requests_total{route="/predict",code="400"} 1' in text
    assert 'request_predict_seconds_count{model_name="m"} 3' in text
    assert 'mldeploy_batch_size_bucket{model_name="m",le="4"} 1' in text
    buckets = [int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('mldeploy_request_duration_seconds_bucket{route="/predict"')]
    assert buckets == sorted(buckets) and buckets[-1] == 3  # cumulative, +Inf == count


# -- auth and rate limits ------------------------------------------------------------------------
def test_auth_accepts_either_header_and_nothing_else():
    auth = Auth(("k" * 20, "z" * 20))
    assert auth.identify("Bearer " + "z" * 20, None) == 1
    assert auth.identify(None, "k" * 20) == 0
    assert auth.identify("Bearer " + "k" * 19, None) is None
    assert auth.identify("Basic " + "k" * 20, None) is None
    assert auth.identify(None, None) is None


def test_token_bucket(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("mldeploy.serve.security.time.monotonic", lambda: now[0])
    limiter = RateLimiter(per_second=2, burst=2)
    assert [limiter.retry_after("a") for _ in range(3)] == [0, 0, 1]
    assert limiter.retry_after("b") == 0  # every client has its own bucket
    now[0] += 0.5  # one token back
    assert limiter.retry_after("a") == 0 and limiter.retry_after("a") == 1



def test_tiny_models_are_not_merged_by_default(linear_bundle):
    model = Model.load(linear_bundle)
    assert model.single_row_seconds < 0.0001  # a 4x3 matrix: far below what merging saves
    seen = Observed()
    batcher = Batcher(model, max_batch=64, wait_ms=0, infer_thread="off", observer=seen)
    asyncio.run(_concurrently(batcher, [{"x": np.zeros((1, 4), np.float32)} for _ in range(5)]))
    assert seen.batches == [1, 1, 1, 1, 1]


# -- float inputs: the fast path (one sum of squares) and the checked one agree ----------------------
F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("row, allow_nonfinite, refused", [
    ([1e-45, -2.5, 1e30, 7.0], False, None),
    ([F32_MAX, -F32_MAX, F32_MAX, 1.0], False, None),  # each fits; the squares' sum is past the fast path's limit
    ([F32_MAX * 1.01, 0.0, 0.0, 0.0], False, "outside the float32 range"),
    ([float("nan"), 0.0, 0.0, 0.0], False, "NaN or infinity"),
    ([float("-inf"), 0.0, 0.0, 0.0], False, "NaN or infinity"),
    ([float("inf"), 0.0, 0.0, 0.0], True, None),
])
def test_float_inputs_are_checked_on_either_path(row, allow_nonfinite, refused):
    spec = TensorSpec("x", "float32", ("batch", 4))
    if refused:
        with pytest.raises(BadRequest, match=refused):
            array([row], spec, np.dtype(np.float32), allow_nonfinite, "x")
    else:
        got = array([row], spec, np.dtype(np.float32), allow_nonfinite, "x")
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, np.asarray([row], np.float32))
