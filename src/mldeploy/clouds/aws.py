"""AWS clients and errors for every module that calls AWS: the deploy targets (mldeploy.deploy.aws
re-exports these) and the model artifacts in S3 (mldeploy.artifacts.s3, which the serving runtime runs).

Credentials come from boto3's standard chain (in GitHub Actions: OIDC through
aws-actions/configure-aws-credentials; on a platform, its role). `AWS_ENDPOINT_URL` (boto3's own
setting) points every client elsewhere, which is how the tests reach moto. boto3 is imported only
inside functions.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

from mldeploy import __version__
from mldeploy.errors import CheckFailed, UsageError, one_line

# Throttling and transient errors are retried with exponential backoff and client-side rate limiting.
RETRIES = {"max_attempts": int(os.environ.get("MLDEPLOY_AWS_MAX_ATTEMPTS", "10")), "mode": "adaptive"}
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnrecognizedClientException",
          "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException", "InvalidIdentityToken"}
CREDENTIALS_HINT = ("in GitHub Actions, use aws-actions/configure-aws-credentials with role-to-assume "
                    "(OIDC, permissions: id-token: write); locally, AWS_PROFILE or `aws sso login`")


@functools.cache
def _data_loader() -> Any:
    import botocore.loaders

    return botocore.loaders.create_loader()


def client(service: str, region: str | None) -> Any:
    """A client from the standard credential chain, as it stands now (a fresh session each time);
    the service models are parsed once per process (parsing is most of a client's cost)."""
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.get_session()
    core.register_component("data_loader", _data_loader())
    session = boto3.session.Session(region_name=region, botocore_session=core)
    if not session.region_name:
        raise UsageError("no AWS region is set", hint="set deploy.region in mldeploy.yaml or AWS_REGION")
    return session.client(service, config=Config(retries=RETRIES, user_agent_extra=f"mldeploy/{__version__}"))


def error_code(err: Exception) -> str:
    return getattr(err, "response", {}).get("Error", {}).get("Code", "")


@contextlib.contextmanager
def translated(doing: str) -> Iterator[None]:
    """Turn botocore's errors into one line naming what we were doing and what to do."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )
    from botocore.parsers import ResponseParserError

    try:
        yield
    except NoCredentialsError:
        raise UsageError(f"no AWS credentials while trying to {doing}", hint=CREDENTIALS_HINT) from None
    except NoRegionError:
        raise UsageError("no AWS region is set", hint="set deploy.region in mldeploy.yaml or AWS_REGION") from None
    except EndpointConnectionError as e:
        raise CheckFailed(f"cannot reach AWS to {doing}: {e}", hint="check the network and the region") from None
    except ClientError as e:
        code, message = error_code(e), e.response.get("Error", {}).get("Message", "")
        if code in DENIED:
            raise UsageError(f"AWS refused to {doing} ({code}): {message}",
                             hint="the deploy role lacks a permission: see the role policy in docs/clouds/aws.md; "
                                  "`mldeploy doctor --cloud aws` checks them") from None
        if code in ("ValidationException", "InvalidParameterValueException", "ResourceNotFoundException"):
            raise UsageError(f"AWS rejected the request to {doing}: {message}") from None
        raise CheckFailed(f"AWS could not {doing} ({code}): {message}") from None
    except BotoCoreError as e:
        raise CheckFailed(f"AWS could not {doing}: {e}") from None
    except ResponseParserError as e:  # a garbled answer (a proxy's error page): the cloud's failure, not ours
        raise CheckFailed(f"AWS could not {doing}: {one_line(e)}") from None
