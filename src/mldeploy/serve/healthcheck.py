"""The image's HEALTHCHECK: exit 0 when this container's server says it is ready.

A server that will never be ready (its model could not be had) says why in its 503; that reason is
printed as `final: <reason>`, so a deploy waiting on this check stops at once (exit 1 still: Docker
reserves 2).

It finds the port the way the server does (AIP_HTTP_PORT, SAGEMAKER_BIND_TO_PORT, PORT, 8080) and
imports nothing heavy, so it costs a few milliseconds every interval.
"""

import json
import os
import sys
import urllib.error
import urllib.request

port = next((os.environ[v] for v in ("AIP_HTTP_PORT", "SAGEMAKER_BIND_TO_PORT", "PORT") if os.environ.get(v)), "8080")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except urllib.error.HTTPError as e:
    try:
        answer = json.loads(e.read())
    except (OSError, ValueError):
        answer = {}
    if isinstance(answer, dict) and answer.get("final"):
        print(f"final: {answer.get('error')}")
    sys.exit(1)
except OSError:
    sys.exit(1)
