"""The local target's weighted router: one published port in front of the production and canary
containers, sending each request to a slot with probability proportional to its weight.

A local convenience only (clouds split traffic themselves). Standard library only, so it runs in
the serving image itself: `python -m mldeploy.deploy.router`. Routes are a JSON file
({"slots": {"production": {"addr": "IP:PORT", "weight": 80}, ...}}) that the deploy step uploads
into the container; it is re-read when it changes, so shifting traffic never restarts anything.
A request with `x-mldeploy-slot: NAME` goes to that slot whatever its weight (smoke tests, status);
every answer says where it went in `x-mldeploy-slot`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys

ROUTES = os.environ.get("MLDEPLOY_ROUTES", "/tmp/routes.json")
PORT = int(os.environ.get("PORT", "8080"))
MAX_HEADER = 64 * 1024


class Routes:
    def __init__(self, path: str):
        self.path = path
        self.mtime = None
        self.slots: dict[str, dict] = {}

    def current(self) -> dict[str, dict]:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            return self.slots
        if mtime != self.mtime:
            try:
                with open(self.path, encoding="utf-8") as f:
                    self.slots = json.load(f)["slots"]
                self.mtime = mtime
            except (OSError, ValueError, KeyError):
                pass  # half-written: keep the last good routes, read again next time
        return self.slots

    def pick(self, wanted: str | None) -> tuple[str, str] | None:
        slots = self.current()
        if wanted:
            slot = slots.get(wanted)
            return (wanted, slot["addr"]) if slot else None
        live = [(name, s) for name, s in slots.items() if s.get("weight", 0) > 0]
        if not live:
            return None
        r = random.uniform(0, sum(s["weight"] for _, s in live))
        for name, s in live:
            r -= s["weight"]
            if r <= 0:
                return name, s["addr"]
        return live[-1][0], live[-1][1]["addr"]


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes] | None:
    """One HTTP/1.1 message with a Content-Length body (what our server and clients send)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return head, headers, body


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, routes: Routes) -> None:
    try:
        while (message := await read_message(reader)) is not None:
            head, headers, body = message
            picked = routes.pick(headers.get("x-mldeploy-slot"))
            if picked is None:
                writer.write(_plain(503, b'{"error":"no slot is serving"}'))
                await writer.drain()
                continue
            slot, addr = picked
            answer = await forward(addr, head, body)
            if answer is None:
                writer.write(_plain(502, b'{"error":"the ' + slot.encode() + b' slot did not answer"}', slot))
            else:
                status_line, rest = answer
                writer.write(status_line + b"x-mldeploy-slot: " + slot.encode() + b"\r\n" + rest)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def forward(addr: str, head: bytes, body: bytes) -> tuple[bytes, bytes] | None:
    host, port = addr.rsplit(":", 1)
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        w.write(head + body)
        await w.drain()
        message = await asyncio.wait_for(read_message(r), 300)
        if message is None:
            return None
        rhead, _, rbody = message
        status_line, _, rest = rhead.partition(b"\r\n")
        return status_line + b"\r\n", rest + rbody
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return None
    finally:
        w.close()


def _plain(status: int, body: bytes, slot: str = "") -> bytes:
    reason = {502: "Bad Gateway", 503: "Service Unavailable"}[status]
    extra = f"x-mldeploy-slot: {slot}\r\n" if slot else ""
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


async def main() -> None:
    routes = Routes(ROUTES)
    server = await asyncio.start_server(lambda r, w: handle(r, w, routes), "0.0.0.0", PORT, limit=MAX_HEADER)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(json.dumps({"message": "router listening", "port": PORT, "routes": ROUTES}), flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
