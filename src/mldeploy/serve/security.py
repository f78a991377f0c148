"""API-key auth and rate limiting, for self-hosted targets (managed endpoints have their own).

Both are off unless configured. Keys come from MLDEPLOY_API_KEYS or MLDEPLOY_API_KEYS_FILE and are
compared in constant time against every key, so timing tells nothing about which one nearly
matched. The rate limit is a token bucket per key (per client address without auth), kept in each
worker: the serve command divides the configured rate by the number of workers.
"""

from __future__ import annotations

import hmac
import math
import time


class Auth:
    def __init__(self, keys: tuple[str, ...]):
        self.keys = [k.encode() for k in keys]

    def identify(self, authorization: str | None, api_key: str | None) -> int | None:
        """The index of the matching key, or None. Accepts `Authorization: Bearer K` or `X-API-Key: K`."""
        given = api_key
        if authorization and authorization[:7].lower() == "bearer ":
            given = authorization[7:].strip()
        if not given:
            return None
        candidate = given.encode(errors="replace")
        found = None
        for i, key in enumerate(self.keys):  # no early exit: every key is compared
            if hmac.compare_digest(candidate, key) and found is None:
                found = i
        return found


class RateLimiter:
    MAX_CLIENTS = 10_000  # forget idle buckets beyond this, so many addresses cannot exhaust memory

    def __init__(self, per_second: float, burst: float):
        self.rate = per_second
        self.burst = burst
        self.buckets: dict[object, list[float]] = {}  # client -> [tokens, last refill]

    def retry_after(self, client: object) -> int:
        """0 when the request may go ahead (a token is taken), else seconds until one is free."""
        now = time.monotonic()
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= self.MAX_CLIENTS:
                self._forget_full(now)
            bucket = self.buckets[client] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1:
            bucket[0] = tokens - 1
            return 0
        bucket[0] = tokens
        return max(1, math.ceil((1 - tokens) / self.rate))

    def _forget_full(self, now: float) -> None:
        full = [c for c, (t, last) in self.buckets.items() if t + (now - last) * self.rate >= self.burst]
        for client in full or list(self.buckets)[: len(self.buckets) // 2]:
            del self.buckets[client]
