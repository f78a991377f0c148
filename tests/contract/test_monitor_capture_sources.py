"""`mldeploy monitor drift` reading what the REAL serving runtime captured, from every source.

A real `mldeploy serve` process (one worker, capture on, files rotated every 4 KiB) answers requests
in every body form; drift then reads its capture-*.jsonl files from the folder, and copies of them
from S3 (moto), Cloud Storage (a fake, the real google-cloud-storage client) and Azure Blob storage
(a fake, the real azure-storage-blob client with the real DefaultAzureCredential against a TLS fake
of Entra ID). SageMaker data-capture records are built from the very bodies the server received
and answered.
"""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest

from mldeploy.monitor import baseline as base
from tests.helpers.identity import TENANT, Fake, azure_workload_identity
from tests.helpers.need import need
from tests.helpers.server import start_server

N_NORMAL, N_SHIFTED = 90, 90


def bodies(i: int, rng: np.random.Generator, shift: float) -> tuple[str, str | bytes, int]:
    """(content type, body, rows) of request i, cycling through the body forms the server accepts."""
    n = 1 + i % 3
    x = rng.normal(size=(n, 4)).round(4)
    x[:, 1] += shift
    form = i % 4
    if form == 0:
        return "application/json", json.dumps({"instances": x.tolist()}), n
    if form == 1:
        return "application/json", json.dumps({"inputs": {"x": x.tolist()}}), n
    if form == 2:
        return "application/json", json.dumps({"inputs": [{"name": "x", "shape": [n, 4], "datatype": "FP32",
                                                           "data": x.reshape(-1).tolist()}]}), n
    return "text/csv", "\n".join(",".join(str(v) for v in row) for row in x), n


@pytest.fixture(scope="module")
def served(bundle, tmp_path_factory):
    """A bundle copy with a baseline, the capture folder a real server wrote, and the request/response
    bodies it saw (shifted traffic first, then normal traffic: the newest records show no drift)."""
    folder = tmp_path_factory.mktemp("served")
    model = shutil.copytree(bundle, folder / "bundle")
    rng = np.random.default_rng(3)
    np.save(folder / "ref.npy", rng.normal(size=(3000, 4)).astype(np.float32))
    base.create(model, folder / "ref.npy")
    capture = folder / "capture"
    server = start_server(model, folder, workers=1, env={
        "MLDEPLOY_CAPTURE_DIR": str(capture), "MLDEPLOY_CAPTURE_SAMPLE_RATE": "1",
        "MLDEPLOY_CAPTURE_MAX_BYTES": "4096", "MLDEPLOY_CAPTURE_FILES": "100"})
    exchanges, rows = [], {"shifted": 0, "normal": 0}
    try:
        for i in range(N_SHIFTED + N_NORMAL):
            kind = "shifted" if i < N_SHIFTED else "normal"
            ctype, body, n = bodies(i, rng, 3.0 if kind == "shifted" else 0.0)
            path = "/v2/models/model/infer" if '"datatype"' in body else "/invocations"
            reply = server.call("POST", path, body, {"content-type": ctype})
            assert reply.status == 200, reply.body
            exchanges.append((ctype, body, reply.headers["content-type"], reply.body))
            rows[kind] += n
        for bad in ('{"instances": [[1, 2]]}', "{not json"):   # refused (4xx): never captured
            assert server.call("POST", "/invocations", bad, {"content-type": "application/json"}).status in (400, 422)
    finally:
        assert server.stop() == 0   # SIGTERM: the capture writer flushes what is queued
    return model, capture, exchanges, rows


def drift(mldeploy, model, source: str, *args):
    r = mldeploy("monitor", "drift", "--bundle", model, "--capture", source, "--json", model.parent / "r.json", *args)
    report = json.loads((model.parent / "r.json").read_text()) if r.code in (0, 1) else None
    return r, report


def status(report, name: str) -> str:
    return next(r["status"] for r in report["features"] + report["predictions"] if r["name"] == name)


def test_the_servers_own_capture_files_from_a_folder(mldeploy, served):
    model, capture, exchanges, rows = served
    files = sorted(p.name for p in capture.iterdir())
    assert len(files) > 3 and any(".1.jsonl" in f for f in files), files   # it rotated
    r, report = drift(mldeploy, model, str(capture))
    assert r.code == 0, r.err
    assert report["records"] == len(exchanges) and report["rows"] == rows["shifted"] + rows["normal"]
    assert report["skipped"] == {"corrupt": 0, "mismatched": 0} and report["objects"] == len(files)
    assert report["formats"] == {"mldeploy": len(exchanges)} and len(report["model_versions"]) == 1
    assert status(report, "x[1]") == "drift" and status(report, "x[0]") == "ok"
    assert all(status(report, f"x[{i}]") == "ok" for i in (0, 2, 3))
    # the newest records first: the normal traffic alone shows no drift
    r, report = drift(mldeploy, model, str(capture), "--max-records", str(N_NORMAL))
    assert r.code == 0 and report["records"] == N_NORMAL and report["rows"] == rows["normal"]
    assert report["status"] == "ok" and report["truncated"], report
    # the server's predictions are the model's: no prediction drift on unshifted traffic
    assert not report["prediction_drift"]


def sagemaker_lines(exchanges) -> bytes:
    """SageMaker data-capture JSON lines of these request/response bodies (CSV and JSON as text, the
    first of every four base64-encoded, as SageMaker does for content types it does not know)."""
    lines = []
    for i, (ctype, body, reply_type, reply) in enumerate(exchanges):
        raw = body.encode() if isinstance(body, str) else body
        encoding = "BASE64" if i % 4 == 3 else ("CSV" if ctype == "text/csv" else "JSON")
        lines.append(json.dumps({
            "captureData": {
                "endpointInput": {"observedContentType": ctype, "mode": "INPUT", "encoding": encoding,
                                  "data": base64.b64encode(raw).decode() if encoding == "BASE64" else raw.decode()},
                "endpointOutput": {"observedContentType": reply_type, "mode": "OUTPUT", "encoding": "BASE64",
                                   "data": base64.b64encode(reply).decode()}},
            "eventMetadata": {"eventId": f"event-{i}", "inferenceTime": f"2026-12-01T03:00:{i % 60:02d}Z"},
            "eventVersion": "0"}))
    return ("\n".join(lines) + "\n").encode()


def upload(put, capture, exchanges) -> None:
    """The server's files under a prefix, oldest first (their order by time is the server's), and a
    SageMaker data-capture file of the same traffic beside them."""
    files = sorted(capture.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    for n, f in enumerate(files):
        put(f"endpoint/runtime/{f.name}", f.read_bytes(), 1_800_000_000 + n)
    put("endpoint/sagemaker/AllTraffic/2026/12/01/03/00-00-000-x.jsonl", sagemaker_lines(exchanges), 1_700_000_000)
    put("endpoint/README.txt", b"not a capture file", 1_900_000_000)


def check_cloud_report(report, exchanges, rows) -> None:
    assert report["records"] == 2 * len(exchanges), report
    assert report["rows"] == 2 * (rows["shifted"] + rows["normal"])
    assert report["formats"] == {"mldeploy": len(exchanges), "sagemaker": len(exchanges)}
    assert report["skipped"] == {"corrupt": 0, "mismatched": 0}
    assert status(report, "x[1]") == "drift" and status(report, "x[2]") == "ok"


# -- S3 (moto) -------------------------------------------------------------------------------------
def test_s3(mldeploy, served, aws):
    import boto3

    model, capture, exchanges, rows = served
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="captures")
    upload(lambda key, data, _: s3.put_object(Bucket="captures", Key=key, Body=data), capture, exchanges)
    r, report = drift(mldeploy, model, "s3://captures/endpoint/")
    assert r.code == 0, r.err
    check_cloud_report(report, exchanges, rows)
    r, report = drift(mldeploy, model, "s3://captures/endpoint/", "--fail-on-drift")
    assert r.code == 1 and "DRIFT" in r.err
    r, _ = drift(mldeploy, model, "s3://no-such-bucket/x")
    assert r.code == 2 and "no-such-bucket does not exist" in r.err
    r, report = drift(mldeploy, model, "s3://captures/nothing-here/")
    assert r.code == 0 and report["status"] == "no records"


# -- Cloud Storage (fake) ---------------------------------------------------------------------------
@pytest.fixture
def gcs(monkeypatch):
    need("google.cloud.storage", "the gcp extra installs it")
    from tests.helpers.fakes.storage import StorageFake

    fake = StorageFake("gcs")
    monkeypatch.setenv("MLDEPLOY_GCP_API_ENDPOINT", fake.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "acme-ml")
    yield fake
    fake.close()


def test_cloud_storage(mldeploy, served, gcs):
    model, capture, exchanges, rows = served
    upload(lambda name, data, at: gcs.put("captures", name, data, at), capture, exchanges)
    r, report = drift(mldeploy, model, "gs://captures/endpoint/")
    assert r.code == 0, r.err
    check_cloud_report(report, exchanges, rows)
    assert not any("README" in path for _, path in gcs.requests)   # listed, never downloaded
    r, report = drift(mldeploy, model, "gs://captures/endpoint/", "--max-records", str(N_NORMAL))
    assert report["records"] == N_NORMAL and report["status"] == "ok"   # newest object first
    r, _ = drift(mldeploy, model, "gs://missing-bucket/x")
    assert r.code == 2 and "missing-bucket does not exist" in r.err


# -- Azure Blob storage (fake) ----------------------------------------------------------------------
AAD_TOKEN = "aad-storage-SECRET-token"


@pytest.fixture
def blob(tls, monkeypatch, tmp_path):
    need("azure.identity", "the azure extra installs it")
    need("azure.storage.blob", "the azure extra installs it")
    from tests.helpers.fakes.storage import StorageFake

    authority = Fake({f"/{TENANT}/oauth2/v2.0/token": (200, {"token_type": "Bearer", "expires_in": 3599,
                                                             "ext_expires_in": 3599, "access_token": AAD_TOKEN})},
                     tls=tls[0])
    fake = StorageFake("blob", token=AAD_TOKEN)
    for var in ("AZURE_CLIENT_SECRET", "AZURE_USERNAME", "MSI_ENDPOINT", "IDENTITY_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    azure_workload_identity(monkeypatch, tmp_path, f"https://{authority.host}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[1]))
    monkeypatch.setenv("SSL_CERT_FILE", str(tls[1]))
    monkeypatch.setenv("MLDEPLOY_AZURE_ARM_ENDPOINT", fake.url)
    yield fake
    fake.close()
    authority.close()


def test_azure_blob_storage(mldeploy, served, blob):
    model, capture, exchanges, rows = served
    upload(lambda name, data, at: blob.put("captures", name, data, at), capture, exchanges)
    url = "https://acmeml.blob.core.windows.net/captures/endpoint/"
    r, report = drift(mldeploy, model, url)
    assert r.code == 0, r.err
    check_cloud_report(report, exchanges, rows)
    assert report["problems"] == [] and AAD_TOKEN not in r.out + r.err
    r, _ = drift(mldeploy, model, "https://acmeml.blob.core.windows.net/nope/x")
    assert r.code == 2 and "container" in r.err and "does not exist" in r.err
    blob.token = "another-token"   # the storage account refuses the identity
    r, _ = drift(mldeploy, model, url)
    assert r.code == 2 and "Azure Storage refused" in r.err and "Storage Blob Data Reader" in r.err
    assert "Traceback" not in r.err and AAD_TOKEN not in r.out + r.err
