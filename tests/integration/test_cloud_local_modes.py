"""The ONE serving image under each cloud SDK's OWN local mode, offline.

SageMaker (`LocalSession`, `instance_type="local"`), Vertex AI (`LocalModel.deploy_to_local_endpoint`)
and Azure ML (`begin_create_or_update(..., local=True)`) each run the image on the local Docker engine
the way their cloud would (their arguments, ports, environment, model mounts, health checks) and send
it predictions with their own client code. Nothing calls a cloud.

The SDKs live in their own venvs (scripts/setup-cloud-sdks.sh): their pins conflict with ours and
with each other, so they are never imported here. Each test writes a small driver script, runs it
with that venv's python and asserts on the JSON it leaves.

The image is the model-free runtime image of image.model: storage (issue 26), and what each cloud
mounts is the published artifact (mldeploy.artifacts.publish: the served files and their mldeploy.files
listing) of a model with other weights than the test bundle's, handed over the cloud's way (SageMaker's
/opt/ml/model, Vertex's AIP_STORAGE_URI, Azure's AZUREML_MODEL_DIR) with MLDEPLOY_MODEL_SHA256, as the
deploy sets it: the server verifies the mount against the hash before it reports ready, and a right
answer proves it serves the artifact (the image holds no model).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers.cli import run_cli
from tests.helpers.docker import printed_image, starting_line
from tests.helpers.models import expected_probs, save_bundle
from tests.helpers.need import unavailable
from tests.helpers.paths import ROOT, THIS_VENV, share_identical_files
from tests.helpers.server import free_port

VENVS = Path(os.environ.get("MLDEPLOY_SDK_VENVS", ROOT / ".sdk-venvs"))
# Exactly representable in float32, so JSON and CSV carry them unchanged.
ROWS = [[0.5, -1.25, 2.0, 0.75], [1.5, 0.25, -0.5, 3.0]]
# Set in each container through the SDK's own environment option: finds what a driver left behind.
MARK = "CLOUD_LOCAL_TEST_RUN"
DRIVER_TIMEOUT = 300

_rng = np.random.default_rng(42)
W2 = _rng.normal(size=(4, 3)).astype(np.float32)
B2 = _rng.normal(size=(3,)).astype(np.float32)


def artifact_probs(x) -> np.ndarray:
    """The answer of the model the clouds mount (not the image's baked one: see expected_probs)."""
    logits = np.asarray(x, np.float32) @ W2 + B2
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def assert_verified(log: str, sha256: str) -> None:
    """The server checked the mounted artifact against the hash the cloud handed it (MLDEPLOY_MODEL_SHA256)."""
    verified = [line for line in log.splitlines() if '"model verified"' in line]
    assert verified and json.loads(verified[0][verified[0].index("{"):])["sha256"] == sha256, log[-3000:]


def assert_probs(answer, expected: np.ndarray, what: str) -> None:
    got = np.asarray(answer, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, expected {expected.shape}: {answer!r}"
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=what)


@pytest.fixture(scope="session")
def sdk_venvs() -> Path:
    """The three SDK venvs (installed on first use: a few minutes; seconds after)."""
    run = subprocess.run(["bash", str(ROOT / "scripts" / "setup-cloud-sdks.sh")], capture_output=True, text=True,
                         timeout=780, env={**os.environ, "MLDEPLOY_SDK_VENVS": str(VENVS)}, check=False)
    if run.returncode:
        tail = "\n".join(run.stderr.strip().splitlines()[-20:])
        unavailable(f"scripts/setup-cloud-sdks.sh failed (the cloud SDKs could not be installed):\n{tail}")
    share_identical_files(THIS_VENV, VENVS)
    return VENVS


@pytest.fixture(scope="module")
def artifact_bundle(tmp_path_factory) -> Path:
    """A bundle of the same shape as the image's (x [batch,4] -> probs [batch,3]) with other weights."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "linear2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W2, "W"), numpy_helper.from_array(B2, "B")])
    bundle = save_bundle(graph, tmp_path_factory.mktemp("cloud-artifact"))
    assert not np.allclose(artifact_probs(ROWS), expected_probs(ROWS), atol=1e-3)
    return bundle


@pytest.fixture(scope="module")
def runtime_image(serving_image, docker_env) -> str:
    """The model-free runtime image (image.model: storage, a file:// store: no SDK step), built once."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"MLDEPLOY_IMAGE__MODEL": "storage", "MLDEPLOY_STORAGE__URI": "file:///models",
                            "MLDEPLOY_IMAGE__REPOSITORY": "mldeploy-test/runtime-file"}.items():
            mp.setenv(name, value)
        code, out = run_cli("build", "--bundle", serving_image[1], "--base", docker_env["MLDEPLOY_IMAGE__BASE"])
    assert code == 0, out
    return printed_image(out)


@pytest.fixture(scope="module")
def artifact(artifact_bundle, tmp_path_factory) -> tuple[Path, str]:
    """artifact_bundle published to a file:// store: (the artifact's folder, its sha256)."""
    from mldeploy.artifacts import publish

    store = tmp_path_factory.mktemp("store")
    published = publish(artifact_bundle, f"file://{store}", "linear2")
    folder = Path(published.uri.removeprefix("file://"))
    assert {"model.onnx", "signature.json", "mldeploy.files"} <= {f.name for f in folder.iterdir()}
    return folder, published.sha256


def readable_copy(bundle: Path, dest: Path, top: Path) -> Path:
    """The bundle's files in dest, readable by the image's non-root user whatever the umask.

    Only the folders from dest up to top (exclusive) are opened: a bind mount shows the container
    the mounted folder itself, never its parents on the host."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in bundle.iterdir():
        if f.is_file():
            shutil.copy(f, dest / f.name)
            (dest / f.name).chmod(0o644)
    d = dest
    while d != top and top in d.parents:
        d.chmod(0o755)
        d = d.parent
    return dest


def remove_marked(docker_client, run_id: str) -> tuple[int, int]:
    """Removes containers whose environment carries this run's mark: (running, stopped) found."""
    running = stopped = 0
    for c in docker_client.containers.list(all=True, ignore_removed=True):
        if f"{MARK}={run_id}" in (c.attrs.get("Config", {}).get("Env") or []):
            running += c.status == "running"
            stopped += c.status != "running"
            try:
                c.remove(force=True)
            except Exception:
                pass
    return running, stopped


def run_driver(cloud: str, venvs: Path, source: str, args: dict, tmp_path: Path, docker_env: dict,
               docker_client, capsys) -> dict:
    """Runs a driver with the cloud SDK's venv python; returns its result with 'wall_s' and 'log'."""
    run_id = uuid.uuid4().hex[:12]
    driver, args_file, result_file, log_file = (tmp_path / n for n in ("driver.py", "args.json", "result.json",
                                                                         "driver.log"))
    driver.write_text(textwrap.dedent(DRIVER_HEAD) + textwrap.dedent(source))
    args_file.write_text(json.dumps({**args, "rows": ROWS, "mark": [MARK, run_id], "result": str(result_file)}))
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "GOOGLE_APPLICATION_CREDENTIALS")
           and not k.startswith(("AWS_", "AZURE_", "MLDEPLOY_"))}
    env.update(docker_env)
    env.update({
        "PATH": f"{venvs / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}",  # docker-compose, for SageMaker
        "HOME": str(home),  # Azure's build folders, any SDK config: none of the developer's
        "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1", "NO_GCE_CHECK": "True",
    })
    start = time.monotonic()
    try:
        with log_file.open("w") as log:
            proc = subprocess.Popen([str(venvs / cloud / "bin" / "python"), str(driver), str(args_file)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                    start_new_session=True)
            try:
                proc.wait(timeout=DRIVER_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)  # the driver's finally blocks delete what they created
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    finally:
        wall = time.monotonic() - start
        left_running, left_stopped = remove_marked(docker_client, run_id)
    log_text = log_file.read_text(errors="replace")
    assert result_file.exists(), f"{cloud} driver exited {proc.returncode} with no result:\n{log_text[-4000:]}"
    result = json.loads(result_file.read_text())
    result.update(wall_s=wall, log=log_text, left_running=left_running, left_stopped=left_stopped)
    nan = float("nan")
    with capsys.disabled():
        print(f"\n[cloud local mode] {cloud}: SDK import {result.get('import_s', nan):.1f} s, deploy until healthy "
              f"{result.get('deploy_s', nan) - result.get('import_s', 0):.1f} s, whole driver {wall:.1f} s",
              file=sys.stderr)
    assert "error" not in result, f"{cloud} driver failed:\n{result['error']}\n--- log ---\n{log_text[-4000:]}"
    assert left_running == 0, f"{cloud}: {left_running} container(s) still running after the SDK deleted the endpoint"
    return result


# Shared by the drivers: arguments, the result file written however the driver ends (SIGTERM included).
DRIVER_HEAD = """\
import json, signal, sys, time, traceback

signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated by the test (timeout)"))
T0 = time.monotonic()
args = json.load(open(sys.argv[1]))
out = {}


def finish():
    out["total_s"] = time.monotonic() - T0
    with open(args["result"], "w") as f:
        json.dump(out, f)

"""

SAGEMAKER_DRIVER = """\
try:
    import os

    os.environ["AWS_ENDPOINT_URL"] = args["s3_endpoint"]  # moto's S3, where the artifact was published
    # Local mode downloads the S3 prefix into a mkdtemp folder (0700, root's) and mounts it at /opt/ml/model,
    # which the image's non-root user could not read (SageMaker's own mount is readable): open those up.
    import tempfile

    _mkdtemp = tempfile.mkdtemp

    def readable_mkdtemp(*a, **k):
        made = _mkdtemp(*a, **k)
        os.chmod(made, 0o755)
        return made

    tempfile.mkdtemp = readable_mkdtemp
    import boto3
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.local import LocalSession
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import CSVSerializer, JSONSerializer

    out["import_s"] = time.monotonic() - T0
    telemetry_off = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
    boto = boto3.Session(region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local")
    sess = LocalSession(boto_session=boto, sagemaker_config=telemetry_off)
    local = {"local": {"local_code": True, "serving_port": args["port"]}}
    sess.config = local
    sess.sagemaker_runtime_client.config = local  # it keeps the config it was made with
    name = args["name"]
    model = Model(image_uri=args["image"], model_data=args["model_data"],
                  role="arn:aws:iam::111122223333:role/mldeploy-local", predictor_cls=Predictor,
                  env={args["mark"][0]: args["mark"][1], "MLDEPLOY_MODEL_SHA256": args["sha256"]}, name=name,
                  sagemaker_session=sess)
    try:
        # Local mode starts `docker-compose up` and returns once GET /ping answers 200.
        predictor = model.deploy(initial_instance_count=1, instance_type="local", endpoint_name=name, wait=False,
                                 serializer=JSONSerializer(), deserializer=JSONDeserializer())
        out["deploy_s"] = time.monotonic() - T0
        out["json"] = predictor.predict({"instances": args["rows"]})
        out["json_rows"] = predictor.predict(args["rows"])
        predictor.serializer = CSVSerializer()
        out["csv"] = predictor.predict(args["rows"])
        # predict() never looks at the HTTP status: ask the SDK's runtime client, which does return it.
        rt = sess.sagemaker_runtime_client
        for key, body in (("status_ok", {"instances": args["rows"]}), ("status_bad", {"instances": [[1, 2, 3]]})):
            r = rt.invoke_endpoint(Body=json.dumps(body), EndpointName=name, ContentType="application/json",
                                   Accept="application/json")["Body"]
            out[key] = [r.status, r.headers.get("content-type"), json.loads(r.read())]
    finally:
        sess.sagemaker_client.delete_endpoint(EndpointName=name)  # stops docker-compose
        sess.delete_endpoint_config(name)
        sess.delete_model(name)
except BaseException:
    out["error"] = traceback.format_exc()
finish()
"""

VERTEX_DRIVER = """\
try:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform
    from google.cloud.aiplatform.prediction import LocalModel

    out["import_s"] = time.monotonic() - T0
    aiplatform.init(project="mldeploy-local", location="us-central1", credentials=AnonymousCredentials())
    model = LocalModel(serving_container_image_uri=args["image"],
                       serving_container_predict_route=args["predict_route"],
                       serving_container_health_route=args["health_route"],
                       serving_container_ports=[args["port"]],
                       serving_container_environment_variables={args["mark"][0]: args["mark"][1],
                                                                "MLDEPLOY_MODEL_SHA256": args["sha256"]})
    endpoint = model.deploy_to_local_endpoint(artifact_uri=args["artifacts"], container_ready_timeout=90)
    try:
        endpoint.serve()  # returns once the health route answers 200
        out["deploy_s"] = time.monotonic() - T0
        env = dict(e.split("=", 1) for e in endpoint.container.attrs["Config"]["Env"])
        out["env"] = {k: v for k, v in env.items() if k.startswith("AIP_")}
        r = endpoint.run_health_check()
        out["health"] = [r.status_code, r.text]
        headers = {"Content-Type": "application/json"}
        r = endpoint.predict(request=json.dumps({"instances": args["rows"]}), headers=headers)
        out["predict"] = [r.status_code, r.headers.get("content-type"), r.json()]
        r = endpoint.predict(request=json.dumps({"instances": args["rows"], "parameters": {}}), headers=headers)
        out["predict_parameters"] = [r.status_code, r.json()]
        r = endpoint.predict(request=json.dumps({"instances": [[1, 2, 3]]}), headers=headers)
        out["bad"] = [r.status_code, r.json()]
        out["logs"] = endpoint.container.logs().decode(errors="replace")
    finally:
        endpoint.stop()
        if endpoint.container is not None:
            endpoint.container.remove(force=True)  # stop() leaves it behind
            endpoint.container = None
except BaseException:
    out["error"] = traceback.format_exc()
finish()
"""

AZURE_DRIVER = """\
import os
import urllib.error
import urllib.request


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]


class NoToken:
    def get_token(self, *scopes, **kwargs):
        raise AssertionError("local endpoints must not ask for a token")


try:
    from azure.ai.ml import MLClient, load_online_deployment
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    out["import_s"] = time.monotonic() - T0
    ml = MLClient(NoToken(), subscription_id="00000000-0000-0000-0000-000000000000",
                  resource_group_name="mldeploy-local", workspace_name="mldeploy-local",
                  enable_telemetry=False, show_progress=False)
    name = args["endpoint"]
    try:
        ml.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name=name, auth_mode="key"), local=True)
        # As `az ml online-deployment create --local -f deployment.yml` does.
        deployment = load_online_deployment(args["deployment_yaml"])
        deployment.environment_variables[args["mark"][0]] = args["mark"][1]
        ml.online_deployments.begin_create_or_update(deployment, local=True)
        out["deploy_s"] = time.monotonic() - T0
        out["state"] = ml.online_deployments.get(name=deployment.name, endpoint_name=name, local=True).provisioning_state
        uri = ml.online_endpoints.get(name, local=True).scoring_uri
        out["scoring_uri"] = uri
        # The routes the YAML declared for the cloud's probes (local mode only sleeps, so probe them here).
        base = uri.rsplit("/", 1)[0]
        out["liveness"] = get(base + "/")
        out["readiness"] = get(base + "/v2/health/ready")
        for key in ("data", "instances"):
            request = os.path.join(os.path.dirname(args["deployment_yaml"]), f"request-{key}.json")
            with open(request, "w") as f:
                json.dump({key: args["rows"]}, f)
            out[key] = ml.online_endpoints.invoke(endpoint_name=name, request_file=request, local=True)
        out["logs"] = ml.online_deployments.get_logs(name=deployment.name, endpoint_name=name, lines=50, local=True)
    finally:
        ml.online_endpoints.begin_delete(name=name, local=True)  # removes its containers
except BaseException:
    out["error"] = traceback.format_exc()
finish()
"""


def test_sagemaker_local_mode(sdk_venvs, runtime_image, artifact_bundle, moto_server, docker_env, docker_client,
                              tmp_path, capsys):
    """The artifact published to moto's S3, uncompressed, as ModelDataSource mounts it in the cloud: local mode
    downloads the S3 prefix (model_data) and mounts it at /opt/ml/model."""
    import boto3

    from mldeploy.artifacts import publish

    tag, (_, url) = runtime_image, moto_server
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="acme-models")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
            mp.setenv(name, value)
        published = publish(artifact_bundle, "s3://acme-models/models", "linear2")
    sha256 = published.sha256

    r = run_driver("sagemaker", sdk_venvs, SAGEMAKER_DRIVER,
                   {"image": tag, "model_data": f"{published.uri}/", "s3_endpoint": url, "port": free_port(),
                    "name": f"mldeploy-{uuid.uuid4().hex[:8]}", "sha256": sha256},
                   tmp_path, docker_env, docker_client, capsys)

    want = artifact_probs(ROWS)
    for key in ("json", "json_rows", "csv"):
        assert isinstance(r[key], dict) and "predictions" in r[key], f"{key}: not predictions: {r[key]!r}"
        assert_probs(r[key]["predictions"], want, f"SageMaker predict ({key})")
    status, ctype, body = r["status_ok"]
    assert status == 200 and ctype.startswith("application/json"), r["status_ok"]
    assert_probs(body["predictions"], want, "SageMaker invoke_endpoint")
    status, _, body = r["status_bad"]
    assert status == 400 and "error" in body, r["status_bad"]
    assert starting_line(r["log"])["bundle"] == "/opt/ml/model"
    assert_verified(r["log"], sha256)


def test_vertex_local_model(sdk_venvs, runtime_image, artifact, docker_env, docker_client, tmp_path, capsys):
    tag, (folder, sha256) = runtime_image, artifact
    artifacts = readable_copy(folder, tmp_path / "gcs" / "model", tmp_path)
    # Custom routes and port, as a Model resource may declare them: the server must take them from AIP_*.
    routes = {"predict_route": "/v1/endpoints/local/deployedModels/linear:predict",
              "health_route": "/v1/endpoints/local/deployedModels/linear", "port": 7080}

    r = run_driver("vertex", sdk_venvs, VERTEX_DRIVER,
                   {"image": tag, "artifacts": str(artifacts), "sha256": sha256, **routes},
                   tmp_path, docker_env, docker_client, capsys)

    assert r["env"]["AIP_HTTP_PORT"] == "7080" and r["env"]["AIP_PREDICT_ROUTE"] == routes["predict_route"], r["env"]
    assert r["health"][0] == 200, r["health"]
    status, ctype, body = r["predict"]
    assert status == 200 and ctype.startswith("application/json"), r["predict"]
    assert set(body) == {"predictions"}, body
    assert_probs(body["predictions"], artifact_probs(ROWS), "Vertex predict")
    assert r["predict_parameters"][0] == 200, r["predict_parameters"]
    assert_probs(r["predict_parameters"][1]["predictions"], artifact_probs(ROWS), "Vertex predict with parameters")
    assert r["bad"][0] == 400 and "error" in r["bad"][1], r["bad"]
    start = starting_line(r["logs"])
    assert start["port"] == 7080 and start["bundle"] == r["env"]["AIP_STORAGE_URI"], start
    assert_verified(r["logs"], sha256)


def test_azure_ml_local_endpoint(sdk_venvs, runtime_image, artifact, docker_env, docker_client, tmp_path, capsys):
    tag, (folder, sha256) = runtime_image, artifact
    work = tmp_path / "azureml"
    # The model folder as a registered model's: mounted (its parent, by the SDK) below AZUREML_MODEL_DIR.
    readable_copy(folder, work / "model" / "linear", tmp_path)
    # An unused code folder and scoring script: without code_configuration azure-ai-ml 1.35 crashes on a
    # custom container (Azure/azure-sdk-for-python#42995). The image serves /score itself.
    (work / "code").mkdir()
    (work / "code" / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw_data):\n"
                                            "    raise RuntimeError('not used: the image serves /score')\n")
    endpoint = f"mldeploy-{uuid.uuid4().hex[:8]}"
    # From YAML, as the CLI does: an Environment built in Python with a dict inference_config fails locally.
    (work / "deployment.yml").write_text(textwrap.dedent(f"""\
        $schema: https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json
        name: blue
        endpoint_name: {endpoint}
        model:
          name: linear
          version: "1"
          path: ./model/linear
        environment:
          image: {tag}
          inference_config:
            liveness_route: {{port: 8080, path: /}}
            readiness_route: {{port: 8080, path: /v2/health/ready}}
            scoring_route: {{port: 8080, path: /score}}
        code_configuration:
          code: ./code
          scoring_script: score.py
        environment_variables:
          MLDEPLOY_MODEL_SHA256: {sha256}
        instance_type: Standard_DS3_v2
        instance_count: 1
        """))

    r = run_driver("azure", sdk_venvs, AZURE_DRIVER,
                   {"endpoint": endpoint, "deployment_yaml": str(work / "deployment.yml")},
                   tmp_path, docker_env, docker_client, capsys)

    assert r["state"] == "Succeeded", r["state"]
    assert r["liveness"][0] == 200 and r["readiness"][0] == 200, (r["liveness"], r["readiness"])
    want = artifact_probs(ROWS)
    answers = {key: json.loads(r[key]) for key in ("data", "instances")}
    assert set(answers["instances"]) == {"predictions"}, answers["instances"]
    assert_probs(answers["instances"]["predictions"], want, "Azure ML invoke {'instances': ...}")
    # Azure's own form: the answer key is the server's choice ("outputs" today); the numbers are not.
    assert len(answers["data"]) == 1 and set(answers["data"]) <= {"outputs", "predictions"}, answers["data"]
    assert_probs(next(iter(answers["data"].values())), want, "Azure ML invoke {'data': ...}")
    bundle = starting_line(r["logs"])["bundle"]
    assert bundle.startswith("/var/azureml-app/azureml-models/") and bundle.endswith("/linear"), bundle
    assert_verified(r["logs"], sha256)
