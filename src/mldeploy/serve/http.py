"""The HTTP/1.1 server of one worker process: uvloop + httptools, an asyncio.Protocol per connection.

No ASGI or RSGI layer between the socket and the App: a request is parsed by httptools (llhttp,
the parser of Node.js) into a Request, handed to App.handle, and its answer written back in one
write. Most answers are computed right there, in the callback that read the request; the rest
(the model on its thread, a merged batch) come back as a coroutine, and the connection reads
nothing more until it is answered (pipelined requests wait their turn, in order).

This worker keeps every limit itself:
  connections  at most max_connections at a time: beyond that it stops accepting, and new
               connections wait in the kernel's backlog (or go to another worker) - backpressure,
               never "too many open files";
  head         a connection has header_timeout seconds to send a whole request head, counted from
               when it opened or from its previous answer (so it is also the keep-alive idle limit;
               a silent or trickling connection is closed);
  body         then body_timeout seconds for the body: 408, and the connection closes;
  body size    max_body_bytes, chunked or not: 413 once the body has been read (up to DRAIN_BYTES,
               so a client that sends it all still reads the answer), and the connection closes.
One sweep a second checks the deadlines: cheaper than a timer per request.

On SIGTERM it stops accepting, closes idle connections, answers what it is serving with
`connection: close`, and stops once no connection is left (or after drain_seconds).
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
from collections import deque
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote

import httptools

if TYPE_CHECKING:
    from mldeploy.serve.app import App

HEAD, BODY, BUSY = 0, 1, 2  # what a connection is doing: waiting for a head, reading a body, being answered
SWEEP_SECONDS = 1.0
DRAIN_BYTES = 16 << 20  # an oversized body is read and dropped up to this, then the connection closes
_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = "connection: close\r\n"

Response = tuple[int, list[tuple[str, str]], bytes]  # status, headers, body


class Request:
    __slots__ = ("body", "client", "headers", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes, client: str):
        self.method, self.path, self.headers, self.body, self.client = method, path, headers, body, client


class Worker:
    """Accepts from a listening socket shared with the other workers and serves `app` on uvloop.

    app.handle(request) -> Response, or a coroutine giving one; app.refuse(request, status,
    message, reason) -> the Response of an error the server found itself (no request: None);
    app.gone() counts a client that hung up mid-body."""

    def __init__(self, app: App, sock: socket.socket, max_connections: int, header_timeout: float,
                 body_timeout: float, max_body_bytes: int, drain_seconds: float):
        self.app, self.sock = app, sock
        self.cap, self.header_timeout, self.body_timeout = max_connections, header_timeout, body_timeout
        self.max_body, self.drain_seconds = max_body_bytes, drain_seconds
        self.connections: set[Connection] = set()
        self.opening = 0  # accepted, not yet connected to a protocol
        self.accepting = False
        self.stopping = False
        self.date = ""
        self.loop: asyncio.AbstractEventLoop  # set by run(), before anything reads it
        self._wake: socket.socket  # as is this

    def run(self, on_stop: Callable[[], None], stop_now: Callable[[], bool]) -> None:
        """Serve until SIGTERM and the drain are over, then on_stop(). stop_now(): whether a SIGTERM
        came before this loop's own handler took over."""
        import uvloop

        loop = self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        self.sock.setblocking(False)
        self.date = _date()
        self.app.start(loop)  # a SIGTERM meanwhile is kept for stop_now() below
        # SIGTERM: Python's handler, whichever thread the kernel hands the signal to, writes it to
        # the wakeup socket, which wakes the loop, which runs the handler. It replaces the one that
        # kept an early SIGTERM (stop_now), and one that came in between runs whichever handler is
        # in place when Python gets to it: none is lost.
        self._wake, wake = socket.socketpair()
        self._wake.setblocking(False)
        wake.setblocking(False)
        signal.set_wakeup_fd(wake.fileno())
        loop.add_reader(self._wake.fileno(), self._woken)
        signal.signal(signal.SIGTERM, lambda *_: loop.call_soon(self.drain))
        if stop_now():
            self.drain()
        self._accept_on()
        loop.call_later(SWEEP_SECONDS, self._sweep)
        try:
            loop.run_forever()
        finally:
            on_stop()

    def _woken(self) -> None:
        try:
            self._wake.recv(4096)  # the signal numbers; Python runs the handlers itself
        except OSError:
            pass

    # -- accepting, within the cap ---------------------------------------------------------------
    def _accept_on(self) -> None:
        if not self.accepting and not self.stopping:
            self.loop.add_reader(self.sock.fileno(), self._accept)
            self.accepting = True

    def _accept_off(self) -> None:
        if self.accepting:
            self.loop.remove_reader(self.sock.fileno())
            self.accepting = False

    def _accept(self) -> None:
        for _ in range(64):  # what is queued now, a bounded number at a time: the loop has other work
            if len(self.connections) + self.opening >= self.cap:
                self._accept_off()  # backpressure: the kernel's backlog holds the rest
                return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # another worker took it
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._accept_off()  # out of descriptors or memory: try again once the sweep runs
                    self.app.log_once("warning", f"cannot accept connections now: {e.strerror}")
                return
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset before it was ours
                conn.close()
                continue
            self.opening += 1
            task = self.loop.create_task(self.loop.connect_accepted_socket(lambda: Connection(self), conn))
            task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task) -> None:
        self.opening -= 1
        if not task.cancelled():
            task.exception()  # taken: a client gone before its connection was set up is nothing to log
        if self.stopping and not self.connections and not self.opening:
            self.loop.stop()
        elif not self.stopping:
            self._maybe_accept()

    def _maybe_accept(self) -> None:
        if not self.accepting and len(self.connections) + self.opening < self.cap:
            self._accept_on()

    def lost(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if self.stopping:
            if not self.connections and not self.opening:
                self.loop.stop()
        else:
            self._maybe_accept()

    # -- deadlines, once a second ----------------------------------------------------------------
    def _sweep(self) -> None:
        now = self.loop.time()
        self.date = _date()
        try:
            for conn in list(self.connections):
                if conn.state == HEAD and now - conn.since >= self.header_timeout:
                    conn.close()
                    self.app.count_failure("header_timeout")
                elif conn.state == BODY and now - conn.since >= self.body_timeout:
                    conn.timed_out()
            self._maybe_accept()
        except Exception as e:  # never let the sweep stop: it is what frees the slots
            self.app.log_once("error", f"the deadline sweep failed: {type(e).__name__}: {e}")
        self.loop.call_later(SWEEP_SECONDS, self._sweep)

    # -- SIGTERM ---------------------------------------------------------------------------------
    def drain(self) -> None:
        if self.stopping:
            return
        self._accept_off()
        self.stopping = True
        self.sock.close()  # once every worker has, new connections are refused
        for conn in list(self.connections):
            if conn.state == HEAD and not conn.pending:
                conn.close()  # idle: nothing to finish
        self.loop.call_later(self.drain_seconds, self.loop.stop)
        if not self.connections and not self.opening:
            self.loop.stop()


def _date() -> str:
    return f"date: {formatdate(usegmt=True)}\r\n"


class Connection(asyncio.Protocol):
    __slots__ = ("app", "body", "client", "closing", "head_error", "headers", "parser", "pending", "running",
                 "since", "size", "state", "too_large", "transport", "url", "w")

    def __init__(self, worker: Worker):
        self.w, self.app = worker, worker.app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.state, self.since = HEAD, worker.loop.time()
        self.headers: dict[str, str]
        self.body: list[bytes]
        self.url, self.headers, self.body, self.size, self.too_large = b"", {}, [], 0, False
        self.running = False  # an answer is being computed off this callback
        self.pending: deque = deque()  # requests read behind it (pipelining), answered in order
        self.closing = False  # answer what is read, then close
        self.head_error: tuple[int, str] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream: create_server's
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        self.w.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == BODY:
            self.app.gone()  # the client hung up mid-body: nobody to answer, and not our fault
        self.transport = None
        self.w.lost(self)

    def eof_received(self) -> bool:
        if self.running or self.pending:
            self.closing = True
            return True  # half-closed: still answer what was sent, then close
        return False

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.closing = True  # no upgrades (HTTP/1.1 only): what was asked is answered, then close
            if not self.running and not self.pending:
                self.close()
        except httptools.HttpParserError as e:
            if self.transport is not None and not self.transport.is_closing():
                self._refuse(400, f"malformed HTTP/1.1 request: {str(e).split(': ', 1)[-1][:100]}")

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url, self.headers, self.body, self.size, self.too_large = b"", {}, [], 0, False
        self.head_error = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.state, self.since = BODY, self.w.loop.time()
        headers = self.headers
        length = headers.get("content-length")
        if length is not None and int(length) > self.w.max_body:  # llhttp checked it is digits
            self.too_large = True
        if self.parser.get_http_version() not in ("1.1", "1.0"):
            self.head_error = (505, "this server speaks HTTP/1.1")
        elif "expect" in headers and not self.running and not self.pending:
            if headers["expect"].lower() != "100-continue":
                self.head_error = (417, f"cannot meet Expect: {headers['expect'][:40]}")
            elif self.too_large:
                self._refuse(413)  # before the client sends the body it asked about
            elif self.transport is not None:
                self.transport.write(_CONTINUE)

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.w.max_body:
            self.too_large = True
            self.body = []
            if self.size > DRAIN_BYTES and self.transport is not None and not self.transport.is_closing():
                self._refuse(413)
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        url = self.url
        path = url.split(b"?", 1)[0].decode("latin-1") if url[:1] == b"/" else _path(url)
        if "%" in path:
            path = unquote(path, errors="replace")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        request = Request(self.parser.get_method().decode("latin-1"), path, self.headers, body, self.client)
        keep = self.parser.should_keep_alive() and not self.closing
        self.state = BUSY
        if self.head_error is not None or self.too_large:
            keep = False
        if self.running:
            self.pending.append((request, keep, self.too_large, self.head_error))
            self.transport.pause_reading()  # bounded: no more requests are read until these are answered
            return
        self._run(request, keep, self.too_large, self.head_error)

    # -- answering -------------------------------------------------------------------------------
    def _run(self, request: Request, keep: bool, too_large: bool, head_error: tuple[int, str] | None) -> None:
        self.state = BUSY
        answer: Response | Coroutine[None, None, Response]
        if head_error is not None:
            answer = self.app.refuse(request, head_error[0], head_error[1], "invalid")
        elif too_large:
            answer = self.app.refuse(request, 413, None, "too_large")
        else:
            answer = self.app.handle(request)
        if isinstance(answer, tuple):
            self._write(answer, keep, request.method == "HEAD")
            return
        self.running = True
        task = self.w.loop.create_task(answer)
        task.add_done_callback(lambda done: self._ran(done, request, keep))

    def _ran(self, task: asyncio.Task, request: Request, keep: bool) -> None:
        self.running = False
        if task.cancelled() or task.exception() is not None:  # the App answers its own errors: a bug
            answer = self.app.refuse(request, 500, None, "internal", task)
        else:
            answer = task.result()
        self._write(answer, keep and not self.closing, request.method == "HEAD")
        while self.pending and not self.running and self.transport is not None:
            self._run(*self.pending.popleft())
        if not self.pending and not self.running and self.transport is not None and not self.transport.is_reading():
            self.transport.resume_reading()

    def _write(self, answer: Response, keep: bool, head_only: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client is gone
        status, headers, body = answer
        keep = keep and not self.w.stopping
        text = "".join([f"{k}: {v}\r\n" for k, v in headers])
        head = _STATUS[status] + (f"{text}content-length: {len(body)}\r\n{self.w.date}"
                                  f"{'' if keep else _CLOSE}\r\n").encode("latin-1")
        if head_only:
            transport.write(head)
        elif len(body) < 65536:
            transport.write(head + body)  # one write, one packet
        else:
            transport.writelines((head, body))
        if keep:
            self.state, self.since = HEAD, self.w.loop.time()
        else:
            self.close()

    def _refuse(self, status: int, message: str | None = None) -> None:
        """Answer an error found before the App saw the request, and close."""
        self.state = BUSY
        self._write(self.app.refuse(None, status, message, "too_large" if status == 413 else "invalid"),
                    False, False)

    def timed_out(self) -> None:
        self.state = BUSY
        self._write(self.app.refuse(None, 408, None, "timeout"), False, False)

    def close(self) -> None:
        self.state = BUSY
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _path(url: bytes) -> str:
    """The path of an absolute-form or asterisk-form request target."""
    try:
        return (httptools.parse_url(url).path or b"/").decode("latin-1")
    except httptools.HttpParserInvalidURLError:
        return url.decode("latin-1")
