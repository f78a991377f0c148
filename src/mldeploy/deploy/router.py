"""The local target's weighted router: one published port in front of the production and canary
containers, sending each request to a slot with probability proportional to its weight.

A local convenience only (clouds split traffic themselves). Standard library only, so it runs in
the serving image itself: `python -m mldeploy.deploy.router`. Routes are a JSON file
({"slots": {"production": {"addr": "IP:PORT", "weight": 80}, ...}}) that the deploy step uploads
into the container; it is re-read when it changes, so shifting traffic never restarts anything.
A request with `x-mldeploy-slot: NAME` goes to that slot whatever its weight (smoke tests, status);
every answer says where it went in `x-mldeploy-slot`. Requests are read whole before they are
forwarded, Content-Length or chunked, within the serving image's body cap and deadlines; a request
that is not one is answered 400, 408, 411, 413 or 431 here, in one line, and its connection closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sys

ROUTES = os.environ.get("MLDEPLOY_ROUTES", "/tmp/routes.json")
PORT = int(os.environ.get("PORT", "8080"))
MAX_HEADER = 64 * 1024
# The serving settings of the same names (the router runs in the serving image, with its ENV):
# the body cap, the time to send a request's head (also the keep-alive idle limit), and its body.
MAX_BODY = int(os.environ.get("MLDEPLOY_MAX_BODY_BYTES") or 1_500_000)
HEADER_TIMEOUT = float(os.environ.get("MLDEPLOY_HEADER_TIMEOUT") or 30)
BODY_TIMEOUT = float(os.environ.get("MLDEPLOY_BODY_TIMEOUT") or 60)


class Routes:
    def __init__(self, path: str):
        self.path = path
        self.mtime: tuple[int, int, int] | None = None
        self.slots: dict[str, dict] = {}

    def current(self) -> dict[str, dict]:
        try:
            st = os.stat(self.path)
        except OSError:
            return self.slots
        mtime = (st.st_mtime_ns, st.st_size, st.st_ino)  # each write is a new file: two in one second differ
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


class BadRequest(Exception):
    """A request the router answers itself, then closes the connection (its body may be unread)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes] | None:
    """One HTTP/1.1 request: its head, headers and whole body, or None when the client is gone or
    idle past the header deadline. A chunked body is joined and forwarded with a Content-Length."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT)
    except asyncio.LimitOverrunError:
        raise BadRequest(431, f"the request head is over {MAX_HEADER // 1024} KiB") from None
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = _headers(lines[1:])
    encoding, length = headers.get("transfer-encoding"), headers.get("content-length")
    try:
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise BadRequest(400, f"unsupported Transfer-Encoding {encoding!r} (send chunked or Content-Length)")
            if length is not None:
                raise BadRequest(400, "a request may not have both Content-Length and Transfer-Encoding")
            body = await asyncio.wait_for(_chunked(reader), BODY_TIMEOUT)
            kept = [line for line in lines[1:] if line and not line.lower().startswith("transfer-encoding:")]
            head = "\r\n".join([lines[0], *kept, f"content-length: {len(body)}", "", ""]).encode("latin-1")
        elif length is not None:
            if not re.fullmatch(r"[0-9]{1,19}", length.strip()):
                raise BadRequest(400, f"Content-Length {length[:40]!r} is not a number")
            if int(length) > MAX_BODY:
                raise BadRequest(413, f"the request body is over the {MAX_BODY:,}-byte limit")
            body = await asyncio.wait_for(reader.readexactly(int(length)), BODY_TIMEOUT) if int(length) else b""
        elif lines[0].split(" ", 1)[0] in ("POST", "PUT", "PATCH"):
            raise BadRequest(411, "the request has a body but no length: send Content-Length or "
                                  "Transfer-Encoding: chunked")
        else:
            body = b""
    except TimeoutError:
        raise BadRequest(408, f"the request body did not arrive within {BODY_TIMEOUT:g} s") from None
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return head, headers, body


def _headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        if ":" in line:
            k, v = line.split(":", 1)
            k = k.strip().lower()
            if k in headers and k in ("content-length", "transfer-encoding") and headers[k] != v.strip():
                raise BadRequest(400, f"{k} is given twice")  # which one counts is how requests are smuggled
            headers[k] = v.strip()
    return headers


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        line = (await reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0].strip()  # size; extensions ignored
        if not re.fullmatch(rb"[0-9a-fA-F]{1,15}", line):
            raise BadRequest(400, "a chunk size is not a hexadecimal number")
        n = int(line, 16)
        if n == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers: dropped
                pass
            return b"".join(chunks)
        size += n
        if size > MAX_BODY:
            raise BadRequest(413, f"the request body is over the {MAX_BODY:,}-byte limit")
        chunks.append(await reader.readexactly(n))
        if await reader.readexactly(2) != b"\r\n":
            raise BadRequest(400, "a chunk does not end where its size says")


async def read_response(reader: asyncio.StreamReader, head_only: bool) -> tuple[bytes, bytes] | None:
    """A slot's answer (our server always sends Content-Length): (head, body), or None if it is not one."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = _headers(head.decode("latin-1").split("\r\n")[1:]).get("content-length", "0")
    if not re.fullmatch(r"[0-9]{1,19}", length):
        return None
    return head, (await reader.readexactly(int(length)) if int(length) and not head_only else b"")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, routes: Routes) -> None:
    try:
        while (message := await read_request(reader)) is not None:
            head, headers, body = message
            picked = routes.pick(headers.get("x-mldeploy-slot"))
            if picked is None:
                writer.write(_plain(503, b'{"error":"no slot is serving"}'))
                await writer.drain()
                continue
            slot, addr = picked
            answer = await forward(addr, head, body, head.startswith(b"HEAD "))
            if answer is None:
                writer.write(_plain(502, b'{"error":"the ' + slot.encode() + b' slot did not answer"}', slot))
            else:
                status_line, rest = answer
                writer.write(status_line + b"x-mldeploy-slot: " + slot.encode() + b"\r\n" + rest)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except BadRequest as e:
        writer.write(_plain(e.status, json.dumps({"error": str(e)}).encode(), close=True))
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    except Exception as e:  # a bug: one line, not a traceback; the router keeps serving
        print(json.dumps({"message": f"router error: {type(e).__name__}: {e}"}), flush=True)
    finally:
        writer.close()


async def forward(addr: str, head: bytes, body: bytes, head_only: bool = False) -> tuple[bytes, bytes] | None:
    host, port = addr.rsplit(":", 1)
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port), limit=MAX_HEADER), 5)
    except (TimeoutError, OSError):
        return None
    try:
        w.write(head + body)
        await w.drain()
        message = await asyncio.wait_for(read_response(r, head_only), 300)
        if message is None:
            return None
        rhead, rbody = message
        status_line, _, rest = rhead.partition(b"\r\n")
        return status_line + b"\r\n", rest + rbody
    except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    finally:
        w.close()


REASONS = {400: "Bad Request", 408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 502: "Bad Gateway", 503: "Service Unavailable"}


def _plain(status: int, body: bytes, slot: str = "", close: bool = False) -> bytes:
    extra = (f"x-mldeploy-slot: {slot}\r\n" if slot else "") + ("connection: close\r\n" if close else "")
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n").encode() + body


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
