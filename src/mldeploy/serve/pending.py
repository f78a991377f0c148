"""What the server answers while it has no model yet: alive, not ready.

`mldeploy serve` opens its port first when the model must be downloaded or verified
(MLDEPLOY_MODEL_SHA256), so the platform's probes meanwhile find a live container that is not ready:
Kubernetes keeps it out of the Service without restarting it, SageMaker and Vertex wait. If the
artifact cannot be had, it stays so, its 503 saying why. One thread, one connection at a time,
each closed after its answer: only probes call a server that is not ready, and none waits long.
"""

from __future__ import annotations

import socket
import threading

import orjson

POLL_SECONDS = 0.1          # how soon stop() is seen
CLIENT_SECONDS = 2.0        # a client that sends no request head in this time is dropped
MAX_HEAD = 16 * 1024


class Pending:
    def __init__(self, sock: socket.socket, live_paths: set[str], reason: str):
        self.sock, self.live_paths = sock, live_paths
        self.reason = reason  # what the 503 says: loading, or why it never will
        self.final = False    # it never will: a deploy waiting for ready can stop waiting
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="mldeploy-pending", daemon=True)

    def start(self) -> None:
        self.sock.settimeout(POLL_SECONDS)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering (the thread is gone when this returns: the server forks next)."""
        self._stop.set()
        self._thread.join()
        self.sock.settimeout(None)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # interrupted, or the socket is gone: look at the flag again
                continue
            with conn:
                try:
                    self._answer(conn)
                except OSError:
                    pass  # the client went away: nothing to tell it

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(CLIENT_SECONDS)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        method, target = ([*head.split(b"\r\n", 1)[0].split(b" "), b"", b""])[:2]
        path = target.split(b"?", 1)[0].decode("latin-1")
        if method in (b"GET", b"HEAD") and path in self.live_paths:
            status, body = "200 OK", b'{"live":true,"ready":false}'
        else:
            status, body = "503 Service Unavailable", orjson.dumps({"error": self.reason, "final": self.final})
        conn.sendall(f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                     f"connection: close\r\n\r\n".encode() + (b"" if method == b"HEAD" else body))
