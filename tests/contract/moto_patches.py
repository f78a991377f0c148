"""Small patches to moto 5.2 for what it does not do, applied in the test process.

ThreadedMotoServer runs in this process, so patching moto's classes here changes what the HTTP
server answers. Each patch imitates AWS's documented behaviour only as far as the tests need:
- SageMaker UpdateEndpoint (not implemented by moto): switch the endpoint to the new config; if a
  model of the new config is marked failing, keep the old config and set FailureReason, as
  SageMaker does when new variants fail their health checks (it rolls the update back by itself).
- Throttling: the next N calls of an operation answer ThrottlingException, to test retries.
- STS AssumeRoleWithWebIdentity refused (moto accepts any token), as AWS refuses a GitHub OIDC
  token whose sub or aud claim the role's trust policy does not match.
"""

from __future__ import annotations

import json
from collections import defaultdict

from moto.core.responses import ActionResult
from moto.sagemaker.exceptions import ValidationError
from moto.sagemaker.responses import SageMakerResponse
from moto.sts.exceptions import STSClientError
from moto.sts.responses import TokenResponse

FAILING_IMAGES: set[str] = set()             # images whose containers "fail their health check"
UPDATE_REQUESTS: list[dict] = []             # UpdateEndpoint bodies as the server received them
THROTTLE: dict[str, int] = defaultdict(int)  # operation (SageMaker action name) -> throttled calls left
REFUSE_WEB_IDENTITY = {"on": False}


def reset() -> None:
    FAILING_IMAGES.clear()
    UPDATE_REQUESTS.clear()
    THROTTLE.clear()
    REFUSE_WEB_IDENTITY["on"] = False


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
