"""Prometheus metrics, cheap on the hot path and summed across worker processes.

Each worker counts in plain Python objects (an increment, or a bisect for a histogram) and writes
a snapshot file every second to a folder the workers share; /metrics adds up every worker's
snapshot, so a scrape sees the whole server whichever worker answers it. Names follow KServe
where KServe has one (request_preprocess_seconds, request_predict_seconds,
request_postprocess_seconds, with a model_name label); the rest are prefixed mldeploy_.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from pathlib import Path
from typing import Any, cast

import orjson

SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# name -> (type, help, label names, buckets)
FAMILIES = {
    "mldeploy_requests_total": ("counter", "HTTP requests answered, by route and status code", ("route", "code"), None),
    "mldeploy_request_failures_total": ("counter", "requests that failed, by reason", ("reason",), None),
    "mldeploy_request_duration_seconds": ("histogram", "time from request to response, by route", ("route",), SECONDS),
    "request_preprocess_seconds": ("histogram", "decoding and validating a request", ("model_name",), SECONDS),
    "request_predict_seconds": ("histogram", "the model run that served a request", ("model_name",), SECONDS),
    "request_postprocess_seconds": ("histogram", "encoding a response", ("model_name",), SECONDS),
    "mldeploy_queue_seconds": ("histogram", "time a request waited for the model", ("model_name",), SECONDS),
    "mldeploy_batch_size": ("histogram", "rows per model run (micro-batching)", ("model_name",), ROWS),
    "mldeploy_capture_records_total": ("counter", "request/response pairs written to data capture", (), None),
    "mldeploy_capture_dropped_total": ("counter", "capture records dropped because the writer fell behind", (), None),
    "mldeploy_model_ready": ("gauge", "1 when the worker's model is loaded and warmed up", ("model_name",), None),
    "mldeploy_model_download_seconds": ("gauge", "seconds the start spent downloading and verifying the model",
                                        ("model_name",), None),
}


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Metrics:
    def __init__(self, model_name: str, folder: Path | None):
        self.model = (model_name,)
        self.folder = folder
        # a family's values: a count or gauge (a number), or a Histogram (lists once published)
        self.values: dict[str, dict[tuple, Any]] = {name: {} for name in FAMILIES}
        # the hot path's histograms, looked up once
        self.preprocess = self.histogram("request_preprocess_seconds", self.model)
        self.predict = self.histogram("request_predict_seconds", self.model)
        self.postprocess = self.histogram("request_postprocess_seconds", self.model)
        self.queue = self.histogram("mldeploy_queue_seconds", self.model)
        self.batch = self.histogram("mldeploy_batch_size", self.model)
        self._requests = self.values["mldeploy_requests_total"]
        self._durations = self.values["mldeploy_request_duration_seconds"]

    def histogram(self, name: str, labels: tuple) -> Histogram:
        family = self.values[name]
        if labels not in family:
            family[labels] = Histogram(cast("tuple[float, ...]", FAMILIES[name][3]))  # a histogram's buckets
        return family[labels]

    def count(self, name: str, labels: tuple = (), by: float = 1) -> None:
        family = self.values[name]
        family[labels] = family.get(labels, 0) + by

    def set(self, name: str, labels: tuple, value: float) -> None:
        self.values[name][labels] = value

    def request(self, route: str, code: int, seconds: float) -> None:
        key = (route, code)
        self._requests[key] = self._requests.get(key, 0) + 1
        hist = self._durations.get((route,))
        if hist is None:
            hist = self._durations[(route,)] = Histogram(SECONDS)
        hist.observe(seconds)

    def observe_batch(self, rows: int, run_seconds: float, queued: list[float]) -> None:
        self.batch.observe(rows)
        for wait in queued:
            self.queue.observe(wait)
            self.predict.observe(run_seconds)

    # -- sharing across workers --------------------------------------------------------------
    def snapshot(self) -> dict:
        # copies first: the model thread (MLDEPLOY_INFER_THREAD) adds labels while the loop reads, and a
        # dict that changes size under its iterator raises (list() copies it in one step under the GIL)
        out = {}
        for name, family in list(self.values.items()):
            out[name] = [[list(labels), [*v.counts, v.sum] if isinstance(v, Histogram) else v]
                         for labels, v in list(family.items())]
        return out

    def publish(self) -> None:
        """Write this worker's snapshot where the other workers can read it (atomically)."""
        if not self.folder:
            return
        path = self.folder / f"worker-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.snapshot()))
        os.replace(tmp, path)

    def exposition(self) -> bytes:
        """Prometheus text format, every worker's values summed (this worker's live ones)."""
        totals: dict[str, dict[tuple, Any]] = {name: {} for name in FAMILIES}
        snapshots = [self.snapshot()]
        mine = f"worker-{os.getpid()}.json"
        if self.folder:
            for file in self.folder.glob("worker-*.json"):
                if file.name != mine:
                    try:
                        snapshots.append(orjson.loads(file.read_bytes()))
                    except (OSError, orjson.JSONDecodeError):
                        continue  # a worker is rewriting it; the next scrape reads it
        for snap in snapshots:
            for name, rows in snap.items():
                if name not in totals:
                    continue
                family = totals[name]
                for labels, value in rows:
                    key = tuple(labels)
                    if FAMILIES[name][0] == "gauge":  # readiness: a worker that is not ready counts
                        family[key] = min(family.get(key, value), value)
                    elif isinstance(value, list):
                        old = family.get(key)
                        family[key] = value if old is None else [a + b for a, b in zip(old, value)]
                    else:
                        family[key] = family.get(key, 0) + value
        lines = []
        for name, (kind, text, label_names, bounds) in FAMILIES.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for labels, value in sorted(totals[name].items(), key=lambda kv: [str(x) for x in kv[0]]):
                pairs = [f'{k}="{_escape(v)}"' for k, v in zip(label_names, labels)]
                if isinstance(value, list):
                    running = 0
                    for bound, count in zip([*(bounds or ()), "+Inf"], value[:-1]):
                        running += count
                        le = ",".join([*pairs, f'le="{bound}"'])
                        lines.append(f"{name}_bucket{{{le}}} {running}")
                    label_text = "{" + ",".join(pairs) + "}" if pairs else ""
                    lines.append(f"{name}_sum{label_text} {value[-1]}")
                    lines.append(f"{name}_count{label_text} {running}")
                else:
                    label_text = "{" + ",".join(pairs) + "}" if pairs else ""
                    lines.append(f"{name}{label_text} {value}")
        return ("\n".join(lines) + "\n").encode()


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
