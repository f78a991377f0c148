"""Model artifacts in each cloud's object storage, through the real SDKs: S3 on moto (versioning on),
Cloud Storage on the small fake (tests/helpers/fakes/storage.py: generations, ifGenerationMatch; PyPI's
gcp-storage-emulator ignores preconditions, so it would let a publish overwrite), Blob on Azurite
(npm, 3.37: no blob versioning, so the content hash is recorded) with an Entra ID token over HTTPS.
Each store: publish, idempotent re-run, fetch, prune; a tampered object refused by publish and fetch;
a missing bucket in one line."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mldeploy import artifacts
from mldeploy.artifacts import ArtifactError, fetch, publish
from mldeploy.errors import UsageError
from tests.helpers.identity import TENANT, Fake, azure_workload_identity
from tests.helpers.need import need

AZURITE = "3.37.0"
AZURITE_BIN = Path(os.environ.get("MLDEPLOY_AZURITE_DIR", Path.home() / ".cache/mldeploy" / f"azurite-{AZURITE}"),
                   "node_modules/.bin")
# Azurite's well-known development account (public, in Azure's docs): the test's own setup writes with it
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class World:
    uri: str                                     # the storage.uri publishes go under
    tamper: Callable[[str, bytes], None]         # write other bytes under a key (relative to the bucket/container)
    missing: str                                 # a storage URI whose bucket does not exist
    versions: bool                               # whether the store hands out version ids


@pytest.fixture
def s3_world(aws) -> World:
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    s3.put_bucket_versioning(Bucket="models", VersioningConfiguration={"Status": "Enabled"})
    return World("s3://models/team", lambda key, data: s3.put_object(Bucket="models", Key=key, Body=data),
                 "s3://no-such-bucket/x", True)


@pytest.fixture
def gcs_world(monkeypatch):
    need("google.cloud.storage", "the gcp extra installs it")
    from tests.helpers.fakes.storage import StorageFake

    fake = StorageFake("gcs")
    fake.buckets["models"] = {}
    fake.versioned.add("models")
    monkeypatch.setenv("MLDEPLOY_GCP_API_ENDPOINT", fake.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "acme-ml")
    yield World("gs://models/team", lambda key, data: fake.put("models", key, data, time.time()),
                "gs://no-such-bucket/x", True)
    fake.close()


def _jwt(claims: dict) -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


@pytest.fixture(scope="module")
def azurite(tls, tmp_path_factory):
    """Azurite's Blob service over HTTPS with OAuth (it checks a bearer token's audience, issuer and
    lifetime, as Azure does, but not its signature), in memory, on a free port."""
    binary = need("azurite-blob", f"`npm install --prefix {AZURITE_BIN.parent.parent} azurite@{AZURITE}` "
                  "(scripts/setup-system.sh) installs it", command=True, path=AZURITE_BIN)
    folder = tls[1].parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tmp_path_factory.mktemp("azurite")
    process = subprocess.Popen([binary, "--blobHost", "127.0.0.1", "--blobPort", str(port),
                                "--inMemoryPersistence", "--silent", "--skipApiVersionCheck", "--oauth", "basic",
                                "--cert", str(folder / "server.pem"), "--key", str(folder / "server.key")],
                               cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"azurite did not start: {process.stderr.read().decode()[-500:] if process.stderr else ''}")
            time.sleep(0.1)
    yield f"https://127.0.0.1:{port}"
    process.kill()   # in memory: nothing to flush
    process.wait(timeout=10)


@pytest.fixture
def blob_world(azurite, tls, monkeypatch, tmp_path):
    need("azure.identity", "the azure extra installs it")
    need("azure.storage.blob", "the azure extra installs it")
    from azure.storage.blob import BlobServiceClient

    now = int(time.time())
    token = _jwt({"aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{TENANT}/",
                  "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "oid": "publisher"})
    authority = Fake({f"/{TENANT}/oauth2/v2.0/token": (200, {"token_type": "Bearer", "expires_in": 3599,
                                                             "ext_expires_in": 3599, "access_token": token})},
                     tls=tls[0])
    for var in ("AZURE_CLIENT_SECRET", "AZURE_USERNAME", "MSI_ENDPOINT", "IDENTITY_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    azure_workload_identity(monkeypatch, tmp_path, f"https://{authority.host}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls[1]))
    monkeypatch.setenv("SSL_CERT_FILE", str(tls[1]))
    monkeypatch.setenv("MLDEPLOY_AZURE_ARM_ENDPOINT", azurite)   # *.blob.core.windows.net -> Azurite
    admin = BlobServiceClient(f"{azurite}/{DEV_ACCOUNT}", credential={"account_name": DEV_ACCOUNT, "account_key": DEV_KEY},
                              connection_verify=str(tls[1]))
    container = f"models{tmp_path.name[-12:].lower().replace('_', '')}"   # one per test: Azurite lives per module
    admin.create_container(container)
    host = f"https://{DEV_ACCOUNT}.blob.core.windows.net"
    yield World(f"{host}/{container}/team",
                lambda key, data: admin.get_blob_client(container, key).upload_blob(data, overwrite=True),
                f"{host}/no-such-container/x", False)
    authority.close()


@pytest.fixture(params=["s3", "gcs", "blob"])
def world(request) -> World:
    return request.getfixturevalue(f"{request.param}_world")


def served(tmp: Path, model: bytes) -> Path:
    folder = tmp / f"served-{model.decode()}"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(model)
    (folder / "signature.json").write_text('{"inputs": []}\n')
    (folder / "manifest.json").write_text('{"steps": []}\n')
    return folder


def test_publish_fetch_prune(world: World, tmp_path: Path) -> None:
    done = publish(served(tmp_path, b"v1"), world.uri, "iris")
    assert done.uri == f"{world.uri}/iris/{done.sha256}" and len(done.uploaded) == 4
    hashed = [v for v in done.versions.values() if v.startswith("sha256:")]
    assert (hashed == []) if world.versions else (len(hashed) == 4 and done.warnings)
    again = publish(tmp_path / "served-v1", world.uri, "iris")
    assert again.up_to_date and again.versions == done.versions

    got = fetch(done.uri, done.sha256, tmp_path / "model")
    assert (got / "model.onnx").read_bytes() == b"v1"
    assert (got / artifacts.LISTING).read_text() == artifacts.listing(tmp_path / "served-v1")

    new = publish(served(tmp_path, b"v2"), world.uri, "iris")
    writing = "f" * 64   # a publish still running elsewhere: files, no listing yet
    world.tamper(f"team/iris/{writing}/model.onnx", b"half")
    assert artifacts.published(world.uri, "iris") == sorted([done.sha256, new.sha256, writing])
    assert artifacts.prune(world.uri, "iris", keep={new.sha256}, dry_run=False) == [done.sha256]
    assert artifacts.published(world.uri, "iris") == sorted([new.sha256, writing])
    with pytest.raises(ArtifactError, match="does not exist: nothing was published there"):
        fetch(done.uri, done.sha256, tmp_path / "gone")
    assert (fetch(new.uri, new.sha256, tmp_path / "new") / "model.onnx").read_bytes() == b"v2"


def test_a_tampered_object_is_refused_by_publish_and_fetch(world: World, tmp_path: Path) -> None:
    folder = served(tmp_path, b"v1")
    done = publish(folder, world.uri, "iris")
    world.tamper(f"team/iris/{done.sha256}/model.onnx", b"evil")   # other bytes, as someone with write access could
    with pytest.raises(ArtifactError, match=r"model.onnx already exists with other bytes"):
        publish(folder, world.uri, "iris")
    with pytest.raises(ArtifactError, match=r"model.onnx has sha256 .* it was changed after publishing"):
        fetch(done.uri, done.sha256, tmp_path / "model")
    assert not (tmp_path / "model" / "model.onnx").exists()


def test_a_missing_bucket_is_one_line(world: World, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist") as caught:
        publish(served(tmp_path, b"v1"), world.missing, "iris")
    assert "\n" not in caught.value.one_line()
    with pytest.raises(ArtifactError, match=r"cannot read the artifact .* does not exist"):
        fetch(f"{world.missing}/iris/{'a' * 64}", "a" * 64, tmp_path / "model")


def test_s3_without_versioning_records_the_hash_and_says_so(aws, tmp_path: Path) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket="plain")
    done = publish(served(tmp_path, b"v1"), "s3://plain", "iris")
    assert all(v.startswith("sha256:") for v in done.versions.values())
    assert done.warnings and "keeps no object versions" in done.warnings[0]


def test_s3_uploads_a_large_file_in_parts_under_the_same_condition(aws, tmp_path: Path, monkeypatch) -> None:
    import boto3

    from mldeploy.artifacts import s3

    monkeypatch.setattr(s3, "MULTIPART", 6 << 20)   # a 7 MiB model: two parts of S3's smallest size
    monkeypatch.setattr(s3, "PART", 5 << 20)
    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    client.put_bucket_versioning(Bucket="models", VersioningConfiguration={"Status": "Enabled"})
    folder = served(tmp_path, b"v1")
    (folder / "model.onnx").write_bytes(bytes(range(256)) * (7 << 12))
    done = publish(folder, "s3://models/team", "iris")
    key = f"team/iris/{done.sha256}/model.onnx"
    assert client.head_object(Bucket="models", Key=key, PartNumber=2)["PartsCount"] == 2
    assert fetch(done.uri, done.sha256, tmp_path / "model").joinpath("model.onnx").read_bytes() == \
        (folder / "model.onnx").read_bytes()
    client.put_object(Bucket="models", Key=key, Body=b"evil")
    with pytest.raises(ArtifactError, match="already exists with other bytes"):
        publish(folder, "s3://models/team", "iris")
    assert client.list_multipart_uploads(Bucket="models").get("Uploads", []) == []   # the refused one aborted

