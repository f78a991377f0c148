"""JSON log lines, one per event, written unbuffered: stdout, and stderr for a refusal to start."""

from __future__ import annotations

import datetime as dt
import os

import orjson


def log(level: str, message: str, fd: int = 1, **fields: object) -> None:
    record = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
              "level": level, "message": message, **fields}
    try:
        os.write(fd, orjson.dumps(record, default=str) + b"\n")
    except OSError:
        pass  # nobody is reading stdout; never fail a request over a log line

