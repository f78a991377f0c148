"""A second ceiling: the same app on granian's own interface (RSGI), which skips ASGI's messages.

    BENCH_MODEL=model.onnx granian --interface rsgi --workers 2 --no-ws bare_rsgi:app
"""

from bare_model import predict

_JSON = [("content-type", "application/json")]


async def app(scope, protocol):
    if scope.path == "/predict" and scope.method == "POST":
        protocol.response_bytes(200, _JSON, predict(await protocol()))
    elif scope.path == "/v2/health/ready":
        protocol.response_bytes(200, _JSON, b"{}")
    else:
        protocol.response_bytes(404, _JSON, b'{"error": "not found"}')
