"""Small patches to moto 5.2's Lambda for what it does not do, applied in the test process.

ThreadedMotoServer runs in this process, so patching moto's classes here changes what the HTTP
server answers. Each patch imitates AWS's documented behaviour only as far as the tests need:
- Invoke of a PackageType=Image function (moto would start it in Docker): OUR handler,
  mldeploy.serve.lambda_.handle, runs on the test bundle (BUNDLE) with the function's environment,
  as the serving image would on Lambda (with MLDEPLOY_MODEL_URI in it, as the model-free runtime
  image: no bundle, the handler downloads the artifact); an image in FAILING_IMAGES answers like a function that
  crashed (X-Amz-Function-Error: Unhandled).
- Invoke ?Qualifier=N: moto reads a lower-case `qualifier` and so always ran $LATEST.
- PublishVersion: moto's version shared its code dict with $LATEST, so a later UpdateFunctionCode
  changed the image of every published version too; here a version keeps its own.
- An image in FAILED_IMAGES never becomes Active: its functions and versions read State Failed
  (StateReasonCode InvalidImage), as Lambda reports an image it cannot start.
- Get/Put/DeleteProvisionedConcurrencyConfig (not in moto): stored per function and qualifier, READY
  at once.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from moto.awslambda import urls
from moto.awslambda.models import LambdaFunction, LambdaStorage
from moto.awslambda.responses import LambdaResponse

BUNDLE: list[Path] = []                      # the bundle the "image" serves (set by the test fixture)
FAILING_IMAGES: set[str] = set()             # images whose functions crash on every invoke
FAILED_IMAGES: set[str] = set()              # images whose functions never become Active
INVOCATIONS: list[tuple[str, str, object]] = []   # (version, image, event) per invoke
PROVISIONED: dict[tuple[str, str], int] = {}      # (function, qualifier) -> environments
_lock = threading.Lock()


def reset(bundle: Path) -> None:
    BUNDLE[:] = [bundle]
    FAILING_IMAGES.clear()
    FAILED_IMAGES.clear()
    INVOCATIONS.clear()
    PROVISIONED.clear()


def _run_handler(fn: LambdaFunction, event: object) -> tuple[bytes, str | None]:
    """The serving image's handler with the function's environment; (payload, function error)."""
    from mldeploy.serve import lambda_ as handler

    env = dict(fn.environment_vars)
    if "MLDEPLOY_MODEL_URI" not in env:  # a baked image's bundle; image.model: storage's runtime image has none
        env["MLDEPLOY_BUNDLE"] = str(BUNDLE[0])
    with _lock:  # the handler reads os.environ: set it for this invoke only, one invoke at a time
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        handler._loaded = None  # a new execution environment for every invoke: its own env, fresh load
        try:
            return json.dumps(handler.handle(event, None)).encode(), None
        except Exception as e:
            return json.dumps({"errorMessage": str(e), "errorType": type(e).__name__}).encode(), "Unhandled"
        finally:
            handler._loaded = None
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


_invoke = LambdaFunction.invoke


def _image_invoke(self: LambdaFunction, body: str, request_headers, response_headers) -> str | bytes:
    if self.package_type != "Image":
        return _invoke(self, body, request_headers, response_headers)
    image = self.code["ImageUri"]
    event = json.loads(body) if body else {}
    INVOCATIONS.append((str(self.version), image, event))
    if image in FAILING_IMAGES:
        payload, error = json.dumps({"errorMessage": "RequestId: 1 Error: Runtime exited with error: exit status 2",
                                     "errorType": "Runtime.ExitError"}).encode(), "Unhandled"
    else:
        payload, error = _run_handler(self, event)
    if error:
        response_headers["x-amz-function-error"] = error
    return payload


_response_invoke = LambdaResponse.invoke


def _qualified_invoke(self: LambdaResponse):
    if "Qualifier" in self.querystring:
        self.querystring["qualifier"] = self.querystring["Qualifier"]
    return _response_invoke(self)


_publish_version = LambdaStorage.publish_version


def _publish_own_code(self: LambdaStorage, name_or_arn: str, description: str = ""):
    version = _publish_version(self, name_or_arn, description)
    if version is not None:
        version.code = dict(version.code)
    return version


def _provisioned(self: LambdaResponse):
    function = self.path.split("/")[-2]
    qualifier = self.querystring.get("Qualifier", ["$LATEST"])[0]
    self.backend.get_function(function, qualifier)  # ResourceNotFoundException as AWS answers
    key = (function, qualifier)
    if self.method == "PUT":
        PROVISIONED[key] = int(json.loads(self.body)["ProvisionedConcurrentExecutions"])
    elif self.method == "DELETE":
        PROVISIONED.pop(key, None)
        return 204, {"status": 204}, ""
    if key not in PROVISIONED:
        return 404, {"status": 404, "x-amzn-errortype": "ProvisionedConcurrencyConfigNotFoundException"}, json.dumps(
            {"Type": "User", "message": "No Provisioned Concurrency Config found for this function"})
    n, status = PROVISIONED[key], 202 if self.method == "PUT" else 200
    return status, {"status": status}, json.dumps({
        "RequestedProvisionedConcurrentExecutions": n, "AvailableProvisionedConcurrentExecutions": n,
        "AllocatedProvisionedConcurrentExecutions": n, "Status": "READY", "LastModified": "2026-01-01T00:00:00+0000"})


LambdaFunction.invoke = _image_invoke
LambdaResponse.invoke = _qualified_invoke
LambdaStorage.publish_version = _publish_own_code
LambdaResponse.get_provisioned_concurrency_config = _provisioned
LambdaResponse.put_provisioned_concurrency_config = _provisioned
LambdaResponse.delete_provisioned_concurrency_config = _provisioned
# the Flask app of the Lambda service is made from these paths on its first request (after collection)
urls.url_paths[r"{0}/(?P<api_version>[^/]+)/functions/(?P<function_name>[\w_:%-]+)/provisioned-concurrency/?$"] = \
    LambdaResponse.dispatch


def _configuration(self: LambdaFunction, on_create: bool = False) -> dict:
    config = _moto_configuration(self, on_create)
    if self.code.get("ImageUri") in FAILED_IMAGES:
        config.update(State="Failed", StateReasonCode="InvalidImage",
                      StateReason="The image's entrypoint could not be started")
    return config


_moto_configuration = LambdaFunction.get_configuration
LambdaFunction.get_configuration = _configuration
