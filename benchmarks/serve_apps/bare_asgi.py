"""The Python HTTP ceiling: a bare ASGI app, no framework, for granian.

    BENCH_MODEL=model.onnx granian --interface asgi --workers 2 --no-ws bare_asgi:app
"""

import orjson
from bare_model import predict

_JSON = [(b"content-type", b"application/json")]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/predict" and scope["method"] == "POST":
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        status, out = 200, predict(body)
    elif scope["path"] == "/v2/health/ready":
        status, out = 200, b"{}"
    else:
        status, out = 404, orjson.dumps({"error": "not found"})
    await send({"type": "http.response.start", "status": status, "headers": _JSON})
    await send({"type": "http.response.body", "body": out})
