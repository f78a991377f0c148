"""The image's HEALTHCHECK: exit 0 when this container's server says it is ready.

It finds the port the way the server does (AIP_HTTP_PORT, SAGEMAKER_BIND_TO_PORT, PORT, 8080) and
imports nothing heavy, so it costs a few milliseconds every interval.
"""

import os
import sys
import urllib.request

port = next((os.environ[v] for v in ("AIP_HTTP_PORT", "SAGEMAKER_BIND_TO_PORT", "PORT") if os.environ.get(v)), "8080")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except OSError:
    sys.exit(1)
