"""Per-principal rate limiting: a token bucket per principal, O(1) per request.

``gateway.rateLimit.requestsPerMinute`` is per principal across all replicas, so each replica
enforces its share (``requestsPerMinute / replicas``). A bucket holds at most ``burst``
requests (by default one minute's share, at least 1) and refills continuously at the share's
rate; a request that finds it empty is refused ``429 rate_limited`` with the seconds until it
would pass.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from enclave.errors import InputError
from enclave.gateway.denial import Denial, DenialCode

if TYPE_CHECKING:
    from collections.abc import Callable

    from enclave.spec.model import Gateway

_MAX_KEYS = 100_000


class RateLimiter:
    """Token buckets by key (the principal's name)."""

    def __init__(
        self,
        per_minute: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not per_minute > 0:
            raise InputError("rate limit: requests per minute must be positive")
        self.rate = per_minute / 60.0
        self.burst = float(burst) if burst is not None else max(1.0, per_minute)
        if not self.burst >= 1:
            raise InputError("rate limit: the burst must allow at least one request")
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill]

    @classmethod
    def from_spec(
        cls, gateway: Gateway, *, clock: Callable[[], float] = time.monotonic
    ) -> RateLimiter:
        return cls(gateway.rate_limit.requests_per_minute / gateway.replicas, clock=clock)

    def check(self, key: str, cost: float = 1.0) -> Denial | None:
        """Take ``cost`` from ``key``'s bucket; ``429 rate_limited`` when it has too little."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_KEYS:
                self._buckets.clear()  # keys are principals of the spec: this is never reached
            bucket = self._buckets[key] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= cost:
            bucket[0] = tokens - cost
            return None
        bucket[0] = tokens
        wait = (cost - tokens) / self.rate
        per_minute = self.rate * 60
        return Denial(
            DenialCode.RATE_LIMITED,
            f"rate limit of {per_minute:g} requests per minute exceeded; retry in "
            f"{math.ceil(wait)}s",
            retry_after=wait,
        )
