"""Small patches to moto 5.2 for what it does not do, applied in the test process.

ThreadedMotoServer runs in this process, so patching moto's classes here changes what the HTTP
server answers. Each patch imitates AWS's documented behaviour only as far as the tests need:
- SageMaker UpdateEndpoint (not implemented by moto): switch the endpoint to the new config; if a
  model of the new config is marked failing, keep the old config and set FailureReason, as
  SageMaker does when new variants fail their health checks (it rolls the update back by itself).
- Throttling: the next N calls of an operation answer ThrottlingException, to test retries.
- Lambda UpdateAlias honours RevisionId (moto ignores it): a mismatch answers 412
  PreconditionFailedException, and every update gives the alias a new revision, as Lambda does.
- STS AssumeRoleWithWebIdentity refused (moto accepts any token), as AWS refuses a GitHub OIDC
  token whose sub or aud claim the role's trust policy does not match.
- CloudWatch GetMetricData: percentile statistics (p50, p99: moto answers none) over the raw values
  put, and a log of the requests for tests to assert on.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from urllib.parse import unquote

from moto.awslambda.exceptions import PreconditionFailedException
from moto.awslambda.responses import LambdaResponse
from moto.core.responses import ActionResult
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.responses import SageMakerResponse
from moto.sts.exceptions import STSClientError
from moto.sts.responses import TokenResponse

FAILING_IMAGES: set[str] = set()             # images whose containers "fail their health check"
UPDATE_REQUESTS: list[dict] = []             # UpdateEndpoint bodies as the server received them
THROTTLE: dict[str, int] = defaultdict(int)  # operation (SageMaker action name) -> throttled calls left
REFUSE_WEB_IDENTITY = {"on": False}
MONITORING_SCHEDULES: dict[str, dict] = {}   # name -> the schedule as DescribeMonitoringSchedule answers
ANOMALY_DETECTORS: list[dict] = []           # SingleMetricAnomalyDetector bodies
BODIES: list[tuple[str, str, dict]] = []     # (service, operation, parsed parameters) of every request
METRIC_DATA_REQUESTS: list[dict] = []       # CloudWatch GetMetricData requests, as moto parsed them


def reset() -> None:
    FAILING_IMAGES.clear()
    UPDATE_REQUESTS.clear()
    THROTTLE.clear()
    REFUSE_WEB_IDENTITY["on"] = False
    MONITORING_SCHEDULES.clear()
    ANOMALY_DETECTORS.clear()
    BODIES.clear()
    METRIC_DATA_REQUESTS.clear()


def _update_endpoint(self: SageMakerResponse) -> ActionResult:
    body = json.loads(self.body)
    UPDATE_REQUESTS.append(body)
    backend = self.sagemaker_backend
    endpoint = backend.endpoints.get(body["EndpointName"])
    if endpoint is None:
        raise ValidationError(message=f"Could not find endpoint \"{body['EndpointName']}\".")
    config = backend.describe_endpoint_config(body["EndpointConfigName"])
    failing = [v["VariantName"] for v in config["ProductionVariants"]
               if backend.describe_model(v["ModelName"]).primary_container["Image"] in FAILING_IMAGES]
    if failing:  # SageMaker rolls back to the previous config and says why
        endpoint.failure_reason = (f"The primary container for production variant {failing[0]} did not pass "
                                   "the ping health check.")
    else:
        endpoint.endpoint_config_name = body["EndpointConfigName"]
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        endpoint.data_capture_config = config["DataCaptureConfig"]
        endpoint.failure_reason = None
    return ActionResult({"EndpointArn": endpoint.arn})


_call_action = SageMakerResponse.call_action


def _throttled_call_action(self: SageMakerResponse):
    action = self._get_action()
    if THROTTLE.get(action, 0) > 0:  # answered as AWS does: 400 with the error type in the JSON body
        THROTTLE[action] -= 1
        return 400, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(
            {"__type": "ThrottlingException", "message": "Rate exceeded"})
    return _call_action(self)


_assume_role_with_web_identity = TokenResponse.assume_role_with_web_identity


def _refusing_assume_role_with_web_identity(self: TokenResponse) -> ActionResult:
    if REFUSE_WEB_IDENTITY["on"]:
        raise STSClientError("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
    return _assume_role_with_web_identity(self)


SageMakerResponse.update_endpoint = _update_endpoint
TokenResponse.assume_role_with_web_identity = _refusing_assume_role_with_web_identity
SageMakerResponse.call_action = _throttled_call_action


# -- CloudWatch: percentiles (moto answers None for p50/p99) and a log of GetMetricData requests ----
from moto.cloudwatch.models import CloudWatchBackend, MetricDatum, Statistics  # noqa: E402

_statistic = Statistics.get_statistics_for_type
_get_metric_data = CloudWatchBackend.get_metric_data


def _statistic_with_percentiles(self: Statistics, stat: str):
    """pNN over the raw values put in the period (nearest rank), as CloudWatch answers extended statistics."""
    if stat.startswith("p") and stat[1:].replace(".", "", 1).isdigit():
        values = sorted(m.value for m in self.metric_data if isinstance(m, MetricDatum))
        if not values:
            return None
        rank = max(1, -(-float(stat[1:]) * len(values) // 100))
        return values[int(rank) - 1]
    return _statistic(self, stat)


def _recorded_get_metric_data(self: CloudWatchBackend, queries, start_time, end_time, *args, **kwargs):
    METRIC_DATA_REQUESTS.append({"queries": queries, "start": start_time, "end": end_time})
    return _get_metric_data(self, queries, start_time, end_time, *args, **kwargs)


Statistics.get_statistics_for_type = _statistic_with_percentiles
CloudWatchBackend.get_metric_data = _recorded_get_metric_data


# -- monitoring: schedules, anomaly detectors, and the request-body log ----------------------------------
from moto.cloudwatch.responses import CloudWatchResponse  # noqa: E402
from moto.core.responses import BaseResponse  # noqa: E402


def _create_monitoring_schedule(self: SageMakerResponse) -> ActionResult:
    name = self._get_param("MonitoringScheduleName")
    if name in MONITORING_SCHEDULES:
        raise ValidationError(message=f"Monitoring schedule {name} already exists.")
    arn = f"arn:aws:sagemaker:{self.region}:{self.current_account}:monitoring-schedule/{name}"
    MONITORING_SCHEDULES[name] = {"MonitoringScheduleArn": arn, "MonitoringScheduleName": name,
                                  "MonitoringScheduleStatus": "Scheduled", "MonitoringType": "DataQuality",
                                  "MonitoringScheduleConfig": self._get_param("MonitoringScheduleConfig")}
    return ActionResult({"MonitoringScheduleArn": arn})


def _describe_monitoring_schedule(self: SageMakerResponse) -> ActionResult:
    name = self._get_param("MonitoringScheduleName")
    if name not in MONITORING_SCHEDULES:  # SageMaker's own words for a missing schedule
        raise ValidationError(message=f"Monitoring Schedule {name} not found.")
    return ActionResult(MONITORING_SCHEDULES[name])


def _update_monitoring_schedule(self: SageMakerResponse) -> ActionResult:
    name = self._get_param("MonitoringScheduleName")
    if name not in MONITORING_SCHEDULES:
        raise ValidationError(message=f"Monitoring Schedule {name} not found.")
    MONITORING_SCHEDULES[name]["MonitoringScheduleConfig"] = self._get_param("MonitoringScheduleConfig")
    return ActionResult({"MonitoringScheduleArn": MONITORING_SCHEDULES[name]["MonitoringScheduleArn"]})


def _put_anomaly_detector(self: CloudWatchResponse) -> ActionResult:
    detector = self._get_param("SingleMetricAnomalyDetector")
    if detector not in ANOMALY_DETECTORS:
        ANOMALY_DETECTORS.append(detector)
    return ActionResult({})


def _describe_anomaly_detectors(self: CloudWatchResponse) -> ActionResult:
    wanted = {k: self._get_param(k) for k in ("Namespace", "MetricName", "Dimensions") if self._get_param(k)}
    found = [{**d, "SingleMetricAnomalyDetector": d, "StateValue": "TRAINED"} for d in ANOMALY_DETECTORS
             if all(d.get(k) == v for k, v in wanted.items())]
    return ActionResult({"AnomalyDetectors": found})


def _update_alias(self: LambdaResponse):
    function_name = unquote(self.path.rsplit("/")[-3])
    alias = self.backend.get_alias(unquote(self.path.rsplit("/", 2)[-1]), function_name)
    expected = json.loads(self.body).get("RevisionId")
    if expected and expected != alias.revision_id:
        raise PreconditionFailedException("The Revision Id provided does not match the latest Revision Id. Call "
                                          "the GetAlias API to retrieve the latest Revision Id")
    answer = _moto_update_alias(self)
    alias.revision_id = str(uuid.uuid4())
    return answer[0], answer[1], json.dumps(alias.to_json())


def _recording(call):
    def record(self: BaseResponse):
        params = getattr(self, "params", None)
        if params is None:
            try:
                params = json.loads(self.body or "{}")
            except (ValueError, TypeError):
                params = {}
        try:
            action = self._get_action()
        except Exception:
            action = ""
        BODIES.append((self.service_name, action, params))
        return call(self)
    return record


_moto_update_alias = LambdaResponse.update_alias
LambdaResponse.update_alias = _update_alias
SageMakerResponse.create_monitoring_schedule = _create_monitoring_schedule
SageMakerResponse.describe_monitoring_schedule = _describe_monitoring_schedule
SageMakerResponse.update_monitoring_schedule = _update_monitoring_schedule
CloudWatchResponse.put_anomaly_detector = _put_anomaly_detector
CloudWatchResponse.describe_anomaly_detectors = _describe_anomaly_detectors
BaseResponse.call_action = _recording(BaseResponse.call_action)
SageMakerResponse.call_action = _recording(SageMakerResponse.call_action)
