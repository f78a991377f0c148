"""Fault injection for the cloud fakes and moto's server: a call fails the way a cloud's API fails.

`rules` maps a call ("METHOD /path", or an AWS operation name) to [kind, skip, times]: after `skip`
requests of that call pass, the next `times` fail as `kind` says - "500" (an internal error),
"throttle" (429, or AWS's ThrottlingException), "drop" (the connection closed with no answer) or
"kill" (the client process `victim` is SIGKILLed first, as a runner that died, then a 500) or "race"
(`race` runs first, another command to its end, and then the request goes on as if nothing happened).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable


class Faults:
    def __init__(self) -> None:
        self.rules: dict[str, list] = {}
        self.victim: int | None = None
        self.race: Callable[[], None] | None = None

    def take(self, call: str) -> str | None:
        """The fault this request of `call` meets, if any (and it counts)."""
        rule = self.rules.get(call)
        if not rule or not (rule[1] or rule[2]):
            return None
        if rule[1]:
            rule[1] -= 1
            return None
        rule[2] -= 1
        if rule[0] == "kill" and self.victim:
            os.kill(self.victim, signal.SIGKILL)
        if rule[0] == "race" and self.race:
            self.race()
            return None
        return rule[0]


def fail(handler, kind: str, body: bytes) -> None:
    """Answer an http.server handler's request as the fault says (body: the cloud's error JSON)."""
    if kind == "drop":
        handler.connection.shutdown(socket.SHUT_RDWR)
        handler.close_connection = True
        return
    handler.send_response(429 if kind == "throttle" else 500)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    if kind == "throttle":
        handler.send_header("Retry-After", "0")
    handler.end_headers()
    handler.wfile.write(body)


def drop(environ) -> None:
    """Close a WSGI request's connection with no answer (werkzeug's server)."""
    environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
