"""Adaptive micro-batching: concurrent requests share one model run.

A request never waits for company that is not on its way: when no other request is being read or
decoded and none is queued, it runs at once (so latency at concurrency 1 is the model's own).
Requests that arrive while the model is busy queue up and all go into the next run, up to max_batch
rows, which is how throughput under load approaches the model's batched throughput. Only requests
whose non-batch dims match are merged. If a merged run fails, each request is run alone so that one
bad input fails only its own request.

Merging pays only where the model's per-call cost is more than the few microseconds the queue
costs: by default (MLDEPLOY_BATCHING=auto) models under 0.1 ms per row are not merged, just run.

Models that take well under a millisecond per row run inline on the event loop: a thread hand-off
would cost more than the model. Slower models run on one worker thread (ONNX Runtime releases the
GIL), so the loop keeps reading requests, and the batch keeps growing, while the model computes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from mldeploy.serve.model import Model, ModelError

INLINE_BELOW_SECONDS = 0.0005
# Below this per-row cost, merging saves less than the queue and future it takes (~15 us).
BATCH_ABOVE_SECONDS = 0.0001


class BatchObserver(Protocol):
    def observe_batch(self, rows: int, run_seconds: float, queued: list[float]) -> None: ...


class Batcher:
    def __init__(self, model: Model, max_batch: int, wait_ms: float, infer_thread: str,
                 observer: BatchObserver, batching: str = "auto"):
        self.model = model
        self.wait = wait_ms / 1000
        merge = batching == "on" or (batching == "auto" and (self.wait > 0 or model.single_row_seconds >= BATCH_ABOVE_SECONDS))
        self.max_batch = max_batch if model.batchable and merge else 1
        threaded = infer_thread == "on" or (infer_thread == "auto" and model.single_row_seconds >= INLINE_BELOW_SECONDS)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model") if threaded else None
        self.observer = observer
        self.queue: deque = deque()   # (feeds, rows, future, enqueued_at)
        self.queued_rows = 0
        self.arriving = 0             # requests being read and decoded: company for the next run
        self.busy = False
        self.soon: asyncio.Handle | None = None
        self.timer: asyncio.TimerHandle | None = None

    def run_now(self, feeds: dict[str, np.ndarray], rows: int) -> list[np.ndarray] | None:
        """The outputs, computed right here, when waiting could not help; else None (use run)."""
        if self.executor is None and not self.wait and not self.queue and (self.max_batch == 1 or not self.arriving):
            start = time.perf_counter()
            outputs = self.model.run(feeds)
            self.observer.observe_batch(rows, time.perf_counter() - start, [0.0])
            return outputs
        return None

    async def run(self, feeds: dict[str, np.ndarray], rows: int) -> list[np.ndarray]:
        """The outputs, from a run shared with whatever else is queued (run_now first)."""
        if (outputs := self.run_now(feeds, rows)) is not None:
            return outputs
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.append((feeds, rows, future, time.perf_counter()))
        self.queued_rows += rows
        if not self.busy:
            self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.queued_rows >= self.max_batch or not self.wait:
            if self.timer:
                self.timer.cancel()
                self.timer = None
            if not self.soon:
                self.soon = loop.call_soon(self._dispatch, loop)
        elif not self.timer and not self.soon:  # wait a little for company, from the first request on
            self.timer = loop.call_later(self.wait, self._dispatch, loop)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.timer:
            self.timer.cancel()
        self.soon = self.timer = None
        if self.busy or not self.queue:
            return
        items = self._take()
        if self.executor is None:
            self._finish(items, self._run(items), loop)
        else:
            self.busy = True
            job = loop.run_in_executor(self.executor, self._run, items)
            job.add_done_callback(lambda done: self._finish(items, done.result(), loop))

    def _take(self) -> list[tuple]:
        """The oldest request and every queued request shaped like it, up to max_batch rows."""
        first = self.queue.popleft()
        items, rows = [first], first[1]
        key = _shape_key(first[0])
        kept: deque[tuple] = deque()
        while self.queue and rows < self.max_batch:
            item = self.queue.popleft()
            if rows + item[1] <= self.max_batch and _shape_key(item[0]) == key:
                items.append(item)
                rows += item[1]
            else:
                kept.append(item)
        kept.extend(self.queue)
        self.queue = kept
        self.queued_rows -= rows
        return items

    def _run(self, items: list[tuple]) -> list[list[np.ndarray] | Exception]:
        start = time.perf_counter()
        if len(items) == 1:
            results = [self._run_one(items[0][0])]
        else:
            names = list(items[0][0])
            merged = {n: np.concatenate([it[0][n] for it in items]) for n in names}
            try:
                outputs = self.model.run(merged)
            except ModelError:  # somebody's input is bad: find out whose, fail only that one
                results = [self._run_one(it[0]) for it in items]
            else:
                results, offset = [], 0
                for it in items:
                    results.append([o[offset:offset + it[1]] for o in outputs])
                    offset += it[1]
        end = time.perf_counter()
        self.observer.observe_batch(sum(it[1] for it in items), end - start, [start - it[3] for it in items])
        return results

    def _run_one(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray] | Exception:
        try:
            return self.model.run(feeds)
        except ModelError as e:
            return e

    def _finish(self, items: list[tuple], results: list, loop: asyncio.AbstractEventLoop) -> None:
        self.busy = False
        for (_, _, future, _), result in zip(items, results):
            if future.done():  # the client went away
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self.queue:
            self._schedule(loop)

    def close(self) -> None:
        if self.executor:
            self.executor.shutdown(wait=True)


def _shape_key(feeds: dict[str, np.ndarray]) -> tuple:
    return tuple(a.shape[1:] for a in feeds.values())
