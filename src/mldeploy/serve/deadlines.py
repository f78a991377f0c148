"""Deadlines granian does not keep, kept by each worker once a second (cheaper than a timer per request).

granian closes a connection whose request head is unfinished after MLDEPLOY_HEADER_TIMEOUT, and one
that sits idle between requests after the same time, but its timer starts at a request's first
byte: a connection that never sends one would hold one of the worker's MLDEPLOY_MAX_CONNECTIONS
slots forever, and enough of them stop the worker from accepting anyone. Nor does it time out a
body. So, here:

  silent connections  a TCP connection of this process that has received no byte for the header
                      timeout since it was first seen is shut down (granian then drops it);
  slow bodies         a request still reading its body after MLDEPLOY_BODY_TIMEOUT is cancelled,
                      and the app answers 408.

Connections are found in /proc/self/fd (Linux, where the serving image runs) and read with TCP_INFO:
elsewhere the silent-connection check does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

TCP_ESTABLISHED, TCP_CLOSE_WAIT = 1, 8
_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received (u64) in struct tcp_info (Linux >= 4.1)
_FD_DIR = "/proc/self/fd"


class Deadlines:
    def __init__(self, header_seconds: float, body_seconds: float):
        self.header_seconds = header_seconds
        self.body_seconds = body_seconds
        self.silent_since: dict[int, float] = {}     # socket inode -> when first seen with no byte
        self.talked: set[int] = set()                # inodes that have sent a byte: not looked at again
        self.reading: dict[asyncio.Task, float] = {}  # request reading its body -> when it started
        self.expired: set[asyncio.Task] = set()
        self.enabled = os.path.isdir(_FD_DIR) and hasattr(socket, "TCP_INFO")

    # -- bodies ----------------------------------------------------------------------------------
    async def body(self, read) -> bytes:
        """await read(), cancelled by sweep() once it has taken longer than the body timeout:
        raises TimeoutError then."""
        task = asyncio.current_task()
        self.reading[task] = time.monotonic()
        try:
            return await read()
        except asyncio.CancelledError:
            if task not in self.expired:
                raise
            task.uncancel()
            raise TimeoutError from None
        finally:
            del self.reading[task]
            self.expired.discard(task)

    # -- the sweep, once a second ----------------------------------------------------------------
    def sweep(self) -> int:
        """Cancel overdue body reads and shut silent connections; returns how many connections it shut."""
        now = time.monotonic()
        for task, started in self.reading.items():
            if now - started > self.body_seconds and task not in self.expired:
                self.expired.add(task)
                task.cancel()
        return self._shut_silent(now) if self.enabled else 0

    def _shut_silent(self, now: float) -> int:
        try:
            names = os.listdir(_FD_DIR)
        except OSError:
            return 0
        silent: dict[int, float] = {}
        talked: set[int] = set()
        shut = 0
        for name in names:
            try:
                target = os.readlink(f"{_FD_DIR}/{name}")
                if not target.startswith("socket:["):
                    continue
                if (known := int(target[8:-1])) in self.talked:
                    talked.add(known)
                    continue
                fd = os.dup(int(name))  # our own handle: the fd number may be reused meanwhile
            except (OSError, ValueError):
                continue
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                continue
            try:
                inode = os.fstat(fd).st_ino
                if f"socket:[{inode}]" != target:
                    continue
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _BYTES_RECEIVED + 8)
                if info[0] not in (TCP_ESTABLISHED, TCP_CLOSE_WAIT) or len(info) < _BYTES_RECEIVED + 8:
                    continue  # the listener, or a connection already closing
                if struct.unpack_from("Q", info, _BYTES_RECEIVED)[0]:
                    talked.add(inode)  # it has sent something: granian's own timers hold it now
                    continue
                since = silent[inode] = self.silent_since.get(inode, now)
                if now - since >= self.header_seconds:
                    sock.shutdown(socket.SHUT_RDWR)
                    shut += 1
            except OSError:  # not TCP (a pipe granian uses, a Unix socket), or gone meanwhile
                continue
            finally:
                sock.close()  # closes our duplicate only
        self.silent_since, self.talked = silent, talked
        return shut
