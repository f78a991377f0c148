"""SageMaker's monitoring: Model Monitor (data quality) of an endpoint, and reading its data capture.

    s3://<prefix>/baseline/<hash>/statistics.json, constraints.json, preprocessor.py   (from our baseline)
    data-quality job definition <endpoint>-dq-<hash of its spec>     (immutable: a new spec is a new name)
    monitoring schedule <endpoint>-data-quality                      (created, or updated to the new definition)
    (alarms and SNS: deploy/aws_alarms.py)

Data capture is the deploy's business (deploy.aws.sagemaker.data_capture_*): setup checks it is on and
says what to change if not; it never redeploys an endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mldeploy.deploy.aws import client, error_code, resource_name, tag_list, tags, translated
from mldeploy.errors import UsageError

if TYPE_CHECKING:
    from mldeploy.bundle import Signature
    from mldeploy.config import Config, DriftSection
from mldeploy.monitor.captured import Mismatch, loads, tensor, tensors
from mldeploy.monitor.setup import SetupPlan, cron_hours, load_baseline

# The region's SageMaker Model Monitor analyzer image (sagemaker-python-sdk image_uri_config/model-monitor.json).
ANALYZER_ACCOUNTS = {
    "eu-north-1": "895015795356", "me-south-1": "607024016150", "ap-south-1": "126357580389",
    "us-east-2": "777275614652", "eu-west-1": "468650794304", "eu-central-1": "048819808253",
    "sa-east-1": "539772159869", "ap-east-1": "001633400207", "us-east-1": "156813124566",
    "ap-northeast-2": "709848358524", "eu-west-2": "749857270468", "eu-west-3": "680080141114",
    "ap-northeast-1": "574779866223", "us-west-2": "159807026194", "us-west-1": "890145073186",
    "ap-southeast-1": "245545462676", "ap-southeast-2": "563025443158", "ca-central-1": "536280801234",
    "cn-north-1": "453000072557", "cn-northwest-1": "453252182341"}
KLL_PARAMETERS = {"c": 0.64, "k": 2048.0}   # what Model Monitor's own baselining job writes
JOB_INSTANCE = {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 20}
PREPROCESSOR = Path(__file__).with_name("sagemaker_preprocessor.py")


# -- our baseline -> SageMaker's statistics.json and constraints.json -------------------------------------
def _integer_categories(categories: dict[str, float]) -> dict[int, float] | None:
    try:
        return {int(k): v for k, v in categories.items() if k != "__other__"} if "__other__" not in categories else None
    except ValueError:
        return None


def _numbers(f: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(inferred_type, numerical_statistics) of a numeric feature, or of a categorical one whose
    categories are all integers (the capture holds them as numbers, so Model Monitor infers Integral)."""
    present = f["count"] - f["missing"]
    common = {"num_present": present, "num_missing": f["missing"]}
    if f["kind"] == "categorical":
        freq = _integer_categories(f["categories"])
        assert freq is not None  # statistics() sends only categories that are all integers
        mean = sum(v * p for v, p in freq.items())
        std = math.sqrt(max(sum(p * (v - mean) ** 2 for v, p in freq.items()), 0.0))
        buckets = [{"lower_bound": v - 0.5, "upper_bound": v + 0.5, "count": round(p * present)}
                   for v, p in sorted(freq.items())]
        stats = {"common": common, "mean": mean, "sum": mean * present, "std_dev": std,
                 "min": float(min(freq)), "max": float(max(freq)), "distribution": {"kll": {"buckets": buckets}}}
        return "Integral", stats
    edges, counts = f["histogram"]["edges"], f["histogram"]["counts"]
    buckets = [{"lower_bound": edges[i], "upper_bound": edges[i + 1], "count": counts[i]} for i in range(len(counts))]
    sample = sorted(f.get("sample") or [])
    kll: dict[str, Any] = {"buckets": buckets}
    if sample:  # a KLL sketch whose one full level holds the sample; its weight 2^level stands for the records
        level = max(0, round(math.log2(max(present, 1) / len(sample))))
        kll["sketch"] = {"parameters": KLL_PARAMETERS, "data": [[] for _ in range(level)] + [sample]}
    integral = bool(sample) and all(float(v).is_integer() for v in sample) and float(f["min"]).is_integer()
    stats = {"common": common, "mean": f["mean"], "sum": f["mean"] * present, "std_dev": f["std"],
             "min": f["min"], "max": f["max"], "distribution": {"kll": kll}}
    return ("Integral" if integral else "Fractional"), stats


def statistics(baseline: dict[str, Any]) -> dict[str, Any]:
    """Model Monitor's statistics.json for the baseline's input features."""
    features = []
    for f in baseline["features"]:
        if f["kind"] == "numeric" or _integer_categories(f["categories"]):
            kind, stats = _numbers(f)
            features.append({"name": f["name"], "inferred_type": kind, "numerical_statistics": stats})
        else:
            present = f["count"] - f["missing"]
            buckets = [{"value": v, "count": round(p * present)} for v, p in f["categories"].items()]
            features.append({"name": f["name"], "inferred_type": "String", "string_statistics": {
                "common": {"num_present": present, "num_missing": f["missing"]},
                "distinct_count": float(len(f["categories"])), "distribution": {"categorical": {"buckets": buckets}}}})
    return {"version": 0.0, "dataset": {"item_count": baseline["records"]}, "features": features}


def constraints(baseline: dict[str, Any], drift: DriftSection) -> dict[str, Any]:
    """Model Monitor's constraints.json: each feature's type, completeness and range rules, and the
    distribution comparison at monitoring.drift.jensen_shannon."""
    features = []
    for f, stat in zip(baseline["features"], statistics(baseline)["features"]):
        entry: dict[str, Any] = {"name": f["name"], "inferred_type": stat["inferred_type"],
                                 "completeness": (f["count"] - f["missing"]) / f["count"] if f["count"] else 1.0}
        if "numerical_statistics" in stat:
            entry["num_constraints"] = {"is_non_negative": stat["numerical_statistics"]["min"] >= 0}
        elif "__other__" not in f["categories"]:  # every value seen is listed: anything else is out of domain
            entry["string_constraints"] = {"domains": sorted(f["categories"])}
        features.append(entry)
    return {"version": 0.0, "features": features, "monitoring_config": {
        "evaluate_constraints": "Enabled", "emit_metrics": "Enabled", "datatype_check_threshold": 1.0,
        "domain_content_threshold": 1.0,
        "distribution_constraints": {"perform_comparison": "Enabled", "comparison_threshold": drift.jensen_shannon,
                                     "comparison_method": "Robust"}}}


def schedule_expression(schedule: str) -> str:
    """monitoring.drift.schedule (cron) as SageMaker's cron(...): hourly, every N hours, or daily."""
    hours, at = cron_hours(schedule)
    if at is not None:
        return f"cron(0 {at} ? * * *)"
    return "cron(0 * ? * * *)" if hours == 1 else f"cron(0 0/{hours} ? * * *)"


def analyzer_image(region: str) -> str:
    if region not in ANALYZER_ACCOUNTS:
        raise UsageError(f"SageMaker Model Monitor has no analyzer image in {region}",
                         hint=f"regions with one: {', '.join(sorted(ANALYZER_ACCOUNTS))}")
    suffix = ".com.cn" if region.startswith("cn-") else ".com"
    return f"{ANALYZER_ACCOUNTS[region]}.dkr.ecr.{region}.amazonaws{suffix}/sagemaker-model-monitor-analyzer"


def _s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


# -- Model Monitor -------------------------------------------------------------------------------------
def model_monitor(cfg: Config, endpoint: str, region: str, result: SetupPlan) -> None:
    sm = client("sagemaker", region)
    with translated(f"describe the SageMaker endpoint {endpoint}"):
        try:
            ep = sm.describe_endpoint(EndpointName=endpoint)
        except sm.exceptions.ClientError as e:
            if error_code(e) == "ValidationException":
                raise UsageError(f"the SageMaker endpoint {endpoint} does not exist",
                                 hint="deploy it first (`mldeploy deploy`)") from None
            raise
    capture = ep.get("DataCaptureConfig") or {}
    if not capture.get("EnableCapture"):
        result.notes.append(f"data capture is off on {endpoint}, so Model Monitor has nothing to read: set "
                            "deploy.aws.sagemaker.data_capture_percent (e.g. 10) and data_capture_s3, deploy again, "
                            "then run setup again (setup never redeploys an endpoint); Model Monitor left out")
        return
    baseline = load_baseline(cfg)
    if baseline is None:
        result.notes.append("no baseline (monitoring.baseline, or baseline.json in the bundle): run `mldeploy monitor "
                            "baseline` and setup again; Model Monitor left out")
        return
    prefix = (cfg.monitoring.s3 or "s3://{}/mldeploy-monitoring/{}".format(
        _s3(capture["DestinationS3Uri"])[0], endpoint)).rstrip("/")
    files = {"statistics.json": json.dumps(statistics(baseline), indent=1).encode(),
             "constraints.json": json.dumps(constraints(baseline, cfg.monitoring.drift), indent=1).encode(),
             "preprocessor.py": PREPROCESSOR.read_bytes()}
    version = hashlib.sha256(b"".join(files.values())).hexdigest()[:12]
    uris = {f: f"{prefix}/baseline/{version}/{f}" for f in files}
    s3 = client("s3", region)
    for file, uri in uris.items():
        bucket, key = _s3(uri)
        with translated(f"look up {uri}"):
            try:
                s3.head_object(Bucket=bucket, Key=key)
                continue
            except s3.exceptions.ClientError as e:
                if error_code(e) not in ("404", "NoSuchKey", "NotFound"):
                    raise
        def put(b: str = bucket, k: str = key, f: str = file) -> None:
            _put(s3, b, k, files[f])
        result.add("create", f"s3 object {uri}", put)

    spec = {
        "DataQualityBaselineConfig": {"ConstraintsResource": {"S3Uri": uris["constraints.json"]},
                                      "StatisticsResource": {"S3Uri": uris["statistics.json"]}},
        "DataQualityAppSpecification": {"ImageUri": analyzer_image(region),
                                        "RecordPreprocessorSourceUri": uris["preprocessor.py"],
                                        "Environment": {"publish_cloudwatch_metrics": "Enabled"}},
        "DataQualityJobInput": {"EndpointInput": {"EndpointName": endpoint, "LocalPath": "/opt/ml/processing/input",
                                                  "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated"}},
        "DataQualityJobOutputConfig": {"MonitoringOutputs": [{"S3Output": {
            "S3Uri": f"{prefix}/reports", "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}]},
        "JobResources": {"ClusterConfig": JOB_INSTANCE},
        "RoleArn": cfg.deploy.aws.role,
        "StoppingCondition": {"MaxRuntimeInSeconds": 1800},
    }
    definition = resource_name(endpoint, "dq", hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12])
    if not _exists(sm, "describe_data_quality_job_definition", JobDefinitionName=definition):
        result.add("create", f"sagemaker data-quality job definition {definition}", lambda: _call(
            sm, "create_data_quality_job_definition", f"create the job definition {definition}",
            JobDefinitionName=definition, Tags=tag_list(tags(endpoint)), **spec), "baseline", new=version)

    schedule = resource_name(endpoint, "data-quality")
    config: dict[str, Any] = {"ScheduleConfig": {"ScheduleExpression": schedule_expression(cfg.monitoring.drift.schedule)},
              "MonitoringJobDefinitionName": definition, "MonitoringType": "DataQuality"}
    current = _exists(sm, "describe_monitoring_schedule", MonitoringScheduleName=schedule)
    if not current:
        result.add("create", f"sagemaker monitoring schedule {schedule}", lambda: _call(
            sm, "create_monitoring_schedule", f"create the monitoring schedule {schedule}",
            MonitoringScheduleName=schedule, MonitoringScheduleConfig=config, Tags=tag_list(tags(endpoint))),
            "schedule", new=config["ScheduleConfig"]["ScheduleExpression"])
    else:
        old = current["MonitoringScheduleConfig"]
        for key, label in (("MonitoringJobDefinitionName", "job definition"), ("ScheduleConfig", "schedule")):
            if old.get(key) != config[key]:
                result.add("update", f"sagemaker monitoring schedule {schedule}", lambda: _call(
                    sm, "update_monitoring_schedule", f"update the monitoring schedule {schedule}",
                    MonitoringScheduleName=schedule, MonitoringScheduleConfig=config), label, old.get(key), config[key])
                break
        superseded = old.get("MonitoringJobDefinitionName") or ""
        if superseded != definition and superseded.startswith(resource_name(endpoint, "dq") + "-"):  # ours, now unused
            result.add("delete", f"sagemaker data-quality job definition {superseded}", lambda: _call(
                sm, "delete_data_quality_job_definition", f"delete the job definition {superseded}",
                JobDefinitionName=superseded))
    result.outputs |= {"monitoring-schedule": schedule, "job-definition": definition, "baseline-s3": prefix}


def _put(s3: Any, bucket: str, key: str, body: bytes) -> None:
    with translated(f"upload s3://{bucket}/{key}"):
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def _call(api: Any, call: str, doing: str, **kwargs: Any) -> Any:
    with translated(doing):
        return getattr(api, call)(**kwargs)


def _exists(sm: Any, call: str, **kwargs: str) -> dict[str, Any] | None:
    """The description, or None when SageMaker knows no such resource."""
    with translated(f"{call.replace('_', ' ')} {next(iter(kwargs.values()))}"):
        try:
            return getattr(sm, call)(**kwargs)
        except sm.exceptions.ClientError as e:
            if error_code(e) in ("ValidationException", "ResourceNotFound"):
                return None
            raise


# -- data capture ----------------------------------------------------------------------------------------
class CapturedRecords:
    """SageMaker data-capture records ({"captureData": {"endpointInput": {"data", "encoding", ...},
    "endpointOutput": ...}, "eventMetadata": ...}, written to S3 when an endpoint's DataCaptureConfig is on): the
    request body decoded as the server decodes it (so every body form the server accepts is read), the response
    body as the server writes it."""

    kind = "sagemaker"

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self._model: Any = None

    @staticmethod
    def matches(doc: dict[str, Any]) -> bool:
        return "captureData" in doc

    def model(self) -> Any:
        if self._model is None:
            try:
                from mldeploy.serve.model import Model
            except ImportError as e:  # pragma: no cover - depends on the extras installed
                raise UsageError(f"reading SageMaker data capture needs the serve extra ({e})",
                                 hint="pip install 'mldeploy[serve]'") from None
            self._model = Model(self.signature, "", False, 0.0)  # a signature only: nothing runs
        return self._model

    def record(self, doc: dict[str, Any], dtypes: dict[str, np.dtype]) -> tuple[Any, Any, Any]:
        from mldeploy.serve import codec

        data = doc.get("captureData")
        if not isinstance(data, dict) or not isinstance(request := data.get("endpointInput"), dict):
            raise Mismatch("SageMaker record without captureData.endpointInput")
        body, ctype = body_of(request)
        try:
            feeds = codec.decode(body, ctype, "", self.model(), allow_nonfinite=True).feeds
        except codec.BadRequest as e:
            raise Mismatch(f"request body: {e.message}") from None
        response = data.get("endpointOutput")
        outputs = self._outputs(response, dtypes) if isinstance(response, dict) else None
        meta = doc.get("eventMetadata")
        return feeds, outputs, meta.get("inferenceTime") if isinstance(meta, dict) else None

    def _outputs(self, response: dict[str, Any], dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray] | None:
        """Outputs from the server's answer: {"predictions"}, {"outputs"} (columnar or v2), CSV."""
        specs = self.signature.outputs
        body, ctype = body_of(response)
        if ctype.startswith("text/csv"):
            spec = specs[0]
            if len(specs) != 1 or len(spec.shape) not in (1, 2):
                return None
            try:
                table = np.loadtxt(body.decode().splitlines(), delimiter=",", ndmin=2)
            except (ValueError, UnicodeDecodeError):
                raise Mismatch("response body: not CSV numbers") from None
            table = table[:, 0] if len(spec.shape) == 1 else table
            return {spec.name: tensor(table, spec, dtypes[spec.name], "output")}
        try:
            doc = loads(body)
        except ValueError:
            raise Mismatch("response body: not JSON") from None
        named: dict = {}
        value = doc.get("predictions", doc.get("outputs")) if isinstance(doc, dict) else doc
        if isinstance(value, list) and value and all(isinstance(t, dict) and "datatype" in t for t in value):  # v2
            for t in value:
                try:
                    dtype = dtypes.get(t["name"], np.float64)
                    named[t["name"]] = np.asarray(t["data"], dtype=dtype).reshape(t["shape"])
                except (KeyError, ValueError, TypeError):
                    raise Mismatch("response body: a malformed v2 output tensor") from None
        elif isinstance(value, dict):
            named = value
        elif isinstance(value, list) and value and all(isinstance(r, dict) for r in value):  # one object per row
            named = {t.name: [r.get(t.name) for r in value] for t in specs}
        elif value is not None and len(specs) == 1:
            named = {specs[0].name: value}
        else:
            return None
        return tensors(named, specs, dtypes, "output", self.signature.batch_dim)


def body_of(part: dict[str, Any]) -> tuple[bytes, str]:
    data, encoding = part.get("data", ""), str(part.get("encoding", "")).upper()
    if not isinstance(data, str):
        raise Mismatch("SageMaker record whose data is not a string")
    try:
        body = base64.b64decode(data, validate=True) if encoding == "BASE64" else data.encode()
    except ValueError:
        raise Mismatch("SageMaker record whose BASE64 data does not decode") from None
    return body, str(part.get("observedContentType") or "application/json").lower()


# -- canary analysis: the predictions each variant captured ----------------------------------------
def variant_predictions(source: str, since: float, region: str | None) -> list[Any]:
    """The predictions in one variant's data capture (s3://.../ENDPOINT/VARIANT/) since `since` (Unix
    time), read from the responses as the server wrote them; files last written before `since` are
    not read. Capture reaches S3 a few minutes late, so the newest requests may be missing."""
    import datetime as dt

    from mldeploy.monitor.canary import prediction_values
    from mldeploy.monitor.captured import objects

    records = []
    for _, modified, data in objects(source, region):
        if modified < since:
            break  # newest first: every file after this one is older still
        for line in data.splitlines():
            try:
                doc = json.loads(line)
                when = dt.datetime.fromisoformat(doc["eventMetadata"]["inferenceTime"]).timestamp()
                if when >= since:
                    records.append({"outputs": _response_outputs(doc["captureData"]["endpointOutput"])})
            except (ValueError, KeyError, TypeError, Mismatch):
                continue  # not a record with a readable JSON answer (drift reports those; here they just don't count)
    return prediction_values(records)


def _response_outputs(part: dict[str, Any]) -> Any:
    """{output: rows} from a captured answer of the serving runtime ({"predictions"}, {"outputs"}
    columnar or Open Inference Protocol v2)."""
    body = json.loads(body_of(part)[0])
    value = body.get("predictions", body.get("outputs")) if isinstance(body, dict) else body
    if isinstance(value, list) and value and all(isinstance(t, dict) and "datatype" in t for t in value):  # v2
        return {t["name"]: _reshaped(t["data"], t["shape"]) for t in value}
    return value if isinstance(value, dict) else {"predictions": value}


def _reshaped(flat: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_reshaped(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]
