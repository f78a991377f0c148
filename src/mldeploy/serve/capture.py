"""Data capture: a sample of requests and responses written as JSON lines, for drift monitoring.

The hot path only draws a random number and, for a sampled request, puts references on a queue;
a background thread serializes and writes. Each worker writes its own file (no interleaving across
processes) and rotates it by size, keeping the newest few. If the writer falls behind, records are
dropped and counted rather than slowing requests down.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import random
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

MAX_PENDING = 10_000


class Capture:
    def __init__(self, folder: Path, sample_rate: float, max_bytes: int, keep: int, model_version: str,
                 counter: Callable[[str], None]):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"capture-{os.getpid()}.jsonl"
        self.rate = sample_rate
        self.max_bytes = max_bytes
        self.keep = keep
        self.version = model_version
        self.count = counter  # count(name): the worker's metrics
        self.pending: queue.Queue = queue.Queue(MAX_PENDING)
        self.thread = threading.Thread(target=self._write_loop, name="capture", daemon=True)
        self.thread.start()

    def sample(self) -> bool:
        return self.rate >= 1 or random.random() < self.rate

    def record(self, request_id: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
               seconds: float) -> None:
        try:
            self.pending.put_nowait((dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                                     request_id, inputs, outputs, seconds))
        except queue.Full:
            self.count("mldeploy_capture_dropped_total")

    def close(self) -> None:
        """Write what is queued, then stop (called on graceful shutdown)."""
        self.pending.put(None)
        self.thread.join(timeout=10)

    def _write_loop(self) -> None:
        out = open(self.path, "ab")  # noqa: SIM115  kept open across records, reopened on rotation
        while (item := self.pending.get()) is not None:
            at, request_id, inputs, outputs, seconds = item
            line = orjson.dumps({"time": at, "request_id": request_id, "model_version": self.version,
                                 "latency_ms": round(seconds * 1000, 3),
                                 "inputs": {k: _plain(v) for k, v in inputs.items()},
                                 "outputs": {k: _plain(v) for k, v in outputs.items()}},
                                option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
            out.write(line)
            out.flush()
            self.count("mldeploy_capture_records_total")
            if out.tell() >= self.max_bytes:
                out.close()
                self._rotate()
                out = open(self.path, "ab")  # noqa: SIM115  as above
        out.close()

    def _rotate(self) -> None:
        """capture-PID.jsonl -> .1.jsonl -> .2.jsonl ...; the oldest beyond `keep` is removed."""
        stem = self.path.with_suffix("")
        for i in range(self.keep - 1, 0, -1):
            older = Path(f"{stem}.{i}.jsonl")
            if older.exists():
                if i + 1 >= self.keep:
                    older.unlink()
                else:
                    older.rename(f"{stem}.{i + 1}.jsonl")
        if self.keep > 1:
            self.path.rename(f"{stem}.1.jsonl")
        else:
            self.path.unlink()


def _plain(arr: np.ndarray) -> object:
    return arr.tolist() if arr.dtype.kind in "OU" or not arr.flags.c_contiguous else arr
