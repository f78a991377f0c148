"""API-key auth and rate limiting, for self-hosted targets (managed endpoints have their own).

Both are off unless configured. Keys come from MLDEPLOY_API_KEYS or MLDEPLOY_API_KEYS_FILE and are
compared in constant time against every key, so timing tells nothing about which one nearly
matched. The rate limit is a token bucket per key (per client address without auth), kept in each
worker: the serve command divides the configured rate by the number of workers. `Gate` puts the two
together; the HTTP server and the Lambda handler both ask it, so they refuse the same requests.
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


class Gate:
    """API key, then the rate limit of that key (or of the client address: wrong keys are limited too).
    `refuse` answers None to let a request in, else (status, message, headers) to refuse it with."""

    def __init__(self, keys: tuple[str, ...], per_second: float, burst: float, workers: int = 1):
        self.auth = Auth(keys) if keys else None
        # each worker keeps its own buckets: its share of the rate and of the burst
        self.limiter = RateLimiter(per_second / workers, max(1.0, burst / workers)) if per_second else None
        self.active = self.auth is not None or self.limiter is not None

    def refuse(self, authorization: str | None, api_key: str | None, client: str,
               authorized: bool = False) -> tuple[int, str, list[tuple[str, str]]] | None:
        """authorized: the platform itself authenticated the caller (a Lambda direct invoke needs IAM)."""
        key = self.auth.identify(authorization, api_key) if self.auth else None
        if self.limiter is not None:
            wait = self.limiter.retry_after(key if key is not None else client)
            if wait:
                return 429, f"rate limit exceeded; retry in {wait} s", [("retry-after", str(wait))]
        if self.auth is not None and key is None and not authorized:
            return (401, "missing or wrong API key (send Authorization: Bearer KEY or X-API-Key)",
                    [("www-authenticate", "Bearer")])
        return None
